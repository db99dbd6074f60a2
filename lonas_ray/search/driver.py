"""The search driver: per pool, a Ray Tune run of sub-network trials; then final quality, fronts, the pick.

Output directory::

    results.parquet     every evaluation, one row per (subnet_id, pool), appended as trials finish
    latency_reference.json  per pool, the maximal timed again during the search (``Evaluator.reference``)
    final_quality.json  full-set quality of the fronts' members (and maximal), by subnet id (+ outcomes)
    pareto.parquet      the fronts of every pool (columns of results + front, picked, *_full)
    search_summary.json per pool: evaluations, hypervolume, reference point, pick
    ray_results/        the Tune runs (trial logs, for the dashboard and debugging)

Re-running with the same output directory evaluates only what is missing: a
pool's budget counts its rows already in results.parquet, the searcher is
seeded with them, and the final evaluation skips ids already in
final_quality.json.

Every pool is searched at once (``search.concurrent_pools``): one thread per pool in
this process, each running its own Tune run with its own searcher and budget, so the
wall time is the slowest pool's rather than the sum. This process stays the one
writer of ``results.parquet``: the pools' Tune callbacks append under one lock
(``_WRITE``). A pool whose search is done publishes its front (``FrontBoard``) and
goes on at once: it measures each other pool's front as soon as that is published
(cross-evaluation, rows with phase ``cross``) and takes sub-networks from one queue of
full-set scoring shared by all pools, so a faster pool takes more. That follow-up work
(``board.FollowUps``) begins in the pool's last Tune run of its search (``PoolWork``), on
the evaluators that search loaded, instead of starting and loading new ones; a run ends
when it has no work for now, and ``follow_up`` waits, holding no evaluators, for more.
What is cross-evaluated and scored depends only on each pool's own search rows, not on
which pool finished first, so the fronts equal a sequential run's. A pool that fails
does not stop the others' running work: each runs to its end, then the failure is
raised naming its pool. Within a pool ``evaluators`` trials run at once.
``search_summary.json`` records, per pool, the fraction of the search's wall time its
evaluators were busy (``utilisation``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lonas_ray.atomic import atomic_file, write_json
from lonas_ray.build import load_prepared, preflight
from lonas_ray.config_io import ConfigError, to_dict
from lonas_ray.data.spec import check_data
from lonas_ray.search import modes
from lonas_ray.search.board import FollowUps, FrontBoard
from lonas_ray.search.config import SearchConfig
from lonas_ray.search.front import pool_fronts
from lonas_ray.search.results import SCHEMA, append_results, check_space, compact_results, read_results
from lonas_ray.search.stop import clear_stop, request_stop, stop_requested
from lonas_ray.space import SearchSpace
from lonas_ray.storage import RunStorage, is_uri

log = logging.getLogger(__name__)

RESULTS, PARETO, FINAL, SUMMARY = "results.parquet", "pareto.parquet", "final_quality.json", "search_summary.json"
REFERENCES = "latency_reference.json"
_WRITE = threading.Lock()  # one writer of results.parquet and final_quality.json: the pools' callbacks take turns
_REGISTER = threading.Lock()  # Tune's trainable registry, one pool at a time


class SearchError(RuntimeError):
    """No evaluation of a pool succeeded (a broken evaluator, not a bad sub-network); names the first error."""


@dataclass
class SearchResult:
    output_dir: Path
    evaluated: dict[str, int] = field(default_factory=dict)  # new evaluations this run, per pool
    summary: dict = field(default_factory=dict)


class BusyClock:
    """Seconds each pool's evaluators spent evaluating in this run (the rows' ``eval_s``), for utilisation."""

    def __init__(self):
        self.busy: dict[str, float] = {}
        self.t0 = time.monotonic()

    def add(self, pool: str, seconds: float | None) -> None:
        with _WRITE:
            self.busy[pool] = self.busy.get(pool, 0.0) + (seconds or 0.0)

    def utilisation(self, cfg: SearchConfig) -> dict[str, dict]:
        """Per pool: busy seconds over (evaluators x the search's wall time so far)."""
        wall = time.monotonic() - self.t0
        out = {}
        for pool in cfg.search.pools:
            n, busy = cfg.pools[pool].evaluators, self.busy.get(pool, 0.0)
            out[pool] = {"evaluators": n, "busy_s": round(busy, 3), "wall_s": round(wall, 3),
                         "fraction": round(busy / (n * wall), 4) if wall > 0 else None}
        return out


CLOCK = BusyClock()  # reset by run_search


def each_pool(pools: list[str], work: Callable[[str], Any], concurrent: bool = True) -> dict[str, Any]:
    """``work(pool)`` for every pool: at once (a thread each; a pool's Tune run waits on the cluster, not on this
    process) or one after another. Every pool's work runs to its end; then a failure is raised, named by its pool.
    """
    results, errors = {}, {}
    if concurrent and len(pools) > 1:
        ex = ThreadPoolExecutor(len(pools), thread_name_prefix="lonas-pool")
        futures = {pool: ex.submit(work, pool) for pool in pools}
        try:  # in short waits: Python runs a signal's handler in this thread between waits, not during one
            while wait(futures.values(), timeout=0.2).not_done:
                pass
        except BaseException:  # SIGTERM (`ray job stop`; Ray's handler raises SystemExit here) or Ctrl-C
            request_stop()  # the pools' Tune runs end at their next step, so this process exits now
            raise
        finally:
            ex.shutdown(wait=True)
        for pool, f in futures.items():
            if f.exception() is None:
                results[pool] = f.result()
            else:
                errors[pool] = f.exception()
    else:
        for pool in pools:
            try:
                results[pool] = work(pool)
            except Exception as exc:  # noqa: BLE001  (the other pools' work still runs; raised below)
                errors[pool] = exc
    if not errors:
        return results

    def named(pool: str, exc: BaseException) -> str:  # PoolError and SearchError already name their pool
        return str(exc) if f"pool '{pool}'" in str(exc) or f"pool {pool}" in str(exc) else f"pool {pool}: {exc}"

    if len(errors) == 1:
        (pool, exc), = errors.items()
        if named(pool, exc) == str(exc):
            raise exc
        raise SearchError(named(pool, exc)) from exc
    for pool, exc in errors.items():
        log.error("pool %s failed: %s", pool, exc)
    raise SearchError(f"{len(errors)} pools failed: " + "; ".join(named(p, e) for p, e in errors.items())) \
        from next(iter(errors.values()))


def rows_by_pool(path: Path, pool: str, phase: str | None = None) -> dict[str, dict]:
    """Rows of ``pool`` (of one ``phase``, or all) already in the results file, by subnet id, ``config`` parsed."""
    out = {}
    for row in read_results(path).to_pylist():
        if row["pool"] == pool and phase in (None, row["phase"]):
            out[row["subnet_id"]] = dict(row, config=json.loads(row["config"]))
    return out


def supernet_source(cfg: SearchConfig, out: Path) -> Path:
    """The directory evaluators load: the trained super-network, or one prepared here from the spec."""
    if cfg.supernet_dir:
        source = RunStorage.open(cfg.supernet_dir, key="supernet_dir", writable=False)
        source.pull()  # a URI (`lonas-ray train --output s3://...`) is fetched once into a local copy
        check_supernet_dir(source.local, cfg.supernet_dir)
        return source.local
    from lonas_ray.build import prepare_once

    return prepare_once(cfg.supernet, out / "prepared", cfg.data)


# The callbacks below are classes made per run, which Tune pickles by value with its state: they reach the lock
# and the clock through these module functions (pickled by reference), never directly.
def _append_row(path: Path, pool: str, row: dict) -> None:
    with _WRITE:
        append_results(path, [row])
    CLOCK.add(pool, row["eval_s"])


def _read_map(path: Path) -> dict:
    """A JSON mapping the search writes as it goes; {} before its first entry."""
    return json.loads(path.read_text()) if path.exists() else {}


def read_finals(path: Path) -> dict[str, dict]:
    """final_quality.json: full-set figures by subnet id ({} before any)."""
    return _read_map(path)


def _record_final(path: Path, pool: str, row: dict) -> None:
    with _WRITE:
        finals = read_finals(path)
        finals[row["subnet_id"]] = {"quality": row["quality"], "loss": row["loss"], "task_loss": row["task_loss"],
                                    "examples": row["eval_examples"], "metric": row["quality_metric"],
                                    "pool": pool, "timestamp": row["timestamp"],
                                    "outcomes": json.loads(row["outcomes"]) if row.get("outcomes") else None}
        write_json(path, finals)
    CLOCK.add(pool, row["eval_s"])


def read_references(path: Path) -> dict[str, list[dict]]:
    """latency_reference.json: per pool, the maximal's timings made during the search ({} before any)."""
    return _read_map(path)


def _record_reference(path: Path, pool: str, entry: dict) -> None:
    with _WRITE:
        refs = read_references(path)
        refs.setdefault(pool, []).append(entry)
        write_json(path, refs)


def _results_writer(out: Path, pool: str, progress=None):
    from ray.tune import Callback

    class ResultsWriter(Callback):
        """Appends each finished trial's row on the driver, so an interrupted search keeps its work: a search or
        cross row to results.parquet (its phase is the trial's mode), a full-set score to final_quality.json."""

        def __init__(self):
            self.written = self.scored = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("reference_json"):
                _record_reference(out / REFERENCES, pool, json.loads(result["reference_json"]))
            row = json.loads(result["row_json"])
            if result["mode"] == modes.FINAL:
                _record_final(out / FINAL, pool, row)
                self.scored += 1
                return
            row = {k: result["mode"] if k == "phase" else row[k] for k in SCHEMA.names}
            _append_row(out / RESULTS, pool, row)
            self.written += 1
            if progress is not None:
                progress.add(row)
            log.info("pool %s: %s quality %.4f latency %s ms (%d new)", pool, row["subnet_id"], row["quality"],
                     f"{row['latency_ms']:.3f}" if row["latency_ms"] is not None else "-", self.written)

    return ResultsWriter()


def _stop_if_requested(pool: str) -> None:
    """``SearchError`` once the driver is told to stop (``search.stop``): the pool starts nothing more."""
    if stop_requested():
        raise SearchError(f"pool {pool}: stopped (the driver was told to stop); its rows so far are kept")


def _tune(cfg: SearchConfig, pool: str, placement, source: Path, *, search_alg, num_samples: int, kind: str, callback,
          out: Path):
    """One Tune run of ``num_samples`` evaluator trials on ``pool`` (-1: until ``search_alg`` says it is finished),
    named by its ``kind``; returns (results grid, failed trials)."""
    from ray import tune

    from lonas_ray.search.evaluator import EvalJob
    from lonas_ray.search.pools import PoolError, PoolWatch, wait_seconds
    from lonas_ray.search.trainable import SubnetTrainable

    job = EvalJob.from_config(cfg, pool, source)
    trainable = tune.with_resources(tune.with_parameters(SubnetTrainable, job=job),
                                    placement.trial_resources())
    # Tune's trainable registry is not thread-safe (it iterates what it is about to store while another
    # registration adds to it): pools searching at once register theirs one at a time, under a name of their own
    name = f"lonas-{kind}-{pool}-{uuid.uuid4().hex[:8]}"
    with _REGISTER:
        tune.register_trainable(name, trainable)
    tuner = tune.Tuner(
        name,
        param_space={},  # the searcher (PoolWork) proposes every configuration
        tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=num_samples, reuse_actors=True,
                                    max_concurrent_trials=cfg.pools[pool].evaluators),
        run_config=tune.RunConfig(
            name=f"{kind}-{pool}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",  # runs of one second
            storage_path=str(out / "ray_results"),
            stop=(watch := PoolWatch(placement, wait_seconds(cfg.pools[pool]))),
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),  # a trial has nothing to resume
            # an evaluator that dies (killed, out of memory) takes its trial with it: started again from scratch by
            # PoolWork, the run's searcher (Tune would not restart one that died before it started), not by Tune
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[callback],
            verbose=0,  # progress is our bar and gauges: Tune's tables of ~150 config columns are unreadable
        ),
    )
    grid = tuner.fit()
    errors = [r for r in grid if r.error is not None]
    for r in errors:
        log.error("pool %s: trial %s failed: %s", pool, r.path, r.error)
    if watch.lost:
        raise PoolError(watch.lost)
    _stop_if_requested(pool)  # nothing after this run (its front, the follow-up) is to start
    return grid, errors


