"""Macro cross-validation baseline (thesis 4.5): a grid search on Keras Tuner.

The baseline the MCV methods are compared against. Every configuration of a
two-stage grid is scored by early stopping on repeated stratified 80/20 splits
of the training set, retrained on all of it, and tested:

```
stage 1: for optimizer in optimizers          # SGD momentum 0.9, Adam
             for lr in learning_rates          # 1e-1 1e-2 1e-3 1e-4
                 evaluate(optimizer, lr, decay=None)
stage 2: lr* = SGD lr of stage 1 with the lowest mean validation loss
         for decay in decays                   # 1e-3 5e-4 1e-4
             evaluate("sgd", InverseTimeDecay(lr*, 1, decay))  # lr / (1 + decay*step)

evaluate(config):
    for r in 1..repeats:                        # stratified 80/20, seed + r
        fit on 80% with EarlyStopping(val_loss, patience), up to max_epochs
        best_epoch[r] = 1-based epoch of min val_loss; val[r] = that min
    fit a fresh model on 100% for round_half_up(mean(best_epoch)) epochs
    test_loss, test_acc = evaluate on the test set
    objective = mean(val)                       # lower is better
winner = the configuration with the lowest objective
```

The winner is chosen on the validation loss only; the test numbers are reported
(as in Tables 4.2-4.4), never used for selection. A configuration whose loss
becomes NaN or infinite in any of its runs (`TerminateOnNaN` stops it) is
recorded as *diverged*: objective +inf, its unknown numbers shown as "None" like
the VGG-11 row of Table 4.4, and it can neither win nor seed stage 2.

**On Keras Tuner.** One `keras_tuner.Tuner` subclass (`MacroCVTuner`) whose
`run_trial` evaluates one configuration, and one `keras_tuner.Oracle` subclass
(`MacroCVOracle`) that hands out the grid, so Keras Tuner's own search loop,
project directory, trial records and gRPC distribution do the rest. The oracle
is not `keras_tuner.oracles.GridSearchOracle` because that oracle cannot resume
(keras-tuner 1.4.8): it keeps its grid position in `_ordered_ids` and
`_populate_next`, which it does not save, so a reloaded search stops early or,
after re-running the interrupted trial, fails with `KeyError` in
`LinkedList.next`. `MacroCVOracle` decides the next configuration from the
saved state only (the values already tried, `Oracle._tried_so_far`, and the
ended trials), so resuming works, and it can express stage 2's dependence on
stage 1: workers asking for stage-2 work while stage-1 trials still run get
`IDLE` until stage 1 has ended (they poll every 0.5 s, not in a busy loop).

**Resume.** The search lives in `project_dir` (`<project_dir>/search/`). Run the
same call again with `overwrite=False` (the default) and completed trials are
reloaded, not re-run; a trial that was running when the process died runs
again; a finished search just returns its table again. Two more Keras Tuner
gaps are closed here: the tuner file is written before the first trial (Keras
Tuner reloads a project only if that file exists, and first writes it after a
trial), and `MacroCVOracle.reload` reconciles `trial.json` with `oracle.json`
when a kill fell between their writes. A project made with different settings
(grid, repeats, patience, data, seed...) is refused with an error instead of
being mixed into the new table.

**Distributed.** Set the Keras Tuner variables and start the same program
(e.g. `keras-mcv tune RECIPE ...` with identical arguments) once as the chief
and once per worker:

```
# machine A (chief: serves the oracle, trains nothing, writes the table)
KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=$CHIEF_IP \
KERASTUNER_ORACLE_PORT=8000 keras-mcv tune digits_small_cnn
# machines B, C, ... (workers; any number, each with its own id)
KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=$CHIEF_IP \
KERASTUNER_ORACLE_PORT=8000 keras-mcv tune digits_small_cnn
```

`KERASTUNER_ORACLE_IP` is the address the chief listens on (it may use
`0.0.0.0`) and the workers connect to (the chief's reachable address). The
chief returns the `MacroResult` (and the CLI writes it) once every trial has
ended and every worker has been told to stop; workers return `None` and exit
with status 0. Workers wait for the chief for up to an hour, so the start order
does not matter, but a worker started after the search has finished waits for
a chief that is gone (a chief restarted on a finished project returns the table
at once, without serving). A worker that dies mid-trial leaves that trial
running on the chief, which then waits for ever: restart the worker with the
same `KERASTUNER_TUNER_ID` and it is handed the same trial again. Every
process must get the same arguments and data: a worker whose settings
fingerprint differs from the chief's stops with an error before it takes a
trial. `overwrite=True` only wipes the chief's project (workers never
delete, so a shared directory is safe). Each process appends a
line per trial start and end to `<project_dir>/search/executions.jsonl`.
Keras Tuner's chief checks for stragglers every 20 s, so it may finish up to
20 s after the last trial.

References: thesis section 4.5 (CIFAR-10 experiments, Tables 4.2-4.4).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import time
from typing import Callable, Optional, Sequence

import keras
import keras_tuner
import numpy as np

from keras_mcv import runs
from keras_mcv.data import ArrayData

OPTIMIZERS = ("sgd", "adam")
OPTIMIZER_LABELS = {"sgd": "Momentum SGD", "adam": "Adam"}
OBJECTIVE = "mean_val_loss"
PROJECT_NAME = "search"
EXECUTIONS_LOG = "executions.jsonl"
RECORD_NAME = "macro_cv.json"
TABLE_NAME = "macro_cv.md"

_HP_OPTIMIZER = "optimizer"
_HP_LR = "learning_rate"
_HP_DECAY = "decay"
_HP_SETTINGS = "settings"
_IDLE_POLL_S = 0.5


# ----------------------------------------------------------------------------
# Validation and small helpers
# ----------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _as_float_tuple(values, name: str, fix: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(
            f"`{name}` must be a sequence of numbers, got {values!r}. {fix}"
        )
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"`{name}` holds {v!r}, which is not a number. {fix}"
            ) from None
        if not math.isfinite(f) or f <= 0:
            raise ValueError(
                f"`{name}` holds {v!r}; every value must be a finite number "
                f"> 0. {fix}"
            )
        out.append(f)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}` holds duplicates: {list(values)!r}. {fix}")
    return tuple(out)


def validate_settings(
    data: ArrayData,
    *,
    batch_size,
    optimizers,
    learning_rates,
    decays,
    repeats,
    patience,
    max_epochs,
    val_fraction,
) -> tuple[tuple, tuple, tuple]:
    """Check every argument of `run_macro_cv` before anything is trained.

    Returns the normalised `(optimizers, learning_rates, decays)`; raises
    `ValueError` naming the offending value and how to fix it.
    """
    if isinstance(optimizers, str):
        optimizers = tuple(o for o in optimizers.split(",") if o.strip())
    optimizers = tuple(str(o).strip().lower() for o in optimizers)
    if not optimizers:
        raise ValueError(
            "`optimizers` is empty; pass at least one of "
            f"{', '.join(OPTIMIZERS)} (e.g. optimizers=('sgd', 'adam'))."
        )
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise ValueError(
            f"Unknown optimizer(s) {unknown!r} in `optimizers`; use "
            f"{' or '.join(OPTIMIZERS)}."
        )
    if len(set(optimizers)) != len(optimizers):
        raise ValueError(
            f"`optimizers` holds duplicates: {optimizers!r}; list each once."
        )
    learning_rates = _as_float_tuple(
        learning_rates,
        "learning_rates",
        "Pass positive learning rates, e.g. (0.1, 0.01, 0.001, 0.0001).",
    )
    if not learning_rates:
        raise ValueError(
            "`learning_rates` is empty; pass at least one learning rate, "
            "e.g. (0.1, 0.01, 0.001, 0.0001)."
        )
    decays = _as_float_tuple(
        decays,
        "decays",
        "Pass positive decay rates such as (1e-3, 5e-4, 1e-4), or () to skip "
        "stage 2 (stage 1 already covers 'no decay').",
    )
    for name, value, low, fix in (
        ("repeats", repeats, 1, "repeats=5 (the thesis)"),
        ("patience", patience, 0, "patience=20 (the thesis)"),
        ("max_epochs", max_epochs, 1, "max_epochs=100 (the thesis)"),
        ("batch_size", batch_size, 1, "batch_size=128"),
    ):
        if not _is_int(value) or value < low:
            raise ValueError(
                f"`{name}` must be an integer >= {low}, got {value!r}; "
                f"e.g. {fix}."
            )
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(
            f"`val_fraction` must be in (0, 1), got {val_fraction!r}; "
            "e.g. 0.2 for the thesis's 80/20 splits."
        )
    if not isinstance(data, ArrayData):
        raise ValueError(
            f"`data` must be a keras_mcv.data.ArrayData, got {type(data)!r}; "
            "load it with a keras_mcv.data loader or a recipe's load_data."
        )
    n, n_test = len(data.y_train), len(data.y_test)
    if len(data.x_train) != n or len(data.x_test) != n_test:
        raise ValueError(
            f"`data` has {len(data.x_train)} training inputs but {n} labels "
            f"and {len(data.x_test)} test inputs but {n_test} labels; "
            "inputs and labels must have the same length."
        )
    if n_test == 0:
        raise ValueError(
            "`data` has an empty test set; the baseline reports test loss "
            "and accuracy, so pass data with test examples."
        )
    classes, counts = np.unique(data.y_train, return_counts=True)
    n_val = math.ceil(val_fraction * n)
    smallest = int(counts.min()) if counts.size else 0
    if smallest < 2 or n_val < len(classes) or n - n_val < len(
        classes
    ):
        raise ValueError(
            f"Cannot make stratified {1 - val_fraction:.0%}/{val_fraction:.0%} "
            f"splits of {n} training examples in {len(classes)} classes "
            f"(smallest class: {smallest} examples). Use more "
            "training data (e.g. a larger --subset) or another val_fraction."
        )
    return optimizers, learning_rates, decays


def retrain_epochs(best_epochs: Sequence[int]) -> int:
    """Epochs of the final retrain: the mean best epoch, rounded half up.

    ```
    retrain_epochs([3, 4]) == 4      # 3.5 -> 4 (Python's round would give 4)
    retrain_epochs([2, 3]) == 3      # 2.5 -> 3 (Python's round would give 2)
    ```

    Args:
        best_epochs: the 1-based best epoch of each split.

    References: thesis section 4.5.
    """
    return max(1, int(math.floor(float(np.mean(best_epochs)) + 0.5)))


def stratified_splits(
    y: np.ndarray, repeats: int, val_fraction: float = 0.2, seed: int = 0
) -> list:
    """Index pairs `(train_idx, val_idx)` of `repeats` stratified random splits.

    ```
    split r = sklearn train_test_split(arange(n), test_size=val_fraction,
                                       stratify=y, random_state=seed + r)
    ```
    Each split keeps the class proportions of `y` (within one example per
    class) and uses its own seed, so the splits differ between repeats and are
    the same for every configuration and every process.

    Args:
        y: integer labels of the training set.
        repeats: number of splits.
        val_fraction: share held out for validation. Defaults to 0.2.
        seed: seed of the first split. Defaults to 0.

    References: thesis section 4.5.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    idx = np.arange(len(y))
    splits = []
    for r in range(repeats):
        tr, va = train_test_split(
            idx, test_size=val_fraction, stratify=y, random_state=seed + r
        )
        splits.append((np.sort(tr), np.sort(va)))
    return splits


