"""Training practice: sanity checks before learning and a numerical gradient check.

`sanity_check(model, x, y)` runs the three checks that come before any long
training run (chance-level initial loss, loss rising with regularization, a
tiny subset overfit); `gradient_check(model, x, y)` compares the autodiff
gradient with centred differences in float64. Both work on a copy of the
model: the model passed in is never changed.

References: Bakhshi, Training Neural Networks (Computer Vision, lecture 09),
sections 4.1 "Gradient Checks" and 4.2 "Sanity Checks Before Learning";
Karpathy, CS231n course notes, "Neural Networks Part 3: Learning and
Evaluation" (the relative-error formula and its thresholds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import keras
import numpy as np

# Keras has no public backend-neutral gradient API: the gradient check and the
# subset dataset use TensorFlow, the backend this package runs on.
import tensorflow as tf

# Relative tolerance of the chance-level loss check. Logits of spread s around
# a common value raise the expected softmax loss by about s**2 / 2 above ln C,
# so 25 % of ln C admits an initial spread of s <= sqrt(ln(C) / 2): 1.07 for
# C = 10, 0.59 for C = 2, i.e. predictions that are still nearly diffuse.
CHANCE_LOSS_TOLERANCE = 0.25

# Thresholds of the relative error between analytic and numerical gradients.
PROBABLY_WRONG = 1e-2  # above: the gradient is probably wrong
OK_WITH_KINKS = 1e-4  # (1e-4, 1e-2]: uncomfortable; (1e-7, 1e-4]: fine only with kinks
HAPPY = 1e-7  # at or below: happy
# Gradients below this magnitude sit outside the active range of floating
# point: their relative error measures round-off, not the implementation.
ACTIVE_RANGE = 1e-10

# Layers that add noise in training; the copies used by the checks replace
# them by an identity (regularization zero, deterministic gradients).
_NOISE_LAYERS = (
    keras.layers.Dropout,  # includes SpatialDropout1D/2D/3D
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
)

_LOSS_KINDS = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_crossentropy": "categorical",
    "binary_crossentropy": "binary",
}


# --------------------------------------------------------------------------- pure rules


def chance_loss(num_classes: int) -> float:
    """The softmax cross-entropy of a diffuse prediction over `num_classes` classes.

    ```
    loss = -ln(1 / C) = ln C          # 2.302 for C = 10
    ```

    Args:
        num_classes: C, the number of classes (at least 2).

    References: Bakhshi, Training Neural Networks, section 4.2 (look for the
    correct loss at chance performance).
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    return -math.log(1.0 / num_classes)


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


# --------------------------------------------------------------------------- reports


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


# --------------------------------------------------------------------------- model plumbing


@contextlib.contextmanager
def _floatx(dtype):
    # Layers made without a dtype follow the global dtype policy, losses follow
    # floatx: both must name `dtype` while a copy is made.
    previous_floatx = keras.config.floatx()
    previous_policy = keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)


