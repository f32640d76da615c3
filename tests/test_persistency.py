"""PersistencyModel against the NumPy reference of Algorithm 4, step by step.

Run as a script (`mirrored OUT`), this file trains the same model under
`MirroredStrategy` on two logical CPUs and on one device, in a fresh
interpreter (logical devices must be configured before TensorFlow starts).
"""

import os
import sys

import keras
import numpy as np
import pytest

from keras_mcv.models.persistency import PersistencyModel
from tests import reference, replicas
from tests import reference_companions as rc

N, D, C, BATCH = 48, 5, 3, 16
LR = 0.05
ADAM_LR = 0.01


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(D, C)) + rng.normal(scale=0.5, size=(N, C)), axis=1)
    return x, y.astype("int64")


def initial_params(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=0.3, size=(D, C)).astype("float32"), np.zeros(C, "float32")]


def make_optimizer(kind):
    if kind == "sgd":
        return keras.optimizers.SGD(LR, momentum=0.9)
    return keras.optimizers.Adam(ADAM_LR)


def build(persistency=1, optimizer="sgd"):
    inputs = keras.Input((D,))
    outputs = keras.layers.Dense(C, activation="softmax")(inputs)
    model = PersistencyModel(inputs, outputs, persistency=persistency)
    model.compile(optimizer=make_optimizer(optimizer), loss="sparse_categorical_crossentropy")
    for variable, value in zip(model.trainable_variables, initial_params()):
        variable.assign(value)
    return model


def batches_of(x, y):
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]


def slots(optimizer):
    """Optimizer slots in the reference's order: all momentums, then all velocities (Adam)."""
    return [
        v.numpy()
        for suffix in ("_momentum", "_velocity")
        for v in optimizer.variables
        if v.path.endswith(suffix)
    ]


# SGD with momentum (the document's), K = 1, 2, 3; one Adam case: any optimizer works.
@pytest.mark.parametrize("k, optimizer", [(1, "sgd"), (2, "sgd"), (3, "sgd"), (2, "adam")])
def test_matches_reference_step_by_step(k, optimizer):
    x, y = make_data()
    batches = batches_of(x, y) * 2
    model = build(k, optimizer)
    params = [p.astype("float64") for p in initial_params()]
    opt = reference.Optimizer(optimizer, params, momentum=0.9)
    lr = LR if optimizer == "sgd" else ADAM_LR
    ref = rc.persistency(params, opt, [(xb.astype("float64"), yb) for xb, yb in batches], k, lr, "ce")
    # Adam divides by sqrt(v) + 1e-7, which magnifies float32 rounding where v is tiny.
    atol = 1e-6 if optimizer == "sgd" else 1e-5
    for step, ((xb, yb), (ref_params, ref_state, ref_loss)) in enumerate(zip(batches, ref)):
        model.reset_metrics()
        logs = model.train_on_batch(xb, yb, return_dict=True)
        msg = f"step {step}"
        for variable, expected in zip(model.trainable_variables, ref_params):
            np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=atol, err_msg=msg)
        model_slots, ref_slots = slots(model.optimizer), [s for group in ref_state[0] for s in group]
        assert len(model_slots) == len(ref_slots) == (2 if optimizer == "sgd" else 4)
        for slot, expected in zip(model_slots, ref_slots):
            np.testing.assert_allclose(slot, expected, rtol=1e-5, atol=atol, err_msg=msg)
        # The logged loss is the batch's loss before its first update.
        assert logs["loss"] == pytest.approx(ref_loss, rel=1e-5), msg
    assert int(model.optimizer.iterations.numpy()) == k * len(batches)


def test_fit_logs_the_first_pass_loss():
    x, y = make_data()
    model = build(persistency=2)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    params = [p.astype("float64") for p in initial_params()]
    opt = reference.Optimizer("sgd", params, momentum=0.9)
    batches = [(xb.astype("float64"), yb) for xb, yb in batches_of(x, y)] * 2
    losses = [loss for _, _, loss in rc.persistency(params, opt, batches, 2, LR, "ce")]
    per_epoch = len(losses) // 2
    expected = [np.mean(losses[:per_epoch]), np.mean(losses[per_epoch:])]
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5)


