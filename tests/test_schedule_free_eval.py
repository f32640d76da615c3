"""`ScheduleFreeEvaluation` against the NumPy ScheduleFreeAdamW reference, and its contracts."""

import keras
import numpy as np
import pytest

from keras_mcv.callbacks import ScheduleFreeEvaluation
from keras_mcv.optimizers import ScheduleFreeAdamW
from keras_mcv.schedule_free_eval import averaged_point, interpolated_point
from tests import reference
from tests.test_models import BATCH, C, D, batches_of, make_data

LR = 0.05


def build(seed=1, optimizer=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D,))
    model = keras.Model(inputs, keras.layers.Dense(C, activation="softmax")(inputs))
    model.compile(optimizer=optimizer or ScheduleFreeAdamW(LR),
                  loss="sparse_categorical_crossentropy")
    return model


def weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def test_the_two_points_are_each_others_inverse_exactly():
    y, z = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 0.5])
    x = averaged_point(y, z, 0.9)
    np.testing.assert_allclose(x, [(1.0 - 0.0) / 0.9, (-2.0 - 0.1) / 0.9, 0.5], rtol=1e-15)
    np.testing.assert_allclose(interpolated_point(x, z, 0.9), y, rtol=1e-15)


@pytest.mark.parametrize("keras_class", [False, True])
@pytest.mark.parametrize("warmup", [0, 7])
def test_optimizer_matches_the_reference_step_by_step(keras_class, warmup):
    """keras_mcv's ScheduleFreeAdamW is the authors' rule; Keras 3.15's reads z after its step."""
    x, y = make_data(seed=3)
    cls = keras.optimizers.ScheduleFreeAdamW if keras_class else ScheduleFreeAdamW
    model = build(optimizer=cls(LR, warmup_steps=warmup))
    model.optimizer.build(model.trainable_variables)
    params = [v.numpy().astype("float64") for v in model.trainable_variables]
    ref = reference.schedule_free(params, batches_of(x, y) * 2, LR, "ce", warmup_steps=warmup,
                                  keras_read_order=keras_class)
    other = list(reference.schedule_free(params, batches_of(x, y) * 2, LR, "ce", warmup_steps=warmup,
                                         keras_read_order=not keras_class))
    for step, ((xb, yb), (ref_y, _, ref_z)) in enumerate(zip(batches_of(x, y) * 2, ref)):
        model.train_on_batch(xb.astype("float32"), yb)
        for got, want in zip(weights(model), ref_y):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"y at step {step}")
        for i, want in enumerate(ref_z):
            np.testing.assert_allclose(model.optimizer._momentums[i].numpy(), want, rtol=1e-5,
                                       atol=1e-6, err_msg=f"z at step {step}")
    # The two read orders part measurably: the test can tell them apart.
    assert np.abs(weights(model)[0] - other[-1][0][0]).max() > 1e-3


def test_make_optimizer_gives_the_authors_rule():
    from keras_mcv import optimizers

    opt = optimizers.make_optimizer("schedule_free_adamw")
    assert type(opt) is ScheduleFreeAdamW
    assert isinstance(opt, keras.optimizers.ScheduleFreeAdamW)
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.0025)


@pytest.mark.parametrize("keras_class", [False, True])
def test_evaluation_sees_the_reference_x_and_training_the_reference_y(keras_class):
    """Every epoch's validation loss is the loss at the reference's x; after fit the model holds x.

    With Keras's own class too: the callback recovers the x that class computes.
    """
    x, y = make_data(seed=3)
    # Not built eagerly: the callback builds it (Keras's lazy build would leave z at zero).
    model = build(optimizer=keras.optimizers.ScheduleFreeAdamW(LR) if keras_class else None)
    params = [v.numpy().astype("float64") for v in model.trainable_variables]
    ref = list(reference.schedule_free(params, batches_of(x, y) * 3, LR, "ce",
                                       keras_read_order=keras_class))
    hist = model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
                     validation_data=(x, y), callbacks=[ScheduleFreeEvaluation()])
    for epoch in range(3):
        _, ref_x, _ = ref[10 * epoch + 9]
        want = reference.loss_fn(ref_x, x.astype("float64"), y, "ce")
        assert hist.history["val_loss"][epoch] == pytest.approx(want, rel=1e-5)
        ref_y = ref[10 * epoch + 9][0]
        # The training loss is measured at y: not the same point.
        assert reference.loss_fn(ref_y, x.astype("float64"), y, "ce") != pytest.approx(want, rel=1e-4)
    ref_y, ref_x, ref_z = ref[-1]
    for got, want in zip(weights(model), ref_x):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    z = [model.optimizer._momentums[i].numpy() for i in range(2)]
    for got, want in zip(z, ref_z):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    want_pred = reference.forward(ref_x, x.astype("float64"))
    want_pred = np.exp(want_pred - want_pred.max(1, keepdims=True))
    want_pred /= want_pred.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), want_pred, rtol=1e-4, atol=1e-6)