def _run_pool(cfg: SearchConfig, pool: str, space: SearchSpace, source: Path, out: Path, *, known: dict[str, dict],
              total: int, run: str | None = None, kind: str = modes.SEARCH, **tune_args) -> int:
    """One Tune run on ``pool`` whose rows go to results.parquet (and full-set scores to final_quality.json);
    returns how many rows were written. ``known``: the pool's rows so far (``rows_by_pool``, which the caller has
    just read), where its progress starts."""
    from lonas_ray.search.progress import SearchProgress

    progress = SearchProgress(run or out.name, pool, total, list(known.values()), space.subnet_id(space.maximal()))
    writer = _results_writer(out, pool, progress)
    try:
        _, errors = _tune(cfg, pool, _placement(cfg, pool), source, kind=kind, callback=writer, out=out, **tune_args)
    finally:
        progress.close()
    if errors and not writer.written and not writer.scored:
        raise SearchError(f"pool {pool}: every trial failed ({len(errors)}); the first: {errors[0].error}")
    return writer.written


def _placement(cfg: SearchConfig, pool: str):
    from lonas_ray.search.pools import wait_for_pool

    placement, nodes = wait_for_pool(pool, cfg.pools[pool])
    log.info("pool %s: placing by %s on %d node(s)", pool, placement.mode, len(nodes))
    return placement


