"""Sanity checks before learning and the numerical gradient check.

Measured values are compared with NumPy references computed from the model's
own weights (softmax cross-entropy, the L2 penalty, the softmax-regression
gradient); the relative-error formula and its bands are checked on exact
values. Each failing case is a model with the defect the check is meant to
catch.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from keras_mcv import practice
from tests import reference

DIGITS = load_digits()
X = (DIGITS.data / 16.0).astype("float32")
Y = DIGITS.target.astype("int64")
X_CHECK, Y_CHECK = X[:200], Y[:200]


def digits_model(optimizer=None, dropout=0.0, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((64,)), keras.layers.Dense(32, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(10, activation="softmax"))
    model = keras.Sequential(layers)
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    return model


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def numpy_loss(model, x, y):
    """Softmax cross-entropy of the two-layer digits model, from its weights."""
    w1, b1, w2, b2 = [w.astype(np.float64) for w in model.get_weights()]
    p = softmax(np.maximum(x @ w1 + b1, 0.0) @ w2 + b2)
    return -np.log(p[np.arange(len(y)), y]).mean()


def snapshot(model):
    return [w.copy() for w in model.get_weights()]


def assert_unchanged(model, weights, iterations=0):
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert int(model.optimizer.iterations.numpy()) == iterations
    assert keras.config.floatx() == "float32"
    assert keras.config.dtype_policy().name == "float32"


# --------------------------------------------------------------------------- pure rules


def test_chance_loss_is_minus_log_one_over_c():
    assert practice.chance_loss(10) == pytest.approx(2.302585092994046, abs=1e-15)
    assert practice.chance_loss(2) == math.log(2)


@pytest.mark.parametrize("bad", [1, 0, 2.5, -3])
def test_chance_loss_refuses_bad_class_counts(bad):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        practice.chance_loss(bad)


@pytest.mark.parametrize(
    "analytic, numeric, expected",
    [
        (1.0, 1.0, 0.0),
        (1.0, 0.5, 0.5),  # |1 - 0.5| / max(1, 0.5)
        (0.5, 1.0, 0.5),  # symmetric
        (-1.0, 1.0, 2.0),  # opposite signs
        (0.0, 1e-3, 1.0),  # one of them zero
        (0.0, 0.0, 0.0),  # both zero: the check passes
        (2e-8, 1e-8, 0.5),
    ],
)
def test_relative_error_exact_values(analytic, numeric, expected):
    assert practice.relative_error(analytic, numeric) == expected


def test_relative_error_on_arrays_and_shape_mismatch():
    got = practice.relative_error([1.0, 0.0, 4.0], [1.0, 0.0, 2.0])
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="differ in shape"):
        practice.relative_error([1.0, 2.0], [1.0])


@pytest.mark.parametrize(
    "error, verdict",
    [
        (0.5, "probably wrong"),
        (1.0001e-2, "probably wrong"),
        (1e-2, "uncomfortable"),
        (1.0001e-4, "uncomfortable"),
        (1e-4, "ok with kinks"),
        (1.0001e-7, "ok with kinks"),
        (1e-7, "happy"),
        (0.0, "happy"),
        (float("nan"), "probably wrong"),
    ],
)
def test_gradient_verdict_bands(error, verdict):
    assert practice.gradient_verdict(error) == verdict


def test_tiny_rows_are_left_out_of_the_maximum():
    rows = [
        practice.GradientCheckRow("d/kernel", (0, 0), 1.0, 1.0 + 1e-6, practice.relative_error(1.0, 1.0 + 1e-6), False),
        practice.GradientCheckRow("d/kernel", (0, 1), 1e-12, 3e-12, practice.relative_error(1e-12, 3e-12), True),
        practice.GradientCheckRow("d/bias", (2,), 0.0, 0.0, 0.0, False),
    ]
    result = practice.GradientCheckResult(rows, 1e-5)
    assert result.max_relative_error == pytest.approx(1e-6 / (1.0 + 1e-6), rel=1e-9)
    assert result.verdict == "ok with kinks" and result.passed
    text = str(result).splitlines()
    assert len(text) == 4 and text[2].endswith("(tiny)")
    assert practice.GradientCheckResult([], 1e-5).max_relative_error == 0.0


# --------------------------------------------------------------------------- sanity check


def test_sound_model_passes_with_numpy_measurements_and_is_left_untouched():
    model = digits_model(dropout=0.2)
    weights = snapshot(model)
    report = practice.sanity_check(model, X_CHECK, Y_CHECK)

    assert report.passed, str(report)
    assert [c.name for c in report.checks] == ["initial_loss", "regularization", "overfit_subset"]
    initial = report["initial_loss"]
    assert initial.measured == pytest.approx(numpy_loss(model, X_CHECK, Y_CHECK), rel=1e-5)
    assert abs(initial.measured - math.log(10)) <= 0.25 * math.log(10)
    kernels = [weights[0], weights[2]]
    penalty = 1e-2 * sum(float(np.sum(np.square(k.astype(np.float64)))) for k in kernels)
    assert report["regularization"].measured == pytest.approx(penalty, rel=1e-4)
    assert report["overfit_subset"].measured == 1.0
    assert len(str(report).splitlines()) == 3
    assert str(report).splitlines()[0].startswith("PASS initial_loss: measured 2.3")
    assert_unchanged(model, weights)
    # The user's model keeps its layers (the copy dropped Dropout, not the model).
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)


def test_large_final_bias_fails_the_initial_loss_check():
    model = digits_model()
    kernel, bias = model.layers[-1].get_weights()
    bias[0] = 10.0
    model.layers[-1].set_weights([kernel, bias])
    report = practice.sanity_check(model, X_CHECK, Y_CHECK, overfit_epochs=1)

    assert not report.passed
    check = report["initial_loss"]
    assert check.status == "failed"
    assert check.measured == pytest.approx(numpy_loss(model, X_CHECK, Y_CHECK), rel=1e-5)
    assert check.measured > 1.25 * math.log(10)
    assert str(report).splitlines()[0].startswith("FAIL initial_loss")


def test_loss_tolerance_is_relative_to_ln_c():
    model = digits_model()
    measured = numpy_loss(model, X_CHECK, Y_CHECK)
    deviation = abs(measured - math.log(10)) / math.log(10)
    below = practice.sanity_check(model, X_CHECK, Y_CHECK, loss_tolerance=deviation * 0.99, overfit_epochs=1)
    above = practice.sanity_check(model, X_CHECK, Y_CHECK, loss_tolerance=deviation * 1.01, overfit_epochs=1)
    assert below["initial_loss"].status == "failed"
    assert above["initial_loss"].status == "passed"


@pytest.mark.parametrize("defect", ["learning rate 0", "frozen layers"])
def test_a_model_that_cannot_learn_fails_the_overfit_check(defect):
    if defect == "learning rate 0":
        model = digits_model(optimizer=keras.optimizers.SGD(0.0))
    else:
        model = digits_model()
        for layer in model.layers:
            layer.trainable = False
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    weights = snapshot(model)
    report = practice.sanity_check(model, X_CHECK, Y_CHECK, overfit_epochs=15, seed=3)

    check = report["overfit_subset"]
    assert check.status == "failed" and not report.passed
    # Nothing moved: the accuracy is that of the initial weights on the subset.
    subset = np.sort(np.random.default_rng(3).choice(len(X_CHECK), 20, replace=False))
    initial_accuracy = np.mean(np.argmax(model.predict(X_CHECK[subset], verbose=0), 1) == Y_CHECK[subset])
    assert check.measured == pytest.approx(initial_accuracy)
    assert "15 full-batch steps on 20 examples" in check.detail
    assert report["initial_loss"].passed
    assert_unchanged(model, weights)


def test_override_optimizer_trains_the_copy_with_it():
    model = digits_model(optimizer=keras.optimizers.SGD(0.0))
    report = practice.sanity_check(model, X_CHECK, Y_CHECK, optimizer=keras.optimizers.Adam(1e-2))
    assert report["overfit_subset"].passed


class IgnoresPenalties(keras.Model):
    """A model whose loss leaves out the layers' penalties (a bug check (b) catches)."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, y_pred))


