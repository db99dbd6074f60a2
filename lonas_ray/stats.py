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
