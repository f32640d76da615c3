"""Keras habits with the MCV models: the user's LR controls, `train_on_batch`, short
batches on conv nets, XLA, the `.keras` file, the user's weight list and the logs."""

import io
import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mcv
from keras_mcv import architectures
from keras_mcv.models import race as race_model
from keras_mcv.models.course_race import CourseRaceModel
from tests import reference
from tests.test_models import BATCH, C, D, assert_close, build, make_data, ref_setup

FOUR = [0.01, 1.0, 0.001, 0.1]  # a race of three epochs (rounds of 1 and 2 epochs)
TWO = [0.1, 0.01]  # a race of one epoch, then plain steps
ALL = [
    (keras_mcv.RaceModel, {"candidates": TWO}),
    (keras_mcv.SearchModel, {"method": 1}),
    (keras_mcv.VotingModel, {"candidates": [0.3, 0.03]}),
    (keras_mcv.DiscardModel, {}),
]


def fit(model, x, y, epochs, **kwargs):
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, **kwargs)


def race_reference(model, x, y, epochs, candidates, lrs_after=None):
    params, opt, batches = ref_setup(model, x, y, "ce", "sgd")
    events = reference.race(params, opt, [batches] * epochs, candidates, "ce", lrs_after)
    return [e[1] for e in events if e[0] == "epoch"]


def weights(model):
    return [v.numpy() for v in model.trainable_variables]


# ------------------------------------------------------- the user's LR controls


def test_race_then_reduce_lr_on_plateau_acts_on_the_chosen_lr():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=TWO)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1,
                                                min_delta=1e9, min_lr=0.0)
    start = build(keras_mcv.RaceModel, candidates=TWO)
    hist = fit(model, x, y, 4, callbacks=[plateau])
    w = model.mcv_history[0]["lr"]
    # Epoch 1 races; epoch 2 trains at the winner's LR; the plateau halves it after epochs 2 and 3.
    expected = [w, w, w / 2, w / 4]
    np.testing.assert_allclose(hist.history["lr"], expected, rtol=1e-6)
    assert [e["lr"] for e in model.mcv_history] == pytest.approx(expected, rel=1e-6)
    ref = race_reference(start, x, y, 4, TWO, {2: np.float32(w / 2), 3: np.float32(w / 4)})
    assert_close(weights(model), ref[-1]["params"], "weights", "end")
    assert float(model.mcv_lr.numpy()) == w  # the race's choice stays on record


def test_race_then_learning_rate_scheduler():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=TWO)
    # The keras.io pattern: keep the LR it is given, then decay it.
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr if epoch < 2 else lr * 0.1)
    hist = fit(model, x, y, 4, callbacks=[scheduler])
    w = model.mcv_history[0]["lr"]
    assert model.mcv_history[0]["survivors"] == [w]
    np.testing.assert_allclose(hist.history["lr"], [w, w, w * 0.1, w * 0.01], rtol=1e-5)


def test_race_then_the_users_own_lr_and_a_second_fit():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=TWO)
    ref = race_reference(model, x, y, 3, TWO, {2: np.float32(1e-4)})
    fit(model, x, y, 2)
    model.optimizer.learning_rate = 1e-4
    hist = fit(model, x, y, 1)
    np.testing.assert_allclose(hist.history["lr"], [1e-4], rtol=1e-6)
    assert model.mcv_history[-1]["lr"] == pytest.approx(1e-4, rel=1e-6)
    assert_close(weights(model), ref[-1]["params"], "weights", "end")


def test_recompiling_a_race_model_starts_a_new_race():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=TWO)
    fit(model, x, y, 2)
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    assert int(model.mcv_race_state.numpy()) == race_model.NOT_STARTED
    fit(model, x, y, 2)
    assert [e["race_round"] for e in model.mcv_history] == [1, None, 1, None]
    assert model.mcv_history[2]["candidates"] == TWO
    # The new race starts from the weights the first fit left, with fresh Adam state.
    again = build(keras_mcv.RaceModel, candidates=TWO)
    fit(again, x, y, 2)
    again.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    fit(again, x, y, 2)
    for a, b in zip(weights(model), weights(again)):
        np.testing.assert_array_equal(a, b)