def test_persistency_one_is_plain_keras_training_exactly():
    """Same weights, optimizer state and logs, bit for bit, on a small MLP with metrics."""
    x, y = make_data()

    def network(cls, **kwargs):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((D,))
        hidden = keras.layers.Dense(8, activation="tanh", kernel_regularizer=keras.regularizers.L2(1e-3))(inputs)
        outputs = keras.layers.Dense(C, activation="softmax")(hidden)
        model = cls(inputs, outputs, **kwargs)
        model.compile(optimizer=make_optimizer("sgd"), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model

    plain = network(keras.Model)
    persistent = network(PersistencyModel, persistency=1)
    for a, b in zip(plain.trainable_variables, persistent.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    plain_history = plain.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    persistent_history = persistent.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    assert plain_history.history == persistent_history.history
    for a, b in zip(plain.variables + plain.optimizer.variables,
                    persistent.variables + persistent.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_save_load_round_trip(tmp_path):
    x, y = make_data()
    model = build(persistency=3)
    batches = batches_of(x, y)
    model.train_on_batch(*batches[0])
    path = str(tmp_path / "persistency.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is PersistencyModel
    assert loaded.persistency == 3 and loaded.get_config()["persistency"] == 3
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # Optimizer state came back too: one more batch from each lands on the same weights.
    model.train_on_batch(*batches[1])
    loaded.train_on_batch(*batches[1])
    for a, b in zip(loaded.trainable_variables, model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert int(loaded.optimizer.iterations.numpy()) == 6


def test_wrap_shares_layers_and_passes_options():
    inner = keras.Sequential([keras.Input((D,)), keras.layers.Dense(C, activation="softmax")], name="inner")
    model = PersistencyModel.wrap(inner, persistency=2)
    assert model.name == "inner" and model.persistency == 2
    assert [id(v) for v in model.trainable_variables] == [id(v) for v in inner.trainable_variables]
    with pytest.raises(ValueError, match="persistency"):
        PersistencyModel.wrap(inner, persistency=0)


@pytest.mark.parametrize("k", [0, -1, 1.5, 2.0, True, "2", None])
def test_bad_persistency_is_refused_before_building(k):
    inputs = keras.Input((D,))
    with pytest.raises(ValueError, match="`persistency` must be an integer >= 1"):
        PersistencyModel(inputs, keras.layers.Dense(C)(inputs), persistency=k)


def test_numpy_integer_persistency_is_accepted():
    inputs = keras.Input((D,))
    model = PersistencyModel(inputs, keras.layers.Dense(C)(inputs), persistency=np.int64(2))
    assert model.persistency == 2 and type(model.persistency) is int


# ------------------------------------------------------------ tf.distribute

REPLICAS = 2


def _run_mirrored(out):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    x, y = make_data()
    result = {}
    for tag, strategy in [
        ("dist", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
        ("single", tf.distribute.get_strategy()),
    ]:
        with strategy.scope():
            model = build(persistency=2)
        history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        result[f"{tag}/log/loss"] = np.asarray(history.history["loss"])
        replicas.store(result, f"{tag}/var", model.trainable_variables + model.optimizer.variables)
    np.savez(out, **result)


def test_mirrored_run_equals_single_device_run(tmp_path):
    out = str(tmp_path / "mirrored.npz")
    r = replicas.run_script([os.path.abspath(__file__), "mirrored"], out)
    paths = sorted({k[len("dist/var/"):].rsplit("/", 1)[0] for k in r if k.startswith("dist/var/")})
    assert len(paths) >= 5  # two weights, iterations, learning rate, two momentums
    for path in paths:
        replica0, replica1 = r[f"dist/var/{path}/0"], r[f"dist/var/{path}/1"]
        np.testing.assert_array_equal(replica0, replica1, err_msg=path)
        np.testing.assert_allclose(replica0, r[f"single/var/{path}/0"], rtol=1e-5, atol=1e-6, err_msg=path)
    np.testing.assert_allclose(r["dist/log/loss"], r["single/log/loss"], rtol=1e-5)


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        _run_mirrored(sys.argv[2])
