"""SequenceUpdate: the strategies on scripted losses, exact learning rates, a real fit."""

import math

import keras
import numpy as np
import pytest

import keras_mcv
from keras_mcv.schedules import CyclicalLearningRate
from keras_mcv.sequence_update import (
    CUTOFF_FRACTION,
    STRATEGIES,
    Decision,
    SequenceUpdate,
    decide,
    derive_cutoff,
    resolve_monitor,
)

INF, NAN = math.inf, math.nan


# ---- the pure rule ----------------------------------------------------------


def test_constants():
    assert STRATEGIES == ("epoch", "cutoff", "oscillate")
    assert CUTOFF_FRACTION == 0.5


def _run(strategy, losses, cutoff=None):
    """decide() over a loss history: the fire flags and the cutoff after each epoch."""
    fires, cutoffs = [], []
    for t in range(1, len(losses) + 1):
        fire, cutoff = decide(strategy, losses[:t], cutoff)
        fires.append(fire)
        cutoffs.append(cutoff)
    return fires, cutoffs


def test_epoch_fires_always():
    assert _run("epoch", [1.0, 2.0, 0.5, NAN])[0] == [True, True, True, True]
    assert decide("epoch", [], None) == Decision(True, None)


def test_oscillate_fires_on_a_rise():
    fires, _ = _run("oscillate", [1.0, 0.8, 0.9, 0.7, 0.75, 0.76, 0.5, 0.5])
    assert fires == [False, False, True, False, True, True, False, False]


def test_oscillate_nonfinite_counts_as_inf():
    fires, _ = _run("oscillate", [1.0, NAN, 0.5, INF, INF])
    # 1 -> inf is a rise; inf -> 0.5 a fall; 0.5 -> inf a rise; inf -> inf not.
    assert fires == [False, True, False, True, False]


def test_cutoff_given():
    losses = [2.0, 1.5, 1.45, 1.40, 1.39, 1.385, 1.3849]
    fires, cutoffs = _run("cutoff", losses, cutoff=0.1)
    assert fires == [False, False, True, False, True, False, True]
    np.testing.assert_allclose(
        cutoffs, [0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008], rtol=1e-15, atol=0)


def test_cutoff_derived_from_first_change():
    fires, cutoffs = _run("cutoff", [2.0, 1.0, 0.8, 0.6, 0.55])
    # t=2 derives 0.5 * |1.0 - 2.0| without firing; t=3: 0.2 < 0.5 fires.
    assert fires == [False, False, True, False, True]
    np.testing.assert_allclose(
        [c if c is not None else NAN for c in cutoffs],
        [NAN, 0.5, 0.1, 0.1, 0.02], rtol=1e-15, atol=0)


def test_cutoff_derivation_waits_for_a_finite_nonzero_change():
    fires, cutoffs = _run("cutoff", [1.0, 1.0, NAN, 0.6, 0.2, 0.1])
    assert cutoffs[:3] == [None, None, None]
    # t=4: inf -> 0.6 is not finite either; t=5 derives 0.5 * 0.4.
    assert cutoffs[3] is None
    assert cutoffs[4] == pytest.approx(0.2, rel=1e-15)
    assert fires == [False, False, False, False, False, True]
    assert derive_cutoff(2.0, 1.5) == 0.25
    assert derive_cutoff(2.0, 1.5, fraction=0.1) == pytest.approx(0.05, rel=1e-15)
    assert derive_cutoff(1.0, 1.0) is None
    assert derive_cutoff(1.0, INF) is None


def test_decide_unknown_strategy():
    with pytest.raises(ValueError, match="'epoch', 'cutoff', 'oscillate'"):
        decide("plateau", [1.0, 0.5])


def test_resolve_monitor():
    assert resolve_monitor({"loss": 1, "val_loss": 2}, "val_loss") == "val_loss"
    assert resolve_monitor({"loss": 1, "mcv_val_loss": 2}, "val_loss") == "mcv_val_loss"
    # Validation data present: a missing monitor is a wrong name, not a fallback.
    with pytest.raises(ValueError, match="'val_los'.*available: loss, mcv_val_loss, val_loss"):
        resolve_monitor({"loss": 1, "val_loss": 2, "mcv_val_loss": 3}, "val_los")
    with pytest.raises(ValueError, match="validation_data"):
        resolve_monitor({"loss": 1}, "val_loss")


