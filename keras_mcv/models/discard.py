"""MCV-discard (thesis Algorithm 3): keep a step only if the validation half agrees."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_mcv import cost, trials
from keras_mcv.models.split import MCVModel


@keras.saving.register_keras_serializable(package="keras_mcv")
class DiscardModel(MCVModel):
    """MCV-discard: take the step, keep it only if the validation half agrees.

    ```
    pre  = L(batch_2)
    apply(grad L(batch_1))          # the optimizer's own LR (a schedule is fine)
    post = L(batch_2)
    if post > pre: restore weights and optimizer (discard)
    ```
    Logs `discard_rate`, the fraction of discarded steps per epoch.
    Cost per step: 3 forward, 1 backward, 1 step.

    Args:
        **kwargs: `validation_fraction`, `trial_every`, `trial_training` (see
            `MCVModel`) and the arguments of `keras.Model`.

    References: thesis section 3.1, Algorithm 3.
    """

    method_name = "discard"
    chooses_lr = False  # it steps at the optimizer's own LR, a schedule included
    skip_nonfinite_steps = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.discard_tracker = keras.metrics.Mean(name="discard_rate")
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_steps")

    def _run_trials(self, grads, train, val):
        return {"pre": self._eval(val), "val": val}

    def _finish_step(self, grads, tried, has_val):
        # The trial is the actual step: take it, then undo it if the loss rose.
        lr = self._apply(grads)
        post = self._eval(tried["val"])
        discard = tf.logical_and(has_val, trials.should_discard(tried["pre"], post))
        skip = self._nonfinite_step(tried["train_loss"])
        self._mcv.step_snapshot.restore_where(tf.logical_or(discard, skip))
        return {"lr": lr, "pre_loss": tried["pre"], "discarded": discard, "nonfinite": skip}

    def _step_cost(self):
        return cost.discard_step()
