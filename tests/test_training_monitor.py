"""TrainingMonitor: update:weight ratios, gaps, dead ReLUs and event files.

The ratios are compared with a NumPy replay of Keras's SGD on a softmax
regression (`tests/reference.py`); dead-ReLU fractions and histograms with the
same quantities computed in NumPy from the trained weights; the event files
are read back with public TensorFlow (no tensorboard package needed).
"""

import math
import warnings

import keras
import numpy as np
import pytest

from keras_mcv import training_monitor as tm
from tests import reference

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 4)).astype("float32")
Y = np.arange(16) % 3


def softmax_regression(optimizer, name="out", seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax", name=name)])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def fit(model, monitor, batch_size=16, epochs=1, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tm.UpdateRatioWarning)
        return model.fit(X, Y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0,
                         callbacks=[monitor], **kwargs)


# --------------------------------------------------------------------------- pure rules


def test_update_ratio_exact_values():
    before = np.array([[3.0, 4.0]])
    assert tm.update_ratio(before, before + np.array([[0.3, 0.4]])) == pytest.approx(0.1, abs=1e-15)
    assert tm.update_ratio(before, before) == 0.0
    assert tm.update_ratio(np.zeros(3), np.zeros(3)) == 0.0
    assert tm.update_ratio(np.zeros(3), np.ones(3)) == math.inf
    with pytest.raises(ValueError, match="differ in shape"):
        tm.update_ratio(np.zeros(3), np.zeros(4))


def test_dead_fraction_counts_units_zero_on_every_example():
    activations = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert tm.dead_fraction(activations) == 0.5  # units 0 and 3
    conv = np.zeros((2, 3, 3, 4))  # NHWC: a unit is a channel over all positions
    conv[1, 2, 0, 1] = 0.5
    assert tm.dead_fraction(conv) == 0.75
    assert tm.dead_fraction(np.moveaxis(conv, -1, 1), channel_axis=1) == 0.75
    with pytest.raises(ValueError, match="examples axis and a units axis"):
        tm.dead_fraction(np.zeros(3))


def test_histogram_buckets():
    values = np.array([0.0, 1.0, 1.0, 3.0, np.nan, np.inf])
    buckets = tm.histogram_buckets(values, num_bins=3)
    np.testing.assert_array_equal(buckets, [[0, 1, 1], [1, 2, 2], [2, 3, 1]])
    np.testing.assert_array_equal(tm.histogram_buckets(np.full(5, 2.0)), [[2, 2, 5]])
    assert tm.histogram_buckets(np.array([np.nan])).shape == (0, 3)


@pytest.mark.parametrize(
    "path, key",
    [
        ("sequential/dense/kernel", "update_ratio/dense"),
        ("dense/kernel", "update_ratio/dense"),
        ("sequential/inner/dense/kernel", "update_ratio/inner/dense"),
        ("conv/depthwise_kernel", "update_ratio/conv/depthwise_kernel"),
        ("sequential/embedding/embeddings", "update_ratio/embedding/embeddings"),
    ],
)
def test_ratio_key(path, key):
    assert tm.ratio_key(path, "sequential") == key


# --------------------------------------------------------------------------- ratio


def test_ratio_equals_numpy_sgd_step():
    model = softmax_regression(keras.optimizers.SGD(0.5))
    w0, b0 = [w.astype(np.float64) for w in model.get_weights()]
    history = fit(model, tm.TrainingMonitor(ratio_band=None))

    g_kernel, _ = reference.grad_fn([w0, b0], X.astype(np.float64), Y, "ce")
    expected = np.linalg.norm(0.5 * g_kernel) / np.linalg.norm(w0)
    assert history.history["update_ratio/out"] == [pytest.approx(expected, rel=1e-5)]
    # Biases are not tracked.
    assert [k for k in history.history if k.startswith("update_ratio/")] == ["update_ratio/out"]


def test_ratio_is_the_first_step_of_each_epoch_with_momentum():
    model = softmax_regression(keras.optimizers.SGD(0.3, momentum=0.9))
    params = [w.astype(np.float64) for w in model.get_weights()]
    history = fit(model, tm.TrainingMonitor(ratio_band=None), batch_size=8, epochs=2)

    optimizer = reference.Optimizer("sgd", params, momentum=0.9)
    expected = []
    for step in range(4):  # two batches of 8 per epoch, in order (shuffle=False)
        rows = slice(8 * (step % 2), 8 * (step % 2) + 8)
        grads = reference.grad_fn(params, X[rows].astype(np.float64), Y[rows], "ce")
        new = optimizer.apply(params, grads, 0.3)
        if step % 2 == 0:
            expected.append(np.linalg.norm(new[0] - params[0]) / np.linalg.norm(params[0]))
        params = new
    np.testing.assert_allclose(history.history["update_ratio/out"], expected, rtol=1e-5)


def test_ratio_outside_the_band_warns_naming_the_layer():
    model = softmax_regression(keras.optimizers.SGD(50.0))
    with pytest.warns(tm.UpdateRatioWarning, match=r"update_ratio/out = .* \(high: learning rate likely too high\)"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[tm.TrainingMonitor()])
    model = softmax_regression(keras.optimizers.SGD(1e-6))
    with pytest.warns(tm.UpdateRatioWarning, match=r"\(low: learning rate may be too low\)"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[tm.TrainingMonitor()])


def test_ratio_inside_the_band_or_band_none_does_not_warn():
    model = softmax_regression(keras.optimizers.SGD(50.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", tm.UpdateRatioWarning)
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[tm.TrainingMonitor(ratio_band=None)])
        history = model.fit(X, Y, batch_size=16, epochs=1, verbose=0,
                            callbacks=[tm.TrainingMonitor(ratio_band=(1e-9, 1e9))])
    assert history.history["update_ratio/out"][0] > 1e-2


# --------------------------------------------------------------------------- gaps


def test_train_val_gaps_are_logged():
    model = softmax_regression(keras.optimizers.SGD(0.1))
    history = fit(model, tm.TrainingMonitor(), epochs=2, validation_data=(X[:6], Y[:6]))
    h = history.history
    np.testing.assert_array_equal(h["train_val_gap"], np.array(h["val_loss"]) - np.array(h["loss"]))
    np.testing.assert_array_equal(
        h["train_val_accuracy_gap"], np.array(h["accuracy"]) - np.array(h["val_accuracy"])
    )


def test_no_gap_without_validation_data():
    history = fit(softmax_regression(keras.optimizers.SGD(0.1)), tm.TrainingMonitor())
    assert "train_val_gap" not in history.history and "train_val_accuracy_gap" not in history.history


# --------------------------------------------------------------------------- probe and event files


def relu_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation="relu", name="hidden"),
        keras.layers.Dense(3, activation="softmax", name="out"),
    ])
    kernel, bias = model.layers[0].get_weights()
    bias[:3] = -100.0  # three units that no probe example can wake
    model.layers[0].set_weights([kernel, bias])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_event_files_hold_histograms_dead_relus_and_scalars(tmp_path):
    model = relu_model()
    probe = (X[:10], Y[:10])
    monitor = tm.TrainingMonitor(log_dir=tmp_path, probe_data=probe, num_bins=7)
    history = fit(model, monitor, epochs=2, validation_data=(X[:6], Y[:6]))

    kernel, bias = [w.astype(np.float64) for w in model.layers[0].get_weights()]
    hidden = np.maximum(probe[0] @ kernel + bias, 0.0)
    expected_dead = float(np.mean(np.all(hidden <= 0, axis=0)))
    assert expected_dead >= 3 / 8
    assert history.history["dead_relu/hidden"][-1] == expected_dead

    summaries = tm.read_summaries(tmp_path)
    for tag in [
        "loss", "val_loss", "train_val_gap", "train_val_accuracy_gap",
        "update_ratio/hidden", "update_ratio/out", "dead_relu/hidden",
        "activations/hidden", "activations/out", "activation_gradients/hidden",
        "gradients/" + model.layers[0].kernel.path, "gradients/" + model.layers[1].bias.path,
    ]:
        assert [step for step, _ in summaries[tag]] == [0, 1], tag
    assert float(summaries["dead_relu/hidden"][-1][1]) == expected_dead
    assert float(summaries["update_ratio/out"][1][1]) == pytest.approx(history.history["update_ratio/out"][1], rel=1e-6)
    np.testing.assert_allclose(summaries["activations/hidden"][-1][1], tm.histogram_buckets(hidden, 7),
                               rtol=1e-5, atol=1e-6)
    assert summaries["activations/hidden"][-1][1][:, 2].sum() == 10 * 8
    # Only ReLU layers get a dead-unit fraction.
    assert "dead_relu/out" not in history.history and "dead_relu/out" not in summaries