def make_optimizer(
    optimizer: str, learning_rate: float, decay: Optional[float] = None,
    momentum: float = 0.9,
):
    """The optimizer of one configuration.

    ```
    lr_t = learning_rate / (1 + decay * t)   # t = optimizer step; decay None: constant
    "sgd"  -> keras.optimizers.SGD(lr_t, momentum=momentum)
    "adam" -> keras.optimizers.Adam(lr_t)
    ```

    Args:
        optimizer: `"sgd"` or `"adam"`.
        learning_rate: initial learning rate.
        decay: `InverseTimeDecay` rate, or None for a constant rate.
            Defaults to None.
        momentum: SGD momentum. Defaults to 0.9.

    References: thesis section 4.5.
    """
    lr = float(learning_rate)
    if decay:
        lr = keras.optimizers.schedules.InverseTimeDecay(
            lr, decay_steps=1, decay_rate=float(decay)
        )
    if optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    if optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    raise ValueError(f"Unknown optimizer {optimizer!r}; use 'sgd' or 'adam'.")


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(float(v)) for v in values)


def _history_finite(history) -> bool:
    for values in history.history.values():
        if not _finite(*values):
            return False
    return True


def _fresh_model(build_model, data, optimizer, loss, seed):
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_model(data.input_shape, data.num_classes)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model


