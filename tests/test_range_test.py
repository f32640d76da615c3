"""The LR range test: its readings exactly, the sweep against NumPy, bit-exact restore."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import keras_mcv
from keras_mcv.range_test import (
    SHUFFLE_SEED,
    LRFindResult,
    clr_bounds,
    exploded,
    lr_find,
    smooth,
    smoothing_for,
    suggest_learning_rate,
    sweep_learning_rates,
)
from keras_mcv.schedules import CyclicalLearningRate

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16.0).astype("float32"), data.target.astype("int64")


def _dense(optimizer, hidden=16, extra_layers=()):
    layers = [keras.Input((64,))]
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="relu"))
    layers += list(extra_layers) + [keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


# ---- the readings, exactly ----------------------------------------------------


def test_sweep_learning_rates():
    np.testing.assert_array_equal(sweep_learning_rates(1.0, 5.0, 5, "linear"), [1, 2, 3, 4, 5])
    rates = sweep_learning_rates(1e-3, 10.0, 5, "exponential")
    np.testing.assert_allclose(rates, [1e-3, 1e-2, 1e-1, 1.0, 10.0], rtol=1e-15, atol=0)
    assert rates[0] == 1e-3 and rates[-1] == 10.0
    rates = sweep_learning_rates(1e-7, 10.0, 97, "exponential")
    assert rates[0] == 1e-7 and rates[-1] == 10.0
    np.testing.assert_allclose(np.diff(np.log(rates)), np.log(1e8) / 96, rtol=1e-9)


def test_smoothing_for():
    assert smoothing_for(100) == pytest.approx(0.8, rel=1e-15)
    assert smoothing_for(40) == pytest.approx(0.5, rel=1e-15)
    assert smoothing_for(20) == 0.0
    assert smoothing_for(2) == 0.0
    assert smoothing_for(1000) == 0.98
    assert smoothing_for(10**5) == 0.98


def test_smooth_by_hand():
    np.testing.assert_allclose(smooth([1.0, 2.0, 3.0], 0.5), [1.0, 1.25 / 0.75, 2.125 / 0.875],
                               rtol=1e-15, atol=0)
    np.testing.assert_array_equal(smooth([3.0, 1.0, 2.0], 0.0), [3.0, 1.0, 2.0])
    smoothed = smooth([1.0, NAN, 1.0], 0.5)
    assert smoothed[0] == 1.0 and np.isnan(smoothed[1:]).all()


def test_exploded():
    assert not exploded(2.0, 4.0, 1.0)
    assert exploded(2.0, 4.0001, 1.0)
    assert exploded(NAN, 1.0, 1.0)
    assert exploded(INF, 1.0, 1.0)
    assert exploded(1.0, NAN, 1.0)


def test_suggestion_rule():
    rates = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert suggest_learning_rate(rates, [2.0, 1.9, 1.0, 0.5, 3.0]) == pytest.approx(1e-2, rel=1e-15)
    assert suggest_learning_rate(rates, [2.0, 1.9, 1.0, 0.5, NAN]) == pytest.approx(1e-2, rel=1e-15)
    # A minimum in the first decade is floored at the sweep's start.
    assert suggest_learning_rate(rates, [0.1, 1.9, 1.0, 0.5, 0.4]) == 1e-4
    assert suggest_learning_rate(rates, [2.0, 0.1, 1.0, 0.5, 0.4], min_lr=5e-4) == 5e-4
    assert suggest_learning_rate(rates, [NAN] * 5) is None


def test_clr_bounds_rule():
    rates = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # Accuracy: stays above 0.1 + 0.1 * (0.8 - 0.1) from index 2, peaks at 4.
    assert clr_bounds(rates, [9] * 6, [0.1, 0.1, 0.2, 0.5, 0.8, 0.6]) == (3.0, 5.0)
    # Loss: stays below 2 - 0.1 * (2 - 0.5) = 1.85 from index 2, lowest at 4.
    losses = [2.0, 1.95, 1.5, 1.0, 0.5, 3.0]
    assert clr_bounds(rates, losses) == (3.0, 5.0)
    # Accuracy that never rises: the loss decides.
    # 2 - 0.1 * (2 - 1) = 1.9 is crossed at index 2.
    assert clr_bounds(rates, [2.0, 1.95, 1.8, 1.0, 1.2, 3.0], [0.5, 0.4, 0.4, 0.3, 0.2, 0.1]) == (3.0, 4.0)
    assert clr_bounds(rates, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]) is None
    # A single jump has no onset before its extreme.
    assert clr_bounds(rates[:3], [2.0, 2.0, 0.5]) is None
    assert clr_bounds(rates, [1.0, 0.9, 0.6, 0.5, 0.7, NAN]) == (2.0, 4.0)
    # Noise above the threshold (0.17) before the real rise does not count.
    assert clr_bounds(rates, [9] * 6, [0.1, 0.2, 0.05, 0.1, 0.5, 0.8]) == (5.0, 6.0)


# ---- the sweep on a real model --------------------------------------------------


def _softmax_regression_reference(w, b, x, y, batches, rates):
    """Plain SGD on softmax regression in float64: the loss and accuracy of each batch."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    losses, accuracies = [], []
    for index, rate in zip(batches, rates):
        xb, yb = x[index].astype(np.float64), y[index]
        z = xb @ w + b
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        losses.append(-logp[np.arange(len(yb)), yb].mean())
        accuracies.append(np.mean(z.argmax(axis=1) == yb))
        d = np.exp(logp)
        d[np.arange(len(yb)), yb] -= 1.0
        d /= len(yb)
        w = w - np.float32(rate) * (xb.T @ d)
        b = b - np.float32(rate) * d.sum(axis=0)
    return np.array(losses), np.array(accuracies)


