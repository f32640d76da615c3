"""The base of every model that chooses its learning rate while it trains.

`LRModel` is a `keras.Model` with what every such model shares, whatever its
algorithm: construction from inputs and outputs or by wrapping a model
(`wrap`), state variables saved with the model (`mcv_*`), a per-epoch decision
log (`mcv_history`), one compiled function per kind of step chosen in Python
(`make_train_function`), the gradient/apply/metrics parts of a Keras train
step, operation counters (thesis Table 4.1) and the input checks run before
training. The batch-splitting models of the thesis build on it in
`keras_mcv.models.split`; the learning-rate race in `keras_mcv.models.race`.

References: thesis chapter 3.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf

from keras_mcv.models.wrapping import Wrappable

MCV_METRIC_NAMES = ("lr", "mcv_val_loss", "discard_rate", "nonfinite_steps")
"""Logs of the training step that are not the network's metrics (kept out of `evaluate`)."""


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
        # The MCV state variables: kept here, out of Keras's weight tracking.
        self.state = []
        # The training half of the step being traced: what an empty
        # validation half is replaced with so that no forward runs on an
        # empty batch (`LRModel._nonempty`).
        self.filler = None
        # `train_on_batch` loops: the epoch and its steps so far (None: none yet).
        self.loop = None
        # A one-step check of the first batch, for inputs that cannot be peeked.
        self.first_batch_check = None


