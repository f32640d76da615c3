"""The Keras models against the NumPy reference, step by step, and their contracts."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mcv
from keras_mcv.rules import thesis as policies
from tests import reference

N, D, C, BATCH = 160, 5, 3, 16  # 10 steps per epoch


def make_data(kind="ce", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype("float32")
    if kind == "ce":
        w = rng.normal(size=(D, C))
        y = np.argmax(x @ w + rng.normal(scale=0.5, size=(N, C)), axis=1).astype("int64")
    else:
        y = (x @ rng.normal(size=D) + rng.normal(scale=0.1, size=N)).astype("float32")
    return x, y


def build(cls, kind="ce", optimizer="sgd", seed=1, **kwargs):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D,))
    if kind == "ce":
        outputs = keras.layers.Dense(C, activation="softmax")(inputs)
        loss = "sparse_categorical_crossentropy"
    else:
        outputs = keras.layers.Dense(1)(inputs)
        outputs = keras.layers.Reshape(())(outputs)
        loss = "mse"
    model = cls(inputs, outputs, **kwargs)
    model.compile(optimizer=OPTIMIZERS[optimizer](), loss=loss)
    return model


OPTIMIZERS = {
    # "sgd": Keras's momentum form (velocity in weight units); "torch": PyTorch's
    # (buffer in gradient units, the thesis's runs). Same trajectory at a constant
    # LR, different trials when the candidate LR changes.
    "sgd": lambda: keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
    "torch": lambda: keras_mcv.TorchSGD(learning_rate=0.01, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(learning_rate=0.001),
}


class Capture(keras.callbacks.Callback):
    """Weights, optimizer slots and vote history after every training step."""

    def on_train_begin(self, logs=None):
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        m = self.model
        # Reference order: all momentums (TorchSGD: buffers), then all velocities (Adam).
        slots = [
            v.numpy().copy()
            for kind in ("_momentum", "_momentum_buffer", "_velocity")
            for v in m.optimizer.variables
            if v.path.endswith(kind)
        ]
        votes = m.mcv_votes.numpy().copy() if hasattr(m, "mcv_votes") else None
        self.steps.append(([v.numpy().copy() for v in m.trainable_variables], slots, votes))


def batches_of(x, y):
    return [(x[i : i + BATCH].astype("float64"), y[i : i + BATCH]) for i in range(0, len(x), BATCH)]


def ref_setup(model, x, y, kind, optimizer):
    params = [v.numpy().astype("float64") for v in model.trainable_variables]
    ry = y.astype("float64") if kind == "mse" else y
    if optimizer == "torch":
        opt = reference.TorchSGD(params, momentum=0.9)
    else:
        opt = reference.Optimizer(optimizer, params, momentum=0.9)
    return params, opt, batches_of(x, ry)


def flat_slots(state):
    return [s for group in state[0] for s in group]


def assert_close(actual, expected, what, step):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5, err_msg=f"{what} differ at step {step}")


@pytest.mark.parametrize("optimizer", ["sgd", "torch", "adam"])
def test_discard_matches_reference(optimizer):
    x, y = make_data()
    lr = 0.05 if optimizer == "adam" else 0.5  # large enough that some steps are discarded
    model = build(keras_mcv.DiscardModel, optimizer=optimizer)
    model.optimizer.learning_rate.assign(lr)
    params, opt, batches = ref_setup(model, x, y, "ce", optimizer)
    cap = Capture()
    hist = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cap])
    ref = list(reference.discard(params, opt, batches * 2, np.float32(lr), "ce"))
    assert len(cap.steps) == len(ref) == 20
    for step, ((w, slots, _), (rp, rs, _)) in enumerate(zip(cap.steps, ref)):
        assert_close(w, rp, "weights", step)
        assert_close(slots, flat_slots(rs), "optimizer slots", step)
    discards = [d for *_, d in ref]
    assert 0 < sum(discards) < len(discards), "the case must exercise both decisions"
    rates = [np.mean(discards[:10]), np.mean(discards[10:])]
    np.testing.assert_allclose(hist.history["discard_rate"], rates, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "torch", "adam"])
def test_voting_matches_reference(optimizer):
    x, y = make_data(seed=2)
    candidates = {"sgd": [3.0, 1.0, 0.1, 0.01], "torch": [3.0, 1.0, 0.1, 0.01],
                  "adam": [0.3, 0.1, 0.01, 0.001]}[optimizer]
    model = build(keras_mcv.VotingModel, optimizer=optimizer, candidates=candidates, ema=0.3)
    params, opt, batches = ref_setup(model, x, y, "ce", optimizer)
    cap = Capture()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cap])
    ref = list(reference.voting(params, opt, batches * 2, candidates, 0.3, "ce"))
    assert len(cap.steps) == 20
    for step, ((w, slots, votes), (rp, rs, rv, _)) in enumerate(zip(cap.steps, ref)):
        assert_close(w, rp, "weights", step)
        assert_close(slots, flat_slots(rs), "optimizer slots", step)
        np.testing.assert_allclose(votes, rv, rtol=1e-12, err_msg=f"votes differ at step {step}")


@pytest.mark.parametrize(
    "optimizer,method,alpha",
    [("sgd", 1, 0.0), ("sgd", 2, 0.3), ("sgd", 3, 0.0), ("torch", 1, 0.0), ("torch", 2, 0.3),
     ("torch", 3, 0.0), ("adam", 1, 0.0), ("adam", 2, 0.5), ("adam", 3, 0.0)],
)
def test_search_matches_reference(optimizer, method, alpha):
    x, y = make_data(seed=3)
    model = build(keras_mcv.SearchModel, optimizer=optimizer, method=method, alpha=alpha)
    params, opt, batches = ref_setup(model, x, y, "ce", optimizer)
    cap = Capture()
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[cap])
    events = list(reference.search(params, opt, [batches] * 3, method, alpha, "ce"))
    ref_steps = [e for e in events if e[0] == "step"]
    ref_epochs = [e[1] for e in events if e[0] == "epoch"]
    assert len(cap.steps) == len(ref_steps) == 30
    for step, ((w, slots, _), (_, rp, rs)) in enumerate(zip(cap.steps, ref_steps)):
        assert_close(w, rp, "weights", step)
        assert_close(slots, flat_slots(rs), "optimizer slots", step)
    got = model.mcv_history
    assert [e["next_lr"] for e in got] == pytest.approx([e["next_lr"] for e in ref_epochs], rel=1e-12)
    assert [e["lr"] for e in got] == pytest.approx([e["lr"] for e in ref_epochs], rel=1e-12)
    for g, r in zip(got, ref_epochs):
        assert g["candidates"] == pytest.approx(r["candidates"], rel=1e-12)
        np.testing.assert_allclose(g["candidate_losses"], r["scores"], rtol=1e-5)
    assert len({e["lr"] for e in got}) > 1, "the LR must change for this case to mean anything"


def test_momentum_forms_same_steps_at_one_lr_different_trials():
    """Keras's and PyTorch's momentum forms: in epoch 1 (one LR) the same weights,
    but trials at other LRs differ, and so do Method 3's later choices."""
    x, y = make_data(seed=3)
    runs = {}
    for optimizer in ("sgd", "torch"):
        model = build(keras_mcv.SearchModel, optimizer=optimizer, method=3)
        cap = Capture()
        model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[cap])
        runs[optimizer] = (cap.steps, model.mcv_history)
    (keras_steps, keras_hist), (torch_steps, torch_hist) = runs["sgd"], runs["torch"]
    for step in range(10):
        assert_close(keras_steps[step][0], torch_steps[step][0], "weights", step)
    assert not np.allclose(keras_hist[0]["candidate_losses"], torch_hist[0]["candidate_losses"])
    assert [e["next_lr"] for e in keras_hist] == pytest.approx([0.1, 0.5, 2.5])
    assert [e["next_lr"] for e in torch_hist] == pytest.approx([0.1, 0.5, 2 / 3])