# ---- the callback, driven with scripted logs on a real compiled model -------


def _model(learning_rate=0.5):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _drive(callback, losses, key="val_loss", learning_rate=0.5):
    """Epoch ends with scripted losses; the optimizer's LR after each, and the logs."""
    model = _model(learning_rate)
    callback.set_model(model)
    callback.on_train_begin()
    assert float(model.optimizer.learning_rate) == np.float32(callback.initial_learning_rate)
    rates, logs_seen = [], []
    for epoch, loss in enumerate(losses):
        logs = {"loss": 9.0, key: loss}
        callback.on_epoch_end(epoch, logs)
        rates.append(float(model.optimizer.learning_rate))
        logs_seen.append(logs)
    return rates, logs_seen


def test_epoch_strategy_exact_rates():
    callback = SequenceUpdate("seq3", "epoch", 0.01)
    rates, logs = _drive(callback, [1.0, 1.1, 0.9, 0.8])
    # Epoch 1 trains at r0; each epoch end pops r_1 = 0.9 r0, r_2, ...
    np.testing.assert_array_equal(rates, np.float32([0.009, 0.0081, 0.00729, 0.006561]))
    np.testing.assert_array_equal(
        [log["lr"] for log in logs], np.float32([0.01, 0.009, 0.0081, 0.00729]))
    assert callback.n == 4


def test_seq1_first_pop_is_r0():
    callback = SequenceUpdate("seq1", "epoch", 0.1)
    rates, _ = _drive(callback, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(rates, np.float32([0.1, 0.05, 0.1 / 3]))


def test_oscillate_strategy_exact_rates():
    callback = SequenceUpdate("seq3", "oscillate", 0.1)
    rates, _ = _drive(callback, [1.0, 0.8, 0.9, 0.7, 0.75, 0.76, 0.5])
    np.testing.assert_array_equal(
        rates, np.float32([0.1, 0.1, 0.09, 0.09, 0.081, 0.0729, 0.0729]))
    assert [h["fired"] for h in callback.history] == [
        False, False, True, False, True, True, False]


def test_cutoff_strategy_exact_rates():
    callback = SequenceUpdate("seq2", "cutoff", 0.04, cutoff=0.1)
    rates, _ = _drive(callback, [2.0, 1.5, 1.45, 1.40, 1.39, 1.385, 1.3849])
    np.testing.assert_array_equal(
        rates,
        np.float32([0.04, 0.04, 0.04, 0.04, 0.04 / math.sqrt(2), 0.04 / math.sqrt(2),
                    0.04 / math.sqrt(3)]))
    assert callback.current_cutoff == pytest.approx(0.0008, rel=1e-14)


def test_cutoff_strategy_derived_cutoff_exact_rates():
    callback = SequenceUpdate("seq4", "cutoff", 0.2)
    rates, _ = _drive(callback, [2.0, 1.0, 0.8, 0.6, 0.55, 0.52])
    # Derived cutoff 0.5 at epoch 2; fires at epochs 3 (0.2 < 0.5) and 5
    # (0.05 < 0.1); not at 6 (0.03 >= 0.02).
    np.testing.assert_array_equal(rates, np.float32([0.2, 0.2, 0.2, 0.2, 0.18, 0.18]))
    assert [h["cutoff"] for h in callback.history][1] == 0.5
    assert callback.current_cutoff == pytest.approx(0.02, rel=1e-14)


def test_state_resets_at_train_begin():
    callback = SequenceUpdate("seq3", "epoch", 0.01)
    _drive(callback, [1.0, 1.0])
    rates, _ = _drive(callback, [1.0])
    np.testing.assert_array_equal(rates, np.float32([0.009]))
    assert len(callback.history) == 1


def test_falls_back_to_mcv_val_loss():
    callback = SequenceUpdate("seq3", "oscillate", 0.1)
    with pytest.warns(UserWarning, match="watching 'mcv_val_loss'"):
        rates, _ = _drive(callback, [1.0, 1.2, 1.1], key="mcv_val_loss")
    assert callback.monitor_used == "mcv_val_loss"
    np.testing.assert_array_equal(rates, np.float32([0.1, 0.09, 0.09]))


def test_missing_monitor_raises_at_first_epoch_end():
    callback = SequenceUpdate("seq3", "cutoff", 0.1)
    with pytest.raises(ValueError, match="'val_loss', which is not in the epoch logs"):
        _drive(callback, [1.0], key="accuracy")
    # "epoch" needs no loss.
    rates, _ = _drive(SequenceUpdate("seq3", "epoch", 0.1), [1.0], key="accuracy")
    np.testing.assert_array_equal(rates, np.float32([0.09]))


def test_refuses_a_schedule_at_train_begin():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(
        learning_rate=CyclicalLearningRate(1e-3, 1e-2, 10)), loss="mse")
    callback = SequenceUpdate("seq1", "epoch", 0.01)
    callback.set_model(model)
    with pytest.raises(ValueError, match="not a LearningRateSchedule"):
        callback.on_train_begin()


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("seq9", "epoch", 0.01), {}, "Valid names: 'seq1', 'seq2', 'seq3', 'seq4'"),
        (("seq1", "step", 0.01), {}, "Valid strategies: 'epoch', 'cutoff', 'oscillate'"),
        (("seq1", "epoch", 0.0), {}, "initial_learning_rate must be a finite number > 0"),
        (("seq1", "epoch", -1.0), {}, "initial_learning_rate must be a finite number > 0"),
        (("seq1", "epoch", 0.01), {"cutoff": 0.1}, "only applies to strategy='cutoff'"),
        (("seq1", "cutoff", 0.01), {"cutoff": 0.0}, "cutoff must be a finite number > 0"),
        (("seq1", "cutoff", 0.01), {"cutoff": -0.5}, "cutoff must be a finite number > 0"),
        (("seq1", "cutoff", 0.01), {"monitor": ""}, "monitor must be a log name"),
    ],
)
def test_constructor_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequenceUpdate(*args, **kwargs)


