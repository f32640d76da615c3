"""TorchSGD against PyTorch's rule (NumPy reference), Keras's SGD, and its contracts.

The tf.distribute check needs logical devices configured before TensorFlow
initialises, so it runs in a fresh interpreter executing this module
(`python -m tests.test_optimizers mirrored OUT`): the same models trained under
`MirroredStrategy` on two logical CPUs and on one device; variables go to
`OUT` (npz).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_mcv
from keras_mcv.optimizers import TorchSGD
from tests import reference

N, D, C, BATCH = 160, 5, 3, 16  # 10 steps per epoch
STEP_LRS = [0.5, 0.05, 0.2, 0.01, 0.3, 0.1, 0.02, 0.4, 0.15, 0.08]  # one per step, cycled


def make_data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    w = rng.normal(size=(D, C))
    y = np.argmax(x @ w + rng.normal(scale=0.5, size=(n, C)), axis=1).astype("int64")
    return x, y


def build(optimizer, seed=1, cls=keras.Model, jit_compile="auto", **kwargs):
    """Softmax regression (the reference's one-layer model), compiled with `optimizer`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D,))
    outputs = keras.layers.Dense(C, activation="softmax")(inputs)
    model = cls(inputs, outputs, **kwargs)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", jit_compile=jit_compile)
    return model


def batches_of(x, y, batch=BATCH):
    return [(x[i : i + batch].astype("float64"), y[i : i + batch]) for i in range(0, len(x), batch)]


def initial_params(model):
    return [v.numpy().astype("float64") for v in model.trainable_variables]


def buffers(optimizer):
    return [b.numpy().copy() for b in getattr(optimizer, "momentum_buffers", [])]


class StepLR(keras.callbacks.Callback):
    """Sets the learning rate before each step (if `lrs`); records weights and buffers after it."""

    def __init__(self, lrs=None):
        super().__init__()
        self.lrs = lrs
        self.steps = []

    def on_train_batch_begin(self, batch, logs=None):
        if self.lrs is not None:
            self.model.optimizer.learning_rate = self.lrs[len(self.steps)]

    def on_train_batch_end(self, batch, logs=None):
        m = self.model
        self.steps.append(([v.numpy().copy() for v in m.trainable_variables], buffers(m.optimizer)))


def assert_close(actual, expected, what, step, rtol=1e-5, atol=1e-6):
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"{what} differ at step {step}")


# ------------------------------------------------ the same as Keras's SGD at a constant LR


@pytest.mark.parametrize("nesterov", [False, True])
def test_constant_lr_gives_keras_sgd_trajectory(nesterov):
    """With v = -lr * buf both forms are the same recurrence when lr is constant."""
    x, y = make_data()
    lr = 0.1
    runs = {}
    for name, opt in [
        ("torch", TorchSGD(lr, momentum=0.9, nesterov=nesterov)),
        ("keras", keras.optimizers.SGD(lr, momentum=0.9, nesterov=nesterov)),
    ]:
        model = build(opt)
        model.fit(x, y, batch_size=BATCH, epochs=5, shuffle=False, verbose=0)
        runs[name] = model
    assert int(runs["torch"].optimizer.iterations) == 50
    assert_close(
        [v.numpy() for v in runs["torch"].trainable_variables],
        [v.numpy() for v in runs["keras"].trainable_variables],
        "weights", 50,
    )
    keras_velocities = [v.numpy() for v in runs["keras"].optimizer.variables if v.path.endswith("_momentum")]
    assert_close([-lr * b for b in buffers(runs["torch"].optimizer)], keras_velocities, "velocities", 50)


# ------------------------------------------------ PyTorch's rule, worked out by hand


def _apply_twice(optimizer, lrs, grads=(1.0, 6.0, 7.0, 2.0)):
    """Two steps on w = [1, 2, 3, 4] with the same gradient; the weights after each."""
    w = keras.Variable([1.0, 2.0, 3.0, 4.0])
    out = []
    for lr in lrs:
        optimizer.learning_rate = lr
        optimizer.apply([np.asarray(grads, "float32")], [w])
        out.append(w.numpy().copy())
    return out


def test_two_steps_by_hand_plain():
    # w - lr * g, twice.
    w1, w2 = _apply_twice(TorchSGD(), [0.5, 0.1])
    np.testing.assert_allclose(w1, [0.5, -1.0, -0.5, 3.0], rtol=1e-6)
    np.testing.assert_allclose(w2, [0.4, -1.6, -1.2, 2.8], rtol=1e-6)


