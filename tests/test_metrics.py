"""Eval metrics against small cases worked out by hand."""
import math

import numpy as np
import pytest

from training.metrics import apgr, aiq, cost_to_reach, cpt, nondecreasing_hull, quality_at_budget


def test_hull_drops_points_under_the_chord_and_after_the_best():
    # (2, 0.5) lies under the chord from (0, 0) to (4, 2); (5, 1.5) is worse than (4, 2).
    hx, hy = nondecreasing_hull([0, 2, 4, 5, 1], [0, 0.5, 2, 1.5, 1.0])
    # Chord (1,1)->(4,2) at x=2 is 1.333 > 0.5; (1, 1) is above the chord (0,0)->(4,2) (=0.5).
    assert hx.tolist() == [0, 1, 4]
    assert hy.tolist() == [0, 1.0, 2]


def test_hull_keeps_best_quality_among_equal_costs_and_stops_at_cheapest_best():
    hx, hy = nondecreasing_hull([1, 1, 2, 3], [0.2, 0.6, 0.9, 0.9])
    assert hx.tolist() == [1, 2]
    assert hy.tolist() == [0.6, 0.9]


def test_hull_of_one_point():
    hx, hy = nondecreasing_hull([3.0], [0.4])
    assert hx.tolist() == [3.0] and hy.tolist() == [0.4]


def test_aiq_of_single_models_is_the_mean_height_of_their_hull():
    # Hull (1,0.5)->(3,0.9); over [1, 3]: trapezoid (0.5+0.9)/2 = 0.7.
    assert aiq([1, 3, 2], [0.5, 0.9, 0.6], 1, 3) == pytest.approx(0.7)


def test_aiq_extends_flat_after_the_best_point_and_counts_zero_before_the_cheapest():
    # Router points (2, 0.8) and (3, 1.0) on range [1, 5]:
    # [1,2] -> 0 ; [2,3] -> 0.9 ; [3,5] -> 1.0*2 = 2.0 ; total 2.9 / 4 = 0.725
    assert aiq([2, 3], [0.8, 1.0], 1, 5) == pytest.approx(0.725)


def test_aiq_clips_a_router_cheaper_than_the_cheapest_model():
    # Hull (0, 0.4)->(2, 0.8), range [1, 3]: value at 1 is 0.6; [1,2] -> 0.7 ; [2,3] -> 0.8 ; /2 = 0.75
    assert aiq([0, 2], [0.4, 0.8], 1, 3) == pytest.approx(0.75)


def test_aiq_rejects_an_empty_range():
    with pytest.raises(ValueError):
        aiq([1], [0.5], 1, 1)


def test_quality_at_budget_mixes_operating_points():
    # Halfway between (1, 0.5) and (3, 0.9) in cost -> 0.7
    assert quality_at_budget([1, 3], [0.5, 0.9], 2) == pytest.approx(0.7)
    assert quality_at_budget([1, 3], [0.5, 0.9], 10) == pytest.approx(0.9)
    assert math.isnan(quality_at_budget([1, 3], [0.5, 0.9], 0.5))


def test_cost_to_reach_interpolates_and_reports_unreachable():
    assert cost_to_reach([1, 3], [0.5, 0.9], 0.8) == pytest.approx(2.5)
    assert cost_to_reach([1, 3], [0.5, 0.9], 0.3) == pytest.approx(1.0)
    assert cost_to_reach([1, 3], [0.5, 0.9], 0.95) == math.inf


def test_apgr_matches_routellm_trapezoid_definition():
    # weak 0.5, strong 0.9; curve (0,0.5),(0.5,0.8),(1,0.9)
    # AUC = 0.25*(0.5+0.8) + 0.25*(0.8+0.9) = 0.75 ; weak area 0.5 ; strong area 0.9
    # APGR = (0.75-0.5)/(0.9-0.5) = 0.625
    assert apgr([0, 0.5, 1], [0.5, 0.8, 0.9], 0.5, 0.9) == pytest.approx(0.625)
    # Random mixing recovers exactly half the gap.
    assert apgr([0, 1], [0.5, 0.9], 0.5, 0.9) == pytest.approx(0.5)


def test_apgr_sorts_unsorted_points():
    assert apgr([1, 0, 0.5], [0.9, 0.5, 0.8], 0.5, 0.9) == pytest.approx(0.625)


def test_cpt_is_the_first_crossing():
    # 50% of gap -> target 0.7: between (0,0.5) and (0.5,0.8): 0.5*(0.2/0.3) = 1/3
    assert cpt([0, 0.5, 1], [0.5, 0.8, 0.9], 0.5, 0.9, 0.5) == pytest.approx(1 / 3)
    # 80% -> 0.82: between (0.5,0.8) and (1,0.9): 0.5 + 0.5*0.2 = 0.6
    assert cpt([0, 0.5, 1], [0.5, 0.8, 0.9], 0.5, 0.9, 0.8) == pytest.approx(0.6)
    assert math.isnan(cpt([0, 0.5], [0.5, 0.6], 0.5, 0.9, 0.8))


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError):
        aiq([1, 2], [0.5], 0, 3)
    with pytest.raises(ValueError):
        apgr([0, 2], [0.5, 0.9], 0.5, 0.9)
    with pytest.raises(ValueError):
        apgr([0, 1], [0.5, 0.9], 0.7, 0.7)
    with pytest.raises(ValueError):
        nondecreasing_hull([np.nan], [0.5])