def check_pools_now(cfg: SearchConfig) -> None:
    """Every pool that is not to be waited for (no autoscaler) has a node now: else ``PoolError`` before the
    super-network is prepared (a pool that may be waited for is checked when its search starts)."""
    from lonas_ray.search.pools import wait_seconds

    for pool in cfg.search.pools:
        if wait_seconds(cfg.pools[pool]) == 0:
            _placement(cfg, pool)


def check_supernet_dir(directory: Path, named: str | None = None) -> None:
    """``ConfigError`` when ``supernet_dir`` is not a super-network directory lonas-ray wrote; ``named``: what the
    config called it (a URI, whose local copy ``directory`` is)."""
    from lonas_ray.build import missing_prepared

    missing = missing_prepared(directory)
    if missing:
        raise ConfigError(f"supernet_dir {named or directory} is not a lonas-ray super-network directory: missing "
                          f"{missing}; point it at the supernet/ directory `lonas-ray train` wrote")


def check_pool_runtimes(cfg: SearchConfig, wait: bool = True) -> None:
    """A pool timed by vLLM must have vLLM's environment on its own nodes: checked there, before any trial.
    ``wait=False`` (the pipeline's preflight, before training): only pools with a node now; an autoscaled pool
    still at zero nodes is checked when its search starts, rather than starting its node before training."""
    import ray

    from lonas_ray.search.pools import resolve, serving_nodes
    from lonas_ray.search.vllm_runtime import check_vllm_python

    for pool in cfg.search.pools:
        latency = cfg.pools[pool].latency
        if "vllm" not in latency.runtimes:
            continue
        if not wait:
            nodes = ray.nodes()
            if not serving_nodes(nodes, resolve(pool, cfg.pools[pool], nodes)):
                log.info("pool %s has no node yet: its vLLM environment is checked when its search starts", pool)
                continue
        task = ray.remote(check_vllm_python).options(**_placement(cfg, pool).task_options())
        try:
            ray.get(task.remote(latency.vllm_python, pool))
        except ray.exceptions.RayTaskError as e:
            raise ConfigError(str(getattr(e, "cause", None) or e)) from None


