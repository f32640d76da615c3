"""Pop the next term of a decay sequence when an update strategy fires.

The decision rule (`decide`, `derive_cutoff`, `resolve_monitor`) is plain
Python; `SequenceUpdate` is the Keras callback that applies it at epoch ends.

References: Yang & Huang, Learning Rate Investigation, 2019, section 3
("Updating Strategies", Algorithms 1-3).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

import keras

from keras_mcv.schedules import check_sequence_name, decay_sequence

STRATEGIES = ("epoch", "cutoff", "oscillate")
# Algorithm 2 shrinks the cutoff by this factor every time it fires.
CUTOFF_DECAY = 0.2
# The document gives no initial cutoff; with `cutoff=None` it is this fraction
# of the first nonzero epoch-to-epoch change of the monitored loss, so the
# strategy fires once the loss improves at less than half its early pace.
CUTOFF_FRACTION = 0.5
FALLBACK_MONITOR = "mcv_val_loss"


class Decision(NamedTuple):
    """What the strategy decided at one epoch end."""

    fire: bool  # pop the next learning rate
    cutoff: float | None  # the cutoff for the next epoch end


def _as_loss(value):
    # A non-finite loss counts as +inf, as everywhere in this package.
    value = float(value)
    return value if math.isfinite(value) else math.inf


def derive_cutoff(previous_loss, loss, fraction=CUTOFF_FRACTION):
    """The initial cutoff from the first epoch-to-epoch change of the loss.

    ```
    cutoff = fraction * |loss_t - loss_{t-1}|   if that change is finite and > 0
             None (derive again next epoch)     otherwise
    ```

    Args:
        previous_loss: the monitored loss at the previous epoch end.
        loss: the monitored loss at this epoch end.
        fraction: the share of the change. Defaults to `CUTOFF_FRACTION` (0.5).

    References: Yang & Huang, Learning Rate Investigation, 2019, Algorithm 2
    (which leaves the initial cutoff open).
    """
    change = abs(_as_loss(loss) - _as_loss(previous_loss))
    if not math.isfinite(change) or change == 0.0:
        return None
    return fraction * change


def decide(strategy, losses, cutoff=None, fraction=CUTOFF_FRACTION):
    """Whether to pop the next learning rate at this epoch end, and the next cutoff.

    ```
    losses = [L_1, ..., L_t]  (monitored loss at each epoch end so far)
    epoch:     fire always
    cutoff:    fire if t >= 2 and |L_t - L_{t-1}| < cutoff; then cutoff *= 0.2
               (cutoff None: no fire; cutoff = derive_cutoff(L_{t-1}, L_t))
    oscillate: fire if t >= 2 and L_t - L_{t-1} > 0
    ```
    Non-finite losses count as +inf: a loss that becomes non-finite is a rise
    (oscillate fires) and a change of inf (cutoff does not fire).

    Args:
        strategy: one of `STRATEGIES` ("epoch", "cutoff", "oscillate").
        losses: the monitored loss at every epoch end so far, oldest first.
        cutoff: the current cutoff of "cutoff" (None: not derived yet).
            Defaults to None.
        fraction: the share of the first change that becomes the cutoff when
            `cutoff` is None. Defaults to `CUTOFF_FRACTION` (0.5).

    Returns:
        A `Decision(fire, cutoff)`.

    References: Yang & Huang, Learning Rate Investigation, 2019, Algorithms
    1 (by epoch), 2 (by cutoff) and 3 (by oscillate).
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy {strategy!r}. Valid strategies: "
            + ", ".join(repr(s) for s in STRATEGIES) + "."
        )
    if strategy == "epoch":
        return Decision(True, cutoff)
    if len(losses) < 2:
        return Decision(False, cutoff)
    previous, current = _as_loss(losses[-2]), _as_loss(losses[-1])
    if strategy == "oscillate":
        return Decision(current - previous > 0, cutoff)
    if cutoff is None:
        return Decision(False, derive_cutoff(previous, current, fraction))
    if abs(current - previous) < cutoff:
        return Decision(True, cutoff * CUTOFF_DECAY)
    return Decision(False, cutoff)


def resolve_monitor(logs, monitor, fallback=FALLBACK_MONITOR):
    """The log key to watch: `monitor`, else `fallback` when there is no validation.

    ```
    monitor in logs                                   -> monitor
    no "val_*" key in logs and fallback in logs       -> fallback
    otherwise                                         -> ValueError
    ```
    A "val_*" key means validation data was given, so a missing `monitor`
    is a wrong name rather than a run without validation.

    Args:
        logs: the epoch-end logs.
        monitor: the requested key.
        fallback: the loss on the validation half logged by MCV models.
            Defaults to "mcv_val_loss".

    References: Yang & Huang, Learning Rate Investigation, 2019, Algorithms
    2-3 (they watch the validation loss).
    """
    logs = logs or {}
    if monitor in logs:
        return monitor
    has_validation = any(key.startswith("val_") for key in logs)
    if not has_validation and fallback in logs:
        return fallback
    available = ", ".join(sorted(logs)) or "none"
    raise ValueError(
        f"SequenceUpdate watches {monitor!r}, which is not in the epoch logs "
        f"(available: {available}). Pass validation data to fit (validation_data= "
        f"or validation_split=), set monitor= to one of the available keys, or train "
        f"an MCV model, whose {fallback!r} is used when there is no validation data."
    )