# ---- real fits ----------------------------------------------------------------


def _softmax_regression_sgd(w, b, x, y, rates):
    """Full-batch SGD on softmax regression, one step per epoch, in NumPy (float64)."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    for rate in rates:
        z = x @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        d = p / len(y)
        w, b = w - np.float32(rate) * (x.T @ d), b - np.float32(rate) * d.sum(axis=0)
    return w, b


def test_fit_trains_at_the_popped_rates():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype("float32")
    y = rng.integers(0, 3, size=24)
    model = _model(learning_rate=123.0)  # overwritten by the callback
    w0, b0 = [v.numpy().copy() for v in model.trainable_variables]
    callback = SequenceUpdate("seq3", "epoch", 0.5)
    history = model.fit(x, y, batch_size=24, epochs=4, shuffle=False, verbose=0,
                        validation_data=(x[:8], y[:8]), callbacks=[callback])
    np.testing.assert_array_equal(
        history.history["lr"], np.float32([0.5, 0.45, 0.405, 0.3645]))
    w, b = _softmax_regression_sgd(w0, b0, x.astype(np.float64), y,
                                   [0.5, 0.45, 0.405, 0.3645])
    np.testing.assert_allclose(model.trainable_variables[0].numpy(), w, rtol=0, atol=2e-6)
    np.testing.assert_allclose(model.trainable_variables[1].numpy(), b, rtol=0, atol=2e-6)
    assert [h["loss"] for h in callback.history] == history.history["val_loss"]


def test_fit_on_an_mcv_model_watches_mcv_val_loss():
    inputs = keras.Input((4,))
    model = keras_mcv.DiscardModel(inputs, keras.layers.Dense(3)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.integers(0, 3, size=32)
    callback = SequenceUpdate("seq2", "oscillate", 0.2)
    with pytest.warns(UserWarning, match="mcv_val_loss"):
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback])
    assert callback.monitor_used == "mcv_val_loss"
    seen = history.history["mcv_val_loss"]
    assert [h["loss"] for h in callback.history] == seen
    # Replay the rule on the logged losses: the same rates.
    n, expected = 0, []
    for t in range(1, 4):
        if decide("oscillate", seen[:t]).fire:
            n += 1
        expected.append(np.float32(0.2 / math.sqrt(n) if n else 0.2))
    assert [np.float32(h["next_lr"]) for h in callback.history] == expected