def evaluate_configuration(
    build_model: Callable,
    data: ArrayData,
    optimizer: str,
    learning_rate: float,
    decay: Optional[float] = None,
    *,
    batch_size: int = 128,
    repeats: int = 5,
    patience: int = 20,
    max_epochs: int = 100,
    val_fraction: float = 0.2,
    momentum: float = 0.9,
    loss="sparse_categorical_crossentropy",
    seed: int = 0,
    callbacks: Optional[list] = None,
    verbose: int = 0,
) -> dict:
    """Score one configuration: early stopping on splits, retrain, test.

    ```
    for r, (tr, va) in enumerate(stratified_splits(y, repeats, val_fraction, seed)):
        model_r = build_model(); seed seed + r
        fit(tr, validation va, EarlyStopping(val_loss, patience), TerminateOnNaN)
        best_epoch[r] = argmin(val_loss) + 1; val[r] = min(val_loss)
    e = retrain_epochs(best_epoch)
    model = build_model(); seed seed + repeats; fit(all training data, e epochs)
    test_loss, test_accuracy = model.evaluate(test set)
    any non-finite loss -> diverged: objective +inf, stop early
    ```

    Args:
        build_model: `build_model(input_shape, num_classes)` -> a fresh,
            uncompiled `keras.Model` with softmax outputs.
        data: the dataset; `x_train` must already be normalised.
        optimizer: `"sgd"` (with `momentum`) or `"adam"`.
        learning_rate: initial learning rate.
        decay: `InverseTimeDecay` rate, or None. Defaults to None.
        batch_size: batch size. Defaults to 128.
        repeats: number of stratified splits. Defaults to 5.
        patience: early-stopping patience in epochs. Defaults to 20.
        max_epochs: epoch cap of the split runs. Defaults to 100.
        val_fraction: validation share of each split. Defaults to 0.2.
        momentum: SGD momentum. Defaults to 0.9.
        loss: Keras loss of `compile`. Defaults to
            `"sparse_categorical_crossentropy"`.
        seed: base seed of splits and initialisations. Defaults to 0.
        callbacks: extra callbacks added to every `fit` (split runs and the
            retrain), e.g. to log. Defaults to None.
        verbose: `fit` verbosity. Defaults to 0.

    Returns:
        A dict of floats (the Keras Tuner metrics of the trial): `mean_val_loss`
        (+inf if diverged), `diverged` (0/1), `mean_epochs`, `retrain_epochs`,
        `test_loss`, `test_accuracy`, `wall_time_s`, per split `best_epoch_<r>`
        and `val_loss_<r>`, and batch counts `ops_forward`, `ops_backward`,
        `ops_step` (training steps; forward also counts validation and test
        batches; a run stopped by `TerminateOnNaN` counts its last epoch
        whole). Numbers that a divergence left unknown are absent.

    Like Keras Tuner, calls `keras.backend.clear_session()` and then
    `keras.utils.set_random_seed(...)` before building each model.

    References: thesis section 4.5.
    """
    start = time.perf_counter()
    extra = list(callbacks or [])
    n = len(data.y_train)
    metrics = {}
    ops = {"forward": 0, "backward": 0, "step": 0}

    def diverged_result():
        metrics.update(
            {OBJECTIVE: math.inf, "diverged": 1.0,
             "wall_time_s": time.perf_counter() - start}
        )
        metrics.update({f"ops_{k}": float(v) for k, v in ops.items()})
        return metrics

    best_epochs, best_vals = [], []
    for r, (tr, va) in enumerate(
        stratified_splits(data.y_train, repeats, val_fraction, seed)
    ):
        model = _fresh_model(
            build_model, data,
            make_optimizer(optimizer, learning_rate, decay, momentum),
            loss, seed + r,
        )
        history = model.fit(
            data.x_train[tr], data.y_train[tr],
            batch_size=batch_size, epochs=max_epochs,
            validation_data=(data.x_train[va], data.y_train[va]),
            callbacks=[
                keras.callbacks.TerminateOnNaN(),
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=patience,
                    restore_best_weights=False,
                ),
                *extra,
            ],
            verbose=verbose,
        )
        ran = len(history.history.get("loss", []))
        steps = ran * math.ceil(len(tr) / batch_size)
        ops["step"] += steps
        ops["backward"] += steps
        ops["forward"] += steps + ran * math.ceil(len(va) / batch_size)
        val = history.history.get("val_loss", [])
        if not val or not _history_finite(history) or ran != len(val):
            return diverged_result()
        best = int(np.argmin(val))
        best_epochs.append(best + 1)
        best_vals.append(float(val[best]))
        metrics[f"best_epoch_{r}"] = float(best + 1)
        metrics[f"val_loss_{r}"] = float(val[best])

    metrics[OBJECTIVE] = float(np.mean(best_vals))
    metrics["mean_epochs"] = float(np.mean(best_epochs))
    epochs = retrain_epochs(best_epochs)
    metrics["retrain_epochs"] = float(epochs)

    model = _fresh_model(
        build_model, data,
        make_optimizer(optimizer, learning_rate, decay, momentum),
        loss, seed + repeats,
    )
    history = model.fit(
        data.x_train, data.y_train, batch_size=batch_size, epochs=epochs,
        callbacks=[keras.callbacks.TerminateOnNaN(), *extra], verbose=verbose,
    )
    ran = len(history.history.get("loss", []))
    ops["step"] += ran * math.ceil(n / batch_size)
    ops["backward"] += ran * math.ceil(n / batch_size)
    ops["forward"] += ran * math.ceil(n / batch_size)
    if not _history_finite(history) or ran != epochs:
        return diverged_result()
    test_loss, test_acc = model.evaluate(
        data.x_test, data.y_test, batch_size=batch_size, verbose=0
    )[:2]
    ops["forward"] += math.ceil(len(data.y_test) / batch_size)
    if not _finite(test_loss):
        return diverged_result()
    metrics.update(
        {"test_loss": float(test_loss), "test_accuracy": float(test_acc),
         "diverged": 0.0, "wall_time_s": time.perf_counter() - start}
    )
    metrics.update({f"ops_{k}": float(v) for k, v in ops.items()})
    return metrics


