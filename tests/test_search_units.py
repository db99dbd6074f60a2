"""Search units without Ray: the search config's checks, the per-pool fronts and pick, the cached Optuna searcher.

The searcher tests drive a real ``OptunaSearch`` (Optuna's samplers, an in-memory study) by
hand, the way Tune would: suggest, then report the trial's result.
"""

from __future__ import annotations

import copy
import itertools
import json
import random

import optuna
import pytest
import yaml
from ray.tune.search import Searcher

from helpers import ROOT
from lonas_ray.config_io import ConfigError
from lonas_ray.model_source import tiny_config
from lonas_ray.search.config import LatencySpec, PoolSpec, SearchConfig
from lonas_ray.search.front import front_rows, pool_fronts
from lonas_ray.search.searchers import CachedSearcher, OptunaStudySearch, build_searcher, seed_configs
from lonas_ray.shape import ModelShape
from lonas_ray.space import SearchSpace, SpaceSpec

pytestmark = pytest.mark.timeout(300)

TINY = yaml.safe_load((ROOT / "jobs" / "configs" / "search_tiny.yaml").read_text())

# --------------------------------------------------------------------------- config


def raw(**changes) -> dict:
    """search_tiny.yaml as data, with top-level sections replaced by ``changes``."""
    data = copy.deepcopy(TINY)
    data.update(copy.deepcopy(changes))
    return data


def test_the_tiny_search_config_loads_with_its_values():
    cfg = SearchConfig.from_dict(raw())
    assert list(cfg.pools) == ["local"] and cfg.search.pools == ["local"]  # default: every pool
    pool = cfg.pools["local"]
    assert isinstance(pool, PoolSpec) and pool.evaluators == 2 and not pool.uses_cuda
    assert pool.latency.repeats == 5 and pool.latency.new_tokens == 8
    assert cfg.search.strategy == "nsga2" and cfg.search.budget == 12 and cfg.search.population == 4
    assert cfg.quality.examples == 24 and cfg.quality.final_examples == 64
    assert cfg.pareto.delta == 0.02 and cfg.data.eval == "shipped:social_iqa"
    assert cfg.supernet is not None and cfg.supernet_dir is None
    two = raw(pools={"cpu_a": {}, "gpu_b": {"gpus": 1}}, search={"pools": ["gpu_b"]})
    cfg2 = SearchConfig.from_dict(two)
    assert cfg2.search.pools == ["gpu_b"] and cfg2.pools["gpu_b"].uses_cuda and not cfg2.pools["cpu_a"].uses_cuda


def config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        SearchConfig.from_dict(data)
    return str(info.value)


def test_an_unknown_search_pool_is_named_with_a_suggestion():
    msg = config_error(raw(search={"pools": ["locl"]}))
    assert "locl" in msg and "did you mean 'local'" in msg and "search.pools" in msg
    msg = config_error(raw(search={"pools": ["local", "zzzz"]}))
    assert "zzzz" in msg and "did you mean" not in msg and "local" in msg  # lists the pools there are


@pytest.mark.parametrize("search, words", [
    ({"budget": 0}, ["search.budget", "0"]),
    ({"budget": -3}, ["search.budget"]),
    ({"strategy": "grid"}, ["search.strategy", "grid"]),
    ({"objective": "speed"}, ["search.objective", "speed"]),
    ({"population": 1}, ["search.population"]),
])
def test_bad_search_settings_are_rejected(search, words):
    msg = config_error(raw(search={**TINY["search"], **search}))
    for w in words:
        assert w in msg, msg


def test_exactly_one_of_supernet_and_supernet_dir():
    both = raw(supernet_dir="/tmp/somewhere")
    assert "exactly one of supernet_dir" in config_error(both)
    neither = raw()
    del neither["supernet"]
    assert "exactly one of supernet_dir" in config_error(neither)
    only_dir = raw(supernet_dir="/tmp/somewhere")
    del only_dir["supernet"]
    assert SearchConfig.from_dict(only_dir).supernet_dir == "/tmp/somewhere"


def test_missing_eval_data_is_rejected():
    data = raw()
    del data["data"]["eval"]
    msg = config_error(data)
    assert "data.eval" in msg


def test_an_unknown_latency_runtime_is_named():
    data = raw()
    data["pools"]["local"]["latency"]["runtimes"] = ["static", "turbo"]
    msg = config_error(data)
    assert "turbo" in msg and "latency.runtimes" in msg
    data["pools"]["local"]["latency"]["runtimes"] = ["auto", "eager"]
    assert "auto" in config_error(data)


def test_runtimes_resolve_per_device_and_cuda_graph_needs_a_gpu():
    assert LatencySpec().resolved_runtimes(cuda=True) == ["cuda_graph", "eager"]
    assert LatencySpec().resolved_runtimes(cuda=False) == ["static", "eager"]
    spec = LatencySpec(runtimes=["cuda_graph", "static"])
    assert spec.resolved_runtimes(cuda=True) == ["cuda_graph", "static"]
    with pytest.raises(ConfigError, match="cuda_graph needs a GPU"):
        spec.resolved_runtimes(cuda=False)
    assert LatencySpec(runtimes=["eager"]).resolved_runtimes(cuda=False) == ["eager"]


def test_device_cuda_without_gpus_is_rejected():
    data = raw()
    data["pools"]["local"]["device"] = "cuda"
    msg = config_error(data)
    assert "device cuda" in msg and "gpus" in msg
    data["pools"]["local"]["gpus"] = 1
    assert SearchConfig.from_dict(data).pools["local"].uses_cuda


def test_a_typo_in_a_pool_is_named_with_its_place_and_the_fix():
    data = raw()
    data["pools"]["local"]["evaluator"] = 3
    msg = config_error(data)
    assert "pools.local" in msg and "'evaluator'" in msg and "did you mean 'evaluators'" in msg
    data = raw()
    data["pools"]["local"]["latency"]["repeat"] = 3
    msg = config_error(data)
    assert "pools.local.latency" in msg and "did you mean 'repeats'" in msg


