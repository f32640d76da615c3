"""The decay and clr methods and `keras-mcv lr-find`: registry, hooks, digits end to end."""

import json
import math

import keras
import numpy as np
import pytest

import recipes
from keras_mcv import experiment, methods, report, schedule_methods
from keras_mcv.cli import main
from keras_mcv.schedules import decay_sequence
from keras_mcv.sequence_update import decide

DIGITS = recipes.get_config("digits_small_cnn")


@pytest.fixture(scope="module")
def digits():
    return DIGITS.load_data(None, 200)


def smith(it, base, top, step, mode="triangular", gamma=1.0):
    """Smith's formula in NumPy float64, the reference of the schedule."""
    it = np.asarray(it, dtype=np.float64)
    cycle = np.floor(1 + it / (2 * step))
    x = np.abs(it / step - 2 * cycle + 1)
    scale = {"triangular": 1.0, "triangular2": 0.5 ** (cycle - 1),
             "exp_range": gamma ** it}[mode]
    return base + (top - base) * np.maximum(0, 1 - x) * scale


# ---- registry ----------------------------------------------------------------


def test_registry_entries_labels_and_names():
    decay, clr = methods.get("decay"), methods.get("clr")
    assert decay.resolve_options() == {"sequence": "seq3", "strategy": "epoch"}
    assert decay.label_for({"sequence": "seq1", "strategy": "cutoff"}) == "Decay seq1 by cutoff"
    assert decay.label_for({}) == "Decay seq3 by epoch"
    assert clr.label_for({"clr_mode": "triangular2"}) == "CLR triangular2"
    assert decay.run_name({"sequence": "seq2", "strategy": "oscillate"}) == "decay_seq2_oscillate"
    assert decay.run_name(decay.resolve_options(), learning_rate=0.05) == "decay_seq3_epoch_lr0.05"
    assert decay.run_name(decay.resolve_options(), validation_split=0.2) == "decay_seq3_epoch"
    assert clr.run_name(clr.resolve_options(base_lr=1e-3, max_lr=0.1), validation_split=0.1) == (
        "clr_triangular_base_lr0.001_max_lr0.1_val0.1"
    )
    assert methods.get("baseline").run_name({}, validation_split=0.2) == "baseline_val0.2"
    assert decay.validation_split == 0.2 and clr.validation_split == 0.0
    assert not decay.selects_per_epoch and not clr.selects_per_epoch


@pytest.mark.parametrize("method, options, match", [
    ("decay", {"sequence": "seq5"}, r"Unknown --sequence 'seq5'; choose one of seq1, seq2"),
    ("decay", {"strategy": "plateau"}, r"Unknown --strategy 'plateau'; choose one of epoch"),
    ("clr", {"clr_mode": "cosine"}, r"Unknown --clr-mode 'cosine'; choose one of triangular"),
    ("clr", {"base_lr": 0.1, "max_lr": 0.1}, r"--max-lr \(0.1\) must be greater than --base-lr"),
    ("clr", {"base_lr": 0.1, "max_lr": 0.01}, r"--max-lr \(0.01\) must be greater"),
    ("clr", {"step_size": 0.5}, r"--step-size must be >= 1 iteration"),
    ("clr", {"base_lr": -1.0}, r"--base-lr must be a number > 0"),
    ("decay", {"clr_mode": "triangular"}, r"--clr-mode does not apply to method 'decay'.*clr"),
    ("clr", {"sequence": "seq1"}, r"--sequence does not apply to method 'clr'.*decay"),
    ("baseline", {"strategy": "epoch"}, r"--strategy does not apply to method 'baseline'"),
])
def test_bad_options_are_refused(method, options, match):
    with pytest.raises(ValueError, match=match):
        experiment.check_run_options(method, **options)


def test_run_settings_checks():
    with pytest.raises(ValueError, match="--lr does not apply to method 'clr'"):
        experiment.check_run_options("clr", learning_rate=0.1)
    with pytest.raises(ValueError, match="--strategy cutoff watches the validation loss"):
        experiment.check_run_options("decay", validation_split=0.0, strategy="cutoff")
    with pytest.raises(ValueError, match=r"--validation-split must be a share in \[0, 1\)"):
        experiment.check_run_options("baseline", validation_split=1.0)
    with pytest.raises(ValueError, match="--lr must be a number > 0"):
        experiment.check_run_options("decay", learning_rate=-0.1)
    # by epoch watches nothing: no validation is fine.
    entry, options = experiment.check_run_options("decay", validation_split=0.0)
    assert options == {"sequence": "seq3", "strategy": "epoch"}


