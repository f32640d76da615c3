"""Keras callbacks: epoch-end LR selection, MCV stopping, run recording, schedules, monitors.

`default(patience=20)` is the set a user passes to `fit` with the thesis's
models. `SequenceUpdate` (decay sequences by update strategy),
`TrainingMonitor` (update:weight ratios, dead ReLUs, histograms) and
`ScheduleFreeEvaluation` (ScheduleFreeAdamW evaluated at its averaged point)
live in their own modules and are re-exported here.

References: thesis section 3.2 (selection and stopping rules of Algorithm 8).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings

import keras
import numpy as np

from keras_mcv import records
from keras_mcv.schedule_free_eval import ScheduleFreeEvaluation  # noqa: F401 (re-export)
from keras_mcv.sequence_update import SequenceUpdate  # noqa: F401 (re-export)
from keras_mcv.training_monitor import TrainingMonitor  # noqa: F401 (re-export)
from keras_mcv.rules import thesis as thesis_rules


class EpochLRSelection(keras.callbacks.Callback):
    """At each epoch end, let a `SearchModel` choose the next epoch's LR.

    ```
    lr = select_lr(method, average candidate losses, average pre-step loss)
    candidates = [5, 2, 4/3, 1, 3/4, 1/2, 1/5] * lr
    ```
    The summary (candidates, their average losses, the chosen LR) is appended
    to `model.mcv_history` and kept in `self.history`. `SearchModel.fit` adds
    this callback when it is missing (and runs it before any other callback,
    so a backup written at epoch end holds the next epoch's LR); it does
    nothing for other models.

    Resuming: the LR, candidates and accumulators are model variables, restored
    by `keras.callbacks.BackupAndRestore`. The summaries are Python data: with
    `backup_dir` they are also written to `mcv_history.json` there after every
    epoch, and a resumed `fit` puts the summaries of the epochs before the one
    it resumes at back into `model.mcv_history`, which is then complete.
    MCV models' `fit` sets `backup_dir` from a `BackupAndRestore` callback.

    Args:
        backup_dir: where to keep the summaries for a resumed run. Defaults to
            None (not kept).

    References: thesis section 3.2, Algorithm 8.
    """

    def __init__(self, backup_dir=None):
        super().__init__()
        self.history = []
        self.backup_dir = backup_dir
        self._saved = None

    def _path(self):
        return os.path.join(self.backup_dir, "mcv_history.json")

    def on_train_begin(self, logs=None):
        self._saved = None
        if self.backup_dir and os.path.exists(self._path()):
            with open(self._path()) as f:
                self._saved = json.load(f)

    def on_epoch_begin(self, epoch, logs=None):
        # The first epoch of this fit tells where it resumes; summaries of that
        # epoch or later belong to a lost future and are dropped.
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        if epoch == 0 or getattr(self.model, "end_epoch", None) is None:
            return
        kept = [e for e in saved if e["epoch"] <= epoch]
        self.history = list(kept)
        self.model.mcv_history[:] = kept

    def on_epoch_end(self, epoch, logs=None):
        end_epoch = getattr(self.model, "end_epoch", None)
        if end_epoch is None:
            return
        self.history.append(end_epoch(epoch + 1))
        if self.backup_dir:
            records.write_atomic(self._path(), lambda f: json.dump(
                self.model.mcv_history, f, default=_json_default))


class MCVStopping(keras.callbacks.Callback):
    """The adaptive search's stopping rule on the epoch-average pre-step loss.

    ```
    stop when the average of `monitor` has not improved for `patience` epochs;
    stop at once when it is non-finite, and restore the weights of the epoch
    with the lowest average
    ```
    Only network variables are restored (not the MCV state), so nothing
    non-finite reaches the saved weights; optimizer variables that became
    non-finite are reset to zero (training stops there, but a saved model
    keeps its optimizer). An epoch whose training loss (`loss` log) is
    non-finite counts as a non-finite epoch even when `monitor` is still
    finite: the actual step diverged.

    Resuming: the losses, the best epoch and its weights are Python state, not
    model variables. With `backup_dir` they are written to `mcv_stopping.npz`
    there after every epoch and restored by a `fit` resumed from a
    `keras.callbacks.BackupAndRestore` backup (MCV models' `fit` sets
    `backup_dir` from that callback).

    Args:
        patience: epochs without improvement before stopping. Defaults to 20.
        monitor: the log to watch. Defaults to `"mcv_val_loss"`.
        restore_best_weights: also restore the best epoch's weights when
            stopping for patience (the thesis does not). Defaults to False.
        backup_dir: where to keep the state for a resumed run. Defaults to None.

    References: thesis section 3.2, the stopping criteria of Algorithm 8.
    """

    def __init__(
        self, patience: int = 20, monitor: str = "mcv_val_loss",
        restore_best_weights=False, backup_dir=None,
    ):
        super().__init__()
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"`patience` must be an integer >= 1, got {patience!r}.")
        self.patience = patience
        self.monitor = monitor
        self.restore_best_weights = restore_best_weights
        self.backup_dir = backup_dir
        self._saved = None

    def on_train_begin(self, logs=None):
        self.losses = []
        self.best = math.inf
        self.best_epoch = None
        self.best_weights = None
        self.stopped_epoch = None
        self.restored_epoch = None
        self._saved = None
        if self.backup_dir and os.path.exists(self._path()):
            with np.load(self._path()) as data:
                self._saved = {k: data[k] for k in data.files}

    def _path(self):
        return os.path.join(self.backup_dir, "mcv_stopping.npz")

    def on_epoch_begin(self, epoch, logs=None):
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        if epoch == 0:
            return
        # Keep what the epochs before the resumed one decided; a state written
        # after a later backup (a crash between the two writes) is cut back.
        losses = [float(v) for v in saved["losses"]][:epoch]
        best_epoch = int(saved["best_epoch"])
        self.losses = losses
        if 0 <= best_epoch < epoch:
            n = int(saved["num_weights"])
            self.best_epoch = best_epoch
            self.best = float(saved["best"])
            self.best_weights = [saved[f"w{i}"] for i in range(n)]
        elif any(math.isfinite(v) for v in losses):
            finite = [v if math.isfinite(v) else math.inf for v in losses]
            self.best_epoch = int(np.argmin(finite))
            self.best = finite[self.best_epoch]
            warnings.warn(
                f"MCVStopping: the backup in {self.backup_dir} has no weights for "
                f"best epoch {self.best_epoch + 1}; they cannot be restored.",
                stacklevel=2,
            )
        if len(losses) < epoch:
            warnings.warn(
                f"MCVStopping: resuming at epoch {epoch + 1} with the stopping "
                f"state of {len(losses)} epochs only.",
                stacklevel=2,
            )

    def _save(self):
        arrays = {
            "losses": np.asarray(self.losses, "float64"),
            "best": np.asarray(self.best, "float64"),
            "best_epoch": np.asarray(-1 if self.best_epoch is None else self.best_epoch),
            "num_weights": np.asarray(len(self.best_weights or [])),
        }
        for i, w in enumerate(self.best_weights or []):
            arrays[f"w{i}"] = w
        records.write_atomic(self._path(), lambda f: np.savez(f, **arrays), mode="wb")

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
        train_loss = logs.get("loss")
        if train_loss is not None and not math.isfinite(float(train_loss)):
            value = math.nan
        self.losses.append(value)
        if math.isfinite(value) and value < self.best:
            self.best = value
            self.best_epoch = epoch
            self.best_weights = [np.array(v.numpy()) for v in self._variables()]
        stop, restore = thesis_rules.stopping_decision(self.losses, self.patience)
        if self.backup_dir:
            self._save()
        if not stop:
            return
        self.model.stop_training = True
        self.stopped_epoch = epoch
        if (restore is not None or self.restore_best_weights) and self.best_weights is not None:
            for v, w in zip(self._variables(), self.best_weights):
                v.assign(w)
            self.restored_epoch = self.best_epoch
        optimizer = getattr(self.model, "optimizer", None)
        for v in getattr(optimizer, "variables", []):
            value = np.asarray(v.numpy())
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                v.assign(np.zeros_like(value))


class RunRecorder(keras.callbacks.Callback):
    """Write a run record after every epoch, atomically, so a crash loses nothing.

    The record (format in `keras_mcv.records`) holds the config, per-epoch logs,
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
        self.record = records.new_record(kind, recipe, method, dict(config or {}))
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._write()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: _float(v) for k, v in (logs or {}).items()}
        decision = {"lr": logs.get("lr"), "pre_loss": logs.get("mcv_val_loss")}
        history = getattr(self.model, "mcv_history", None)
        summary = history[-1] if history and history[-1].get("epoch") == epoch + 1 else None
        if summary is not None:
            decision.update(
                lr=summary["lr"],
                candidates=summary["candidates"],
                candidate_losses=summary["candidate_losses"],
                # A race's pre-step loss is the logged `mcv_val_loss` itself.
                pre_loss=summary.get("pre_loss", decision["pre_loss"]),
                next_lr=summary["next_lr"],
            )
        entry = records.add_epoch(
            self.record, epoch + 1, time.perf_counter() - self._start, logs, **decision
        )
        for key in ("race_round", "survivors"):  # RaceModel's summaries
            if summary is not None and key in summary:
                entry[key] = summary[key]
        self._write()

    def _write(self):
        if self._start is not None:
            self.record["wall_time_s"] = time.perf_counter() - self._start
        ops_counts = getattr(self.model, "ops_counts", None)
        if ops_counts is not None:
            self.record["ops"] = ops_counts()
        records.write_record(self.path, self.record)

    def finish(self, status: str = "complete", test=None, **extra):
        """Mark the record finished (with test results) and write it."""
        self.record["status"] = status
        if test is not None:
            self.record["test"] = test
        self.record.update(extra)
        self._write()


def _json_default(value):
    # Epoch summaries hold NumPy scalars; NaN/inf stay as JSON's NaN/Infinity,
    # which json.load reads back.
    return float(np.asarray(value))


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
