"""The `decay` and `clr` methods: the hooks a run calls to set its learning rate.

```
decay: callbacks -> [SequenceUpdate(sequence, strategy, r0 = the run's LR)]
       fit watches val_loss on a stratified 20% held out of the training set
clr:   learning_rate -> CyclicalLearningRate(base, max, step_size, mode)
       (base, max) = the range test's bounds on the run's own network and
       training data, unless given; step_size = default_step_size(...)
       callbacks -> [EpochMeanLR()]  (logs the epoch's mean rate as `lr`)
```
`keras_mcv.methods` registers both; `experiment.run_method` calls the hooks
with an `experiment.RunContext` before `fit`.

References: Yang & Huang, Learning Rate Investigation, 2019, section 3;
Smith, Cyclical Learning Rates for Training Neural Networks, 2017, sections
3.1 and 3.3.
"""

from __future__ import annotations

import math

import keras
import numpy as np

RANGE_TEST = {"min_lr": 1e-7, "max_lr": 10.0, "mode": "exponential"}
"""The sweep `clr` and `keras-mcv lr-find` run (`lr_find`'s defaults): 1e-7 to 10,
equal steps in log LR, one epoch of batches but at least 100 steps."""

MIN_HALF_CYCLE_EPOCHS = 2
"""Smith's lower end: a half cycle (`step_size`) of at least 2 epochs of iterations."""


def decay_check(options, settings):
    """Refuse a strategy that watches the validation loss when none is held out."""
    if options.get("strategy") != "epoch" and not settings.get("validation_split"):
        raise ValueError(
            f"--strategy {options.get('strategy')} watches the validation loss, but "
            "--validation-split 0 holds none out; use a share such as 0.2 (the default) "
            "or --strategy epoch."
        )


def decay_callbacks(options, context):
    """`[SequenceUpdate(sequence, strategy, r0)]` with r0 the run's learning rate.

    References: Yang & Huang, Learning Rate Investigation, 2019, Algorithms 1-3.
    """
    from keras_mcv.sequence_update import SequenceUpdate

    r0 = float(context.learning_rate)
    context.notes["initial_learning_rate"] = r0
    return [SequenceUpdate(options["sequence"], options["strategy"], r0)]


def clr_check(options, settings):
    """Refuse `--lr` with `clr`: the schedule, not a fixed rate, sets the LR."""
    if settings.get("learning_rate") is not None:
        raise ValueError(
            "--lr does not apply to method 'clr': the rate cycles between --base-lr and "
            "--max-lr (from the LR range test when not given). Drop --lr."
        )


