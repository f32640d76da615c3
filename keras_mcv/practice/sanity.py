"""The sanity checks before learning: chance-level initial loss, loss rising with
regularization, a tiny subset overfit.

References: Bakhshi, Training Neural Networks (Computer Vision, lecture 09),
section 4.2 "Sanity Checks Before Learning".
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

# Keras has no public backend-neutral gradient API: the gradient check and the
# subset dataset use TensorFlow, the backend this package runs on.
import tensorflow as tf

from keras_mcv.practice.common import (
    CHANCE_LOSS_TOLERANCE,
    _accuracy,
    _clone,
    _ends_in_softmax,
    _loss_callable,
    _loss_spec,
    _num_examples,
    _predict,
    _require_compiled,
    _take,
    _weight_matrices,
    chance_loss,
)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One named sanity check: its status, what it measured and what it expected.

    Args:
        name: "initial_loss", "regularization" or "overfit_subset".
        status: "passed", "failed" or "skipped".
        measured: the measured value (None when skipped).
        expected: the expectation, in words and numbers.
        detail: extra context (the reason of a skip, the epochs used, ...).
            Defaults to "".
    """

    name: str
    status: str
    measured: float | None
    expected: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"

    def __str__(self):
        label = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[self.status]
        if self.skipped:
            return f"{label} {self.name}: {self.detail}"
        line = f"{label} {self.name}: measured {self.measured:.4g}, expected {self.expected}"
        return f"{line} ({self.detail})" if self.detail else line


@dataclasses.dataclass(frozen=True)
class SanityReport:
    """The results of `sanity_check`, one `CheckResult` per check.

    `passed` is True when no check failed (skipped checks do not fail the
    report); `str(report)` gives one line per check.
    """

    checks: list

    @property
    def passed(self) -> bool:
        return all(check.status != "failed" for check in self.checks)

    def __getitem__(self, name):
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def __str__(self):
        return "\n".join(str(check) for check in self.checks)


class _L2Added:
    """`previous(w) + factor * sum(w**2)`: an L2 penalty on top of any existing one."""

    def __init__(self, factor, previous):
        self.l2 = keras.regularizers.L2(factor)
        self.previous = previous

    def __call__(self, w):
        penalty = self.l2(w)
        return penalty if self.previous is None else penalty + self.previous(w)


class _StopWhenFit(keras.callbacks.Callback):
    """Measures the subset after every step; stops `fit` once `done(measure)` holds."""

    def __init__(self, x, measure, done):
        super().__init__()
        self.x, self.measure, self.done = x, measure, done
        self.value = None
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps = batch + 1
        self.value = self.measure(keras.ops.convert_to_numpy(self.model(self.x, training=False)))
        if self.done(self.value):
            self.model.stop_training = True


