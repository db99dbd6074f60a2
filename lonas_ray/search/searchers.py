"""The Tune searchers of each strategy, and the cache that keeps them from evaluating a configuration twice.

* ``random``: Optuna's ``RandomSampler`` through ``OptunaSearch``;
* ``nsga2``: Optuna's ``NSGAIISampler`` (multi-objective evolution) through
  ``OptunaSearch`` over (objective max, latency min); the objective is
  ``search.objective`` (the negated task loss by default: accuracy on a small
  subset moves in coarse, noisy steps, the loss moves smoothly);
* ``tpe``: Optuna's multi-objective ``TPESampler`` (MOTPE; multivariate, with the
  constant liar so that concurrent evaluators do not all get the same proposal),
  random for its first ``population`` trials;
* ``heuristic``: no sampler, a fixed list (``seed_configs``, run as ``FixedList``).

The Optuna strategies start from the maximal and minimal sub-networks (the
pick rule's reference and the ends of the front). Results of earlier runs are
added to the Optuna study as completed trials before the search starts, so a
resumed NSGA-II continues from its history instead of starting over.

``CachedSearcher`` wraps the searcher: when it proposes a configuration that
is already evaluated on this pool, the cached objectives are told to the
searcher straight away and a new proposal is asked for; a proposal that
duplicates one still running waits for that trial's result. A sampler that
keeps proposing what is known (TPE does, once its model is sharp) gets, after
``max_proposals`` repeats in a row, a seeded random configuration not yet seen
in its place; its result is added to the study as a completed trial
(``OptunaStudySearch.record``), so the sampler learns from it. When no unseen
configuration is left (a space too small for the budget) the search ends
(``Searcher.FINISHED``) instead of looping.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from ray import cloudpickle
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from lonas_ray.search.modes import MODE, SEARCH
from lonas_ray.search.objective import OBJECTIVES, objective_value
from lonas_ray.space import SearchSpace, SubnetConfig

log = logging.getLogger(__name__)

MODES = ["max", "min"]


def metrics(objective: str) -> list[str]:
    """The two trial metrics a searcher optimises: the quality objective (max) and latency (min)."""
    return [OBJECTIVES[objective], "latency_ms"]


def objectives(row: Mapping[str, Any], objective: str) -> dict[str, float]:
    """A results row's values of the searcher's metrics."""
    return {OBJECTIVES[objective]: objective_value(row, objective), "latency_ms": row["latency_ms"]}


def distributions(space: SearchSpace) -> dict[str, optuna.distributions.CategoricalDistribution]:
    """One categorical Optuna parameter per search-space dimension (its choices, in order)."""
    return {name: optuna.distributions.CategoricalDistribution(list(dim.choices))
            for name, dim in space.dims.items()}


def seed_configs(space: SearchSpace, strategy: str) -> list[SubnetConfig]:
    """What every search evaluates first: maximal (the reference) and minimal; heuristic adds the median."""
    configs = [space.maximal(), space.minimal()]
    if strategy == "heuristic":
        configs.insert(1, space.heuristic())
    out, seen = [], set()
    for c in configs:
        if space.subnet_id(c) not in seen:
            seen.add(space.subnet_id(c))
            out.append(c)
    return out


def pool_seed(seed: int, pool: str) -> int:
    """A pool's sampler seed, from the search's seed and the pool's name: pools searched with one seed would
    otherwise sample the same sub-networks (random search), leaving cross-evaluation nothing new to measure."""
    return (seed * 1_000_003 + zlib.crc32(pool.encode())) % 2 ** 31


def sampler(strategy: str, *, population: int, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of a search strategy (module doc)."""
    if strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=population, multivariate=True,
                                          constant_liar=True)
    raise ValueError(f"no Optuna sampler for strategy {strategy!r}")


