"""AdaptiveNesterovModel against the NumPy reference of Algorithm 5, step by step.

Run as a script (`mirrored OUT`), this file trains the same model under
`MirroredStrategy` on two logical CPUs and on one device, in a fresh
interpreter (logical devices must be configured before TensorFlow starts).
"""

import os
import sys

import keras
import numpy as np
import pytest

from keras_mcv.models.adaptive_nesterov import AdaptiveNesterovModel
from tests import reference_companions as rc
from tests import replicas

N, D, C = 48, 5, 3
BATCH = 16
STEPS = 6


def make_data(kind="ce", seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    if kind == "ce":
        y = np.argmax(x @ rng.normal(size=(D, C)) + rng.normal(scale=0.5, size=(N, C)), axis=1)
        y = y.astype("int64")
    else:
        y = (x @ rng.normal(size=D) * scale).astype("float32")
    return (x * scale).astype("float32"), y


def initial_params(kind, seed=1, scale=0.3):
    rng = np.random.default_rng(seed)
    units = C if kind == "ce" else 1
    return [rng.normal(scale=scale, size=(D, units)).astype("float32"), np.zeros(units, "float32")]


def build(kind="ce", params=None, l2=0.0, **options):
    inputs = keras.Input((D,))
    regularizer = keras.regularizers.L2(l2) if l2 else None
    if kind == "ce":
        outputs = keras.layers.Dense(C, activation="softmax", kernel_regularizer=regularizer)(inputs)
        loss = "sparse_categorical_crossentropy"
    else:
        outputs = keras.layers.Reshape(())(keras.layers.Dense(1, kernel_regularizer=regularizer)(inputs))
        loss = "mse"
    model = AdaptiveNesterovModel(inputs, outputs, **options)
    model.compile(loss=loss)
    for variable, value in zip(model.trainable_variables, params or initial_params(kind)):
        variable.assign(value)
    return model


def batches_of(x, y, batch):
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]


def float64(batches):
    return [(x.astype("float64"), y.astype("float64") if y.dtype.kind == "f" else y) for x, y in batches]


def assert_steps_match(model, batches, reference_steps, rtol):
    for step, ((x, y), ref) in enumerate(zip(batches, reference_steps)):
        model.reset_metrics()
        logs = model.train_on_batch(x, y, return_dict=True)
        msg = f"step {step}"
        for variable, expected in zip(model.trainable_variables, ref["params"]):
            np.testing.assert_allclose(variable.numpy(), expected, rtol=rtol, atol=1e-6, err_msg=msg)
        for variable, expected in zip(model.velocity_variables, ref["velocity"]):
            np.testing.assert_allclose(variable.numpy(), expected, rtol=rtol, atol=1e-6, err_msg=msg)
        assert float(model.step_size.numpy()) == pytest.approx(ref["eta"], rel=rtol), msg
        assert logs["lr"] == pytest.approx(ref["eta"], rel=rtol), msg
        assert logs["loss"] == pytest.approx(ref["loss"], rel=rtol), msg


# name: (data kind, data scale, initial weight scale, zero targets, options,
#        clips that must act in some step, rtol)
CASES = {
    # gamma small enough that every step size is Polyak's, unclipped; the L2 penalty
    # is part of the loss and gradient that set it.
    "unclipped_l2": ("ce", 1.0, 0.3, False,
                     {"gamma": 0.02, "step_size_clip": (1e-3, 10.0), "l2": 0.05}, {"none"}, 1e-5),
    # The document's setting; Polyak's step exceeds 0.1 on this problem, so eta = 0.1.
    "defaults": ("ce", 1.0, 0.3, False, {}, {"step_high"}, 1e-5),
    # Weights of scale 1e-3 fitting zero targets: loss ~ 1e-5, ||g||^2 ~ 1e-5 < 1e-4, so
    # eta = loss / 1e-4 ~ 0.05 where the unclipped ratio would be clipped to 0.1.
    "tiny_gradient": ("mse", 1.0, 1e-3, True, {}, {"norm_low"}, 1e-5),
    # Inputs and targets of scale 1e3: loss ~ 1e6, ||g||^2 ~ 1e13 > 1e10, eta < 1e-3.
    "huge_loss": ("mse", 1e3, 0.3, False, {}, {"norm_high", "step_low"}, 1e-4),
    # Bounds inside the problem's range: some steps clipped at each end, some not.
    "custom_bounds": ("ce", 1.0, 0.3, False,
                      {"gamma": 0.02, "grad_norm_clip": (1e-4, 0.5), "step_size_clip": (0.041, 0.1)},
                      {"norm_high", "step_low", "none"}, 1e-5),
}