def test_training_follows_the_plain_trajectory_bit_for_bit():
    x, y = make_data(seed=3)
    plain = build()
    plain.optimizer.build(plain.trainable_variables)
    plain.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0)
    swapped = build()
    cb = ScheduleFreeEvaluation()
    swapped.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
                validation_data=(x, y), callbacks=[cb])
    swapped.evaluate(x, y, verbose=0)
    swapped.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
                validation_data=(x, y), callbacks=[cb])
    held = weights(swapped)
    cb.to_y()
    for a, b in zip(weights(swapped), weights(plain)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(swapped.optimizer.variables, plain.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not all(np.array_equal(a, b) for a, b in zip(held, weights(plain))), "x differs from y"


def test_a_checkpoint_holds_x_and_a_resumed_run_recovers_y(tmp_path):
    x, y = make_data(seed=3)
    whole = build()
    whole.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0,
              callbacks=[ScheduleFreeEvaluation()])

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    first = build()
    with pytest.raises(RuntimeError, match="interrupted"):
        # The backup is before the swap callback in the list: it must still save x.
        first.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0,
                  callbacks=[backup, Interrupt(), ScheduleFreeEvaluation()])
    resumed = build(seed=7)
    resumed.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
                           ScheduleFreeEvaluation()])
    assert int(resumed.optimizer.iterations.numpy()) == 40
    for a, b in zip(weights(resumed), weights(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_saved_model_predicts_at_x(tmp_path):
    x, y = make_data(seed=3)
    model = build()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[ScheduleFreeEvaluation()])
    path = str(tmp_path / "sf.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    params = [v.numpy().astype("float64") for v in build().trainable_variables]
    ref_x = list(reference.schedule_free(params, batches_of(x, y) * 2, LR, "ce"))[-1][1]
    for got, want in zip(weights(loaded), ref_x):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "optimizer,match",
    [
        (lambda: keras.optimizers.Adam(1e-3), "needs a model compiled with"),
        (lambda: keras.optimizers.ScheduleFreeAdamW(LR, use_ema=True), "use_ema"),
    ],
)
def test_wrong_optimizer_is_refused_before_any_step(optimizer, match):
    x, y = make_data(seed=3)
    model = build(optimizer=optimizer())
    before = weights(model)
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[ScheduleFreeEvaluation()])
    for a, b in zip(weights(model), before):
        np.testing.assert_array_equal(a, b)


def test_run_method_records_the_schedule_free_anchor_at_x(tmp_path, monkeypatch):
    """`experiment.run_method` evaluates a ScheduleFreeAdamW run at its averaged point."""
    import recipes
    from keras_mcv import callbacks, experiment

    seen = []

    class Spy(ScheduleFreeEvaluation):
        def on_train_end(self, logs=None):
            super().on_train_end(logs)
            seen.append(self.model.evaluate(self.model._spy_x, self.model._spy_y, verbose=0,
                                            return_dict=True)["loss"])

    monkeypatch.setattr(callbacks, "ScheduleFreeEvaluation", Spy)
    config = recipes.get_config("digits_small_cnn")
    data = config.load_data(None, 200)
    original = keras.Model.fit

    def fit(self, *args, **kwargs):
        self._spy_x, self._spy_y = data.x_test, data.y_test
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    record = experiment.run_method(config, "baseline", optimizer="schedule_free_adamw", epochs=1,
                                   out_dir=str(tmp_path), verbose=0, data=data)
    assert len(seen) == 1
    assert record["test"]["loss"] == pytest.approx(seen[0], rel=1e-6)
    # Plain Adam runs get no swap.
    experiment.run_method(config, "baseline", optimizer="adam", epochs=1, out_dir=str(tmp_path),
                          verbose=0, data=data)
    assert len(seen) == 1