class LRModel(Wrappable, keras.Model):
    """Base class of the models that choose or judge the learning rate in `fit`.

    Build it like a functional `keras.Model` (`Model(inputs, outputs, ...)`) or
    wrap an existing model with `wrap`. Subclasses implement `_mcv_build`
    (pre-allocated state, made once outside `tf.function`), `_next_mode`
    (which compiled step runs next) and `train_step`.

    The method's state (`mcv_state_variables`: LR, candidates, votes,
    accumulators, counters) is not part of the user's weights: `get_weights`,
    `set_weights`, `count_params` and `summary` see the network alone. It is
    saved with the model all the same (`save_own_variables`): in the `.keras`
    file, in `save_weights` files and in `keras.callbacks.BackupAndRestore`
    backups, together with `mcv_history`.

    Training with `train_on_batch`: models that decide at epoch ends
    (`SearchModel`, `RaceModel`) need `steps_per_epoch`, and then close an
    epoch (run `end_epoch`) after every `steps_per_epoch` calls; without it
    they refuse `train_on_batch`. Models that decide at every step
    (`DiscardModel`, `VotingModel`) train with `train_on_batch` as with `fit`
    and refuse `steps_per_epoch`.

    Args:
        steps_per_epoch: `train_on_batch` calls per epoch, for the models that
            decide at epoch ends; `fit` counts its own epochs and ignores it.
            Defaults to None (`train_on_batch` refused by those models).
        **kwargs: the arguments of `keras.Model`.

    Class attributes:
        method_name: the algorithm's short name.
        chooses_lr: True when the model sets the optimizer's learning rate
            itself; such models refuse an optimizer whose learning rate is a
            schedule, before training.

    References: thesis chapter 3.
    """

    method_name = None
    chooses_lr = True

    def __init__(self, *args, steps_per_epoch=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._mcv = _Runtime()
        if steps_per_epoch is not None:
            if not self._decides_per_epoch():
                raise ValueError(
                    f"{type(self).__name__} decides at every step, so `steps_per_epoch` "
                    "does not apply: it trains with `train_on_batch` as with `fit`. Remove it."
                )
            if (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                    or steps_per_epoch < 1):
                raise ValueError(
                    f"`steps_per_epoch` must be an integer >= 1, got {steps_per_epoch!r}: "
                    "the number of `train_on_batch` calls in an epoch."
                )
        self.steps_per_epoch = steps_per_epoch
        self.mcv_ops = self._state_weight("mcv_ops", (3,), "int64", "zeros")
        self.lr_tracker = keras.metrics.Mean(name="lr")
        self.mcv_val_loss_tracker = keras.metrics.Mean(name="mcv_val_loss")

    # ------------------------------------------------------------------ build

    def _state_weight(self, name, shape, dtype, initializer):
        """A non-trainable variable of MCV state, saved with the model but not one of its weights.

        Made with `keras.Variable` rather than `add_weight`, and kept out of
        Keras's tracking (`__setattr__`), so that the user's weight list and
        parameter counts are the network's; `save_own_variables` saves it.
        `only_first_replica`: every replica computes the same value (decisions
        use losses reduced across replicas), so one copy is authoritative.
        """
        if any(v.name == name for v in self._mcv.state):
            raise ValueError(f"MCV state variable {name!r} is created twice.")
        with keras.name_scope(self.name):
            v = keras.Variable(
                initializer,
                shape=shape,
                dtype=dtype,
                trainable=False,
                name=name,
                aggregation="only_first_replica",
            )
        self._mcv.state.append(v)
        return v

    def __setattr__(self, name, value):
        # Keras tracks every variable assigned to a layer attribute into its
        # weights; MCV state variables are set as plain attributes instead.
        runtime = self.__dict__.get("_mcv")
        if runtime is not None and any(value is v for v in runtime.state):
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    @property
    def _mcv_state(self) -> list:
        return self._mcv.state

    @property
    def mcv_state_variables(self) -> list:
        """The variables of MCV state (LR, candidates, votes, accumulators, counters)."""
        return list(self._mcv.state)

    def network_variables(self) -> list:
        """Every model variable that is not MCV state (weights, BN statistics, seeds, metrics)."""
        state = {id(v) for v in self._mcv.state}
        return [v for v in self.variables if id(v) not in state]

    def get_config(self):
        config = super().get_config()
        config.update(steps_per_epoch=self.steps_per_epoch)
        return config

    # ------------------------------------------------------------- saving

    def save_own_variables(self, store):
        """Save the MCV state variables and `mcv_history` with the model's own variables.

        Keys: the variables' names (`mcv_lr`, ...), `mcv_history` (its JSON
        text as bytes) and what `_save_method_state` adds.
        """
        super().save_own_variables(store)
        for v in self._mcv.state:
            store[v.name] = v
        store["mcv_history"] = _json_bytes(self._mcv.history)
        self._save_method_state(store)

    def load_own_variables(self, store):
        """Load what `save_own_variables` saved."""
        keys = set(store.keys())
        own = self._trainable_variables + self._non_trainable_variables
        for i, v in enumerate(own):
            v.assign(store[f"{i}"])
        missing = [v.name for v in self._mcv.state if v.name not in keys]
        if missing:
            raise ValueError(
                f"The saved {type(self).__name__} has no MCV state {missing}: it was "
                "saved by another model class or another configuration. Load it into "
                "the model that saved it."
            )
        for v in self._mcv.state:
            v.assign(store[v.name])
        if "mcv_history" in keys:
            self._mcv.history[:] = json.loads(bytes(np.asarray(store["mcv_history"])).decode())
        self._load_method_state(store, keys)

    def _save_method_state(self, store) -> None:
        """Extra state a subclass saves with the model. Default: none."""

    def _load_method_state(self, store, keys) -> None:
        """Load what `_save_method_state` saved. Default: nothing."""

    @property
    def mcv_history(self) -> list:
        """One dict per finished epoch: candidates, their average losses, chosen LR."""
        return self._mcv.history

    @property
    def trace_count(self) -> int:
        """How many times `train_step` has been traced (each trace runs its Python once)."""
        return self._mcv.traces

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        self._check_optimizer()
        # A new optimizer has new variables: snapshots of the old ones would
        # protect nothing. They are made again for the next step.
        self._mcv.state_snapshot = self._mcv.step_snapshot = None
        self._on_compile()

    def _on_compile(self) -> None:
        """What a subclass resets when compiled again. Default: nothing."""

    def compile_from_config(self, config):
        # Keras skips compiling a loaded model whose class overrides `compile`;
        # ours only adds a check, so compile as Keras would.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def _check_optimizer(self):
        """Refuse what cannot work before any training time is spent."""
        if self.chooses_lr and getattr(self, "optimizer", None) is not None and self._uses_schedule():
            raise ValueError(
                f"{type(self).__name__} chooses the learning rate itself, so the "
                "optimizer's learning_rate must be a plain number, not a schedule. "
                "Pass e.g. "
                "`keras.optimizers.SGD(momentum=0.9)`, or use DiscardModel to keep "
                "a schedule."
            )

    def _uses_schedule(self) -> bool:
        # A plain learning rate is a variable; a schedule (or callable) is
        # evaluated by the `learning_rate` property into a tensor.
        return not isinstance(self.optimizer.learning_rate, keras.Variable)

    def _mcv_build(self):
        """Create the model's pre-allocated state once, outside `tf.function`."""
        raise NotImplementedError

    # --------------------------------------------------------------- dispatch

    def make_train_function(self, force=False):
        """One compiled function per step kind, chosen per step in Python.

        Different kinds of step (with trials and without, racing and plain)
        are different graphs; choosing between them in Python rather than with
        `tf.cond` keeps `optimizer.apply` out of control flow and each graph
        traced once.
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
                super(LRModel, self).make_train_function(force=True)
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
        """The kind of the next step, a tuple whose first item names it."""
        raise NotImplementedError

    def _after_call(self, mode) -> None:
        """Python work after a step has run (eagerly, between steps). Default: none."""

    # ----------------------------------------------------------------- step

    def _gradient(self, batch, weight=None):
        """Loss, predictions and gradients on `batch`; `weight` scales the loss differentiated.

        An empty `batch` gives a zero gradient (from a forward on the step's
        training half, `_nonempty`).
        """
        n = batch_size_of(batch)
        substituted = self._mcv.filler is not None and batch is not self._mcv.filler
        x, y, sample_weight = self._nonempty(batch, n)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            weighted = loss if weight is None else loss * tf.cast(weight, loss.dtype)
            if substituted:
                weighted = weighted * tf.cast(n > 0, weighted.dtype)
            scaled = self.optimizer.scale_loss(weighted)
        grads = tape.gradient(scaled, self.trainable_variables)
        return loss, y_pred, grads

    def _nonempty(self, batch, n):
        """`batch`, or the step's training half when `batch` has no example.

        A graph of stacked Conv2D layers cannot run on an empty batch, so a
        forward on an empty validation half runs on the training half instead
        (`_mcv.filler`, set while `train_step` is traced); whatever it computes
        is then ignored (its loss weighs 0 and its decisions are masked).
        """
        filler = self._mcv.filler
        if filler is None or batch is filler:
            return batch
        leaves = tf.nest.flatten(batch)
        fills = tf.nest.flatten(filler)
        kept = [i for i, t in enumerate(leaves) if t is not None]
        if len(leaves) != len(fills) or not kept:
            return batch
        chosen = tf.cond(n > 0, lambda: [leaves[i] for i in kept], lambda: [fills[i] for i in kept])
        chosen = chosen if isinstance(chosen, (list, tuple)) else [chosen]
        out = list(leaves)
        for i, t in zip(kept, chosen):
            out[i] = t
        return tf.nest.pack_sequence_as(batch, out)

    def _apply(self, grads, lr=None):
        """Apply `grads` with the optimizer, at `lr` if given; returns the LR used."""
        if lr is not None:
            self.optimizer.learning_rate.assign(tf.cast(lr, self.optimizer.learning_rate.dtype))
        used = tf.identity(tf.cast(self.optimizer.learning_rate, tf.float32))
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return used

    def _update_metrics(self, train, loss, y_pred, outcome, has_val):
        x, y, sample_weight = train
        loss_tracker = next(m for m in self.metrics if m.name == "loss")
        # `loss` is already the global training-half loss; weighting each
        # replica's update by its shard size keeps the epoch mean exact.
        loss_tracker.update_state(loss, sample_weight=batch_size_of(train))
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

    # ---------------------------------------------------------------- fit

    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        self._mcv.first_batch_check = None
        self._check_batch_size(x, batch_size)
        if y is not None and len(self.outputs) == 1:
            check_labels(y, getattr(self, "loss", None), tuple(self.outputs[0].shape))
        callbacks = list(kwargs.get("callbacks") or [])
        self._check_lr_callbacks(callbacks)
        self._mcv.steps = None
        self._mcv.loop = None
        callbacks = _with_backup_dirs(callbacks)
        if self._refuses_lr_callbacks():
            shared = {}
            callbacks = [_LRBefore(shared)] + callbacks + [_LRAfter(shared)]
        kwargs["callbacks"] = callbacks
        return super().fit(x, y, batch_size, *args, **kwargs)

    # ------------------------------------------------- the user's LR controls

    def _decides_per_epoch(self) -> bool:
        """True for the models that decide at epoch ends (they have `end_epoch`)."""
        return callable(getattr(type(self), "end_epoch", None))

    def _refuses_lr_callbacks(self) -> bool:
        """True when the model sets the LR at every step, so that no callback may."""
        return self.chooses_lr

    def _lr_choice(self) -> str:
        return "at the end of every epoch" if self._decides_per_epoch() else "at every step"

    def _check_lr_callbacks(self, callbacks) -> None:
        """Refuse, before training, the Keras callbacks that set the LR of a model that sets it."""
        if not self._refuses_lr_callbacks():
            return
        from keras_mcv.sequence_update import SequenceUpdate

        setters = (keras.callbacks.LearningRateScheduler, keras.callbacks.ReduceLROnPlateau,
                   SequenceUpdate)
        for c in callbacks:
            if isinstance(c, setters):
                raise ValueError(
                    f"{type(self).__name__} chooses the learning rate itself "
                    f"({self._lr_choice()}), so {type(c).__name__} would have no effect. "
                    "Remove it. To combine a learning-rate search with your own LR "
                    "callbacks, use RaceModel (once its race has chosen, the LR is the "
                    "optimizer's and callbacks act on it) or DiscardModel (it steps at the "
                    "optimizer's LR, schedules and callbacks included)."
                )

    # ------------------------------------------------------ train_on_batch

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """Keras's `train_on_batch`; epochs are counted in calls (`steps_per_epoch`).

        Models that decide at epoch ends close an epoch after every
        `steps_per_epoch` calls (the decision and the `mcv_history` entry of
        `fit`'s epoch end) and refuse `train_on_batch` without it.
        """
        per_epoch = self._decides_per_epoch()
        if per_epoch and self.steps_per_epoch is None:
            name = type(self).__name__
            raise ValueError(
                f"{name} decides at the end of every epoch, and train_on_batch has no "
                f"epochs. Build it with steps_per_epoch=N ({name}(..., steps_per_epoch=N) "
                f"or {name}.wrap(net, steps_per_epoch=N)): every N train_on_batch calls "
                "then close an epoch. Or train with fit."
            )
        loop = None
        if per_epoch:
            if self._mcv.loop is None:
                self._mcv.loop = {"epoch": len(self._mcv.history), "step": 0}
            loop = self._mcv.loop
            if loop["step"] == 0:
                self._loop_epoch_begin(loop["epoch"])
        logs = super().train_on_batch(x, y, sample_weight, class_weight, return_dict)
        if loop is not None:
            loop["step"] += 1
            if loop["step"] >= self.steps_per_epoch:
                self._loop_epoch_end(loop["epoch"])
                loop["epoch"] += 1
                loop["step"] = 0
        return logs

    def _loop_epoch_begin(self, epoch: int) -> None:
        """A `train_on_batch` epoch begins. Default: nothing."""

    def _loop_epoch_end(self, epoch: int) -> None:
        """A `train_on_batch` epoch ends: the decision `fit` takes at an epoch's end."""
        self.end_epoch(epoch + 1)

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
        """Refuse a batch size the algorithm cannot use. Default: any."""
        return None

    def ops_counts(self) -> dict:
        """Forward, backward and step operations run so far (in-graph counters)."""
        f, b, s = (int(v) for v in np.asarray(self.mcv_ops.numpy()))
        return {"forward": f, "backward": b, "step": s}


class _LRBefore(keras.callbacks.Callback):
    """Reads the optimizer's LR before the user's callbacks run (see `_LRAfter`)."""

    def __init__(self, shared):
        super().__init__()
        self.shared = shared

    def _read(self, where):
        self.shared["lr"] = _read_lr(self.model)
        self.shared["where"] = where

    def on_epoch_begin(self, epoch, logs=None):
        self._read(f"at the start of epoch {epoch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._read(f"at the end of epoch {epoch + 1}")

    def on_train_batch_begin(self, batch, logs=None):
        self._read(f"before step {batch + 1} of an epoch")

    def on_train_batch_end(self, batch, logs=None):
        self._read(f"after step {batch + 1} of an epoch")


class _LRAfter(_LRBefore):
    """Refuses a change of the LR by a callback, for models that set the LR at every step."""

    def _read(self, where):
        before, now = self.shared.get("lr"), _read_lr(self.model)
        if before is None or now == before:
            return
        model = self.model
        raise ValueError(
            f"A callback changed the optimizer's learning rate from {before:g} to {now:g} "
            f"{self.shared['where']}. {type(model).__name__} chooses the learning rate "
            f"itself ({model._lr_choice()}) and would overwrite it. Remove that callback; "
            "to set the LR yourself, use RaceModel (the LR is yours once its race is "
            "over) or DiscardModel (it steps at the optimizer's LR)."
        )


def _read_lr(model):
    lr = model.optimizer.learning_rate
    return float(np.asarray(lr.numpy() if hasattr(lr, "numpy") else lr))


def _json_bytes(value):
    """`value` as JSON text in a uint8 array (what a weights store can hold)."""
    text = json.dumps(value, default=lambda v: float(np.asarray(v)))
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


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


def batch_size_of(batch):
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
