"""`RaceModel` against the NumPy reference, step by step, and its contracts."""

import keras
import numpy as np
import pytest

import keras_mcv
from keras_mcv.models import race as race_model
from tests import reference
from tests.test_models import BATCH, assert_close, build, make_data, ref_setup

# Mixed order, so that keeping the best is not keeping the list's first half.
CANDIDATES = {"sgd": [0.01, 1.0, 0.001, 0.1], "adam": [0.003, 0.3, 0.0003, 0.03]}


class Capture(keras.callbacks.Callback):
    """After every step, each racing branch's weights (or the model's); after every epoch, the model's."""

    def on_train_begin(self, logs=None):
        self.steps, self.epochs = [], []
        self.racing = []

    def on_train_batch_begin(self, batch, logs=None):
        m = self.model
        state = int(m.mcv_race_state.numpy())
        if state == race_model.NOT_STARTED:
            self.racing.append(len(m.candidates))
        elif state == race_model.RACING:
            self.racing.append(int(m.mcv_race_alive.numpy()))
        else:
            self.racing.append(None)

    def on_train_batch_end(self, batch, logs=None):
        m = self.model
        n = len(m.trainable_variables)
        alive = self.racing[-1]
        if alive is None:
            self.steps.append([[v.numpy().copy() for v in m.trainable_variables]])
        else:
            stacks = [s.numpy() for s in m._mcv.branches.stacks[:n]]
            self.steps.append([[s[j].copy() for s in stacks] for j in range(alive)])

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append([v.numpy().copy() for v in self.model.trainable_variables])


def race_and_reference(optimizer, epochs, seed=3):
    x, y = make_data(seed=seed)
    candidates = CANDIDATES[optimizer]
    model = build(keras_mcv.RaceModel, optimizer=optimizer, candidates=candidates)
    params, opt, batches = ref_setup(model, x, y, "ce", optimizer)
    cap = Capture()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[cap])
    events = list(reference.race(params, opt, [batches] * epochs, candidates, "ce"))
    return model, cap, events


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("epochs", [2, 5])
def test_race_matches_reference(optimizer, epochs):
    model, cap, events = race_and_reference(optimizer, epochs)
    ref_steps = [e[1] for e in events if e[0] == "step"]
    ref_epochs = [e[1] for e in events if e[0] == "epoch"]
    assert len(cap.steps) == len(ref_steps) == 10 * epochs
    for step, (got, want) in enumerate(zip(cap.steps, ref_steps)):
        if step % 10 == 9 and cap.racing[step] is not None:
            continue  # a round's last step: the branches have been re-ordered (checked below)
        assert len(got) == len(want), f"number of branches differs at step {step}"
        for j, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"branch {j} weights", step)
    history = model.mcv_history
    assert len(history) == len(ref_epochs) == epochs
    for e, (g, r, w) in enumerate(zip(history, ref_epochs, cap.epochs)):
        assert g["lr"] == pytest.approx(r["lr"], rel=1e-12)
        assert_close(w, r["params"], "the model's weights (the leader) at epoch end", e)
        if r["candidates"] is None:
            assert g["candidates"] is None
            continue
        assert g["candidates"] == pytest.approx(r["candidates"], rel=1e-12)
        np.testing.assert_allclose(g["candidate_losses"], r["candidate_losses"], rtol=1e-5)
        assert (g["survivors"] is None) == (r["survivors"] is None)
        if r["survivors"] is not None:
            assert g["survivors"] == pytest.approx(r["survivors"], rel=1e-12)
    first = history[0]["survivors"]
    # The case must rank the candidates, not keep the list's first half by default.
    assert first != CANDIDATES[optimizer][: len(first)]
    assert model.mcv_race_state.numpy() == race_model.FINISHED


