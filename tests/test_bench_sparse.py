"""jobs/bench_sparse.py --quick: dense LoRA beside sparse and INT4 super-networks, with the figures each row needs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sparse") / "s.json"
    cmd = [sys.executable, "jobs/bench_sparse.py", "--quick", "--tasks", "intent_recognition",
           "--variants", "wanda50,qa50", "--space-config", "jobs/configs/tiny.yaml", "--targets", "0.95",
           "--band", "0.1", "--latency-repeats", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_variant_has_its_maximal_and_a_pick_at_the_same_budget(result):
    (task,) = result["tasks"]
    rows = {r["model"]: r for r in task["rows"]}
    assert {"peft_lora", "wanda50:maximal", "wanda50:pick_0.95", "qa50:maximal", "qa50:pick_0.95"} <= set(rows)
    for r in rows.values():
        lo, hi = r["ci95"]
        assert 0.0 <= lo <= r["quality"] <= hi <= 1.0 and r["examples"] == task["report_examples"]
        assert r["latency_ms"] > 0 and r["loss"] > 0
    assert rows["wanda50:maximal"]["train_s"] == rows["wanda50:pick_0.95"]["train_s"]  # one training per variant


def test_sparse_rows_count_their_zeros_and_int4_rows_are_smaller_and_exact(result):
    rows = {r["model"]: r for r in result["tasks"][0]["rows"]}
    dense, sparse, int4 = rows["peft_lora"], rows["wanda50:maximal"], rows["qa50:maximal"]
    assert dense["nonzero_params"] == dense["params"]
    assert sparse["params"] == dense["params"] and sparse["nonzero_params"] < 0.8 * sparse["params"]
    assert sparse["compression"]["sparsity"]["level"] == 0.5 and "export" not in sparse["compression"]
    assert int4["weight_bytes_on_disk"] < 0.6 * sparse["weight_bytes_on_disk"]
    assert int4["compression"]["export"]["format"] == "compressed-tensors pack-quantized"
    assert int4["int4_rel_err"] < 1e-5 and rows["qa50:pick_0.95"]["int4_rel_err"] < 1e-5