# --------------------------------------------------------------------------- fronts


def row(sid: str, quality: float, latency: float, params: float) -> dict:
    return {"subnet_id": sid, "quality": quality, "latency_ms": latency, "params": params,
            "config": json.dumps({"id": sid})}


def brute_front(rows, cost):
    def dominates(a, b):
        return (a["quality"] >= b["quality"] and a[cost] <= b[cost]
                and (a["quality"] > b["quality"] or a[cost] < b[cost]))
    return {r["subnet_id"] for r in rows if not any(dominates(o, r) for o in rows)}


def test_fronts_equal_the_brute_force_non_dominated_sets():
    rng = random.Random(0)
    for trial in range(30):
        # coarse values: many ties and exact duplicates
        rows = [row(f"s{i}", rng.randint(0, 6) / 6, rng.randint(1, 8), rng.randint(1, 8)) for i in range(25)]
        out, summary = pool_fronts(rows, "s0", {}, delta=0.05, reference_quality=0.0, reference_cost=1.1)
        assert summary["evaluated"] == 25
        for front, cost in (("latency", "latency_ms"), ("params", "params")):
            members = [r for r in out if r["front"] == front and r["member"]]
            assert {r["subnet_id"] for r in members} == brute_front(rows, cost)
            # the maximal is listed as the reference even when dominated, flagged as no member
            others = [r for r in out if r["front"] == front and not r["member"]]
            assert [r["subnet_id"] for r in others] == ([] if "s0" in brute_front(rows, cost) else ["s0"])
            assert len(members) == len(brute_front(rows, cost)) == summary[front]["members"]
            keys = [(r[cost], -r["quality"]) for r in members]
            assert keys == sorted(keys)  # cheapest first
            assert [r["subnet_id"] for r in front_rows(rows, cost)] == [r["subnet_id"] for r in members]


def test_rows_without_the_cost_stay_off_that_front():
    rows = [row("m", 0.8, 10, 100), row("a", 0.9, None, 50), row("b", None, 1, 10)]
    out, summary = pool_fronts(rows, "m", {}, delta=0.0, reference_quality=0.0, reference_cost=1.1)
    assert {r["subnet_id"] for r in out if r["front"] == "latency" and r["member"]} == {"m"}
    assert {r["subnet_id"] for r in out if r["front"] == "params" and r["member"]} == {"a"}


def hand_rows():
    # m: the maximal; a and b trade quality for speed; c is dominated by a on latency (and by b on params)
    return [row("m", 0.8, 10.0, 100.0), row("a", 0.79, 5.0, 60.0), row("b", 0.5, 3.0, 40.0),
            row("c", 0.6, 6.0, 70.0)]


def test_hypervolume_reference_and_pick_on_a_hand_case():
    out, summary = pool_fronts(hand_rows(), "m", {}, delta=0.02, reference_quality=0.25, reference_cost=1.2)
    lat, par = summary["latency"], summary["params"]
    assert lat["reference"] == pytest.approx([0.25, 12.0]) and par["reference"] == pytest.approx([0.25, 120.0])
    assert lat["members"] == 3 and par["members"] == 3
    # staircase above quality 0.25, left of the reference cost:
    #   latency: [3, 5) x 0.25 + [5, 10) x 0.54 + [10, 12) x 0.55
    assert lat["hypervolume"] == pytest.approx(2 * 0.25 + 5 * 0.54 + 2 * 0.55)
    #   params: [40, 60) x 0.25 + [60, 100) x 0.54 + [100, 120) x 0.55
    assert par["hypervolume"] == pytest.approx(20 * 0.25 + 40 * 0.54 + 20 * 0.55)
    # no final qualities: a (0.79 >= 0.8 - 0.02) is the cheapest within delta on both fronts
    assert lat["pick"] == "a" and par["pick"] == "a"
    picked = [(r["front"], r["subnet_id"]) for r in out if r["picked"]]
    assert picked == [("latency", "a"), ("params", "a")]
    assert all(r["quality_full"] is None and r["loss_full"] is None for r in out)
    # delta 0: only the maximal itself qualifies
    _, summary = pool_fronts(hand_rows(), "m", {}, delta=0.0, reference_quality=0.0, reference_cost=1.1)
    assert summary["latency"]["pick"] == "m" and summary["params"]["pick"] == "m"
    # a large delta takes the fastest member
    _, summary = pool_fronts(hand_rows(), "m", {}, delta=0.5, reference_quality=0.0, reference_cost=1.1)
    assert summary["latency"]["pick"] == "b"


def test_final_qualities_override_the_search_quality_in_the_pick_only():
    finals = {"m": {"quality": 0.8, "loss": 1.0, "examples": 64},
              "a": {"quality": 0.6, "loss": 2.0, "examples": 64},
              "b": {"quality": 0.79, "loss": 1.1, "examples": 64}}
    plain_out, plain = pool_fronts(hand_rows(), "m", {}, delta=0.02, reference_quality=0.0, reference_cost=1.1)
    out, summary = pool_fronts(hand_rows(), "m", finals, delta=0.02, reference_quality=0.0, reference_cost=1.1)
    assert plain["latency"]["pick"] == "a"  # by the search quality
    assert summary["latency"]["pick"] == "b" and summary["params"]["pick"] == "b"  # by the final quality
    # the fronts and hypervolumes are those of the search quality
    for front in ("latency", "params"):
        assert summary[front]["hypervolume"] == pytest.approx(plain[front]["hypervolume"])
        assert summary[front]["members"] == plain[front]["members"]
    by = {(r["front"], r["subnet_id"]): r for r in out}
    assert by[("latency", "a")]["quality"] == 0.79 and by[("latency", "a")]["quality_full"] == 0.6
    assert by[("latency", "b")]["loss_full"] == 1.1 and by[("latency", "b")]["eval_examples_full"] == 64
    assert by[("latency", "b")]["picked"] and not by[("latency", "a")]["picked"]
    # the maximal's final quality is the bar: raised above everyone else's, only the maximal qualifies
    higher = dict(finals, m={"quality": 0.95, "loss": 0.5, "examples": 64})
    _, summary = pool_fronts(hand_rows(), "m", higher, delta=0.02, reference_quality=0.0, reference_cost=1.1)
    assert summary["latency"]["pick"] == "m"