def test_voting_when_no_candidate_lowers_the_loss():
    """Every candidate too large: every step votes "none", decays and is discarded."""
    x, y = make_data("mse", seed=4)
    candidates = [50.0, 20.0]
    model = build(keras_mcv.VotingModel, kind="mse", candidates=candidates, ema=0.5)
    params, opt, batches = ref_setup(model, x, y, "mse", "sgd")
    before = [v.numpy().copy() for v in model.trainable_variables]
    cap = Capture()
    hist = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cap])
    ref = list(reference.voting(params, opt, batches * 2, candidates, 0.5, "mse"))
    assert all(d for *_, d in ref)
    assert hist.history["discard_rate"] == [1.0, 1.0]
    for step, ((w, _, votes), (_, _, rv, _)) in enumerate(zip(cap.steps, ref)):
        for a, b in zip(w, before):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(votes, rv, rtol=1e-12)
    np.testing.assert_allclose(cap.steps[-1][2], 0.5 * 0.5**20)


@pytest.mark.parametrize("cls", ["discard", "voting", "search"])
def test_non_finite_candidate_never_wins(cls):
    """A candidate so large that the MSE overflows float32 counts as +inf."""
    x, y = make_data("mse", seed=5)
    huge = 1e20
    if cls == "search":
        model = build(keras_mcv.SearchModel, kind="mse", method=3, candidates=[huge, 0.01, 0.001])
    elif cls == "voting":
        model = build(keras_mcv.VotingModel, kind="mse", candidates=[huge, 0.01, 0.001])
    else:
        model = build(keras_mcv.DiscardModel, kind="mse")
        model.optimizer.learning_rate.assign(huge)
    params = [v.numpy().astype("float32") for v in model.trainable_variables]
    opt = reference.Optimizer("sgd", params)
    batches = [(bx.astype("float32"), by.astype("float32")) for bx, by in batches_of(x, y)]
    cap = Capture()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cap])
    for w, _, _ in cap.steps:
        assert all(np.isfinite(a).all() for a in w)
    if cls == "search":
        events = list(reference.search(params, opt, [batches] * 2, 3, 0.0, "mse", candidates=[huge, 0.01, 0.001]))
        first = model.mcv_history[0]
        assert math.isinf(first["candidate_losses"][0])
        assert first["next_lr"] != huge
        assert first["next_lr"] == pytest.approx([e[1] for e in events if e[0] == "epoch"][0]["next_lr"])
    elif cls == "voting":
        ref = list(reference.voting(params, opt, batches * 2, [huge, 0.01, 0.001], 0.1, "mse"))
        for (w, _, votes), (rp, _, rv, _) in zip(cap.steps, ref):
            assert votes[0] < 1 / 3
            np.testing.assert_allclose(votes, rv, rtol=1e-6)
    else:
        ref = list(reference.discard(params, opt, batches * 2, np.float32(huge), "mse"))
        assert all(d for *_, d in ref)
        for (w, _, _), (rp, _, _) in zip(cap.steps, ref):
            assert_close(w, rp, "weights", 0)


