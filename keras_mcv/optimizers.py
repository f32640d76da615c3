"""Optimizers and the optimizer factory.

`make_optimizer` is the one place that turns an optimizer's name into a Keras
optimizer, for single runs, the macro-CV grid and the benchmarks.
"""

from __future__ import annotations

from typing import Optional

import keras

OPTIMIZERS = ("sgd", "adam", "schedule_free_adamw")
"""Names `make_optimizer` accepts."""

DEFAULT_LEARNING_RATES = {"sgd": 0.01, "adam": 0.001}
"""The learning rate of a name when none is given (ScheduleFreeAdamW: Keras's default)."""


def make_optimizer(
    name: str,
    learning_rate: Optional[float] = None,
    *,
    decay: Optional[float] = None,
    momentum: float = 0.9,
):
    """The optimizer called `name`, at `learning_rate`, optionally decayed.

    ```
    lr_t = learning_rate / (1 + decay * t)    # t = optimizer step; decay None: constant
    "sgd"                -> keras.optimizers.SGD(lr_t, momentum=momentum)
    "adam"               -> keras.optimizers.Adam(lr_t)
    "schedule_free_adamw"-> keras.optimizers.ScheduleFreeAdamW(lr_t)
    ```

    Args:
        name: one of `OPTIMIZERS`.
        learning_rate: the (initial) learning rate. Defaults to
            `DEFAULT_LEARNING_RATES[name]`, or Keras's default for
            ScheduleFreeAdamW (a learning-rate-free anchor at its defaults).
        decay: `InverseTimeDecay` rate per optimizer step (the thesis's
            macro-CV stage 2), or None for a constant rate. Defaults to None.
        momentum: SGD momentum. Defaults to 0.9.

    References: thesis section 4.5 (the grid's optimizers and decay).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}.")
    kwargs = {}
    if learning_rate is not None or name in DEFAULT_LEARNING_RATES:
        lr = float(DEFAULT_LEARNING_RATES[name] if learning_rate is None else learning_rate)
        if decay:
            lr = keras.optimizers.schedules.InverseTimeDecay(
                lr, decay_steps=1, decay_rate=float(decay)
            )
        kwargs["learning_rate"] = lr
    if name == "sgd":
        return keras.optimizers.SGD(momentum=momentum, **kwargs)
    if name == "adam":
        return keras.optimizers.Adam(**kwargs)
    return keras.optimizers.ScheduleFreeAdamW(**kwargs)


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
