"""Time-to-target scoring (AlgoPerf's profile, score and speed-ups), exactly."""

import math

import pytest

from benchmarks import scoring

INF = math.inf


def test_time_to_target_is_the_first_evaluation_at_or_over_the_target():
    curve = [(1.0, 0.5), (2.0, 0.79), (3.0, 0.8), (4.0, 0.9)]
    assert scoring.time_to_target(curve, 0.8) == 3.0
    assert scoring.time_to_target(curve, 0.95) == INF
    assert scoring.time_to_target(curve, 0.8, budget=2.5) == INF
    assert scoring.time_to_target(curve, 0.8, budget=3.0) == 3.0
    assert scoring.time_to_target([(1.0, float("nan")), (2.0, 0.9)], 0.8) == 2.0


def test_a_sequential_grid_pays_for_every_run_before_the_one_that_reaches():
    curves = [[(1.0, 0.1), (2.0, 0.2)], [(1.5, 0.85), (3.0, 0.9)], [(1.0, 0.99)]]
    totals = [2.5, 3.0, 1.0]
    assert scoring.sequential_time_to_target(curves, totals, 0.8) == 2.5 + 1.5
    assert scoring.sequential_time_to_target(curves, totals, 0.95) == 2.5 + 3.0 + 1.0
    assert scoring.sequential_time_to_target(curves, totals, 0.999) == INF
    assert scoring.sequential_time_to_target(curves, totals, 0.95, budget=6.0) == INF
    assert scoring.sequential_time_to_target(curves, totals, 0.95, budget=6.5) == 6.5
    with pytest.raises(ValueError, match="one total per run"):
        scoring.sequential_time_to_target(curves, totals[:2], 0.8)


def test_median_orders_inf_last():
    assert scoring.median([3.0, INF, 1.0]) == 3.0
    assert scoring.median([INF, INF, 1.0]) == INF
    assert scoring.median([1.0, 2.0, 4.0, 8.0]) == 3.0
    assert scoring.median([1.0, INF]) == INF
    with pytest.raises(ValueError, match="at least one"):
        scoring.median([])


def test_ratios_profile_and_score():
    r = scoring.ratios({"a": 10.0, "b": 20.0, "c": INF, "d": 50.0})
    assert r == {"a": 1.0, "b": 2.0, "c": INF, "d": 5.0}
    ws = [1.0, 2.0, INF, 5.0]
    assert scoring.profile(ws, 1.0) == 0.25
    assert scoring.profile(ws, 4.0) == 0.5
    # (3 + 2 + 0 + 0) / 3 / 4 workloads
    assert scoring.score(ws) == pytest.approx((3 + 2) / 3 / 4)
    assert scoring.score([1.0]) == 1.0 and scoring.score([INF]) == 0.0
    assert scoring.score([4.0]) == 0.0 and scoring.score([2.5]) == pytest.approx(0.5)
    assert scoring.ratios({"a": INF, "b": INF}) == {"a": INF, "b": INF}


def test_score_is_the_area_under_the_profile():
    ws = [1.0, 1.7, 3.2, INF, 2.0]
    steps = 200000
    area = sum(scoring.profile(ws, 1.0 + (i + 0.5) * 3.0 / steps) for i in range(steps)) * 3.0 / steps
    assert scoring.score(ws) == pytest.approx(area / 3.0, abs=1e-4)


def test_speedups_and_their_geometric_mean():
    assert scoring.speedup(10.0, 5.0) == 2.0
    assert scoring.speedup(10.0, INF) == 0.0
    assert scoring.speedup(INF, 5.0) == INF
    assert scoring.geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert scoring.geometric_mean([2.0, 0.0]) == 0.0
    assert scoring.geometric_mean([2.0, INF]) == INF
    with pytest.raises(ValueError, match=">= 0"):
        scoring.geometric_mean([-1.0])
