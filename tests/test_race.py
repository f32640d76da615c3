"""The race's pure rules (`keras_mcv.race`), exactly."""

import math

import numpy as np
import pytest

from keras_mcv.rules import race


def test_round_lengths_double():
    assert [race.round_epochs(r) for r in (1, 2, 3, 4)] == [1, 2, 4, 8]
    for bad in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match="round_number"):
            race.round_epochs(bad)


def test_survivors_count_is_half_rounded_up():
    assert [race.survivors_count(a) for a in (1, 2, 3, 4, 5, 7)] == [1, 1, 2, 2, 3, 4]
    with pytest.raises(ValueError, match="alive"):
        race.survivors_count(0)


@pytest.mark.parametrize(
    "k,epochs,cost",
    [(1, 0, 0), (2, 1, 2), (3, 3, 7), (4, 3, 8), (5, 7, 19), (8, 7, 24)],
)
def test_race_length_and_cost(k, epochs, cost):
    # K=5: 5 -> 3 -> 2 -> 1 over rounds of 1, 2, 4 epochs: 5*1 + 3*2 + 2*4 branch-epochs.
    assert race.race_epochs(k) == epochs
    assert race.race_cost_epochs(k) == cost


def test_judged_losses_average_the_last_half_of_the_round():
    rows = [[9.0, 1.0], [9.0, 1.0], [1.0, 2.0], [3.0, 4.0]]
    np.testing.assert_allclose(race.judged_losses(rows), [2.0, 3.0])
    # Odd length: the middle row is judged too (rows 2..4 of 5).
    rows5 = [[0.0], [0.0], [3.0], [6.0], [9.0]]
    np.testing.assert_allclose(race.judged_losses(rows5), [6.0])
    np.testing.assert_allclose(race.judged_losses([[5.0, 7.0]]), [5.0, 7.0])


def test_a_non_finite_judged_loss_never_wins():
    rows = [[1.0, 1.0, 1.0], [np.nan, 0.5, np.inf], [0.1, 0.6, 0.2]]
    scores = race.judged_losses(rows)
    assert math.isinf(scores[0]) and math.isinf(scores[2])
    assert race.ranking(scores)[0] == 1
    assert race.survivors(rows) == [1, 0]


def test_ranking_breaks_ties_by_index():
    assert race.ranking([2.0, 1.0, 1.0, 3.0]) == [1, 2, 0, 3]


def test_survivors_keep_half_best_first_or_only_the_best_at_the_end():
    rows = [[4.0, 3.0, 2.0, 1.0]] * 2
    assert race.survivors(rows) == [3, 2]
    assert race.survivors(rows, final=True) == [3]
    assert race.survivors([[1.0, 2.0, 3.0]]) == [0, 1]


def test_running_leader():
    assert race.running_leader([]) == 0
    assert race.running_leader([[3.0, 2.0], [1.0, 2.0], [1.0, 2.0]]) == 0
    assert race.running_leader([[3.0, 2.0]]) == 1


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="step_losses"):
        race.judged_losses([])
    with pytest.raises(ValueError, match="step_losses"):
        race.judged_losses([1.0, 2.0])
