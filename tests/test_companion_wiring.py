"""The companion methods on the `run` path: adaptive-nesterov, --persistency, --ema,
--augment, AdaGrad and `keras-mcv check`; each run compared with the same training
written directly in Keras, and bad input refused before training."""

import dataclasses
import json

import keras
import numpy as np
import pytest

import recipes
from keras_mcv import data as data_lib
from keras_mcv import experiment, methods, optimizers
from keras_mcv.cli import main
from keras_mcv.models.adaptive_nesterov import AdaptiveNesterovModel
from keras_mcv.models.persistency import PersistencyModel
from keras_mcv.models.race import RaceModel
from keras_mcv.models.search import SearchModel

DIGITS = recipes.get_config("digits_small_cnn")
EPOCHS, M, SEED = 2, 64, 3


@pytest.fixture(scope="module")
def digits():
    return DIGITS.load_data(None, 300)


def manual_run(data, wrap, optimizer, fit_data=None):
    """The run written directly in Keras: seed, network, wrap, compile, fit, evaluate."""
    keras.utils.set_random_seed(SEED)
    model = wrap(DIGITS.build_model(data.input_shape, data.num_classes))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if optimizer is not None:
        optimizers.build_optimizer(model)
    fit = fit_data or {"x": data.x_train, "y": data.y_train, "batch_size": M}
    history = model.fit(**fit, epochs=EPOCHS, shuffle=True, verbose=0)
    return model, history, model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)


def run(data, tmp_path, method="baseline", config=DIGITS, **kwargs):
    return experiment.run_method(config, method, epochs=EPOCHS, batch_size=M, out_dir=tmp_path,
                                 seed=SEED, verbose=0, data=data, **kwargs)


# ------------------------------------------------------------------ registry


def test_registry_entries():
    entry = methods.get("adaptive-nesterov")
    assert entry.takes_optimizer is False and entry.batch_multiple == 1
    assert entry.selects_per_epoch is False and entry.fixed_lr is False
    assert entry.options == ()
    baseline = methods.get("baseline")
    assert baseline.resolve_options() == {}
    assert baseline.resolve_options(persistency=2) == {"persistency": 2}
    assert baseline.run_name({"persistency": 2}) == "baseline_persistency2"
    assert all(m.takes_optimizer for m in methods.REGISTRY.values() if m.name != "adaptive-nesterov")


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_persistency_is_refused(value):
    with pytest.raises(ValueError, match="--persistency must be an integer >= 1"):
        methods.get("baseline").resolve_options(persistency=value)


def test_persistency_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="--persistency does not apply to method 'race'.*baseline"):
        experiment.check_run_options("race", persistency=2)


@pytest.mark.parametrize("flags, named", [
    ({"optimizer": "adam"}, "--optimizer"), ({"learning_rate": 0.1}, "--lr"), ({"ema": True}, "--ema"),
])
def test_adaptive_nesterov_refuses_optimizer_flags(flags, named):
    optimizer = flags.pop("optimizer", None)
    with pytest.raises(ValueError, match=f"{named} does not apply to method 'adaptive-nesterov'"):
        experiment.check_run_options("adaptive-nesterov", optimizer, **flags)


def test_compare_refuses_an_optimizer_anchor_for_adaptive_nesterov():
    with pytest.raises(ValueError, match="anchor adaptive-nesterov/adam: --optimizer does not apply"):
        experiment.check_anchors([("adam", None, "adaptive-nesterov")])
    assert experiment.check_anchors([("adam", 1e-3)]) == [("adam", 1e-3, "baseline")]


def test_augment_is_refused_for_digits_and_defined_for_images():
    with pytest.raises(ValueError, match="does not apply to recipe 'digits_small_cnn': flipping a digit"):
        experiment.check_augment(DIGITS)
    assert experiment.check_augment(recipes.get_config("cifar10_small_cnn")) == (
        "flip", "translate", "jitter")
    assert experiment.check_augment(recipes.get_config("adience_resnet50")) == (
        "flip", "translate", "jitter")
    assert experiment.check_augment(recipes.get_config("svhn_small_cnn")) == ("translate", "jitter")


# ------------------------------------------------------------------ runs


def test_adaptive_nesterov_run_is_the_model_in_plain_keras(digits, tmp_path):
    record = run(digits, tmp_path, "adaptive-nesterov")
    model, history, test = manual_run(digits, AdaptiveNesterovModel.wrap, None)
    assert record["test"]["accuracy"] == test["accuracy"]
    assert record["test"]["loss"] == pytest.approx(test["loss"], rel=1e-6)
    lrs = [e["lr"] for e in record["epochs"]]
    np.testing.assert_allclose(lrs, history.history["lr"], rtol=1e-6)
    assert all(1e-3 * (1 - 1e-6) <= lr <= 0.1 * (1 + 1e-6) for lr in lrs)  # the clip, in float32
    config = record["config"]
    assert config["optimizer"] is None and config["momentum"] == 0.9
    assert config["learning_rate"] is None and record["kind"] == "mcv"
    steps = EPOCHS * int(np.ceil(300 / M))
    assert record["ops"] == {"forward": steps, "backward": steps, "step": steps}


