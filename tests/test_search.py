"""The search stage on real Ray: pool placement, the evaluation cache, resume, quality, bad input.

One embedded Ray (loopback, one node standing in for pool "local") serves the
module; the multi-pool test runs its own ``ray.cluster_utils.Cluster`` in a
fresh interpreter, since one process holds one Ray connection.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from helpers import ROOT, lonas_cli_batch, randomize_adapters, run_python
from lonas_ray.build import load_prepared, prepare_once, restore_supernet
from lonas_ray.config_io import from_dict, to_dict
from lonas_ray.search.config import SearchConfig
from lonas_ray.search.results import ResultsError, read_results

pytestmark = [pytest.mark.timeout(600), pytest.mark.ray, pytest.mark.slow]

TINY = ROOT / "jobs" / "configs" / "search_tiny.yaml"


def tiny_cfg(out: Path, **search) -> SearchConfig:
    raw = yaml.safe_load(TINY.read_text())
    raw["output_dir"] = str(out)
    raw["search"] = {**raw["search"], **search}
    raw["pools"]["local"]["latency"].update(repeats=2, warmup=1, prompt_len=16, new_tokens=4)
    raw["quality"] = {"examples": 12, "final_examples": 24, "batch_size": 16}
    return SearchConfig.from_dict(raw)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from lonas_ray.ray_env import ensure_ray

    ensure_ray(None, num_cpus=2, labels={"lonas/pool": "local"}, resources={"pool_local": 1})
    yield ray
    ray.shutdown()


def rows(out: Path) -> list[dict]:
    return read_results(out / "results.parquet").to_pylist()


def test_search_writes_results_pareto_and_a_second_run_evaluates_nothing(local_ray, tmp_path):
    from lonas_ray.search.driver import run_search

    cfg = tiny_cfg(tmp_path / "s", budget=6, strategy="nsga2")
    first = run_search(cfg)
    got = rows(Path(cfg.output_dir))
    assert first.evaluated == {"local": 6} and len(got) == 6
    assert len({r["subnet_id"] for r in got}) == 6  # a configuration is never evaluated twice
    space = load_prepared(Path(cfg.output_dir) / "prepared")[1]
    ids = [r["subnet_id"] for r in got]
    assert space.subnet_id(space.maximal()) in ids and space.subnet_id(space.minimal()) in ids
    for r in got:
        assert r["pool"] == "local" and r["eval_examples"] == 12 and r["quality_metric"] == "mc_accuracy"
        assert r["latency_runtime"] == "static" and 0 < r["latency_ms"] <= r["latency_p90_ms"]
        assert set(json.loads(r["latencies"])) == {"static", "eager"}
        assert space.subnet_id(space.validate(json.loads(r["config"]))) == r["subnet_id"]
    pareto = pq.read_table(Path(cfg.output_dir) / "pareto.parquet").to_pylist()
    assert {p["front"] for p in pareto} == {"latency", "params"}
    assert all(p["eval_examples_full"] == 24 for p in pareto)  # the final full-set quality is attached
    summary = json.loads((Path(cfg.output_dir) / "search_summary.json").read_text())
    assert summary["pools"]["local"]["latency"]["hypervolume"] > 0

    # A trial reuses the evaluator's loaded super-network: fewer loads than trials. The follow-up (full-set
    # scoring) runs in the search's Tune run, on evaluators the search loaded.
    evaluators: dict[str, list[str]] = {"search": [], "final": []}
    for f in glob.glob(str(Path(cfg.output_dir) / "ray_results" / "*" / "*" / "result.json")):
        assert "/search-local-" in f, f  # one Tune run: no run of its own for the follow-up
        for line in Path(f).read_text().splitlines():
            result = json.loads(line)
            evaluators[result["mode"]].append(result["evaluator_id"])
    assert len(evaluators["search"]) == 6 and 1 <= len(set(evaluators["search"])) <= cfg.pools["local"].evaluators
    finals = json.loads((Path(cfg.output_dir) / "final_quality.json").read_text())
    assert len(evaluators["final"]) == len(finals) >= 1 and set(evaluators["final"]) & set(evaluators["search"])

    table = Path(cfg.output_dir) / "results.parquet"  # a directory of Parquet parts, folded into one at the end
    before = {p.name: p.read_bytes() for p in table.iterdir()}
    assert len(before) == 1
    again = run_search(cfg)
    assert again.evaluated == {"local": 0}
    assert {p.name: p.read_bytes() for p in table.iterdir()} == before


def test_a_larger_budget_continues_from_the_results(local_ray, tmp_path):
    from lonas_ray.search.driver import run_search

    out = tmp_path / "s"
    run_search(tiny_cfg(out, budget=3, strategy="random"))
    first = {r["subnet_id"] for r in rows(out)}
    # and a search longer than one Tune run may hold goes on as several, each continuing from the rows
    result = run_search(tiny_cfg(out, budget=7, strategy="random", trials_per_run=2))
    got = rows(out)
    assert result.evaluated == {"local": 4} and len(got) == 7
    assert first < {r["subnet_id"] for r in got} and len({r["subnet_id"] for r in got}) == 7
    assert len(glob.glob(str(out / "ray_results" / "search-local-*"))) == 1 + 2


def test_heuristic_evaluates_maximal_median_and_minimal_only(local_ray, tmp_path):
    from lonas_ray.search.driver import run_search

    cfg = tiny_cfg(tmp_path / "h", strategy="heuristic", budget=50)
    result = run_search(cfg)
    space = load_prepared(Path(cfg.output_dir) / "prepared")[1]
    want = {space.subnet_id(c) for c in (space.maximal(), space.heuristic(), space.minimal())}
    assert {r["subnet_id"] for r in rows(Path(cfg.output_dir))} == want
    assert result.evaluated == {"local": len(want)}


def test_an_interrupted_search_continues_where_it_stopped(local_ray, tmp_path):
    """SIGKILL a running `lonas-ray search` after some rows, then re-run: it fills the budget, no repeats."""
    from lonas_ray.search.driver import run_search

    out = tmp_path / "s"
    cfg = tiny_cfg(out, budget=8, strategy="nsga2")
    cfg.pools["local"].evaluators = 1
    cfg_file = tmp_path / "search.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own embedded Ray
    proc = subprocess.Popen([sys.executable, "-m", "lonas_ray.cli", "search", "--config", str(cfg_file)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "results.parquet").exists() and len(rows(out)) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the search finished before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    done = {r["subnet_id"] for r in rows(out)}
    assert 3 <= len(done) < 8
    result = run_search(cfg)
    got = rows(out)
    assert result.evaluated["local"] == 8 - len(done)
    assert len(got) == 8 and len({r["subnet_id"] for r in got}) == 8 and done <= {r["subnet_id"] for r in got}


def test_reported_quality_equals_an_independent_evaluation_of_the_exported_model(local_ray, tmp_path):
    """Search a trained-like super-network (random adapters), export a row's sub-network, score it alone."""
    from transformers import AutoModelForCausalLM

    from lonas_ray.data.byte_tokenizer import byte_tokenizer
    from lonas_ray.data.load import load_examples
    from lonas_ray.merge.save import save_subnetwork
    from lonas_ray.search.driver import run_search
    from lonas_ray.search.quality import build_eval_set, evaluate_quality, subset, subset_indices
    from lonas_ray.train.state import ADAPTER_FILE, save_adapter

    cfg = tiny_cfg(tmp_path / "s", budget=3, strategy="random")
    sdir = prepare_once(cfg.supernet, tmp_path / "supernet")
    built = restore_supernet(*load_prepared(sdir))
    randomize_adapters(built.supernet, std=0.2, seed=3)
    save_adapter(built.supernet, sdir / ADAPTER_FILE)
    raw = yaml.safe_load(TINY.read_text())
    cfg.supernet, cfg.supernet_dir = None, str(sdir)
    run_search(cfg)
    row = next(r for r in rows(Path(cfg.output_dir)) if r["subnet_id"] != built.supernet.space.subnet_id(
        built.supernet.space.maximal()))
    save_subnetwork(built.supernet, json.loads(row["config"]), tmp_path / "model", tokenizer=None)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    data = from_dict(SearchConfig, {**raw, "output_dir": str(tmp_path)}).data
    full = build_eval_set(load_examples(data, "eval"), byte_tokenizer(), data.cutoff_len)
    q = evaluate_quality(model, subset(full, subset_indices(len(full), cfg.quality.examples, cfg.quality.seed)))
    assert q.examples == row["eval_examples"] == 12
    assert q.quality == pytest.approx(row["quality"], abs=1e-9)
    assert q.loss == pytest.approx(row["loss"], rel=1e-5)