def evaluate_configs(cfg: SearchConfig, pool: str, space: SearchSpace, source: Path, out: Path,
                     configs: list, run: str | None = None) -> int:
    """Evaluate the given sub-networks on ``pool`` (those not yet in results.parquet); returns how many. ``run``:
    the name the gauges are tagged with (default: the output directory's)."""
    from lonas_ray.search.searchers import FixedList, PoolWork

    known = rows_by_pool(out / RESULTS, pool)
    todo, seen = [], set(known)
    for c in configs:
        sid = space.subnet_id(c)
        if sid not in seen:
            seen.add(sid)
            todo.append(c)
    if not todo:
        return 0
    work = PoolWork(FixedList(todo), len(todo), retries=cfg.search.trial_retries)
    return _run_pool(cfg, pool, space, source, out, known=known, total=len(known) + len(todo), run=run,
                     search_alg=work, num_samples=-1)


def search_pool(cfg: SearchConfig, pool: str, space: SearchSpace, source: Path, out: Path,
                run: str | None = None, then: FollowUps | None = None, on_searched=None) -> int:
    """Run the pool's remaining budget; returns the number of new rows. With ``then``, the search's last Tune run
    goes on, once its trials have ended, with ``on_searched()`` and the follow-up work ``then`` hands out
    (``PoolWork``); a search that starts no Tune run (heuristic, budget spent) calls neither."""
    from lonas_ray.search.searchers import PoolWork, build_searcher, pool_seed, seed_configs

    path = out / RESULTS
    s = cfg.search
    if s.strategy == "heuristic":
        return evaluate_configs(cfg, pool, space, source, out, seed_configs(space, s.strategy), run=run)
    written = 0
    # A long search runs as several Tune runs of at most trials_per_run trials, each continuing from the rows as a
    # resumed search does: what Tune keeps per trial is let go between them, so the driver's memory stays bounded.
    while True:
        known = rows_by_pool(path, pool)  # every row on the pool: the searcher's history and its cache
        n = s.budget - sum(r["phase"] == "search" for r in known.values())  # cross rows are not the pool's search
        if n <= 0:
            break
        # a later run's sampler seeded anew (by the trials so far), or it would first replay its predecessor
        alg = build_searcher(space, s.strategy, population=s.population, seed=pool_seed(s.seed, pool) + written,
                             known=known, study_name=f"lonas-{pool}", objective=s.objective)
        last = then is not None and n <= s.trials_per_run
        work = PoolWork(alg, min(n, s.trials_per_run), then if last else None, on_searched if last else None,
                        retries=s.trial_retries)
        # a run that follows up ends when its work does
        new = _run_pool(cfg, pool, space, source, out, known=known, total=s.budget, run=run, search_alg=work,
                        num_samples=-1 if last else min(n, s.trials_per_run))
        written += new
        if last or new == 0:  # followed up; or nothing more to propose (a small space, all of it evaluated)
            break
    if written == 0 and n <= 0:
        log.info("pool %s: budget of %d already spent (in %s); nothing to evaluate", pool, s.budget, path)
    return written


