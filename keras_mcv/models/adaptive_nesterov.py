"""Adaptive Nesterov: Nesterov momentum with Polyak's step size, computed every step.

The step size is not a hyperparameter: each step sets it from the batch's loss
and gradient at the look-ahead point, Polyak's rule with the optimal loss taken
to be 0. The model performs the update itself, so it is compiled without an
optimizer.

References: Mandatelli, Improved Training Methods for Neural Networks, 2018,
section 3.3 (Algorithm 5, equation 3.3.5) and section 3.4 (the clips).
"""

from __future__ import annotations

import math
import numbers
import warnings

import keras
import tensorflow as tf

from keras_mcv.models.wrapping import Wrappable

DEFAULT_MOMENTUM = 0.9
DEFAULT_GAMMA = 1.0
DEFAULT_GRAD_NORM_CLIP = (1e-4, 1e10)
DEFAULT_STEP_SIZE_CLIP = (1e-3, 0.1)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_options(momentum, gamma, grad_norm_clip, step_size_clip):
    """The options as floats, or a ValueError naming the problem and the fix."""
    if not _is_number(momentum) or not 0.0 < float(momentum) < 1.0:
        raise ValueError(
            f"`momentum` must be a number in (0, 1), got {momentum!r}. "
            f"Use e.g. {DEFAULT_MOMENTUM} (the document's value)."
        )
    if not _is_number(gamma) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(
            f"`gamma` must be a finite number > 0, got {gamma!r}. "
            f"Use e.g. {DEFAULT_GAMMA} (the document's value; Polyak's analysis "
            "takes 0 < gamma < 2)."
        )
    clips = []
    for name, value, default, low_may_be_zero in (
        ("grad_norm_clip", grad_norm_clip, DEFAULT_GRAD_NORM_CLIP, False),
        ("step_size_clip", step_size_clip, DEFAULT_STEP_SIZE_CLIP, True),
    ):
        bound = ">= 0" if low_may_be_zero else "> 0"
        fix = f"Pass a (low, high) pair with {bound} low <= high, e.g. {default}."
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise ValueError(f"`{name}` must be a (low, high) pair, got {value!r}. {fix}")
        low, high = value
        if not (_is_number(low) and _is_number(high)) or math.isnan(low) or math.isnan(high):
            raise ValueError(f"`{name}` bounds must be numbers, got {value!r}. {fix}")
        if low < 0 or (low == 0 and not low_may_be_zero) or math.isinf(low):
            raise ValueError(f"`{name}` low bound must be finite and {bound}, got {low!r}. {fix}")
        if low > high:
            raise ValueError(f"`{name}` is inverted: low {low!r} > high {high!r}. {fix}")
        clips.append((float(low), float(high)))
    return float(momentum), float(gamma), clips[0], clips[1]