def sanity_check(
    model,
    x,
    y,
    *,
    num_classes=None,
    subset_size=20,
    overfit_epochs=300,
    overfit_accuracy=1.0,
    overfit_loss_fraction=0.01,
    regularization_factor=1e-2,
    loss_tolerance=CHANCE_LOSS_TOLERANCE,
    optimizer=None,
    seed=0,
):
    """Run the checks before learning on a copy of `model`; return a `SanityReport`.

    ```
    copy = clone(model) with the same weights, Dropout/noise layers -> identity
    (a) initial_loss:   L0 = data loss of copy(x) in inference mode (no penalty)
                        softmax classifier: pass if |L0 - ln C| <= tol * ln C
                        otherwise: skipped
    (b) regularization: R0 = total loss (data + the model's own penalties)
                        R1 = same with lam * sum(W**2) added on every weight matrix
                        pass if R1 > R0
    (c) overfit_subset: S = subset_size random examples of (x, y); all penalties
                        removed; fresh optimizer of the model's class and config;
                        Keras's standard train step, one full-batch step on S
                        per epoch, up to overfit_epochs, stopping once reached
                        classifier: pass if inference accuracy on S >= overfit_accuracy
                        otherwise:  pass if loss on S <= overfit_loss_fraction * initial
    ```
    A softmax classifier is a model compiled with (sparse) categorical
    cross-entropy whose output is a softmax (a softmax activation on the last
    layer, or `from_logits=True`). Check (c) trains the copy's layers with
    Keras's standard train step and the model's own optimizer settings (a fresh
    instance, same class and hyperparameters), so a learning rate of 0, a rate
    far too small or frozen layers all fail it. A model that picks its learning
    rate while training (the MCV models of this package) is checked at its
    optimizer's configured rate: pass `optimizer` with a rate it would pick
    (e.g. `keras.optimizers.Adam(1e-3)`) to test the network alone.
    Overfitting S does not prove the implementation right: a bug that
    randomises the features still overfits.

    Args:
        model: a compiled, built Functional or Sequential `keras.Model`; it is
            not changed.
        x: inputs (an array, or a structure of arrays); pass a few hundred
            examples: (a) and (b) evaluate all of them.
        y: targets for `x`.
        num_classes: C for check (a). Defaults to None (the output's last
            dimension).
        subset_size: examples in the subset of check (c). Defaults to 20.
        overfit_epochs: most full-batch passes over the subset in check (c).
            Defaults to 300.
        overfit_accuracy: training accuracy the subset must reach (classifiers).
            Defaults to 1.0.
        overfit_loss_fraction: loss the subset must reach, as a fraction of its
            initial loss (models that are not classifiers). Defaults to 0.01.
        regularization_factor: lam of the L2 penalty added in check (b).
            Defaults to 1e-2.
        loss_tolerance: relative tolerance of check (a). Defaults to 0.25.
        optimizer: optimizer for check (c). Defaults to None (a fresh copy of
            the model's compiled optimizer).
        seed: seed of the subset choice. Defaults to 0.

    Returns:
        A `SanityReport`.

    References: Bakhshi, Training Neural Networks (Computer Vision, lecture 09),
    section 4.2 "Sanity Checks Before Learning" and section 2.1 (L2
    regularization).
    """
    _require_compiled(model, "sanity_check")
    n = _num_examples(x, y)
    if int(subset_size) != subset_size or not 1 <= subset_size <= n:
        raise ValueError(
            f"subset_size must be an integer in [1, {n}] (the examples given), got "
            f"{subset_size!r}; pass more examples or a smaller subset_size."
        )
    if int(overfit_epochs) != overfit_epochs or overfit_epochs < 1:
        raise ValueError(f"overfit_epochs must be an integer >= 1, got {overfit_epochs!r}.")
    if not 0.0 < overfit_accuracy <= 1.0:
        raise ValueError(f"overfit_accuracy must be in (0, 1], got {overfit_accuracy!r}.")
    if not 0.0 < overfit_loss_fraction < 1.0:
        raise ValueError(f"overfit_loss_fraction must be in (0, 1), got {overfit_loss_fraction!r}.")
    if not regularization_factor > 0:
        raise ValueError(
            f"regularization_factor must be > 0 (the check raises the penalty), got "
            f"{regularization_factor!r}."
        )
    if not loss_tolerance > 0:
        raise ValueError(f"loss_tolerance must be > 0, got {loss_tolerance!r}.")
    output_dim = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if num_classes is not None:
        chance_loss(num_classes)  # validates
        if output_dim is not None and output_dim != num_classes:
            raise ValueError(
                f"num_classes={num_classes} but the model outputs {output_dim} scores; "
                "pass the number of output units or leave num_classes=None."
            )
    if optimizer is None:
        if getattr(model, "optimizer", None) is None:
            raise ValueError("the model has no optimizer: compile it with one or pass optimizer=.")
        optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(model.optimizer))
    else:
        optimizer = keras.optimizers.get(optimizer)

    kind, from_logits = _loss_spec(model.loss)
    copy = _clone(model)
    copy.compile(optimizer=keras.optimizers.SGD(), loss=model.loss)  # for compute_loss only
    data_loss = _loss_callable(model.loss, keras.config.floatx())
    y_pred = _predict(copy, x)
    checks = [
        _check_initial_loss(copy, kind, from_logits, num_classes or output_dim, data_loss,
                            y, y_pred, loss_tolerance),
        _check_regularization(copy, x, y, y_pred, regularization_factor),
        _check_overfit(copy, optimizer, model.loss, x, y, n, kind, from_logits, data_loss,
                       subset_size, overfit_epochs, overfit_accuracy, overfit_loss_fraction, seed),
    ]
    return SanityReport(checks)