def default_step_size(epochs, steps_per_epoch):
    """Smith's half cycle, fitted so the run ends at the end of a cycle.

    ```
    cycles    = max(1, floor(epochs / (2 * 2)))     # whole cycles of >= 2 + 2 epochs
    step_size = epochs * steps_per_epoch / (2 * cycles)
    ```
    A half cycle is then between 2 and 4 epochs of iterations (Smith advises
    2 to 10), and the last iteration is back at the base rate, where Smith
    stops. Runs shorter than 4 epochs get one cycle (a half cycle below 2
    epochs). Never below 1 iteration.

    Args:
        epochs: the run's epoch budget.
        steps_per_epoch: optimizer steps per epoch.

    References: Smith, Cyclical Learning Rates for Training Neural Networks,
    2017, section 3.2 ("it is often good to stop training at the end of a
    cycle"; step size 2-10 times the iterations of an epoch).
    """
    cycles = max(1, int(epochs) // (2 * MIN_HALF_CYCLE_EPOCHS))
    return max(1.0, int(epochs) * int(steps_per_epoch) / (2.0 * cycles))


def exp_range_gamma(step_size):
    """exp_range's default decay: the amplitude halves over a cycle, as triangular2's.

    ```
    gamma = 0.5 ** (1 / (2 * step_size))
    ```

    References: Smith, Cyclical Learning Rates for Training Neural Networks,
    2017, section 3.1 (exp_range; the value of gamma is left to the user).
    """
    return 0.5 ** (1.0 / (2.0 * float(step_size)))


def range_test(model, x, y, batch_size):
    """`lr_find` with the `RANGE_TEST` sweep on a compiled model (restored afterwards)."""
    from keras_mcv.range_test import lr_find

    return lr_find(model, x, y, batch_size=int(batch_size), **RANGE_TEST)


def range_test_summary(result):
    """A JSON-ready summary of an `LRFindResult`: the reading and the curve."""

    def floats(values):
        if values is None:
            return None
        return [float(v) if math.isfinite(v) else None for v in np.asarray(values)]

    return {
        "suggestion": result.suggestion,
        "bounds": None if result.bounds is None else list(result.bounds),
        "mode": result.mode,
        "steps": int(len(result.learning_rates)),
        "stop_reason": result.stop_reason,
        "learning_rates": floats(result.learning_rates),
        "losses": floats(result.losses),
        "smoothed_losses": floats(result.smoothed_losses),
        "accuracies": floats(result.accuracies),
        "smoothed_accuracies": floats(result.smoothed_accuracies),
    }


def clr_learning_rate(options, context):
    """The run's `CyclicalLearningRate`; missing bounds come from the range test.

    ```
    if base_lr or max_lr not given:
        compile the run's network at its optimizer, lr_find(...) on its training
        data and fit batch (weights and optimizer restored exactly afterwards)
        base_lr, max_lr = the missing ones from result.bounds
    step_size = given, else default_step_size(epochs, steps_per_epoch)
    gamma     = exp_range_gamma(step_size) for exp_range, else 1
    ```
    What was chosen goes into `context.notes` (the run record's
    `config["schedule"]`), with the range test's reading.

    References: Smith, Cyclical Learning Rates for Training Neural Networks,
    2017, sections 3.1-3.3.
    """
    from keras_mcv.schedules import CyclicalLearningRate

    base, top = options.get("base_lr"), options.get("max_lr")
    if base is None or top is None:
        context.compile(context.learning_rate)
        result = range_test(context.model, context.x, context.y, context.batch_size)
        summary = range_test_summary(result)
        context.notes["range_test"] = {
            k: summary[k] for k in ("suggestion", "bounds", "mode", "steps", "stop_reason")
        }
        if result.bounds is None:
            raise ValueError(
                "The LR range test found no rise of the accuracy or fall of the loss to "
                "read CLR bounds from; pass --base-lr and --max-lr."
            )
        base = result.bounds[0] if base is None else base
        top = result.bounds[1] if top is None else top
        if top <= base:
            raise ValueError(
                f"--max-lr ({top:g}) must be greater than --base-lr ({base:g}); the range "
                f"test read bounds {result.bounds[0]:.3g} to {result.bounds[1]:.3g}."
            )
    step_size = options.get("step_size")
    if step_size is None:
        step_size = default_step_size(context.epochs, context.steps_per_epoch)
    mode = options["clr_mode"]
    gamma = exp_range_gamma(step_size) if mode == "exp_range" else 1.0
    context.notes.update(base_lr=float(base), max_lr=float(top), step_size=float(step_size),
                         clr_mode=mode, gamma=gamma)
    return CyclicalLearningRate(float(base), float(top), float(step_size), mode=mode, gamma=gamma)


def clr_callbacks(options, context):
    """`[EpochMeanLR(schedule)]`: the record's per-epoch `lr` is the epoch's mean rate.

    Runs after `clr_learning_rate`, whose choices are in `context.notes`.
    """
    from keras_mcv.schedules import CyclicalLearningRate

    notes = context.notes
    return [EpochMeanLR(CyclicalLearningRate(
        notes["base_lr"], notes["max_lr"], notes["step_size"], mode=notes["clr_mode"],
        gamma=notes["gamma"],
    ))]


class EpochMeanLR(keras.callbacks.Callback):
    """Log `lr`: the mean learning rate of the epoch's steps under a schedule.

    ```
    lr = mean(schedule(it) for it in [iterations at epoch begin, at epoch end))
    ```
    List it before any callback that reads `lr` (the run recorder).

    Args:
        schedule: the optimizer's `LearningRateSchedule`.

    References: Smith, Cyclical Learning Rates for Training Neural Networks,
    2017, section 3.1 (the rate changes every iteration).
    """

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self._start = 0

    def _iterations(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._iterations()

    def on_epoch_end(self, epoch, logs=None):
        end = max(self._iterations(), self._start + 1)
        rates = keras.ops.convert_to_numpy(self.schedule(np.arange(self._start, end)))
        if logs is not None:
            logs["lr"] = float(np.mean(rates))