def test_ops_counts_and_logs():
    model, cap, events = race_and_reference("sgd", 5)
    # Rounds: 4 branches for 1 epoch, 2 for 2 epochs, then 1: (4 + 2 + 2 + 1 + 1) x 10 steps.
    assert model.ops_counts() == {"forward": 100, "backward": 100, "step": 100}
    assert cap.racing == [4] * 10 + [2] * 20 + [None] * 20
    ref_epochs = [e[1] for e in events if e[0] == "epoch"]
    assert [e["race_round"] for e in model.mcv_history] == [1, 2, 2, None, None]
    # One graph for every number of racing branches (a loop), one for plain steps.
    assert model.trace_count == 2
    assert ref_epochs[-1]["lr"] == model.mcv_history[-1]["lr"]


def test_logs_report_the_leading_branch():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=CANDIDATES["sgd"])
    hist = model.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0,
                     validation_data=(x, y))
    logs = hist.history
    # Epoch 4 runs after the race (3 epochs): plain steps at the winner's LR.
    assert logs["lr"][-1] == pytest.approx(model.mcv_history[-1]["lr"], rel=1e-6)
    # In race epochs, `lr` is the mean over steps of the leader's LR.
    assert all(min(CANDIDATES["sgd"]) <= v <= max(CANDIDATES["sgd"]) for v in logs["lr"])
    assert all(np.isfinite(logs["loss"]))
    np.testing.assert_allclose(logs["loss"], logs["mcv_val_loss"], rtol=1e-6)
    # Keras evaluates validation_data after the epoch's last step: it must see the
    # leader the race just chose, which the model still holds afterwards.
    after = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["val_loss"][-1] == pytest.approx(after["loss"], rel=1e-5)


def test_validation_sees_the_leader_after_every_race_epoch():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=CANDIDATES["sgd"])

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.seen = getattr(self, "seen", []) + [(logs["val_loss"], self.model.evaluate(x, y, verbose=0))]

    ev = Evaluate()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              validation_data=(x, y), callbacks=[ev])
    for logged, now in ev.seen:
        assert logged == pytest.approx(now, rel=1e-5)


def test_a_diverging_candidate_is_eliminated_and_logs_stay_finite():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=[1e8, 0.1])
    hist = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    assert model.mcv_history[0]["survivors"] == [0.1]
    assert all(np.isfinite(hist.history["loss"]))
    assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)


def test_unknown_steps_per_epoch_decides_at_epoch_end():
    import tensorflow as tf

    x, y = make_data(seed=3)
    # filter() hides the cardinality from Keras: the race then closes each epoch in
    # `end_epoch` instead of after the last step.
    ds = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(BATCH)
    model = build(keras_mcv.RaceModel, candidates=CANDIDATES["sgd"])
    model.fit(ds, epochs=3, verbose=0, shuffle=False)
    reference_model = build(keras_mcv.RaceModel, candidates=CANDIDATES["sgd"])
    reference_model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    assert [e["survivors"] for e in model.mcv_history] == [e["survivors"] for e in reference_model.mcv_history]
    assert_close([v.numpy() for v in model.trainable_variables],
                 [v.numpy() for v in reference_model.trainable_variables], "weights", "end")


