"""The learning-rate range test: train while the LR rises, read the loss curve.

`lr_find(model, x, y)` runs the sweep on a compiled model and restores the
model and its optimizer exactly afterwards. The readings of the curve
(`smooth`, `exploded`, `suggest_learning_rate`, `clr_bounds`) are plain NumPy.

References: Smith, Cyclical Learning Rates for Training Neural Networks,
2017, section 3.3; Mandatelli, Improved Training Methods for Neural Networks,
section 3.1.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import keras
import numpy as np

MODES = ("exponential", "linear")
# Per-step losses are smoothed by a bias-corrected exponential moving average
# (as in the fast.ai learning-rate finder): one batch's loss is too noisy to
# read. Its time constant is this share of the sweep, so the lag covers the
# same share of the LR range whatever the number of steps (a fixed 0.98 lags
# ~50 steps: on a 100-step sweep the smoothed minimum lands after divergence).
SMOOTHING_WINDOW = 0.05
MAX_SMOOTHING = 0.98
# Stop when the smoothed loss exceeds this multiple of its best value: past
# that point the curve only says "diverged" and steps cost time.
EXPLOSION_FACTOR = 4.0
# "Starts to rise / fall" is where the smoothed curve has covered this share
# of its whole rise (accuracy) or fall (loss).
ONSET_FRACTION = 0.1
# The suggestion is one decade below the LR of the smoothed loss's minimum.
SUGGESTION_DIVISOR = 10.0
MIN_DEFAULT_STEPS = 100
DEFAULT_BATCH_SIZE = 32
SHUFFLE_SEED = 0


def sweep_learning_rates(min_lr, max_lr, steps, mode="exponential"):
    """The LR of every step of the sweep, from `min_lr` to `max_lr` inclusive.

    ```
    linear:      lr_i = min_lr + (max_lr - min_lr) * i / (steps - 1)
    exponential: lr_i = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
    i = 0 .. steps - 1   (lr_0 = min_lr and lr_{steps-1} = max_lr exactly)
    ```

    Args:
        min_lr: the first LR, > 0.
        max_lr: the last LR, > min_lr.
        steps: the number of LRs, an integer >= 2.
        mode: "exponential" or "linear". Defaults to "exponential".

    References: Smith, Cyclical Learning Rates for Training Neural Networks,
    2017, section 3.3 (linear); the exponential form is the fast.ai finder's.
    """
    _check_sweep(min_lr, max_lr, steps, mode)
    fractions = np.arange(steps, dtype=np.float64) / (steps - 1)
    if mode == "linear":
        rates = min_lr + (max_lr - min_lr) * fractions
    else:
        rates = min_lr * (max_lr / min_lr) ** fractions
    rates[0], rates[-1] = min_lr, max_lr
    return rates


def smoothing_for(steps):
    """The EMA factor for a sweep of `steps`: time constant 5% of the sweep.

    ```
    beta = clip(1 - 1 / (0.05 * steps), 0, 0.98)     (100 steps: 0.8)
    ```

    Args:
        steps: the number of steps of the sweep.

    References: the fast.ai learning-rate finder (which fixes beta = 0.98).
    """
    window = SMOOTHING_WINDOW * steps
    if window <= 1.0:
        return 0.0
    return min(1.0 - 1.0 / window, MAX_SMOOTHING)


def smooth(values, beta):
    """Bias-corrected exponential moving average (`beta = 0`: the values).

    ```
    avg_i = beta * avg_{i-1} + (1 - beta) * v_i,  avg_{-1} = 0
    s_i   = avg_i / (1 - beta ** (i + 1))
    ```
    A non-finite value makes every later average non-finite.

    Args:
        values: the per-step values, oldest first.
        beta: the EMA factor in [0, 1), e.g. `smoothing_for(steps)`.

    References: the fast.ai learning-rate finder's smoothing.
    """
    values = np.asarray(values, dtype=np.float64)
    smoothed = np.empty_like(values)
    average = 0.0
    for i, value in enumerate(values):
        average = beta * average + (1.0 - beta) * value
        smoothed[i] = average / (1.0 - beta ** (i + 1))
    return smoothed


def exploded(loss, smoothed_loss, best_smoothed_loss, factor=EXPLOSION_FACTOR):
    """Whether the sweep should stop after this step.

    ```
    stop if loss is non-finite or smoothed_loss > factor * best_smoothed_loss
    ```
    `best_smoothed_loss` is the lowest smoothed loss so far (this step
    included); the test assumes losses >= 0, as Keras's losses are.

    Args:
        loss: this step's batch loss.
        smoothed_loss: this step's smoothed loss.
        best_smoothed_loss: the lowest smoothed loss so far.
        factor: the multiple of the best that counts as divergence.
            Defaults to `EXPLOSION_FACTOR` (4.0).

    References: the fast.ai learning-rate finder's divergence stop.
    """
    if not math.isfinite(loss) or not math.isfinite(smoothed_loss):
        return True
    return smoothed_loss > factor * best_smoothed_loss


def suggest_learning_rate(learning_rates, smoothed_losses, min_lr=None):
    """One learning rate from the smoothed loss curve: its minimum's LR / 10.

    ```
    i* = argmin over finite smoothed_losses
    suggestion = max(learning_rates[i*] / 10, min_lr)
    ```
    Why this rule: at the minimum the LR is at the edge where training starts
    to diverge; a decade lower still makes fast progress and is stable. It
    reads one point of the curve, so it is robust to the noise that makes the
    steepest-slope point (a derivative of a noisy curve) jump around. The
    floor keeps the suggestion within the swept range. None when no loss
    was finite.

    Args:
        learning_rates: the LR of every step.
        smoothed_losses: the smoothed loss of every step.
        min_lr: the floor. Defaults to None (the first LR).

    References: Smith, Cyclical Learning Rates for Training Neural Networks,
    2017, section 3.3; the fast.ai finder's "minimum / 10" suggestion.
    """
    rates = np.asarray(learning_rates, dtype=np.float64)
    losses = np.asarray(smoothed_losses, dtype=np.float64)
    finite = np.isfinite(losses)
    if not finite.any():
        return None
    best = int(np.argmin(np.where(finite, losses, np.inf)))
    floor = rates[0] if min_lr is None else min_lr
    return float(max(rates[best] / SUGGESTION_DIVISOR, floor))


def _onset(curve, sign):
    """Indices (onset, extreme) of a curve rising (sign=+1) or falling (-1)."""
    finite = np.isfinite(curve)
    if not finite.any():
        return None
    oriented = np.where(finite, sign * curve, -np.inf)
    extreme = int(np.argmax(oriented))
    start = oriented[0]
    if not np.isfinite(start) or oriented[extreme] <= start:
        return None
    threshold = start + ONSET_FRACTION * (oriented[extreme] - start)
    # The last step below the threshold, not the first above it: noise in the
    # flat start can poke above the threshold long before the real rise.
    onset = int(np.flatnonzero(oriented[:extreme] < threshold)[-1]) + 1
    if onset >= extreme:
        return None
    return onset, extreme


def clr_bounds(learning_rates, smoothed_losses, smoothed_accuracies=None):
    """Smith's bounds for a cyclical LR: where accuracy starts to rise and where it peaks.

    ```
    with accuracy a (smoothed):  peak  = argmax a
                                 onset = first i from which a stays >= a_0 + 0.1 (a_peak - a_0)
                                         up to the peak
    without (or no rise), loss l (smoothed):
                                 peak  = argmin l
                                 onset = first i from which l stays <= l_0 - 0.1 (l_0 - l_peak)
                                         up to the minimum
    bounds = (lr[onset], lr[peak]);  None if the curve never rises (falls) or
                                     rises in a single step (onset = peak)
    ```
    Smith reads the maximum where accuracy "slows, becomes ragged, or starts
    to fall"; the peak of the smoothed curve is that point made exact.

    Args:
        learning_rates: the LR of every step.
        smoothed_losses: the smoothed loss of every step.
        smoothed_accuracies: the smoothed accuracy of every step, or None.
            Defaults to None (read the loss).

    References: Smith, Cyclical Learning Rates for Training Neural Networks,
    2017, section 3.3; Mandatelli, Improved Training Methods for Neural
    Networks, section 3.1.
    """
    rates = np.asarray(learning_rates, dtype=np.float64)
    found = None
    if smoothed_accuracies is not None:
        found = _onset(np.asarray(smoothed_accuracies, dtype=np.float64), +1)
    if found is None:
        found = _onset(np.asarray(smoothed_losses, dtype=np.float64), -1)
    if found is None:
        return None
    onset, peak = found
    return float(rates[onset]), float(rates[peak])


@dataclasses.dataclass
class LRFindResult:
    """What a learning-rate range test measured, and its reading.

    Attributes:
        learning_rates: the LR of every step run (float64 array).
        losses: the training loss of every step (the batch's loss).
        accuracies: the batch accuracy of every step, or None when the model
            has no accuracy metric.
        smoothed_losses: `smooth(losses, smoothing_for(steps))`.
        smoothed_accuracies: `smooth(accuracies, smoothing_for(steps))`, or None.
        suggestion: `suggest_learning_rate(...)`, one LR in the swept range.
        bounds: `clr_bounds(...)`, (base, max) for `CyclicalLearningRate`,
            or None when the curve shows no rise.
        mode: "exponential" or "linear".
        stop_reason: None (every step ran), "exploded" or "nonfinite".
        accuracy_key: the metric read as accuracy, or None.
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray | None
    smoothed_losses: np.ndarray
    smoothed_accuracies: np.ndarray | None
    suggestion: float | None
    bounds: tuple[float, float] | None
    mode: str
    stop_reason: str | None = None
    accuracy_key: str | None = None

    def plot(self, path):
        """Write the loss (and accuracy) against the LR as a PNG; returns `path`.

        The suggestion is a dashed vertical line, the bounds a shaded band.
        """
        # The Agg canvas draws without pyplot, so the caller's backend and
        # open figures are left alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        panels = 2 if self.accuracies is not None else 1
        figure = Figure(figsize=(7, 3.2 * panels))
        FigureCanvasAgg(figure)
        axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
        curves = [("loss", self.losses, self.smoothed_losses)]
        if self.accuracies is not None:
            curves.append((self.accuracy_key or "accuracy", self.accuracies,
                           self.smoothed_accuracies))
        for ax, (label, raw, smoothed) in zip(axes, curves):
            ax.plot(self.learning_rates, raw, color="0.75", lw=1, label=f"{label} (batch)")
            ax.plot(self.learning_rates, smoothed, color="C0", lw=2, label=f"{label} (smoothed)")
            if self.bounds is not None:
                ax.axvspan(*self.bounds, color="C2", alpha=0.15,
                           label=f"CLR bounds {self.bounds[0]:.3g} - {self.bounds[1]:.3g}")
            if self.suggestion is not None:
                ax.axvline(self.suggestion, color="C3", ls="--",
                           label=f"suggestion {self.suggestion:.3g}")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            if self.mode == "exponential":
                ax.set_xscale("log")
        finite = self.smoothed_losses[np.isfinite(self.smoothed_losses)]
        if finite.size:
            # Keep the divergence's last steps from flattening the useful part:
            # show from the lowest batch loss to the start or the bulk of the
            # smoothed curve, whichever is higher.
            raw = self.losses[np.isfinite(self.losses)]
            low = float(min(raw.min(), finite.min()))
            high = float(max(finite[0], np.percentile(finite, 90)))
            margin = 0.1 * abs(high - low) + 1e-12
            axes[0].set_ylim(low - margin, max(high, low) + 5 * margin)
        axes[-1].set_xlabel("learning rate")
        axes[0].set_title(f"Learning-rate range test ({self.mode})")
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
        return path


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def _check_sweep(min_lr, max_lr, steps, mode):
    if not _is_number(min_lr) or not math.isfinite(min_lr) or min_lr <= 0:
        raise ValueError(f"min_lr must be a finite number > 0, got {min_lr!r}, e.g. 1e-7.")
    if not _is_number(max_lr) or not math.isfinite(max_lr):
        raise ValueError(f"max_lr must be a finite number, got {max_lr!r}, e.g. 10.")
    if min_lr >= max_lr:
        raise ValueError(
            f"min_lr ({min_lr!r}) must be less than max_lr ({max_lr!r}): the sweep "
            "raises the learning rate from min_lr to max_lr."
        )
    if mode not in MODES:
        raise ValueError(
            f"Unknown mode {mode!r}. Valid modes: " + ", ".join(repr(m) for m in MODES) + "."
        )
    if steps is not None and (
        isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2
    ):
        raise ValueError(
            f"steps must be an integer >= 2 (a sweep needs two learning rates), got "
            f"{steps!r}; pass None for one epoch of batches (at least {MIN_DEFAULT_STEPS})."
        )


def _check_model(model):
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError(
            "lr_find needs a compiled model: call model.compile(optimizer=..., "
            "loss=..., metrics=['accuracy']) first."
        )
    # A numeric learning rate is a variable; a schedule or callable is
    # evaluated into a tensor by the `learning_rate` property.
    if not isinstance(model.optimizer.learning_rate, keras.Variable):
        raise ValueError(
            "lr_find sets the learning rate at every step, so the optimizer's "
            "learning_rate must be a plain number, not a LearningRateSchedule. "
            "Compile with e.g. keras.optimizers.SGD(learning_rate=0.01)."
        )
    from keras_mcv.models.base import LRModel

    # These models run their own step (trials, discards, chosen LRs), so a
    # sweep would not measure plain training at each LR.
    if isinstance(model, LRModel):
        raise ValueError(
            f"{type(model).__name__} trains with its own micro cross-validation step "
            "(trials, discards, its own learning rates), which a sweep cannot measure. "
            "Run lr_find on a plain keras.Model built from the same layers."
        )


class _ArrayBatches:
    """Cycles through shuffled full batches of arrays, reshuffling each pass."""

    def __init__(self, x, y, batch_size):
        self.x, self.y = x, y
        self.size = len(keras.tree.flatten(x)[0])
        self.batch_size = min(batch_size, self.size)
        # Full batches only: a short last batch has a noisier loss and would
        # retrace the training function.
        self.per_epoch = self.size // self.batch_size
        self.rng = np.random.default_rng(SHUFFLE_SEED)
        self.queue = []

    def __next__(self):
        if not self.queue:
            order = self.rng.permutation(self.size)
            self.queue = [order[i * self.batch_size:(i + 1) * self.batch_size]
                          for i in range(self.per_epoch)]
        index = self.queue.pop(0)
        take = lambda a: np.asarray(a)[index]  # noqa: E731
        y = None if self.y is None else keras.tree.map_structure(take, self.y)
        return keras.tree.map_structure(take, self.x), y, None


class _DatasetBatches:
    """Cycles through a batched dataset, starting it over when it ends."""

    def __init__(self, dataset):
        self.dataset = dataset
        cardinality = int(dataset.cardinality())
        self.per_epoch = cardinality if cardinality > 0 else None
        self.iterator = iter(dataset)

    def __next__(self):
        try:
            element = next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.dataset)
            try:
                element = next(self.iterator)
            except StopIteration:
                raise ValueError("lr_find: the dataset yields no batches.") from None
        return keras.utils.unpack_x_y_sample_weight(element)


