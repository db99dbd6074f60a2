"""The intervals the verdicts rest on: the paired bootstrap of two models' outcomes, ratios of medians."""

import pytest

from lonas_ray.stats import paired_bootstrap, ratio_of_medians


def test_paired_bootstrap_of_identical_outcomes_keeps_everything_exactly_and_refuses_unpaired_data():
    same = paired_bootstrap([1, 0, 1, 1, 0], [1, 0, 1, 1, 0])
    assert same["kept"] == 1.0 and same["kept_ci95"] == [1.0, 1.0] and same["difference_ci95"] == [0.0, 0.0]
    better = paired_bootstrap([1] * 40 + [0] * 10, [1] * 20 + [0] * 30)
    assert better["kept"] == 2.0 and better["kept_ci95"][0] > 1.0 and better["difference_ci95"][0] > 0
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap([1, 0], [1, 0, 1])
    x, (lo, hi) = ratio_of_medians([10.0, 10.0, 10.0], [5.0, 5.0, 5.0])
    assert x == lo == hi == 2.0


def test_a_ratio_of_medians_interval_covers_the_estimate_and_narrows_with_more_repeats():
    import random

    rng = random.Random(0)
    a5 = [100 + rng.gauss(0, 3) for _ in range(5)]
    b5 = [80 + rng.gauss(0, 3) for _ in range(5)]
    a50 = [100 + rng.gauss(0, 3) for _ in range(50)]
    b50 = [80 + rng.gauss(0, 3) for _ in range(50)]
    x5, ci5 = ratio_of_medians(a5, b5)
    x50, ci50 = ratio_of_medians(a50, b50)
    assert ci5[0] <= x5 <= ci5[1] and ci50[0] <= x50 <= ci50[1]
    assert ci50[1] - ci50[0] < ci5[1] - ci5[0]
    assert ci50[0] < 1.25 < ci50[1]

