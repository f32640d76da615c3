"""Every recipe for one step on a shrunken config, and the digits job end to end."""

import json

import numpy as np
import pytest

import recipes
from keras_mcv import data, experiment, methods, optimizers
from keras_mcv.cli import main

SHAPES = {"digits": (8, 8, 1), "cifar10": (32, 32, 3), "svhn": (32, 32, 3), "adience": (32, 32, 3)}


def tiny_data(name, classes):
    shape = SHAPES[name.split("_")[0]]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, *shape)).astype("float32")
    y = np.arange(8) % classes
    return data.ArrayData(x, y, x[:4], y[:4], [str(i) for i in range(classes)], name)


@pytest.mark.parametrize("name", recipes.available())
def test_every_recipe_one_step(name, tmp_path):
    config = recipes.get_config(name)
    assert config.name == name
    classes = 8 if name.startswith("adience") else 10
    record = experiment.run_method(
        config, "search1", epochs=1, batch_size=4, out_dir=tmp_path, verbose=0,
        data=tiny_data(name, classes),
    )
    assert record["status"] == "complete"
    assert len(record["epochs"]) == 1
    saved = json.loads((tmp_path / name / "search1.json").read_text())
    assert saved["ops"]["backward"] == 1  # 8 examples in one batch of 2 x 4


def test_unknown_recipe_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'digits_small_cnn'"):
        recipes.get_config("digit_small_cnn")
    assert main(["run", "cifar10_smal_cnn"]) == 2