def _current_lr(optimizer):
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class SequenceUpdate(keras.callbacks.Callback):
    """Set the learning rate from a decay sequence, popping a term when a strategy fires.

    ```
    train begin: lr = r0                                 (Algorithm 1, line 1)
    epoch end t: L_t = logs[monitor]
                 fire, cutoff = decide(strategy, [L_1..L_t], cutoff)
                 if fire: n += 1; lr = decay_sequence(sequence, n, r0)
    ```
    Reading of the document: training starts at `r0` (Algorithm 1 sets
    `lr = r0` and runs the model before the sequence `r_1, r_2, ...` is
    popped), so the first firing sets `r_1`. For seq1, seq2 and seq4
    `r_1 = r0`, so their first firing leaves the rate unchanged; for seq3
    `r_1 = 0.9 r0`. Algorithms 2-3 share Algorithm 1's start.

    The callback owns the learning rate: it overwrites the optimizer's at
    train begin and writes `lr` (the rate the epoch trained with) into the
    epoch logs. `self.history` keeps one dict per epoch (epoch, loss, fired,
    lr, next_lr, n, cutoff). State is reset at every train begin.

    Monitor: `monitor` (validation loss by default). When it is absent from
    the logs and there is no validation data (no "val_*" key), the loss on the
    validation half logged by MCV models, "mcv_val_loss", is watched instead.
    The key is chosen at the first epoch end; if neither is present there a
    ValueError says how to fix it ("epoch" needs no loss and never raises).

    Cutoff: with `cutoff=None` the cutoff is derived from the run: at the
    first epoch end where the monitored loss changed by a finite, nonzero
    amount, `cutoff = 0.5 * |L_t - L_{t-1}|` (`CUTOFF_FRACTION`); that epoch
    end does not fire. After every firing, `cutoff *= 0.2`.

    Args:
        sequence: one of "seq1", "seq2", "seq3", "seq4".
        strategy: "epoch" (pop after every epoch), "cutoff" (pop when the
            monitored loss changed by less than the cutoff) or "oscillate"
            (pop when it rose).
        initial_learning_rate: `r0`, a number > 0 (the document uses 0.01
            with SGD).
        cutoff: the initial cutoff of "cutoff", a number > 0, or None to
            derive it. Defaults to None.
        monitor: the epoch log to watch. Defaults to "val_loss".

    References: Yang & Huang, Learning Rate Investigation, 2019, section 3
    (decaying sequences, Algorithms 1-3).
    """

    def __init__(
        self, sequence, strategy, initial_learning_rate, cutoff=None, monitor="val_loss"
    ):
        super().__init__()
        check_sequence_name(sequence)
        if strategy not in STRATEGIES:
            raise ValueError(
                f"Unknown strategy {strategy!r}. Valid strategies: "
                + ", ".join(repr(s) for s in STRATEGIES) + "."
            )
        # Validates r0 with the sequence's own message.
        decay_sequence(sequence, 1, initial_learning_rate)
        if cutoff is not None:
            if strategy != "cutoff":
                raise ValueError(
                    f"cutoff only applies to strategy='cutoff' (strategy is "
                    f"{strategy!r}). Drop cutoff or set strategy='cutoff'."
                )
            if (
                isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real)
                or not math.isfinite(cutoff) or cutoff <= 0
            ):
                raise ValueError(
                    f"cutoff must be a finite number > 0, got {cutoff!r}; pass None "
                    "to derive it from the first change of the monitored loss."
                )
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be a log name such as 'val_loss', got {monitor!r}.")
        self.sequence = sequence
        self.strategy = strategy
        self.initial_learning_rate = float(initial_learning_rate)
        self.cutoff = cutoff
        self.monitor = monitor
        self._reset()

    def _reset(self):
        self.n = 0  # terms popped so far
        self.current_cutoff = None if self.cutoff is None else float(self.cutoff)
        self.losses = []
        self.history = []
        self.monitor_used = None

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("SequenceUpdate needs a compiled model (call model.compile first).")
        # A numeric learning rate is a variable; a schedule or callable is
        # evaluated into a tensor by the `learning_rate` property.
        if not isinstance(optimizer.learning_rate, keras.Variable):
            raise ValueError(
                "SequenceUpdate sets the learning rate itself, so the optimizer's "
                "learning_rate must be a plain number, not a LearningRateSchedule. "
                "Compile with e.g. keras.optimizers.SGD(learning_rate=0.01)."
            )
        self._reset()
        optimizer.learning_rate.assign(self.initial_learning_rate)

    def _loss(self, logs):
        if self.monitor_used is None:
            try:
                self.monitor_used = resolve_monitor(logs, self.monitor)
            except ValueError:
                if self.strategy == "epoch":
                    return None
                raise
            if self.monitor_used != self.monitor:
                warnings.warn(
                    f"SequenceUpdate: {self.monitor!r} is not logged and there is no "
                    f"validation data; watching {self.monitor_used!r} instead.",
                    stacklevel=2,
                )
        value = (logs or {}).get(self.monitor_used)
        return None if value is None else float(value)

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        trained_lr = _current_lr(optimizer)
        loss = self._loss(logs)
        if loss is None and self.strategy != "epoch":
            # The monitor is missing this epoch (e.g. validation_freq > 1):
            # no loss to compare, no decision.
            decision = Decision(False, self.current_cutoff)
        else:
            if loss is not None:
                self.losses.append(loss)
            decision = decide(self.strategy, self.losses, self.current_cutoff)
        self.current_cutoff = decision.cutoff
        next_lr = trained_lr
        if decision.fire:
            self.n += 1
            next_lr = decay_sequence(self.sequence, self.n, self.initial_learning_rate)
            optimizer.learning_rate.assign(next_lr)
        self.history.append({
            "epoch": epoch,
            "loss": loss,
            "fired": decision.fire,
            "lr": trained_lr,
            "next_lr": next_lr,
            "n": self.n,
            "cutoff": self.current_cutoff,
        })
        if logs is not None:
            logs["lr"] = trained_lr