def test_a_loss_that_ignores_regularization_fails_the_regularization_check():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Dense(32, activation="relu")(inputs))
    model = IgnoresPenalties(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy")
    report = practice.sanity_check(model, X_CHECK, Y_CHECK, overfit_epochs=1)
    check = report["regularization"]
    assert check.status == "failed"
    assert check.measured == 0.0


def test_initial_loss_check_is_skipped_for_a_regression_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    target = (X_CHECK @ np.linspace(-1, 1, 64)).astype("float32")[:, None]
    report = practice.sanity_check(model, X_CHECK, target, overfit_epochs=300)
    check = report["initial_loss"]
    assert check.skipped and check.measured is None
    assert str(report).splitlines()[0].startswith("SKIP initial_loss: not a softmax classifier")
    overfit = report["overfit_subset"]
    assert overfit.expected.startswith("<= 0.01 x initial loss")
    initial = float(overfit.detail.split("loss ")[1].split(" ->")[0])
    assert overfit.passed and overfit.measured <= 0.01 * initial
    assert report.passed  # a skipped check does not fail the report


def test_from_logits_classifier_counts_as_softmax():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    report = practice.sanity_check(model, X_CHECK, Y_CHECK, overfit_epochs=1)
    w, b = [v.astype(np.float64) for v in model.get_weights()]
    p = softmax(X_CHECK @ w + b)
    expected = -np.log(p[np.arange(len(Y_CHECK)), Y_CHECK]).mean()
    assert report["initial_loss"].measured == pytest.approx(expected, rel=1e-5)


def test_binary_classifier_is_overfit_by_thresholded_accuracy():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="binary_crossentropy")
    y = (Y_CHECK % 2).astype("float32")
    report = practice.sanity_check(model, X_CHECK, y, overfit_epochs=2)
    assert report["initial_loss"].skipped
    subset = np.sort(np.random.default_rng(0).choice(len(X_CHECK), 20, replace=False))
    p = model.predict(X_CHECK[subset], verbose=0)[:, 0]
    assert report["overfit_subset"].measured == pytest.approx(np.mean((p > 0.5) == (y[subset] > 0.5)))
    assert report["overfit_subset"].status == "failed"  # learning rate 0


