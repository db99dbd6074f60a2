"""What a search shows while it runs: a progress bar per pool and the dashboard's gauges.

Fed by the driver's results callback, one row at a time, so the figures are the
ones in results.parquet.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from lonas_ray.search.front import front_rows

log = logging.getLogger(__name__)

BANDS = (0.5, 0.75, 1.0)  # latency as a fraction of the maximal sub-network's


def best_quality_per_band(rows: Sequence[Mapping[str, Any]], maximal_latency: float) -> dict[str, float]:
    """Band label (``<=0.5x``) -> best quality among rows at most that fraction of maximal's latency."""
    out = {}
    for band in BANDS:
        qs = [r["quality"] for r in rows
              if r.get("latency_ms") is not None and r["latency_ms"] <= band * maximal_latency]
        if qs:
            out[f"<={band:g}x"] = max(qs)
    return out


class SearchProgress:
    """A tqdm bar and the ``lonas_search_*`` gauges of one pool's search."""

    def __init__(self, run: str, pool: str, total: int, rows: Sequence[Mapping[str, Any]], maximal_id: str):
        from tqdm.auto import tqdm

        self.run, self.pool, self.maximal_id = run, pool, maximal_id
        self.rows = list(rows)
        self.total = max(total, len(self.rows))
        self.bar = tqdm(total=self.total, initial=len(self.rows), desc=f"search {pool}", unit="eval")
        self.publish()

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the experiment state; a bar (an open stream) does not pickle
        return {k: v for k, v in self.__dict__.items() if k != "bar"} | {"bar": None}

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows.append(row)
        self.total = max(self.total, len(self.rows))
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.update(1)
        self.publish()

    def publish(self) -> None:
        publish_search(self.run, self.pool, self.total, self.rows, self.maximal_id)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def publish_search(run: str, pool: str, total: int, rows: Sequence[Mapping[str, Any]], maximal_id: str) -> None:
    """The ``lonas_search_*`` gauges of one pool's rows: as its search goes, and again when a resumed pipeline skips
    a search finished earlier (so its dashboard shows the run's figures too)."""
    from lonas_ray.metrics import set_gauges

    try:
        set_gauges({"lonas_search_evaluations_done": len(rows), "lonas_search_evaluations_total": total,
                    "lonas_pareto_size": len(front_rows(rows, "latency_ms"))}, run, pool=pool)
        maximal = next((r for r in rows if r["subnet_id"] == maximal_id), None)
        if maximal is not None and maximal.get("latency_ms"):
            for band, q in best_quality_per_band(rows, maximal["latency_ms"]).items():
                set_gauges({"lonas_search_best_quality": q}, run, pool=pool, band=band)
    except Exception as exc:  # metrics are a view: never fail a search over them
        log.warning("could not publish search metrics: %s", exc)