def bn_dropout_model(cls=None, **kwargs):
    keras.utils.set_random_seed(7)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(8)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.3, seed=3)(h)
    outputs = keras.layers.Dense(C, activation="softmax")(h)
    if cls is None:
        return keras.Model(inputs, outputs)
    return cls(inputs, outputs, **kwargs)


CASES = [
    (keras_mcv.SearchModel, {"method": 2, "alpha": 0.5, "candidates": [0.3, 0.03]}),
    (keras_mcv.VotingModel, {"candidates": [0.03, 0.003], "ema": 1.0}),
    (keras_mcv.DiscardModel, {}),
]


def make_opt(optimizer):
    return keras.optimizers.SGD(0.03, momentum=0.9) if optimizer == "sgd" else keras.optimizers.Adam(0.003)


@pytest.mark.parametrize("cls,kwargs", CASES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_trials_restore_every_variable_bit_for_bit(cls, kwargs, optimizer):
    """After the trials of a step, every variable is exactly as before them.

    The model has BatchNormalization (moving statistics) and Dropout (a seed
    generator). Run eagerly, a probe reads every variable (weights, optimizer
    slots and `iterations`, BN statistics, seed states, metric states, MCV
    state) just before and just after the trials.
    """
    seen = []

    class Probe(cls):
        def _run_trials(self, grads, train, val):
            everything = self.variables + self.optimizer.variables + self.metrics_variables
            before = [np.array(v.numpy()) for v in everything]
            tried = super()._run_trials(grads, train, val)
            after = [np.array(v.numpy()) for v in everything]
            seen.append([(v.path, a, b) for v, a, b in zip(everything, before, after)])
            return tried

    x, y = make_data(seed=6)
    model = bn_dropout_model(Probe, **kwargs)
    model.compile(optimizer=make_opt(optimizer), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], run_eagerly=True)
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert len(seen) == 2
    for step in seen:
        assert any("moving_mean" in path for path, _, _ in step)
        assert any("seed_generator" in path for path, _, _ in step)
        for path, before, after in step:
            np.testing.assert_array_equal(after, before, err_msg=path)


