"""The load benchmark job (``jobs/bench_load.py``) at a small size: it completes its search, samples memory as
it goes, measures appends at each mark, and its resume evaluates nothing. Its figures are the benchmark's
business (jobs/results/bench_load_cpu.json), not this test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = [pytest.mark.ray]


@pytest.mark.timeout(400)
def test_the_load_benchmark_searches_samples_memory_and_resumes_with_nothing_new(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, "jobs/bench_load.py", "--evaluations", "20", "--marks", "5", "10",
                           "--every", "0.5", "--trials-per-run", "12", "--workdir", str(tmp_path / "work"),
                           "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=360,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["search"]["rows"] == 20 and result["search"]["new_evaluations"] == {"local": 20}
    assert result["resume"]["new_evaluations"] == {"local": 0}
    samples = [s for s in result["samples"] if s["evaluators"]]
    assert samples and all(s["driver_mb"] > 0 and s["evaluators_mb"] > 0 for s in samples)
    assert [s["rows"] for s in result["samples"]] == sorted(s["rows"] for s in result["samples"])
    assert set(result["at"]) == set(result["append_ms"]) == set(result["rewrite_ms"]) == {"5", "10"}
    assert all(v > 0 for v in [*result["append_ms"].values(), *result["rewrite_ms"].values()])
    assert result["trials_per_run"] == 12  # 20 evaluations as two Tune runs, the second continuing from the rows