# ---- pure hooks --------------------------------------------------------------


def test_default_step_size():
    f = schedule_methods.default_step_size
    assert f(10, 25) == 62.5      # 2 cycles of 5 epochs: half cycles of 2.5 epochs
    assert f(15, 18) == 45.0      # 3 cycles
    assert f(30, 17) == 30 * 17 / 14   # 7 cycles, half cycle 2.14 epochs
    assert f(8, 10) == 20.0       # 2 cycles of exactly 2 + 2 epochs
    assert f(3, 10) == 15.0       # shorter than 4 epochs: one cycle
    assert f(1, 1) == 1.0         # never below one iteration
    for epochs in range(4, 60):
        half = f(epochs, 100) / 100
        assert 2 <= half < 4
        cycles = epochs / (2 * half)
        assert cycles == pytest.approx(round(cycles), rel=1e-12)  # ends at a cycle's end


def test_exp_range_gamma_halves_the_amplitude_per_cycle():
    for step in (1, 7.5, 62.5, 2000):
        assert schedule_methods.exp_range_gamma(step) ** (2 * step) == pytest.approx(0.5, rel=1e-12)


def test_epoch_mean_lr_logs_the_mean_of_smiths_formula():
    from keras_mcv.schedules import CyclicalLearningRate

    schedule = CyclicalLearningRate(0.01, 0.1, 3.0, mode="triangular2")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    x = np.zeros((40, 4), "float32")
    callback = schedule_methods.EpochMeanLR(schedule)
    history = model.fit(x, np.zeros((40, 2), "float32"), batch_size=8, epochs=3, verbose=0,
                        callbacks=[callback])
    expected = [np.mean(smith(np.arange(5 * e, 5 * e + 5), 0.01, 0.1, 3.0, "triangular2"))
                for e in range(3)]
    np.testing.assert_allclose(history.history["lr"], expected, rtol=1e-6)


# ---- digits end to end -------------------------------------------------------


def test_decay_run_pops_the_sequence_when_the_strategy_fires(digits, tmp_path):
    record = experiment.run_method(
        DIGITS, "decay", epochs=6, out_dir=tmp_path, verbose=0, data=digits,
        sequence="seq1", strategy="oscillate", learning_rate=0.05,
    )
    assert record["path"].endswith("digits_small_cnn/decay_seq1_oscillate_lr0.05.json")
    config = record["config"]
    assert config["validation_split"] == 0.2 and config["validation_examples"] == 40
    assert config["method_options"] == {"sequence": "seq1", "strategy": "oscillate"}
    assert config["schedule"] == {"initial_learning_rate": 0.05}
    assert record["kind"] == "mcv"
    # The reference: Algorithm 3 on the recorded validation losses.
    losses = [e["logs"]["val_loss"] for e in record["epochs"]]
    lr, n, expected = 0.05, 0, []
    for t in range(1, len(losses) + 1):
        expected.append(lr)
        if decide("oscillate", losses[:t]).fire:
            n += 1
            lr = decay_sequence("seq1", n, 0.05)
    np.testing.assert_allclose([e["lr"] for e in record["epochs"]], expected, rtol=1e-6)
    label = report.method_label(json.loads(open(record["path"]).read()))
    assert label == "Decay seq1 by oscillate (SGD)"


def test_held_out_validation_is_stratified(digits):
    x, y, (xv, yv) = experiment._held_out(digits, 0.2, seed=0)
    assert len(yv) == 40 and len(y) == 160
    assert np.bincount(yv, minlength=10).tolist() == [4] * 10
    assert sorted(np.concatenate([y, yv]).tolist()) == sorted(digits.y_train.tolist())
    assert experiment._held_out(digits, 0.0, seed=0)[2] is None


def test_clr_run_with_range_test_bounds_matches_the_same_bounds_given(digits, tmp_path):
    found = experiment.run_method(DIGITS, "clr", epochs=2, out_dir=tmp_path, verbose=0,
                                  data=digits, validation_split=0.2)
    notes = found["config"]["schedule"]
    base, top = notes["range_test"]["bounds"]
    assert (notes["base_lr"], notes["max_lr"]) == (base, top)
    # 160 examples in batches of 64: 3 steps per epoch; 2 epochs, one cycle.
    assert notes["step_size"] == 3.0 and notes["gamma"] == 1.0
    expected = [np.mean(smith(np.arange(3 * e, 3 * e + 3), base, top, 3.0)) for e in range(2)]
    np.testing.assert_allclose([e["lr"] for e in found["epochs"]], expected, rtol=1e-6)
    assert found["config"]["learning_rate"] is None
    # The range test left the network and the shuffling as they were: giving its
    # bounds reproduces the run exactly.
    given = experiment.run_method(DIGITS, "clr", epochs=2, out_dir=tmp_path, verbose=0,
                                  data=digits, validation_split=0.2, base_lr=base, max_lr=top)
    assert "range_test" not in given["config"]["schedule"]
    assert given["test"] == found["test"]
    assert [e["logs"]["loss"] for e in given["epochs"]] == [e["logs"]["loss"] for e in found["epochs"]]


