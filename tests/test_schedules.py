"""Exact tests of the decay sequences and the cyclical learning rate."""

import math
from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mcv.schedules import SEQUENCES, CyclicalLearningRate, decay_sequence


def test_sequence_names():
    assert SEQUENCES == ("seq1", "seq2", "seq3", "seq4")


@pytest.mark.parametrize(
    "name,n,expected",
    [
        ("seq1", 1, 0.01), ("seq1", 2, 0.005), ("seq1", 4, 0.0025), ("seq1", 10, 0.001),
        ("seq2", 1, 0.01), ("seq2", 4, 0.005), ("seq2", 100, 0.001),
        ("seq3", 1, 0.009), ("seq3", 2, 0.0081), ("seq3", 3, 0.00729),
        # seq4: tenths fall within a block; the block divisor steps at n = 10, 20.
        ("seq4", 1, 0.01), ("seq4", 2, 0.009), ("seq4", 5, 0.006), ("seq4", 9, 0.002),
        ("seq4", 10, 0.0005), ("seq4", 11, 0.005), ("seq4", 12, 0.0045),
        ("seq4", 19, 0.001), ("seq4", 20, 0.01 / 30), ("seq4", 21, 0.01 / 3),
        ("seq4", 30, 0.00025), ("seq4", 31, 0.0025),
    ],
)
def test_hand_computed_terms(name, n, expected):
    assert decay_sequence(name, n, 0.01) == pytest.approx(expected, rel=1e-14, abs=0)


