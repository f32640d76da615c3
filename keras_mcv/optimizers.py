"""Optimizers and the optimizer factory.

`TorchSGD` is PyTorch's SGD as a Keras optimizer: its momentum buffer is kept
in gradient units, so the learning rate scales the whole momentum step. See
`docs/momentum_forms.md` for how this differs from `keras.optimizers.SGD`.
"""

from __future__ import annotations

import math
import numbers

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
