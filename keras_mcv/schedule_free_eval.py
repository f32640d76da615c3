"""Evaluate a `keras.optimizers.ScheduleFreeAdamW` model at its averaged point.

Schedule-Free AdamW keeps three sequences: `z` (where gradient steps land),
`x` (the running average of `z`, the point its authors evaluate) and `y` (the
interpolation where gradients are taken). Keras 3.15 keeps `y` in the model's
variables and `z` in the optimizer's `momentum` slots; it never forms `x`, so
`fit`'s validation, `evaluate`, `predict` and a saved model all see `y`.
`ScheduleFreeEvaluation` puts `x` in the variables whenever the model is not
taking a training step, and `y` back before the next one.

References: Defazio et al., The Road Less Scheduled, NeurIPS 2024 (Algorithm 1
and the evaluation at `x`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def averaged_point(y, z, beta_1):
    """The averaged point `x` from the interpolated point `y` and the base sequence `z`.

    ```
    y = (1 - beta_1) z + beta_1 x      (Keras's update, every step)
    x = (y - (1 - beta_1) z) / beta_1
    ```
    Works on NumPy arrays and tensors alike.
    """
    return (y - (1.0 - beta_1) * z) / beta_1


def interpolated_point(x, z, beta_1):
    """The training point `y = (1 - beta_1) z + beta_1 x` (the inverse of `averaged_point`)."""
    return (1.0 - beta_1) * z + beta_1 * x


class ScheduleFreeEvaluation(keras.callbacks.Callback):
    """Swap ScheduleFreeAdamW's averaged point `x` in for evaluation, and `y` back to train.

    ```
    Keras's step t (lr_t = lr, or lr * min(t / warmup_steps, 1)):
        z_t = z_{t-1} - lr_t * g(y_{t-1}) / (sqrt(v_t / (1 - beta_2^t)) + eps)
        x_t = (1 - 1/t) x_{t-1} + (1/t) z_t          (x_0 = z_0 = y_0 = w_0)
        y_t = (1 - beta_1) z_t + beta_1 x_t          (held in the variables)
    this callback, outside training steps:
        variables <- x = (y - (1 - beta_1) z) / beta_1
    before the next training step:
        variables <- y (the exact copy it kept; or, after weights were loaded
                        from a backup or a checkpoint of x,
                        y = (1 - beta_1) z + beta_1 x)
    ```
    So `fit`'s validation, callbacks at epoch end (`ModelCheckpoint`,
    `BackupAndRestore`, early stopping), `evaluate`, `predict` and
    `model.save` after `fit` all see `x`, as the authors evaluate, while
    training follows exactly the trajectory it follows without the callback
    (the `y` kept is a bit-exact copy). `x` goes in after the last step of
    each epoch, before Keras evaluates the validation data, whatever the
    callback's place in the list; `y` comes back when the next epoch begins.
    After `fit` the model holds `x`, so a plain `model.evaluate(...)`,
    `predict` or `save` needs no callback.

    Pass it to every `fit` of the model, from the first on: the variables
    are then `x` between fits (and in every checkpoint), and a resumed run
    recovers `y` from `x` and `z`. The optimizer is built eagerly when
    training starts, if it is not yet (Keras 3.15 leaves `z` at zero when
    `fit` builds ScheduleFreeAdamW lazily, and the first step then zeroes the
    weights; `keras_mcv.optimizers.build_optimizer`).

    Raises:
        ValueError: when training starts, if the model's optimizer is not a
            `keras.optimizers.ScheduleFreeAdamW`, or uses `use_ema=True`
            (whose weight overwrite would mix with this swap).

    References: Defazio et al., The Road Less Scheduled, NeurIPS 2024,
    Algorithm 1 (the averaged sequence x is where the model is evaluated).
    """

    def __init__(self):
        super().__init__()
        self._holds_x = False  # True: the variables hold x (written by this callback)
        self._y = None  # untracked copies of y, made when x first goes in
        self._x = None  # what this callback wrote, to tell whether it was overwritten
        self._steps = None

    # ---------------------------------------------------------------- checks

    def _optimizer(self):
        optimizer = getattr(self.model, "optimizer", None)
        if not isinstance(optimizer, keras.optimizers.ScheduleFreeAdamW):
            raise ValueError(
                "ScheduleFreeEvaluation needs a model compiled with "
                "keras.optimizers.ScheduleFreeAdamW; this model's optimizer is "
                f"{type(optimizer).__name__}. Remove the callback or compile with "
                "ScheduleFreeAdamW."
            )
        if optimizer.use_ema:
            raise ValueError(
                "ScheduleFreeEvaluation cannot be combined with use_ema=True: the "
                "optimizer's EMA overwrite would replace the averaged point. Schedule-Free "
                "already averages; compile with use_ema=False."
            )
        return optimizer

    def _beta_1(self, optimizer) -> float:
        beta_1 = optimizer.beta_1
        beta_1 = float(beta_1() if callable(beta_1) else beta_1)
        if not 0.0 < beta_1 <= 1.0:
            raise ValueError(
                f"ScheduleFreeAdamW's beta_1 must be in (0, 1] to recover x from y, got {beta_1}."
            )
        return beta_1

    def _pairs(self):
        """(variable, its z slot) for every trainable variable."""
        optimizer = self._optimizer()
        if not optimizer.built and self.model.built:
            optimizer.build(self.model.trainable_variables)
        # The slots have no public accessor: Keras keeps `z` in `_momentums`,
        # indexed by the private `_get_variable_index` (as its `update_step` does).
        momentums = optimizer._momentums
        return [(v, momentums[optimizer._get_variable_index(v)])
                for v in self.model.trainable_variables]

    # ----------------------------------------------------------------- swaps

    def to_x(self):
        """Put the averaged point `x` in the model's variables (no-op if it is there)."""
        if self._holds_x:
            return
        optimizer = self._optimizer()
        beta_1 = self._beta_1(optimizer)
        pairs = self._pairs()
        if self._y is None:
            self._y = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v, _ in pairs]
            self._x = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v, _ in pairs]
        for (v, z), y_copy, x_copy in zip(pairs, self._y, self._x):
            y = tf.convert_to_tensor(v)
            y_copy.assign(y)
            x = averaged_point(y, tf.convert_to_tensor(z), tf.cast(beta_1, y.dtype))
            v.assign(x)
            x_copy.assign(tf.convert_to_tensor(v))
        self._holds_x = True

    def to_y(self):
        """Put the training point `y` back in the model's variables.

        The exact copy kept by `to_x` when the variables still hold what it
        wrote; otherwise (a fresh callback, or weights loaded since) the
        variables are taken to hold `x` and `y` is computed from `x` and `z`.
        """
        optimizer = self._optimizer()
        pairs = self._pairs()
        if self._holds_x and self._untouched(pairs):
            for (v, _), y_copy in zip(pairs, self._y):
                v.assign(y_copy)
        elif int(optimizer.iterations.numpy()) > 0:
            beta_1 = self._beta_1(optimizer)
            for v, z in pairs:
                x = tf.convert_to_tensor(v)
                v.assign(interpolated_point(x, tf.convert_to_tensor(z), tf.cast(beta_1, x.dtype)))
        # Before the first step x = y = z: nothing to do.
        self._holds_x = False

    def _untouched(self, pairs) -> bool:
        if self._x is None:
            return False
        return all(
            bool(np.array_equal(np.asarray(v.numpy()), c.numpy())) for (v, _), c in zip(pairs, self._x)
        )

    # ------------------------------------------------------------- callbacks

    def on_train_begin(self, logs=None):
        self._optimizer()  # refuse a wrong optimizer before any step
        self._pairs()  # build the optimizer eagerly if it is not yet
        self._steps = self.params.get("steps") if self.params else None

    def on_epoch_begin(self, epoch, logs=None):
        # Not in on_train_begin: BackupAndRestore loads its backup (of x) there.
        self.to_y()

    def on_train_batch_end(self, batch, logs=None):
        if self._steps is not None and batch + 1 >= self._steps:
            self.to_x()  # before Keras evaluates validation_data, before on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        self.to_x()

    def on_train_end(self, logs=None):
        self.to_x()

    def on_test_begin(self, logs=None):
        self.to_x()  # fit's validation (also when the steps per epoch are unknown), evaluate

    def on_predict_begin(self, logs=None):
        self.to_x()