# ----------------------------------------------------------------------------
# Keras Tuner: oracle and tuner
# ----------------------------------------------------------------------------


def _config_values(optimizer, lr, decay, settings) -> dict:
    return {
        _HP_OPTIMIZER: optimizer,
        _HP_LR: float(lr),
        _HP_DECAY: float(decay or 0.0),
        _HP_SETTINGS: settings,
    }


class MacroCVOracle(keras_tuner.Oracle):
    """Keras Tuner oracle of the two-stage macro-CV grid, resumable and distributable.

    ```
    stage 1 = [(o, lr, 0) for o in optimizers for lr in learning_rates]
    stage 2 = [("sgd", lr*, d) for d in decays]   # lr* = best ended SGD stage-1 trial
    next trial = first untried stage-1 config; else IDLE while stage 1 runs;
                 else first untried stage-2 config; else IDLE while trials run;
                 else STOPPED
    ```
    "Tried" is `Oracle._tried_so_far` and "ended" is `Oracle.end_order`, both
    saved in `oracle.json`, so a reloaded oracle continues where it stopped.

    Args:
        optimizers: optimizer names. Defaults to `("sgd", "adam")`.
        learning_rates: stage-1 learning rates. Defaults to
            `(1e-1, 1e-2, 1e-3, 1e-4)`.
        decays: stage-2 decay rates, `()` for no stage 2. Defaults to
            `(1e-3, 5e-4, 1e-4)`.
        settings: fingerprint of everything else that defines a trial (see
            `run_macro_cv`), stored as a fixed hyperparameter. Defaults to "".
        seed: Keras Tuner oracle seed (unused by the grid). Defaults to 1.

    References: thesis section 4.5.
    """

    def __init__(
        self,
        optimizers=OPTIMIZERS,
        learning_rates=(1e-1, 1e-2, 1e-3, 1e-4),
        decays=(1e-3, 5e-4, 1e-4),
        settings: str = "",
        seed: int = 1,
    ):
        self.optimizers = tuple(optimizers)
        self.learning_rates = tuple(float(v) for v in learning_rates)
        self.decays = tuple(float(v) for v in decays)
        self.settings = settings
        hp = keras_tuner.HyperParameters()
        hp.Choice(_HP_OPTIMIZER, list(self.optimizers))
        hp.Choice(_HP_LR, list(self.learning_rates))
        hp.Choice(_HP_DECAY, [0.0, *self.decays])
        hp.Fixed(_HP_SETTINGS, settings)
        super().__init__(
            objective=keras_tuner.Objective(OBJECTIVE, direction="min"),
            hyperparameters=hp,
            allow_new_entries=False,
            tune_new_entries=False,
            seed=seed,
            max_retries_per_trial=0,
            max_consecutive_failed_trials=3,
        )

    def stage1(self) -> list:
        """Values of the stage-1 configurations, in grid order."""
        return [
            _config_values(o, lr, 0.0, self.settings)
            for o in self.optimizers
            for lr in self.learning_rates
        ]

    def _ended_hashes(self) -> set:
        return {self._id_to_hash[t] for t in self.end_order}

    def best_sgd_lr(self) -> Optional[float]:
        """Stage-1 SGD learning rate of lowest finite objective, or None."""
        best = None
        order = {lr: i for i, lr in enumerate(self.learning_rates)}
        for trial in self.trials.values():
            v = trial.hyperparameters.values
            if (
                v.get(_HP_OPTIMIZER) != "sgd"
                or v.get(_HP_DECAY)
                or trial.status != "COMPLETED"
                or trial.score is None
                or not math.isfinite(trial.score)
            ):
                continue
            key = (trial.score, order.get(v[_HP_LR], len(order)))
            if best is None or key < best[0]:
                best = (key, float(v[_HP_LR]))
        return None if best is None else best[1]

    def stage2(self) -> list:
        """Values of the stage-2 configurations (needs stage 1 ended)."""
        if "sgd" not in self.optimizers or not self.decays:
            return []
        lr = self.best_sgd_lr()
        if lr is None:
            return []
        return [_config_values("sgd", lr, d, self.settings) for d in self.decays]

    def reload(self):
        # Keras Tuner writes trial.json before oracle.json, and on reload
        # retries the trials that oracle.json lists as ongoing. Reconcile the
        # two after a kill between the writes: a trial that finished counts
        # as ended (not re-run), and a trial started but unknown to
        # oracle.json is retried (not left running forever).
        super().reload()
        for trial_id in list(self._retry_queue):
            if self.trials[trial_id].status in ("COMPLETED", "FAILED"):
                self._retry_queue.remove(trial_id)
                if trial_id not in self.end_order:
                    self.end_order.append(trial_id)
        for trial_id, trial in self.trials.items():
            if (
                trial.status in ("RUNNING", "IDLE")
                and trial_id not in self._retry_queue
                and trial_id not in self.end_order
            ):
                self._record_values(trial)
                self._retry_queue.append(trial_id)

    def populate_space(self, trial_id):
        for values in self.stage1():
            if not self._duplicate(values):
                return {"status": "RUNNING", "values": values}
        ended = self._ended_hashes()
        stage1_pending = any(
            self._compute_values_hash(v) not in ended for v in self.stage1()
        )
        if not stage1_pending:
            for values in self.stage2():
                if not self._duplicate(values):
                    return {"status": "RUNNING", "values": values}
        if self.ongoing_trials or self._retry_queue or stage1_pending:
            return {"status": "IDLE", "values": None}
        return {"status": "STOPPED", "values": None}

    def finished(self) -> bool:
        """True when every configuration has ended (a complete, reloaded search)."""
        return self.populate_space(None)["status"] == "STOPPED"