def test_persistency_run_is_the_model_in_plain_keras(digits, tmp_path):
    record = run(digits, tmp_path, persistency=2)
    _, _, test = manual_run(digits, lambda net: PersistencyModel.wrap(net, persistency=2),
                            experiment.make_optimizer(DIGITS))
    assert record["test"]["accuracy"] == test["accuracy"]
    assert record["test"]["loss"] == pytest.approx(test["loss"], rel=1e-6)
    assert record["config"]["persistency"] == 2
    steps = EPOCHS * int(np.ceil(300 / M))
    assert record["ops"] == {"forward": 2 * steps, "backward": 2 * steps, "step": 2 * steps}
    assert (tmp_path / "digits_small_cnn" / "baseline_persistency2.json").exists()


def test_ema_run_tests_the_averaged_weights(digits, tmp_path):
    record = run(digits, tmp_path, ema=True)
    model, _, test = manual_run(digits, lambda net: net, experiment.make_optimizer(DIGITS, ema=True))
    assert model.optimizer.use_ema
    assert record["test"]["accuracy"] == test["accuracy"]
    assert record["test"]["loss"] == pytest.approx(test["loss"], rel=1e-6)
    # fit ends with the averaged weights in the model: they are what the test saw.
    for weight, average in zip(model.trainable_variables,
                               model.optimizer._model_variables_moving_average):
        np.testing.assert_array_equal(weight.numpy(), average.numpy())
    plain = run(digits, tmp_path)
    assert record["test"]["loss"] != plain["test"]["loss"]
    assert record["config"]["weight_ema"] is True and record["path"].endswith("baseline_ema.json")


def _image_recipe():
    """Digits as 8x8x3 images under an image recipe's augmentation (a test stand-in)."""
    return dataclasses.replace(DIGITS, name="digits_rgb", augment=("flip", "translate", "jitter"))


def test_augment_run_trains_on_the_augmented_pipeline(digits, tmp_path):
    rgb = dataclasses.replace(digits, x_train=np.repeat(digits.x_train, 3, axis=-1),
                              x_test=np.repeat(digits.x_test, 3, axis=-1))
    config = _image_recipe()
    record = run(rgb, tmp_path, config=config, augment=True)
    assert record["config"]["augment"] == ["flip", "translate", "jitter"]
    keras.utils.set_random_seed(SEED)
    ds = data_lib.make_dataset(rgb.x_train, rgb.y_train, M, shuffle=True,
                               augment=("flip", "translate", "jitter"), seed=SEED)
    keras.utils.set_random_seed(SEED)
    model = config.build_model(rgb.input_shape, rgb.num_classes)
    model.compile(optimizer=experiment.make_optimizer(config), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    optimizers.build_optimizer(model)
    model.fit(ds, epochs=EPOCHS, shuffle=False, verbose=0)
    test = model.evaluate(rgb.x_test, rgb.y_test, verbose=0, return_dict=True)
    assert record["test"]["loss"] == pytest.approx(test["loss"], rel=1e-6)
    plain = run(rgb, tmp_path, config=config)
    assert plain["test"]["loss"] != record["test"]["loss"]


def test_race_takes_ema_and_augmentation(digits, tmp_path):
    rgb = dataclasses.replace(digits, x_train=np.repeat(digits.x_train, 3, axis=-1),
                              x_test=np.repeat(digits.x_test, 3, axis=-1))
    record = run(rgb, tmp_path, "race", config=_image_recipe(), ema=True, augment=True)
    assert record["status"] == "complete" and record["path"].endswith("race_ema_augment.json")
    assert record["config"]["weight_ema"] is True
    assert record["config"]["augment"] == ["flip", "translate", "jitter"]
    assert [len(e["survivors"]) for e in record["epochs"]] == [2, 1]


def test_adagrad_is_kerass_rule():
    optimizer = optimizers.make_optimizer("adagrad", 0.5)
    assert isinstance(optimizer, keras.optimizers.Adagrad)
    assert optimizers.make_optimizer("adagrad").learning_rate.numpy() == pytest.approx(0.01)
    w = keras.Variable(np.array([1.0, -2.0], "float32"))
    optimizer.build([w])
    accumulator = np.full(2, 0.1)  # Keras's initial accumulator value
    expected = np.array([1.0, -2.0])
    for g in (np.array([0.3, -1.0]), np.array([0.5, 0.2])):
        optimizer.apply([g.astype("float32")], [w])
        accumulator += g ** 2
        expected -= 0.5 * g / np.sqrt(accumulator + 1e-7)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)


# ------------------------------------------------------------------ EMA and the package's models


def _net():
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))


