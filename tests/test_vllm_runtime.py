"""The vllm latency runtime: a pool whose sub-networks are timed by vLLM's offline engine in vLLM's environment,
and a pool whose nodes lack that environment stopped before any trial, with the pool and the fix named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT
from lonas_ray.config_io import ConfigError
from lonas_ray.search.config import SearchConfig
from lonas_ray.search.results import read_results

pytestmark = [pytest.mark.timeout(900), pytest.mark.ray, pytest.mark.slow, pytest.mark.vllm]


def tiny_cfg(out: Path, latency: dict, budget: int = 2) -> SearchConfig:
    raw = yaml.safe_load((ROOT / "jobs" / "configs" / "search_tiny.yaml").read_text())
    # vLLM's CPU attention takes head sizes 32, 64, 80, ...: a tiny model with heads of 32
    raw["supernet"]["model"]["overrides"] = {"hidden_size": 128, "head_dim": 32}
    raw.update(output_dir=str(out), quality={"examples": 8, "final_examples": 8, "batch_size": 8},
               search={"strategy": "random", "budget": budget, "seed": 0, "cross_evaluate": False})
    # reference_every 0: no re-timing of the maximal (each timing in vLLM starts an engine, about a minute here;
    # the re-timings are the lease tests' and the pipeline test's)
    raw["pools"] = {"local": {"evaluators": 1, "cpus": 1, "latency": {
        "batch_size": 1, "prompt_len": 16, "new_tokens": 4, "warmup": 1, "repeats": 3, "reference_every": 0,
        **latency}}}
    return SearchConfig.from_dict(raw)


def test_a_vllm_runtime_without_vllms_environment_is_a_configuration_error():
    with pytest.raises(ConfigError, match="latency.runtimes: vllm needs latency.vllm_python.*make_vllm_env.sh"):
        tiny_cfg(Path("/unused"), {"runtimes": ["vllm"]})


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from lonas_ray.ray_env import ensure_ray

    ensure_ray(None, num_cpus=2, labels={"lonas/pool": "local"}, resources={"pool_local": 1})
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("python, message", [
    ("/nonexistent/bin/python", "pool local: latency runtime vllm needs vLLM's environment, and "
                                "latency.vllm_python '/nonexistent/bin/python' is not a file on this node"),
    (sys.executable, "cannot import vllm and lonas-ray's plugin"),  # lonas-ray's own environment has no vLLM
])
def test_a_pool_whose_node_lacks_vllm_fails_before_any_trial_with_the_pool_named(local_ray, tmp_path, python,
                                                                                  message):
    from lonas_ray.search.driver import run_search

    cfg = tiny_cfg(tmp_path / "s", {"runtimes": ["vllm"], "vllm_python": python})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_search(cfg)
    assert not (tmp_path / "s" / "results.parquet").exists()


def test_the_search_times_every_sub_network_in_vllm_when_the_pool_says_so(local_ray, vllm_python, tmp_path):
    from lonas_ray.search.driver import run_search

    cfg = tiny_cfg(tmp_path / "s", {"runtimes": ["vllm", "static"], "vllm_python": str(vllm_python)})
    result = run_search(cfg)
    got = read_results(tmp_path / "s" / "results.parquet").to_pylist()
    assert result.evaluated == {"local": 2} and len(got) == 2
    for row in got:
        assert row["latency_runtime"] == "vllm" and 0 < row["latency_ms"] <= row["latency_p90_ms"]
        latencies = json.loads(row["latencies"])
        assert set(latencies) == {"vllm", "static"}
        assert latencies["vllm"]["prefill_ms"] > 0 and latencies["vllm"]["decode_ms"] > 0
