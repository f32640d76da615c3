"""MCV-lr-voting (thesis Algorithms 4-6): every step votes for a candidate LR."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_mcv import cost, trials
from keras_mcv.models.split import MCVModel
from keras_mcv.rules import thesis as thesis_rules


@keras.saving.register_keras_serializable(package="keras_mcv")
class VotingModel(MCVModel):
    """MCV-lr-voting: every step votes for a candidate LR; the top vote trains.

    ```
    history = [1/K] * K
    each step:
        best = argmin {L_k(batch_2) : L_k < L_pre(batch_2)}   or none
        history = ema * onehot(best) + (1 - ema) * history     (none: all decay)
        step at candidates[argmax history]; discarded if best is none
    ```
    Cost per step: K + 2 forward, 1 backward, K + 1 step.

    Args:
        candidates: the fixed candidate list. Defaults to
            `[1e-1, 1e-2, 1e-3, 1e-4]`.
        ema: weight of the newest vote, in (0, 1]. The thesis leaves it open.
            Defaults to 0.1.
        **kwargs: see `MCVModel`.

    References: thesis section 3.2, Algorithms 4-6.
    """

    method_name = "voting"
    skip_nonfinite_steps = True

    def __init__(self, *args, candidates=thesis_rules.DEFAULT_CANDIDATES, ema=0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.candidates = thesis_rules.validate_candidates(candidates)
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not (0.0 < ema <= 1.0):
            raise ValueError(
                f"`ema` must be in (0, 1], got {ema!r}. Use e.g. 0.1 (slow) to 1.0 "
                "(only the newest vote counts)."
            )
        self.ema = float(ema)
        k = len(self.candidates)
        self.mcv_candidates = self._state_weight("mcv_candidates", (k,), "float64", "zeros")
        self.mcv_votes = self._state_weight("mcv_votes", (k,), "float64", "zeros")
        # Constant initializers compute in float32; assign to keep float64 values exact.
        self.mcv_candidates.assign(np.asarray(self.candidates, "float64"))
        self.mcv_votes.assign(thesis_rules.initial_votes(k))
        self.discard_tracker = keras.metrics.Mean(name="discard_rate")
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_steps")

    def get_config(self):
        config = super().get_config()
        config.update(candidates=list(self.candidates), ema=self.ema)
        return config

    def _current_lr(self):
        return tf.gather(self.mcv_candidates, trials.top_candidate(self.mcv_votes))

    def _run_trials(self, grads, train, val):
        pre = self._eval(val)
        losses = tf.stack(
            [self._try(grads, self.mcv_candidates[k], [val])[0] for k in range(len(self.candidates))]
        )
        return {"pre": pre, "losses": losses}

    def _finish_step(self, grads, tried, has_val):
        pre = tried["pre"]
        best = tf.where(has_val, trials.best_candidate(tried["losses"], pre), -1)
        votes = trials.update_votes(self.mcv_votes, best, self.ema)
        self.mcv_votes.assign(tf.where(has_val, votes, self.mcv_votes))
        lr = self._apply(grads, self._current_lr())
        discard = tf.logical_and(has_val, best < 0)
        skip = self._nonfinite_step(tried["train_loss"])
        self._mcv.step_snapshot.restore_where(tf.logical_or(discard, skip))
        return {"lr": lr, "pre_loss": pre, "discarded": discard, "nonfinite": skip}

    def _step_cost(self):
        return cost.candidate_step(len(self.candidates))
