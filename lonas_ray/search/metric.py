"""The quality metrics' names and their intervals: what the Pareto and report code needs of them.

``search.quality`` computes the metrics (models, tokenization, batching); the
fronts, the figures and the cross-check only name them and put 95 % Wilson
intervals on the ones that are a share of examples right, so they depend on this
small module, not on the scorer.
"""

from __future__ import annotations

from lonas_ray.stats import wilson_interval

MC_METRIC = "mc_accuracy"
TOKEN_METRIC = "answer_token_accuracy"
EXACT_METRIC = "exact_match"
BINOMIAL_METRICS = (MC_METRIC, EXACT_METRIC)  # a share of examples right: Wilson intervals apply


def accuracy_interval(metric: str, quality: float | None, examples: int | None) -> tuple[float, float] | None:
    """The 95 % Wilson interval of a quality that is a share of examples right; None for other metrics."""
    if metric not in BINOMIAL_METRICS or quality is None or not examples:
        return None
    return wilson_interval(round(quality * examples), int(examples))
