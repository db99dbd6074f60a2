"""jobs/bench_serving.py: every export timed in both engines, speed-ups against the first; bad input stops early."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import ROOT
from lonas_ray.build import SupernetSpec, build_supernet, save_prepared
from lonas_ray.config_io import from_dict

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow, pytest.mark.vllm]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/bench_serving.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=800)


def searched_run(run, configs: dict[str, dict]) -> None:
    """A run directory as the pipeline leaves it for this job: ``supernet/`` (here the prepared, untrained
    super-network, which ``load_supernet`` takes too) and ``results.parquet`` rows naming searched configs."""
    spec = {"model": {"kind": "tiny", "overrides": {"hidden_size": 128, "head_dim": 32}},  # vLLM CPU: heads of 32+
            "space": {"lora": {"target_modules": ["q_proj"], "r_max": 4, "rank_choices": [4]},
                      "mlp": {"choices": [1.0, 0.5]}, "depth": {"skippable": [1, 2]}},
            "importance": {"enabled": False}}
    spec = from_dict(SupernetSpec, spec, where="supernet")
    built = build_supernet(spec)
    save_prepared(built, spec, run / "supernet")
    space = built.supernet.space
    rows = [{"subnet_id": i, "config": json.dumps(make(space))} for i, make in configs.items()]
    pq.write_table(pa.Table.from_pylist(rows), run / "results.parquet")


def test_a_runs_searched_exports_are_timed_in_transformers_and_vllm_with_speed_ups_over_its_maximal(vllm_python,
                                                                                                   tmp_path):
    run = tmp_path / "run"
    searched_run(run, {"small": lambda space: {**space.minimal(), "mlp.0": space.dims["mlp.0"].choices[0]},
                       "unused": lambda space: space.minimal()})
    out = tmp_path / "serving.json"
    proc = bench("--vllm-python", str(vllm_python), "--run", str(run), "--subnets", "small",
                 "--export-dir", str(tmp_path / "exports"), "--prompt-len", "8", "--new-tokens", "4",
                 "--warmup", "1", "--repeats", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["maximal", "small"]
    exported = json.loads((tmp_path / "exports" / "small" / "config.json").read_text())
    assert len(set(exported["layer_intermediate_sizes"])) > 1  # the searched per-layer widths, as searched
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
    (["--vllm-python", sys.executable, "--run", "/nonexistent/run", "--subnets", "a"],
     "has no supernet or results.parquet: give the output directory of a run whose search finished"),
    (["--vllm-python", sys.executable, "--run", "RUN", "--subnets", "small,typo"],
     "typo not among the sub-networks RUN searched; pick from small"),
    (["--vllm-python", sys.executable, "--run", "RUN", "--models", "/m"], "--run and --models exclude each other"),
])
def test_a_missing_environment_model_or_searched_sub_network_stops_before_anything_runs(tmp_path, args, message):
    if "RUN" in args:
        searched_run(tmp_path / "run", {"small": lambda space: space.minimal()})
        args = [str(tmp_path / "run") if a == "RUN" else a for a in args]
        message = message.replace("RUN", str(tmp_path / "run"))
    proc = bench(*args, "--out", str(tmp_path / "o.json"))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.json").exists()