def test_cli_runs_decay_and_clr(tmp_path, capsys):
    common = ["--epochs", "2", "--subset", "200", "--out", str(tmp_path), "--verbose", "0"]
    assert main(["run", "digits_small_cnn", "--method", "decay", "--sequence", "seq3",
                 "--strategy", "epoch", *common]) == 0
    out = capsys.readouterr().out
    assert "epoch 1: lr 0.01\n" in out and "epoch 2: lr 0.009\n" in out
    assert main(["run", "digits_small_cnn", "--method", "clr", "--clr-mode", "exp_range",
                 "--base-lr", "0.001", "--max-lr", "0.05", "--step-size", "4", *common]) == 0
    record = json.loads((tmp_path / "digits_small_cnn" /
                         "clr_exp_range_base_lr0.001_max_lr0.05_step_size4.json").read_text())
    notes = record["config"]["schedule"]
    assert notes["gamma"] == schedule_methods.exp_range_gamma(4)
    expected = np.mean(smith(np.arange(4), 0.001, 0.05, 4.0, "exp_range", notes["gamma"]))
    assert record["epochs"][0]["lr"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--method", "decay", "--sequence", "seq9"], "Unknown --sequence 'seq9'"),
    (["--method", "decay", "--strategy", "never"], "Unknown --strategy 'never'"),
    (["--method", "clr", "--clr-mode", "cosine"], "Unknown --clr-mode 'cosine'"),
    (["--method", "clr", "--base-lr", "0.1", "--max-lr", "0.01"], "must be greater than --base-lr"),
    (["--method", "clr", "--step-size", "0.5"], "--step-size must be >= 1"),
    (["--method", "clr", "--lr", "0.1"], "--lr does not apply to method 'clr'"),
    (["--method", "decay", "--strategy", "cutoff", "--validation-split", "0"],
     "watches the validation loss"),
    (["--method", "baseline", "--validation-split", "1.5"], "--validation-split must be"),
    (["--method", "baseline", "--sequence", "seq1"], "--sequence does not apply"),
])
def test_cli_bad_input_is_one_line_exit_2(flags, message, capsys):
    assert main(["run", "digits_small_cnn", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any training
    assert captured.err.count("\n") == 1 and message in captured.err


@pytest.mark.parametrize("flags, message", [
    (["--min-lr", "1", "--max-lr", "0.1"], "min_lr (1.0) must be less than max_lr"),
    (["--min-lr", "0"], "min_lr must be a finite number > 0"),
    (["--mode", "cosine"], "Unknown mode 'cosine'"),
    (["--steps", "1"], "steps must be an integer >= 2"),
])
def test_lr_find_bad_input(flags, message, tmp_path, capsys):
    assert main(["lr-find", "digits_small_cnn", "--out", str(tmp_path), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err
    assert not any(tmp_path.iterdir())


def test_lr_find_cli_writes_plot_and_json(tmp_path, capsys):
    assert main(["lr-find", "digits_small_cnn", "--subset", "300", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "digits_small_cnn_lr_find.json").read_text())
    assert (tmp_path / "digits_small_cnn_lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"suggested LR {summary['suggestion']:.3g}" in out
    base, top = summary["bounds"]
    assert f"CLR bounds {base:.3g} to {top:.3g}" in out
    assert summary["train_examples"] == 300 and summary["batch_size"] == 64
    # One epoch of 300 // 64 = 4 batches is below the minimum: 100 steps (or fewer if it exploded).
    assert summary["steps"] == len(summary["losses"]) <= 100
    rates = np.asarray(summary["learning_rates"])
    np.testing.assert_allclose(rates, 1e-7 * (1e8) ** (np.arange(len(rates)) / 99), rtol=1e-9)
    assert summary["suggestion"] == pytest.approx(
        rates[int(np.nanargmin(np.asarray(summary["smoothed_losses"], float)))] / 10)
    assert math.isfinite(summary["losses"][0])