@pytest.mark.parametrize("kind", ["plain", "persistency", "race", "search"])
def test_swap_ema_weights_works_with_the_packages_models(kind, digits):
    """Validation during fit sees the averaged weights; training goes on from the raw ones."""
    x = digits.x_train.reshape(len(digits.x_train), -1)[:256]
    y = digits.y_train[:256]
    x_val = digits.x_test.reshape(len(digits.x_test), -1)
    y_val = digits.y_test
    wraps = {"plain": lambda n: n, "persistency": lambda n: PersistencyModel.wrap(n, persistency=2),
             "race": lambda n: RaceModel.wrap(n, candidates=[0.05, 0.01]),
             "search": lambda n: SearchModel.wrap(n, method=1, candidates=[0.05, 0.01])}
    batch = 64 if kind != "search" else 128

    class RawWeights(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.raw = [v.numpy().copy() for v in self.model.trainable_variables]

    def train(swap):
        keras.utils.set_random_seed(0)
        model = wraps[kind](_net())
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, use_ema=True),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        raw = RawWeights()
        callbacks = ([keras.callbacks.SwapEMAWeights()] if swap else []) + [raw]
        history = model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0,
                            validation_data=(x_val, y_val), callbacks=callbacks)
        return model, history, raw.raw

    model, history, raw = train(swap=True)
    ema_weights = [v.numpy() for v in model.trainable_variables]  # fit ended with the average
    for w, a in zip(ema_weights, model.optimizer._model_variables_moving_average):
        np.testing.assert_array_equal(w, a.numpy())
    ema_loss = model.evaluate(x_val, y_val, verbose=0, return_dict=True)["loss"]
    assert history.history["val_loss"][-1] == pytest.approx(ema_loss, rel=1e-6)
    for v, w in zip(model.trainable_variables, raw):
        v.assign(w)
    raw_loss = model.evaluate(x_val, y_val, verbose=0, return_dict=True)["loss"]
    assert abs(raw_loss - ema_loss) > 1e-4  # the swap mattered
    # Swapping for validation does not change training: the same raw weights without it.
    _, plain_history, plain_raw = train(swap=False)
    for a, b in zip(raw, plain_raw):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert plain_history.history["val_loss"][-1] == pytest.approx(raw_loss, rel=1e-5)


# ------------------------------------------------------------------ command line


def test_cli_refuses_bad_input_before_training(capsys):
    assert main(["run", "digits_small_cnn", "--persistency", "0"]) == 2
    assert "must be an integer >= 1" in capsys.readouterr().err
    assert main(["run", "digits_small_cnn", "--augment"]) == 2
    assert "flipping a digit changes its class" in capsys.readouterr().err
    assert main(["run", "digits_small_cnn", "--method", "adaptive-nesterov", "--ema"]) == 2
    assert "--ema does not apply to method 'adaptive-nesterov'" in capsys.readouterr().err
    assert main(["run", "digits_small_cnn", "--method", "race", "--persistency", "2"]) == 2
    assert "--persistency does not apply to method 'race'" in capsys.readouterr().err
    assert main(["tune", "digits_small_cnn", "--search", "bayes"]) == 2
    assert "invalid choice: 'bayes'" in capsys.readouterr().err
    assert main(["tune", "digits_small_cnn", "--search", "random", "--repeats", "3"]) == 2
    assert "--repeats does not apply to --search random" in capsys.readouterr().err


def test_cli_runs_the_new_flags(tmp_path, capsys):
    base = ["run", "digits_small_cnn", "--epochs", "1", "--subset", "200", "--out", str(tmp_path),
            "--verbose", "0"]
    assert main(base + ["--method", "adaptive-nesterov"]) == 0
    assert main(base + ["--persistency", "2"]) == 2  # the recipe's method is the race
    assert "the recipe's default method; choose one with --method" in capsys.readouterr().err
    assert main(base + ["--method", "baseline", "--persistency", "2", "--ema", "--optimizer",
                        "adagrad"]) == 0
    names = sorted(p.name for p in (tmp_path / "digits_small_cnn").iterdir())
    assert names == ["adaptive-nesterov.json", "baseline_persistency2_adagrad_ema.json"]
    record = json.loads((tmp_path / "digits_small_cnn" / names[1]).read_text())
    assert record["config"]["optimizer"] == "adagrad" and record["config"]["weight_ema"] is True


def test_check_command_passes_a_sound_recipe(capsys):
    assert main(["check", "digits_small_cnn", "--examples", "100"]) == 0
    out = capsys.readouterr().out
    assert "PASS initial_loss" in out and "PASS overfit_subset" in out
    assert "gradient check" in out and "all checks passed" in out


def test_check_command_fails_a_broken_network(monkeypatch, capsys):
    def broken(input_shape, num_classes):
        # Huge constant logits (initial loss far from ln 10) on frozen weights (cannot learn).
        inputs = keras.Input(input_shape)
        flat = keras.layers.Flatten()(inputs)
        out = keras.layers.Dense(num_classes, activation="softmax", trainable=False,
                                 kernel_initializer=keras.initializers.Constant(0.0),
                                 bias_initializer=keras.initializers.Constant(
                                     [50.0] + [0.0] * (num_classes - 1)))(flat)
        return keras.Model(inputs, out)

    config = dataclasses.replace(DIGITS, build_model=broken)
    monkeypatch.setattr(recipes, "get_config", lambda name: config)
    assert main(["check", "digits_small_cnn", "--examples", "100", "--no-gradient-check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL initial_loss" in out and "FAIL overfit_subset" in out and "a check failed" in out
