"""The grid on Keras Tuner: an oracle that can resume and a tuner whose trial is one configuration.

References: thesis section 4.5.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import keras_tuner

from keras_mcv.macro.evaluation import evaluate_configuration
from keras_mcv.macro.settings import (
    _HP_DECAY,
    _HP_LR,
    _HP_OPTIMIZER,
    _HP_SETTINGS,
    _IDLE_POLL_S,
    EXECUTIONS_LOG,
    OBJECTIVE,
    OPTIMIZERS,
)

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
