"""Adaptive LR search (thesis Algorithms 7-8, Methods 1-3) and its beyond-the-thesis options."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from keras_mcv import cost, trials
from keras_mcv.models.base import batch_size_of, selection_first
from keras_mcv.models.split import MCVModel
from keras_mcv.optimizers import TorchSGD
from keras_mcv.rules import search_options as selection_rules
from keras_mcv.rules import thesis as thesis_rules


def torch_step_fill(steps, momentum, dampening=0.0, nesterov=False):
    """`selection_rules.torch_step_fill` in-graph, float64; `steps` may be a tensor."""
    beta, d = float(momentum), float(dampening)
    if beta == 0.0:
        return tf.constant(1.0, tf.float64)
    decayed = tf.pow(tf.constant(beta, tf.float64), tf.cast(steps, tf.float64) - 1.0)
    n_s = decayed + (1.0 - d) * (1.0 - decayed) / (1.0 - beta)
    n_inf = (1.0 - d) / (1.0 - beta)
    if nesterov:
        return (1.0 + beta * n_s) / (1.0 + beta * n_inf)
    return n_s / n_inf


TUNED_OPTIONS = {
    "method": 1,
    "trial_step": "update",
    "smoothing": 0.5,
    "train_validation_half": True,
    "trial_every": 4,
}
"""The `SearchModel` options of the beyond-the-thesis mode ("tuned").

