"""jobs/bench_serving.py: every export timed in both engines, speed-ups against the first; bad input stops early."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

from lonas_ray.build import SupernetSpec, build_supernet
from lonas_ray.config_io import from_dict
from lonas_ray.merge.save import save_subnetwork

pytestmark = pytest.mark.timeout(900)


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/bench_serving.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=800)


def test_each_export_is_timed_in_transformers_and_vllm_with_its_speed_up_over_the_first(vllm_python, tmp_path):
    spec = {"model": {"kind": "tiny", "overrides": {"hidden_size": 128, "head_dim": 32}},  # vLLM CPU: heads of 32+
            "space": {"lora": {"target_modules": ["q_proj"], "r_max": 4, "rank_choices": [4]},
                      "mlp": {"choices": [1.0, 0.5]}, "depth": {"skippable": [1, 2]}},
            "importance": {"enabled": False}}
    supernet = build_supernet(from_dict(SupernetSpec, spec, where="supernet")).supernet
    small = {**supernet.space.minimal(), "mlp.0": supernet.space.dims["mlp.0"].choices[0]}  # per-layer widths
    for name, cfg in (("maximal", supernet.space.maximal()), ("small", small)):
        save_subnetwork(supernet, cfg, tmp_path / name)
    out = tmp_path / "serving.json"
    proc = bench("--vllm-python", str(vllm_python), "--models", f"{tmp_path / 'maximal'},{tmp_path / 'small'}",
                 "--prompt-len", "8", "--new-tokens", "4", "--warmup", "1", "--repeats", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["maximal", "small"]
    assert rows[1]["transformers_static"]["architecture"] == "LonasLlamaForCausalLM"
    assert rows[1]["transformers_static"]["params"] < rows[0]["transformers_static"]["params"]
    for engine in ("transformers_static", "vllm"):
        assert rows[0][engine]["speedup_vs_first"] == 1.0
        for r in rows:
            assert 0 < r[engine]["latency_ms"] <= r[engine]["latency_p90_ms"]
            assert r[engine]["decode_tokens_per_s"] == pytest.approx(4 / (r[engine]["latency_ms"] / 1e3))
        assert rows[1][engine]["speedup_vs_first"] == pytest.approx(
            rows[0][engine]["latency_ms"] / rows[1][engine]["latency_ms"])
    assert len(rows[1]["vllm"]["repeats_ms"]) == 2


@pytest.mark.parametrize("args, message", [
    (["--vllm-python", "/nonexistent/python"], "does not exist: build vLLM's environment"),
    (["--vllm-python", sys.executable, "--models", "/nonexistent/model"], "hold no exported model"),
])
def test_a_missing_environment_or_model_stops_before_anything_runs(tmp_path, args, message):
    proc = bench(*args, "--out", str(tmp_path / "o.json"))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.json").exists()