@pytest.mark.parametrize("cls,kwargs", CASES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_step_equals_plain_keras_step_on_training_half(cls, kwargs, optimizer):
    """One MCV step ends where one plain Keras step on `batch_1` at the chosen LR ends.

    Non-trainable state (BN statistics, seed states, `iterations`) must match
    bit for bit; weights and slots to float32 rounding (the two graphs may
    reduce in a different order).
    """
    x, y = make_data(seed=6)
    x, y = x[:32], y[:32]
    mcv = bn_dropout_model(cls, **kwargs)
    mcv.compile(optimizer=make_opt(optimizer), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    plain = bn_dropout_model()
    plain.compile(optimizer=make_opt(optimizer), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    for a, b in zip(plain.variables, mcv.network_variables()):
        a.assign(b)
    # One shared plain step first, so momentum/Adam slots are non-zero.
    plain.fit(x[:16], y[:16], batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(mcv.network_variables(), plain.variables):
        a.assign(b)
    mcv.optimizer.build(mcv.trainable_variables)
    for a, b in zip(mcv.optimizer.variables, plain.optimizer.variables):
        a.assign(b)
    mcv.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert mcv.ops_counts()["forward"] >= 3, "trials must have run"
    if hasattr(mcv, "discard_tracker"):
        assert float(mcv.discard_tracker.result()) == 0.0, "pick a case whose step is accepted"
    plain.optimizer.learning_rate.assign(mcv.optimizer.learning_rate.numpy())
    plain.fit(x[:16], y[:16], batch_size=16, epochs=1, shuffle=False, verbose=0)
    pairs = list(zip(mcv.network_variables(), plain.variables)) + list(
        zip(mcv.optimizer.variables, plain.optimizer.variables)
    )
    for a, b in pairs:
        if a.trainable or "momentum" in a.path or "velocity" in a.path:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-9, err_msg=a.path)
        else:
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_epoch_loop_does_not_retrace():
    x, y = make_data()
    model = build(keras_mcv.SearchModel, method=1, trial_every=2)
    counts = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            counts.append(model.trace_count)

    model.fit(x, y, batch_size=BATCH, epochs=5, verbose=0, callbacks=[Count()])
    # Epoch 1 traces the 4-candidate trial step and the plain step, epoch 2 the
    # 7-candidate trial step; from then on nothing is traced again.
    assert counts[1] == counts[2] == counts[3] == counts[4]


def test_history_logs_per_epoch():
    x, y = make_data()
    for cls, keys in [
        (keras_mcv.SearchModel, {"loss", "lr", "mcv_val_loss"}),
        (keras_mcv.VotingModel, {"loss", "lr", "mcv_val_loss", "discard_rate"}),
        (keras_mcv.DiscardModel, {"loss", "lr", "mcv_val_loss", "discard_rate"}),
    ]:
        model = build(cls)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        hist = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, validation_data=(x, y))
        assert keys | {"accuracy", "val_loss", "val_accuracy"} <= set(hist.history)
        assert "val_lr" not in hist.history and "val_mcv_val_loss" not in hist.history
        assert all(len(v) == 2 for v in hist.history.values())


def test_ops_counts_match_table_4_1():
    x, y = make_data()
    for model, per_step in [
        (build(keras_mcv.DiscardModel), (3, 1, 1)),
        (build(keras_mcv.VotingModel), (4 + 2, 1, 4 + 1)),
        (build(keras_mcv.SearchModel, method=1), None),
        (build(keras_mcv.SearchModel, method=2, alpha=0.5), None),
    ]:
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
        ops = model.ops_counts()
        if per_step is None:
            k1, k2 = 4, 7
            two = 2 if model.method == 2 else 1
            per_step = None
            expected = (10 * (two * k1 + 2) + 10 * (two * k2 + 2), 20, 10 * (k1 + 1) + 10 * (k2 + 1))
        else:
            expected = tuple(20 * c for c in per_step)
        assert (ops["forward"], ops["backward"], ops["step"]) == expected


def test_trial_every_counts_plain_steps():
    x, y = make_data()
    model = build(keras_mcv.VotingModel, trial_every=4)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    trial_steps = len(range(0, 20, 4))
    plain_steps = 20 - trial_steps
    assert model.ops_counts() == {
        "forward": trial_steps * 6 + plain_steps,
        "backward": 20,
        "step": trial_steps * 5 + plain_steps,
    }


def test_batch_of_one_trains_without_trials():
    x, y = make_data()
    x, y = x[:33], y[:33]  # 2 batches of 16 and one of 1
    model = build(keras_mcv.VotingModel)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert int(model.mcv_untrialed_steps.numpy()) == 1
    assert all(np.isfinite(v.numpy()).all() for v in model.variables)


@pytest.mark.parametrize("cls", [keras_mcv.DiscardModel, keras_mcv.VotingModel, keras_mcv.SearchModel])
def test_save_and_load_round_trip(cls, tmp_path):
    x, y = make_data()
    kwargs = {"method": 2, "alpha": 0.3} if cls is keras_mcv.SearchModel else {}
    if cls is keras_mcv.VotingModel:
        kwargs = {"candidates": [0.5, 0.05], "ema": 0.2}
    model = build(cls, trial_every=2, validation_fraction=0.25, **kwargs)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is cls
    mcv_keys = {"validation_fraction", "trial_every", "trial_training", "method", "alpha", "candidates", "ema"}
    assert {k: v for k, v in loaded.get_config().items() if k in mcv_keys} == {
        k: v for k, v in model.get_config().items() if k in mcv_keys
    }
    assert loaded.compiled
    for a, b in zip(loaded.variables + loaded.mcv_state_variables,
                    model.variables + model.mcv_state_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert loaded.mcv_history == model.mcv_history
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    loaded.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


def test_wrap_sequential_functional_and_subclassed():
    x, y = make_data()
    seq = keras.Sequential([keras.Input((D,)), keras.layers.Dense(C, activation="softmax")])
    inputs = keras.Input((D,))
    func = keras.Model(inputs, keras.layers.Dense(C, activation="softmax")(inputs))

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(C, activation="softmax")

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="input_shape"):
        keras_mcv.SearchModel.wrap(Sub())
    for inner, kw in [(seq, {}), (func, {}), (Sub(), {"input_shape": (D,)})]:
        model = keras_mcv.SearchModel.wrap(inner, method=1, **kw)
        model.compile(optimizer=keras.optimizers.SGD(momentum=0.9), loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        # The wrapper trains the wrapped model's own weights.
        np.testing.assert_array_equal(inner.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0))


def test_schedules():
    schedule = keras.optimizers.schedules.InverseTimeDecay(0.1, decay_steps=1, decay_rate=0.5)
    x, y = make_data()
    for cls in (keras_mcv.VotingModel, keras_mcv.SearchModel):
        model = build(cls)
        with pytest.raises(ValueError, match="schedule"):
            model.compile(optimizer=keras.optimizers.SGD(schedule), loss="sparse_categorical_crossentropy")
    model = build(keras_mcv.DiscardModel)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="sparse_categorical_crossentropy")
    hist = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    assert hist.history["lr"][1] < hist.history["lr"][0] < 0.1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"trial_every": 0}, "trial_every"),
        ({"method": 4}, "method"),
        ({"method": 2, "alpha": 1.5}, "alpha"),
        ({"method": 1, "alpha": 0.3}, "alpha"),
        ({"candidates": []}, "empty"),
        ({"candidates": [0.1, -1.0]}, "positive"),
        ({"candidates": [0.1, float("nan")]}, "finite"),
    ],
)
def test_bad_arguments_raise_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(keras_mcv.SearchModel, **kwargs)