def front_members(cfg: SearchConfig, rows) -> dict[str, dict]:
    """The members of every front (``FRONTS``) of ``rows``: config by subnet id."""
    from lonas_ray.search.front import FRONTS, front_rows

    rows = list(rows)
    return {r["subnet_id"]: r["config"] for cost in FRONTS.values()
            for r in front_rows(rows, cost, cfg.search.objective)}


def final_scoring(cfg: SearchConfig) -> bool:
    """Whether front members get a full-set score (not when the search subset already is the full set)."""
    return cfg.quality.examples != cfg.quality.final_examples


def new_board(cfg: SearchConfig, space: SearchSpace, out: Path) -> FrontBoard:
    """The board the pools publish their fronts on; maximal and the unscored front members queued for scoring."""
    scored = read_finals(out / FINAL)
    maximal = space.maximal()
    return FrontBoard(cfg.search.pools, score=final_scoring(cfg), scored=scored,
                      maximal=(space.subnet_id(maximal), maximal))


def follow_ups(cfg: SearchConfig, pool: str, out: Path, board: FrontBoard) -> FollowUps:
    """``pool``'s follow-up work: the other pools' fronts (with ``search.cross_evaluate``), the scoring queue.

    One round of cross-evaluation is enough: a pool's front after it is drawn from its own front and the other
    pools' fronts, all of which are then measured everywhere (a dominated row stays dominated when rows are added).
    """
    return FollowUps(board, pool, cross=cfg.search.cross_evaluate and len(cfg.search.pools) > 1,
                     measured=lambda: set(rows_by_pool(out / RESULTS, pool)))


