"""Recover-then-rank: per latency target, the front's top-K candidates, recovered, then ranked on what they became.

A slice of the super-network is not the model that ships: the export recovers it
(``export.recover_steps``) first, and after a short recovery the order of candidates
can flip (Minitron ranks pruned candidates only after a short distillation of each:
arXiv 2408.11796). So with ``export.select: targets`` the pipeline takes, for each
pool and each target (a fraction of the maximal sub-network's latency on that pool),
the ``export.candidates`` best front members under that latency, recovers every one
of them, re-scores each recovered checkpoint on the search's examples (the selection
examples; the report's figures stay those of the final examples) and exports the
best. Pure functions over rows; the Ray work is the export stage's merge tasks.

``ranking.json`` (the output directory) records, per target, every candidate with its
sliced and recovered objective and which one was chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lonas_ray.search.objective import objective_value

RANKING = "ranking.json"


def target_role(pool: str, target: float) -> str:
    return f"{target:.0%} of the maximal's latency on {pool}"


def target_candidates(pareto_rows: Sequence[Mapping[str, Any]], pools: Sequence[str], maximal_id: str,
                      targets: Sequence[float], k: int, objective: str) -> dict[str, list[str]]:
    """role -> up to ``k`` latency-front members of that pool (best objective first) within the latency target.

    The maximal itself is a candidate only for a target of 1.0; a target no member meets gets no entry.
    """
    out: dict[str, list[str]] = {}
    for pool in pools:
        rows = [r for r in pareto_rows if r["pool"] == pool and r["front"] == "latency"]
        maximal = next((r for r in rows if r["subnet_id"] == maximal_id), None)
        if maximal is None or maximal.get("latency_ms") is None:
            continue
        members = [r for r in rows if r["member"] and r.get("latency_ms") is not None]
        for target in targets:
            budget = target * maximal["latency_ms"]
            fit = [r for r in members if r["latency_ms"] <= budget and (target >= 1.0 or r["subnet_id"] != maximal_id)]
            fit.sort(key=lambda r: (-objective_value(r, objective), r["latency_ms"], r["subnet_id"]))
            if fit:
                out[target_role(pool, target)] = [r["subnet_id"] for r in fit[:k]]
    return out


def choose_after_recovery(candidates: Mapping[str, Sequence[str]], recovered: Mapping[str, Mapping[str, Any]],
                          objective: str) -> dict[str, str]:
    """role -> the candidate whose *recovered* figures score best on ``objective``.

    Ties go to the earlier candidate (the better one as sliced). A candidate without recovered
    figures cannot be chosen; a role none of whose candidates has them is left out.
    """
    chosen = {}
    for role, sids in candidates.items():
        scored = [(objective_value(recovered[sid], objective), -i, sid)
                  for i, sid in enumerate(sids) if sid in recovered]
        if scored:
            chosen[role] = max(scored)[2]
    return chosen


def ranking_record(candidates: Mapping[str, Sequence[str]], sliced: Mapping[str, Mapping[str, Any]],
                   recovered: Mapping[str, Mapping[str, Any]], chosen: Mapping[str, str],
                   objective: str) -> dict[str, Any]:
    """What ``ranking.json`` holds: per role, each candidate as sliced and as recovered, and the choice."""
    def figures(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        return {"objective": objective_value(row, objective), "quality": row.get("quality"),
                "task_loss": row.get("task_loss"), "examples": row.get("examples", row.get("eval_examples"))}

    return {"objective": objective, "targets": {
        role: {"chosen": chosen.get(role),
               "candidates": [{"subnet_id": sid, "sliced": figures(sliced.get(sid)),
                               "recovered": figures(recovered.get(sid))} for sid in sids]}
        for role, sids in candidates.items()}}