def test_bad_ema_and_batch_size():
    with pytest.raises(ValueError, match="ema"):
        build(keras_mcv.VotingModel, ema=0.0)
    model = build(keras_mcv.SearchModel)
    x, y = make_data()
    with pytest.raises(ValueError, match="batch_size=1"):
        model.fit(x, y, batch_size=1, verbose=0)
    assert model.trace_count == 0


# ------------------------------------------------- trial_batch_size


@pytest.mark.parametrize("family", ["discard", "voting", "search"])
def test_trial_batch_size_judges_on_the_first_examples_of_the_half(family):
    """With `trial_batch_size=3`, every decision equals the reference judged on
    the first 3 examples of each validation half (of 8); the step still trains
    on the whole training half."""
    x, y = make_data(seed=3)
    if family == "discard":
        model = build(keras_mcv.DiscardModel, trial_batch_size=3)
        model.optimizer.learning_rate.assign(0.5)
    elif family == "voting":
        model = build(keras_mcv.VotingModel, candidates=[3.0, 1.0, 0.1, 0.01], ema=0.3, trial_batch_size=3)
    else:
        model = build(keras_mcv.SearchModel, method=3, trial_batch_size=3)
    params, opt, batches = ref_setup(model, x, y, "ce", "sgd")
    cap = Capture()
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[cap])
    if family == "discard":
        ref = [(p, s) for p, s, _ in reference.discard(params, opt, batches * 3, np.float32(0.5), "ce", trial_size=3)]
        full = [d for *_, d in reference.discard(
            params, reference.Optimizer("sgd", params, momentum=0.9), batches * 3, np.float32(0.5), "ce")]
        sub = [d for *_, d in reference.discard(
            params, reference.Optimizer("sgd", params, momentum=0.9), batches * 3, np.float32(0.5), "ce",
            trial_size=3)]
        assert full != sub, "the sub-sample must change some decision for this case to mean anything"
    elif family == "voting":
        sub = list(reference.voting(params, opt, batches * 3, [3.0, 1.0, 0.1, 0.01], 0.3, "ce", trial_size=3))
        ref = [(p, s) for p, s, *_ in sub]
        full = list(reference.voting(
            params, reference.Optimizer("sgd", params, momentum=0.9), batches * 3,
            [3.0, 1.0, 0.1, 0.01], 0.3, "ce"))
        assert not np.allclose(full[-1][2], sub[-1][2]), "the sub-sample must change the votes"
    else:
        full = list(reference.search(
            params, reference.Optimizer("sgd", params, momentum=0.9), [batches] * 3, 3, 0.0, "ce"))
        events = list(reference.search(params, opt, [batches] * 3, 3, 0.0, "ce", trial_size=3))
        assert [e[1]["next_lr"] for e in full if e[0] == "epoch"] != [
            e[1]["next_lr"] for e in events if e[0] == "epoch"], "the sub-sample must change a decision"
        ref = [(p, s) for kind, p, s in (e for e in events if e[0] == "step")]
        ref_epochs = [e[1] for e in events if e[0] == "epoch"]
        got = model.mcv_history
        assert [e["next_lr"] for e in got] == pytest.approx([e["next_lr"] for e in ref_epochs], rel=1e-12)
        for g, r in zip(got, ref_epochs):
            np.testing.assert_allclose(g["candidate_losses"], r["scores"], rtol=1e-5)
    assert len(cap.steps) == len(ref) == 30
    for step, ((w, slots, _), (rp, rs)) in enumerate(zip(cap.steps, ref)):
        assert_close(w, rp, "weights", step)
        assert_close(slots, flat_slots(rs), "optimizer slots", step)


def test_trial_batch_size_of_the_whole_half_is_the_default():
    x, y = make_data(seed=3)
    runs = []
    for tbs in (None, BATCH // 2, 1000):
        model = build(keras_mcv.SearchModel, method=1, trial_batch_size=tbs)
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        runs.append(([v.numpy() for v in model.trainable_variables], model.mcv_history))
    for weights, history in runs[1:]:
        for a, b in zip(weights, runs[0][0]):
            np.testing.assert_array_equal(a, b)
        assert [e["candidate_losses"] for e in history] == [e["candidate_losses"] for e in runs[0][1]]


def test_trial_batch_size_round_trips_and_rejects_bad_values(tmp_path):
    model = build(keras_mcv.VotingModel, trial_batch_size=4)
    assert model.get_config()["trial_batch_size"] == 4
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert keras.saving.load_model(path).trial_batch_size == 4
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="trial_batch_size"):
            build(keras_mcv.SearchModel, trial_batch_size=bad)