def search_and_publish(cfg: SearchConfig, pool: str, space: SearchSpace, source: Path, out: Path,
                       board: FrontBoard, run: str | None = None, follow: bool = False) -> int:
    """``pool``'s search, then its front on the board (nothing, when the search failed: the others stop waiting);
    with ``follow``, then its follow-up work, begun in the search's last Tune run where it has one. Returns the
    rows written."""
    published = []

    def publish() -> None:
        board.publish(pool, front_members(cfg, rows_by_pool(out / RESULTS, pool, modes.SEARCH).values()))
        published.append(pool)

    then = follow_ups(cfg, pool, out, board) if follow else None
    try:
        n = search_pool(cfg, pool, space, source, out, run, then=then, on_searched=publish)
    except BaseException:
        if not published:
            board.publish(pool, None)
        raise
    if not published:  # no Tune run of the search went on to publish
        publish()
    if then is not None:  # what the search's run left (it ends when no work is there for now)
        n += follow_up(cfg, pool, space, source, out, board, run, then)
    return n


def follow_up(cfg: SearchConfig, pool: str, space: SearchSpace, source: Path, out: Path, board: FrontBoard,
              run: str | None = None, then: FollowUps | None = None) -> int:
    """``pool``'s follow-up work in Tune runs of its own: measure each other pool's front on ``pool`` as soon as it
    is published (cross-evaluation, so every front member has a latency on every pool) and, in between, take
    sub-networks from the shared full-set scoring queue; returns the cross rows written. A run starts when there is
    work and ends when there is none for now; in between this waits for the next pool to be done, holding no
    evaluators (pools sharing nodes would otherwise wait on each other). ``then``: the pool's ``FollowUps`` so far."""
    from lonas_ray.search.searchers import PoolWork

    then, written = then or follow_ups(cfg, pool, out, board), 0
    while not then.done():
        _stop_if_requested(pool)
        _, done, _ = board.snapshot()
        if not then.ready():
            board.wait_past(done, timeout=1.0)
            continue
        known = rows_by_pool(out / RESULTS, pool)
        written += _run_pool(cfg, pool, space, source, out, known=known, total=len(known), run=run,
                             kind="follow-up", search_alg=PoolWork(None, 0, then, retries=cfg.search.trial_retries),
                             num_samples=-1)
    return written


PARETO_EXTRA = [pa.field("front", pa.string()), pa.field("member", pa.bool_()), pa.field("picked", pa.bool_()),
                pa.field("quality_full", pa.float64()), pa.field("loss_full", pa.float64()),
                pa.field("task_loss_full", pa.float64()), pa.field("eval_examples_full", pa.int64()),
                pa.field("quality_full_ci95_low", pa.float64()), pa.field("quality_full_ci95_high", pa.float64())]


