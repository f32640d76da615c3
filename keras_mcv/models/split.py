"""The batch-splitting base of the thesis's models: trials on half of every batch.

Every batch that `fit` delivers is split into a training half (`batch_1`) and
a validation half (`batch_2`). The gradient is computed once on `batch_1`;
candidate steps are tried and judged on `batch_2`, and every variable they
touched is restored bit for bit before the actual step is taken:

```
g = grad L(batch_1)                      # the actual step's forward + backward
snapshot(weights, optimizer slots, BN statistics, seed states, metrics)
pre = L(batch_2)                         # restored after
for lr in candidates:                    # restored after each
    apply(g, lr); loss[lr] = L(batch_2)
decide; apply(g, chosen lr)              # the step plain Keras would take
```
The three families differ in what they try and how they decide:
`DiscardModel` (thesis Algorithm 3), `VotingModel` (Algorithms 4-6) and
`SearchModel` (Algorithms 7-8, Methods 1-3), each in its own module.

References: thesis chapter 3.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from keras_mcv import cost, trials
from keras_mcv.models.base import LRModel, batch_size_of


class MCVModel(LRModel):
    """Base of the batch-splitting MCV models: the trial machinery they share.

    Build it like a functional `keras.Model` (`Model(inputs, outputs, ...)`) or
    wrap an existing model with `wrap`. Subclasses implement `_run_trials`
    (which must leave every variable as it found it) and `_finish_step`.

    Args:
        validation_fraction: fraction `f` of each batch that validates: the last
            `floor(f * n)` examples of a batch of `n`. Defaults to 0.5.
        trial_every: run the trials on every N-th step only (the actual step
            runs on every step, on the training half). Defaults to 1, the thesis.
        trial_training: evaluate candidates with `training=True` semantics
            (BatchNorm batch statistics, the same dropout mask for every
            candidate of a step). False evaluates in inference mode.
            Defaults to True.
        trial_batch_size: judge the trials (the pre-step loss and every
            candidate's loss) on only the first `trial_batch_size` examples of
            the validation half, which `fit`'s shuffling makes a random
            sub-sample; under `tf.distribute`, on the first
            `ceil(trial_batch_size / replicas)` of each replica's half. Cheaper
            trials, noisier decisions: it changes the statistics, so it is off
            by default (None: the whole validation half, the thesis). The
            validation half still trains in full with
            `SearchModel(train_validation_half=True)`. Operation counts
            (`ops_counts`) count forwards, whatever their size. Measured in
            `saved_runs/benchmarks/trial_batch_size/`.

    Distributed training (`tf.distribute.MirroredStrategy`,
    `MultiWorkerMirroredStrategy`): each replica splits its own shard of the
    global batch, so the training half is the union of the shards' first
    halves. Gradients are summed across replicas as in plain Keras, and every
    loss a decision reads is the global one (`trials.replica_mean`, weighted by
    each shard's number of examples), so every replica takes the same decision
    and keeps identical weights. Snapshots are per replica.

    Non-finite steps: `DiscardModel` and `VotingModel` never apply a step whose
    training-half loss is non-finite or that leaves a non-finite weight or
    optimizer variable; they restore it and count it in the per-epoch log
    `nonfinite_steps`. `SearchModel` keeps the thesis rule: `MCVStopping`
    stops and restores the best epoch.

    References: thesis chapter 3.
    """

    # Restore (skip) a step that is non-finite; see the class docstring.
    skip_nonfinite_steps = False

    def __init__(
        self,
        *args,
        validation_fraction: float = 0.5,
        trial_every: int = 1,
        trial_training: bool = True,
        trial_batch_size=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if not isinstance(validation_fraction, (int, float)) or not (
            0.0 < float(validation_fraction) < 1.0
        ):
            raise ValueError(
                f"`validation_fraction` must be in (0, 1), got {validation_fraction!r}. "
                "Use e.g. 0.5 to validate on half of each batch."
            )
        if isinstance(trial_every, bool) or not isinstance(trial_every, int) or trial_every < 1:
            raise ValueError(
                f"`trial_every` must be an integer >= 1, got {trial_every!r}. "
                "Use 1 to run trials on every step (the thesis)."
            )
        if trial_batch_size is not None and (
            isinstance(trial_batch_size, bool)
            or not isinstance(trial_batch_size, int)
            or trial_batch_size < 1
        ):
            raise ValueError(
                f"`trial_batch_size` must be None or an integer >= 1, got {trial_batch_size!r}. "
                "Use None to judge trials on the whole validation half (the thesis)."
            )
        self.validation_fraction = float(validation_fraction)
        self.trial_every = int(trial_every)
        self.trial_batch_size = trial_batch_size
        self.trial_training = bool(trial_training)
        self.mcv_untrialed_steps = self._state_weight(
            "mcv_untrialed_steps", (), "int64", "zeros"
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            validation_fraction=self.validation_fraction,
            trial_every=self.trial_every,
            trial_training=self.trial_training,
            trial_batch_size=self.trial_batch_size,
        )
        return config

    def _mcv_build(self):
        """Create the snapshots once, outside `tf.function`."""
        if self._mcv.state_snapshot is not None:
            return
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        state_ids = {id(v) for v in self._mcv_state}
        trainable_ids = {id(v) for v in self.trainable_variables}
        # A training-mode forward changes BatchNorm statistics, seed states and
        # (through compute_loss) loss-tracking metrics; a step changes weights
        # and every optimizer variable, `iterations` included.
        forward_touched = [
            v
            for v in self.variables + self.metrics_variables
            if id(v) not in state_ids and id(v) not in trainable_ids
        ]
        step_touched = list(self.trainable_variables) + list(self.optimizer.variables)
        with self.distribute_strategy.scope():
            self._mcv.state_snapshot = trials.Snapshot(forward_touched, "mcv_state")
            self._mcv.step_snapshot = trials.Snapshot(step_touched, "mcv_step")

    def _next_mode(self) -> tuple:
        """The kind of the next step: trials on every `trial_every`-th step, else plain."""
        runtime = self._mcv
        if runtime.steps is None:
            # Every step, with or without trials, counts one backward pass.
            runtime.steps = int(np.asarray(self.mcv_ops.numpy())[1])
        trial = runtime.steps % self.trial_every == 0
        runtime.steps += 1
        if trial and runtime.first_batch_check == "pending":
            runtime.first_batch_check = int(self.mcv_untrialed_steps.numpy())
        return self._trial_mode() if trial else ("plain",)

    def _after_call(self, mode) -> None:
        """After the first trial step of a `fit` whose batches could not be read before."""
        check = self._mcv.first_batch_check
        if mode[0] == "plain" or not isinstance(check, int):
            return
        self._mcv.first_batch_check = None
        if int(self.mcv_untrialed_steps.numpy()) > check:
            raise ValueError(
                "The first batch could not be split into a training half and a "
                f"validation half of {self.validation_fraction:g} of the batch: it is "
                "too small. Use batches of at least "
                f"{max(2, math.ceil(1 / self.validation_fraction))} examples."
            )

    def _trial_mode(self):
        return ("trial",)

    # ----------------------------------------------------------------- step

    def train_step(self, data):
        self._mcv.traces += 1
        mode = self._mcv.mode
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        train, val, _ = trials.split_batch(
            (x, y, sample_weight), self.validation_fraction
        )
        # Whether the *global* validation half is empty: a replica's shard of a
        # short last batch may have no validation example while another has,
        # and every replica must take the same branch-free decision.
        n_train = batch_size_of(train)
        has_val = trials.replica_sum(batch_size_of(val)) > 0
        # No forward runs on an empty validation half (`_nonempty`): it runs on
        # the training half instead and its result is ignored.
        self._mcv.filler = train
        val_nonempty = has_val
        if mode[0] == "plain":
            has_val = tf.constant(False)
        loss, y_pred, grads = self._gradient(train)
        global_loss = trials.replica_mean(tf.cast(loss, tf.float32), n_train)
        if mode[0] == "plain":
            if self.skip_nonfinite_steps:
                self._mcv.step_snapshot.save()
            lr = self._apply(grads, self._current_lr())
            outcome = {"lr": lr, "pre_loss": None, "discarded": None}
            if self.skip_nonfinite_steps:
                skip = self._nonfinite_step(global_loss)
                self._mcv.step_snapshot.restore_where(skip)
                outcome["nonfinite"] = skip
            self.mcv_ops.assign_add(tf.constant(cost.BASELINE, tf.int64))
        else:
            self._mcv.state_snapshot.save()
            self._mcv.step_snapshot.save()
            tried = self._run_trials(grads, train, self._trial_part(val))
            tried["train_loss"] = global_loss
            outcome = self._finish_step(grads, tried, has_val)
            self.mcv_ops.assign_add(tf.constant(self._step_cost(), tf.int64))
        self._after_step(val, val_nonempty)
        self._mcv.filler = None
        self.mcv_untrialed_steps.assign_add(tf.cast(tf.logical_not(has_val), tf.int64))
        logs = self._update_metrics(train, global_loss, y_pred, outcome, has_val)
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3.15 reduces the step's logs across workers with
            # `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars.
            # Our logs are metric results, equal on every replica, so a
            # one-element vector reduces back to the same scalar.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def _trial_part(self, val):
        """The part of the validation half that judges trials (`trial_batch_size`)."""
        if self.trial_batch_size is None:
            return val
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        n = max(1, math.ceil(self.trial_batch_size / replicas))
        return tf.nest.map_structure(lambda t: None if t is None else t[:n], val)

    def _nonfinite_step(self, train_loss):
        """True when the step just applied must be skipped: non-finite loss or result.

        Read after the step: every replica holds the same (all-reduced) update
        and the same global loss, so every replica agrees.
        """
        step_vars = self._mcv.step_snapshot.variables
        return tf.logical_or(
            tf.logical_not(tf.math.is_finite(train_loss)),
            tf.logical_not(trials.all_finite(step_vars)),
        )

    def _eval(self, batch):
        """Loss on `batch` (reduced across replicas), then undo the forward's side effects.

        An empty `batch` (a validation half of a batch too short to split)
        has loss 0 and weighs nothing across replicas; no forward runs on it.
        """
        n = batch_size_of(batch)
        x, y, sample_weight = self._nonempty(batch, n)
        y_pred = self(x, training=self.trial_training)
        loss = self.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
            training=self.trial_training,
        )
        loss = tf.where(n > 0, tf.cast(loss, tf.float32), 0.0)
        loss = trials.replica_mean(loss, n)
        self._mcv.state_snapshot.restore()
        return loss

    def _try(self, grads, lr, batches):
        """Losses on `batches` after one candidate step at `lr`, then restore the step."""
        self._apply(grads, lr)
        losses = [self._eval(b) for b in batches]
        self._mcv.step_snapshot.restore()
        return losses

    # -------------------------------------------------------------- hooks

    def _current_lr(self):
        """The LR of a step without trials (None: the optimizer's own)."""
        return None

    def _run_trials(self, grads, train, val) -> dict:
        """Evaluate the candidates; every variable ends as it started."""
        raise NotImplementedError

    def _finish_step(self, grads, tried, has_val) -> dict:
        """Decide and take the actual step; returns `lr`, `pre_loss`, `discarded`."""
        raise NotImplementedError

    def _step_cost(self):
        raise NotImplementedError

    def _after_step(self, val, has_val):
        """Runs after every actual step, with or without trials. Default: nothing."""

    def _check_batch_size(self, x, batch_size):
        """A batch must split into a non-empty training and validation half.

        Read before training: the batch size of arrays (or their length, if
        shorter), the static batch size of a `tf.data.Dataset` or else the
        size of its first batch, the first batch of a `keras.utils.PyDataset`.
        Other inputs (Python generators) are checked on the first trial step.
        """
        size = _first_batch_size(x, batch_size)
        if size is None:
            self._mcv.first_batch_check = "pending"
            return
        n_val = math.floor(self.validation_fraction * size)
        if size < 2 or n_val < 1:
            raise ValueError(
                f"batch_size={size} cannot be split into a training half and "
                f"a validation half of {self.validation_fraction:g} of the batch. "
                f"Use batch_size >= {max(2, math.ceil(1 / self.validation_fraction))}."
            )


def _first_batch_size(x, batch_size):
    """The size of the first batch `fit` will take from `x`, or None when it cannot be read."""
    if x is None:
        return None
    if isinstance(x, tf.data.Dataset):
        dim = tf.nest.flatten(x.element_spec)[0].shape
        if dim.rank and dim[0] is not None:
            return int(dim[0])
        for first in x.take(1):
            return int(batch_size_of(first))
        return None
    if isinstance(x, keras.utils.PyDataset):
        if len(x) == 0:
            return None
        first = x[0]
        return int(batch_size_of(first[0] if isinstance(first, tuple) else first))
    flat = tf.nest.flatten(x)
    if not flat or not all(hasattr(t, "shape") and len(t.shape) > 0 for t in flat):
        return None
    n = int(flat[0].shape[0])
    return min(batch_size or 32, n)  # Keras's default batch size for arrays is 32