def active_clips(step, options):
    low, high = options.get("grad_norm_clip", (1e-4, 1e10))
    s_low, s_high = options.get("step_size_clip", (1e-3, 0.1))
    active = set()
    if step["squared_norm"] < low:
        active.add("norm_low")
    if step["squared_norm"] > high:
        active.add("norm_high")
    if step["raw_eta"] < s_low:
        active.add("step_low")
    if step["raw_eta"] > s_high:
        active.add("step_high")
    return active or {"none"}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_step_by_step(case):
    kind, scale, weight_scale, zero_targets, options, clips, rtol = CASES[case]
    x, y = make_data(kind, scale=scale)
    if zero_targets:
        y = np.zeros_like(y)
    params = initial_params(kind, scale=weight_scale)
    # The diverging case overflows float32 after three steps; the others run two epochs.
    steps = 3 if case == "huge_loss" else STEPS
    batches = (batches_of(x, y, BATCH) * 2)[:steps]
    model = build(kind, params, **options)
    ref = list(rc.adaptive_nesterov([p.astype("float64") for p in params], float64(batches), kind, **options))
    seen = set().union(*(active_clips(step, options) for step in ref))
    assert clips <= seen, f"case {case} does not exercise {clips - seen}"
    assert_steps_match(model, batches, ref, rtol)


def test_fit_logs_epoch_means_of_step_size_and_look_ahead_loss():
    x, y = make_data()
    options = {"gamma": 0.02, "step_size_clip": (1e-3, 10.0)}
    model = build(**options)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    params = [p.astype("float64") for p in initial_params("ce")]
    ref = list(rc.adaptive_nesterov(params, float64(batches_of(x, y, BATCH)) * 2, "ce", **options))
    per_epoch = len(ref) // 2
    for epoch in range(2):
        steps = ref[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert history.history["lr"][epoch] == pytest.approx(np.mean([s["eta"] for s in steps]), rel=1e-5)
        assert history.history["loss"][epoch] == pytest.approx(np.mean([s["loss"] for s in steps]), rel=1e-5)
    for variable, expected in zip(model.trainable_variables, ref[-1]["params"]):
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6)
    # evaluate() reports the network's metrics only.
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"loss"}


