"""Confidence intervals for the accuracies lonas-ray reports.

An accuracy on n examples is a binomial proportion; at the sizes a search can
afford (tens to a few hundred examples) the normal-approximation interval is
too narrow near 0 and 1 and can leave [0, 1]. The Wilson score interval keeps
its coverage there, which is why lm-eval-style reports and this project use it.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``hits`` successes in ``n`` trials (95 % by default)."""
    if n <= 0:
        raise ValueError(f"an interval needs at least one example, got n={n}")
    if not 0 <= hits <= n:
        raise ValueError(f"hits must lie in [0, n={n}], got {hits}")
    p = hits / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo = 0.0 if hits == 0 else max(0.0, centre - half)  # exact at the ends, where rounding would miss 0 and 1
    hi = 1.0 if hits == n else min(1.0, centre + half)
    return lo, hi


# Bootstrap intervals. A verdict compares two models on the same examples (paired: the examples' difficulty
# cancels, so the interval is far narrower than two Wilson intervals side by side) and two latencies from their
# repeats (a ratio of medians, which no closed form covers at a handful of repeats). Seeded: a report is the same
# figures every time it is rendered.
RESAMPLES = 4000


def _percentiles(values, low: float = 2.5, high: float = 97.5) -> tuple[float, float]:
    import numpy as np

    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi)


def paired_bootstrap(model, reference, *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """The share kept (``mean(model) / mean(reference)``) and the difference of two models' 0/1 outcomes on the
    same examples, each with its 95 % paired bootstrap interval (the examples resampled together)."""
    import numpy as np

    m, r = np.asarray(model, dtype=float), np.asarray(reference, dtype=float)
    if m.shape != r.shape or m.ndim != 1 or m.size == 0:
        raise ValueError(f"paired outcomes need the same examples: got {m.shape} and {r.shape}")
    idx = np.random.default_rng(seed).integers(0, m.size, size=(resamples, m.size))
    ms, rs = m[idx].sum(1), r[idx].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample with no reference hit: +inf (or 1 if tied)
        ratios = np.where(rs > 0, ms / rs, np.where(ms > 0, np.inf, 1.0))
    diffs = (ms - rs) / m.size
    ratio = float(m.sum() / r.sum()) if r.sum() else (math.inf if m.sum() else 1.0)
    return {"examples": int(m.size), "kept": ratio, "kept_ci95": list(_percentiles(ratios)),
            "difference": float((m.sum() - r.sum()) / m.size), "difference_ci95": list(_percentiles(diffs)),
            "model_hits": int(m.sum()), "reference_hits": int(r.sum())}


def ratio_of_medians(numerator, denominator, *, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, list]:
    """``median(numerator) / median(denominator)`` and its 95 % bootstrap interval (each side resampled on its own:
    a speed-up of a model's timed repeats against the reference's)."""
    import numpy as np

    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("a ratio of medians needs samples on both sides")
    rng = np.random.default_rng(seed)
    ra = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    rb = np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1)
    return float(np.median(a) / np.median(b)), list(_percentiles(ra / rb))


def pooled_paired_difference(cells, *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """The mean difference ``model - reference`` of paired 0/1 outcomes pooled over tasks and seeds, with its 95 %
    two-stage bootstrap interval.

    ``cells``: ``(task, model_outcomes, reference_outcomes)``, one per (task, seed) run; within a cell both sides
    are scored on the same examples. A run's seed moves a benchmark's figures as much as its examples do (one seed
    gave prune-then-LoRA 0.19 and another 0.42), so each resample draws a task's seeds with replacement, then each
    drawn seed's examples with replacement; a task's difference is the mean over its seeds and the pooled one the
    mean over tasks, each task weighing the same whatever its number of examples. With one seed per task the
    interval covers example noise only (``seeds`` in the result says how many there were)."""
    import numpy as np

    by_task: dict[str, list] = {}
    for task, model, reference in cells:
        m, r = np.asarray(model, dtype=float), np.asarray(reference, dtype=float)
        if m.shape != r.shape or m.ndim != 1 or m.size == 0:
            raise ValueError(f"paired outcomes of task {task} need the same examples: got {m.shape} and {r.shape}")
        by_task.setdefault(task, []).append(m - r)
    if not by_task:
        raise ValueError("pooling needs at least one (task, model, reference) cell")
    rng = np.random.default_rng(seed)
    task_draws, per_task = [], {}
    for task, diffs in by_task.items():
        # stage 2 first (each seed's examples): one resampled mean per seed and resample
        means = np.stack([d[rng.integers(0, d.size, size=(resamples, d.size))].mean(1) for d in diffs])
        chosen = rng.integers(0, len(diffs), size=(resamples, len(diffs)))  # stage 1: the task's seeds
        draws = means[chosen, np.arange(resamples)[:, None]].mean(1)
        task_draws.append(draws)
        estimate = float(np.mean([d.mean() for d in diffs]))
        per_task[task] = {"difference": estimate, "difference_ci95": list(_percentiles(draws)), "seeds": len(diffs),
                          "examples": int(sum(d.size for d in diffs))}
    pooled = np.mean(task_draws, axis=0)
    estimate = float(np.mean([t["difference"] for t in per_task.values()]))
    lo, hi = _percentiles(pooled)
    return {"difference": estimate, "difference_ci95": [lo, hi], "verdict": verdict(lo, hi),
            "tasks": len(per_task), "cells": sum(t["seeds"] for t in per_task.values()),
            "examples": sum(t["examples"] for t in per_task.values()), "per_task": per_task}


def verdict(lo: float, hi: float) -> str:
    """``win`` when a difference's whole interval lies above 0, ``loss`` when below, else ``tie``."""
    return "win" if lo > 0 else "loss" if hi < 0 else "tie"
