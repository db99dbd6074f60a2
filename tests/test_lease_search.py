"""Latency timed in isolation, through the real search: two pools on one node time as one pool alone does.

Before the hardware lease, two pools sharing this machine's two cores timed one architecture at 560 and 643
ms in one run (issue 38): one evaluator's timing ran while the other scored. Here a Llama of about 25M
parameters (large enough for stable CPU timing) is searched by one pool with one evaluator alone, then by two
pools of two evaluators each at once on one embedded Ray that offers four CPUs on this two-core machine (so
three other evaluators are busy beside any timing, as in ``jobs/bench_lease.py``'s hardest condition), each
evaluator scoring, timing and re-timing the maximal after every evaluation (``latency.reference_every: 1``).

What must hold is the mechanism, read from the lease's trace (``LONAS_RAY_LEASE_TRACE``): every evaluator's
loading and scoring held the lease, every timing held it alone, and no timing overlapped any other holder's hold.
The timings themselves are the benchmark's to measure (``jobs/bench_lease.py``: within a few per cent of alone,
2.2x without the lease). Here they are only checked against that twofold slow-down: within 40 % of alone, where
this machine gives 5-8 % and a shared CI host gave 17 % once (the work no lease holds, Ray's and Tune's own
processes, lands beside a timing there).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest
import yaml

from helpers import ROOT
from lonas_ray.lease import ENV_TRACE, read_trace
from lonas_ray.search.config import SearchConfig
from lonas_ray.search.results import read_results

pytestmark = [pytest.mark.timeout(900), pytest.mark.ray, pytest.mark.slow]

# the no-lease run timed the maximal 2.2-2.3x slower; a bound this far below it cannot be met without the lease
MAX_SLOWDOWN = 1.40

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
def two_pool_ray(tmp_path_factory):
    """The embedded Ray, its workers tracing every lease hold into the file this yields."""
    import ray

    from lonas_ray.ray_env import ensure_ray
    from lonas_ray.search.driver import local_pool_tags

    trace = tmp_path_factory.mktemp("lease") / "holds.jsonl"
    before = os.environ.get(ENV_TRACE)
    os.environ[ENV_TRACE] = str(trace)  # Ray's workers inherit the environment ray.init saw
    try:
        ensure_ray(None, num_cpus=4, **local_pool_tags(config(Path("unused"), ["alpha", "beta"])))
        yield trace
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop(ENV_TRACE, None)
        else:
            os.environ[ENV_TRACE] = before


def overlapping(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_two_pools_on_one_node_time_the_maximal_as_one_pool_alone_does(two_pool_ray, tmp_path):
    from lonas_ray.search.driver import run_search

    run_search(config(tmp_path / "alone", ["alpha"]))
    alone = statistics.median(maximal_samples(tmp_path / "alone", "alpha"))
    together = tmp_path / "together"
    began = time.time()
    run_search(config(together, ["alpha", "beta"], evaluators=2))
    # both pools really evaluated at once: their evaluations overlap in time
    rows = read_results(together / "results.parquet").to_pylist()
    spans = {p: (min(r["timestamp"] - r["eval_s"] for r in rows if r["pool"] == p),
                 max(r["timestamp"] for r in rows if r["pool"] == p)) for p in ("alpha", "beta")}
    assert spans["alpha"][0] < spans["beta"][1] and spans["beta"][0] < spans["alpha"][1], spans

    # the mechanism: four evaluators loaded and scored under the lease, each timing alone, none beside other work
    holds = [h for h in read_trace(two_pool_ray) if h["start"] >= began]
    timings = [h for h in holds if h["mode"] == "exclusive"]
    assert len({h["pid"] for h in holds if h["mode"] == "shared"}) == 4, "not every evaluator held the lease"
    refs = json.loads((together / "latency_reference.json").read_text())
    assert len(timings) == len(rows) + sum(map(len, refs.values())), "a timing did not hold the lease alone"
    beside = [(t, h) for t in timings for h in holds if h is not t and overlapping(t, h)]
    assert not beside, f"{len(beside)} holds overlapped a timing, e.g. {beside[0]}"

    for pool in ("alpha", "beta"):
        got = statistics.median(maximal_samples(together, pool))
        assert got / alone < MAX_SLOWDOWN, f"pool {pool}: {got:.1f} ms beside another pool, {alone:.1f} ms alone"
    waits = [v["lease_wait_s"] for r in rows for v in json.loads(r["latencies"]).values()]
    assert all(w >= 0 for w in waits) and {v["lease"] for r in rows for v in json.loads(r["latencies"]).values()} \
        == {"cpu"}
