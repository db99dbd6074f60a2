"""Pareto maths for the search: which sub-networks are non-dominated, how much they cover, which one to pick.

Pure numpy on plain arrays, so it is testable without Ray or a model. Every
function takes ``maximize`` (one bool per objective) and works internally on
minimisation by flipping the sign of maximised objectives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

_CHUNK = 1024  # rows compared at once, so memory stays O(chunk * n) instead of O(n^2)


def _as_minimized(points: Any, maximize: Sequence[bool]) -> np.ndarray:
    """``points`` as a float (n, d) array in which smaller is better in every column."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D (n points, d objectives) array, got shape {pts.shape}")
    signs = np.asarray(maximize, dtype=bool)
    if signs.shape != (pts.shape[1],):
        raise ValueError(f"maximize needs one flag per objective ({pts.shape[1]}), got {list(maximize)}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN or inf; drop failed evaluations before computing the front")
    return np.where(signs, -pts, pts)


def pareto_mask(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points``.

    A row is dominated when another is at least as good in every objective and
    strictly better in one; equal rows do not dominate each other, so every copy
    of a non-dominated point is kept (two sub-networks that tie are both worth
    reporting).
    """
    pts = _as_minimized(points, maximize)
    keep = np.ones(len(pts), dtype=bool)
    for start in range(0, len(pts), _CHUNK):
        block = pts[start:start + _CHUNK, None, :]  # (b, 1, d) candidates vs (1, n, d) all others
        no_worse = (pts[None, :, :] <= block).all(axis=2)
        better = (pts[None, :, :] < block).any(axis=2)
        keep[start:start + _CHUNK] = ~(no_worse & better).any(axis=1)
    return keep


def hypervolume_2d(points: np.ndarray, reference: Sequence[float], maximize: Sequence[bool]) -> float:
    """Exact area dominated by ``points`` and bounded by ``reference``, for two objectives.

    The reference is the worst acceptable point (e.g. zero quality, the largest
    latency); points that do not strictly beat it in both objectives add
    nothing. Sweep over points sorted by the first objective: O(n log n).
    """
    pts = _as_minimized(points, maximize)
    if pts.shape[1] != 2:
        raise ValueError(f"hypervolume_2d needs exactly 2 objectives, got {pts.shape[1]}")
    ref = _as_minimized(np.asarray(reference, dtype=float)[None, :], maximize)[0]
    pts = pts[(pts < ref).all(axis=1)]
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]  # by x, then y
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y < best_y:  # a new step of the staircase: the strip between y and the previous best
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(area)


def pick(
    rows: Iterable[Mapping[str, Any]],
    quality_key: str,
    cost_key: str,
    delta: float,
    reference_quality: float,
) -> Mapping[str, Any] | None:
    """The cheapest row whose quality is within ``delta`` of ``reference_quality``, or None.

    This is the rule that turns a front into one exported model: "lose at most
    delta quality against the reference (usually the full super-network), then
    be as cheap as possible". Equal costs go to the higher quality, then to the
    earlier row, so the choice is deterministic. Rows with NaN quality never
    qualify.
    """
    if delta < 0:
        raise ValueError(f"delta is the quality you accept to lose and must be >= 0, got {delta}")
    threshold = reference_quality - delta
    best = None
    for row in rows:
        quality, cost = row[quality_key], row[cost_key]
        if not quality >= threshold:  # also rejects NaN
            continue
        if best is None or (cost, -quality) < (best[cost_key], -best[quality_key]):
            best = row
    return best
