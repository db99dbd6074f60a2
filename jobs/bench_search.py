"""Search benchmark: evaluation throughput vs workers, strategies (NSGA-II, TPE vs random), runtimes. JSON out.

    python jobs/bench_search.py --config jobs/configs/bench_search_cpu.yaml --parts strategies --out X.json

Parts (each runs the real search stage on an embedded Ray, its own output dirs):

* ``scaling``: the same number of random sub-networks evaluated with 1, 2, 4
  evaluation workers (``--workers``); evaluations per minute from the first
  to the last result (model loads excluded, reported apart) and the wall time
  of the whole Tune run; efficiency = rate(N) / (N x rate(1)).
* ``strategies``: ``--strategies`` (NSGA-II, TPE, ...) and random search at the
  same budget, several seeds; hypervolume (the search objective up, latency
  down) after every evaluation against one reference shared by all runs; how
  many evaluations each needs to reach random search's final hypervolume.
* ``runtimes``: latency of the maximal, heuristic and minimal sub-networks
  under every runtime the device has; speed-up of each vs maximal per runtime
  (eager timing hides compression; see lonas_ray/search/latency.py).
* ``pools`` (on its own: it starts its own cluster): two pools, each a node of a
  multi-node Ray on this machine (``ray.cluster_utils.Cluster``, ``--pool-cpus``
  CPUs each, the config's first pool's settings): each pool searched alone, both
  one after another (``search.concurrent_pools: false``) and both at once;
  wall time of each run (median over ``--repeats``) and every pool's evaluator
  utilisation. The target: at once within 15 % of the slower pool alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lonas_ray.ray_env import prefer_loopback  # noqa: E402

prefer_loopback()

from lonas_ray.config_io import to_dict  # noqa: E402
from lonas_ray.search.config import SearchConfig  # noqa: E402
from lonas_ray.search.pareto import hypervolume_2d  # noqa: E402

log = logging.getLogger("bench_search")


def _cfg(base: SearchConfig, out: Path, **search) -> SearchConfig:
    raw = to_dict(base)
    raw["output_dir"] = str(out)
    raw["search"] = {**raw["search"], **search}
    raw["quality"]["final_examples"] = raw["quality"]["examples"]  # no final stage in a benchmark
    return SearchConfig.from_dict(raw)


def _rows(out: Path) -> list[dict]:
    from lonas_ray.search.results import read_results

    return sorted(read_results(out / "results.parquet").to_pylist(), key=lambda r: r["timestamp"])


def scaling(base: SearchConfig, work: Path, workers: list[int], evals: int) -> dict:
    """Throughput with n workers; with more workers than GPUs, workers share GPUs (recorded per run)."""
    import torch

    from lonas_ray.search.driver import run_search

    pool = base.search.pools[0]
    out = {"pool": pool, "evaluations": evals, "runs": []}
    gpus = torch.cuda.device_count()
    for n in workers:
        cfg = _cfg(base, work / f"scaling-{n}", strategy="random", budget=evals, seed=123)
        cfg.pools[pool].evaluators = n
        if cfg.pools[pool].gpus and n * cfg.pools[pool].gpus > gpus:
            cfg.pools[pool].gpus = gpus / n
        t0 = time.perf_counter()
        run_search(cfg)
        wall = time.perf_counter() - t0
        rows = _rows(Path(cfg.output_dir))
        ts = [r["timestamp"] for r in rows]
        # steady state: results after the first one of every worker (their model load is behind them)
        steady = (len(ts) - n) / (ts[-1] - ts[n - 1]) * 60 if len(ts) > n and ts[-1] > ts[n - 1] else None
        out["runs"].append({
            "workers": n, "gpus_per_worker": cfg.pools[pool].gpus, "wall_s": wall,
            "evals_per_min_wall": len(rows) / wall * 60,
            "evals_per_min_steady": steady, "median_eval_s": statistics.median(r["eval_s"] for r in rows),
            "nodes": sorted({r["node_id"][:8] for r in rows}),
        })
        log.info("scaling: %d workers: %s", n, out["runs"][-1])
    base_rate = out["runs"][0]["evals_per_min_steady"]
    for run in out["runs"]:
        if base_rate and run["evals_per_min_steady"]:
            run["efficiency"] = run["evals_per_min_steady"] / (run["workers"] * base_rate)
    return out


def _hv_curve(rows: list[dict], ref: list[float], objective: str) -> list[float]:
    from lonas_ray.search.objective import objective_value

    curve = []
    for k in range(1, len(rows) + 1):
        pts = np.array([[objective_value(r, objective), r["latency_ms"]] for r in rows[:k]], dtype=float)
        curve.append(hypervolume_2d(pts, ref, [True, False]))
    return curve


def strategies(base: SearchConfig, work: Path, budget: int, seeds: list[int], population: int,
               names: list[str]) -> dict:
    """Each strategy at the same budget and seeds; hypervolume curves against one shared reference.

    Random search is the yardstick: for every other strategy, how many evaluations it needs to
    reach random's final hypervolume on the same seed.
    """
    from lonas_ray.search.driver import run_search
    from lonas_ray.search.objective import objective_value

    names = ["random", *[n for n in names if n != "random"]]
    runs = {}
    for strategy in names:
        for seed in seeds:
            cfg = _cfg(base, work / f"{strategy}-{seed}", strategy=strategy, budget=budget, seed=seed,
                       population=population)
            run_search(cfg)
            runs[(strategy, seed)] = _rows(Path(cfg.output_dir))
    objective = base.search.objective
    everything = [r for rows in runs.values() for r in rows]
    # one reference for every run: the worst objective value seen by any run, 1.1 x the slowest latency
    ref = [min(objective_value(r, objective) for r in everything), 1.1 * max(r["latency_ms"] for r in everything)]
    curves = {k: _hv_curve(v, ref, objective) for k, v in runs.items()}
    out = {"budget": budget, "seeds": seeds, "population": population, "objective": objective,
           "reference": ref, "strategies": names, "runs": []}
    reach: dict[str, list] = {n: [] for n in names if n != "random"}
    for seed in seeds:
        target = curves[("random", seed)][-1]
        for strategy in names:
            curve = curves[(strategy, seed)]
            run = {"strategy": strategy, "seed": seed, "hypervolume": curve, "final": curve[-1]}
            if strategy != "random":
                run["evals_to_reach_random_final"] = next((k + 1 for k, hv in enumerate(curve) if hv >= target), None)
                reach[strategy].append(run["evals_to_reach_random_final"])
            out["runs"].append(run)
    out["mean_final_hypervolume"] = {n: statistics.mean(curves[(n, k)][-1] for k in seeds) for n in names}
    out["median_final_hypervolume"] = {n: statistics.median(curves[(n, k)][-1] for k in seeds) for n in names}
    out["evals_to_reach_random_final"] = reach
    out["mean_fraction_of_budget"] = {n: statistics.mean(r / budget for r in v) if all(v) else None
                                      for n, v in reach.items()}
    return out


def runtimes(base: SearchConfig, work: Path, skip: list[str]) -> dict:
    import torch

    from lonas_ray.build import prepare_once
    from lonas_ray.search.evaluator import EvalJob, Evaluator
    from lonas_ray.search.latency import RUNTIMES

    pool = base.search.pools[0]
    cfg = _cfg(base, work / "runtimes", strategy="heuristic")
    source = prepare_once(cfg.supernet, work / "runtimes" / "prepared", cfg.data) if cfg.supernet else cfg.supernet_dir
    cuda = cfg.pools[pool].uses_cuda
    names = [r for r in RUNTIMES if (cuda or r != "cuda_graph") and r not in skip]
    cfg.pools[pool].latency.runtimes = names
    ev = Evaluator(EvalJob.from_config(cfg, pool, source))
    space = ev.space
    out = {"runtimes": names, "subnets": {}}
    for label in ("maximal", "heuristic", "minimal"):
        row = ev.evaluate(getattr(space, label)(), examples=1)
        out["subnets"][label] = {"params": row["params"], "macs": row["macs"],
                                 "latencies": json.loads(row["latencies"])}
        log.info("runtimes: %s %s", label, out["subnets"][label])
    for label in ("heuristic", "minimal"):
        out["subnets"][label]["speedup_vs_maximal"] = {
            r: out["subnets"]["maximal"]["latencies"][r]["latency_ms"]
            / out["subnets"][label]["latencies"][r]["latency_ms"]
            for r in names}
        out["subnets"][label]["decode_speedup_vs_maximal"] = {
            r: out["subnets"]["maximal"]["latencies"][r]["decode_ms"]
            / out["subnets"][label]["latencies"][r]["decode_ms"]
            for r in names}
    if cuda:
        out["device_name"] = torch.cuda.get_device_name(0)
    return out


POOL_RUNS = (("pool-a alone", ["pool-a"], True), ("pool-b alone", ["pool-b"], True),
             ("sequential", ["pool-a", "pool-b"], False), ("concurrent", ["pool-a", "pool-b"], True))


def pools(base: SearchConfig, work: Path, budget: int, repeats: int, pool_cpus: int, save) -> dict:
    """Two pools searched alone, one after another and at once on a two-node local cluster (see the module doc);
    ``save(part)`` is called after every run, so a cut-short benchmark keeps its figures."""
    import ray
    from ray.cluster_utils import Cluster

    from lonas_ray.build import prepare_once
    from lonas_ray.search.driver import run_search

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for name in ("pool-a", "pool-b"):
        cluster.add_node(num_cpus=pool_cpus, labels={"lonas/pool": name})
    ray.init(address=cluster.address)
    raw = to_dict(base)
    spec = raw["pools"][base.search.pools[0]]
    raw["pools"] = {"pool-a": spec, "pool-b": spec}
    raw["quality"]["final_examples"] = raw["quality"]["examples"]  # no final stage: the searches are timed
    if base.supernet_dir is None:  # prepared once, outside the timed runs
        raw["supernet_dir"], raw["supernet"] = str(prepare_once(base.supernet, work / "prepared", base.data)), None
    part = {"budget_per_pool": budget, "pool_cpus": pool_cpus, "evaluators_per_pool": spec["evaluators"],
            "runs": []}
    try:
        for rep in range(repeats):
            for name, names, concurrent in POOL_RUNS:
                raw["output_dir"] = str(work / f"pools-{rep}-{name.replace(' ', '-')}")
                raw["search"] = {**raw["search"], "pools": names, "concurrent_pools": concurrent, "strategy": "random",
                                 "budget": budget, "seed": rep, "cross_evaluate": False}
                t0 = time.perf_counter()
                run_search(SearchConfig.from_dict(raw), address=cluster.address)
                wall = time.perf_counter() - t0
                summary = json.loads((Path(raw["output_dir"]) / "search_summary.json").read_text())
                part["runs"].append({"run": name, "repeat": rep, "wall_s": round(wall, 2),
                                     "utilisation": summary["utilisation"]})
                log.info("pools: %s (repeat %d): %.1f s", name, rep, wall)
                save(_pool_medians(part))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return _pool_medians(part)


def _pool_medians(part: dict) -> dict:
    med = {}
    for name, _, _ in POOL_RUNS:
        walls = [r["wall_s"] for r in part["runs"] if r["run"] == name]
        if walls:
            med[name] = statistics.median(walls)
    part["median_wall_s"] = med
    if {"pool-a alone", "pool-b alone", "concurrent"} <= set(med):
        slower = max(med["pool-a alone"], med["pool-b alone"])
        part["concurrent_over_slower_alone"] = round(med["concurrent"] / slower, 3)
        part["target_met"] = med["concurrent"] <= 1.15 * slower
    if {"sequential", "concurrent"} <= set(med):
        part["speedup_over_sequential"] = round(med["sequential"] / med["concurrent"], 3)
    return part


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a search config: model, data, the pool to use")
    p.add_argument("--parts", default="scaling,strategies,runtimes")
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--scaling-evals", type=int, default=24)
    p.add_argument("--budget", type=int, default=24)
    p.add_argument("--population", type=int, default=6)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--strategies", default="nsga2,random", help="compared at one budget; random is the yardstick")
    p.add_argument("--skip-runtimes", default="", help="runtimes left out of the runtimes part, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="pools part: runs of each kind (medians)")
    p.add_argument("--pool-cpus", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="pools part: CPUs of each pool's node")
    p.add_argument("--work", default="out/bench_search")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = SearchConfig.from_yaml(args.config)
    work = Path(args.work).resolve()
    parts = args.parts.split(",")
    import torch

    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                    "torch": torch.__version__},
        "config": to_dict(base),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "jobs/bench_search.py", *(argv if argv is not None else sys.argv[1:])]),
    }

    def save(key: str, value) -> None:
        result[key] = value
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))

    if "pools" in parts:
        if parts != ["pools"]:
            p.error("run --parts pools on its own: it starts a multi-node cluster of its own")
        save("pools", pools(base, work, args.budget, args.repeats, args.pool_cpus, lambda part: save("pools", part)))
        print(json.dumps(result["pools"], indent=1)[:4000])
        return 0

    from lonas_ray.ray_env import ensure_ray
    from lonas_ray.search.driver import local_pool_tags

    ensure_ray(None, **local_pool_tags(base))
    if "runtimes" in parts:
        result["runtimes"] = runtimes(base, work, [r for r in args.skip_runtimes.split(",") if r])
    if "scaling" in parts:
        result["scaling"] = scaling(base, work, [int(w) for w in args.workers.split(",")], args.scaling_evals)
    if "strategies" in parts:
        result["strategies"] = strategies(base, work, args.budget, [int(s) for s in args.seeds.split(",")],
                                          args.population, args.strategies.split(","))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
