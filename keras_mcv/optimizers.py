"""Optimizers and the optimizer factory.

`TorchSGD` is PyTorch's SGD as a Keras optimizer: its momentum buffer is kept
in gradient units, so the learning rate scales the whole momentum step. See
`docs/momentum_forms.md` for how this differs from `keras.optimizers.SGD`.

`make_optimizer` is the one place that turns an optimizer's name into a Keras
optimizer, for single runs, the macro-CV grid and the benchmarks.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import keras
from keras import ops


def _check_number(name, value, low=0.0, high=math.inf):
    """`value` as a float in [low, high], or a ValueError naming `name` and the fix."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    value = float(value)
    if not low <= value <= high:  # also refuses NaN
        span = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ValueError(f"`{name}` must be {span}, got {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="keras_mcv")
class TorchSGD(keras.optimizers.Optimizer):
    """Stochastic gradient descent with PyTorch's momentum form (`torch.optim.SGD`).

    The momentum buffer holds gradients, not weight steps, so the learning rate
    of the current step multiplies the whole momentum step:

    ```
    g   = gradient + weight_decay * w                   # coupled L2 penalty
    buf = g                                             # first step
    buf = momentum * buf + (1 - dampening) * g          # later steps
    d   = g + momentum * buf   if nesterov   else buf   # d = g when momentum == 0
    w   = w - learning_rate * d
    ```

    At a constant learning rate this is `keras.optimizers.SGD`'s trajectory
    (`velocity = -learning_rate * buf`); when the learning rate changes from
    step to step, as the candidates of a micro cross-validation trial do, the
    two forms differ: Keras's velocity scales only the new gradient's share.

    `weight_decay` is PyTorch's L2 penalty, added to the gradient before the
    momentum (so it also accumulates in the buffer); it is stored as
    `coupled_weight_decay`. The base class's decoupled decay (Keras's own
    `weight_decay` argument, `optimizer.weight_decay`) stays `None` and is
    never applied. `exclude_from_weight_decay()` applies to the L2 penalty.

    The first step is the one taken while `iterations` is 0, so restoring
    `iterations` with the buffers (as trials do) restores the rule exactly.

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            returning the learning rate. Defaults to `0.01`.
        momentum: Momentum factor, >= 0; 0 keeps no buffer. Defaults to `0.0`.
        dampening: Share of the gradient left out of the buffer after the
            first step, in [0, 1]. Defaults to `0.0`.
        nesterov: Nesterov momentum; needs `momentum` > 0 and `dampening` 0.
            Defaults to `False`.
        weight_decay: Coupled L2 penalty coefficient, >= 0. Defaults to `0.0`.
        name: Name of the optimizer. Defaults to `"TorchSGD"`.
        **kwargs: The other `keras.optimizers.Optimizer` arguments (clipnorm,
            clipvalue, global_clipnorm, use_ema, ema_momentum,
            ema_overwrite_frequency, loss_scale_factor,
            gradient_accumulation_steps). Defaults to Keras's defaults.

    References: PyTorch documentation, `torch.optim.SGD` (its algorithm);
        Sutskever et al., On the importance of initialization and momentum in
        deep learning, 2013 (Nesterov momentum); "Automated learning rate
        search using batch-level cross-validation", section 4.5 (experiments
        run with PyTorch).
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        dampening=0.0,
        nesterov=False,
        weight_decay=0.0,
        name="TorchSGD",
        **kwargs,
    ):
        if isinstance(learning_rate, numbers.Real):
            _check_number("learning_rate", learning_rate)
        momentum = _check_number("momentum", momentum)
        dampening = _check_number("dampening", dampening, high=1.0)
        weight_decay = _check_number("weight_decay", weight_decay)
        if not isinstance(nesterov, bool):
            raise ValueError(f"`nesterov` must be True or False, got {nesterov!r}.")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "Nesterov momentum requires `momentum` > 0 and `dampening` = 0, got "
                f"momentum={momentum!r}, dampening={dampening!r}: set nesterov=False "
                "or give a positive momentum without dampening."
            )
        # None keeps the base class's decoupled decay off: ours is the coupled
        # L2 penalty, applied in `update_step`, and must not be applied twice.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        self.momentum = momentum
        self.dampening = dampening
        self.nesterov = nesterov
        self.coupled_weight_decay = weight_decay

    def build(self, variables):
        """Create one momentum buffer per variable (none when momentum is 0)."""
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = []
        if self.momentum != 0:
            self.momentum_buffers = [
                self.add_variable_from_reference(variable, name="momentum_buffer")
                for variable in variables
            ]

    def update_step(self, gradient, variable, learning_rate):
        """Apply PyTorch's SGD rule to one variable."""
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        # Keras's private per-variable check behind `exclude_from_weight_decay()`;
        # there is no public way to ask it.
        if self.coupled_weight_decay != 0 and self._use_weight_decay(variable):
            gradient = ops.add(
                gradient,
                ops.multiply(ops.cast(self.coupled_weight_decay, variable.dtype), variable),
            )
        if self.momentum != 0:
            momentum = ops.cast(self.momentum, variable.dtype)
            buffer = self.momentum_buffers[self._get_variable_index(variable)]
            # PyTorch starts the buffer at the first gradient, undamped. A graph
            # condition on `iterations` (not Python state) keeps this right in
            # tf.function, XLA and tf.distribute, and after `iterations` is
            # restored. With gradient accumulation `iterations` counts updates.
            first_step = ops.equal(self.iterations, 0)
            later = ops.add(
                ops.multiply(momentum, buffer),
                ops.multiply(ops.cast(1.0 - self.dampening, variable.dtype), gradient),
            )
            new_buffer = ops.where(first_step, gradient, later)
            self.assign(buffer, new_buffer)
            if self.nesterov:
                gradient = ops.add(gradient, ops.multiply(momentum, new_buffer))
            else:
                gradient = new_buffer
        self.assign_sub(variable, ops.multiply(learning_rate, gradient))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "dampening": self.dampening,
                "nesterov": self.nesterov,
                # Replaces the base class's (always None) decoupled decay.
                "weight_decay": self.coupled_weight_decay,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_mcv")
class ScheduleFreeAdamW(keras.optimizers.ScheduleFreeAdamW):
    """`keras.optimizers.ScheduleFreeAdamW` with the averaged point recovered before the step.

    ```
    x_{t-1} = (y_{t-1} - (1 - beta_1) z_{t-1}) / beta_1       # before z moves
    v_t = v_{t-1} + (g^2 - v_{t-1}) (1 - beta_2)
    z_t = z_{t-1} - lr_t g / (sqrt(v_t / (1 - beta_2^t)) + eps)
    x_t = (1 - 1/t) x_{t-1} + (1/t) z_t
    y_t = (1 - beta_1) z_t + beta_1 x_t                       # the model's variables
    ```
    Keras 3.15's `update_step` reads `z_{t-1}` through the slot variable after
    it has already stepped it to `z_t` (on the TensorFlow backend the read
    follows the write), so it recovers `x_{t-1} + (1 - beta_1) / beta_1 (z_{t-1} - z_t)`
    instead of `x_{t-1}`: every step moves the average a little back up the
    gradient, which the authors' algorithm does not do. This class takes the
    read before the step; everything else (arguments, slots, warm-up, `1/t`
    averaging weights) is Keras's. Evaluate it at `x` with
    `keras_mcv.callbacks.ScheduleFreeEvaluation`.

    Args: those of `keras.optimizers.ScheduleFreeAdamW`. Defaults to Keras's.

    References: Defazio et al., The Road Less Scheduled, NeurIPS 2024,
    Algorithm 1 (Schedule-Free AdamW).
    """

    def update_step(self, gradient, variable, learning_rate):
        """One Schedule-Free AdamW step on `variable` (which holds y)."""
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1 = ops.cast(self.beta_1, variable.dtype)
        beta_2 = ops.cast(self.beta_2, variable.dtype)
        epsilon = ops.cast(self.epsilon, variable.dtype)
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(local_step / ops.cast(self.warmup_steps, variable.dtype), 1.0)
        # Keras's private slot lists and index (no public accessor), as its own update_step.
        index = self._get_variable_index(variable)
        z, velocity = self._momentums[index], self._velocities[index]
        x_old = ops.divide(ops.subtract(variable, ops.multiply(1 - beta_1, z)), beta_1)
        self.assign_add(velocity, ops.multiply(ops.subtract(ops.square(gradient), velocity), 1 - beta_2))
        denom = ops.add(ops.sqrt(velocity / (1 - ops.power(beta_2, local_step))), epsilon)
        self.assign_sub(z, ops.divide(ops.multiply(lr, gradient), denom))
        weight = 1.0 / local_step
        x_new = ops.add(ops.multiply(1 - weight, x_old), ops.multiply(weight, z))
        self.assign(variable, ops.add(ops.multiply(1 - beta_1, z), ops.multiply(beta_1, x_new)))


OPTIMIZERS = ("sgd", "adam", "schedule_free_adamw", "adagrad")
"""Names `make_optimizer` accepts."""

DEFAULT_LEARNING_RATES = {"sgd": 0.01, "adam": 0.001, "adagrad": 0.01}
"""The learning rate of a name when none is given (ScheduleFreeAdamW: Keras's default)."""


MOMENTUM_FORMS = ("torch", "keras")
"""How "sgd" keeps its momentum: "torch" (`TorchSGD`, gradient units: the thesis's
PyTorch runs) or "keras" (`keras.optimizers.SGD`, weight units)."""


def check_momentum_form(momentum_form: str) -> str:
    """`momentum_form` if it is one of `MOMENTUM_FORMS`, else a ValueError naming the choices."""
    if momentum_form not in MOMENTUM_FORMS:
        raise ValueError(
            f"Unknown momentum form {momentum_form!r}; use 'torch' (PyTorch's SGD, the "
            "thesis) or 'keras' (keras.optimizers.SGD)."
        )
    return momentum_form


def make_optimizer(
    name: str,
    learning_rate: Optional[float] = None,
    *,
    decay: Optional[float] = None,
    momentum: float = 0.9,
    momentum_form: str = "keras",
    use_ema: bool = False,
):
    """The optimizer called `name`, at `learning_rate`, optionally decayed.

    ```
    lr_t = learning_rate / (1 + decay * t)    # t = optimizer step; decay None: constant
    "sgd", momentum_form "torch" -> TorchSGD(lr_t, momentum=momentum)
    "sgd", momentum_form "keras" -> keras.optimizers.SGD(lr_t, momentum=momentum)
    "adam"                       -> keras.optimizers.Adam(lr_t)
    "schedule_free_adamw"        -> ScheduleFreeAdamW(lr_t) (Keras's, x read before the step)
    "adagrad"                    -> keras.optimizers.Adagrad(lr_t)
    use_ema: every one also keeps Keras's exponential moving average of the weights
    ```

    Args:
        name: one of `OPTIMIZERS`.
        learning_rate: the (initial) learning rate, or a Keras
            `LearningRateSchedule` (used as it is). Defaults to
            `DEFAULT_LEARNING_RATES[name]`, or Keras's default for
            ScheduleFreeAdamW (a learning-rate-free anchor at its defaults).
        decay: `InverseTimeDecay` rate per optimizer step (the thesis's
            macro-CV stage 2), or None for a constant rate. Defaults to None.
        momentum: SGD momentum. Defaults to 0.9.
        momentum_form: "torch" or "keras" (`MOMENTUM_FORMS`); only SGD reads
            it. Defaults to "keras" (the recipes pass the thesis's "torch").
        use_ema: Keras's own `use_ema=True` (momentum 0.99): the optimizer
            keeps an exponential moving average of the weights, which `fit`
            copies into the model when it ends; evaluate during training with
            `keras.callbacks.SwapEMAWeights`. Defaults to False.

    References: thesis section 4.5 (the grid's optimizers and decay; its runs
    used PyTorch's SGD); Duchi, Hazan & Singer, Adaptive Subgradient Methods,
    JMLR 2011 (AdaGrad); Bakhshi, Training Neural Networks (lecture 09),
    section 5.1 (running average of the parameters).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}.")
    check_momentum_form(momentum_form)
    kwargs = {}
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        if decay:
            raise ValueError("decay applies to a number learning rate; this one is a schedule.")
        kwargs["learning_rate"] = learning_rate
    elif learning_rate is not None or name in DEFAULT_LEARNING_RATES:
        lr = float(DEFAULT_LEARNING_RATES[name] if learning_rate is None else learning_rate)
        if decay:
            lr = keras.optimizers.schedules.InverseTimeDecay(
                lr, decay_steps=1, decay_rate=float(decay)
            )
        kwargs["learning_rate"] = lr
    if use_ema:
        kwargs["use_ema"] = True
    if name == "sgd" and momentum_form == "torch":
        return TorchSGD(momentum=momentum, **kwargs)
    if name == "sgd":
        return keras.optimizers.SGD(momentum=momentum, **kwargs)
    if name == "adam":
        return keras.optimizers.Adam(**kwargs)
    if name == "adagrad":
        return keras.optimizers.Adagrad(**kwargs)
    return ScheduleFreeAdamW(**kwargs)


def build_optimizer(model: keras.Model) -> None:
    """Build `model`'s optimizer now, eagerly, on its trainable variables.

    Keras 3.15's `ScheduleFreeAdamW` copies the weights into its `momentum`
    slots in `build`; when `fit` builds it lazily, that copy does not happen,
    the slots stay zero and the first step sets every weight to about zero (a
    ReLU network then never trains: `benchmarks/schedule_free_check.py`).
    Building eagerly after `compile` makes the copy happen; for other
    optimizers it only moves the build earlier.
    """
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
