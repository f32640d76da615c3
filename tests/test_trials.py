"""The in-graph twins of the decision rules agree with `keras_mcv.rules.thesis`, and the split is right."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_mcv import trials
from keras_mcv.rules import thesis as policies

INF, NAN = math.inf, math.nan


def random_cases(seed=0, count=300):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        k = int(rng.integers(1, 8))
        losses = rng.choice([0.5, 0.7, 0.9, 1.0, 1.1, NAN, INF], size=k)
        if rng.random() < 0.5:
            losses = rng.normal(1.0, 0.2, size=k)
        pre = float(rng.choice([0.8, 1.0, NAN, float(losses[0])]))
        yield losses, pre


def test_best_candidate_twin():
    for losses, pre in random_cases():
        got = int(trials.best_candidate(tf.constant(losses, tf.float32), tf.constant(pre, tf.float32)))
        assert got == policies.best_candidate(losses.astype("float32"), np.float32(pre)), (losses, pre)


def test_update_and_top_twins():
    rng = np.random.default_rng(1)
    h = policies.initial_votes(5)
    th = tf.constant(h)
    for _ in range(50):
        best = int(rng.integers(-1, 5))
        h = policies.update_votes(h, best, 0.2)
        th = trials.update_votes(th, tf.constant(best), 0.2)
        np.testing.assert_array_equal(th.numpy(), h)
        assert int(trials.top_candidate(th)) == policies.top_candidate(h)
    assert int(trials.top_candidate(tf.constant([0.3, 0.3, 0.1]))) == 0


@pytest.mark.parametrize("pre,post", [(1.0, 1.1), (1.0, 1.0), (1.0, 0.9), (1.0, NAN), (NAN, NAN), (INF, 2.0)])
def test_should_discard_twin(pre, post):
    assert bool(trials.should_discard(tf.constant(pre), tf.constant(post))) == policies.should_discard(pre, post)


@pytest.mark.parametrize("n,f,n_train", [(16, 0.5, 8), (17, 0.5, 9), (10, 0.25, 8), (1, 0.5, 1), (3, 0.1, 3)])
def test_split_batch(n, f, n_train):
    x = tf.reshape(tf.range(n * 2), (n, 2))
    y = tf.range(n)
    (x1, y1, w1), (x2, y2, w2), has_val = trials.split_batch((x, y, None), f)
    assert w1 is None and w2 is None
    np.testing.assert_array_equal(y1.numpy(), np.arange(n_train))
    np.testing.assert_array_equal(y2.numpy(), np.arange(n_train, n))
    assert x1.shape[0] == n_train
    assert bool(has_val) == (n - n_train > 0)


def test_snapshot_restores_bit_for_bit():
    v = tf.Variable([1.0, 2.0, 3.0])
    seed = tf.Variable([7, 9], dtype=tf.int64)
    snap = trials.Snapshot([v, seed], "t")
    snap.save()
    v.assign([np.pi, -0.0, 1e-30])
    seed.assign([1, 2])
    snap.restore_where(tf.constant(False))
    np.testing.assert_array_equal(seed.numpy(), [1, 2])
    snap.restore()
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(seed.numpy(), [7, 9])
