"""Macro cross-validation baseline (thesis 4.5): a grid search on Keras Tuner.

The baseline the MCV methods are compared against. Every configuration of a
two-stage grid is scored by early stopping on repeated stratified 80/20 splits
of the training set, retrained on all of it, and tested:

```
stage 1: for optimizer in optimizers          # SGD momentum 0.9 (PyTorch's form), Adam
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

import datetime
import hashlib
import json
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from keras_mcv.data import ArrayData
from keras_mcv.macro.evaluation import evaluate_configuration
from keras_mcv.macro.result import MacroResult, MacroRow
from keras_mcv.macro.settings import (
    _HP_SETTINGS,
    EXECUTIONS_LOG,
    OBJECTIVE,
    OPTIMIZER_LABELS,
    OPTIMIZERS,
    PROJECT_NAME,
    RECORD_NAME,
    TABLE_NAME,
    retrain_epochs,
    stratified_splits,
    validate_settings,
)
from keras_mcv.macro.tuner import MacroCVOracle, MacroCVTuner
from keras_mcv.optimizers import check_momentum_form

__all__ = [
    "EXECUTIONS_LOG",
    "MacroCVOracle",
    "MacroCVTuner",
    "MacroResult",
    "MacroRow",
    "OBJECTIVE",
    "OPTIMIZERS",
    "OPTIMIZER_LABELS",
    "PROJECT_NAME",
    "RECORD_NAME",
    "TABLE_NAME",
    "evaluate_configuration",
    "retrain_epochs",
    "run_macro_cv",
    "stratified_splits",
    "validate_settings",
]


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
    momentum_form: str = "torch",
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
        momentum_form: SGD's momentum form: "torch" (`TorchSGD`, PyTorch's
            buffer of gradients, what the thesis ran) or "keras"
            (`keras.optimizers.SGD`). The two give the same trajectory at a
            constant LR (stage 1, up to float rounding) and differ under
            stage 2's decay. Part of the settings fingerprint: a project made
            with the other form is refused. Defaults to "torch".
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
    momentum_form = check_momentum_form(momentum_form)
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
        momentum_form=momentum_form,
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
