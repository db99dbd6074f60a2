"""jobs/bench_train.py runs end to end (quick mode) and writes every figure; speed is not asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_quick_writes_all_figures(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "jobs/bench_train.py", "--quick", "--scaling", "2", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    variants = result["single_process"]["variants"]
    assert set(variants) == {"peft_lora", "elastic_fixed:maximal", "elastic_random", "elastic_sandwich"}
    for v in variants.values():
        assert v["repeats"] == 3
        assert 0 < v["step_s_min"] <= v["step_s_median"] <= v["step_s_max"]
        assert v["tokens_per_s"] > 0
    # sandwich trains three sub-networks per optimizer step on the same batch
    assert (variants["elastic_sandwich"]["forward_tokens_per_step"]
            == 3 * variants["peft_lora"]["forward_tokens_per_step"])
    scaling = result["ray_train_deepspeed"]
    assert scaling["workers_1"]["steps_measured"] == scaling["workers_2"]["steps_measured"] == 4
    assert scaling["scaling_efficiency"] > 0
    assert scaling["log_every"] == 10  # train.log_every's default: Ray Train is not waited for on every step
    for workers in ("workers_1", "workers_2"):
        w = scaling[workers]
        # the wall time from one step's record to the next holds the step's own time and what the loop waited for
        assert 0 < w["step_s_median"] <= w["wall_step_s_median"]
        assert 0 < w["wall_tokens_per_s_median"] <= w["tokens_per_s_median"] * 1.0001
    assert result["machine"]["device"] == "cpu"
