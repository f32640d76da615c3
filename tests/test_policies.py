"""Exact tests of the pure decision rules."""

import math

import numpy as np
import pytest

from keras_mcv.rules import thesis as policies

INF, NAN = math.inf, math.nan


def test_candidate_list_is_the_thesis_list():
    assert policies.candidate_list(0.03) == [
        5 * 0.03, 2 * 0.03, 4 / 3 * 0.03, 0.03, 3 / 4 * 0.03, 1 / 2 * 0.03, 1 / 5 * 0.03
    ]
    assert policies.SEARCH_FACTORS == (5.0, 2.0, 4.0 / 3.0, 1.0, 0.75, 0.5, 0.2)


def test_default_candidates():
    assert policies.DEFAULT_CANDIDATES == (1e-1, 1e-2, 1e-3, 1e-4)


def test_initial_votes_are_uniform():
    np.testing.assert_array_equal(policies.initial_votes(4), [0.25, 0.25, 0.25, 0.25])
    np.testing.assert_array_equal(policies.initial_votes(7), [1 / 7] * 7)
    with pytest.raises(ValueError):
        policies.initial_votes(0)


@pytest.mark.parametrize(
    "losses,pre,expected",
    [
        ([0.9, 0.5, 0.7], 1.0, 1),  # lowest among those below pre
        ([1.2, 0.8, 0.8], 1.0, 1),  # tie: the first
        ([1.2, 1.1, 1.0], 1.0, -1),  # equal is not lower: no vote
        ([NAN, 0.9, INF], 1.0, 1),  # non-finite never wins
        ([NAN, NAN], 1.0, -1),
        ([0.5, 0.4], NAN, 1),  # a non-finite pre-step loss counts as +inf
    ],
)
def test_best_candidate(losses, pre, expected):
    assert policies.best_candidate(losses, pre) == expected


def test_update_votes():
    h = policies.initial_votes(4)
    h1 = policies.update_votes(h, 2, 0.1)
    np.testing.assert_allclose(h1, [0.225, 0.225, 0.325, 0.225], rtol=0, atol=1e-15)
    h2 = policies.update_votes(h1, -1, 0.1)  # no vote: every entry decays
    np.testing.assert_allclose(h2, 0.9 * h1, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(policies.update_votes(h, 0, 1.0), [1.0, 0.0, 0.0, 0.0])


def test_top_candidate_first_on_ties():
    assert policies.top_candidate([0.25, 0.25, 0.25, 0.25]) == 0
    assert policies.top_candidate([0.1, 0.4, 0.4]) == 1


@pytest.mark.parametrize(
    "pre,post,discard",
    [(1.0, 1.1, True), (1.0, 1.0, False), (1.0, 0.9, False), (1.0, NAN, True), (1.0, INF, True), (NAN, NAN, False)],
)
def test_should_discard(pre, post, discard):
    assert policies.should_discard(pre, post) is discard


CANDS = [0.5, 0.2, 0.1333, 0.1, 0.075, 0.05, 0.02]


def test_select_lr_method_1_and_2_take_the_minimum():
    scores = [1.0, 0.8, 0.7, 0.75, 0.9, 0.95, 0.99]
    assert policies.select_lr(1, CANDS, scores, scores, 1.0) == 0.1333
    assert policies.select_lr(2, CANDS, scores, [9] * 7, 0.0) == 0.1333  # uses the scores
    assert policies.select_lr(1, CANDS, [0.7, 0.7] + [1] * 5, [0] * 7, 1) == 0.5  # first on ties


def test_select_lr_method_3_largest_that_lowers_else_minimum():
    val = [1.2, 0.95, 0.7, 0.75, 0.9, 0.99, 1.01]
    assert policies.select_lr(3, CANDS, val, val, 1.0) == 0.2  # largest below 1.0, not the min
    none_lowers = [1.2, 1.1, 1.05, 1.02, 1.03, 1.04, 1.01]
    assert policies.select_lr(3, CANDS, none_lowers, none_lowers, 1.0) == 0.02  # the minimum


def test_select_lr_non_finite():
    assert policies.select_lr(1, CANDS, [INF, NAN, 0.5, 0.4, INF, 1, 1], [0] * 7, 1) == 0.1
    assert policies.select_lr(1, CANDS, [NAN] * 7, [NAN] * 7, 1.0) == 0.02  # all blew up: smallest
    assert policies.select_lr(3, CANDS, [NAN, 0.5] + [2] * 5, [NAN, 0.5] + [2] * 5, 1.0) == 0.2
    with pytest.raises(ValueError, match="method"):
        policies.select_lr(4, CANDS, [0] * 7, [0] * 7, 1)


@pytest.mark.parametrize(
    "losses,patience,expected",
    [
        ([], 3, (False, None)),
        ([1.0, 0.9, 0.8], 2, (False, None)),
        ([1.0, 0.9, 0.95, 0.96], 2, (True, None)),  # 2 epochs without improvement
        ([1.0, 0.9, 0.95], 2, (False, None)),
        ([1.0, 0.9, 0.9, 0.9], 2, (True, None)),  # equal is no improvement
        ([1.0, 0.8, 0.9, NAN], 20, (True, 1)),  # non-finite: stop, restore the best epoch
        ([1.0, INF], 20, (True, 0)),
        ([NAN], 20, (True, None)),
    ],
)
def test_stopping_decision(losses, patience, expected):
    assert policies.stopping_decision(losses, patience) == expected


@pytest.mark.parametrize(
    "candidates,match",
    [([], "empty"), ([0.1, 0.0], "positive"), ([0.1, -1], "positive"), ([INF], "finite"), ("abc", "list")],
)
def test_validate_candidates(candidates, match):
    with pytest.raises(ValueError, match=match):
        policies.validate_candidates(candidates)