def test_a_dominated_maximal_that_is_the_pick_is_listed_and_flagged():
    """Search quality (a subset) can rank a row above the maximal that the full set ranks below."""
    rows = [row("m", 0.8, 10.0, 100.0), row("x", 0.85, 9.0, 90.0)]
    finals = {"m": {"quality": 0.8, "loss": 1.0, "examples": 64}, "x": {"quality": 0.5, "loss": 2.0, "examples": 64}}
    out, summary = pool_fronts(rows, "m", finals, delta=0.02, reference_quality=0.0, reference_cost=1.1)
    assert summary["latency"]["pick"] == "m" and summary["params"]["pick"] == "m"
    for front in ("latency", "params"):
        listed = {r["subnet_id"]: r for r in out if r["front"] == front}
        assert listed["x"]["member"] and not listed["x"]["picked"]
        assert not listed["m"]["member"] and listed["m"]["picked"] and listed["m"]["quality_full"] == 0.8


def test_hypervolume_matches_a_grid_count_on_random_rows():
    rng = random.Random(1)
    for trial in range(10):
        rows = [row("m", rng.randint(5, 10) / 10, 10, 10)]
        rows += [row(f"s{i}", rng.randint(0, 10) / 10, rng.randint(1, 12), rng.randint(1, 12)) for i in range(12)]
        _, summary = pool_fronts(rows, "m", {}, delta=0.0, reference_quality=0.1, reference_cost=1.1)
        # count grid cells (quality steps of 0.1 from 0.1, cost steps of 1 up to 11) dominated by some row
        for front, cost in (("latency", "latency_ms"), ("params", "params")):
            cells = 0
            for qi, c in itertools.product(range(1, 10), range(1, 11)):  # cell [q, q+0.1] x [c, c+1]
                q = qi / 10
                if any(r["quality"] >= q + 0.1 - 1e-9 and r[cost] <= c for r in rows):
                    cells += 1
            assert summary[front]["hypervolume"] == pytest.approx(cells * 0.1), (trial, front)


# --------------------------------------------------------------------------- searchers


def resolve(spec: dict) -> SearchSpace:
    return SearchSpace.resolve(SpaceSpec.from_dict(spec), ModelShape.from_config(tiny_config()))


# rank fixed: 2 (mlp.0) x 2 (heads.2) x 2 (keep.1) = 8 sub-networks
SMALL = {"lora": {"target_modules": ["q_proj"], "r_max": 4, "rank_choices": [4], "groups": {}},
         "mlp": {"choices": [1.0, 0.5], "layers": [0]}, "heads": {"choices": [1.0, 0.5], "layers": [2]},
         "depth": {"skippable": [1]}}
MEDIUM = {"lora": {"target_modules": ["q_proj"], "r_max": 4, "rank_choices": [4, 2], "groups": {}},
          "mlp": {"choices": [1.0, 0.5], "layers": [0, 3]}, "depth": {"skippable": [1]}}