def test_a_pool_no_node_can_serve_fails_fast_with_what_the_nodes_offer(local_ray, tmp_path):
    from lonas_ray.search.driver import run_search
    from lonas_ray.search.pools import PoolError

    cfg = tiny_cfg(tmp_path / "gpu", budget=2)
    cfg.pools["local"].gpus = 1  # the local node has no GPU: trials would stay PENDING forever
    t0 = time.monotonic()
    with pytest.raises(PoolError, match=r"pool 'local'.*1 GPU.*lonas/pool"):
        run_search(cfg)
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "gpu" / "results.parquet").exists()

    raw = yaml.safe_load(TINY.read_text())
    raw["output_dir"] = str(tmp_path / "h100")
    raw["pools"] = {"h100": {"placement": "label"}}
    with pytest.raises(PoolError, match=r"pool 'h100'.*label \{'lonas/pool': 'h100'\}"):
        run_search(SearchConfig.from_dict(raw))


def test_a_corrupt_results_file_is_reported_and_kept(local_ray, tmp_path):
    from lonas_ray.search.driver import run_search

    cfg = tiny_cfg(tmp_path / "s", budget=2)
    Path(cfg.output_dir).mkdir(parents=True)
    bad = Path(cfg.output_dir) / "results.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ResultsError, match="not a readable Parquet"):
        run_search(cfg)
    assert bad.read_bytes() == b"not parquet"


