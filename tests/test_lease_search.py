"""Latency timed in isolation, through the real search: two pools on one node time as one pool alone does.

Before the hardware lease, two pools sharing this machine's two cores timed one architecture at 560 and 643
ms in one run (issue 38): one evaluator's timing ran while the other scored. Here a Llama of about 25M
parameters (large enough for stable CPU timing) is searched by one pool with one evaluator alone, then by two
pools of two evaluators each at once on one embedded Ray that offers four CPUs on this two-core machine (so
three other evaluators are busy beside any timing, as in ``jobs/bench_lease.py``'s hardest condition), each
evaluator scoring, timing and re-timing the maximal after every evaluation (``latency.reference_every: 1``):
the maximal's timings on either pool lie within 10 % of the alone figure. Without the lease the same run timed
it about twice as slow beside the other evaluators (checked by disabling the lease's flock once).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from helpers import ROOT
from lonas_ray.search.config import SearchConfig
from lonas_ray.search.results import read_results

pytestmark = [pytest.mark.timeout(900), pytest.mark.ray, pytest.mark.slow]

MODEL = {"kind": "tiny", "family": "llama",
         "overrides": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
                       "num_attention_heads": 8, "num_key_value_heads": 4}}
LATENCY = {"batch_size": 1, "prompt_len": 32, "new_tokens": 8, "warmup": 1, "repeats": 5, "runtimes": ["static"],
           "reference_every": 1}


def config(out: Path, pools: list[str], evaluators: int = 1) -> SearchConfig:
    raw = yaml.safe_load((ROOT / "jobs" / "configs" / "search_tiny.yaml").read_text())
    raw["supernet"]["model"] = MODEL
    raw["output_dir"] = str(out)
    raw["pools"] = {p: {"evaluators": evaluators, "cpus": 1, "latency": dict(LATENCY)} for p in pools}
    raw["search"] = {"strategy": "random", "budget": 6, "seed": 0, "pools": pools, "cross_evaluate": False}
    raw["quality"] = {"examples": 16, "final_examples": 16, "batch_size": 8}  # no full-set scoring: not needed here
    return SearchConfig.from_dict(raw)


def maximal_samples(out: Path, pool: str) -> list[float]:
    """Every timed repeat of the maximal on ``pool``: its search row and every re-timing."""
    summary = json.loads((out / "search_summary.json").read_text())
    row = next(r for r in read_results(out / "results.parquet").to_pylist()
               if r["pool"] == pool and r["subnet_id"] == summary["maximal"])
    samples = list(json.loads(row["latencies"])["static"]["samples_ms"])
    refs = json.loads((out / "latency_reference.json").read_text())[pool]
    assert len(refs) >= 2, f"pool {pool}: the maximal was re-timed {len(refs)} times"
    for ref in refs:
        samples += ref["latencies"]["static"]["samples_ms"]
    return samples


@pytest.fixture(scope="module")
def two_pool_ray():
    import ray

    from lonas_ray.ray_env import ensure_ray
    from lonas_ray.search.driver import local_pool_tags

    ensure_ray(None, num_cpus=4, **local_pool_tags(config(Path("unused"), ["alpha", "beta"])))
    yield
    ray.shutdown()


def test_two_pools_on_one_node_time_the_maximal_as_one_pool_alone_does(two_pool_ray, tmp_path):
    from lonas_ray.search.driver import run_search

    run_search(config(tmp_path / "alone", ["alpha"]))
    alone = statistics.median(maximal_samples(tmp_path / "alone", "alpha"))
    together = tmp_path / "together"
    run_search(config(together, ["alpha", "beta"], evaluators=2))
    # both pools really evaluated at once: their evaluations overlap in time
    rows = read_results(together / "results.parquet").to_pylist()
    spans = {p: (min(r["timestamp"] - r["eval_s"] for r in rows if r["pool"] == p),
                 max(r["timestamp"] for r in rows if r["pool"] == p)) for p in ("alpha", "beta")}
    assert spans["alpha"][0] < spans["beta"][1] and spans["beta"][0] < spans["alpha"][1], spans
    for pool in ("alpha", "beta"):
        got = statistics.median(maximal_samples(together, pool))
        assert abs(got / alone - 1) < 0.10, f"pool {pool}: {got:.1f} ms beside another pool, {alone:.1f} ms alone"
    waits = [v["lease_wait_s"] for r in rows for v in json.loads(r["latencies"]).values()]
    assert all(w >= 0 for w in waits) and {v["lease"] for r in rows for v in json.loads(r["latencies"]).values()} \
        == {"cpu"}