def test_two_steps_by_hand_momentum_dampening_weight_decay():
    opt = TorchSGD(momentum=0.9, dampening=0.5, weight_decay=0.1)
    w1, w2 = _apply_twice(opt, [0.5, 0.1])
    # g1 = grad + 0.1 * w0 = [1.1, 6.2, 7.3, 2.4]; buf1 = g1 (no dampening on the first step).
    np.testing.assert_allclose(w1, [0.45, -1.1, -0.65, 2.8], rtol=1e-6)
    # g2 = grad + 0.1 * w1 = [1.045, 5.89, 6.935, 2.28]
    # buf2 = 0.9 * buf1 + 0.5 * g2 = [1.5125, 8.525, 10.0375, 3.3]; w2 = w1 - 0.1 * buf2.
    np.testing.assert_allclose(opt.momentum_buffers[0].numpy(), [1.5125, 8.525, 10.0375, 3.3], rtol=1e-6)
    np.testing.assert_allclose(w2, [0.29875, -1.9525, -1.65375, 2.47], rtol=1e-6)
    assert opt.weight_decay is None  # Keras's decoupled decay stays off


def test_two_steps_by_hand_nesterov():
    w1, w2 = _apply_twice(TorchSGD(momentum=0.9, nesterov=True), [0.5, 0.1])
    # buf1 = g; w1 = w0 - 0.5 * (g + 0.9 g) = w0 - 0.95 g.
    np.testing.assert_allclose(w1, [0.05, -3.7, -3.65, 2.1], rtol=1e-6)
    # buf2 = 0.9 g + g = 1.9 g; w2 = w1 - 0.1 * (g + 0.9 * 1.9 g) = w1 - 0.271 g.
    # (Keras's form would step w1 - 0.595 g here.)
    np.testing.assert_allclose(w2, [-0.221, -5.326, -5.547, 1.558], rtol=1e-6, atol=1e-6)


# ------------------------------------------------ PyTorch's rule when the LR changes every step


VARIANTS = {
    "momentum": dict(momentum=0.9),
    "dampening": dict(momentum=0.9, dampening=0.5),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "weight_decay": dict(momentum=0.9, weight_decay=0.05),
    "plain_weight_decay": dict(weight_decay=0.05),
    "everything": dict(momentum=0.5, dampening=0.3, weight_decay=0.01),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_changing_lr_matches_pytorch_rule(variant):
    hyper = VARIANTS[variant]
    x, y = make_data(seed=2)
    model = build(TorchSGD(0.1, **hyper))
    params = initial_params(model)
    lrs = [np.float32(lr) for lr in STEP_LRS * 2]
    cap = StepLR(lrs)
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cap])
    ref = list(reference.torch_sgd(params, batches_of(x, y) * 2, lrs, "ce", **hyper))
    assert len(cap.steps) == len(ref) == 20
    for step, ((w, bufs), (rw, rbufs)) in enumerate(zip(cap.steps, ref)):
        assert_close(w, rw, "weights", step)
        if hyper.get("momentum"):
            assert_close(bufs, rbufs, "buffers", step)
        else:
            assert bufs == []
    if hyper.get("momentum") and not hyper.get("weight_decay") and not hyper.get("dampening"):
        # The case is one where Keras's velocity form goes elsewhere.
        keras_form = reference.Optimizer("sgd", params, momentum=hyper["momentum"],
                                         nesterov=hyper.get("nesterov", False))
        kw = params
        for (bx, by), lr in zip(batches_of(x, y) * 2, lrs):
            kw = keras_form.apply(kw, reference.grad_fn(kw, bx, by, "ce"), lr)
        assert np.abs(kw[0] - ref[-1][0][0]).max() > 1e-2