def fake_result(space: SearchSpace, cfg: dict) -> dict:
    """Objectives that depend on the configuration only (so a repeat would get the same values)."""
    h = int(space.subnet_id(cfg), 16)
    return {"quality": (h % 1000) / 1000, "latency_ms": 1.0 + (h // 1000) % 100}


def searcher(space, known=None, strategy="random", seed=0, **kwargs):
    known = known or {}
    inner = OptunaStudySearch(space, strategy, population=4, seed=seed, known=known, study_name="t")
    return inner, CachedSearcher(inner, space, known, **kwargs)


def known_rows(space, configs):
    return {space.subnet_id(c): {"config": c, **fake_result(space, c)} for c in configs}


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("strategy", ["random", "nsga2", "tpe"])
def test_suggestions_start_with_maximal_and_minimal_and_never_repeat(strategy):
    space = resolve(MEDIUM)
    assert space.size() == 2 ** 4 * 2 ** 2 * 2  # rank x4 layers, mlp x2 layers, keep.1
    inner, alg = searcher(space, strategy=strategy)
    seen = []
    for i in range(40):
        cfg = alg.suggest(f"t{i}")
        assert isinstance(cfg, dict), cfg
        space.validate(cfg)
        seen.append(space.subnet_id(cfg))
        alg.on_trial_complete(f"t{i}", result=fake_result(space, cfg))
    assert seen[0] == space.subnet_id(space.maximal()) and seen[1] == space.subnet_id(space.minimal())
    assert len(set(seen)) == len(seen) == 40
    # Optuna did propose some repeats (40 of 128), and the wrapper answered them from the cache
    assert alg.duplicates > 0
    trials = inner._ot_study.trials
    assert len(trials) == 40 + alg.duplicates
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:  # a cached answer is the configuration's own objectives
        cfg = dict(t.params)
        r = fake_result(space, cfg)
        assert t.values == [r["quality"], r["latency_ms"]]


def test_a_sampler_stuck_on_known_configurations_gets_random_unseen_ones_told_to_its_study():
    space = resolve(MEDIUM)  # 128 configurations
    inner = OptunaStudySearch(space, "tpe", population=2, seed=0, known={}, study_name="s")
    alg = CachedSearcher(inner, space, {}, max_proposals=3, seed=5)
    seen = []
    for i in range(60):  # TPE's model sharpens on fake objectives and repeats itself: the stand-ins take over
        cfg = alg.suggest(f"t{i}")
        assert isinstance(cfg, dict), cfg
        seen.append(space.subnet_id(space.validate(cfg)))
        alg.on_trial_complete(f"t{i}", result=fake_result(space, cfg))
    assert len(set(seen)) == 60 and alg.draws > 0
    assert not alg.substitutes and not alg.running
    trials = inner.study.trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == len(trials)  # no proposal left hanging
    assert {space.subnet_id(dict(t.params)) for t in done} == set(seen)  # every evaluation reached the study
    for t in done:
        r = fake_result(space, dict(t.params))
        assert t.values == [r["quality"], r["latency_ms"]]


def test_known_configurations_are_never_suggested_and_seed_the_study():
    space = resolve(MEDIUM)
    pool = [space.maximal(), *[space.sample(s) for s in range(12)]]
    known = known_rows(space, pool)
    assert space.subnet_id(space.minimal()) not in known
    inner, alg = searcher(space, known=known, seed=3)
    # resume: the study already holds the known results as completed trials with their values
    trials = inner._ot_study.trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == len(known)
    # besides them, only the minimal waits in the queue (the maximal is known: not enqueued)
    queued = [t for t in trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert [t.state for t in queued] == [optuna.trial.TrialState.WAITING]
    assert queued[0].system_attrs["fixed_params"] == space.minimal()
    by_id = {space.subnet_id(dict(t.params)): t.values for t in done}
    assert by_id == {sid: [r["quality"], r["latency_ms"]] for sid, r in known.items()}
    seen = []
    for i in range(30):
        cfg = alg.suggest(f"t{i}")
        assert isinstance(cfg, dict), cfg
        sid = space.subnet_id(space.validate(cfg))
        assert sid not in known and sid not in seen
        seen.append(sid)
        alg.on_trial_complete(f"t{i}", result=fake_result(space, cfg))
    # the maximal is known, so the first suggestion is the minimal (the maximal is not proposed again)
    assert seen[0] == space.subnet_id(space.minimal())


def test_with_maximal_and_minimal_known_neither_is_enqueued():
    space = resolve(SMALL)
    known = known_rows(space, [space.maximal(), space.minimal()])
    inner, alg = searcher(space, known=known)
    out = []
    for i in range(space.size() - 2):
        cfg = alg.suggest(f"t{i}")
        assert isinstance(cfg, dict), cfg
        out.append(space.subnet_id(cfg))
        alg.on_trial_complete(f"t{i}", result=fake_result(space, cfg))
    assert not set(out) & set(known) and len(set(out)) == space.size() - 2


def test_a_small_space_ends_the_search_instead_of_looping():
    space = resolve(SMALL)
    assert space.size() == 8
    known = known_rows(space, [space.sample(1)])
    inner, alg = searcher(space, known=known, max_proposals=60)
    out = []
    for i in range(20):
        cfg = alg.suggest(f"t{i}")
        if cfg == Searcher.FINISHED:
            break
        assert isinstance(cfg, dict), cfg
        out.append(space.subnet_id(cfg))
        alg.on_trial_complete(f"t{i}", result=fake_result(space, cfg))
    else:
        raise AssertionError("the searcher never finished on an 8-configuration space")
    # everything not known was evaluated exactly once before the search ended
    all_ids = {space.subnet_id(dict(zip(space.dims, v)))
               for v in itertools.product(*(d.choices for d in space.dims.values()))}
    assert len(all_ids) == 8
    assert sorted(out) == sorted(all_ids - set(known))
    assert alg.suggest("again") == Searcher.FINISHED  # and stays finished


def test_concurrent_duplicates_wait_for_the_running_trial_and_get_its_result():
    space = resolve(SMALL)
    inner, alg = searcher(space, max_proposals=60)
    running = {}
    for i in range(8):  # 8 concurrent trials on an 8-configuration space: each distinct, nothing completes
        cfg = alg.suggest(f"t{i}")
        assert isinstance(cfg, dict), cfg
        running[f"t{i}"] = cfg
    assert len({space.subnet_id(c) for c in running.values()}) == 8
    assert alg.suggest("t8") == Searcher.FINISHED  # all 8 running: nothing new to propose
    waiting = sum(len(v) for v in alg.waiting.values())
    assert waiting > 0
    for tid, cfg in running.items():
        alg.on_trial_complete(tid, result=fake_result(space, cfg))
    assert not alg.waiting and not alg.running
    trials = inner._ot_study.trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)  # no proposal left hanging
    for t in trials:
        r = fake_result(space, dict(t.params))
        assert t.values == [r["quality"], r["latency_ms"]]


def test_a_failed_trial_is_not_cached_and_its_waiting_duplicates_fail_too():
    space = resolve(SMALL)
    inner, alg = searcher(space, max_proposals=60)
    first = alg.suggest("t0")  # the maximal
    assert space.subnet_id(first) == space.subnet_id(space.maximal())
    for i in range(1, 8):
        alg.suggest(f"t{i}")
    assert alg.suggest("t8") == Searcher.FINISHED
    dup_of_first = list(alg.waiting.get(space.subnet_id(first), []))
    alg.on_trial_complete("t0", result=None, error=True)
    assert space.subnet_id(first) not in alg.known
    states = {t.number: t.state for t in inner._ot_study.trials}
    assert list(states.values()).count(optuna.trial.TrialState.FAIL) == 1 + len(dup_of_first)


def study_view(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state, t.params, t.values) for t in study.get_trials(deepcopy=False)]


@pytest.mark.parametrize("strategy", ["random", "nsga2", "tpe"])
def test_each_strategys_searcher_survives_tunes_pickling_and_checkpoints_and_keeps_searching(strategy, tmp_path):
    """Tune pickles the searcher with Ray's cloudpickle when it builds the Tuner and saves it at every
    experiment checkpoint; Optuna 5.1's NSGA-II sampler holds a lock and cannot be pickled itself."""
    from ray import cloudpickle
    from ray.tune.search.search_generator import SearchGenerator

    space = resolve(MEDIUM)
    known = known_rows(space, [space.sample(s) for s in range(3)])

    def build():
        return build_searcher(space, strategy, population=4, seed=0, known=known, study_name="p")

    # as the Tuner is built: nothing suggested yet; the copy still starts with the queued maximal
    copied = cloudpickle.loads(cloudpickle.dumps(build()))
    first = copied.suggest("a")
    assert space.subnet_id(space.validate(dict(first))) == space.subnet_id(space.maximal())

    alg = build()
    seen = set(known)
    for i in range(6):
        cfg = alg.suggest(f"t{i}")
        seen.add(space.subnet_id(space.validate(dict(cfg))))
        alg.on_trial_complete(f"t{i}", result=fake_result(space, cfg))
    flying = alg.suggest("t6")  # in flight while it is pickled
    seen.add(space.subnet_id(space.validate(dict(flying))))

    restored = cloudpickle.loads(cloudpickle.dumps(alg))
    assert restored is not alg and restored.searcher.study is not alg.searcher.study
    assert study_view(restored.searcher.study) == study_view(alg.searcher.study)
    assert (restored.known, restored.running) == (alg.known, alg.running)
    # the trial in flight completes on the copy, with its own objectives
    restored.on_trial_complete("t6", result=fake_result(space, flying))
    done = [t for t in restored.searcher.study.trials if t.params == dict(flying)]
    assert [t.state for t in done] == [optuna.trial.TrialState.COMPLETE]
    assert done[0].values == list(fake_result(space, flying).values())
    # and the copy goes on searching: valid, new configurations, every one told to its study
    for i in range(7, 17):
        cfg = restored.suggest(f"t{i}")
        assert isinstance(cfg, dict), cfg
        sid = space.subnet_id(space.validate(dict(cfg)))
        assert sid not in seen
        seen.add(sid)
        restored.on_trial_complete(f"t{i}", result=fake_result(space, cfg))
    assert not restored.running
    assert {space.subnet_id(dict(t.params)) for t in restored.searcher.study.trials
            if t.state == optuna.trial.TrialState.COMPLETE} == seen

    # Tune's experiment checkpoint of the same searcher, restored into a fresh one
    SearchGenerator(alg).save_to_dir(str(tmp_path), session_str="s")
    other = SearchGenerator(build())
    other.restore_from_dir(str(tmp_path))
    assert study_view(other.searcher.searcher.study) == study_view(alg.searcher.study)
    assert other.searcher.known == alg.known
    assert other.searcher.running == alg.running
    cfg = other.searcher.suggest("t7")
    assert space.subnet_id(space.validate(dict(cfg))) not in set(alg.known) | set(alg.running)


def test_seed_configs_per_strategy():
    space = resolve(MEDIUM)
    ids = [space.subnet_id(c) for c in seed_configs(space, "heuristic")]
    assert ids == [space.subnet_id(c) for c in (space.maximal(), space.heuristic(), space.minimal())]
    assert len(set(ids)) == 3
    for strategy in ("random", "nsga2", "tpe"):
        assert seed_configs(space, strategy) == [space.maximal(), space.minimal()]
    # duplicates are dropped: in a space where every dimension has 2 choices the median is the minimal
    two = resolve({"lora": {"target_modules": ["q_proj"], "r_max": 4, "rank_choices": [4, 2], "groups": {}}})
    assert two.heuristic() == two.minimal()
    assert seed_configs(two, "heuristic") == [two.maximal(), two.minimal()]


def test_objective_values_are_higher_is_better_for_every_objective():
    from lonas_ray.search.objective import OBJECTIVES, objective_value
    from lonas_ray.search.searchers import objectives

    row = {"quality": 0.75, "loss": 0.4, "task_loss": 0.9, "latency_ms": 3.0}
    assert objective_value(row, "quality") == 0.75
    assert objective_value(row, "loss") == -0.4
    assert objective_value(row, "task_loss") == -0.9
    assert objectives(row, "task_loss") == {"neg_task_loss": -0.9, "latency_ms": 3.0}
    assert set(OBJECTIVES) == {"quality", "loss", "task_loss"}
    no_objective = {k: v for k, v in TINY["search"].items() if k != "objective"}
    assert SearchConfig.from_dict(raw(search=no_objective)).search.objective == "task_loss"  # tracks correctness


def test_a_task_loss_study_is_seeded_with_negated_task_losses():
    space = resolve(MEDIUM)
    configs = [space.maximal(), *[space.sample(s) for s in range(5)]]
    known = {space.subnet_id(c): {"config": c, **fake_result(space, c), "task_loss": 0.1 * k}
             for k, c in enumerate(configs)}
    inner = OptunaStudySearch(space, "nsga2", population=4, seed=0, known=known, study_name="tl", objective="task_loss")
    values = sorted(t.values[0] for t in inner._ot_study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert values == pytest.approx(sorted(-0.1 * k for k in range(len(configs))))


def test_pareto_rows_carry_full_set_task_loss_and_wilson_intervals():
    finals = {"m": {"quality": 0.5, "loss": 1.0, "task_loss": 0.7, "examples": 10, "metric": "mc_accuracy"},
              "a": {"quality": 0.4, "loss": 2.0, "task_loss": 0.9, "examples": 10, "metric": "answer_token_accuracy"}}
    out, _ = pool_fronts(hand_rows(), "m", finals, delta=0.02, reference_quality=0.0, reference_cost=1.1)
    m = next(r for r in out if r["subnet_id"] == "m" and r["front"] == "latency")
    assert m["task_loss_full"] == 0.7 and m["eval_examples_full"] == 10
    assert (m["quality_full_ci95_low"], m["quality_full_ci95_high"]) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    a = next(r for r in out if r["subnet_id"] == "a" and r["front"] == "latency")
    assert a["quality_full_ci95_low"] is None  # a per-token accuracy is not a share of examples
    b = next(r for r in out if r["subnet_id"] == "b" and r["front"] == "latency")
    assert b["quality_full"] is None and b["quality_full_ci95_high"] is None  # not re-scored


def test_the_front_is_formed_on_the_searchers_objective_so_a_lucky_guess_does_not_dominate_the_maximal():
    """The quick-start case: maximal at task loss 0.89 and 10/24 right; a sub-network at 4.7 that guessed 11/24."""
    rows = [dict(row("m", 10 / 24, 10.0, 100.0), task_loss=0.89), dict(row("x", 11 / 24, 7.0, 70.0), task_loss=4.7),
            dict(row("min", 0.25, 5.0, 50.0), task_loss=6.0)]
    by_quality = {r["subnet_id"] for r in front_rows(rows, "latency_ms", "quality")}
    assert "m" not in by_quality  # on subset accuracy the maximal looks dominated ...
    by_loss = [r["subnet_id"] for r in front_rows(rows, "latency_ms", "task_loss")]
    assert by_loss == ["min", "x", "m"]  # ... on what the searcher optimised it is not
    out, summary = pool_fronts(rows, "m", {}, delta=0.0, reference_quality=0.0, reference_cost=1.1,
                               objective="task_loss", minimal_id="min")
    assert summary["objective"] == "task_loss"
    listed = {r["subnet_id"]: r for r in out if r["front"] == "latency"}
    assert listed["m"]["member"] and listed["x"]["member"]
    # hypervolume over (-task loss, latency) against the minimal's -6.0 and 1.1 x the maximal's 10 ms:
    #   [5, 7) adds nothing (the minimal is the reference), [7, 10) x (6.0 - 4.7), [10, 11) x (6.0 - 0.89)
    assert summary["latency"]["reference"] == pytest.approx([-6.0, 11.0])
    assert summary["latency"]["hypervolume"] == pytest.approx(3 * 1.3 + 1 * 5.11)


def test_rows_without_the_objective_stay_off_the_front():
    rows = [dict(row("m", 0.5, 10.0, 100.0), task_loss=1.0), dict(row("y", 0.9, 1.0, 10.0), task_loss=None)]
    assert [r["subnet_id"] for r in front_rows(rows, "latency_ms", "task_loss")] == ["m"]


def test_each_pool_runs_the_pools_at_once_lets_all_finish_and_names_the_failed():
    """``driver.each_pool``: at once, two pools' work meets at a barrier (one after another it could not); a failing
    pool does not stop the other, whose result is kept; the failure is raised with the pool's name."""
    import threading

    from lonas_ray.search.driver import SearchError, each_pool

    barrier, done = threading.Barrier(2, timeout=30), []

    def work(pool: str) -> str:
        barrier.wait()  # both pools are under way at the same time
        done.append(pool)
        return pool.upper()

    assert each_pool(["a", "b"], work) == {"a": "A", "b": "B"}

    def one_fails(pool: str) -> str:
        if pool == "a":
            raise RuntimeError("the evaluator died")
        done.append(pool)
        return pool

    done.clear()
    with pytest.raises(SearchError, match="^pool a: the evaluator died$"):
        each_pool(["a", "b"], one_fails)
    assert done == ["b"]  # the other pool's work ran to its end
    done.clear()
    with pytest.raises(SearchError, match="^pool a: the evaluator died$"):
        each_pool(["a", "b"], one_fails, concurrent=False)  # one after another: the same rule
    assert done == ["b"]
    with pytest.raises(SearchError, match=r"^2 pools failed: pool a: x; pool b: x$"):
        each_pool(["a", "b"], lambda pool: (_ for _ in ()).throw(ValueError("x")))
    named = SearchError("pool a: every trial failed (2)")  # an error that names its pool is raised as it is
    with pytest.raises(SearchError) as exc:
        each_pool(["a", "b"], lambda pool: (_ for _ in ()).throw(named) if pool == "a" else pool)
    assert exc.value is named


def test_a_shared_queue_hands_each_configuration_to_one_pool_once():
    import pickle

    from lonas_ray.search.searchers import SharedQueue

    queue = SharedQueue([{"d": 1}, {"d": 2}])
    assert [queue.pop(), queue.pop(), queue.pop()] == [{"d": 1}, {"d": 2}, None]
    queue.put([{"d": 3}])
    assert len(queue) == 1 and queue.pop() == {"d": 3}
    copy_ = pickle.loads(pickle.dumps(SharedQueue([{"d": 9}])))  # Tune pickles its search algorithm
    assert copy_.pop() == {"d": 9} and copy_.pop() is None


def test_the_front_board_queues_each_front_once_for_scoring_and_counts_a_failed_pool_as_done():
    """``board.FrontBoard``: a published front is visible at once and queued for full-set scoring (maximal first,
    nothing already scored, no sub-network twice); a failed pool counts as done so nobody waits for it."""
    from lonas_ray.search.board import FrontBoard

    board = FrontBoard(["a", "b", "c"], score=True, scored={"s0"}, maximal=("max", {"d": 9}))
    board.publish("a", {"s1": {"d": 1}, "s0": {"d": 0}})
    fronts, done, finished = board.snapshot()
    assert fronts == {"a": {"s1": {"d": 1}, "s0": {"d": 0}}} and done == 1 and not finished
    board.publish("b", {"s1": {"d": 1}, "s2": {"d": 2}})
    board.publish("c", None)  # c's search failed: no front, but done
    fronts, done, finished = board.snapshot()
    assert set(fronts) == {"a", "b"} and done == 3 and finished
    assert [board.queue.pop() for _ in range(4)] == [{"d": 9}, {"d": 1}, {"d": 2}, None]
    assert FrontBoard(["a"], score=False).queue is None  # the search subset is the full set: nothing to score


def test_follow_ups_cross_evaluate_each_new_front_once_share_the_scoring_and_finish_when_every_pool_is_done():
    """``board.FollowUps``: pool a, its search done, measures b's front as soon as b publishes it (less what a has
    measured), takes scoring work from the shared queue in between, answers "nothing now" while a pool still
    searches and "finished" once every pool is done and nothing is left; pool b takes from the same queue."""
    from lonas_ray.search.board import FollowUps, FrontBoard

    board = FrontBoard(["a", "b"], score=True, maximal=("max", {"d": 9}))
    measured = {"s1"}
    a = FollowUps(board, "a", cross=True, measured=lambda: set(measured))
    b = FollowUps(board, "b", cross=True, measured=lambda: set())
    board.publish("a", {"s1": {"d": 1}})
    assert not a.done()  # b still searches
    assert a() == ("final", {"d": 9}) and a() == ("final", {"d": 1})  # the queue: maximal, then a's front
    assert a() is None  # nothing now: b's front is to come
    board.publish("b", {"s1": {"d": 1}, "s2": {"d": 2}, "s3": {"d": 3}})
    assert a() == ("cross", {"d": 2}) and a() == ("cross", {"d": 3})  # s1 is measured on a already
    assert b() == ("cross", {"d": 1})  # b measures a's front
    assert b() == ("final", {"d": 2})  # the queue is shared: each sub-network scored by one pool
    assert a() == ("final", {"d": 3})
    assert a() == "finished" and b() == "finished" and a.done() and b.done()
    lone = FollowUps(FrontBoard(["a"], score=False), "a", cross=False, measured=set)
    lone.board.publish("a", {"s1": {"d": 1}})
    assert lone() == "finished"  # one pool, the full set searched already: no follow-up at all


def test_pool_work_searches_its_budget_then_follows_up_and_publishes_once_its_search_trials_end():
    """``searchers.PoolWork``: the search's configurations first (tagged ``search``, at most ``budget``, their
    results reported to the searcher); then follow-up work (tagged with its mode, not reported to the searcher) on
    the evaluators the search no longer needs, once a search trial has succeeded; ``on_searched`` once, when the
    last search trial has ended; finished when the follow-up is."""
    import pickle

    from lonas_ray.search.board import FollowUps, FrontBoard
    from lonas_ray.search.modes import MODE
    from lonas_ray.search.searchers import PoolWork

    space = resolve(MEDIUM)
    inner, alg = searcher(space)
    board = FrontBoard(["a"], score=True, maximal=("max", {"d": 9}))
    published = []
    work = PoolWork(alg, 2, FollowUps(board, "a", cross=False, measured=set),
                    on_searched=lambda: (published.append(1), board.publish("a", {"s": {"d": 1}})))
    t1, t2 = work.suggest("t1"), work.suggest("t2")
    assert t1[MODE] == t2[MODE] == "search"
    assert work.suggest("t3") is None  # the budget is out; no search trial has succeeded yet
    work.on_trial_complete("t1", result=fake_result(space, {k: v for k, v in t1.items() if k != MODE}))
    assert work.suggest("t3") == {"d": 9, MODE: "final"} and not published  # t2 still runs
    assert work.suggest("t4") is None  # a's front waits for t2
    work.on_trial_complete("t2", result=fake_result(space, {k: v for k, v in t2.items() if k != MODE}))
    assert [t.state.is_finished() for t in inner.study.trials].count(True) >= 2
    assert work.suggest("t4") == {"d": 1, MODE: "final"} and published == [1]
    n = len(inner.study.trials)
    work.on_trial_complete("t3", result={"quality": 1.0, "latency_ms": 1.0})  # not the searcher's trial
    assert len(inner.study.trials) == n
    assert work.suggest("t5") is None  # t4 still runs
    work.on_trial_complete("t4", result={"quality": 1.0, "latency_ms": 1.0})
    assert work.suggest("t5") == Searcher.FINISHED and published == [1]
    assert pickle.loads(pickle.dumps(work)).then is None  # Tune pickles it; the driver's callables stay behind


def test_pool_work_ends_its_run_when_no_work_is_there_for_now_and_none_of_its_trials_runs():
    """Pool a's search is done while pool b still searches: a's run takes what there is (the scoring queue), then
    ends instead of idling with loaded evaluators that b, on the same nodes, may need; the driver's follow-up loop
    waits for b (``FollowUps.ready``/``done``) and starts a run for b's front."""
    from lonas_ray.search.board import FollowUps, FrontBoard
    from lonas_ray.search.modes import MODE
    from lonas_ray.search.searchers import PoolWork

    board = FrontBoard(["a", "b"], score=True, maximal=("max", {"d": 9}))
    follow = FollowUps(board, "a", cross=True, measured=set)
    board.publish("a", {"s1": {"d": 1}})
    work = PoolWork(None, 0, follow)
    assert work.suggest("t1") == {"d": 9, MODE: "final"} and work.suggest("t2") == {"d": 1, MODE: "final"}
    assert work.suggest("t3") is None  # nothing now, t1 and t2 run
    work.on_trial_complete("t1", result={"quality": 1.0})
    work.on_trial_complete("t2", result={"quality": 1.0})
    assert work.suggest("t3") == Searcher.FINISHED  # nothing now, nothing running: the run ends
    assert not follow.ready() and not follow.done()  # b's front is still to come
    board.publish("b", {"s2": {"d": 2}})
    assert follow.ready() and not follow.done()
    work = PoolWork(None, 0, follow)
    assert work.suggest("t4") == {"d": 2, MODE: "cross"} and work.suggest("t5") == {"d": 2, MODE: "final"}
    work.on_trial_complete("t4", result={"quality": 1.0})
    work.on_trial_complete("t5", result={"quality": 1.0})
    assert work.suggest("t6") == Searcher.FINISHED and follow.done()


def test_pool_work_whose_every_search_trial_failed_ends_without_publishing_or_taking_shared_work():
    from lonas_ray.search.board import FollowUps, FrontBoard
    from lonas_ray.search.searchers import PoolWork

    space = resolve(MEDIUM)
    board = FrontBoard(["a", "b"], score=True, maximal=("max", {"d": 9}))
    published = []
    work = PoolWork(searcher(space)[1], 1, FollowUps(board, "a", cross=True, measured=set),
                    on_searched=lambda: published.append(1))
    assert work.suggest("t1") is not None
    work.on_trial_complete("t1", result=None, error=True)
    assert work.suggest("t2") == Searcher.FINISHED and not published
    assert len(board.queue) == 1  # maximal's scoring is left to the other pool


def test_pool_work_starts_a_failed_trial_again_as_itself_at_most_retries_times():
    """An evaluator that dies fails its trial, whether it ran or was still pending on a reused evaluator (which Tune
    itself does not start again): ``PoolWork`` starts the same configuration again as a new trial before anything
    new, the retry stands for the failed search trial towards the searcher (its result, under the first id) and
    the budget; a follow-up is started again too; past ``retries`` failures the trial counts as failed."""
    from lonas_ray.search.board import FollowUps, FrontBoard
    from lonas_ray.search.modes import MODE
    from lonas_ray.search.searchers import PoolWork

    space = resolve(MEDIUM)
    inner, alg = searcher(space)
    board = FrontBoard(["a"], score=True, maximal=("max", {"d": 9}))
    published = []
    work = PoolWork(alg, 2, FollowUps(board, "a", cross=False, measured=set), retries=1,
                    on_searched=lambda: (published.append(1), board.publish("a", {})))
    t1, t2 = work.suggest("t1"), work.suggest("t2")
    work.on_trial_complete("t1", result=None, error=True)  # its evaluator died
    assert work.suggest("t3") == t1  # the same sub-network again, first
    assert work.suggest("t4") is None  # not a third search trial: the retry counts as t1 towards the budget
    work.on_trial_complete("t3", result=fake_result(space, {k: v for k, v in t1.items() if k != MODE}))
    assert not published  # t2 still runs
    work.on_trial_complete("t2", result=None, error=True)
    assert work.suggest("t5") == t2
    work.on_trial_complete("t5", result=None, error=True)  # a second failure: past retries=1, t2 has failed
    finished = [t for t in inner.study.trials if t.state.is_finished()]
    assert len(finished) == 2 and sorted(t.state.name for t in finished) == ["COMPLETE", "FAIL"]
    assert work.suggest("t6") == {"d": 9, MODE: "final"} and published == [1]  # the search has ended
    work.on_trial_complete("t6", result=None, error=True)
    assert work.suggest("t7") == {"d": 9, MODE: "final"}  # a follow-up is started again too
    assert work.suggest("t8") is None  # t7 runs
    work.on_trial_complete("t7", result={"quality": 1.0})
    assert work.suggest("t8") == Searcher.FINISHED


def test_a_fixed_list_runs_as_a_pool_works_search_in_order_its_failed_trials_started_again():
    """The heuristic's seeds and the pipeline's maximal run as ``FixedList`` in a ``PoolWork``: each configuration
    once, in order, tagged ``search``; one whose evaluator died is started again before the run ends."""
    from lonas_ray.search.modes import MODE
    from lonas_ray.search.searchers import FixedList, PoolWork

    work = PoolWork(FixedList([{"d": 1}, {"d": 2}]), 2, retries=2)
    assert work.suggest("t1") == {"d": 1, MODE: "search"} and work.suggest("t2") == {"d": 2, MODE: "search"}
    assert work.suggest("t3") is None  # both run; none has succeeded yet
    work.on_trial_complete("t1", result={"quality": 1.0})
    work.on_trial_complete("t2", result=None, error=True)
    assert work.suggest("t3") == {"d": 2, MODE: "search"}
    assert work.suggest("t4") is None  # t3 runs
    work.on_trial_complete("t3", result={"quality": 0.5})
    assert work.suggest("t4") == Searcher.FINISHED and work.succeeded == 2


def test_a_sigterm_while_pools_search_tells_every_pools_run_to_stop_and_still_exits():
    """The driver's main thread waits while the pools search in threads; SIGTERM (``ray job stop``; Ray's handler
    raises ``SystemExit``) there sets the stop request, which ends each pool's Tune run (``PoolWatch``) and its
    follow-up (``FollowUps``), so the threads end and the exit goes on, instead of the threads running to their end."""
    import os
    import signal
    import sys
    import threading

    from lonas_ray.search import stop
    from lonas_ray.search.board import FollowUps, FrontBoard
    from lonas_ray.search.driver import each_pool
    from lonas_ray.search.pools import PoolWatch

    ended = []

    def pool_run(pool: str) -> str:  # a pool's Tune run, stepping until the stop request (checked by PoolWatch)
        for _ in range(600):
            if stop.stop_requested():
                ended.append(pool)
                return pool
            threading.Event().wait(0.05)
        return pool

    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(15))
    stop.clear_stop()
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with pytest.raises(SystemExit):
            each_pool(["a", "b"], pool_run)
        assert sorted(ended) == ["a", "b"]
        assert PoolWatch(None, grace_s=0).stop_all()  # a pool's Tune run ends at its next step, nodes or not
        board = FrontBoard(["a", "b"], score=True, maximal=("max", {"d": 9}))
        assert FollowUps(board, "a", cross=True, measured=set)() == "finished" and len(board.queue) == 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.clear_stop()


def test_each_pool_gets_a_sampler_seed_of_its_own_from_the_search_seed():
    from lonas_ray.search.searchers import pool_seed

    seeds = {pool_seed(s, p) for s in (0, 1) for p in ("pool-a", "pool-b", "local")}
    assert len(seeds) == 6 and all(0 <= x < 2 ** 31 for x in seeds)
    assert pool_seed(3, "pool-a") == pool_seed(3, "pool-a")  # the same run resumed samples as before


def test_bundles_that_fit_counts_whole_bundles_per_live_node():
    from lonas_ray.search.pools import bundles_that_fit

    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}},
             {"Alive": True, "Resources": {"CPU": 7.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # a dead node offers nothing
    assert bundles_that_fit(nodes, {"CPU": 4.0, "GPU": 1.0}) == 1  # the GPU, not the CPUs, bounds the first node
    assert bundles_that_fit(nodes, {"CPU": 4.0}) == 4 + 1
    assert bundles_that_fit(nodes, {"CPU": 1.0, "GPU": 0.5}) == 2
    assert bundles_that_fit(nodes, {"CPU": 1.0, "TPU": 1.0}) == 0
