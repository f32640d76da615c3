"""A run interrupted after epoch k and resumed with BackupAndRestore ends as an
uninterrupted one, bit for bit: same weights, LR history, MCV state, stopping state,
mcv_history; for the race, whether it stopped between rounds, inside one or after it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mcv
from keras_mcv.callbacks import MCVStopping

N, D, C, BATCH, EPOCHS = 96, 5, 3, 16, 5


class Interrupt(keras.callbacks.Callback):
    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after - 1:
            raise RuntimeError("interrupted")


def build(cls, kwargs):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = keras.layers.Dense(C, activation="softmax")(h)
    model = cls(inputs, outputs, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
    return model


def fit(model, x, y, backup, extra=()):
    stopping = MCVStopping(patience=50)
    cbs = [keras.callbacks.BackupAndRestore(str(backup)), stopping, *extra]
    hist = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=False, callbacks=cbs)
    return hist.history, stopping


CASES = [
    (keras_mcv.SearchModel, {"method": 2, "candidates": [0.3, 0.03, 0.003]}),
    (keras_mcv.VotingModel, {"candidates": [0.3, 0.03, 0.003], "ema": 0.5, "trial_every": 3}),
    (keras_mcv.DiscardModel, {"trial_every": 2}),
    # Four candidates race for three epochs: rounds of one and two epochs.
    (keras_mcv.RaceModel, {"candidates": [1.0, 0.3, 0.03, 0.003]}),
]


@pytest.mark.parametrize("crash", [1, 2, 3])
@pytest.mark.parametrize("cls,kwargs", CASES)
def test_resume_matches_uninterrupted_run(cls, kwargs, crash, tmp_path):
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(D, C)), axis=1)

    ref = build(cls, kwargs)
    ref_logs, ref_stop = fit(ref, x, y, tmp_path / "a")

    first = build(cls, kwargs)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(first, x, y, tmp_path / "b", extra=[Interrupt(crash)])
    resumed = build(cls, kwargs)  # a fresh model, as in a new process
    logs, stop = fit(resumed, x, y, tmp_path / "b")

    everything = lambda m: m.variables + m.optimizer.variables + m.mcv_state_variables  # noqa: E731
    for a, b in zip(everything(ref), everything(resumed)):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # The resumed fit logs only the epochs it ran.
    assert set(logs) == set(ref_logs)
    for key in logs:
        np.testing.assert_array_equal(ref_logs[key][crash:], logs[key], err_msg=key)
    assert stop.losses == ref_stop.losses and stop.best_epoch == ref_stop.best_epoch
    for a, b in zip(stop.best_weights, ref_stop.best_weights):
        np.testing.assert_array_equal(a, b)
    assert resumed.mcv_history == ref.mcv_history
    per_epoch = cls in (keras_mcv.SearchModel, keras_mcv.RaceModel)
    assert len(resumed.mcv_history) == (EPOCHS if per_epoch else 0)
    assert resumed.ops_counts() == ref.ops_counts()
    assert not (tmp_path / "b").exists()  # Keras deletes the backup, ours with it
