"""The numerical gradient check: centred differences in float64 against autodiff.

References: Bakhshi, Training Neural Networks (Computer Vision, lecture 09),
section 4.1 "Gradient Checks"; Karpathy, CS231n course notes, "Neural Networks
Part 3: Learning and Evaluation" (the relative-error formula and its thresholds).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

# Keras has no public backend-neutral gradient API: the gradient check and the
# subset dataset use TensorFlow, the backend this package runs on.
import tensorflow as tf

from keras_mcv.practice.common import (
    ACTIVE_RANGE,
    _clone,
    _loss_callable,
    _num_examples,
    _require_compiled,
)

# Thresholds of the relative error between analytic and numerical gradients.
PROBABLY_WRONG = 1e-2  # above: the gradient is probably wrong


OK_WITH_KINKS = 1e-4  # (1e-4, 1e-2]: uncomfortable; (1e-7, 1e-4]: fine only with kinks


HAPPY = 1e-7  # at or below: happy


def relative_error(analytic, numeric):
    """Element-wise relative error between analytic and numerical gradients.

    ```
    error = |a - n| / max(|a|, |n|)      # 0 where a == n == 0 (the check passes)
    ```

    Args:
        analytic: the autodiff gradient entries (scalar or array).
        numeric: the centred-difference entries, same shape.

    Returns:
        A float for scalar inputs, otherwise a float64 array.

    References: Karpathy, CS231n course notes, "Neural Networks Part 3",
    Gradient checks (use relative error for the comparison).
    """
    a = np.asarray(analytic, np.float64)
    n = np.asarray(numeric, np.float64)
    if a.shape != n.shape:
        raise ValueError(f"analytic and numeric differ in shape: {a.shape} vs {n.shape}.")
    scale = np.maximum(np.abs(a), np.abs(n))
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.where(scale > 0, np.abs(a - n) / np.where(scale > 0, scale, 1.0), 0.0)
    return float(error) if error.ndim == 0 else error


def gradient_verdict(error: float) -> str:
    """Name the band a relative gradient error falls in.

    ```
    error >  1e-2          -> "probably wrong"
    1e-4 < error <= 1e-2   -> "uncomfortable"
    1e-7 < error <= 1e-4   -> "ok with kinks"  (too high for a smooth objective:
                                                tanh, softmax, no ReLU)
    error <= 1e-7          -> "happy"
    ```

    Args:
        error: a relative error (non-negative; NaN counts as probably wrong).

    References: Karpathy, CS231n course notes, "Neural Networks Part 3",
    Gradient checks.
    """
    if not error <= PROBABLY_WRONG:  # NaN lands here too
        return "probably wrong"
    if error > OK_WITH_KINKS:
        return "uncomfortable"
    if error > HAPPY:
        return "ok with kinks"
    return "happy"


@dataclasses.dataclass(frozen=True)
class GradientCheckRow:
    """One checked parameter entry.

    Args:
        variable: the variable's path, e.g. "dense/kernel".
        index: the entry's index in the variable.
        analytic: the autodiff gradient.
        numeric: the centred-difference gradient.
        relative_error: |a - n| / max(|a|, |n|), 0 when both are 0.
        tiny: True when 0 < max(|a|, |n|) < 1e-10 (outside the active range
            of floating point; left out of `max_relative_error`).
    """

    variable: str
    index: tuple
    analytic: float
    numeric: float
    relative_error: float
    tiny: bool


@dataclasses.dataclass(frozen=True)
class GradientCheckResult:
    """The rows of `gradient_check` and their verdict.

    `max_relative_error` is the largest relative error over the rows that are
    not `tiny`; `verdict` names its band (`gradient_verdict`); `passed` is
    True when it is at most 1e-4 (the bound for objectives with kinks; a
    smooth objective should reach 1e-7).
    """

    rows: list
    epsilon: float

    @property
    def max_relative_error(self) -> float:
        errors = [row.relative_error for row in self.rows if not row.tiny]
        return max(errors) if errors else 0.0

    @property
    def verdict(self) -> str:
        return gradient_verdict(self.max_relative_error)

    @property
    def passed(self) -> bool:
        return self.max_relative_error <= OK_WITH_KINKS

    def __str__(self):
        lines = [(
            f"gradient check (h={self.epsilon:g}, {len(self.rows)} entries): "
            f"max relative error {self.max_relative_error:.3e} -> {self.verdict}"
        )]
        for row in self.rows:
            flag = "  (tiny)" if row.tiny else ""
            lines.append(
                f"  {row.variable}{list(row.index)}: analytic {row.analytic:+.6e} "
                f"numeric {row.numeric:+.6e} rel {row.relative_error:.2e}{flag}"
            )
        return "\n".join(lines)


def gradient_check(
    model,
    x,
    y,
    *,
    num_parameters=5,
    epsilon=1e-5,
    include_regularization=False,
    seed=0,
):
    """Compare autodiff gradients with centred differences, in float64, on a copy.

    ```
    copy = clone(model) in float64, same weights, Dropout/noise -> identity
    f(w) = mean loss of copy(x, training=False) on y   (+ penalties if asked)
    for each trainable variable, num_parameters random entries w_i:
        a = df/dw_i by autodiff
        n = (f(w_i + h) - f(w_i - h)) / ((w_i + h) - (w_i - h))    # = 2h up to rounding
        error = |a - n| / max(|a|, |n|)       (0 when a == n == 0)
    verdict from the largest error: > 1e-2 probably wrong, > 1e-4 uncomfortable,
    > 1e-7 ok with kinks (ReLU, max), else happy
    ```
    The check samples entries of every variable separately, so biases are
    checked as well as kernels. It runs in inference mode: Dropout and noise
    layers are removed and BatchNormalization uses its moving statistics, so
    training-only paths (dropout masks, batch statistics) are not checked.
    Pass only a few examples (2 to 10): fewer examples cross fewer ReLU kinks,
    and kinks crossed within +-h make the numerical gradient inexact. The data
    loss alone is checked by default, so that a penalty does not dominate.

    Args:
        model: a compiled, built Functional or Sequential `keras.Model`; it is
            not changed (the copy is float64 even when the model is not).
        x: a few input examples.
        y: their targets.
        num_parameters: entries checked in each trainable variable (all of a
            variable's entries when it has fewer). Defaults to 5.
        epsilon: the step h. Defaults to 1e-5.
        include_regularization: add the layers' penalties (`model.losses`) to
            f. Defaults to False.
        seed: seed of the entry sampling. Defaults to 0.

    Returns:
        A `GradientCheckResult`.

    References: Bakhshi, Training Neural Networks (Computer Vision, lecture 09),
    section 4.1 "Gradient Checks"; Karpathy, CS231n course notes, "Neural
    Networks Part 3: Learning and Evaluation", Gradient checks.
    """
    _require_compiled(model, "gradient_check")
    _num_examples(x, y)
    if int(num_parameters) != num_parameters or num_parameters < 1:
        raise ValueError(f"num_parameters must be an integer >= 1, got {num_parameters!r}.")
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1) (typically 1e-5 to 1e-6), got {epsilon!r}.")
    if not model.trainable_variables:
        raise ValueError("the model has no trainable variables to check.")

    dtype = "float64"
    copy = _clone(model, dtype=dtype)
    data_loss = _loss_callable(model.loss, dtype)
    x64 = keras.tree.map_structure(
        lambda a: np.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a), x
    )
    y_true = keras.tree.map_structure(np.asarray, y)

    def objective():
        value = data_loss(y_true, copy(x64, training=False))
        if include_regularization and copy.losses:
            value = value + keras.ops.sum(keras.ops.stack([keras.ops.cast(v, dtype) for v in copy.losses]))
        return value

    variables = copy.trainable_variables
    with tf.GradientTape() as tape:
        loss = objective()
    grads = tape.gradient(loss, variables)

    rng = np.random.default_rng(seed)
    rows = []
    for variable, grad in zip(variables, grads):
        original = variable.numpy().astype(np.float64)
        analytic = np.zeros_like(original) if grad is None else np.asarray(grad, np.float64)
        chosen = rng.choice(original.size, size=min(num_parameters, original.size), replace=False)
        for flat in np.sort(chosen):
            index = np.unravel_index(flat, original.shape)
            values = original.copy()
            values[index] = original[index] + epsilon
            plus_value = values[index]
            variable.assign(values)
            plus = float(objective())
            values[index] = original[index] - epsilon
            minus_value = values[index]
            variable.assign(values)
            minus = float(objective())
            variable.assign(original)
            numeric = (plus - minus) / (plus_value - minus_value)
            a = float(analytic[index])
            scale = max(abs(a), abs(numeric))
            rows.append(GradientCheckRow(
                variable=variable.path,
                index=tuple(int(i) for i in index),
                analytic=a,
                numeric=numeric,
                relative_error=relative_error(a, numeric),
                tiny=0 < scale < ACTIVE_RANGE,
            ))
    return GradientCheckResult(rows, epsilon)