def _batches(x, y, batch_size):
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("With a tf.data.Dataset, y must be None: the dataset yields (x, y).")
        if batch_size is not None:
            raise ValueError(
                "With a tf.data.Dataset, batch_size must be None: batch the dataset "
                "itself (dataset.batch(32))."
            )
        return _DatasetBatches(x)
    if y is None:
        raise ValueError("y is required with array inputs (pass y=labels, or a dataset of (x, y)).")
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    sizes = {len(a) for a in keras.tree.flatten(x) + keras.tree.flatten(y)}
    if len(sizes) != 1:
        raise ValueError(f"x and y must hold the same number of examples, got sizes {sorted(sizes)}.")
    if sizes == {0}:
        raise ValueError("x is empty: the sweep needs training examples.")
    return _ArrayBatches(x, y, int(batch_size))


def _accuracy_key(logs):
    keys = [k for k in logs if k != "loss"]
    for key in keys:
        if key in ("accuracy", "acc"):
            return key
    for key in keys:
        if key.endswith("accuracy") or key.endswith("_acc"):
            return key
    return None


def lr_find(
    model, x, y=None, *, min_lr=1e-7, max_lr=10, steps=None, mode="exponential",
    batch_size=None,
):
    """Run the learning-rate range test on a compiled model, then restore it.

    ```
    snapshot model variables, optimizer variables (slots, iterations, LR), metrics
    for i, lr_i in enumerate(sweep_learning_rates(min_lr, max_lr, steps, mode)):
        optimizer.learning_rate = lr_i
        loss_i, acc_i = model.train_on_batch(next batch)
        s_i = smooth(loss)_i
        if exploded(loss_i, s_i, min(s_0..s_i)): stop    # non-finite or > 4x best
    restore the snapshot (bit-exact)
    suggestion = max(lr at argmin s / 10, min_lr);  bounds = clr_bounds(...)
    ```
    Arrays are shuffled with a fixed seed and cut into full batches; a
    dataset is used as batched. Both are started over when a sweep is longer
    than one pass. An unbuilt model is built on the first batch and an unbuilt
    optimizer is built before the snapshot, so "restored" means the state a
    fresh fit would start from.

    Args:
        model: a compiled `keras.Model` whose optimizer's learning rate is a
            number (not a schedule); not one of this package's MCV models.
        x: input arrays, or a batched `tf.data.Dataset` of (x, y[, weights]).
        y: targets for array inputs; None with a dataset. Defaults to None.
        min_lr: the first LR, > 0. Defaults to 1e-7.
        max_lr: the last LR, > min_lr. Defaults to 10.
        steps: training steps in the sweep, >= 2. Defaults to None: one
            epoch of batches, but at least 100 (enough points for the
            smoothing; also used when a dataset's length is unknown).
        mode: "exponential" (equal steps in log LR, the fast.ai sweep) or
            "linear" (Smith's). Defaults to "exponential".
        batch_size: batch size for array inputs; must be None with a
            dataset. Defaults to None (32 for arrays).

    Returns:
        An `LRFindResult`.

    References: Smith, Cyclical Learning Rates for Training Neural Networks,
    2017, section 3.3 ("How can one estimate reasonable minimum and maximum
    boundary values?"); Mandatelli, Improved Training Methods for Neural
    Networks, section 3.1.
    """
    _check_sweep(min_lr, max_lr, steps, mode)
    _check_model(model)
    batches = _batches(x, y, batch_size)
    if steps is None:
        steps = max(batches.per_epoch or 0, MIN_DEFAULT_STEPS)
    rates = sweep_learning_rates(float(min_lr), float(max_lr), int(steps), mode)
    beta = smoothing_for(len(rates))

    first = next(batches)
    if not model.built:
        model(first[0])
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    saved = [(v, keras.ops.convert_to_numpy(v).copy())
             for v in model.variables + optimizer.variables + model.metrics_variables]

    losses, accuracies, accuracy_key = [], [], None
    stop_reason = None
    average, best = 0.0, math.inf
    try:
        batch = first
        for i, rate in enumerate(rates):
            if i > 0:
                batch = next(batches)
            optimizer.learning_rate.assign(rate)
            logs = model.train_on_batch(*batch, return_dict=True)
            if i == 0:
                accuracy_key = _accuracy_key(logs)
            loss = float(logs["loss"])
            losses.append(loss)
            if accuracy_key is not None:
                accuracies.append(float(logs[accuracy_key]))
            average = beta * average + (1.0 - beta) * loss
            smoothed = average / (1.0 - beta ** (i + 1))
            best = min(best, smoothed)
            if exploded(loss, smoothed, best):
                stop_reason = "nonfinite" if not math.isfinite(loss) else "exploded"
                break
    finally:
        # Metric variables first created by the sweep are left at zero, as a
        # fit would start them; the saved ones get their values back below.
        model.reset_metrics()
        for variable, value in saved:
            variable.assign(value)

    run_rates = rates[: len(losses)]
    losses = np.asarray(losses, dtype=np.float64)
    smoothed_losses = smooth(losses, beta)
    accuracies = np.asarray(accuracies, dtype=np.float64) if accuracy_key else None
    smoothed_accuracies = smooth(accuracies, beta) if accuracy_key else None
    return LRFindResult(
        learning_rates=run_rates,
        losses=losses,
        accuracies=accuracies,
        smoothed_losses=smoothed_losses,
        smoothed_accuracies=smoothed_accuracies,
        suggestion=suggest_learning_rate(run_rates, smoothed_losses, float(min_lr)),
        bounds=clr_bounds(run_rates, smoothed_losses, smoothed_accuracies),
        mode=mode,
        stop_reason=stop_reason,
        accuracy_key=accuracy_key,
    )