class MacroCVTuner(keras_tuner.Tuner):
    """Keras Tuner tuner whose `run_trial` evaluates one macro-CV configuration.

    ```
    run_trial(trial) = evaluate_configuration(build_model, data,
                           trial.hp["optimizer"], trial.hp["learning_rate"],
                           trial.hp["decay"] or None, **settings)
    ```
    Also appends a start and an end line per trial to `executions.jsonl` in the
    project directory, and polls an oracle that answered IDLE every 0.5 s.

    Args:
        oracle: a `MacroCVOracle`.
        build_model: `build_model(input_shape, num_classes)` -> uncompiled model.
        data: the `ArrayData`.
        settings: keyword arguments of `evaluate_configuration`. Defaults to {}.
        **kwargs: `keras_tuner.Tuner` arguments (`directory`, `project_name`,
            `overwrite`).

    References: thesis section 4.5.
    """

    def __init__(self, oracle, build_model, data, settings=None, **kwargs):
        self._build_model_fn = build_model
        self._data = data
        self._settings = dict(settings or {})
        self._waiting = False
        super().__init__(oracle=oracle, hypermodel=None, **kwargs)

    def _log(self, event: str, trial, **extra):
        v = trial.hyperparameters.values
        line = {
            "event": event, "tuner_id": self.tuner_id, "pid": os.getpid(),
            "trial_id": trial.trial_id, "optimizer": v.get(_HP_OPTIMIZER),
            "learning_rate": v.get(_HP_LR), "decay": v.get(_HP_DECAY) or None,
            "time": time.time(), **extra,
        }
        with open(os.path.join(self.project_dir, EXECUTIONS_LOG), "a") as f:
            f.write(json.dumps(line) + "\n")

    def pre_create_trial(self):
        # Called again without a trial in between only after an IDLE answer.
        if self._waiting:
            time.sleep(_IDLE_POLL_S)
        self._waiting = True

    def on_trial_begin(self, trial):
        self._waiting = False
        super().on_trial_begin(trial)

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        self._log("start", trial)
        metrics = evaluate_configuration(
            self._build_model_fn, self._data, hp.get(_HP_OPTIMIZER),
            hp.get(_HP_LR), hp.get(_HP_DECAY) or None, **self._settings,
        )
        self._log("end", trial, diverged=bool(metrics["diverged"]))
        return metrics