def test_an_lr_set_during_the_race_ends_it_and_the_leader_trains_at_that_lr():
    x, y = make_data(seed=3)

    class SetAfterFirst(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                self.model.optimizer.learning_rate = 0.003

    model = build(keras_mcv.RaceModel, candidates=FOUR)
    with pytest.warns(UserWarning, match="ends the race"):
        hist = fit(model, x, y, 3, callbacks=[SetAfterFirst()])
    assert int(model.mcv_race_state.numpy()) == race_model.FINISHED
    np.testing.assert_allclose(hist.history["lr"][1:], [0.003, 0.003], rtol=1e-6)
    assert model.mcv_history[1]["race_ended"] == "learning rate set"
    # The same as a race of one epoch (its best branch), then two epochs at 0.003.
    short = build(keras_mcv.RaceModel, candidates=FOUR)
    ref = race_reference(short, x, y, 1, FOUR)
    fit(short, x, y, 1)
    assert_close(weights(short), ref[0]["params"], "weights", "epoch 1")
    short.optimizer.learning_rate = 0.003
    fit(short, x, y, 2)
    for a, b in zip(weights(model), weights(short)):
        np.testing.assert_array_equal(a, b)


def test_a_constant_schedule_means_no_race():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=FOUR)
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch: 0.003)
    with pytest.warns(UserWarning, match="ends the race"):
        hist = fit(model, x, y, 2, callbacks=[scheduler])
    np.testing.assert_allclose(hist.history["lr"], [0.003, 0.003], rtol=1e-6)
    assert model.ops_counts()["step"] == 20  # plain steps only
    assert model.mcv_history[0]["candidates"] is None


@pytest.mark.parametrize("cls", [keras_mcv.SearchModel, keras_mcv.VotingModel, CourseRaceModel])
@pytest.mark.parametrize("callback", [
    lambda: keras.callbacks.ReduceLROnPlateau(),
    lambda: keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr),
])
def test_models_that_choose_every_lr_refuse_lr_callbacks(cls, callback):
    x, y = make_data()
    model = build(cls)
    with pytest.raises(ValueError, match="chooses the learning rate"):
        fit(model, x, y, 1, callbacks=[callback()])
    assert model.trace_count == 0


@pytest.mark.parametrize("cls", [keras_mcv.SearchModel, keras_mcv.VotingModel, CourseRaceModel])
def test_models_that_choose_every_lr_refuse_a_callback_setting_it(cls):
    x, y = make_data()

    class Halve(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate = 0.5 * float(self.model.optimizer.learning_rate.numpy())

    model = build(cls)
    with pytest.raises(ValueError, match="changed the optimizer's learning rate"):
        fit(model, x, y, 2, callbacks=[Halve()])
    assert model.trace_count == 0


def test_discard_steps_at_the_lr_the_callbacks_set():
    x, y = make_data()
    model = build(keras_mcv.DiscardModel)
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch: 0.1 * 0.5**epoch)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.1, patience=1, min_delta=1e9)
    hist = fit(model, x, y, 3, callbacks=[scheduler, plateau])
    np.testing.assert_allclose(hist.history["lr"], [0.1, 0.05, 0.025], rtol=1e-6)


