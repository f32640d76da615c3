"""Keras models that train by micro cross-validation (MCV).

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
`SearchModel` (Algorithms 7-8, Methods 1-3).

References: thesis chapter 3; `../shared/DESIGN.md`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from keras_mcv import cost, policies, trials
from keras_mcv import selection as selection_rules

MCV_METRIC_NAMES = ("lr", "mcv_val_loss", "discard_rate", "nonfinite_steps")


class _Runtime:
    """Per-instance Python state kept out of Keras/TF attribute tracking.

    Keras and TensorFlow wrap lists and dicts assigned to a layer; this plain
    holder keeps compiled functions, snapshots and the epoch log as they are.
    """

    def __init__(self):
        self.functions = {}
        self.mode = ("trial",)
        # None: read from the `mcv_ops` counter at the first step of a `fit`,
        # so a run resumed from a backup continues the `trial_every` pattern.
        self.steps = None
        self.traces = 0
        self.state_snapshot = None
        self.step_snapshot = None
        self.history = []


class MCVModel(keras.Model):
    """Base class of the MCV models: the trial machinery shared by all methods.

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
            `saved_runs/benchmarks/trial_batch_size.md`.

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

    References: thesis chapter 3; DESIGN.md "The micro cross-validation step".
    """

    method_name = None
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
        self._mcv = _Runtime()
        self._mcv_state = []
        self.mcv_ops = self._state_weight("mcv_ops", (3,), "int64", "zeros")
        self.mcv_untrialed_steps = self._state_weight(
            "mcv_untrialed_steps", (), "int64", "zeros"
        )
        self.lr_tracker = keras.metrics.Mean(name="lr")
        self.mcv_val_loss_tracker = keras.metrics.Mean(name="mcv_val_loss")

    # ------------------------------------------------------------------ build

    @classmethod
    def wrap(cls, model: keras.Model, *, input_shape=None, name=None, **kwargs):
        """An MCV model that shares the layers (and weights) of `model`.

        Works for Functional and Sequential models with known inputs, and for
        subclassed models given `input_shape` (the shape without the batch axis).

        Args:
            model: the model to train with MCV.
            input_shape: needed only when `model` has no defined inputs.
            name: the new model's name. Defaults to `model.name`.
            **kwargs: the MCV arguments of `cls`.
        """
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError):
            inputs = outputs = None
        if inputs and outputs:
            # A one-element list would make the new model's output a list.
            inputs = inputs[0] if len(inputs) == 1 else inputs
            outputs = outputs[0] if len(outputs) == 1 else outputs
        else:
            if input_shape is None:
                raise ValueError(
                    f"Cannot wrap {type(model).__name__} {model.name!r}: it has no "
                    "defined inputs. Pass `input_shape=` (without the batch axis), "
                    "e.g. `wrap(model, input_shape=(32, 32, 3))`."
                )
            inputs = keras.Input(shape=tuple(input_shape))
            outputs = model(inputs)
        return cls(inputs, outputs, name=name or model.name, **kwargs)

    def _state_weight(self, name, shape, dtype, initializer):
        """A non-trainable variable of MCV state, saved with the model's weights.

        `only_first_replica`: every replica computes the same value (decisions
        use losses reduced across replicas), so one copy is authoritative.
        """
        v = self.add_weight(
            name=name,
            shape=shape,
            dtype=dtype,
            initializer=initializer,
            trainable=False,
            aggregation="only_first_replica",
        )
        self._mcv_state.append(v)
        return v

    @property
    def mcv_state_variables(self) -> list:
        """The variables of MCV state (LR, candidates, votes, accumulators, counters)."""
        return list(self._mcv_state)

    def network_variables(self) -> list:
        """Every model variable that is not MCV state (weights, BN statistics, seeds)."""
        state = {id(v) for v in self._mcv_state}
        return [v for v in self.variables if id(v) not in state]

    @property
    def mcv_history(self) -> list:
        """One dict per finished epoch: candidates, their average losses, chosen LR."""
        return self._mcv.history

    @property
    def trace_count(self) -> int:
        """How many times `train_step` has been traced (each trace runs its Python once)."""
        return self._mcv.traces

    def get_config(self):
        config = super().get_config()
        config.update(
            validation_fraction=self.validation_fraction,
            trial_every=self.trial_every,
            trial_training=self.trial_training,
            trial_batch_size=self.trial_batch_size,
        )
        return config

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        self._check_optimizer()

    def compile_from_config(self, config):
        # Keras skips compiling a loaded model whose class overrides `compile`;
        # ours only adds a check, so compile as Keras would.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def _check_optimizer(self):
        """Refuse what cannot work before any training time is spent."""

    def _uses_schedule(self) -> bool:
        # A plain learning rate is a variable; a schedule (or callable) is
        # evaluated by the `learning_rate` property into a tensor.
        return not isinstance(self.optimizer.learning_rate, keras.Variable)

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

    # --------------------------------------------------------------- dispatch

    def make_train_function(self, force=False):
        """One compiled function per step kind, chosen per step in Python.

        Steps with trials and steps without (`trial_every` > 1) are different
        graphs; choosing between them in Python rather than with `tf.cond`
        keeps `optimizer.apply` out of control flow and each graph traced once.
        """
        if self.train_function is not None and not force:
            return self.train_function
        self._check_optimizer()
        self._mcv_build()
        runtime = self._mcv
        runtime.functions = {}

        def function_for(mode):
            if mode not in runtime.functions:
                runtime.mode = mode
                super(MCVModel, self).make_train_function(force=True)
                runtime.functions[mode] = self.train_function
                self.train_function = dispatch
            return runtime.functions[mode]

        def dispatch(iterator):
            mode = self._next_mode()
            fn = function_for(mode)
            runtime.mode = mode  # read by train_step if this call traces
            logs = fn(iterator)
            self._after_call(mode)
            return logs

        self.train_function = dispatch
        return dispatch

    def _next_mode(self) -> tuple:
        """The kind of the next step: trials on every `trial_every`-th step, else plain."""
        runtime = self._mcv
        if runtime.steps is None:
            # Every step, with or without trials, counts one backward pass.
            runtime.steps = int(np.asarray(self.mcv_ops.numpy())[1])
        trial = runtime.steps % self.trial_every == 0
        runtime.steps += 1
        return self._trial_mode() if trial else ("plain",)

    def _after_call(self, mode) -> None:
        """Python work after a step has run (eagerly, between steps). Default: none."""

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
        n_train = _batch_size(train)
        has_val = trials.replica_sum(_batch_size(val)) > 0
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

    def _gradient(self, batch, weight=None):
        """Loss, predictions and gradients on `batch`; `weight` scales the loss differentiated."""
        x, y, sample_weight = batch
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            weighted = loss if weight is None else loss * tf.cast(weight, loss.dtype)
            scaled = self.optimizer.scale_loss(weighted)
        grads = tape.gradient(scaled, self.trainable_variables)
        return loss, y_pred, grads

    def _apply(self, grads, lr=None):
        """Apply `grads` with the optimizer, at `lr` if given; returns the LR used."""
        if lr is not None:
            self.optimizer.learning_rate.assign(tf.cast(lr, self.optimizer.learning_rate.dtype))
        used = tf.identity(tf.cast(self.optimizer.learning_rate, tf.float32))
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return used

    def _eval(self, batch):
        """Loss on `batch` (reduced across replicas), then undo the forward's side effects."""
        x, y, sample_weight = batch
        y_pred = self(x, training=self.trial_training)
        loss = self.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
            training=self.trial_training,
        )
        loss = trials.replica_mean(tf.cast(loss, tf.float32), _batch_size(batch))
        self._mcv.state_snapshot.restore()
        return loss

    def _try(self, grads, lr, batches):
        """Losses on `batches` after one candidate step at `lr`, then restore the step."""
        self._apply(grads, lr)
        losses = [self._eval(b) for b in batches]
        self._mcv.step_snapshot.restore()
        return losses

    def _update_metrics(self, train, loss, y_pred, outcome, has_val):
        x, y, sample_weight = train
        loss_tracker = next(m for m in self.metrics if m.name == "loss")
        # `loss` is already the global training-half loss; weighting each
        # replica's update by its shard size keeps the epoch mean exact.
        loss_tracker.update_state(loss, sample_weight=_batch_size(train))
        self.lr_tracker.update_state(outcome["lr"])
        weight = tf.cast(has_val, tf.float32)
        if outcome["pre_loss"] is not None:
            self.mcv_val_loss_tracker.update_state(outcome["pre_loss"], sample_weight=weight)
        if outcome["discarded"] is not None and hasattr(self, "discard_tracker"):
            self.discard_tracker.update_state(
                tf.cast(outcome["discarded"], tf.float32), sample_weight=weight
            )
        if outcome.get("nonfinite") is not None and hasattr(self, "nonfinite_tracker"):
            # Each replica adds its share: a Sum metric adds up the replicas' updates.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            self.nonfinite_tracker.update_state(
                tf.cast(outcome["nonfinite"], tf.float32) / replicas
            )
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def test_step(self, data):
        logs = super().test_step(data)
        return {k: v for k, v in logs.items() if k not in MCV_METRIC_NAMES}

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

    # ---------------------------------------------------------------- fit

    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        self._check_batch_size(x, batch_size)
        if y is not None and len(self.outputs) == 1:
            check_labels(y, getattr(self, "loss", None), tuple(self.outputs[0].shape))
        self._mcv.steps = None
        if kwargs.get("callbacks"):
            kwargs["callbacks"] = _with_backup_dirs(list(kwargs["callbacks"]))
        return super().fit(x, y, batch_size, *args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Private Keras hook, overridden because it is unavoidable: Keras 3.15
        # reduces the first distributed batch across replicas only to read its
        # shapes, and under MultiWorkerMirroredStrategy that reduce fails
        # ("Attempt to convert a value (PerReplica...)"), for any Keras model.
        # Shapes and dtypes are all the symbolic build needs, so hand it this
        # replica's part of the batch instead.
        if iterator is not None and data_batch is None and self._distribute_strategy is not None:
            strategy = self.distribute_strategy

            def local(v):
                if isinstance(v, tf.distribute.DistributedValues):
                    return strategy.experimental_local_results(v)[0]
                return v

            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _check_batch_size(self, x, batch_size):
        """A batch must split into a non-empty training and validation half."""
        if batch_size is None and isinstance(x, tf.data.Dataset):
            dim = tf.nest.flatten(x.element_spec)[0].shape
            batch_size = dim[0] if dim.rank else None
        elif batch_size is None and not isinstance(x, tf.data.Dataset) and x is not None:
            batch_size = 32  # Keras's default for arrays
        if batch_size is None:
            return
        n_val = math.floor(self.validation_fraction * batch_size)
        if batch_size < 2 or n_val < 1:
            raise ValueError(
                f"batch_size={batch_size} cannot be split into a training half and "
                f"a validation half of {self.validation_fraction:g} of the batch. "
                f"Use batch_size >= {max(2, math.ceil(1 / self.validation_fraction))}."
            )

    def ops_counts(self) -> dict:
        """Forward, backward and step operations run so far (in-graph counters)."""
        f, b, s = (int(v) for v in np.asarray(self.mcv_ops.numpy()))
        return {"forward": f, "backward": b, "step": s}


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
        return cost.step_cost("discard")


class _CandidateModel(MCVModel):
    """Shared argument checks of the models that choose the learning rate."""

    def _check_optimizer(self):
        if getattr(self, "optimizer", None) is not None and self._uses_schedule():
            raise ValueError(
                f"{type(self).__name__} chooses the learning rate itself, so the "
                "optimizer's learning_rate must be a plain number, not a schedule. "
                "Pass e.g. "
                "`keras.optimizers.SGD(momentum=0.9)`, or use DiscardModel to keep "
                "a schedule."
            )


@keras.saving.register_keras_serializable(package="keras_mcv")
class VotingModel(_CandidateModel):
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

    def __init__(self, *args, candidates=policies.DEFAULT_CANDIDATES, ema=0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.candidates = policies.validate_candidates(candidates)
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
        self.mcv_votes.assign(policies.initial_votes(k))
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
        return cost.step_cost("voting", len(self.candidates))


TUNED_OPTIONS = {
    "method": 1,
    "trial_step": "update",
    "smoothing": 0.5,
    "train_validation_half": True,
    "trial_every": 4,
}
"""The `SearchModel` options of the beyond-the-thesis mode (ISSUE #7).

Update trials along the optimizer's own step, epoch decisions smoothed in log
space, test-then-train on the validation half, trials on every 4th step:
`SearchModel(inputs, outputs, **TUNED_OPTIONS)`, or `--method tuned` on the
command line. Measured against a fixed-LR grid in `saved_runs/beyond_thesis/`:
within a point on digits on average, short on CIFAR-10, where the learning-rate
race (`keras_mcv.RaceModel`, `--method race`) meets the grid.
"""


@keras.saving.register_keras_serializable(package="keras_mcv")
class SearchModel(_CandidateModel):
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

    Beyond the thesis (ISSUE #7; the defaults are the thesis). With momentum,
    a one-step trial at the raw LR ignores that the LR acts ~1/(1 - beta)
    times over the next steps, and SGD-momentum diverges. Options:
    ```
    trial_step="update":    w1 = the actual step at lr (taken first)
                            trial_k: w0 + (c_k / lr_avg) * (w1 - w0)
                            lr_avg = EMA of the LR with SGD's momentum (else lr):
                            the scale of the momentum buffer, so a trial is the
                            steady-state step of LR c_k along the optimizer's
                            own (averaged) direction; K + 2 forward, 1 step
    trial_step="effective": one optimizer step at c_k * trial_lr_scale
                            (SGD: 1 / (1 - momentum), others 1)
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

    References: thesis section 3.2, Algorithms 7-8; ISSUE #7 (options).
    """

    method_name = "search"

    def __init__(
        self, *args, method=1, alpha=None, candidates=policies.DEFAULT_CANDIDATES,
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
        self.candidates = policies.validate_candidates(candidates)
        self._num_candidates = len(self.candidates)
        slots = max(len(self.candidates), len(policies.SEARCH_FACTORS))
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
        """SGD's momentum (the LR average's decay), 0 for other optimizers."""
        if isinstance(self.optimizer, keras.optimizers.SGD):
            return float(self.optimizer.momentum)
        return 0.0

    def _trial_scale(self) -> float:
        if self.trial_step != "effective":
            return 1.0
        if isinstance(self.optimizer, keras.optimizers.SGD):
            return selection_rules.trial_lr_scale("sgd", float(self.optimizer.momentum))
        return selection_rules.trial_lr_scale(type(self.optimizer).__name__.lower())

    def train_step(self, data):
        if self.trial_step == "update":
            # Every step, with or without trials, moves the momentum buffer.
            self.mcv_lr_avg.assign(self._next_lr_avg())
        return super().train_step(data)

    def _next_lr_avg(self):
        """`selection.lr_average` in-graph: the LR average after one more step."""
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
        _, _, grads = self._gradient(val, weight=trials.replica_share(_batch_size(val)))
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
        f, b, s = cost.step_cost(f"search{self.method}", k, self.alpha)
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
            next_candidates = policies.candidate_list(next_lr)
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
            best = int(np.argmin(policies.as_scores(avg_val)))
            errors = selection_rules.paired_standard_errors(sums, cross, count, best)
            entry["candidate_standard_errors"] = [float(e) for e in errors]
        elif self.selection == "fraction":
            chosen = selection_rules.fraction_select(candidates, avg_val, avg_pre, self.fraction)
        else:
            chosen = policies.select_lr(self.method, candidates, avg_scores, avg_val, avg_pre)
        if self.smoothing == 1.0 or epoch <= 1:
            # The first decision leaves the initial list's smallest LR: not smoothed.
            return chosen
        entry["selected_lr"] = chosen
        return selection_rules.smooth_lr(lr, chosen, self.smoothing)

    def fit(self, *args, callbacks=None, **kwargs):
        return super().fit(*args, callbacks=selection_first(callbacks), **kwargs)


def selection_first(callbacks) -> list:
    """`callbacks` with an `EpochLRSelection` (added if missing) before the others.

    The selection must run before a backup is written at epoch end, so the
    backup holds the next epoch's LR and reset accumulators.
    """
    from keras_mcv.callbacks import EpochLRSelection

    callbacks = list(callbacks or [])
    if not any(isinstance(c, EpochLRSelection) for c in callbacks):
        callbacks.insert(0, EpochLRSelection())
    selection = [c for c in callbacks if isinstance(c, EpochLRSelection)]
    return selection + [c for c in callbacks if not isinstance(c, EpochLRSelection)]


def _loss_name(loss) -> str:
    if isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        return getattr(loss, "fn", None).__name__ if hasattr(loss, "fn") else type(loss).__name__
    return getattr(loss, "__name__", "")


def check_labels(y, loss, output_shape) -> None:
    """Raise before training when labels cannot fit the loss and the model's output.

    Checked for array labels and the crossentropy losses: sparse labels must be
    integers in [0, classes) of shape (n,) or (n, 1); one-hot labels must have
    the output's shape; binary labels must lie in [0, 1].
    """
    if isinstance(y, tf.data.Dataset) or loss is None:
        return
    try:
        labels = np.asarray(y)
    except (TypeError, ValueError):
        return
    if labels.dtype == object or labels.size == 0:
        return
    name = _loss_name(loss).lower().replace("_", "")
    classes = output_shape[-1]
    if name == "sparsecategoricalcrossentropy":
        if labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 1):
            raise ValueError(
                f"Labels of shape {labels.shape} do not fit sparse_categorical_crossentropy, "
                "which takes one integer class per example, shape (n,). For one-hot labels "
                "use loss='categorical_crossentropy'."
            )
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError("sparse_categorical_crossentropy needs integer class labels; "
                             f"got non-integer values such as {labels[np.mod(labels, 1) != 0][0]!r}.")
        low, high = labels.min(), labels.max()
        if classes is not None and (low < 0 or high >= classes):
            raise ValueError(
                f"Labels range over [{low}, {high}] but the model outputs {classes} classes "
                f"(valid labels 0..{classes - 1}). Fix the labels or the output layer's units."
            )
    elif name == "categoricalcrossentropy":
        if tuple(labels.shape[1:]) != tuple(output_shape[1:]):
            raise ValueError(
                f"One-hot labels of shape {labels.shape} do not fit the model's output "
                f"{output_shape}. For integer labels use loss='sparse_categorical_crossentropy'."
            )
    elif name == "binarycrossentropy":
        if labels.min() < 0 or labels.max() > 1:
            raise ValueError(
                f"binary_crossentropy needs labels in [0, 1]; got [{labels.min()}, {labels.max()}]."
            )


def _batch_size(batch):
    """Number of examples in a (possibly empty) batch structure."""
    flat = [t for t in tf.nest.flatten(batch) if t is not None]
    return tf.shape(flat[0])[0]


def _with_backup_dirs(callbacks):
    """Give MCV callbacks the directory of a `keras.callbacks.BackupAndRestore`.

    Keras's backup holds the model's variables, MCV state included, but not
    the Python state of callbacks (the stopping rule's losses and best weights,
    the epoch summaries of `mcv_history`); those callbacks keep it in a file
    in the same directory, which Keras deletes with its own backup at the end.
    """
    from keras_mcv.callbacks import EpochLRSelection, MCVStopping

    backups = [c for c in callbacks if isinstance(c, keras.callbacks.BackupAndRestore)]
    if backups:
        for c in callbacks:
            if isinstance(c, (EpochLRSelection, MCVStopping)) and c.backup_dir is None:
                c.backup_dir = backups[0].backup_dir
    return callbacks