# ----------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class MacroRow:
    """One configuration of the grid (one row of Tables 4.2-4.4).

    Attributes:
        optimizer: `"sgd"` or `"adam"`.
        lr: initial learning rate.
        decay: `InverseTimeDecay` rate, or None (stage 1).
        mean_epochs: mean best epoch over the splits (the table's "Epochs").
        retrain_epochs: epochs of the retrain on all training data.
        best_val_loss: mean over the splits of the minimum validation loss;
            the selection criterion.
        test_loss: test loss of the retrained model.
        test_accuracy: test accuracy of the retrained model, in [0, 1].
        diverged: True if a loss became NaN or infinite.
        wall_time_s: time of the trial (splits and retrain).
        status: `"ok"`, `"diverged"`, `"failed"` (an exception; see
            `message`) or `"missing"` (never ran).
        stage: 1 or 2.
        best_epochs: best epoch of each split.
        val_losses: minimum validation loss of each split.
        ops: batch counts `{"forward", "backward", "step"}`.
        trial_id: Keras Tuner trial id.
        message: error message of a failed trial.
    """

    optimizer: str
    lr: float
    decay: Optional[float]
    mean_epochs: Optional[float] = None
    retrain_epochs: Optional[int] = None
    best_val_loss: Optional[float] = None
    test_loss: Optional[float] = None
    test_accuracy: Optional[float] = None
    diverged: bool = False
    wall_time_s: Optional[float] = None
    status: str = "ok"
    stage: int = 1
    best_epochs: list = dataclasses.field(default_factory=list)
    val_losses: list = dataclasses.field(default_factory=list)
    ops: dict = dataclasses.field(default_factory=dict)
    trial_id: Optional[str] = None
    message: Optional[str] = None

    @property
    def config(self) -> tuple:
        """`(optimizer, lr, decay)`."""
        return (self.optimizer, self.lr, self.decay)

    def label(self) -> str:
        text = f"{OPTIMIZER_LABELS.get(self.optimizer, self.optimizer)} lr={self.lr:g}"
        return text + (f" decay={self.decay:g}" if self.decay else "")


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "None"
    return format(value, spec)