@pytest.mark.parametrize("cls,kwargs", ALL[1:])
def test_recompiling_with_another_optimizer_restores_its_state_after_trials(cls, kwargs):
    """A second `compile` brings new optimizer variables: the trials must protect those."""
    x, y = make_data(seed=2)
    model = build(cls, **kwargs)
    fit(model, x, y, 1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    fresh = build(cls, **kwargs)
    fresh.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    for a, b in zip(fresh.variables + fresh.mcv_state_variables,
                    model.variables + model.mcv_state_variables):
        a.assign(b)
    fit(model, x, y, 1)
    fit(fresh, x, y, 1)
    for a, b in zip(model.variables + model.optimizer.variables + model.mcv_state_variables,
                    fresh.variables + fresh.optimizer.variables + fresh.mcv_state_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


# ------------------------------------------------------------- train_on_batch


def loop_on_batch(model, x, y, epochs):
    for _ in range(epochs):
        for i in range(0, len(x), BATCH):
            model.train_on_batch(x[i : i + BATCH], y[i : i + BATCH])


@pytest.mark.parametrize("cls,kwargs", [
    (keras_mcv.RaceModel, {"candidates": FOUR}),
    (keras_mcv.SearchModel, {"method": 1}),
])
def test_train_on_batch_counts_epochs_in_steps(cls, kwargs):
    x, y = make_data(seed=3)
    fitted = build(cls, **kwargs)
    fit(fitted, x, y, 3)
    looped = build(cls, steps_per_epoch=len(x) // BATCH, **kwargs)
    loop_on_batch(looped, x, y, 3)
    assert len(looped.mcv_history) == 3
    assert json.dumps(looped.mcv_history) == json.dumps(fitted.mcv_history)
    for a, b in zip(weights(looped), weights(fitted)):
        np.testing.assert_array_equal(a, b)
    assert looped.get_config()["steps_per_epoch"] == 10


@pytest.mark.parametrize("cls,kwargs", ALL[:2])
def test_train_on_batch_without_steps_per_epoch_is_refused(cls, kwargs):
    x, y = make_data()
    model = build(cls, **kwargs)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.train_on_batch(x[:BATCH], y[:BATCH])
    assert model.trace_count == 0


@pytest.mark.parametrize("cls,kwargs", ALL[2:])
def test_train_on_batch_of_the_per_step_models_is_fit(cls, kwargs):
    x, y = make_data(seed=2)
    fitted = build(cls, **kwargs)
    fit(fitted, x, y, 2)
    looped = build(cls, **kwargs)
    loop_on_batch(looped, x, y, 2)
    for a, b in zip(looped.variables + looped.mcv_state_variables,
                    fitted.variables + fitted.mcv_state_variables):
        if "loss" not in a.path and "rate" not in a.path and "lr" not in a.path:
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build(cls, steps_per_epoch=10, **kwargs)


# ------------------------------------------------ batches that cannot be split


SPLITTING = [
    (keras_mcv.DiscardModel, {}),
    (keras_mcv.VotingModel, {"candidates": [0.1, 0.01]}),
    (keras_mcv.SearchModel, {"method": 2}),
    (keras_mcv.SearchModel, {**keras_mcv.TUNED_OPTIONS, "trial_every": 1}),
]


@pytest.mark.parametrize("cls,kwargs", SPLITTING)
def test_a_last_batch_of_one_on_a_conv_net_is_a_plain_step(cls, kwargs):
    """Conv2D graphs cannot run on an empty batch: the empty validation half must not run."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(33, 8, 8, 1)).astype("float32")
    y = np.arange(33) % 10
    keras.utils.set_random_seed(0)
    model = cls.wrap(architectures.digits_cnn(), **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    seen = {}

    class BeforeLast(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                m = self.model
                seen["vars"] = [v.numpy() for v in m.network_variables()]
                seen["opt"] = [v.numpy() for v in m.optimizer.variables]

    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[BeforeLast()])
    assert int(model.mcv_untrialed_steps.numpy()) == 1
    # The last step is a plain Keras step on its one example, at the LR it used.
    plain = architectures.digits_cnn()
    plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    plain.optimizer.build(plain.trainable_variables)
    for v, value in zip(plain.variables, seen["vars"]):
        v.assign(value)
    for v, value in zip(plain.optimizer.variables, seen["opt"]):
        v.assign(value)
    if isinstance(model, keras_mcv.SearchModel):
        plain.optimizer.learning_rate = float(model.mcv_history[0]["lr"])
    elif isinstance(model, keras_mcv.VotingModel):
        plain.optimizer.learning_rate = float(model._current_lr().numpy())
    plain.train_on_batch(x[32:], y[32:])
    for a, b in zip(model.trainable_variables, plain.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


class OneByOne(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i : i + 1], self.y[i : i + 1]


@pytest.mark.parametrize("make", [
    lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(1),
    lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(1),
    lambda x, y: OneByOne(x, y),
])
def test_unsplittable_batches_from_any_input_are_refused_before_training(make):
    x, y = make_data()
    model = build(keras_mcv.SearchModel)
    with pytest.raises(ValueError, match="batch_size=1 cannot be split"):
        model.fit(make(x, y), epochs=1, verbose=0)
    assert model.trace_count == 0


def test_a_generator_of_unsplittable_batches_is_refused_at_its_first_step():
    x, y = make_data()

    def one_by_one():
        while True:
            yield x[:1], y[:1]

    model = build(keras_mcv.SearchModel)
    with pytest.raises(ValueError, match="first batch could not be split"):
        model.fit(one_by_one(), steps_per_epoch=5, epochs=1, verbose=0)
    assert model.ops_counts()["backward"] == 1


# --------------------------------------------------------------------- XLA


def test_race_with_jit_compile_matches_the_reference():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=FOUR)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy", jit_compile=True)
    epochs = []

    class Epochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs.append(weights(self.model))

    ref = race_reference(model, x, y, 4, FOUR)
    fit(model, x, y, 4, callbacks=[Epochs()])
    for e, (got, want) in enumerate(zip(epochs, ref)):
        assert_close(got, want["params"], "weights at epoch end", e)
    assert [e["lr"] for e in model.mcv_history] == [r["lr"] for r in ref]


# --------------------------------------------------- the .keras file and weights


@pytest.mark.parametrize("cls,kwargs", ALL[:2])
def test_mcv_history_is_kept_in_the_keras_file(cls, kwargs, tmp_path):
    x, y = make_data(seed=3)
    model = build(cls, **kwargs)
    fit(model, x, y, 2)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert len(loaded.mcv_history) == 2
    assert json.dumps(loaded.mcv_history) == json.dumps(model.mcv_history)


def test_a_keras_file_saved_inside_the_race_goes_on_racing(tmp_path):
    x, y = make_data(seed=3)
    path = str(tmp_path / "epoch1.keras")

    class SaveFirst(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                self.model.save(path)

    model = build(keras_mcv.RaceModel, candidates=FOUR)
    fit(model, x, y, 3, callbacks=[SaveFirst()])
    loaded = keras.saving.load_model(path)
    assert int(loaded.mcv_race_state.numpy()) == race_model.RACING
    fit(loaded, x, y, 3, initial_epoch=1)
    assert json.dumps(loaded.mcv_history) == json.dumps(model.mcv_history)
    for a, b in zip(weights(loaded), weights(model)):
        np.testing.assert_array_equal(a, b)
    # The branches are in the file while the race runs, and only then.
    model.save(str(tmp_path / "after.keras"))
    assert branch_keys(path) and not branch_keys(str(tmp_path / "after.keras"))


def branch_keys(keras_file):
    import zipfile

    import h5py

    with zipfile.ZipFile(keras_file) as z, z.open("model.weights.h5") as f:
        with h5py.File(io.BytesIO(f.read()), "r") as h5:
            names = []
            h5.visit(names.append)
    return [n for n in names if "mcv_branch" in n or n.endswith("mcv_race")]


@pytest.mark.parametrize("cls,kwargs", ALL)
def test_the_method_state_is_not_in_the_users_weights(cls, kwargs, tmp_path):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((D,)), keras.layers.Dense(8, activation="relu"),
                            keras.layers.Dense(C, activation="softmax")])
    model = cls.wrap(net, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    assert len(model.get_weights()) == len(net.get_weights()) == 4
    assert model.count_params() == net.count_params()
    model.set_weights([w * 2 for w in net.get_weights()])
    np.testing.assert_array_equal(net.get_weights()[0], model.get_weights()[0])
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    assert "Non-trainable params: 0" in text and f"Total params: {net.count_params()}" in text
    # ... and the state is still saved with the model.
    x, y = make_data()
    fit(model, x, y, 1)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(loaded.mcv_state_variables, model.mcv_state_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    assert loaded.ops_counts() == model.ops_counts() and model.ops_counts()["step"] > 0


# ---------------------------------------------------------- the race's logs


def test_race_logs_one_branch_per_epoch_the_one_mcv_history_names():
    x, y = make_data(seed=3)
    model = build(keras_mcv.RaceModel, candidates=FOUR)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    ref = race_reference(model, x, y, 5, FOUR)
    hist = fit(model, x, y, 5)
    logs = hist.history
    assert logs["lr"] == pytest.approx([e["lr"] for e in model.mcv_history], rel=1e-6)
    np.testing.assert_allclose(logs["loss"], [r["loss"] for r in ref], rtol=1e-5)
    np.testing.assert_allclose(logs["accuracy"], [r["accuracy"] for r in ref], atol=1e-6)
    np.testing.assert_allclose(logs["mcv_val_loss"], logs["loss"], rtol=1e-6)


def test_with_unknown_steps_per_epoch_logs_and_validation_follow_the_chosen_branch():
    x, y = make_data(seed=3)
    # filter() hides the number of steps: the race closes each epoch at its end.
    ds = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(BATCH)
    model = build(keras_mcv.RaceModel, candidates=FOUR)
    ref = race_reference(model, x, y, 3, FOUR)
    seen = []

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.evaluate(x, y, verbose=0))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras: "input ran out of data"
        hist = model.fit(ds, epochs=3, verbose=0, validation_data=(x, y), callbacks=[Evaluate()])
    np.testing.assert_allclose(hist.history["loss"], [r["loss"] for r in ref], rtol=1e-5)
    assert hist.history["lr"] == pytest.approx([r["lr"] for r in ref], rel=1e-6)
    # Validation ran on the branch the epoch chose, which the model still holds.
    np.testing.assert_allclose(hist.history["val_loss"], seen, rtol=1e-5)