@pytest.mark.parametrize("method", methods.names())
def test_digits_job_with_every_method(method, tmp_path, capsys):
    args = ["run", "digits_small_cnn", "--method", method, "--epochs", "2", "--subset", "400",
            "--out", str(tmp_path), "--verbose", "0"]
    if method == "search2":
        args += ["--alpha", "0.3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "epoch 2: lr" in out
    entry = methods.get(method)
    stem = entry.run_name(entry.resolve_options(alpha=0.3 if method == "search2" else None))
    record = json.loads((tmp_path / "digits_small_cnn" / f"{stem}.json").read_text())
    assert record["status"] == "complete"
    assert record["config"]["train_examples"] == 400
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    assert 0.0 <= record["test"]["accuracy"] <= 1.0
    assert record["ops"]["step"] > 0
    if method == "tuned":
        assert record["config"]["trial_every"] == 4
        assert record["config"]["search_options"]["trial_step"] == "update"
        assert record["config"]["search_options"]["train_validation_half"] is True
    if method == "race":
        # Whole batches of m, and the race's rounds in the record.
        assert record["config"]["fit_batch"] == record["config"]["gradient_batch"]
        assert record["config"]["trial_every"] is None
        first = record["epochs"][0]
        assert first["candidates"] == [0.1, 0.01, 0.001, 0.0001]
        assert first["race_round"] == 1 and len(first["survivors"]) == 2
        # Two epochs end the race inside round 2: its best is kept.
        assert len(record["epochs"][1]["survivors"]) == 1
        assert record["epochs"][1]["lr"] == record["epochs"][1]["survivors"][0]
        assert "race round 1" in out
    if method.startswith("search") or method == "tuned":
        first = record["epochs"][0]
        assert first["candidates"] == [0.1, 0.01, 0.001, 0.0001]
        assert len(first["candidate_losses"]) == 4
        assert record["epochs"][1]["lr"] == first["next_lr"]


def test_bad_method_arguments(capsys):
    with pytest.raises(ValueError, match="--alpha does not apply to method 'search1'"):
        experiment.check_run_options("search1", alpha=0.5)
    with pytest.raises(ValueError, match="Did you mean 'search1'"):
        experiment.check_run_options("serch1")
    with pytest.raises(ValueError, match="Unknown optimizer 'adamm'"):
        experiment.check_run_options("search1", "adamm")
    config = recipes.get_config("digits_small_cnn")
    with pytest.raises(ValueError, match="--trial-batch-size does not apply to method 'baseline'"):
        experiment.run_method(config, "baseline", trial_batch_size=8)
    with pytest.raises(ValueError, match="--trial-batch-size must be an integer >= 1"):
        experiment.run_method(config, "tuned", trial_batch_size=0)
    with pytest.raises(ValueError, match="--trial-every does not apply to method 'race'"):
        experiment.run_method(config, "race", trial_every=2)
    with pytest.raises(ValueError, match="--trial-batch-size does not apply to method 'race'"):
        experiment.run_method(config, "race", trial_batch_size=8)
    assert main(["run", "digits_small_cnn", "--method", "race", "--trial-every", "2"]) == 2
    capsys.readouterr()
    # Argument errors are one line and exit status 2, never a traceback.
    for flags in (["--epochs", "-1"], ["--epochs", "0"], ["--batch-size", "0"]):
        assert main(["run", "digits_small_cnn", *flags]) == 2
        assert "must be an integer >= 1" in capsys.readouterr().err
    # digits ships with scikit-learn: a --data path is refused, not ignored.
    assert main(["run", "digits_small_cnn", "--data", "/no/such/place"]) == 2
    assert "does not apply" in capsys.readouterr().err


def test_compare_with_anchors_and_report(tmp_path, capsys):
    """`compare` runs the macro grid, the methods and the anchors on the same data."""
    args = ["compare", "digits_small_cnn", "--methods", "baseline,search3", "--epochs", "1",
            "--subset", "200", "--lrs", "0.1", "--decays", "none", "--repeats", "1",
            "--patience", "1", "--max-epochs", "2", "--anchors", "adam:0.001,schedule_free_adamw,tuned/adam",
            "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    for label in ("Macro-CV grid", "Baseline SGD lr=0.01", "Baseline Adam lr=0.001",
                  "Baseline ScheduleFreeAdamW", "Method 3", "Tuned MCV (Adam)"):
        assert label in out
    names = sorted(p.name for p in (tmp_path / "digits_small_cnn").glob("*.json"))
    assert names == ["baseline.json", "baseline_adam_lr0.001.json",
                     "baseline_schedule_free_adamw.json", "search3.json", "tuned_adam.json"]


def test_momentum_form_default_flag_and_record(tmp_path, capsys):
    """Recipes run PyTorch's momentum form (the thesis's); `--momentum-form keras`
    runs Keras's into `*_kerasmom` records. At the baseline's constant LR the two
    forms take the same steps, so they end at the same test loss (up to rounding)."""
    import keras

    config = recipes.get_config("digits_small_cnn")
    assert config.momentum_form == "torch"
    assert isinstance(experiment.make_optimizer(config), optimizers.TorchSGD)
    assert type(experiment.make_optimizer(config, momentum_form="keras")) is keras.optimizers.SGD
    assert isinstance(experiment.make_optimizer(config, "adam"), keras.optimizers.Adam)
    common = ["run", "digits_small_cnn", "--method", "baseline", "--epochs", "2", "--subset", "200",
              "--out", str(tmp_path), "--verbose", "0"]
    assert main(common) == 0
    assert main(common + ["--momentum-form", "keras"]) == 0
    assert main(common + ["--optimizer", "adam", "--momentum-form", "keras"]) == 0
    capsys.readouterr()
    runs = tmp_path / "digits_small_cnn"
    torch = json.loads((runs / "baseline.json").read_text())
    keras_form = json.loads((runs / "baseline_kerasmom.json").read_text())
    adam = json.loads((runs / "baseline_adam.json").read_text())  # no SGD: no form, no suffix
    assert torch["config"]["momentum_form"] == "torch"
    assert keras_form["config"]["momentum_form"] == "keras"
    assert adam["config"]["momentum_form"] is None
    assert keras_form["test"]["loss"] == pytest.approx(torch["test"]["loss"], rel=1e-4)
    with pytest.raises(ValueError, match="Unknown momentum form 'pytorch'"):
        experiment.check_run_options("search1", momentum_form="pytorch")
    assert main(common + ["--momentum-form", "pytorch"]) == 2
    assert "--momentum-form" in capsys.readouterr().err


def test_compare_keras_form_sits_beside_the_torch_form(tmp_path, capsys):
    common = ["compare", "digits_small_cnn", "--methods", "baseline", "--epochs", "1",
              "--subset", "200", "--lrs", "0.1", "--decays", "none", "--repeats", "1",
              "--patience", "1", "--max-epochs", "1", "--out", str(tmp_path)]
    assert main(common) == 0
    assert main(common + ["--momentum-form", "keras"]) == 0
    out = capsys.readouterr().out
    assert "| Baseline SGD lr=0.01 (Keras momentum) |" in out
    assert "| Macro-CV grid, Keras momentum (winner:" in out
    runs = tmp_path / "digits_small_cnn"
    assert sorted(p.name for p in runs.glob("*.json")) == ["baseline.json", "baseline_kerasmom.json"]
    assert (runs / "macro" / "macro_cv.json").exists()
    assert (runs / "macro_kerasmom" / "macro_cv.json").exists()


def test_parse_anchors():
    from keras_mcv.cli import _parse_anchors

    assert _parse_anchors("adam:0.001, schedule_free_adamw,tuned/adam,search3/sgd:0.1") == (
        ("adam", 0.001), ("schedule_free_adamw", None), ("adam", None, "tuned"), ("sgd", 0.1, "search3"),
    )
    with pytest.raises(ValueError, match="not a number"):
        _parse_anchors("adam:fast")
    assert main(["compare", "digits_small_cnn", "--anchors", "adam:fast", "--no-macro"]) == 2
    assert main(["compare", "digits_small_cnn", "--anchors", "tunde/adam", "--no-macro"]) == 2


def test_build_optimizer_keeps_schedule_free_adamw_weights():
    """Keras 3.15's ScheduleFreeAdamW, built lazily by `fit`, zeroes the weights on
    its first step; built by `optimizers.build_optimizer`, a step at LR 0 leaves
    them where they were."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 10)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    net.compile(optimizer=keras.optimizers.ScheduleFreeAdamW(0.0), loss="mse")
    optimizers.build_optimizer(net)
    before = [v.numpy().copy() for v in net.trainable_variables]
    net.fit(x, y, batch_size=64, epochs=1, verbose=0)
    for a, b in zip(before, net.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a, atol=1e-6)
    assert np.abs(before[0]).max() > 0.1