def _exact(name, n, r0):
    """The sequences in exact rational arithmetic (seq2 via math.sqrt)."""
    r0 = Fraction(r0)
    if name == "seq1":
        return r0 / n
    if name == "seq2":
        return Fraction(float(r0) / math.sqrt(n))
    if name == "seq3":
        return Fraction(9, 10) ** n * r0
    return (1 - Fraction((n - 1) % 10, 10)) / (n // 10 + 1) * r0


@pytest.mark.parametrize("name", SEQUENCES)
@pytest.mark.parametrize("r0", [0.01, 0.1, 1.0, 3e-4])
def test_many_terms_match_exact_arithmetic(name, r0):
    for n in range(1, 201):
        got = decay_sequence(name, n, r0)
        assert isinstance(got, float)
        # The float 0.9 is 0.9 (1 + 2.5e-17): 0.9**200 carries ~5e-15 of it.
        assert got == pytest.approx(float(_exact(name, n, r0)), rel=1e-14, abs=0), (name, n)


def test_seq4_factors_over_three_blocks():
    q = [decay_sequence("seq4", n, 1.0) for n in range(1, 32)]
    expected = (
        [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.05]
        + [0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.1 / 3]
        + [1 / 3, 0.3, 0.8 / 3, 0.7 / 3, 0.2, 0.5 / 3, 0.4 / 3, 0.1, 0.2 / 3, 0.025]
        + [0.25]
    )
    np.testing.assert_allclose(q, expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "args,match",
    [
        (("seq5", 1, 0.01), "seq1.*seq2.*seq3.*seq4"),
        (("seq1", 0, 0.01), "n must be an integer >= 1"),
        (("seq1", -3, 0.01), "n must be an integer >= 1"),
        (("seq1", 1.5, 0.01), "n must be an integer >= 1"),
        (("seq1", 1, 0.0), "initial_learning_rate must be a finite number > 0"),
        (("seq1", 1, -0.1), "initial_learning_rate must be a finite number > 0"),
        (("seq1", 1, math.nan), "initial_learning_rate must be a finite number > 0"),
        (("seq1", 1, "0.1"), "initial_learning_rate must be a number"),
    ],
)
def test_sequence_errors(args, match):
    with pytest.raises(ValueError, match=match):
        decay_sequence(*args)


def _smith(it, base, top, step, mode, gamma):
    """Smith's formula, step by step in Python floats."""
    cycle = math.floor(1 + it / (2 * step))
    x = abs(it / step - 2 * cycle + 1)
    scale = {"triangular": 1.0, "triangular2": 1 / 2 ** (cycle - 1),
             "exp_range": gamma**it}[mode]
    return base + (top - base) * max(0.0, 1 - x) * scale


@pytest.mark.parametrize(
    "mode,gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.9995)]
)
@pytest.mark.parametrize("step_size", [1, 7, 250])
def test_clr_matches_smith_formula(mode, gamma, step_size):
    schedule = CyclicalLearningRate(1e-4, 2e-2, step_size, mode=mode, gamma=gamma)
    its = np.arange(0, 10 * step_size + 13)
    got = keras.ops.convert_to_numpy(schedule(tf.constant(its)))
    assert got.dtype == np.float32
    expected = [_smith(int(i), 1e-4, 2e-2, step_size, mode, gamma) for i in its]
    np.testing.assert_allclose(got, np.float32(expected), rtol=1e-7, atol=0)


def test_clr_hand_checked_points():
    tri = CyclicalLearningRate(1.0, 5.0, 4)
    assert [float(tri(i)) for i in range(13)] == [
        1, 2, 3, 4, 5, 4, 3, 2, 1, 2, 3, 4, 5]
    tri2 = CyclicalLearningRate(1.0, 5.0, 4, mode="triangular2")
    # Cycle 2 peaks at 1 + 4/2, cycle 3 at 1 + 4/4.
    assert [float(tri2(i)) for i in (0, 4, 8, 10, 12, 16, 20, 24)] == [
        1, 5, 1, 2, 3, 1, 2, 1]
    expo = CyclicalLearningRate(1.0, 5.0, 4, mode="exp_range", gamma=0.5)
    assert [float(expo(i)) for i in (0, 1, 2, 4, 8, 12)] == [
        1, 1 + 4 * 0.25 * 0.5, 1 + 4 * 0.5 * 0.25, 1 + 4 * 0.0625, 1, 1 + 4 * 0.5**12]


def test_clr_float_step_size_and_large_iterations():
    schedule = CyclicalLearningRate(0.001, 0.006, 2000.5)
    its = np.array([0, 2000, 4001, 10**7 + 3, 3 * 10**8 + 17], dtype=np.int64)
    got = keras.ops.convert_to_numpy(schedule(tf.constant(its)))
    expected = [_smith(int(i), 0.001, 0.006, 2000.5, "triangular", 1.0) for i in its]
    np.testing.assert_allclose(got, np.float32(expected), rtol=1e-7, atol=0)


def test_clr_in_graph_mode_with_optimizer_iterations():
    schedule = CyclicalLearningRate(0.1, 0.5, 2, mode="triangular2")
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    variable = keras.Variable(np.ones(3, "float32"))
    optimizer.build([variable])

    @tf.function
    def step(grad):
        optimizer.apply([grad], [variable])
        return optimizer.learning_rate

    rates = [float(step(tf.zeros(3))) for _ in range(9)]
    # The rate returned after k applies is the schedule at iteration k.
    expected = [_smith(k, 0.1, 0.5, 2, "triangular2", 1.0) for k in range(1, 10)]
    np.testing.assert_allclose(rates, np.float32(expected), rtol=1e-7, atol=0)
    # The weights moved by the rate of each iteration (0..8) times the zero
    # gradient: unchanged; now one real step at iteration 9.
    before = variable.numpy().copy()
    step(tf.ones(3))
    np.testing.assert_allclose(
        variable.numpy(), before - np.float32(_smith(9, 0.1, 0.5, 2, "triangular2", 1.0)),
        rtol=1e-7)


def test_clr_serialization_round_trip(tmp_path):
    schedule = CyclicalLearningRate(1e-4, 1e-2, 50, mode="exp_range", gamma=0.999,
                                    name="clr")
    config = keras.optimizers.schedules.serialize(schedule)
    assert config["registered_name"] == "keras_mcv>CyclicalLearningRate"
    restored = keras.optimizers.schedules.deserialize(config)
    assert isinstance(restored, CyclicalLearningRate)
    assert restored.get_config() == schedule.get_config()

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), epochs=1, verbose=0)
    path = tmp_path / "clr.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    saved_config = loaded.optimizer.get_config()["learning_rate"]
    assert saved_config["registered_name"] == "keras_mcv>CyclicalLearningRate"
    assert saved_config["config"] == schedule.get_config()
    # The loaded optimizer evaluates the schedule at its restored iteration (1).
    assert int(loaded.optimizer.iterations) == 1
    assert float(loaded.optimizer.learning_rate) == float(schedule(1))
    assert float(schedule(1)) != float(schedule(0))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="sine"), "Unknown mode 'sine'.*triangular.*triangular2.*exp_range"),
        (dict(max_learning_rate=1e-3), "must be greater than base_learning_rate"),
        (dict(max_learning_rate=5e-4), "must be greater than base_learning_rate"),
        (dict(step_size=0), "step_size must be a finite number > 0"),
        (dict(step_size=0.5), "step_size must be >= 1"),
        (dict(base_learning_rate=0.0), "base_learning_rate must be a finite number > 0"),
        (dict(base_learning_rate=-1e-3), "base_learning_rate must be a finite number > 0"),
        (dict(mode="exp_range", gamma=0.0), r"gamma must be in \(0, 1\]"),
        (dict(mode="exp_range", gamma=1.5), r"gamma must be in \(0, 1\]"),
        (dict(mode="exp_range", gamma=-0.9), r"gamma must be in \(0, 1\]"),
        (dict(gamma=0.99), "only applies to mode='exp_range'"),
    ],
)
def test_clr_errors(kwargs, match):
    args = dict(base_learning_rate=1e-3, max_learning_rate=1e-2, step_size=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        CyclicalLearningRate(**args)


def test_clr_exp_range_accepts_gamma_one():
    schedule = CyclicalLearningRate(1.0, 3.0, 2, mode="exp_range", gamma=1.0)
    assert [float(schedule(i)) for i in range(5)] == [1, 2, 3, 2, 1]