@dataclasses.dataclass
class MacroResult:
    """The table of a macro-CV search, its winner, and its cost.

    Attributes:
        rows: one `MacroRow` per configuration, in table order (SGD without
            decay, SGD with decay, then Adam), like Tables 4.2-4.4.
        winner: the row with the lowest `best_val_loss` among rows with status
            "ok" (ties: the earlier row), or None.
        wall_time_s: elapsed time of the `run_macro_cv` call that produced the
            table, retrains included (on the chief in distributed mode). A
            resumed search counts only the resumed session.
        trial_time_s: sum of the trials' own times over all sessions and
            workers.
        settings: the search's arguments, for the run record.
        dataset: name of the dataset.
        started: ISO-8601 start time of the call.
    """

    rows: list
    winner: Optional[MacroRow]
    wall_time_s: float
    trial_time_s: float
    settings: dict = dataclasses.field(default_factory=dict)
    dataset: str = ""
    started: str = ""

    @classmethod
    def from_oracle(cls, oracle, settings=None, **kwargs) -> "MacroResult":
        """Assemble the table from the trials of a (chief or local) oracle."""
        rows = []
        for trial in oracle.trials.values():
            v = trial.hyperparameters.values
            decay = float(v.get(_HP_DECAY) or 0.0) or None
            row = MacroRow(
                optimizer=v[_HP_OPTIMIZER], lr=float(v[_HP_LR]), decay=decay,
                stage=2 if decay else 1, trial_id=trial.trial_id,
            )
            m = trial.metrics

            def get(name):
                if not m.exists(name):
                    return None
                value = m.get_last_value(name)
                return None if value is None else float(value)

            if trial.status == "COMPLETED":
                row.diverged = bool(get("diverged"))
                row.status = "diverged" if row.diverged else "ok"
                row.best_val_loss = get(OBJECTIVE)
                if row.best_val_loss is not None and not math.isfinite(
                    row.best_val_loss
                ):
                    row.best_val_loss = None
                row.mean_epochs = get("mean_epochs")
                re = get("retrain_epochs")
                row.retrain_epochs = None if re is None else int(re)
                row.test_loss = get("test_loss")
                row.test_accuracy = get("test_accuracy")
                row.wall_time_s = get("wall_time_s")
                r = 0
                while m.exists(f"best_epoch_{r}"):
                    row.best_epochs.append(int(get(f"best_epoch_{r}")))
                    row.val_losses.append(get(f"val_loss_{r}"))
                    r += 1
                row.ops = {
                    k: int(get(f"ops_{k}"))
                    for k in ("forward", "backward", "step")
                    if get(f"ops_{k}") is not None
                }
            elif trial.status in ("FAILED", "INVALID"):
                row.status = "failed"
                lines = (trial.message or "").strip().splitlines()
                row.message = lines[-1] if lines else None
            else:
                row.status = "missing"
            rows.append(row)
        optimizers = tuple((settings or {}).get("optimizers", OPTIMIZERS))
        lrs = tuple((settings or {}).get("learning_rates", ()))
        decays = tuple((settings or {}).get("decays", ()))

        def order(row):
            opt = optimizers.index(row.optimizer) if row.optimizer in optimizers else 99
            lr_i = lrs.index(row.lr) if row.lr in lrs else 99
            d_i = decays.index(row.decay) if row.decay in decays else -1
            return (opt, row.stage, lr_i, d_i, row.lr)

        rows.sort(key=order)
        ok = [r for r in rows if r.status == "ok" and r.best_val_loss is not None]
        winner = min(ok, key=lambda r: r.best_val_loss) if ok else None
        trial_time = sum(r.wall_time_s or 0.0 for r in rows)
        return cls(rows=rows, winner=winner, trial_time_s=trial_time,
                   settings=dict(settings or {}), **kwargs)

    def to_markdown(self) -> str:
        """The table in the form of thesis Tables 4.2-4.4 (winner in bold)."""
        lines = [
            "| Optimizer | LR | LR Decay | Epochs | Val Loss | Test Loss "
            "| Test Acc | Time (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            bold = "**" if row is self.winner else ""
            acc = None if row.test_accuracy is None else 100 * row.test_accuracy
            status = "" if row.status == "ok" else f" ({row.status})"
            lines.append(
                f"| {OPTIMIZER_LABELS.get(row.optimizer, row.optimizer)}{status} "
                f"| {row.lr:g} | {'–' if not row.decay else format(row.decay, 'g')} "
                f"| {_fmt(row.mean_epochs, '.1f')} "
                f"| {bold}{_fmt(row.best_val_loss, '.4f')}{bold} "
                f"| {bold}{_fmt(row.test_loss, '.4f')}{bold} "
                f"| {bold}{_fmt(acc, '.2f')}{bold} "
                f"| {_fmt(row.wall_time_s, '.1f')} |"
            )
        repeats = self.settings.get("repeats", "?")
        winner = (
            f"{self.winner.label()} (lowest mean validation loss over "
            f"{repeats} stratified splits; test numbers are reported, not "
            "used for selection)"
            if self.winner else "none (every configuration diverged or failed)"
        )
        lines += [
            "",
            f"Winner: {winner}.",
            f"Total wall time: {self.wall_time_s:.1f} s (whole search, retrains "
            f"included); sum of trial times: {self.trial_time_s:.1f} s.",
        ]
        return "\n".join(lines) + "\n"

    def to_record(self, recipe: Optional[str] = None) -> dict:
        """The run record (`keras_mcv.runs` format, kind "macro").

        `rows` holds every `MacroRow` field, `winner` is the winner's index into
        `rows` (or None), `test` the winner's test numbers, `ops` the batch
        passes of the whole search (training steps, plus validation and test
        forwards), and `wall_time_s` the wall time of the whole search.
        """
        ops = {"forward": 0, "backward": 0, "step": 0}
        for row in self.rows:
            for k in ops:
                ops[k] += row.ops.get(k, 0)
        complete = bool(self.rows) and all(
            r.status in ("ok", "diverged") for r in self.rows
        )
        winner = self.winner
        record = runs.new_record(
            "macro", recipe or self.dataset, "macro_cv", self.settings
        )
        if self.started:
            record["started"] = self.started
        runs.finalize(
            record,
            "complete" if complete else "incomplete",
            wall_time_s=self.wall_time_s,
            test=(
                {"loss": winner.test_loss, "accuracy": winner.test_accuracy}
                if winner else None
            ),
            ops=ops,
            rows=[dataclasses.asdict(r) for r in self.rows],
            winner=self.rows.index(winner) if winner else None,
        )
        record["trial_time_s"] = self.trial_time_s
        return record

    def save(self, out_dir, recipe: Optional[str] = None) -> str:
        """Write `macro_cv.json` (run record) and `macro_cv.md` to `out_dir`.

        Args:
            out_dir: directory, created if needed.
            recipe: recipe name of the record. Defaults to the dataset name.

        Returns:
            The path of the record.
        """
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, RECORD_NAME)
        runs.write_record(path, self.to_record(recipe))
        with open(os.path.join(out_dir, TABLE_NAME), "w") as f:
            f.write(self.to_markdown())
        return path


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------