def test_exclude_from_weight_decay_exempts_from_the_l2_penalty():
    x, y = make_data(seed=4)
    opt = TorchSGD(0.2, momentum=0.9, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=["bias"])
    model = build(opt)
    params = initial_params(model)
    cap = StepLR()
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cap])
    lrs = [np.float32(0.2)] * 10
    ref = list(reference.torch_sgd(params, batches_of(x, y), lrs, "ce", momentum=0.9, weight_decay=[0.1, 0.0]))
    for step, ((w, bufs), (rw, rbufs)) in enumerate(zip(cap.steps, ref)):
        assert_close(w, rw, "weights", step)
        assert_close(bufs, rbufs, "buffers", step)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_schedule_matches_pytorch_rule(jit_compile):
    """A LearningRateSchedule is evaluated at `iterations`, the count of steps before this one."""
    x, y = make_data(seed=5)
    schedule = keras.optimizers.schedules.InverseTimeDecay(0.5, decay_steps=1, decay_rate=0.3)
    hyper = dict(momentum=0.9, dampening=0.2, weight_decay=0.01)
    model = build(TorchSGD(schedule, **hyper), jit_compile=jit_compile)
    params = initial_params(model)
    cap = StepLR()
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cap])
    lrs = [np.float32(0.5 / (1 + 0.3 * t)) for t in range(20)]
    ref = list(reference.torch_sgd(params, batches_of(x, y) * 2, lrs, "ce", **hyper))
    for step, ((w, bufs), (rw, rbufs)) in enumerate(zip(cap.steps, ref)):
        assert_close(w, rw, "weights", step)
        assert_close(bufs, rbufs, "buffers", step)


def test_gradient_accumulation_starts_the_buffer_on_the_first_update():
    """Two micro-batches per update: the first update (raw step 1) still sets buf = g."""
    x, y = make_data(seed=6)
    hyper = dict(momentum=0.9, dampening=0.5)
    model = build(TorchSGD(0.3, gradient_accumulation_steps=2, **hyper))
    params = initial_params(model)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    # Weights do not move within an update, so the mean of two micro-batch
    # gradients is the gradient on their union.
    ref = list(reference.torch_sgd(params, batches_of(x, y, 2 * BATCH), [np.float32(0.3)] * 5, "ce", **hyper))
    assert_close([v.numpy() for v in model.trainable_variables], ref[-1][0], "weights", 5)
    assert_close(buffers(model.optimizer), ref[-1][1], "buffers", 5)


# ------------------------------------------------ in the MCV models


@pytest.mark.parametrize("family", ["discard", "search"])
def test_mcv_models_decide_with_the_pytorch_form(family):
    """Trials restore buffers and `iterations`; a discarded first step stays a first step."""
    hyper = dict(momentum=0.9, dampening=0.1, weight_decay=0.01)
    # Discard: a case where the first step is discarded and the second kept.
    x, y = make_data(seed=13 if family == "discard" else 3)
    if family == "discard":
        model = build(TorchSGD(2.0, **hyper), cls=keras_mcv.DiscardModel)
    else:
        model = build(TorchSGD(0.01, **hyper), cls=keras_mcv.SearchModel, method=1)
    params = initial_params(model)
    opt = reference.TorchSGD(params, **hyper)
    cap = StepLR()
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[cap])
    batches = batches_of(x, y)
    if family == "discard":
        events = list(reference.discard(params, opt, batches * 3, np.float32(2.0), "ce"))
        ref_steps = [(p, s) for p, s, _ in events]
        discards = [d for *_, d in events]
        assert discards[0] and not discards[1] and 0 < sum(discards) < len(discards)
    else:
        events = list(reference.search(params, opt, [batches] * 3, 1, 0.0, "ce"))
        ref_steps = [(e[1], e[2]) for e in events if e[0] == "step"]
        ref_epochs = [e[1] for e in events if e[0] == "epoch"]
        assert [e["lr"] for e in model.mcv_history] == pytest.approx([e["lr"] for e in ref_epochs], rel=1e-12)
        assert len({e["lr"] for e in ref_epochs}) > 1, "the LR must change for this case to mean anything"
    assert len(cap.steps) == len(ref_steps) == 30
    for step, ((w, bufs), (rw, rstate)) in enumerate(zip(cap.steps, ref_steps)):
        assert_close(w, rw, "weights", step)
        assert_close(bufs, rstate[0][0], "buffers", step)


# ------------------------------------------------ serialization


CONFIG = dict(learning_rate=0.05, momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-3)


def test_get_config_and_serialize_round_trip():
    opt = TorchSGD(**CONFIG, clipnorm=1.0)
    config = opt.get_config()
    for key, value in CONFIG.items():
        assert config[key] == pytest.approx(value)
    assert config["clipnorm"] == 1.0
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is TorchSGD
    assert again.get_config() == config
    assert again.coupled_weight_decay == 1e-3 and again.weight_decay is None
    nesterov = TorchSGD(0.1, momentum=0.5, nesterov=True)
    assert keras.optimizers.deserialize(keras.optimizers.serialize(nesterov)).nesterov is True


def test_serialize_round_trip_with_a_schedule():
    schedule = keras.optimizers.schedules.InverseTimeDecay(0.1, decay_steps=1, decay_rate=1e-3)
    opt = TorchSGD(schedule, momentum=0.9)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again._learning_rate, keras.optimizers.schedules.InverseTimeDecay)
    assert again._learning_rate.get_config() == schedule.get_config()