def test_fixed_step_size_is_keras_nesterov_sgd():
    """step_size_clip=(lr, lr) is Nesterov momentum at a fixed LR (Keras's form, weights shifted)."""
    x, y = make_data()
    lr, momentum = 0.05, 0.9
    model = build(momentum=momentum, step_size_clip=(lr, lr))
    # Keras's Nesterov SGD keeps its weights at the look-ahead point: start it at w' = w.
    keras_model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(C, activation="softmax")])
    keras_model.compile(optimizer=keras.optimizers.SGD(lr, momentum=momentum, nesterov=True),
                        loss="sparse_categorical_crossentropy")
    keras_model.set_weights(initial_params("ce"))
    for xb, yb in batches_of(x, y, BATCH) * 2:
        model.train_on_batch(xb, yb)
        keras_model.train_on_batch(xb, yb)
    # Keras's weights are the look-ahead point u = w - momentum * v.
    for w, v, u in zip(model.trainable_variables, model.velocity_variables, keras_model.trainable_variables):
        np.testing.assert_allclose(w.numpy() - momentum * v.numpy(), u.numpy(), rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    x, y = make_data()
    options = {"momentum": 0.8, "gamma": 0.5, "grad_norm_clip": (1e-3, 1e8), "step_size_clip": (1e-4, 0.2)}
    model = build(**options)
    batches = batches_of(x, y, BATCH)
    for xb, yb in batches[:2]:
        model.train_on_batch(xb, yb)
    path = str(tmp_path / "adaptive.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is AdaptiveNesterovModel
    config = loaded.get_config()
    assert config["momentum"] == 0.8 and config["gamma"] == 0.5
    assert config["grad_norm_clip"] == [1e-3, 1e8] and config["step_size_clip"] == [1e-4, 0.2]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for a, b in zip(loaded.velocity_variables, model.velocity_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert float(loaded.step_size.numpy()) == float(model.step_size.numpy())
    # The velocity came back: one more step from each lands on the same weights.
    model.train_on_batch(*batches[2])
    loaded.train_on_batch(*batches[2])
    for a, b in zip(loaded.trainable_variables, model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_wrap_shares_layers_and_passes_options():
    inner = keras.Sequential([keras.Input((D,)), keras.layers.Dense(C, activation="softmax")], name="inner")
    model = AdaptiveNesterovModel.wrap(inner, momentum=0.5)
    assert model.name == "inner" and model.momentum == 0.5
    assert [id(v) for v in model.trainable_variables] == [id(v) for v in inner.trainable_variables]
    assert [v.shape for v in model.velocity_variables] == [v.shape for v in inner.trainable_variables]

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(C, activation="softmax")

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="input_shape"):
        AdaptiveNesterovModel.wrap(Subclassed())
    wrapped = AdaptiveNesterovModel.wrap(Subclassed(), input_shape=(D,))
    assert len(wrapped.velocity_variables) == 2


@pytest.mark.parametrize(
    "options, match",
    [
        ({"momentum": 0.0}, "momentum"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": True}, "momentum"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": -1.0}, "gamma"),
        ({"gamma": "1"}, "gamma"),
        ({"grad_norm_clip": (0.0, 1.0)}, "grad_norm_clip` low"),
        ({"grad_norm_clip": (-1.0, 1.0)}, "grad_norm_clip` low"),
        ({"grad_norm_clip": (1.0, 0.1)}, "inverted"),
        ({"grad_norm_clip": 1.0}, "pair"),
        ({"step_size_clip": (-1e-3, 0.1)}, "step_size_clip` low"),
        ({"step_size_clip": (0.1, 1e-3)}, "inverted"),
        ({"step_size_clip": (1e-3, float("nan"))}, "numbers"),
        ({"step_size_clip": (1e-3, 0.1, 1.0)}, "pair"),
    ],
)
def test_bad_options_are_refused_before_building(options, match):
    with pytest.raises(ValueError, match=match):
        inputs = keras.Input((D,))
        AdaptiveNesterovModel(inputs, keras.layers.Dense(C)(inputs), **options)


def test_compile_refuses_an_optimizer():
    model = build()
    for optimizer in ("rmsprop", keras.optimizers.SGD(0.1)):
        with pytest.raises(ValueError, match="without `optimizer`"):
            model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="without `optimizer`"):
        model.compile("sgd", "sparse_categorical_crossentropy")


def test_weight_made_trainable_after_build_is_refused():
    inputs = keras.Input((D,))
    hidden = keras.layers.Dense(4, trainable=False)
    outputs = keras.layers.Dense(C, activation="softmax")(hidden(inputs))
    model = AdaptiveNesterovModel(inputs, outputs)
    assert len(model.velocity_variables) == 2
    hidden.trainable = True
    model.compile(loss="sparse_categorical_crossentropy")
    x, y = make_data()
    with pytest.raises(ValueError, match="before building"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


# ------------------------------------------------------------ tf.distribute

REPLICAS = 2


def _run_mirrored(out):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    # Shards of 8: each replica's loss is half its shard's mean, as Keras scales it.
    x, y = make_data()
    result = {}
    for tag, strategy in [
        ("dist", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
        ("single", tf.distribute.get_strategy()),
    ]:
        with strategy.scope():
            model = build(l2=0.01, gamma=0.02)
        history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        for key, value in history.history.items():
            result[f"{tag}/log/{key}"] = np.asarray(value)
        variables = model.trainable_variables + model.velocity_variables + [model.step_size]
        replicas.store(result, f"{tag}/var", variables)
    np.savez(out, **result)


def test_mirrored_step_equals_single_device_step(tmp_path):
    out = str(tmp_path / "mirrored.npz")
    r = replicas.run_script([os.path.abspath(__file__), "mirrored"], out)
    # Two weights, two velocities, the step size; each on both replicas.
    dist_keys = sorted(k for k in r if k.startswith("dist/var/"))
    assert len(dist_keys) == 5 * REPLICAS
    for i in range(5):
        replica0, replica1 = r[f"dist/var/{i}/0"], r[f"dist/var/{i}/1"]
        np.testing.assert_array_equal(replica0, replica1, err_msg=str(i))
        np.testing.assert_allclose(replica0, r[f"single/var/{i}/0"], rtol=1e-5, atol=1e-6, err_msg=str(i))
    for key in ("loss", "lr"):
        np.testing.assert_allclose(r[f"dist/log/{key}"], r[f"single/log/{key}"], rtol=1e-5, err_msg=key)
    # The step sizes are Polyak's (unclipped), so a per-replica loss or norm would show.
    assert np.all(r["single/log/lr"] < 0.1)


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        _run_mirrored(sys.argv[2])