def _check_initial_loss(copy, kind, from_logits, num_classes, data_loss, y, y_pred, tolerance):
    softmax_classifier = kind in ("sparse", "categorical") and (from_logits or _ends_in_softmax(copy))
    if not softmax_classifier or not num_classes or num_classes < 2:
        return CheckResult(
            "initial_loss", "skipped", None, "",
            "not a softmax classifier (needs (sparse) categorical cross-entropy on a "
            "softmax output or from_logits=True)",
        )
    measured = float(data_loss(y, y_pred))
    expected = chance_loss(num_classes)
    deviation = abs(measured - expected) / expected
    status = "passed" if deviation <= tolerance else "failed"
    return CheckResult(
        "initial_loss", status, measured,
        f"-ln(1/{num_classes}) = {expected:.4f} within {tolerance:.0%}",
        f"relative deviation {deviation:.3f}",
    )


def _check_regularization(copy, x, y, y_pred, factor):
    matrices = _weight_matrices(copy)
    if not matrices:
        return CheckResult("regularization", "skipped", None, "", "no trainable weight matrices")

    def total_loss():
        return float(copy.compute_loss(x=x, y=y, y_pred=y_pred, training=False))

    before = total_loss()
    for variable in matrices:
        variable.regularizer = _L2Added(factor, variable.regularizer)
    after = total_loss()
    penalty = factor * sum(float(np.sum(np.square(v.numpy()))) for v in matrices)
    increase = after - before
    return CheckResult(
        "regularization", "passed" if increase > 0 else "failed", increase,
        f"> 0 (L2 {factor:g} x sum of squared weights adds {penalty:.4g})",
        f"total loss {before:.4g} -> {after:.4g}",
    )


def _remove_penalties(model):
    for variable in model.trainable_variables:
        variable.regularizer = None
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if getattr(layer, "activity_regularizer", None) is not None:
            layer.activity_regularizer = None
        stack.extend(getattr(layer, "layers", []))


def _check_overfit(copy, optimizer, loss, x, y, n, kind, from_logits, data_loss, subset_size,
                   epochs, target_accuracy, loss_fraction, seed):
    _remove_penalties(copy)
    # A plain Functional view of the copy's layers: Keras's standard train
    # step, whatever train_step the model's own class has.
    inputs = copy.inputs[0] if len(copy.inputs) == 1 else copy.inputs
    outputs = copy.outputs[0] if len(copy.outputs) == 1 else copy.outputs
    trainer = keras.Model(inputs, outputs)
    trainer.compile(optimizer=optimizer, loss=loss)
    index = np.sort(np.random.default_rng(seed).choice(n, size=subset_size, replace=False))
    x_sub, y_sub = _take(x, index), _take(y, index)
    initial = float(data_loss(y_sub, _predict(copy, x_sub)))
    classifier = kind != "other"
    if classifier:
        stopper = _StopWhenFit(
            x_sub,
            lambda y_pred: _accuracy(kind, from_logits, y_sub, y_pred),
            lambda accuracy: accuracy >= target_accuracy,
        )
    else:
        stopper = _StopWhenFit(
            x_sub,
            lambda y_pred: float(data_loss(y_sub, y_pred)),
            lambda value: value <= loss_fraction * initial,
        )
    # One element = the whole subset: every step is a full-batch step, and a
    # single fit call avoids Keras's per-epoch overhead.
    dataset = tf.data.Dataset.from_tensors((x_sub, y_sub)).repeat(epochs)
    trainer.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[stopper])
    y_pred = _predict(trainer, x_sub)
    final = float(data_loss(y_sub, y_pred))
    detail = (f"{stopper.steps} full-batch steps on {subset_size} examples, "
              f"loss {initial:.4g} -> {final:.4g}")
    if classifier:
        accuracy = _accuracy(kind, from_logits, y_sub, y_pred)
        ok = accuracy >= target_accuracy and math.isfinite(final)
        return CheckResult(
            "overfit_subset", "passed" if ok else "failed", accuracy,
            f">= {target_accuracy:.2f} training accuracy", detail,
        )
    ok = math.isfinite(final) and final <= loss_fraction * initial
    return CheckResult(
        "overfit_subset", "passed" if ok else "failed", final,
        f"<= {loss_fraction:g} x initial loss {initial:.4g}", detail,
    )