def test_resumed_inside_the_race_goes_on_with_its_branches(tmp_path):
    """Weights saved after epoch 1 hold the race (branches, round, losses): loaded into a
    fresh model, two more epochs end where an uninterrupted three-epoch run ends."""
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=CANDIDATES["sgd"])
    path = str(tmp_path / "epoch1.weights.h5")

    class SaveFirst(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                self.model.save_weights(path)

    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[SaveFirst()])
    resumed = build(keras_mcv.RaceModel, candidates=CANDIDATES["sgd"])
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(path)
    assert resumed.mcv_race_state.numpy() == race_model.RACING
    assert resumed.mcv_history == model.mcv_history[:1]
    before = resumed.ops_counts()
    resumed.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    assert resumed.ops_counts()["step"] - before["step"] == 2 * 2 * 10, "two branches race on"
    assert resumed.mcv_race_state.numpy() == race_model.FINISHED
    assert [e["survivors"] for e in resumed.mcv_history[1:]] == [
        e["survivors"] for e in model.mcv_history[1:]]
    for a, b in zip(resumed.trainable_variables, model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_second_fit_in_the_same_process_goes_on_with_the_race():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=CANDIDATES["sgd"])

    class StopAfterFirst(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    model.fit(x, y, batch_size=BATCH, epochs=5, shuffle=False, verbose=0, callbacks=[StopAfterFirst()])
    assert model.mcv_race_state.numpy() == race_model.RACING
    assert len(model.mcv_history[0]["survivors"]) == 2
    before = model.ops_counts()["step"]

    class State(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.seen = getattr(self, "seen", []) + [int(self.model.mcv_race_state.numpy())]

    state = State()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[state])
    # Still racing until round 2 ends on the last step.
    assert state.seen[:-1] == [race_model.RACING] * 19 and state.seen[-1] == race_model.FINISHED
    # Round 2: both survivors race for its two epochs, 10 steps each.
    assert model.ops_counts()["step"] - before == 2 * 2 * 10
    assert [e["race_round"] for e in model.mcv_history[1:]] == [2, 2]
    assert len(model.mcv_history[-1]["survivors"]) == 1
    assert model.mcv_race_state.numpy() == race_model.FINISHED


def test_a_second_fit_continues_at_the_winner():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=CANDIDATES["sgd"])
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    winner = model.mcv_history[-1]["lr"]
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert model.mcv_history[-1]["lr"] == winner
    assert model.mcv_history[-1]["candidates"] is None


def test_save_and_load_round_trip(tmp_path):
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=[0.3, 0.03, 0.003])
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "race.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_mcv.RaceModel)
    assert loaded.candidates == [0.3, 0.03, 0.003]
    assert float(loaded.mcv_lr.numpy()) == pytest.approx(float(model.mcv_lr.numpy()))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(validation_fraction=0.5), "does not split batches"),
        (dict(trial_every=2), "does not split batches"),
        (dict(candidates=[0.1]), "at least 2"),
        (dict(candidates=[0.1, -1.0]), "positive"),
        (dict(candidates=[]), "empty"),
    ],
)
def test_bad_arguments_raise_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(keras_mcv.RaceModel, **kwargs)


def test_a_schedule_is_refused_at_compile():
    inputs = keras.Input((5,))
    model = keras_mcv.RaceModel(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    with pytest.raises(ValueError, match="schedule"):
        model.compile(optimizer=keras.optimizers.SGD(schedule), loss="sparse_categorical_crossentropy")


def test_batch_of_one_is_fine():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=[0.1, 0.01])
    model.fit(x[:4], y[:4], batch_size=1, epochs=1, verbose=0)
    assert model.mcv_history[0]["survivors"] is not None


def _digits_net():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(32, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_winner_trains_as_plain_keras_at_its_lr_on_digits(optimizer):
    """Real data: the branch that wins is exactly a plain Keras run at its LR.

    Every branch starts from the same weights and sees the same batches, and
    nothing in this network draws random numbers, so the race's result must be
    the plain run of the LR it chose, and a good one on scikit-learn's digits.
    """
    from keras_mcv import data

    d = data.normalize(data.load_digits())
    x, y = d.x_train[:640], d.y_train[:640]

    def make_optimizer(lr):
        if optimizer == "sgd":
            return keras.optimizers.SGD(lr, momentum=0.9)
        return keras.optimizers.Adam(lr)

    keras.utils.set_random_seed(0)
    model = keras_mcv.RaceModel.wrap(_digits_net())
    model.compile(optimizer=make_optimizer(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0)
    winner = model.mcv_history[-1]["lr"]
    assert model.mcv_history[2]["survivors"] == [winner]

    keras.utils.set_random_seed(0)
    plain = _digits_net()
    plain.compile(optimizer=make_optimizer(winner), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    plain.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0)
    for a, b in zip(model.trainable_variables, plain.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    acc = model.evaluate(d.x_test, d.y_test, verbose=0, return_dict=True)["accuracy"]
    assert acc > 0.85