def test_histogram_freq_and_probe_without_log_dir(tmp_path):
    model = relu_model()
    history = fit(model, tm.TrainingMonitor(probe_data=(X, Y), histogram_freq=2), epochs=3)
    assert len(history.history["dead_relu/hidden"]) == 1  # epoch 2 only
    assert list(tmp_path.iterdir()) == []


def test_scalars_only_log_dir(tmp_path):
    fit(relu_model(), tm.TrainingMonitor(log_dir=tmp_path, histogram_freq=0))
    tags = set(tm.read_summaries(tmp_path))
    assert "update_ratio/hidden" in tags and not any(t.startswith("activations/") for t in tags)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"histogram_freq": -1}, "histogram_freq must be an integer >= 0"),
        ({"histogram_freq": 1.5}, "histogram_freq must be an integer >= 0"),
        ({"ratio_band": (1e-2, 1e-4)}, "0 < low < high"),
        ({"ratio_band": 1e-3}, r"pair \(low, high\)"),
        ({"num_bins": 0}, "num_bins must be an integer >= 1"),
        ({"probe_data": X}, r"probe_data must be a pair \(x, y\)"),
        ({"probe_data": (X, Y[:3])}, "same, non-zero number of examples"),
        ({"log_dir": "/tmp/unused"}, "needs probe_data=\\(x, y\\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tm.TrainingMonitor(**kwargs)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3, activation="softmax")

    def call(self, x):
        return self.dense(x)


def test_probe_on_a_subclassed_model_fails_before_any_step():
    model = Subclassed()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model(X[:1])
    with pytest.raises(ValueError, match="needs a Functional or Sequential model"):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[tm.TrainingMonitor(probe_data=(X, Y))])
    assert int(model.optimizer.iterations.numpy()) == 0


def test_ratios_work_on_a_subclassed_model_without_probe():
    model = Subclassed()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model(X[:1])
    history = fit(model, tm.TrainingMonitor())
    assert len(history.history[tm.ratio_key(model.dense.kernel.path, model.name)]) == 1


def test_read_summaries_on_an_empty_directory(tmp_path):
    with pytest.raises(ValueError, match="no event files"):
        tm.read_summaries(tmp_path)