def _require_compiled(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(f"{what} needs a keras.Model, got {type(model).__name__}.")
    if not getattr(model, "compiled", False) or getattr(model, "loss", None) is None:
        raise ValueError(
            f"{what} reads the model's loss: compile the model with a loss first "
            "(model.compile(optimizer=..., loss=...))."
        )
    if isinstance(model.loss, (list, tuple, dict)):
        raise ValueError(
            f"{what} supports one loss on one output; got a {type(model.loss).__name__} "
            "of losses. Check each output with a single-output model."
        )
    if not model.built:
        raise ValueError(f"{what}: build the model first (call it once or give it an Input).")


def _num_examples(x, y):
    leaves_x = [np.asarray(a) for a in keras.tree.flatten(x)]
    leaves_y = [np.asarray(a) for a in keras.tree.flatten(y)]
    if not leaves_x or not leaves_y:
        raise ValueError("x and y must hold at least one array each.")
    sizes = {len(a) for a in leaves_x + leaves_y}
    if len(sizes) != 1:
        raise ValueError(f"x and y must hold the same number of examples; got sizes {sorted(sizes)}.")
    n = sizes.pop()
    if n == 0:
        raise ValueError("x and y are empty: pass at least one example.")
    return n


def _take(data, index):
    return keras.tree.map_structure(lambda a: np.asarray(a)[index], data)


def _loss_spec(loss):
    """(kind, from_logits) of a compiled loss: kind in sparse/categorical/binary/other."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    fn = getattr(loss, "fn", loss)  # LossFunctionWrapper keeps its function in `fn`
    kind = _LOSS_KINDS.get(getattr(fn, "__name__", ""), "other")
    from_logits = False
    if isinstance(loss, keras.losses.Loss):
        from_logits = bool(loss.get_config().get("from_logits", False))
    return kind, from_logits


def _is_softmax(activation):
    return getattr(activation, "__name__", None) == "softmax"


def _output_layer(model):
    return model.layers[-1] if model.layers else None


def _ends_in_softmax(model):
    layer = _output_layer(model)
    if isinstance(layer, keras.layers.Softmax):
        return True
    return _is_softmax(getattr(layer, "activation", None))


def _loss_callable(loss, dtype):
    """The compiled loss as a callable computing in `dtype` (a mean over examples)."""
    with _floatx(dtype):
        if isinstance(loss, str):
            loss = keras.losses.get(loss)
        if isinstance(loss, keras.losses.Loss) and loss.dtype != dtype:
            # A Loss casts its inputs to the dtype it was made with: remake it
            # under the wanted floatx so float64 predictions stay float64.
            try:
                loss = type(loss).from_config(loss.get_config())
            except Exception as error:  # any failure means: cannot recreate
                raise ValueError(
                    f"cannot recreate the loss {type(loss).__name__} in {dtype} from its "
                    "config; give it a working get_config/from_config or compile with a "
                    "loss function."
                ) from error
            if loss.dtype != dtype:
                raise ValueError(
                    f"the loss {type(loss).__name__} computes in {loss.dtype}, not {dtype}; "
                    "compile with a loss that follows keras.config.floatx()."
                )

    def mean_loss(y_true, y_pred):
        # Keras's compiled loss squeezes a trailing unit axis when the ranks of
        # targets and predictions differ by one; a bare loss function does not.
        y_true, y_pred = keras.ops.convert_to_tensor(y_true), keras.ops.convert_to_tensor(y_pred)
        if len(y_pred.shape) == len(y_true.shape) + 1 and y_pred.shape[-1] == 1:
            y_pred = keras.ops.squeeze(y_pred, -1)
        elif len(y_true.shape) == len(y_pred.shape) + 1 and y_true.shape[-1] == 1:
            y_true = keras.ops.squeeze(y_true, -1)
        return keras.ops.mean(loss(y_true, y_pred))

    return mean_loss


def _clone(model, dtype=None):
    """A copy of `model` with the same weights and noise layers replaced by identities.

    With `dtype`, every layer and floating input is rebuilt in that dtype.
    """

    def clone_layer(layer):
        if isinstance(layer, _NOISE_LAYERS):
            return keras.layers.Identity(name=layer.name, dtype=dtype or layer.dtype_policy)
        config = layer.get_config()
        if dtype is not None:
            config["dtype"] = dtype
        return layer.__class__.from_config(config)

    try:
        model_inputs = list(model.inputs or [])
    except AttributeError:  # a subclassed model has no symbolic inputs
        model_inputs = []
    if not model_inputs:
        raise ValueError(
            "the checks run on a copy made by keras.models.clone_model, which needs a "
            f"Functional or Sequential model; {type(model).__name__} has no symbolic inputs. "
            "Build the network with keras.Input/keras.Sequential."
        )
    input_tensors = None
    if dtype is not None:
        input_tensors = [
            keras.Input(
                batch_shape=tensor.shape,
                dtype=dtype if "float" in str(tensor.dtype) else tensor.dtype,
            )
            for tensor in model_inputs
        ]
        if len(input_tensors) == 1:
            input_tensors = input_tensors[0]
    try:
        with _floatx(dtype) if dtype else contextlib.nullcontext():
            copy = keras.models.clone_model(
                model, input_tensors=input_tensors, clone_function=clone_layer, recursive=True
            )
    except ValueError as error:
        raise ValueError(
            f"the checks run on a copy made by keras.models.clone_model, which needs a "
            f"Functional or Sequential model; {type(model).__name__} could not be "
            f"cloned ({error}). Build the network with keras.Input/keras.Sequential."
        ) from error
    copy.set_weights(model.get_weights())
    return copy


def _weight_matrices(model):
    """Trainable variables of rank >= 2: kernels, filters, embeddings (not biases/scales)."""
    return [v for v in model.trainable_variables if len(v.shape) >= 2]


def _predict(model, x, batch_size=256):
    n = _num_examples(x, x)
    parts = [
        keras.ops.convert_to_numpy(model(_take(x, slice(i, i + batch_size)), training=False))
        for i in range(0, n, batch_size)
    ]
    return np.concatenate(parts)


def _accuracy(kind, from_logits, y_true, y_pred):
    y_true = np.asarray(y_true)
    if kind == "binary":
        threshold = 0.0 if from_logits else 0.5
        return float(np.mean((y_pred.reshape(y_true.shape) > threshold) == (y_true > 0.5)))
    labels = np.argmax(y_true, axis=-1) if kind == "categorical" else y_true.reshape(len(y_true))
    return float(np.mean(np.argmax(y_pred, axis=-1) == labels))


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


# --------------------------------------------------------------------------- sanity check


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


# --------------------------------------------------------------------------- gradient check


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
