"""The intervals the verdicts rest on: the paired bootstrap of two models' outcomes, ratios of medians."""

import pytest

from lonas_ray.stats import paired_bootstrap, pooled_paired_difference, ratio_of_medians


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



def outcomes(hits: int, n: int, offset: int = 0) -> list[int]:
    """``n`` examples of which ``hits`` are right, starting at ``offset`` (wrapping): two models' different hits."""
    return [1 if (i - offset) % n < hits else 0 for i in range(n)]


def test_pooling_weighs_each_task_the_same_and_calls_a_win_only_when_the_whole_interval_is_above_zero():
    cells = [("a", outcomes(80, 100), outcomes(60, 100)),  # +0.2 on 100 examples
             ("b", outcomes(10, 10), outcomes(10, 10))]  # 0 on 10 examples
    pooled = pooled_paired_difference(cells)
    assert pooled["difference"] == pytest.approx(0.1)  # the mean of the tasks', not the examples' 0.18
    assert pooled["tasks"] == 2 and pooled["cells"] == 2 and pooled["examples"] == 110
    assert pooled["per_task"]["b"]["difference_ci95"] == [0.0, 0.0]
    lo, hi = pooled["difference_ci95"]
    assert 0 < lo < 0.1 < hi and pooled["verdict"] == "win"
    tie = pooled_paired_difference([("a", outcomes(52, 100), outcomes(50, 100, offset=30))])
    assert tie["verdict"] == "tie" and tie["difference_ci95"][0] < 0 < tie["difference_ci95"][1]
    loss = pooled_paired_difference([("a", outcomes(20, 100), outcomes(70, 100))])
    assert loss["verdict"] == "loss" and loss["difference_ci95"][1] < 0


def test_seeds_that_disagree_widen_a_tasks_interval_beyond_what_its_examples_alone_give():
    """Three seeds of +0.3, 0, -0.3 average 0 with a wide interval; three seeds of 0 on as many examples are
    tight: seed noise counts, not only example noise."""
    n = 200
    spread = [("t", outcomes(k, n), outcomes(100, n)) for k in (160, 100, 40)]
    steady = [("t", outcomes(100, n, offset=o), outcomes(100, n)) for o in (0, 5, 10)]
    wide, narrow = pooled_paired_difference(spread), pooled_paired_difference(steady)
    assert wide["difference"] == pytest.approx(0.0) and wide["per_task"]["t"]["seeds"] == 3
    width = lambda r: r["difference_ci95"][1] - r["difference_ci95"][0]  # noqa: E731
    assert width(wide) > 0.3 and width(narrow) < 0.1
    with pytest.raises(ValueError, match="task t need the same examples"):
        pooled_paired_difference([("t", [1, 0], [1])])
    with pytest.raises(ValueError, match="at least one"):
        pooled_paired_difference([])
