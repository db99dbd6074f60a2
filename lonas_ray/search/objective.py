"""The search objective: which results column the searcher and the fronts optimise, higher is better.

``search.objective`` names it: ``task_loss`` (the default: the choice decision's
cross-entropy for multiple choice, the answer loss otherwise), ``quality``
(accuracy) or ``loss`` (the answer loss). Losses are negated so that every
objective is maximised. Pure: the report and the Pareto maths use it without Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# search.objective -> the trial metric the searcher maximises
OBJECTIVES = {"quality": "quality", "loss": "neg_loss", "task_loss": "neg_task_loss"}
_COLUMN = {"quality": ("quality", 1.0), "loss": ("loss", -1.0), "task_loss": ("task_loss", -1.0)}


def objective_value(row: Mapping[str, Any], objective: str) -> float:
    """The searcher's quality objective of a results row, higher is better (losses negated)."""
    column, sign = _COLUMN[objective]
    return sign * row[column]
