"""Learning-rate schedules: four decay sequences and the cyclical learning rate.

- `decay_sequence(name, n, r0)`: the n-th term of one of four decay sequences,
  in plain Python (the `SequenceUpdate` callback pops them one at a time).
- `CyclicalLearningRate`: Smith's cyclical learning rate (triangular,
  triangular2, exp_range) as a serializable Keras `LearningRateSchedule`.

References: Yang & Huang, Learning Rate Investigation, 2019, section 3
(decaying sequences); Smith, Cyclical Learning Rates for Training Neural
Networks, 2017, section 3.1.
"""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

SEQUENCES = ("seq1", "seq2", "seq3", "seq4")
CLR_MODES = ("triangular", "triangular2", "exp_range")


def _check_positive_number(value, what, fix):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}. {fix}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}. {fix}")


def check_sequence_name(name):
    """Raise a ValueError naming the valid sequences when `name` is not one."""
    if name not in SEQUENCES:
        raise ValueError(
            f"Unknown decay sequence {name!r}. Valid names: "
            + ", ".join(repr(s) for s in SEQUENCES) + "."
        )


def decay_sequence(name, n, initial_learning_rate):
    """The n-th learning rate `r_n` of a decay sequence (n = 1, 2, ...).

    ```
    seq1: r_n = r0 / n
    seq2: r_n = r0 / sqrt(n)
    seq3: r_n = 0.9**n * r0
    seq4: r_n = q_n * r0,  q_n = (1 - ((n - 1) mod 10) / 10) / (floor(n / 10) + 1)
    ```
    seq4 is a sawtooth: within a block of ten terms the factor falls by tenths
    and each block starts lower. The formula is taken as written, so its
    denominator steps at n = 10, 20, ... while the tenths restart at
    n = 11, 21, ...: q_9 = 0.2, q_10 = 0.1 / 2 = 0.05, q_11 = 1 / 2.
    `q_n` is computed as `(10 - m) / (10 (k + 1))` (one rounding), equal to the
    formula in exact arithmetic.

    Args:
        name: one of `SEQUENCES` ("seq1", "seq2", "seq3", "seq4").
        n: the term's index, an integer >= 1.
        initial_learning_rate: `r0`, a number > 0.

    Returns:
        `r_n` as a Python float.

    References: Yang & Huang, Learning Rate Investigation, 2019, section 3,
    "Decaying Sequences" (Figure 4).
    """
    check_sequence_name(name)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(
            f"n must be an integer >= 1 (the sequences start at r_1), got {n!r}."
        )
    _check_positive_number(
        initial_learning_rate, "initial_learning_rate", "Pass r0, e.g. 0.01."
    )
    n = int(n)
    r0 = float(initial_learning_rate)
    if name == "seq1":
        return r0 / n
    if name == "seq2":
        return r0 / math.sqrt(n)
    if name == "seq3":
        return 0.9**n * r0
    tenths_down = (n - 1) % 10
    block = n // 10
    return (10 - tenths_down) / (10 * (block + 1)) * r0


@keras.saving.register_keras_serializable(package="keras_mcv")
class CyclicalLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Smith's cyclical learning rate, a triangle between two bounds.

    ```
    cycle = floor(1 + it / (2 step_size))
    x     = |it / step_size - 2 cycle + 1|
    lr    = base + (max - base) * max(0, 1 - x) * scale
    scale = 1                     (triangular)
            1 / 2**(cycle - 1)    (triangular2: the amplitude halves every cycle)
            gamma**it             (exp_range)
    ```
    `it` is the optimizer's iteration count (starting at 0, where lr = base);
    the rate peaks at `max` after `step_size` iterations and is back at `base`
    after `2 step_size` (one cycle). Computed in float64 and returned in
    Keras's float type; `step` may be a tensor inside `tf.function`.

    Args:
        base_learning_rate: the lower bound, a number > 0.
        max_learning_rate: the upper bound, a number > `base_learning_rate`.
        step_size: iterations in half a cycle, a number >= 1 (Smith advises
            2 to 10 epochs' worth of iterations).
        mode: "triangular", "triangular2" or "exp_range". Defaults to
            "triangular".
        gamma: the per-iteration decay of "exp_range", in (0, 1]; other modes
            take only 1.0. Defaults to 1.0.
        name: a name for the schedule. Defaults to None
            ("CyclicalLearningRate").

    References: Smith, Cyclical Learning Rates for Training Neural Networks,
    2017, section 3.1; Mandatelli, Improved Training Methods for Neural
    Networks, section 3.1 (Cyclical Learning Rate).
    """

    def __init__(
        self,
        base_learning_rate,
        max_learning_rate,
        step_size,
        mode="triangular",
        gamma=1.0,
        name=None,
    ):
        super().__init__()
        _check_positive_number(
            base_learning_rate, "base_learning_rate",
            "Pass the lower bound of the cycle, e.g. 1e-4.",
        )
        _check_positive_number(
            max_learning_rate, "max_learning_rate",
            "Pass the upper bound of the cycle, e.g. 1e-2.",
        )
        if max_learning_rate <= base_learning_rate:
            raise ValueError(
                f"max_learning_rate ({max_learning_rate!r}) must be greater than "
                f"base_learning_rate ({base_learning_rate!r}). Swap them, or use a "
                "constant learning rate."
            )
        _check_positive_number(
            step_size, "step_size",
            "Pass the number of iterations in half a cycle, e.g. 4 epochs' worth.",
        )
        if step_size < 1:
            raise ValueError(
                f"step_size must be >= 1 iteration (half a cycle), got {step_size!r}."
            )
        if mode not in CLR_MODES:
            raise ValueError(
                f"Unknown mode {mode!r}. Valid modes: "
                + ", ".join(repr(m) for m in CLR_MODES) + "."
            )
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
            raise ValueError(f"gamma must be a number, got {gamma!r}.")
        if mode == "exp_range":
            if not (0 < gamma <= 1):
                raise ValueError(
                    f"gamma must be in (0, 1] for mode='exp_range', got {gamma!r}: "
                    "it multiplies the amplitude at every iteration, e.g. 0.99994."
                )
        elif gamma != 1.0:
            raise ValueError(
                f"gamma={gamma!r} only applies to mode='exp_range' (mode is "
                f"{mode!r}). Drop gamma or set mode='exp_range'."
            )
        self.base_learning_rate = base_learning_rate
        self.max_learning_rate = max_learning_rate
        self.step_size = step_size
        self.mode = mode
        self.gamma = gamma
        self.name = name

    def __call__(self, step):
        with keras.name_scope(self.name or "CyclicalLearningRate"):
            # float64 keeps iteration counts beyond 2**24 exact and matches a
            # float64 reference to the last bit before the final cast.
            it = ops.cast(step, "float64")
            step_size = float(self.step_size)
            cycle = ops.floor(1.0 + it / (2.0 * step_size))
            x = ops.abs(it / step_size - 2.0 * cycle + 1.0)
            triangle = ops.maximum(0.0, 1.0 - x)
            if self.mode == "triangular2":
                triangle = triangle * ops.power(0.5, cycle - 1.0)
            elif self.mode == "exp_range":
                triangle = triangle * ops.power(float(self.gamma), it)
            base = float(self.base_learning_rate)
            amplitude = float(self.max_learning_rate) - base
            return ops.cast(base + amplitude * triangle, keras.config.floatx())

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "max_learning_rate": self.max_learning_rate,
            "step_size": self.step_size,
            "mode": self.mode,
            "gamma": self.gamma,
            "name": self.name,
        }