def write_pareto(cfg: SearchConfig, space: SearchSpace, out: Path, finals: dict[str, dict]) -> dict:
    """pareto.parquet and the per-pool summary (fronts, hypervolume, pick)."""
    maximal_id = space.subnet_id(space.maximal())
    all_rows, summary = [], {}
    for pool in cfg.search.pools:
        rows = [dict(r, config=json.dumps(r["config"], sort_keys=True))
                for r in rows_by_pool(out / RESULTS, pool).values()]
        p = cfg.pareto
        front, info = pool_fronts(rows, maximal_id, finals, delta=p.delta, reference_quality=p.reference_quality,
                                  reference_cost=p.reference_cost, objective=cfg.search.objective,
                                  minimal_id=space.subnet_id(space.minimal()))
        all_rows.extend(front)
        summary[pool] = info
    schema = pa.schema(list(SCHEMA) + PARETO_EXTRA)
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in all_rows], schema=schema)
    with atomic_file(out / PARETO) as tmp:
        pq.write_table(table, tmp)
    return summary


def local_pool_tags(cfg: SearchConfig) -> dict:
    """An embedded Ray stands in for every pool: the first pool's label, every pool's resource.

    Its latency figures are then this machine's, whatever the pool is called.
    """
    from lonas_ray.search.config import pool_label, pool_resource

    names = cfg.search.pools
    if len(names) > 1:
        log.warning("embedded Ray: this machine serves all of pools %s; their latencies are all this machine's",
                    names)
    resources = {pool_resource(n, cfg.pools[n]): 1 for n in names}
    return {"labels": pool_label(names[0], cfg.pools[names[0]]), "resources": resources}


def run_search(cfg: SearchConfig, address: str | None = None) -> SearchResult:
    """The whole search stage (see the module doc); re-running continues where a run stopped."""
    check_data(cfg.data)
    storage = RunStorage.open(cfg.output_dir)  # a URI: a local copy, resumed from it and mirrored to it
    storage.pull()
    out = storage.local
    read_results(out / RESULTS)  # a corrupt results file fails here, before any cluster work
    if cfg.supernet is not None and (early := preflight(cfg.supernet)) is not None:
        check_space(out / RESULTS, early.choices())  # before anything is prepared into the output
    elif cfg.supernet_dir and not is_uri(cfg.supernet_dir):
        check_supernet_dir(Path(cfg.supernet_dir))

    from lonas_ray.ray_env import ensure_ray

    ensure_ray(address, **local_pool_tags(cfg))
    check_pools_now(cfg)
    check_pool_runtimes(cfg)  # a pool whose latency runtime cannot start: refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    source = supernet_source(cfg, out)
    space = load_prepared(source)[1]
    check_space(out / RESULTS, space.choices())
    result = SearchResult(out)
    global CLOCK
    CLOCK = BusyClock()
    clear_stop()
    storage.start_mirroring()
    try:
        board = new_board(cfg, space, out)

        def searched(pool: str, follow: bool = False) -> int:
            return search_and_publish(cfg, pool, space, source, out, board, storage.name, follow)

        def followed(pool: str) -> int:
            return follow_up(cfg, pool, space, source, out, board, storage.name)

        pools = cfg.search.pools
        if cfg.search.concurrent_pools:  # each pool follows up on its own as soon as its search is done
            result.evaluated = each_pool(pools, lambda pool: searched(pool, follow=True))
        else:
            result.evaluated = each_pool(pools, searched, concurrent=False)
            for pool, n in each_pool(pools, followed, concurrent=False).items():
                result.evaluated[pool] += n
        finals = read_finals(out / FINAL) if final_scoring(cfg) else {}
        pools = write_pareto(cfg, space, out, finals)
        result.summary = {"config": to_dict(cfg), "strategy": cfg.search.strategy, "space_size": space.size(),
                          "maximal": space.subnet_id(space.maximal()), "new_evaluations": result.evaluated,
                          "pools": pools, "concurrent_pools": cfg.search.concurrent_pools,
                          "utilisation": CLOCK.utilisation(cfg)}
        write_json(out / SUMMARY, result.summary)
    finally:  # done or failed: the rows in one part, and the storage gets what was written
        with _WRITE:
            compact_results(out / RESULTS)
        storage.stop_mirroring()
    return result
