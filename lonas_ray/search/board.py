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
from collections.abc import Iterable, Mapping

from lonas_ray.search.searchers import SharedQueue
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