def test_sweep_matches_numpy_reference(digits):
    x, y = digits
    model = _dense(keras.optimizers.SGD(learning_rate=0.05), hidden=0)
    w0, b0 = [v.numpy().copy() for v in model.trainable_variables]
    result = lr_find(model, x, y, min_lr=0.01, max_lr=2.0, steps=70, mode="linear",
                     batch_size=64)
    assert result.stop_reason is None
    rates = np.linspace(0.01, 2.0, 70)
    np.testing.assert_allclose(result.learning_rates, rates, rtol=1e-14)
    # Full batches of a fixed-seed shuffle, reshuffled after each pass (27 per pass).
    rng = np.random.default_rng(SHUFFLE_SEED)
    batches = []
    while len(batches) < 70:
        order = rng.permutation(len(x))
        batches += [order[i * 64:(i + 1) * 64] for i in range(len(x) // 64)]
    losses, accuracies = _softmax_regression_reference(w0, b0, x, y, batches, rates)
    np.testing.assert_allclose(result.losses, losses, rtol=2e-5, atol=0)
    np.testing.assert_allclose(result.accuracies, accuracies, rtol=0, atol=1e-6)
    assert result.accuracy_key == "accuracy"
    beta = smoothing_for(70)
    np.testing.assert_array_equal(result.smoothed_losses, smooth(result.losses, beta))
    np.testing.assert_array_equal(result.smoothed_accuracies, smooth(result.accuracies, beta))


def _state(model):
    return [keras.ops.convert_to_numpy(v).copy()
            for v in model.variables + model.optimizer.variables + model.metrics_variables]


def _assert_same(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_restores_bit_exact_after_training(digits):
    x, y = digits
    keras.utils.set_random_seed(3)
    model = _dense(keras.optimizers.Adam(learning_rate=0.003), hidden=16,
                   extra_layers=[keras.layers.BatchNormalization(), keras.layers.Dropout(0.2)])
    model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    before = _state(model)
    assert int(model.optimizer.iterations) == 4
    result = lr_find(model, x, y, min_lr=1e-4, max_lr=1.0, steps=25)
    assert len(result.losses) > 2
    _assert_same(before, _state(model))
    assert float(model.optimizer.learning_rate) == np.float32(0.003)
    assert int(model.optimizer.iterations) == 4


def test_restores_a_fresh_model_to_its_fresh_state(digits):
    x, y = digits
    keras.utils.set_random_seed(4)
    model = _dense(keras.optimizers.SGD(learning_rate=0.02, momentum=0.9))
    weights = [v.numpy().copy() for v in model.variables]
    lr_find(model, x, y, min_lr=1e-3, max_lr=1.0, steps=20)
    _assert_same(weights, [v.numpy() for v in model.variables])
    assert model.optimizer.built
    for variable in model.optimizer.variables:
        name = variable.path.split("/")[-1]
        value = variable.numpy()
        if name == "learning_rate":
            assert value == np.float32(0.02)
        else:
            assert not value.any(), name
    # Metric states first made by the sweep are zero, as a fit would start them.
    assert model.metrics_variables
    for variable in model.metrics_variables:
        assert not keras.ops.convert_to_numpy(variable).any(), variable.path


def test_suggestion_bounds_and_plot(digits, tmp_path):
    x, y = digits
    keras.utils.set_random_seed(0)
    model = _dense(keras.optimizers.SGD(momentum=0.9))
    result = lr_find(model, x, y, min_lr=1e-5, max_lr=10.0, steps=60)
    assert isinstance(result, LRFindResult)
    assert 1e-5 <= result.suggestion <= 10.0
    assert result.suggestion == suggest_learning_rate(
        result.learning_rates, result.smoothed_losses, 1e-5)
    assert result.bounds == clr_bounds(
        result.learning_rates, result.smoothed_losses, result.smoothed_accuracies)
    low, high = result.bounds
    assert 1e-5 <= low < high <= 10.0
    # The sweep reaches a regime that trains: accuracy at the upper bound far above chance.
    peak = int(np.argmax(result.smoothed_accuracies))
    assert result.learning_rates[peak] == high and result.smoothed_accuracies[peak] > 0.3
    # Bounds feed the cyclical schedule directly.
    CyclicalLearningRate(low, high, step_size=100)
    path = result.plot(tmp_path / "lr_find.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_stops_on_explosion(digits):
    x, y = digits
    keras.utils.set_random_seed(1)
    model = _dense(keras.optimizers.SGD())
    result = lr_find(model, x, y, min_lr=1e-3, max_lr=1e6, steps=80)
    stop = len(result.losses)
    assert result.stop_reason in ("exploded", "nonfinite") and stop < 80
    smoothed = smooth(result.losses, smoothing_for(80))
    best = np.minimum.accumulate(np.where(np.isfinite(smoothed), smoothed, np.inf))
    flags = [exploded(result.losses[i], smoothed[i], best[i]) for i in range(stop)]
    assert flags == [False] * (stop - 1) + [True]
    assert 1e-3 <= result.suggestion < result.learning_rates[-1]


def test_dataset_input(digits):
    x, y = digits
    keras.utils.set_random_seed(2)
    model = _dense(keras.optimizers.SGD())
    first_loss = model.evaluate(x[:64], y[:64], batch_size=64, verbose=0, return_dict=True)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)  # 29 batches
    result = lr_find(model, dataset, min_lr=1e-4, max_lr=1e-2)
    assert len(result.learning_rates) == 100  # at least 100 steps
    assert result.losses[0] == pytest.approx(first_loss["loss"], rel=1e-6)
    assert result.accuracies[0] == pytest.approx(first_loss["accuracy"], abs=1e-7)
    assert result.stop_reason is None


def test_default_steps_is_one_epoch(digits):
    x, y = digits
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.SGD(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result = lr_find(model, x, y, min_lr=1e-5, max_lr=1e-4, batch_size=15)
    assert len(result.losses) == len(x) // 15  # 119 full batches > 100
    assert result.accuracies is None and result.accuracy_key is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(min_lr=1.0, max_lr=1.0), "min_lr .* must be less than max_lr"),
        (dict(min_lr=2.0, max_lr=1.0), "min_lr .* must be less than max_lr"),
        (dict(min_lr=0.0), "min_lr must be a finite number > 0"),
        (dict(min_lr=-1e-3), "min_lr must be a finite number > 0"),
        (dict(mode="cosine"), "Unknown mode 'cosine'.*'exponential', 'linear'"),
        (dict(steps=1), "steps must be an integer >= 2"),
        (dict(steps=10.5), "steps must be an integer >= 2"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
    ],
)
def test_argument_errors(digits, kwargs, match):
    x, y = digits
    model = _dense(keras.optimizers.SGD())
    with pytest.raises(ValueError, match=match):
        lr_find(model, x, y, **kwargs)
    assert model.train_function is None  # refused before any step


def test_model_and_data_errors(digits):
    x, y = digits
    uncompiled = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="needs a compiled model"):
        lr_find(uncompiled, x, y)
    scheduled = _dense(keras.optimizers.SGD(learning_rate=CyclicalLearningRate(1e-3, 1e-2, 10)))
    with pytest.raises(ValueError, match="not a LearningRateSchedule"):
        lr_find(scheduled, x, y)
    model = _dense(keras.optimizers.SGD())
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    with pytest.raises(ValueError, match="batch_size must be None"):
        lr_find(model, dataset, batch_size=32)
    with pytest.raises(ValueError, match="y must be None"):
        lr_find(model, dataset, y)
    with pytest.raises(ValueError, match="y is required"):
        lr_find(model, x)
    with pytest.raises(ValueError, match="same number of examples"):
        lr_find(model, x, y[:-1])
    assert model.train_function is None
    inputs = keras.Input((64,))
    mcv = keras_mcv.DiscardModel(inputs, keras.layers.Dense(10)(inputs))
    mcv.compile(optimizer=keras.optimizers.SGD(), loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="DiscardModel trains with its own .*plain keras.Model"):
        lr_find(mcv, x, y)