def test_save_and_load_continue_training_identically(tmp_path):
    x, y = make_data(seed=7)
    model = build(TorchSGD(**CONFIG))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is TorchSGD
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(loaded.optimizer.iterations) == 10
    assert_close(buffers(loaded.optimizer), buffers(model.optimizer), "buffers", 10, rtol=0, atol=0)
    for m in (model, loaded):
        m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert_close(
        [v.numpy() for v in loaded.trainable_variables],
        [v.numpy() for v in model.trainable_variables],
        "weights", 20, rtol=0, atol=0,
    )
    assert_close(buffers(loaded.optimizer), buffers(model.optimizer), "buffers", 20, rtol=0, atol=0)


# ------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(momentum=-0.1), "`momentum` must be >= 0"),
        (dict(momentum=float("nan")), "`momentum` must be >= 0"),
        (dict(momentum="0.9"), "`momentum` must be a number"),
        (dict(dampening=-0.5), r"`dampening` must be in \[0, 1\]"),
        (dict(dampening=1.5), r"`dampening` must be in \[0, 1\]"),
        (dict(weight_decay=-1e-4), "`weight_decay` must be >= 0"),
        (dict(learning_rate=-0.1), "`learning_rate` must be >= 0"),
        (dict(nesterov=True), "Nesterov momentum requires `momentum` > 0 and `dampening` = 0"),
        (dict(nesterov=True, momentum=0.9, dampening=0.1), "set nesterov=False"),
        (dict(nesterov="yes", momentum=0.9), "`nesterov` must be True or False"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TorchSGD(**kwargs)


# ------------------------------------------------ tf.distribute and XLA


def test_jit_compile_gives_the_same_weights():
    x, y = make_data(seed=8)
    lrs = STEP_LRS * 2
    results = []
    for jit_compile in (False, True):
        model = build(TorchSGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01), jit_compile=jit_compile)
        cap = StepLR(lrs)
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cap])
        results.append(cap.steps)
    for step, ((w, b), (wj, bj)) in enumerate(zip(*results)):
        assert_close(wj, w, "weights", step)
        assert_close(bj, b, "buffers", step)


REPLICAS = 2
DIST_CONFIGS = {
    "changing_lr": dict(learning_rate=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01),
    "schedule_nesterov": dict(momentum=0.9, nesterov=True, weight_decay=0.01),
}


def _run_mirrored(out):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    x, y = make_data(seed=9, n=96)  # 6 global batches, 8 examples per replica
    result = {}
    for config_name, hyper in DIST_CONFIGS.items():
        if "learning_rate" not in hyper:
            schedule = keras.optimizers.schedules.InverseTimeDecay(0.5, decay_steps=1, decay_rate=0.3)
            hyper = dict(hyper, learning_rate=schedule)
        for tag, strategy in [
            ("dist", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
            ("single", tf.distribute.get_strategy()),
        ]:
            with strategy.scope():
                model = build(TorchSGD(**hyper))
            lrs = STEP_LRS * 2 if config_name == "changing_lr" else None
            model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[StepLR(lrs)])
            variables = model.trainable_variables + model.optimizer.momentum_buffers
            for i, v in enumerate(variables + [model.optimizer.iterations]):
                local = getattr(v.value, "values", None) or (v.value,)
                for r, t in enumerate(local):
                    result[f"{config_name}/{tag}/{i}/{r}"] = np.asarray(t)
    np.savez(out, **result)


def test_mirrored_strategy_matches_one_device(tmp_path):
    out = str(tmp_path / "mirrored.npz")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_optimizers", "mirrored", out],
        capture_output=True, text=True, timeout=300, cwd=root, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as f:
        r = {k: f[k] for k in f.files}
    for config_name in DIST_CONFIGS:
        # 2 weights, 2 buffers, iterations; every variable mirrored on 2 replicas.
        dist = sorted(k for k in r if k.startswith(f"{config_name}/dist/"))
        assert len(dist) == 5 * REPLICAS, dist
        for key in dist:
            i, replica = key.split("/")[2:]
            single = r[f"{config_name}/single/{i}/0"]
            np.testing.assert_allclose(r[key], single, rtol=1e-5, atol=1e-6, err_msg=f"{key} (replica {replica})")
        assert int(r[f"{config_name}/dist/4/0"]) == 12


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        _run_mirrored(sys.argv[2])