# --------------------------------------------------------------------------- gradient check


def test_gradient_rows_match_the_numpy_softmax_regression_gradient():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    weights = snapshot(model)
    x, y = X[:5], Y[:5]
    result = practice.gradient_check(model, x, y, num_parameters=6)

    params = [w.astype(np.float64) for w in weights]
    g_kernel, g_bias = reference.grad_fn(params, x.astype(np.float64), y, "ce")
    expected = {"kernel": g_kernel, "bias": g_bias}
    assert len(result.rows) == 12 and {r.variable.split("/")[-1] for r in result.rows} == {"kernel", "bias"}
    for row in result.rows:
        want = expected[row.variable.split("/")[-1]][row.index]
        assert row.analytic == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert row.relative_error == practice.relative_error(row.analytic, row.numeric)
    assert result.max_relative_error < practice.HAPPY  # a smooth objective in float64
    assert result.verdict == "happy" and result.passed
    assert_unchanged(model, weights)


def test_sound_relu_model_is_below_1e_4_and_model_untouched():
    model = digits_model(dropout=0.5)
    weights = snapshot(model)
    result = practice.gradient_check(model, X[:4], Y[:4], num_parameters=5)
    assert result.max_relative_error < 1e-4
    assert len(result.rows) == 4 * 5  # every variable, biases included
    assert "max relative error" in str(result).splitlines()[0]
    assert_unchanged(model, weights)


@keras.saving.register_keras_serializable(package="keras_mcv_tests")
class WrongSquare(keras.layers.Layer):
    """y = x**2 with a deliberately wrong gradient (x instead of 2x)."""

    def call(self, inputs):
        @tf.custom_gradient
        def square(x):
            return x * x, lambda upstream: upstream * x

        return square(inputs)


