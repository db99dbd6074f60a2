"""From the results table to the Pareto table: fronts per pool, hypervolume, the picked sub-network.

Pure functions over rows (dicts), so the stage is testable without Ray. Two
fronts per pool: the searcher's objective (up) against latency (down), and
against params (down). The objective is what the searcher optimised
(``search.objective``: the task loss by default, negated so that higher is
better, or accuracy): forming the front on subset accuracy when the searcher
steered by a loss would let one lucky guess on 24 questions mark the maximal
"dominated". Hypervolume is measured on that objective against
(reference, ``reference_cost`` x the maximal sub-network's cost); the
reference is ``reference_quality`` for accuracy and the minimal sub-network's
objective (always evaluated first, so every strategy shares it) for losses.
The pick uses the final, full-set accuracy when there is one: the fastest (or
smallest) front member whose quality is at least the maximal sub-network's
minus ``delta``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lonas_ray.search.metric import accuracy_interval
from lonas_ray.search.objective import objective_value
from lonas_ray.search.pareto import hypervolume_2d, pareto_mask, pick

FRONTS = {"latency": "latency_ms", "params": "params"}
FINAL_COLUMNS = ("quality_full", "loss_full", "task_loss_full", "eval_examples_full", "quality_full_ci95_low",
                 "quality_full_ci95_high")


def final_columns(final: Mapping[str, Any] | None) -> dict[str, Any]:
    """The full-set figures of a row, with the 95 % Wilson interval where the quality is a share of examples."""
    f = final or {}
    out = {"quality_full": f.get("quality"), "loss_full": f.get("loss"), "task_loss_full": f.get("task_loss"),
           "eval_examples_full": f.get("examples"), "quality_full_ci95_low": None, "quality_full_ci95_high": None}
    interval = accuracy_interval(f.get("metric"), f.get("quality"), f.get("examples"))
    if interval is not None:
        out["quality_full_ci95_low"], out["quality_full_ci95_high"] = interval
    return out


def _score(row: Mapping[str, Any], objective: str) -> float | None:
    try:
        value = objective_value(row, objective)
    except (KeyError, TypeError):  # the column is missing or null
        return None
    return None if value is None or value != value else float(value)


def front_rows(rows: Sequence[Mapping[str, Any]], cost: str, objective: str = "quality") -> list[Mapping[str, Any]]:
    """The non-dominated rows over (``objective`` max, ``cost`` min); rows missing either are left out."""
    scored = [(r, _score(r, objective)) for r in rows]
    usable = [(r, s) for r, s in scored if s is not None and r.get(cost) is not None]
    if not usable:
        return []
    mask = pareto_mask(np.array([[s, r[cost]] for r, s in usable], dtype=float), [True, False])
    members = [(r, s) for (r, s), keep in zip(usable, mask) if keep]
    return [r for r, s in sorted(members, key=lambda m: (m[0][cost], -m[1]))]


def _loss_reference(rows: Sequence[Mapping[str, Any]], objective: str, minimal_id: str | None) -> float | None:
    """The worst objective that counts for a loss: the minimal sub-network's, else the worst row's."""
    minimal = next((r for r in rows if r["subnet_id"] == minimal_id), None)
    own = _score(minimal, objective) if minimal is not None else None
    if own is not None:
        return own
    scores = [s for s in (_score(r, objective) for r in rows) if s is not None]
    return min(scores) if scores else None


def final_quality(row: Mapping[str, Any], finals: Mapping[str, Mapping[str, Any]]) -> float:
    f = finals.get(row["subnet_id"])
    return f["quality"] if f else row["quality"]


def pool_fronts(rows: Sequence[Mapping[str, Any]], maximal_id: str, finals: Mapping[str, Mapping[str, Any]], *,
                delta: float, reference_quality: float, reference_cost: float, objective: str = "quality",
                minimal_id: str | None = None) -> tuple[list[dict], dict]:
    """(Pareto rows, summary) for one pool's rows.

    Rows carry ``front``, ``member`` (non-dominated on that front), ``picked`` and the
    final-quality columns. The maximal sub-network is always listed (``member`` False
    when it is dominated on the search subset): it is the pick rule's reference and
    may be the pick itself.
    """
    maximal = next((r for r in rows if r["subnet_id"] == maximal_id), None)
    out, summary = [], {"evaluated": len(rows), "objective": objective}
    reference_score = reference_quality if objective == "quality" else _loss_reference(rows, objective, minimal_id)
    for front, cost in FRONTS.items():
        members = front_rows(rows, cost, objective)
        info: dict[str, Any] = {"members": len(members)}
        if maximal is not None and maximal.get(cost) is not None and reference_score is not None:
            ref = [reference_score, reference_cost * maximal[cost]]
            pts = np.array([[_score(r, objective), r[cost]] for r in members], dtype=float).reshape(-1, 2)
            info["reference"] = ref
            info["hypervolume"] = hypervolume_2d(pts, ref, [True, False])
            candidates = [dict(r, quality_final=final_quality(r, finals)) for r in [*members, maximal]]
            chosen = pick(candidates, "quality_final", cost, delta, final_quality(maximal, finals))
            info["pick"] = chosen["subnet_id"] if chosen else None
        listed = list(members)
        if maximal is not None and all(r["subnet_id"] != maximal_id for r in members):
            listed.append(maximal)  # the reference (and possibly the pick) even when dominated
        for r in listed:
            out.append(dict(r, front=front, member=r in members, picked=r["subnet_id"] == info.get("pick"),
                            **final_columns(finals.get(r["subnet_id"]))))
        summary[front] = info
    return out, summary