def test_a_broken_super_network_fails_the_search_with_the_evaluators_error(local_ray, tmp_path):
    """Every evaluator fails to load a corrupt adapter: the search says so instead of writing an empty front."""
    from lonas_ray.search.driver import SearchError, run_search
    from lonas_ray.train.state import ADAPTER_FILE

    cfg = tiny_cfg(tmp_path / "s", budget=2, strategy="random")
    sdir = prepare_once(cfg.supernet, tmp_path / "supernet")
    (sdir / ADAPTER_FILE).write_bytes(b"not safetensors")
    cfg.supernet, cfg.supernet_dir = None, str(sdir)
    with pytest.raises(SearchError, match="pool local: every trial failed"):
        run_search(cfg)
    assert not (Path(cfg.output_dir) / "pareto.parquet").exists()
    assert (sdir / ADAPTER_FILE).read_bytes() == b"not safetensors"


def test_cli_rejects_bad_search_configs_with_exit_2(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    cases = [({"search": {"strategy": "nsga2", "budget": 0}}, "search.budget must be an integer >= 1"),
             ({"search": {"pools": ["locl"]}}, "unknown pool 'locl' (did you mean 'local'?)")]
    for i, (change, _) in enumerate(cases):
        (tmp_path / f"bad{i}.yaml").write_text(yaml.safe_dump({**raw, **change}))
    runs = lonas_cli_batch([["search", "--config", str(tmp_path / f"bad{i}.yaml")] for i in range(len(cases))],
                           timeout=240)  # one interpreter for both (helpers.lonas_cli_batch)
    for (_, message), run in zip(cases, runs, strict=True):
        assert run["returncode"] == 2 and message in run["stderr"], run["stderr"][-2000:]
        assert "Traceback" not in run["stderr"]


MULTI_POOL = r"""
import json, os, signal, subprocess, sys, time, yaml
from pathlib import Path
import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster
from lonas_ray.search.config import SearchConfig
from lonas_ray.search.driver import run_search
from lonas_ray.search.results import read_results

out = Path(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
# two nodes stand for two machines: each its own hardware lease (on one host they would share it, and pool-a's
# work would wait for pool-b's long timings as it must on one machine: tests/test_lease_search.py)
a = cluster.add_node(num_cpus=2, labels={"lonas/pool": "pool-a"},
                     env_vars={"LONAS_RAY_LEASE_DIR": str(out / "lease-a")})
b = cluster.add_node(num_cpus=2, resources={"pool_pool-b": 1},  # no label: the resource fallback
                     env_vars={"LONAS_RAY_LEASE_DIR": str(out / "lease-b")})
ray.init(address=cluster.address)
raw = yaml.safe_load(Path("jobs/configs/search_tiny.yaml").read_text())
# evaluations of about a second on pool-a, and of several seconds one at a time on pool-b: two pools under way at
# once show in their rows' times, and pool-a's search ends long enough before pool-b's (more than the start of a
# Tune run of evaluators) to show its follow-up work begin while pool-b still searches
lat = {"batch_size": 1, "prompt_len": 16, "new_tokens": 16, "warmup": 1, "repeats": 6}
raw.update(quality={"examples": 32, "final_examples": 48},
           pools={"pool-a": {"evaluators": 2, "latency": lat},
                  "pool-b": {"evaluators": 1, "latency": {**lat, "repeats": 60}}},
           search={"strategy": "random", "budget": 6, "cross_evaluate": True})


def keep(name):
    for table in ("results", "pareto"):  # as this run left them
        rows = pq.read_table(out / name / f"{table}.parquet").to_pylist()
        (out / f"{name}.{table}.json").write_text(json.dumps(rows))
    for f in ("search_summary", "final_quality"):
        (out / f"{name}.{f}.json").write_text((out / name / f"{f}.json").read_text())


runs = {}
for name, concurrent in (("concurrent", True), ("sequential", False)):
    raw["output_dir"] = str(out / name)
    raw["search"]["concurrent_pools"] = concurrent
    runs[name] = run_search(SearchConfig.from_dict(raw), address=cluster.address).evaluated
    keep(name)

# a driver of its own, SIGKILLed while both pools search; then this one continues its output
raw["output_dir"], raw["search"] = str(out / "resumed"), {"strategy": "random", "budget": 8, "seed": 1}
raw["pools"]["pool-b"] = {"evaluators": 2, "latency": lat}
(out / "resumed.yaml").write_text(yaml.safe_dump(raw))
proc = subprocess.Popen([sys.executable, "-m", "lonas_ray.cli", "search", "--config", str(out / "resumed.yaml"),
                         "--address", cluster.address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        start_new_session=True)
deadline, results = time.monotonic() + 240, out / "resumed" / "results.parquet"
while time.monotonic() < deadline and proc.poll() is None:
    if set(read_results(results)["pool"].to_pylist()) == {"pool-a", "pool-b"}:
        break
    time.sleep(0.1)
alive = proc.poll() is None
os.killpg(proc.pid, signal.SIGKILL)
proc.wait(timeout=60)
(out / "killed.results.json").write_text(json.dumps(read_results(results).to_pylist()))
import psutil
import threading
evaluator_killed = []


def kill_an_evaluator(before):
    # once the continued search has written a row of its own, one evaluator actor (either pool) dies mid-run
    while not read_results(results).num_rows > before:
        time.sleep(0.1)
    # an evaluator's process title: the trainable's name while idle, Tune's resource wrapper's while it evaluates
    # (a Ray worker's title starts with ray::; this script's own command line names them too)
    titles = {p: " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])}
    actors = [p for p, t in titles.items()
              if t.startswith("ray::") and any(n in t for n in ("ResourceTrainable", "SubnetTrainable"))]
    if actors:
        actors[0].kill()
        evaluator_killed.append(actors[0].pid)


rows_before = read_results(results).num_rows
threading.Thread(target=kill_an_evaluator, args=(rows_before,), daemon=True).start()
runs["resumed"] = run_search(SearchConfig.from_dict(raw), address=cluster.address).evaluated
keep("resumed")

# pool-b's node lost once pool-b has a row (last: the cluster keeps one pool after it); pool-b slow again, so its
# search is still under way when the node goes
raw["output_dir"] = str(out / "lost")
raw["pools"]["pool-b"] = {"evaluators": 1, "latency": {**lat, "repeats": 60}}
lost = out / "lost" / "results.parquet"


removal = []


def remove_b():
    # read as the product reads the table: its directory exists, partless, for a moment before the first append
    try:
        while "pool-b" not in read_results(lost)["pool"].to_pylist():
            time.sleep(0.1)
        cluster.remove_node(b)
        removal.append("removed")
    except Exception as e:  # a thread's error would otherwise vanish, and the search end normally
        removal.append(f"{type(e).__name__}: {e}")


threading.Thread(target=remove_b, daemon=True).start()
try:
    run_search(SearchConfig.from_dict(raw), address=cluster.address)
    error = None
except Exception as e:
    error = f"{type(e).__name__}: {e}"
(out / "lost.results.json").write_text(json.dumps(pq.read_table(lost).to_pylist()))
finals = out / "lost" / "final_quality.json"
(out / "lost.final_quality.json").write_text(finals.read_text() if finals.exists() else "{}")
print(json.dumps({"a": a.node_id, "b": b.node_id, "evaluated": runs, "killed_while_running": alive,
                  "evaluator_killed": evaluator_killed, "lost_error": error, "removal": removal}))
ray.shutdown()
cluster.shutdown()
"""


def overlap(rows: list[dict], p: str, q: str) -> bool:
    """Whether pool ``p``'s search and pool ``q``'s were under way at the same time: the spans from each pool's
    first search evaluation's start (``timestamp - eval_s``) to its last one's end intersect."""
    rows = [r for r in rows if r["phase"] == "search"]
    span = {pool: (min(r["timestamp"] - r["eval_s"] for r in rows if r["pool"] == pool),
                   max(r["timestamp"] for r in rows if r["pool"] == pool)) for pool in (p, q)}
    return span[p][0] < span[q][1] and span[q][0] < span[p][1]


@pytest.fixture(scope="module")
def multi_pool(tmp_path_factory) -> tuple[Path, dict]:
    """Two pools on two nodes of a ``ray.cluster_utils.Cluster`` (pool-b's evaluations several times slower),
    searched at once, one after another, at once by a driver SIGKILLed mid-search then continued, and at once
    while pool-b's node is removed mid-search."""
    out = tmp_path_factory.mktemp("multi")
    proc = run_python(MULTI_POOL.replace("sys.argv[1]", repr(str(out))), timeout=900)
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def load(out: Path, name: str, what: str):
    return json.loads((out / f"{name}.{what}.json").read_text())


def test_pools_are_searched_at_once_each_on_its_own_nodes_with_the_sequential_runs_fronts(multi_pool):
    """Searched at once, the pools' evaluations overlap in time (one after another, they do not), each pool's
    trials run only on its node, every row lands once, and the fronts over params and the full-set qualities
    equal the sequential run's (random search with a seed proposes the same sub-networks; latency, which is
    measured, and so the latency fronts and what cross-evaluation takes from them, are left out)."""
    out, ids = multi_pool
    got = {name: load(out, name, "results") for name in ("concurrent", "sequential")}
    assert overlap(got["concurrent"], "pool-a", "pool-b") and not overlap(got["sequential"], "pool-a", "pool-b")
    # the searches sample the same sub-networks; the cross rows may differ, as the latency fronts they measure do
    assert {(r["subnet_id"], r["pool"]) for r in got["concurrent"] if r["phase"] == "search"} == \
        {(r["subnet_id"], r["pool"]) for r in got["sequential"] if r["phase"] == "search"}
    for name, rows in got.items():
        assert ids["evaluated"][name] == {p: len([r for r in rows if r["pool"] == p]) for p in ("pool-a", "pool-b")}
        keys = [(r["subnet_id"], r["pool"]) for r in rows]
        assert len(keys) == len(set(keys))  # every row once
        assert [r["phase"] for r in rows].count("search") == 12
        by_pool = {p: {r["node_id"] for r in rows if r["pool"] == p} for p in ("pool-a", "pool-b")}
        assert by_pool == {"pool-a": {ids["a"]}, "pool-b": {ids["b"]}}

    def params_front(name: str) -> set:
        return {(r["pool"], r["subnet_id"], r["member"], r["quality"], r["quality_full"])
                for r in load(out, name, "pareto") if r["front"] == "params"}

    front = params_front("sequential")
    assert any(r[4] is not None for r in front)  # full-set qualities were scored (by both pools, concurrently)
    assert params_front("concurrent") == front
    summary = load(out, "concurrent", "search_summary")
    assert summary["concurrent_pools"] is True
    for pool in ("pool-a", "pool-b"):
        u = summary["utilisation"][pool]
        assert u["evaluators"] == {"pool-a": 2, "pool-b": 1}[pool] and u["busy_s"] > 0 and 0 < u["fraction"] <= 1


def test_a_pool_whose_search_is_done_cross_evaluates_and_scores_without_waiting_for_the_others(multi_pool):
    """Every pool's search front is measured on the other pool (rows with phase ``cross``), and the faster pool
    starts its share of the follow-up work (full-set scoring) while the slower pool is still searching."""
    from lonas_ray.search.front import FRONTS, front_rows

    out, _ = multi_pool
    rows = load(out, "concurrent", "results")
    objective = load(out, "concurrent", "search_summary")["config"]["search"]["objective"]
    for pool, other in (("pool-a", "pool-b"), ("pool-b", "pool-a")):
        search = [r for r in rows if r["pool"] == other and r["phase"] == "search"]
        front = {r["subnet_id"] for cost in FRONTS.values() for r in front_rows(search, cost, objective)}
        own = {r["subnet_id"] for r in rows if r["pool"] == pool and r["phase"] == "search"}
        assert front - own  # each pool's sampler has a seed of its own: the other's front brings new sub-networks
        assert {r["subnet_id"] for r in rows if r["pool"] == pool and r["phase"] == "cross"} == front - own
    b_search_ends = max(r["timestamp"] for r in rows if r["pool"] == "pool-b" and r["phase"] == "search")
    finals = load(out, "concurrent", "final_quality")
    a_scored = [f["timestamp"] for f in finals.values() if f["pool"] == "pool-a"]
    assert a_scored and min(a_scored) < b_search_ends


def test_a_driver_killed_mid_search_is_continued_on_every_pool_without_repeats(multi_pool):
    """SIGKILL the driver while both pools search, then re-run, an evaluator actor SIGKILLed as that run goes:
    each pool's search continues from its own rows to its budget (the dead evaluator's trial started again on its
    pool: ``search.trial_retries``), every earlier row is kept, nothing is evaluated twice, the follow-up completes."""
    out, ids = multi_pool
    killed = load(out, "killed", "results")
    assert ids["killed_while_running"] and len(ids["evaluator_killed"]) == 1
    searched = {p: [r for r in killed if r["pool"] == p and r["phase"] == "search"] for p in ("pool-a", "pool-b")}
    assert all(searched.values()) and sum(map(len, searched.values())) < 16  # killed mid-search
    rows = load(out, "resumed", "results")
    keys = [(r["subnet_id"], r["pool"]) for r in rows]
    assert len(keys) == len(set(keys)) and {(r["subnet_id"], r["pool"]) for r in killed} <= set(keys)
    for pool in ("pool-a", "pool-b"):
        assert [r["phase"] for r in rows if r["pool"] == pool].count("search") == 8
        assert ids["evaluated"]["resumed"][pool] == len([r for r in rows if r["pool"] == pool]) - \
            len([r for r in killed if r["pool"] == pool])
    assert any(r["phase"] == "cross" for r in rows)
    assert load(out, "resumed", "final_quality")


def test_a_pool_no_node_can_host_fails_naming_it_and_its_wait_leaves_no_placement_group(local_ray, tmp_path):
    """The wait places one evaluator's placement group (what the autoscaler scales for) and removes it: a group
    left behind would keep an autoscaled node up for good."""
    from ray.util import placement_group_table

    from lonas_ray.search.driver import run_search
    from lonas_ray.search.pools import PoolError, wait_for_pool

    cfg = tiny_cfg(tmp_path / "wait", budget=2)
    cfg.pools["local"].gpus, cfg.pools["local"].wait_for_nodes_s = 1, 2  # no GPU here: waits, then gives up
    t0 = time.monotonic()
    with pytest.raises(PoolError, match=r"pool 'local': no live node can run an evaluator .* after waiting 2 s"):
        wait_for_pool("local", cfg.pools["local"])
    assert time.monotonic() - t0 >= 2
    waits = [g for g in placement_group_table().values() if g["name"] == "lonas-wait-local"]
    assert waits and all(g["state"] == "REMOVED" for g in waits)
    with pytest.raises(PoolError, match="pool 'local'"):
        run_search(cfg)
    assert all(g["state"] == "REMOVED" for g in placement_group_table().values())


def test_a_pool_that_fails_lets_the_others_finish_and_is_named(local_ray, tmp_path):
    """Pools searched at once: one whose node never comes (waited for, as on an autoscaling cluster, so not refused
    up front) fails at its start, the other's search still runs to its whole budget (its rows kept for a re-run),
    then the failure is raised with the failed pool's name."""
    from lonas_ray.search.config import PoolSpec
    from lonas_ray.search.driver import run_search
    from lonas_ray.search.pools import PoolError

    cfg = tiny_cfg(tmp_path / "one-fails", strategy="random", budget=3)
    cfg.pools["gone"] = PoolSpec(resource="pool_gone", wait_for_nodes_s=1)  # no node carries it
    cfg.search.pools = ["local", "gone"]
    with pytest.raises(PoolError, match="pool 'gone': no live node can run an evaluator .* after waiting 1 s"):
        run_search(cfg)
    assert [r["pool"] for r in rows(tmp_path / "one-fails")] == ["local"] * 3
    assert not (tmp_path / "one-fails" / "pareto.parquet").exists()


def test_a_pool_whose_node_is_lost_mid_search_fails_named_and_the_other_pool_finishes(multi_pool):
    """Pool-b's only node removed while both pools search: pool-b's run stops (no trial waits forever for a node
    that is gone) and the search fails naming pool-b, after pool-a's whole budget and its full-set scoring are
    written; pool-b's rows so far are kept."""
    out, ids = multi_pool
    assert ids["removal"] == ["removed"]
    assert ids["lost_error"] and ids["lost_error"].startswith("PoolError: pool 'pool-b': its nodes were lost")
    rows = load(out, "lost", "results")
    assert [r["phase"] for r in rows if r["pool"] == "pool-a"].count("search") == 8
    assert any(r["pool"] == "pool-b" for r in rows)
    assert any(f["pool"] == "pool-a" for f in load(out, "lost", "final_quality").values())