@keras.saving.register_keras_serializable(package="keras_mcv")
class AdaptiveNesterovModel(Wrappable, keras.Model):
    """A model trained by Nesterov momentum with Polyak's step size (f* = 0).

    Every training step, on the batch (x, y), with alpha = `momentum`:
    ```
    w' = w - alpha * v                       # look-ahead point
    L  = L(w'; x, y)                         # the batch's training loss
    g  = grad L(w')
    eta = gamma * |L| / clip(||g||^2, *grad_norm_clip)
    eta = clip(eta, *step_size_clip)
    v  = alpha * v + eta * g
    w  = w - v                               # = w' - eta * g
    ```
    `v` starts at zero. L is the loss `compute_loss` gives (compiled loss plus
    regularization losses); under `tf.distribute` L and g are the global
    batch's (the replicas' scaled losses and gradients summed), so every
    replica computes the same step size as a single device would.

    The model owns the update: compile it without an optimizer
    (`model.compile(loss=..., metrics=...)`); passing one raises a ValueError,
    since it would never be used. The velocity `v` lives in the model as one
    non-trainable variable per trainable weight (`velocity_variables`), and
    the last step size in `step_size`: both are saved with the model (and
    appear in `get_weights()`). Velocities are made for the weights that are
    trainable when the model is built, so set `layer.trainable` before
    building it.

    `fit` logs `lr`, the mean step size over the epoch's steps, and `loss`
    (and the compiled metrics) at the look-ahead points w', where the step's
    forward pass runs.

    A non-finite loss gives a non-finite step, as with any optimizer; use
    `keras.callbacks.TerminateOnNaN` to stop there.

    Args:
        inputs, outputs: as for a functional `keras.Model`; or use `wrap`.
        momentum: alpha, the fraction of the previous update kept, in (0, 1).
            Defaults to 0.9.
        gamma: the confidence factor of Polyak's step size, > 0. Defaults to
            1.0.
        grad_norm_clip: (low, high) bounds of the squared gradient norm in the
            denominator, 0 < low <= high. Defaults to (1e-4, 1e10).
        step_size_clip: (low, high) bounds of the step size eta,
            0 <= low <= high; low == high gives Nesterov momentum at a fixed
            step size. Defaults to (1e-3, 0.1).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    References: Mandatelli, Improved Training Methods for Neural Networks,
    2018, section 3.3 (Algorithm 5, equations 3.3.4-3.3.5) and section 3.4
    (the clips of ||g||^2 and of the step size); Polyak, Introduction to
    Optimization, 1987.
    """

    def __init__(
        self,
        *args,
        momentum=DEFAULT_MOMENTUM,
        gamma=DEFAULT_GAMMA,
        grad_norm_clip=DEFAULT_GRAD_NORM_CLIP,
        step_size_clip=DEFAULT_STEP_SIZE_CLIP,
        **kwargs,
    ):
        # Checked before the network is built: bad options cost nothing.
        options = check_options(momentum, gamma, grad_norm_clip, step_size_clip)
        super().__init__(*args, **kwargs)
        self.momentum, self.gamma, self.grad_norm_clip, self.step_size_clip = options
        weights = self.trainable_variables
        velocities = [
            self.add_weight(
                name=f"velocity_{i}",
                shape=w.shape,
                dtype=w.dtype,
                initializer="zeros",
                trainable=False,
            )
            for i, w in enumerate(weights)
        ]
        self.step_size = self.add_weight(
            name="step_size", shape=(), dtype="float32", initializer="zeros", trainable=False
        )
        self.lr_tracker = keras.metrics.Mean(name="lr")
        # A plain holder: Keras would wrap (and track twice) a list of variables
        # assigned to the model.
        self._velocity = _Velocity(weights, velocities)

    @property
    def velocity_variables(self) -> list:
        """The velocity v of each weight, in the order of the trainable weights at build."""
        return list(self._velocity.velocities)

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            gamma=self.gamma,
            grad_norm_clip=list(self.grad_norm_clip),
            step_size_clip=list(self.step_size_clip),
        )
        return config

    def compile(self, optimizer=None, *args, **kwargs):
        if optimizer is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own step (Nesterov momentum with "
                f"Polyak's step size), so it takes no optimizer; got {optimizer!r}. "
                "Call `compile(loss=..., metrics=...)` without `optimizer`."
            )
        super().compile(None, *args, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compiling a loaded model whose class overrides `compile`;
        # ours only refuses an optimizer, and the saved config has none.
        self.compile(**keras.saving.deserialize_keras_object(config))

    def make_train_function(self, force=False):
        self._check_trainable()
        return super().make_train_function(force=force)

    def _check_trainable(self):
        known = {id(w) for w in self._velocity.weights}
        missing = [w.path for w in self.trainable_variables if id(w) not in known]
        if missing:
            raise ValueError(
                f"{type(self).__name__} has no velocity for {missing}: these weights "
                "became trainable after the model was built. Set `layer.trainable` "
                "before building (or wrapping) the model."
            )

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        weights = self.trainable_variables
        if not weights:
            warnings.warn("The model does not have any trainable weights.")
            return self.compute_metrics(x, y, self(x, training=True), sample_weight=sample_weight)
        velocities = self._velocity.of(weights)
        alpha = self.momentum
        _assign(weights, [w - tf.cast(alpha, w.dtype) * v for w, v in zip(weights, velocities)])

        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
        grads = tape.gradient(loss, weights)
        grads = [
            tf.zeros_like(w) if g is None else tf.convert_to_tensor(g)
            for g, w in zip(grads, weights)
        ]
        # Keras scales each replica's loss by 1/replicas, so the sums over
        # replicas are the global batch's loss and gradient.
        context = tf.distribute.get_replica_context()
        global_loss, grads = context.all_reduce(tf.distribute.ReduceOp.SUM, (loss, grads))
        eta = self._polyak_step_size(global_loss, grads)

        _assign(
            velocities + weights,
            [tf.cast(alpha, v.dtype) * v + tf.cast(eta, v.dtype) * g for v, g in zip(velocities, grads)]
            + [w - tf.cast(eta, w.dtype) * g for w, g in zip(weights, grads)],
        )
        _assign([self.step_size], [eta])

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        # The tracker weights each replica by its shard, like Keras's own step.
        self._loss_tracker_metric().update_state(
            tf.cast(loss, tf.float32) * replicas, sample_weight=batch_size
        )
        self.lr_tracker.update_state(eta)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _polyak_step_size(self, loss, grads):
        squared_norm = tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in grads])
        low, high = self.grad_norm_clip
        denominator = tf.clip_by_value(squared_norm, low, high)
        eta = self.gamma * tf.abs(tf.cast(loss, tf.float32)) / denominator
        low, high = self.step_size_clip
        return tf.clip_by_value(eta, low, high)

    def _loss_tracker_metric(self):
        # Keras keeps its loss tracker private; it is the model metric named "loss".
        return next(m for m in self.metrics if m.name == "loss")

    def test_step(self, data):
        logs = super().test_step(data)
        return {k: v for k, v in logs.items() if k != "lr"}


class _Velocity:
    """The velocity variable of each trainable weight, kept out of Keras tracking."""

    def __init__(self, weights, velocities):
        self.weights = list(weights)
        self.velocities = list(velocities)
        self._by_weight = {id(w): v for w, v in zip(weights, velocities)}

    def of(self, weights):
        return [self._by_weight[id(w)] for w in weights]


def _assign(variables, values):
    """Assign `values`, the same on every replica, to (mirrored) `variables`.

    A mirrored variable cannot be assigned in a replica's context; like Keras's
    optimizers, the update goes through `merge_call` to the cross-replica
    context, where each device's copy takes its replica's (equal) value.
    """

    def assign_all(strategy, values):
        for variable, value in zip(variables, values):
            strategy.extended.update(
                variable.value, lambda var, val: var.assign(tf.cast(val, var.dtype)),
                args=(value,), group=False,
            )

    tf.distribute.get_replica_context().merge_call(assign_all, args=(values,))