class OptunaStudySearch(OptunaSearch):
    """Ray Tune's ``OptunaSearch`` over an in-memory study, made to survive pickling with any Optuna release.

    Tune pickles the searcher when it builds the ``Tuner`` and again at every experiment
    checkpoint (``save``). Optuna's samplers are not promised to pickle: 5.1's NSGA-II sampler
    holds a ``threading.Lock``. So this searcher pickles its *recipe* (strategy, population,
    seed, study name, directions) and a plain-data snapshot of the study (its ``FrozenTrial``
    list: completed, running and queued trials with their system attributes, which is all the
    NSGA-II generation bookkeeping needs), and rebuilds sampler, storage, lock and study on the
    other side. A rebuilt sampler is reseeded with (seed, trials so far) so that it does not
    replay the proposals its predecessor already made; an uninterrupted search stays seeded
    exactly as before.
    """

    def __init__(self, space: SearchSpace, strategy: str, *, population: int, seed: int,
                 known: Mapping[str, Mapping[str, Any]], study_name: str, objective: str = "quality"):
        self.strategy, self.population, self.seed = strategy, population, seed
        dists = distributions(space)
        pending = [c for c in seed_configs(space, strategy) if space.subnet_id(c) not in known]
        super().__init__(space=dists, metric=metrics(objective), mode=MODES,
                         sampler=sampler(strategy, population=population, seed=seed),
                         storage=optuna.storages.InMemoryStorage(), study_name=study_name)
        for row in known.values():  # history first, then the seeds queued, as Tune's own warm start would
            self.record(row["config"], list(objectives(row, objective).values()))
        for config in pending:
            self._ot_study.enqueue_trial(dict(config))

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def record(self, config: SubnetConfig, values: list[float]) -> None:
        """Add one evaluated configuration to the study as a completed trial (the sampler learns from it)."""
        self._ot_study.add_trial(optuna.trial.create_trial(params=dict(config), distributions=self._space,
                                                           values=values))

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in _LIVE}
        state["_trials"] = self._ot_study.get_trials(deepcopy=True)
        state["_directions"] = [d.name.lower() for d in self._ot_study.directions]
        # the live optuna.Trial objects of trials in flight travel as their trial numbers
        state["_ot_trials"] = {tid: (t if isinstance(t, int) else t.number) for tid, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        trials, directions = state.pop("_trials"), state.pop("_directions")
        self.__dict__.update(state)
        self._sampler = sampler(self.strategy, population=self.population,
                                seed=(self.seed * 1_000_003 + len(trials)) % 2 ** 32)
        self._storage = optuna.storages.InMemoryStorage()
        self._ot_study = optuna.create_study(storage=self._storage, study_name=self._study_name,
                                             directions=directions, sampler=self._sampler)
        for trial in trials:
            self._ot_study.add_trial(trial)
        # ``Study.tell`` takes a trial number, so trials in flight can still be completed after a restore

    def save(self, checkpoint_path: str) -> None:
        """Tune's experiment checkpoint: the same picklable state as ``__getstate__``
        (the parent pickles live objects)."""
        with open(checkpoint_path, "wb") as f:
            cloudpickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(cloudpickle.load(f))


# what OptunaStudySearch rebuilds instead of pickling
_LIVE = ("_sampler", "_storage", "_ot_study", "_ot_trials")


def build_searcher(space: SearchSpace, strategy: str, *, population: int, seed: int,
                   known: Mapping[str, Mapping[str, Any]], study_name: str,
                   objective: str = "quality") -> CachedSearcher:
    """The searcher a pool's search hands to Tune: the strategy's Optuna study, seeded with ``known``,
    behind the cache."""
    inner = OptunaStudySearch(space, strategy, population=population, seed=seed, known=known,
                              study_name=study_name, objective=objective)
    return CachedSearcher(inner, space, known, objective=objective, seed=seed)


class CachedSearcher(Searcher):
    """Wrap ``searcher`` so no configuration is evaluated twice (see the module doc)."""

    def __init__(self, searcher: OptunaStudySearch, space: SearchSpace, known: Mapping[str, Mapping[str, Any]],
                 objective: str = "quality", max_proposals: int = 50, seed: int = 0, random_tries: int = 500):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.space, self.max_proposals = searcher, space, max_proposals
        self.seed, self.random_tries = seed, random_tries
        self.metrics = metrics(objective)
        self.known = {sid: objectives(row, objective) for sid, row in known.items()}
        self.running: dict[str, str] = {}  # subnet id -> Tune trial id
        self.alias: dict[str, str] = {}  # Tune trial id -> id the inner searcher knows it by
        self.waiting: dict[str, list[str]] = {}  # subnet id -> inner ids of duplicates of a running trial
        self.substitutes: dict[str, SubnetConfig] = {}  # Tune trial id -> random stand-in the inner never saw
        self.duplicates = 0
        self.draws = 0  # random stand-ins drawn so far (the next one's seed)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        for attempt in range(self.max_proposals):
            inner_id = trial_id if attempt == 0 else f"{trial_id}_dup{attempt}"
            config = self.searcher.suggest(inner_id)
            if config is None or config == Searcher.FINISHED:
                return config
            sid = self.space.subnet_id(self.space.validate(dict(config)))
            if sid in self.known:
                self.duplicates += 1
                self.searcher.on_trial_complete(inner_id, result=dict(self.known[sid]))
                continue
            if sid in self.running:
                self.duplicates += 1
                self.waiting.setdefault(sid, []).append(inner_id)
                continue
            self.running[sid] = trial_id
            self.alias[trial_id] = inner_id
            return config
        config = self.unseen_random()
        if config is None:
            log.warning("no new configuration in %d proposals and %d random draws: the space looks exhausted; "
                        "ending the search", self.max_proposals, self.random_tries)
            return Searcher.FINISHED
        log.info("the sampler repeated known configurations %d times in a row; evaluating a random unseen one",
                 self.max_proposals)
        self.running[self.space.subnet_id(config)] = trial_id
        self.substitutes[trial_id] = config
        return config

    def unseen_random(self) -> SubnetConfig | None:
        """A seeded random configuration neither known nor running, or None after ``random_tries`` draws."""
        for _ in range(self.random_tries):
            config = self.space.sample(self.seed * 1_000_003 + self.draws)
            self.draws += 1
            sid = self.space.subnet_id(config)
            if sid not in self.known and sid not in self.running:
                return config
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.substitutes:
            self.searcher.on_trial_result(self.alias.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        substitute = self.substitutes.pop(trial_id, None)
        if substitute is None:
            self.searcher.on_trial_complete(self.alias.pop(trial_id, trial_id), result=result, error=error)
        sid = next((s for s, t in self.running.items() if t == trial_id), None)
        if sid is None:
            return
        del self.running[sid]
        if result is not None and not error:
            self.known[sid] = {m: result[m] for m in self.metrics}
            if substitute is not None:
                self.searcher.record(substitute, [result[m] for m in self.metrics])
        for inner_id in self.waiting.pop(sid, []):
            if sid in self.known:
                self.searcher.on_trial_complete(inner_id, result=dict(self.known[sid]))
            else:
                self.searcher.on_trial_complete(inner_id, result=None, error=True)

    def get_state(self) -> dict:
        """The wrapper's own state (Tune saves it with the experiment; the inner searcher saves itself)."""
        return {"known": self.known, "running": self.running, "alias": self.alias, "waiting": self.waiting,
                "substitutes": self.substitutes, "duplicates": self.duplicates, "draws": self.draws}

    def set_state(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class SharedQueue:
    """Configurations that several Tune runs (one per pool, in threads of the driver) take from, each once."""

    def __init__(self, configs: Sequence[SubnetConfig]):
        self._items, self._lock = list(configs), threading.Lock()

    def pop(self) -> SubnetConfig | None:
        with self._lock:
            return self._items.pop(0) if self._items else None

    def put(self, configs: Sequence[SubnetConfig]) -> None:
        with self._lock:
            self._items.extend(configs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __getstate__(self) -> dict:  # Tune pickles its search algorithm with the experiment's state
        return {"_items": list(self._items)}

    def __setstate__(self, state: dict) -> None:
        self._items, self._lock = state["_items"], threading.Lock()


class FixedList(Searcher):
    """The given configurations in order, then finished: a fixed list (the heuristic's seeds, the maximal alone) run
    as a ``PoolWork``'s search, so its trials are started again as the search's are."""

    def __init__(self, configs: Sequence[Mapping[str, Any]]):
        super().__init__()
        self.configs = [dict(c) for c in configs]

    def suggest(self, trial_id: str) -> dict | str:
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # nothing learns from a fixed list's results


class PoolWork(Searcher):
    """One Tune run of a pool: at most ``budget`` trials of its own ``search``, then the work ``then`` hands out (a
    ``board.FollowUps``: cross-evaluation, full-set scoring) while it has some, with ``on_searched()`` (the driver
    publishes the pool's front) once every search trial has ended. The follow-up runs on the evaluators the search
    loaded, where a run of its own would start and load them again, and an evaluator the search no longer needs
    takes it while the last search trials run. The run ends when there is no work left for now and none of its
    trials runs; the driver then waits for more (another pool's front) without holding evaluators. Each
    configuration carries its mode (``modes.MODE``); only the search's own trials reach ``search``.

    A trial that fails (its evaluator died: killed, out of memory, its node lost) is started again as a new trial
    of the same configuration, at most ``retries`` times, before the one it stands for counts as failed; a search
    trial's retry stands for it towards ``search`` (same id) and the budget. The run does this itself, with Tune's
    own retries off (``_tune``): Tune starts a trial again only if it was running, and a trial whose *reused*
    evaluator died before it started (Tune resets the idle actor first) is still pending, so it would fail for good.

    A search none of whose trials succeeded ends the run there (its evaluator is broken: the driver names it, and
    the shared work is left to the other pools). Either part may be absent: no ``search`` (a follow-up of its own:
    the pool's search needed no Tune run, or pools search one after another) or no ``then`` (a search cut into
    several runs, before its last one).
    """

    def __init__(self, search: Searcher | None, budget: int, then=None, on_searched=None, retries: int = 0):
        super().__init__()
        self.search, self.budget, self.then, self.on_searched = search, budget, then, on_searched
        self.issued, self.searching, self.searched = 0, set(), search is None or budget <= 0
        self.succeeded, self.following = 0, set()
        self.retries, self.failures = retries, {}  # failures so far, by the id of the trial a retry stands for
        self.running: dict[str, tuple[str, dict]] = {}  # Tune trial id -> (the id it stands for, its config)
        self.again: list[tuple[str, dict]] = []  # failed trials to start again, first come first

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True if self.search is None else self.search.set_search_properties(metric, mode, config, **spec)

    def _start(self, trial_id: str, config: dict, stands_for: str | None = None) -> dict:
        self.running[trial_id] = (stands_for or trial_id, config)
        return config

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.again:  # a dead evaluator's trial first: it holds up the front (search) or the follow-up
            stands_for, config = self.again.pop(0)
            return self._start(trial_id, config, stands_for)
        if not self.searched:
            config = self.search.suggest(trial_id) if self.issued < self.budget else Searcher.FINISHED
            if config is None:
                return None
            if config != Searcher.FINISHED:
                self.issued += 1
                self.searching.add(trial_id)
                return self._start(trial_id, {**config, MODE: SEARCH})
            self.searched = True  # the budget is spent, or nothing is left to propose (a small space)
        if not self.searching:
            if self.issued and not self.succeeded:  # a broken evaluator: it would fail the others' work too
                return Searcher.FINISHED
            if self.on_searched is not None:  # the front is drawn from the search's rows: all of them are in
                self.on_searched()
                self.on_searched = None
        elif not self.succeeded:
            return None  # the running search trials may yet show the evaluator is broken
        work = self.then() if self.then is not None else Searcher.FINISHED
        if work is None or isinstance(work, str):  # nothing now, or nothing more
            # the run ends once none of its trials runs: idle, its evaluators would hold what another pool on
            # the same nodes may need to publish the front this one waits for (the driver waits, not the run)
            return None if self.searching or self.following else Searcher.FINISHED
        mode, config = work
        self.following.add(trial_id)
        return self._start(trial_id, {**config, MODE: mode})

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        stands_for = self.running.get(trial_id, (trial_id, None))[0]
        if stands_for in self.searching:
            self.search.on_trial_result(stands_for, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stands_for, config = self.running.pop(trial_id, (trial_id, None))
        if error and config is not None and self.failures.get(stands_for, 0) < self.retries:
            self.failures[stands_for] = self.failures.get(stands_for, 0) + 1
            log.warning("trial %s failed (%s of %s tries); starting it again", stands_for,
                        self.failures[stands_for], self.retries + 1)
            self.again.append((stands_for, config))
            return
        self.following.discard(stands_for)  # a follow-up trial's result is the driver's callback's alone
        if stands_for in self.searching:
            self.searching.discard(stands_for)
            self.succeeded += result is not None and not error
            self.search.on_trial_complete(stands_for, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        pass  # nothing to resume from Tune's state: a re-run continues from results.parquet and final_quality.json

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self) -> dict:  # Tune pickles its search algorithm; the driver's callables stay behind
        return self.__dict__ | {"then": None, "on_searched": None}
