"""Ensembles: the averaged probabilities, their accuracy and loss, the gain, exactly."""

import math

import keras
import numpy as np
import pytest

from keras_mcv import ensemble

# Three members on four examples of three classes, ranked best first.
P1 = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]])
P2 = np.array([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
P3 = np.array([[0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.2, 0.1, 0.7], [0.0, 0.2, 0.8]])
Y = np.array([0, 1, 2, 2])


def test_average_is_the_mean_of_the_members():
    np.testing.assert_allclose(ensemble.average_predictions([P1, P2]), (P1 + P2) / 2)
    np.testing.assert_allclose(ensemble.average_predictions([P1, P2, P3]), (P1 + P2 + P3) / 3)


def test_accuracy_and_loss_by_hand():
    accuracy, loss = ensemble.accuracy_and_loss(P1, Y)
    # argmax: 0, 1, 0, 2 -> three of four right; loss = -mean ln(0.6, 0.5, 0.4, 0.8)
    assert accuracy == 0.75
    assert loss == pytest.approx(-np.mean(np.log([0.6, 0.5, 0.4, 0.8])), rel=1e-12)
    # A zero probability on the label is floored, not -inf.
    _, loss = ensemble.accuracy_and_loss(np.array([[1.0, 0.0]]), np.array([1]))
    assert loss == pytest.approx(-math.log(ensemble.PROBABILITY_FLOOR))


def test_top_k_against_the_top_ranked_member():
    # Averages: P1+P2 -> [.4,.5,.1] [.15,.65,.2] [.3,.15,.55] [.2,.2,.6]: argmax 1,1,2,2 -> 3/4.
    two = ensemble.evaluate_ensemble([P1, P2, P3], Y, k=2, names=["a", "b", "c"])
    assert two.k == 2 and two.names == ("a", "b", "c")
    assert two.member_accuracies == (0.75, 0.75, 0.75)
    assert two.accuracy == 0.75 and two.gain == 0.0
    assert two.loss == pytest.approx(-np.mean(np.log([0.4, 0.65, 0.55, 0.6])), rel=1e-12)
    # All three: [.433,.467,.1] [.2,.533,.267] [.267,.133,.6] [.133,.2,.667] -> 1,1,2,2: 3/4.
    three = ensemble.evaluate_ensemble([P1, P2, P3], Y)
    assert three.k == 3 and three.accuracy == 0.75
    # A member that is right where the top one is wrong lifts the ensemble.
    helper = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9], [0.1, 0.1, 0.8]])
    lifted = ensemble.evaluate_ensemble([P1, helper], Y, k=2)
    assert lifted.single_accuracy == 0.75 and lifted.accuracy == 1.0
    assert lifted.gain == pytest.approx(0.25)
    assert "gain +25.00 points" in str(lifted)


def test_models_are_averaged_through_predict():
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    members = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        members.append(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")]))
    expected = (members[0].predict(x, verbose=0) + members[1].predict(x, verbose=0)) / 2
    np.testing.assert_allclose(ensemble.average_predictions(members, x), expected, rtol=1e-6)
    y = np.argmax(expected, axis=1)
    assert ensemble.evaluate_ensemble(members, y, x=x).accuracy == 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="at least one member"):
        ensemble.average_predictions([])
    with pytest.raises(ValueError, match="one shape"):
        ensemble.average_predictions([P1, P1[:3]])
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\]"):
        ensemble.evaluate_ensemble([P1, P2, P3], Y, k=4)
    with pytest.raises(ValueError, match="k must be"):
        ensemble.evaluate_ensemble([P1], Y, k=0)
    with pytest.raises(ValueError, match="pass the inputs"):
        ensemble.average_predictions([keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])])
    with pytest.raises(ValueError, match="do not match"):
        ensemble.accuracy_and_loss(P1, Y[:3])