def test_a_wrong_custom_gradient_is_caught():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(8, activation="tanh"),
        WrongSquare(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    result = practice.gradient_check(model, X[:4], Y[:4], num_parameters=4)
    assert result.verdict == "probably wrong" and not result.passed
    first, last = model.layers[0].kernel.path, model.layers[-1].kernel.path
    upstream = [r for r in result.rows if r.variable.split("/")[-2] == first.split("/")[-2] and r.analytic != 0]
    downstream = [r for r in result.rows if r.variable.split("/")[-2] == last.split("/")[-2]]
    # The wrong factor 1/2 shows up upstream of the layer, not downstream.
    assert upstream and all(r.relative_error == pytest.approx(0.5, rel=1e-6) for r in upstream)
    assert max(r.relative_error for r in downstream) < practice.HAPPY


def test_regularization_is_left_out_unless_asked():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(10, activation="softmax", kernel_regularizer=keras.regularizers.L2(0.5)),
    ])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = X[:3], Y[:3]
    data_only = practice.gradient_check(model, x, y, num_parameters=3)
    with_penalty = practice.gradient_check(model, x, y, num_parameters=3, include_regularization=True)
    kernel = model.get_weights()[0].astype(np.float64)
    for plain, penalised in zip(data_only.rows, with_penalty.rows):
        extra = 2 * 0.5 * kernel[plain.index] if plain.variable.endswith("kernel") else 0.0
        assert penalised.analytic == pytest.approx(plain.analytic + extra, rel=1e-10, abs=1e-12)
    assert with_penalty.passed


# --------------------------------------------------------------------------- bad input


def uncompiled():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(10, activation="softmax")

    def call(self, x):
        return self.dense(x)


def subclassed():
    model = Subclassed()
    model(X[:1])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (uncompiled, {}, "compile the model with a loss first"),
        (digits_model, {"subset_size": 500}, r"subset_size must be an integer in \[1, 200\]"),
        (digits_model, {"subset_size": 0}, "subset_size must be"),
        (digits_model, {"num_classes": 5}, "num_classes=5 but the model outputs 10"),
        (digits_model, {"regularization_factor": 0.0}, "regularization_factor must be > 0"),
        (digits_model, {"overfit_epochs": 0}, "overfit_epochs must be an integer >= 1"),
        (digits_model, {"overfit_accuracy": 1.5}, "overfit_accuracy must be in"),
        (digits_model, {"loss_tolerance": 0}, "loss_tolerance must be > 0"),
        (subclassed, {}, "needs a Functional or Sequential model"),
    ],
)
def test_sanity_check_bad_input(make, kwargs, match):
    model = make()
    with pytest.raises(ValueError, match=match):
        practice.sanity_check(model, X_CHECK, Y_CHECK, **kwargs)
    if getattr(model, "optimizer", None) is not None:
        assert int(model.optimizer.iterations.numpy()) == 0


def test_mismatched_x_and_y_are_refused():
    with pytest.raises(ValueError, match="same number of examples"):
        practice.sanity_check(digits_model(), X_CHECK, Y_CHECK[:10])
    with pytest.raises(ValueError, match="same number of examples"):
        practice.gradient_check(digits_model(), X[:4], Y[:3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilon": 0.0}, r"epsilon must be in \(0, 1\)"),
        ({"num_parameters": 0}, "num_parameters must be an integer >= 1"),
    ],
)
def test_gradient_check_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        practice.gradient_check(digits_model(), X[:4], Y[:4], **kwargs)


def test_gradient_check_needs_a_compiled_functional_model():
    with pytest.raises(ValueError, match="compile the model with a loss first"):
        practice.gradient_check(uncompiled(), X[:4], Y[:4])
    with pytest.raises(ValueError, match="needs a Functional or Sequential model"):
        practice.gradient_check(subclassed(), X[:4], Y[:4])
