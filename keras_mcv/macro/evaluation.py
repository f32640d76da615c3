"""One configuration of the macro-CV grid: early stopping on repeated splits, retrain, test.

References: thesis section 4.5.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import keras
import numpy as np

from keras_mcv.data import ArrayData
from keras_mcv.macro.settings import OBJECTIVE, retrain_epochs, stratified_splits
from keras_mcv.optimizers import make_optimizer


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
    momentum_form: str = "torch",
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
        optimizer: `"sgd"` (with `momentum`, in `momentum_form`) or `"adam"`.
        learning_rate: initial learning rate.
        decay: `InverseTimeDecay` rate, or None. Defaults to None.
        batch_size: batch size. Defaults to 128.
        repeats: number of stratified splits. Defaults to 5.
        patience: early-stopping patience in epochs. Defaults to 20.
        max_epochs: epoch cap of the split runs. Defaults to 100.
        val_fraction: validation share of each split. Defaults to 0.2.
        momentum: SGD momentum. Defaults to 0.9.
        momentum_form: SGD's momentum form, "torch" (`TorchSGD`, the
            thesis's PyTorch runs) or "keras" (`keras.optimizers.SGD`); the
            two differ only when the LR changes, here under a decay.
            Defaults to "torch".
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
            make_optimizer(optimizer, learning_rate, decay=decay, momentum=momentum,
                           momentum_form=momentum_form),
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
        make_optimizer(optimizer, learning_rate, decay=decay, momentum=momentum,
                           momentum_form=momentum_form),
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
