"""Where pools searched at once hand each other their fronts, as soon as each pool's search is done.

A pool's search publishes its front members (config by subnet id, from its own ``search`` rows
only, so the set does not depend on which pool finished first); every other pool then measures
them (cross-evaluation) without waiting for the rest, and their full-set scoring is queued for
whichever pool is free. The queue's set is the maximal sub-network plus every published front:
a superset of the members of the final fronts (a row non-dominated among a pool's search and
cross rows is non-dominated among the rows it came from), known before any cross row exists.
A pool whose search failed publishes nothing but still counts as done, so nobody waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from lonas_ray.search.modes import CROSS, FINAL
from lonas_ray.search.searchers import SharedQueue
from lonas_ray.search.stop import stop_requested
from lonas_ray.space import SubnetConfig


class FrontBoard:
    def __init__(self, pools: Iterable[str], *, score: bool, scored: Iterable[str] = (),
                 maximal: tuple[str, SubnetConfig] | None = None):
        """``score``: whether fronts are queued for full-set scoring (not when the search subset is the full set);
        ``scored``: ids already in final_quality.json, never queued again."""
        self._pools = list(pools)
        self._cond = threading.Condition()
        self._fronts: dict[str, dict[str, SubnetConfig]] = {}
        self._done: set[str] = set()
        self._queued = set(scored)
        self.queue = SharedQueue([]) if score else None
        if maximal is not None:
            self._enqueue({maximal[0]: maximal[1]})

    def _enqueue(self, members: Mapping[str, SubnetConfig]) -> None:
        if self.queue is None:
            return
        fresh = sorted(sid for sid in members if sid not in self._queued)
        self._queued.update(fresh)
        self.queue.put([members[sid] for sid in fresh])

    def publish(self, pool: str, members: Mapping[str, SubnetConfig] | None) -> None:
        """``pool``'s search is over: its front members, or None when it failed."""
        with self._cond:
            if members is not None:
                self._fronts[pool] = dict(members)
                self._enqueue(members)
            self._done.add(pool)
            self._cond.notify_all()

    def snapshot(self) -> tuple[dict[str, dict[str, SubnetConfig]], int, bool]:
        """(the fronts published so far, how many pools are done, whether all are)."""
        with self._cond:
            return dict(self._fronts), len(self._done), len(self._done) == len(self._pools)

    def wait_past(self, done: int, timeout: float | None = None) -> None:
        """Block until more than ``done`` pools are done (or ``timeout`` seconds pass)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._done) > done, timeout)


class FollowUps:
    """What ``pool`` does once its own search is done, one sub-network at a time: each other pool's front as it is
    published (cross-evaluation: ``(CROSS, config)``, those not yet measured on this pool), and in between the
    shared full-set scoring queue (``(FINAL, config)``). Called by the pool's Tune searcher (``PoolWork``), so
    the work runs on the evaluators its search loaded; the answer is a searcher's: work, ``None`` (nothing now, ask
    again) or ``"finished"`` (every pool is done and nothing is left).

    ``measured()`` gives the subnet ids already on this pool (read only when a new front arrives).
    """

    FINISHED = "finished"

    def __init__(self, board: FrontBoard, pool: str, *, cross: bool, measured: Callable[[], set[str]]):
        self.board, self.pool, self.cross, self.measured = board, pool, cross, measured
        self.handled, self.todo, self.taken = {pool}, [], set()

    def _take_fronts(self) -> bool:
        """Queue the fronts published since the last call for cross-evaluation; whether every pool is done."""
        fronts, _, finished = self.board.snapshot()
        fresh = sorted(set(fronts) - self.handled)
        if self.cross and fresh:
            members = {sid: c for p in fresh for sid, c in fronts[p].items()}
            for sid in sorted(set(members) - self.measured() - self.taken):
                self.todo.append(members[sid])
                self.taken.add(sid)
        self.handled.update(fresh)
        return finished

    def ready(self) -> bool:
        """Whether there is work for this pool now (without taking it)."""
        self._take_fronts()
        return bool(self.todo) or (self.board.queue is not None and len(self.board.queue) > 0)

    def done(self) -> bool:
        """Nothing is left for this pool, nor will be."""
        finished = self._take_fronts()
        return finished and not self.ready()

    def __call__(self) -> tuple[str, SubnetConfig] | str | None:
        if stop_requested():  # the driver is stopping: no new work (a re-run does what is left)
            return self.FINISHED
        finished = self._take_fronts()
        if self.todo:
            return CROSS, self.todo.pop(0)
        config = self.board.queue.pop() if self.board.queue is not None else None
        if config is not None:
            return FINAL, config
        return self.FINISHED if finished else None