Update trials along the optimizer's own step, epoch decisions smoothed in log
space, test-then-train on the validation half, trials on every 4th step:
`SearchModel(inputs, outputs, **TUNED_OPTIONS)`, or `--method tuned` on the
command line. Measured against a fixed-LR grid in `saved_runs/beyond_thesis/`:
within a point on digits on average, short on CIFAR-10, where the learning-rate
race (`keras_mcv.RaceModel`, `--method race`) meets the grid.
"""


@keras.saving.register_keras_serializable(package="keras_mcv")
class SearchModel(MCVModel):
    """Adaptive LR search: a constant LR per epoch, chosen from MCV loss averages.

    ```
    epoch 1: candidates = initial list, lr = min(candidates)
    each step: for each candidate c_k, after a trial step at c_k
        score_k += (1 - alpha) * L_k(batch_2) + alpha * L_k(batch_1)
        pre     += L(batch_2) before the step;  then step at lr
    epoch end: lr = select_lr(method, averages)          (EpochLRSelection)
               candidates = [5, 2, 4/3, 1, 3/4, 1/2, 1/5] * lr
    ```
    Method 1: alpha = 0, the minimum. Method 2: alpha in [0, 1], the minimum.
    Method 3: alpha = 0, the largest candidate whose average validation loss is
    below the average pre-step loss, else the minimum. The epoch-end selection
    runs in the `keras_mcv.callbacks.EpochLRSelection` callback, which `fit`
    adds when it is missing. Cost per step: K + 2 forward (Method 2 with
    alpha > 0: 2K + 2), 1 backward, K + 1 step.

    Beyond the thesis (the defaults are the thesis). With Keras's SGD
    momentum (velocity in weight units), a one-step trial at the raw LR scales
    only the new gradient's share and ignores that the LR acts ~1/(1 - beta)
    times over the next steps, so the search grows the LR until training
    diverges. With PyTorch's form (`TorchSGD`, what the thesis ran) a raw
    trial scales the whole momentum step (`docs/momentum_forms.md`). Options:
    ```
    trial_step="update":    w1 = the actual step at lr (taken first)
                            trial_k: w0 + (c_k / lr_avg) * (w1 - w0)
                            lr_avg = the LR scale of the momentum step:
                              keras.optimizers.SGD: EMA of the LR with its
                                momentum (`lr_average`; the velocity keeps
                                past LRs)
                              TorchSGD: lr * the buffer's fill
                                (`torch_lr_average`; lr scales the whole buffer)
                              others: lr
                            so a trial is the steady-state step of LR c_k along
                            the optimizer's own (averaged) direction;
                            K + 2 forward, 1 step
    trial_step="effective": one optimizer step at c_k * trial_lr_scale
                            (keras.optimizers.SGD: 1 / (1 - momentum); TorchSGD
                            and others: 1, so "effective" is "raw" for TorchSGD)
    trial_horizon=H:        the trial step repeated H times (raw / effective);
                            update trials: w0 + H (c_k / lr_avg) (w1 - w0), the
                            movement of H steps along the current direction
    selection="tolerant":   largest c_k within `tolerance` paired standard
                            errors of the best (Method 1 only)
    selection="fraction":   largest c_k with >= `fraction` of the best gain
    smoothing=s:            log lr_next = log lr + s (log chosen - log lr),
                            from the second decision on
    train_validation_half:  then a second step on batch_2 (test-then-train)
    ```
    Measured in `saved_runs/beyond_thesis/ablation.md`; the best combination
    is `keras_mcv.TUNED_OPTIONS` (`SearchModel(..., **TUNED_OPTIONS)`). It
    still misses a fixed-LR grid on CIFAR-10; `keras_mcv.RaceModel`, which
    judges over epochs, does not (`saved_runs/beyond_thesis/README.md`).

    Args:
        method: 1, 2 or 3. Defaults to 1.
        alpha: weight of the training-half loss in Method 2's score. Defaults to
            0.5 for Method 2 and 0 otherwise (Methods 1 and 3 require 0).
        candidates: the first epoch's candidate list. Defaults to
            `[1e-1, 1e-2, 1e-3, 1e-4]`.
        trial_step: "raw" (the thesis), "effective" or "update". Defaults to
            "raw".
        trial_horizon: optimizer steps per trial ("raw"/"effective"); for
            "update", the number of steps of the same update the trial moves.
            Defaults to 1.
        selection: "thesis" (`method`'s rule), "tolerant" or "fraction"
            (these two need method 1). Defaults to "thesis".
        tolerance: the tolerant rule's k, in standard errors. Defaults to 1.
        fraction: the fraction rule's share of the best gain. Defaults to 0.5.
        smoothing: weight of the new choice in log space, in (0, 1]. Defaults
            to 1 (none).
        train_validation_half: after every step (with or without trials), a
            second step at the same LR on the validation half, once it has
            been used to judge (test-then-train): every example trains every
            epoch, two optimizer steps per batch as plain Keras takes on
            batches of half the size. Cost: +1 forward, +1 backward, +1 step.
            Defaults to False (the thesis: the validation half never trains).
        **kwargs: see `MCVModel`.

    References: thesis section 3.2, Algorithms 7-8; `keras_mcv.rules.search_options`
    (the options).
    """

    method_name = "search"

    def __init__(
        self, *args, method=1, alpha=None, candidates=thesis_rules.DEFAULT_CANDIDATES,
        trial_step="raw", trial_horizon=1, selection="thesis",
        tolerance=selection_rules.DEFAULT_TOLERANCE, fraction=selection_rules.DEFAULT_FRACTION,
        smoothing=1.0, train_validation_half=False, **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if method not in (1, 2, 3) or isinstance(method, bool):
            raise ValueError(
                f"`method` must be 1, 2 or 3, got {method!r} (1: minimum validation "
                "loss, 2: validation and training loss mixed by alpha, 3: largest LR "
                "that lowers the loss)."
            )
        if alpha is None:
            alpha = 0.5 if method == 2 else 0.0
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
            raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}. Use e.g. 0.5.")
        if method != 2 and alpha != 0:
            raise ValueError(
                f"Method {method} uses the validation loss only (alpha = 0), got "
                f"alpha={alpha!r}. Use method=2 to mix in the training loss."
            )
        self.method = int(method)
        self.alpha = float(alpha)
        self._check_beyond_options(trial_step, trial_horizon, selection, tolerance, fraction, smoothing)
        self.trial_step = trial_step
        self.trial_horizon = int(trial_horizon)
        self.selection = selection
        self.tolerance = float(tolerance)
        self.fraction = float(fraction)
        self.smoothing = float(smoothing)
        if not isinstance(train_validation_half, bool):
            raise ValueError(
                f"`train_validation_half` must be True or False, got {train_validation_half!r}."
            )
        self.train_validation_half = train_validation_half
        self.candidates = thesis_rules.validate_candidates(candidates)
        self._num_candidates = len(self.candidates)
        slots = max(len(self.candidates), len(thesis_rules.SEARCH_FACTORS))
        padded = np.zeros(slots)
        padded[: len(self.candidates)] = self.candidates
        self.mcv_lr = self._state_weight("mcv_lr", (), "float64", "zeros")
        # Constant initializers compute in float32; assign to keep float64 values exact.
        self.mcv_lr.assign(min(self.candidates))
        self.mcv_candidates = self._state_weight("mcv_candidates", (slots,), "float64", "zeros")
        self.mcv_candidates.assign(padded)
        self.mcv_num_candidates = self._state_weight(
            "mcv_num_candidates", (), "int64",
            keras.initializers.Constant(len(self.candidates)),
        )
        self.mcv_score_sum = self._state_weight("mcv_score_sum", (slots,), "float64", "zeros")
        self.mcv_val_sum = self._state_weight("mcv_val_sum", (slots,), "float64", "zeros")
        self.mcv_pre_sum = self._state_weight("mcv_pre_sum", (), "float64", "zeros")
        self.mcv_trial_count = self._state_weight("mcv_trial_count", (), "float64", "zeros")
        # State of the options, created only when used (the thesis's weights
        # stay exactly as they were).
        if self.selection == "tolerant":
            self.mcv_cross_sum = self._state_weight(
                "mcv_cross_sum", (slots, slots), "float64", "zeros"
            )
        if self.trial_step == "update":
            self.mcv_lr_avg = self._state_weight("mcv_lr_avg", (), "float64", "zeros")

    def _check_beyond_options(self, trial_step, trial_horizon, selection, tolerance, fraction, smoothing):
        if trial_step not in selection_rules.TRIAL_STEPS:
            raise ValueError(
                f"`trial_step` must be one of {selection_rules.TRIAL_STEPS}, got {trial_step!r}. "
                "Use 'raw' for the thesis or 'update' for momentum-aware trials."
            )
        if isinstance(trial_horizon, bool) or not isinstance(trial_horizon, int) or trial_horizon < 1:
            raise ValueError(f"`trial_horizon` must be an integer >= 1, got {trial_horizon!r}.")
        if selection not in selection_rules.SELECTIONS:
            raise ValueError(
                f"`selection` must be one of {selection_rules.SELECTIONS}, got {selection!r}."
            )
        if selection != "thesis" and self.method != 1:
            raise ValueError(
                f"selection={selection!r} replaces Method 1's minimum; use method=1 "
                f"(got method={self.method})."
            )
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
            0.0 <= tolerance < math.inf
        ):
            raise ValueError(f"`tolerance` must be a finite number >= 0, got {tolerance!r}.")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
            0.0 <= fraction <= 1.0
        ):
            raise ValueError(f"`fraction` must be in [0, 1], got {fraction!r}.")
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not (
            0.0 < smoothing <= 1.0
        ):
            raise ValueError(f"`smoothing` must be in (0, 1], got {smoothing!r}. Use 1 for none.")

    def get_config(self):
        config = super().get_config()
        config.update(
            method=self.method, alpha=self.alpha, candidates=list(self.candidates),
            trial_step=self.trial_step, trial_horizon=self.trial_horizon,
            selection=self.selection, tolerance=self.tolerance, fraction=self.fraction,
            smoothing=self.smoothing, train_validation_half=self.train_validation_half,
        )
        return config

    def _buffer_momentum(self) -> float:
        """Keras SGD's momentum (the LR average's decay), 0 for other optimizers."""
        if isinstance(self.optimizer, keras.optimizers.SGD):
            return float(self.optimizer.momentum)
        return 0.0

    def _trial_scale(self) -> float:
        if self.trial_step != "effective":
            return 1.0
        if isinstance(self.optimizer, keras.optimizers.SGD):
            return selection_rules.trial_lr_scale("sgd", float(self.optimizer.momentum))
        return selection_rules.trial_lr_scale(type(self.optimizer).__name__.lower())

    def _check_optimizer(self):
        """Also refuse a momentum whose steady-state step does not exist, for scaled trials."""
        super()._check_optimizer()
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or self.trial_step == "raw":
            return
        if isinstance(optimizer, TorchSGD) and self.trial_step == "update" and not (
            optimizer.momentum < 1.0 and optimizer.dampening < 1.0
        ):
            raise ValueError(
                f'trial_step="update" rescales the step to its steady state, which '
                f"TorchSGD(momentum={optimizer.momentum!r}, dampening={optimizer.dampening!r}) "
                "does not reach: use momentum and dampening below 1, or trial_step=\"raw\"."
            )
        if isinstance(optimizer, keras.optimizers.SGD) and not float(optimizer.momentum) < 1.0:
            raise ValueError(
                f"trial_step={self.trial_step!r} rescales the step to its steady state, which "
                f"SGD(momentum={optimizer.momentum!r}) does not reach: use a momentum "
                'below 1, or trial_step="raw".'
            )

    def train_step(self, data):
        if self.trial_step == "update":
            # Every step, with or without trials, moves the momentum buffer.
            self.mcv_lr_avg.assign(self._next_lr_avg())
        return super().train_step(data)

    def _next_lr_avg(self):
        """The LR average after one more step, in-graph.

        `selection.lr_average` for Keras's SGD (and lr for other optimizers);
        `selection.torch_lr_average` for TorchSGD, whose buffer will then hold
        `iterations + 1` updates.
        """
        optimizer = self.optimizer
        if isinstance(optimizer, TorchSGD):
            return self.mcv_lr * torch_step_fill(
                optimizer.iterations + 1, optimizer.momentum, optimizer.dampening,
                optimizer.nesterov,
            )
        beta = self._buffer_momentum()
        return beta * self.mcv_lr_avg + (1.0 - beta) * self.mcv_lr

    def _after_step(self, val, has_val):
        """`train_validation_half`: a second step, on the validation half.

        Undone (weights, optimizer, BatchNorm statistics, LR average) when the
        validation half is empty. Under `tf.distribute` each replica's loss is
        weighted by its share of the global validation half
        (`trials.replica_share`), so a short last batch whose shards are uneven
        (one replica's half may be empty) still takes the mean gradient of the
        whole half, as one device would.
        """
        if not self.train_validation_half:
            return
        self._mcv.state_snapshot.save()
        self._mcv.step_snapshot.save()
        if self.trial_step == "update":
            self.mcv_lr_avg.assign(tf.where(has_val, self._next_lr_avg(), self.mcv_lr_avg))
        _, _, grads = self._gradient(val, weight=trials.replica_share(batch_size_of(val)))
        self._apply(grads, self.mcv_lr)
        skip = tf.logical_not(has_val)
        self._mcv.step_snapshot.restore_where(skip)
        self._mcv.state_snapshot.restore_where(skip)
        self.mcv_ops.assign_add(
            tf.where(has_val, tf.constant(cost.BASELINE, tf.int64), tf.zeros(3, tf.int64))
        )

    def _trial_mode(self):
        # The candidate count is static in the graph: the first epoch's list
        # and the 7-element lists after it are two graphs, each traced once.
        return ("trial", int(self.mcv_num_candidates.numpy()))

    def _current_lr(self):
        return self.mcv_lr

    def _run_trials(self, grads, train, val):
        k = self._mcv.mode[1]
        pre = self._eval(val)
        batches = [val, train] if self.alpha > 0 else [val]
        applied = {}
        if self.trial_step == "update":
            tried, applied["applied_lr"] = self._update_trials(grads, k, batches)
        elif self.trial_horizon == 1 and self._trial_scale() == 1.0:
            tried = [self._try(grads, self.mcv_candidates[i], batches) for i in range(k)]
        else:
            scale = self._trial_scale()
            tried = [
                self._try_horizon(grads, self.mcv_candidates[i] * scale, batches)
                for i in range(k)
            ]
        val_losses = trials.as_scores(tf.stack([t[0] for t in tried]))
        if self.alpha > 0:
            train_losses = trials.as_scores(tf.stack([t[1] for t in tried]))
            scores = trials.as_scores(
                (1.0 - self.alpha) * val_losses + self.alpha * train_losses
            )
        else:
            scores = val_losses
        return {"pre": pre, "val_losses": val_losses, "scores": scores, **applied}

    def _try_horizon(self, grads, lr, batches):
        """Losses after `trial_horizon` optimizer steps at `lr` with `grads`, then restore."""
        for _ in range(self.trial_horizon):
            self._apply(grads, lr)
        losses = [self._eval(b) for b in batches]
        self._mcv.step_snapshot.restore()
        return losses

    def _update_trials(self, grads, k, batches):
        """Take the actual step, then try candidates along it (trial_step="update").

        ```
        w1 = apply(grads, lr)                      # the actual step, kept
        trial_k = w0 + (c_k / lr_avg) * (w1 - w0)  # then back to w1
        ```
        Only weights move in a trial; the optimizer's slots are already those
        of the actual step. Returns the per-candidate losses and the LR used.
        """
        variables = self.trainable_variables
        # The step snapshot holds the trainable variables first (`_mcv_build`).
        w0 = [tf.convert_to_tensor(c) for c in self._mcv.step_snapshot.copies[: len(variables)]]
        lr = self._apply(grads, self.mcv_lr)
        w1 = [tf.convert_to_tensor(v) for v in variables]
        tried = []
        for i in range(k):
            ratio = self.trial_horizon * self.mcv_candidates[i] / self.mcv_lr_avg
            for v, a, b in zip(variables, w0, w1):
                v.assign(a + tf.cast(ratio, a.dtype) * (b - a))
            tried.append([self._eval(batch) for batch in batches])
        for v, b in zip(variables, w1):
            v.assign(b)
        return tried, lr

    def _finish_step(self, grads, tried, has_val):
        pre, val_losses, scores = tried["pre"], tried["val_losses"], tried["scores"]
        pad = [[0, self.mcv_score_sum.shape[0] - self._mcv.mode[1]]]
        on = tf.cast(has_val, tf.float64)
        # inf * 0 is NaN: select instead of multiplying on steps without trials.
        zero = tf.zeros_like(self.mcv_score_sum)
        self.mcv_score_sum.assign_add(
            tf.where(has_val, tf.pad(tf.cast(scores, tf.float64), pad), zero)
        )
        self.mcv_val_sum.assign_add(
            tf.where(has_val, tf.pad(tf.cast(val_losses, tf.float64), pad), zero)
        )
        self.mcv_pre_sum.assign_add(tf.where(has_val, tf.cast(pre, tf.float64), 0.0))
        self.mcv_trial_count.assign_add(on)
        if self.selection == "tolerant":
            padded = tf.pad(tf.cast(val_losses, tf.float64), pad)
            outer = padded[:, None] * padded[None, :]
            self.mcv_cross_sum.assign_add(tf.where(has_val, outer, tf.zeros_like(outer)))
        if "applied_lr" in tried:  # trial_step="update" took the actual step already
            lr = tried["applied_lr"]
        else:
            lr = self._apply(grads, self.mcv_lr)
        return {"lr": lr, "pre_loss": pre, "discarded": None}

    def _step_cost(self):
        k = self._mcv.mode[1]
        rule = cost.mixed_score_step if self.method == 2 else cost.candidate_step
        f, b, _ = rule(k, self.alpha)
        if self.trial_step == "update":
            return (f, b, 1)
        return (f, b, 1 + k * self.trial_horizon)

    def end_epoch(self, epoch: int) -> dict:
        """Choose the next epoch's LR from this epoch's averages and reset them.

        Returns the epoch's summary, also appended to `mcv_history`: the LR
        used, the candidates, their average scores and validation losses, the
        average pre-step loss and the next LR. Called by `EpochLRSelection`.
        """
        k = int(self.mcv_num_candidates.numpy())
        count = float(self.mcv_trial_count.numpy())
        lr = float(self.mcv_lr.numpy())
        candidates = [float(c) for c in self.mcv_candidates.numpy()[:k]]
        entry = {"epoch": int(epoch), "lr": lr, "candidates": candidates, "trial_steps": int(count)}
        if count > 0:
            with np.errstate(invalid="ignore"):
                avg_scores = self.mcv_score_sum.numpy()[:k] / count
                avg_val = self.mcv_val_sum.numpy()[:k] / count
            avg_pre = float(self.mcv_pre_sum.numpy()) / count
            next_lr = self._select_next_lr(entry, epoch, lr, avg_scores, avg_val, avg_pre, count)
            entry.update(
                candidate_losses=[float(v) for v in avg_scores],
                candidate_val_losses=[float(v) for v in avg_val],
                pre_loss=avg_pre,
                next_lr=next_lr,
            )
            next_candidates = thesis_rules.candidate_list(next_lr)
            slots = self.mcv_candidates.shape[0]
            padded = np.zeros(slots)
            padded[: len(next_candidates)] = next_candidates
            self.mcv_lr.assign(next_lr)
            self.mcv_candidates.assign(padded)
            self.mcv_num_candidates.assign(len(next_candidates))
        else:
            entry.update(candidate_losses=None, candidate_val_losses=None, pre_loss=None, next_lr=lr)
        for v in (self.mcv_score_sum, self.mcv_val_sum):
            v.assign(np.zeros(v.shape))
        if self.selection == "tolerant":
            self.mcv_cross_sum.assign(np.zeros(self.mcv_cross_sum.shape))
        self.mcv_pre_sum.assign(0.0)
        self.mcv_trial_count.assign(0.0)
        self._mcv.history.append(entry)
        return entry

    def _select_next_lr(self, entry, epoch, lr, avg_scores, avg_val, avg_pre, count):
        """The next LR by `selection` and `smoothing`; extra details go into `entry`."""
        candidates = entry["candidates"]
        if self.selection == "tolerant":
            k = len(candidates)
            sums = self.mcv_val_sum.numpy()[:k]
            cross = self.mcv_cross_sum.numpy()[:k, :k]
            chosen = selection_rules.tolerant_select(candidates, sums, cross, count, self.tolerance)
            best = int(np.argmin(thesis_rules.as_scores(avg_val)))
            errors = selection_rules.paired_standard_errors(sums, cross, count, best)
            entry["candidate_standard_errors"] = [float(e) for e in errors]
        elif self.selection == "fraction":
            chosen = selection_rules.fraction_select(candidates, avg_val, avg_pre, self.fraction)
        else:
            chosen = thesis_rules.select_lr(self.method, candidates, avg_scores, avg_val, avg_pre)
        if self.smoothing == 1.0 or epoch <= 1:
            # The first decision leaves the initial list's smallest LR: not smoothed.
            return chosen
        entry["selected_lr"] = chosen
        return selection_rules.smooth_lr(lr, chosen, self.smoothing)

    def fit(self, *args, callbacks=None, **kwargs):
        return super().fit(*args, callbacks=selection_first(callbacks), **kwargs)
