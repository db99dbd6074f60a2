"""Pareto maths: the non-dominated mask, exact 2-D hypervolume and the pick rule, against brute force and hand sums."""

import itertools

import numpy as np
import pytest

from lonas_ray.search.pareto import hypervolume_2d, pareto_mask, pick


def brute_force_mask(points, maximize):
    sign = np.where(maximize, -1.0, 1.0)
    pts = points * sign
    keep = []
    for i, p in enumerate(pts):
        dominated = any(
            all(q[k] <= p[k] for k in range(len(p))) and any(q[k] < p[k] for k in range(len(p)))
            for j, q in enumerate(pts) if j != i
        )
        keep.append(not dominated)
    return np.array(keep)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("maximize", [(False, False), (True, False), (False, True), (True, True), (True, False, True)])
def test_pareto_mask_matches_brute_force_with_ties_and_duplicates(seed, maximize):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 6, size=(60, len(maximize))).astype(float)  # a small grid: many ties
    points = np.vstack([points, points[:10]])  # exact duplicates
    np.testing.assert_array_equal(pareto_mask(points, maximize), brute_force_mask(points, maximize))


def test_pareto_mask_chunks_agree_with_brute_force_on_many_points():
    rng = np.random.default_rng(7)
    points = np.round(rng.random((1500, 2)), 2)
    np.testing.assert_array_equal(pareto_mask(points, [True, False]), brute_force_mask(points, [True, False]))


def test_pareto_mask_hand_cases():
    quality_latency = np.array([[0.9, 10.0], [0.8, 5.0], [0.8, 6.0], [0.7, 5.0], [0.9, 10.0], [0.95, 20.0]])
    assert pareto_mask(quality_latency, [True, False]).tolist() == [True, True, False, False, True, True]
    assert pareto_mask(np.empty((0, 2)), [True, False]).tolist() == []
    assert pareto_mask(np.array([[1.0, 2.0]]), [False, False]).tolist() == [True]


def test_pareto_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="one flag per objective"):
        pareto_mask(np.zeros((3, 2)), [True])
    with pytest.raises(ValueError, match="NaN"):
        pareto_mask(np.array([[1.0, np.nan]]), [True, False])
    with pytest.raises(ValueError, match="2-D"):
        pareto_mask(np.zeros(3), [True])


def test_hypervolume_hand_cases():
    staircase = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume_2d(staircase, (4, 4), [False, False]) == pytest.approx(6.0)
    # adding dominated points, duplicates and points outside the reference changes nothing
    noisy = np.vstack([staircase, [[2.5, 2.5], [1.0, 3.0], [5.0, 0.0], [4.0, 1.0]]])
    assert hypervolume_2d(noisy, (4, 4), [False, False]) == pytest.approx(6.0)
    # one point: a rectangle; quality maximised, latency minimised
    assert hypervolume_2d(np.array([[0.8, 2.0]]), (0.0, 10.0), [True, False]) == pytest.approx(0.8 * 8.0)
    # both maximised: mirror of the staircase
    assert hypervolume_2d(-staircase, (-4, -4), [True, True]) == pytest.approx(6.0)
    assert hypervolume_2d(np.empty((0, 2)), (1, 1), [False, False]) == 0.0
    with pytest.raises(ValueError, match="exactly 2"):
        hypervolume_2d(np.zeros((2, 3)), (1, 1, 1), [False] * 3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("maximize", [(False, False), (True, False), (False, True), (True, True)])
def test_hypervolume_matches_a_grid_count(seed, maximize):
    rng = np.random.default_rng(seed)
    n = 40
    points = rng.integers(0, 20, size=(n, 2)).astype(float)  # integer corners: a unit grid is exact
    reference = np.array([18.0 if not m else 2.0 for m in maximize])  # some points fall outside
    sign = np.where(maximize, -1.0, 1.0)
    pts, ref = points * sign, reference * sign
    cells = itertools.product(range(-20, 21), range(-20, 21))  # cell [x, x+1] x [y, y+1], minimised coordinates
    expected = sum(
        1 for x, y in cells
        if x + 1 <= ref[0] and y + 1 <= ref[1] and ((pts[:, 0] <= x) & (pts[:, 1] <= y)).any()
    )
    assert hypervolume_2d(points, reference, maximize) == pytest.approx(expected)


def test_hypervolume_matches_monte_carlo_on_real_valued_points():
    rng = np.random.default_rng(3)
    points = rng.random((30, 2))
    samples = rng.random((200_000, 2))
    covered = ((points[None, :, 0] >= samples[:, None, 0]) & (points[None, :, 1] <= samples[:, None, 1])).any(axis=1)
    # quality maximised against reference 0, cost minimised against reference 1: the box is the unit square
    assert hypervolume_2d(points, (0.0, 1.0), [True, False]) == pytest.approx(covered.mean(), abs=0.01)


ROWS = [
    {"id": "full", "quality": 0.90, "macs": 100},
    {"id": "a", "quality": 0.89, "macs": 60},
    {"id": "b", "quality": 0.88, "macs": 40},
    {"id": "c", "quality": 0.85, "macs": 20},
    {"id": "b2", "quality": 0.885, "macs": 40},
    {"id": "nan", "quality": float("nan"), "macs": 1},
]


@pytest.mark.parametrize("delta, expected", [(0.0, "full"), (0.01, "a"), (0.02, "b2"), (0.05, "c"), (1.0, "c")])
def test_pick_takes_the_cheapest_row_within_delta(delta, expected):
    assert pick(ROWS, "quality", "macs", delta, reference_quality=0.90)["id"] == expected


def test_pick_returns_none_when_nothing_qualifies_and_rejects_negative_delta():
    assert pick(ROWS, "quality", "macs", 0.0, reference_quality=0.95) is None
    assert pick([], "quality", "macs", 0.1, reference_quality=0.0) is None
    with pytest.raises(ValueError, match="delta"):
        pick(ROWS, "quality", "macs", -0.1, reference_quality=0.9)


def test_pick_ties_on_cost_and_quality_go_to_the_first_row():
    rows = [{"id": "x", "q": 1.0, "c": 5}, {"id": "y", "q": 1.0, "c": 5}]
    assert pick(rows, "q", "c", 0.0, reference_quality=1.0)["id"] == "x"
