"""Keras callbacks of micro cross-validation: epoch-end LR selection, stopping, recording.

`default(patience=20)` is the set a user passes to `fit`.

References: thesis section 3.2 (selection and stopping rules of Algorithm 8).
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np

from keras_mcv import policies, runs


class EpochLRSelection(keras.callbacks.Callback):
    """At each epoch end, let a `SearchModel` choose the next epoch's LR.

    ```
    lr = select_lr(method, average candidate losses, average pre-step loss)
    candidates = [5, 2, 4/3, 1, 3/4, 1/2, 1/5] * lr
    ```
    The summary (candidates, their average losses, the chosen LR) is appended
    to `model.mcv_history` and kept in `self.history`. `SearchModel.fit` adds
    this callback when it is missing; it does nothing for other models.

    References: thesis section 3.2, Algorithm 8.
    """

    def __init__(self):
        super().__init__()
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        end_epoch = getattr(self.model, "end_epoch", None)
        if end_epoch is None:
            return
        self.history.append(end_epoch(epoch + 1))


class MCVStopping(keras.callbacks.Callback):
    """The adaptive search's stopping rule on the epoch-average pre-step loss.

    ```
    stop when the average of `monitor` has not improved for `patience` epochs;
    stop at once when it is non-finite, and restore the weights of the epoch
    with the lowest average
    ```
    Only network variables are restored (not the MCV state), so nothing
    non-finite reaches the saved weights.

    Args:
        patience: epochs without improvement before stopping. Defaults to 20.
        monitor: the log to watch. Defaults to `"mcv_val_loss"`.
        restore_best_weights: also restore the best epoch's weights when
            stopping for patience (the thesis does not). Defaults to False.

    References: thesis section 3.2, the stopping criteria of Algorithm 8.
    """

    def __init__(self, patience: int = 20, monitor: str = "mcv_val_loss", restore_best_weights=False):
        super().__init__()
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"`patience` must be an integer >= 1, got {patience!r}.")
        self.patience = patience
        self.monitor = monitor
        self.restore_best_weights = restore_best_weights

    def on_train_begin(self, logs=None):
        self.losses = []
        self.best = math.inf
        self.best_epoch = None
        self.best_weights = None
        self.stopped_epoch = None
        self.restored_epoch = None

    def _variables(self):
        network = getattr(self.model, "network_variables", None)
        return network() if network else self.model.variables

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(
                f"MCVStopping monitors {self.monitor!r}, which is not in the logs "
                f"({sorted(logs)}). Use an MCV model, or set `monitor=`."
            )
        value = float(logs[self.monitor])
        self.losses.append(value)
        if math.isfinite(value) and value < self.best:
            self.best = value
            self.best_epoch = epoch
            self.best_weights = [np.array(v.numpy()) for v in self._variables()]
        stop, restore = policies.stopping_decision(self.losses, self.patience)
        if not stop:
            return
        self.model.stop_training = True
        self.stopped_epoch = epoch
        if (restore is not None or self.restore_best_weights) and self.best_weights is not None:
            for v, w in zip(self._variables(), self.best_weights):
                v.assign(w)
            self.restored_epoch = self.best_epoch


class RunRecorder(keras.callbacks.Callback):
    """Write a run record after every epoch, atomically, so a crash loses nothing.

    The record (format in `keras_mcv.runs`) holds the config, per-epoch logs,
    the LR used, the candidate lists and their average losses, the operation
    counts and wall time. Its status is "running" until `finish` marks it
    "complete" (or "failed"); a process that dies leaves it "running", which the
    report shows as incomplete.

    Args:
        path: the JSON file to write.
        recipe: recipe name for the record.
        method: method name ("search1", "voting", ...).
        config: anything JSON-serialisable describing the run.
    """

    def __init__(self, path, recipe: str = "", method: str = "", config=None, kind: str = "mcv"):
        super().__init__()
        self.path = path
        self.record = runs.new_record(kind, recipe, method, dict(config or {}))
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._write()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: _float(v) for k, v in (logs or {}).items()}
        entry = {
            "epoch": epoch + 1,
            "wall_time_s": time.perf_counter() - self._start,
            "logs": logs,
            "lr": logs.get("lr"),
            "candidates": None,
            "candidate_losses": None,
            "pre_loss": logs.get("mcv_val_loss"),
            "next_lr": None,
        }
        history = getattr(self.model, "mcv_history", None)
        if history and history[-1].get("epoch") == epoch + 1:
            summary = history[-1]
            entry.update(
                lr=summary["lr"],
                candidates=summary["candidates"],
                candidate_losses=summary["candidate_losses"],
                pre_loss=summary["pre_loss"],
                next_lr=summary["next_lr"],
            )
        self.record["epochs"].append(entry)
        self._write()

    def _write(self):
        if self._start is not None:
            self.record["wall_time_s"] = time.perf_counter() - self._start
        ops_counts = getattr(self.model, "ops_counts", None)
        if ops_counts is not None:
            self.record["ops"] = ops_counts()
        runs.write_record(self.path, self.record)

    def finish(self, status: str = "complete", test=None, **extra):
        """Mark the record finished (with test results) and write it."""
        self.record["status"] = status
        if test is not None:
            self.record["test"] = test
        self.record.update(extra)
        self._write()


def _float(value):
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


def default(patience: int = 20) -> list:
    """The callbacks a user passes to `fit`: epoch-end LR selection and MCV stopping.

    Args:
        patience: epochs without improvement of `mcv_val_loss` before stopping.
            Defaults to 20, the thesis.
    """
    return [EpochLRSelection(), MCVStopping(patience=patience)]
