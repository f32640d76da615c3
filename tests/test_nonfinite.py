"""Non-finite steps never crash a run and never reach the weights or the record."""

import json

import keras
import numpy as np
import pytest

import keras_mcv
from keras_mcv.callbacks import MCVStopping, RunRecorder

N, D, C, BATCH = 64, 5, 3, 16


def mlp(cls, **kwargs):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(C, activation="softmax")(h)
    model = cls(inputs, outputs, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
    return model


def data(nan_at=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    y = rng.integers(0, C, N)
    if nan_at is not None:
        x[nan_at] = np.nan  # an example in the training half of its batch
    return x, y


def finite(model):
    return all(np.isfinite(np.asarray(v.numpy())).all() for v in model.variables + model.optimizer.variables)


@pytest.mark.parametrize("cls", [keras_mcv.VotingModel, keras_mcv.DiscardModel])
@pytest.mark.parametrize("trial_every", [1, 2])
def test_nonfinite_training_loss_skips_and_counts_the_step(cls, trial_every):
    x, y = data(nan_at=BATCH + 1)  # second batch, training half (trial step or plain step)
    model = mlp(cls, trial_every=trial_every)
    hist = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
    assert hist.history["nonfinite_steps"] == [1.0, 1.0]
    assert finite(model)
    assert all(np.isfinite(v) for k, vs in hist.history.items() if k != "loss" for v in vs)


def test_absurd_candidate_never_chosen_and_run_finite():
    x, y = data()
    for cls, kwargs in [
        (keras_mcv.VotingModel, {"candidates": [1e6, 1e-2]}),
        (keras_mcv.SearchModel, {"candidates": [1e6, 1e-2]}),
    ]:
        model = mlp(cls, **kwargs)
        hist = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
        assert max(hist.history["lr"]) < 1e6
        assert finite(model)
        assert all(np.isfinite(hist.history["loss"]))


class Diverge(keras.callbacks.Callback):
    """Make the actual step diverge from the start of epoch 3."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            kernel = self.model.trainable_variables[0]
            kernel.assign(np.full(kernel.shape, np.inf, "float32"))


def test_search_stops_and_restores_best_epoch_when_the_step_diverges(tmp_path):
    x, y = data()
    model = mlp(keras_mcv.SearchModel, candidates=[0.1, 0.01])
    stopping = MCVStopping(patience=10)
    best = {}

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            best[epoch] = [np.array(v.numpy()) for v in self.model.network_variables()]

    recorder = RunRecorder(tmp_path / "run.json", recipe="t", method="search1")
    hist = model.fit(
        x, y, batch_size=BATCH, epochs=6, verbose=0, shuffle=False,
        callbacks=[Keep(), Diverge(), stopping, recorder],
    )
    recorder.finish()
    assert len(hist.history["loss"]) == 3 and stopping.stopped_epoch == 2
    assert stopping.restored_epoch in (0, 1)
    for v, w in zip(model.network_variables(), best[stopping.restored_epoch]):
        np.testing.assert_array_equal(v.numpy(), w)
    assert finite(model)
    text = (tmp_path / "run.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    record = json.loads(text)
    assert record["epochs"][2]["logs"]["loss"] is None