def _data_digest(data: ArrayData) -> str:
    h = hashlib.sha256()
    for a in (data.x_train, data.y_train, data.x_test, data.y_test):
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _fingerprint(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_distributed_worker() -> bool:
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in os.environ.get(
        "KERASTUNER_TUNER_ID", ""
    )


def run_macro_cv(
    build_model: Callable,
    data: ArrayData,
    *,
    batch_size: int = 128,
    optimizers: Sequence[str] = OPTIMIZERS,
    learning_rates: Sequence[float] = (1e-1, 1e-2, 1e-3, 1e-4),
    decays: Sequence[float] = (1e-3, 5e-4, 1e-4),
    repeats: int = 5,
    patience: int = 20,
    max_epochs: int = 100,
    val_fraction: float = 0.2,
    momentum: float = 0.9,
    loss="sparse_categorical_crossentropy",
    project_dir="macro_cv",
    overwrite: bool = False,
    seed: int = 0,
    callbacks: Optional[list] = None,
    verbose: int = 0,
) -> Optional[MacroResult]:
    """Run the thesis's macro cross-validation grid search on Keras Tuner.

    ```
    stage 1: optimizers x learning_rates, no decay
    stage 2: ("sgd", best stage-1 SGD lr) x decays, lr / (1 + decay * step)
    each configuration: `repeats` stratified splits with early stopping on
        val_loss -> mean best epoch -> retrain on all training data -> test
    winner: lowest mean validation loss (test numbers are reported only)
    ```
    Runs in one process, or as Keras Tuner's distributed search when the
    `KERASTUNER_*` variables are set (see the module docstring), and resumes
    from `project_dir` unless `overwrite`.

    Args:
        build_model: `build_model(input_shape, num_classes)` -> a fresh,
            uncompiled `keras.Model` with softmax outputs.
        data: an `ArrayData`, already normalised.
        batch_size: batch size of every fit. Defaults to 128.
        optimizers: subset of `("sgd", "adam")`; SGD uses `momentum`.
            Defaults to `("sgd", "adam")`.
        learning_rates: stage-1 learning rates. Defaults to
            `(1e-1, 1e-2, 1e-3, 1e-4)`.
        decays: stage-2 decay rates for the best SGD learning rate; `()` skips
            stage 2. Defaults to `(1e-3, 5e-4, 1e-4)`.
        repeats: stratified 80/20 splits per configuration. Defaults to 5.
        patience: early-stopping patience in epochs. Defaults to 20.
        max_epochs: epoch cap of each split run. Defaults to 100.
        val_fraction: validation share of each split. Defaults to 0.2.
        momentum: SGD momentum. Defaults to 0.9.
        loss: Keras loss. Defaults to `"sparse_categorical_crossentropy"`.
        project_dir: Keras Tuner directory; the search is in
            `<project_dir>/search`. Defaults to `"macro_cv"`.
        overwrite: start afresh instead of resuming. Ignored on distributed
            workers. Defaults to False.
        seed: base seed of splits and initialisations (split r and its model
            use `seed + r`, the retrain `seed + repeats`). Defaults to 0.
        callbacks: extra callbacks added to every `fit`. Defaults to None.
        verbose: 0 silent, 1 Keras Tuner's trial display, 2 also `fit`
            progress. Defaults to 0.

    Returns:
        The `MacroResult`, or None on a distributed worker (the chief has it).

    Raises:
        ValueError: an invalid argument, or `project_dir` holds a search made
            with other settings (pass `overwrite=True` or another directory).

    References: thesis section 4.5 (Tables 4.2-4.4).
    """
    optimizers, learning_rates, decays = validate_settings(
        data, batch_size=batch_size, optimizers=optimizers,
        learning_rates=learning_rates, decays=decays, repeats=repeats,
        patience=patience, max_epochs=max_epochs, val_fraction=val_fraction,
    )
    started = datetime.datetime.now(datetime.timezone.utc).isoformat()
    start = time.perf_counter()
    trial_settings = dict(
        batch_size=int(batch_size), repeats=int(repeats),
        patience=int(patience), max_epochs=int(max_epochs),
        val_fraction=float(val_fraction), momentum=float(momentum),
        loss=loss if isinstance(loss, str) else repr(loss), seed=int(seed),
    )
    settings = dict(
        trial_settings, optimizers=list(optimizers),
        learning_rates=list(learning_rates), decays=list(decays),
        data=_data_digest(data), dataset=data.name,
    )
    fingerprint = _fingerprint(settings)
    worker = _is_distributed_worker()
    oracle = MacroCVOracle(
        optimizers, learning_rates, decays, settings=fingerprint, seed=seed + 1
    )
    tuner = MacroCVTuner(
        oracle, build_model, data,
        settings=dict(trial_settings, loss=loss, callbacks=callbacks,
                      verbose=2 if verbose >= 2 else 0),
        directory=os.fspath(project_dir), project_name=PROJECT_NAME,
        overwrite=bool(overwrite) and not worker,
    )
    space = tuner.oracle.get_space()  # a gRPC call on a worker
    found = next((hp.value for hp in space.space if hp.name == _HP_SETTINGS), None)
    if found != fingerprint:
        where = "the chief oracle" if worker else f"{tuner.project_dir}"
        raise ValueError(
            f"{where} holds a macro-CV search made with other settings "
            f"(fingerprint {found} != {fingerprint} for {settings}). "
            + (
                "Start every worker with the chief's arguments and data."
                if worker else
                "Pass overwrite=True (--overwrite) to start afresh, or use "
                "another project_dir."
            )
        )
    if not worker:
        # Keras Tuner reloads a project only if this tuner's file exists, and
        # writes it first after a trial; write it now so that a search killed
        # just after its first trial resumes instead of starting over.
        tuner.save()
    if worker or not oracle.finished():
        # A finished chief would otherwise serve until some worker calls.
        tuner.search(verbose=verbose)
    if worker:
        return None
    return MacroResult.from_oracle(
        tuner.oracle,
        settings=settings,
        wall_time_s=time.perf_counter() - start,
        dataset=data.name,
        started=started,
    )
