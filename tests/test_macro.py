"""Tests of the macro cross-validation baseline (keras_mcv.macro, thesis 4.5).

One small grid on scikit-learn's digits with a softmax-regression model is run
once in-process (module fixture) and reused: its table is checked row by row
against what a recording callback saw, and it is the reference of the
distributed run (a chief and two worker processes on 127.0.0.1). The resume
test kills a search in a subprocess and restarts it.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_mcv import data as data_lib
from keras_mcv import macro, optimizers
from keras_mcv import records as record_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The job run in-process and in subprocesses, so that every run uses the same
# model and data. argv[1] is a JSON dict of run_macro_cv keyword arguments plus
# "out" (where the chief / single process saves the result).
JOB = r'''
import json, os, sys
import keras
from keras_mcv import data as data_lib, macro

SMALL_GRID = dict(batch_size=64, optimizers=("sgd", "adam"),
                  learning_rates=(0.1, 0.01), decays=(1e-3,),
                  repeats=2, patience=1, max_epochs=3, seed=0)


def build(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def load():
    return data_lib.normalize(data_lib.load_digits())


def main(kwargs):
    out = kwargs.pop("out", None)
    grid = dict(SMALL_GRID)
    grid.update(kwargs)
    result = macro.run_macro_cv(build, load(), **grid)
    if result is not None and out:
        result.save(out, recipe="digits_test")
    return result


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    print("JOB DONE", "worker" if result is None else len(result.rows))
'''


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    path = tmp_path_factory.mktemp("job") / "macro_job.py"
    path.write_text(JOB)
    spec = importlib.util.spec_from_file_location("macro_job", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PATH = str(path)
    return module


@pytest.fixture(scope="module")
def digits(job):
    return job.load()


class FitRecorder(keras.callbacks.Callback):
    """Records, per `fit`, the planned epochs, steps and the epoch logs."""

    def __init__(self):
        super().__init__()
        self.fits = []

    def on_train_begin(self, logs=None):
        self.fits.append({"params": dict(self.params), "logs": []})

    def on_epoch_end(self, epoch, logs=None):
        self.fits[-1]["logs"].append(dict(logs or {}))


def _read_log(project_dir):
    path = os.path.join(project_dir, macro.PROJECT_NAME, macro.EXECUTIONS_LOG)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _key(entry):
    return (entry["optimizer"], entry["learning_rate"], entry["decay"])


@pytest.fixture(scope="module")
def single(job, digits, tmp_path_factory):
    """The small grid run once in this process, with a FitRecorder."""
    assert "KERASTUNER_ORACLE_IP" not in os.environ
    base = tmp_path_factory.mktemp("single")
    recorder = FitRecorder()
    start = time.perf_counter()
    result = macro.run_macro_cv(
        job.build, digits, **job.SMALL_GRID, project_dir=str(base / "tuner"),
        callbacks=[recorder],
    )
    elapsed = time.perf_counter() - start
    return {
        "result": result, "recorder": recorder, "dir": base,
        "log": _read_log(str(base / "tuner")), "elapsed": elapsed,
    }


def _table(result):
    return {
        r.config: (r.status, r.mean_epochs, r.retrain_epochs, r.best_val_loss,
                   r.test_loss, r.test_accuracy)
        for r in result.rows
    }


# ----------------------------------------------------------------- pure parts


def test_stratified_splits_keep_proportions_and_differ(digits):
    y = digits.y_train
    splits = macro.stratified_splits(y, repeats=3, val_fraction=0.2, seed=0)
    assert len(splits) == 3
    classes, counts = np.unique(y, return_counts=True)
    for tr, va in splits:
        assert len(np.intersect1d(tr, va)) == 0
        assert len(tr) + len(va) == len(y)
        assert len(va) == math.ceil(0.2 * len(y))
        val_counts = np.array([(y[va] == c).sum() for c in classes])
        # Each class's share of the validation set matches its share overall.
        assert np.all(np.abs(val_counts - counts * len(va) / len(y)) <= 1)
    vals = [set(va.tolist()) for _, va in splits]
    assert vals[0] != vals[1] and vals[1] != vals[2] and vals[0] != vals[2]
    # Same seed, same splits (every configuration and process sees the same).
    again = macro.stratified_splits(y, repeats=3, val_fraction=0.2, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))


def test_retrain_epochs_rounds_half_up():
    assert macro.retrain_epochs([3, 3]) == 3
    assert macro.retrain_epochs([2, 3]) == 3  # 2.5 -> 3, not banker's 2
    assert macro.retrain_epochs([3, 4]) == 4
    assert macro.retrain_epochs([1, 1, 2]) == 1  # 1.33
    assert macro.retrain_epochs([1, 2, 2]) == 2  # 1.67


def test_make_optimizer_decay_is_inverse_time():
    opt = optimizers.make_optimizer("sgd", 0.1, decay=1e-3)
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == 0.9
    for step in (0, 1, 10, 1000):
        opt.iterations.assign(step)
        assert float(opt.learning_rate) == pytest.approx(0.1 / (1 + 1e-3 * step))
    constant = optimizers.make_optimizer("sgd", 0.1)
    constant.iterations.assign(1000)
    assert float(constant.learning_rate) == pytest.approx(0.1)
    assert isinstance(optimizers.make_optimizer("adam", 1e-3), keras.optimizers.Adam)


def test_make_optimizer_momentum_forms():
    torch = optimizers.make_optimizer("sgd", 0.1, decay=1e-3, momentum_form="torch")
    assert isinstance(torch, optimizers.TorchSGD) and torch.momentum == 0.9
    torch.iterations.assign(10)
    assert float(torch.learning_rate) == pytest.approx(0.1 / (1 + 1e-3 * 10))
    with pytest.raises(ValueError, match="momentum form 'pytorch'"):
        optimizers.make_optimizer("sgd", 0.1, momentum_form="pytorch")


class OptimizerSeen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_begin(self, logs=None):
        self.seen.append(type(self.model.optimizer).__name__)


def test_momentum_form_reaches_every_fit_and_the_fingerprint(job, digits, tmp_path):
    """The grid's SGD is PyTorch's form by default (every split run and retrain);
    the form is recorded, and a project made with the other form is refused."""
    grid = dict(batch_size=64, optimizers=("sgd",), learning_rates=(0.1,), decays=(1e-2,),
                repeats=1, patience=1, max_epochs=1, project_dir=str(tmp_path / "tuner"))
    seen = OptimizerSeen()
    result = macro.run_macro_cv(job.build, digits, callbacks=[seen], **grid)
    assert seen.seen == ["TorchSGD"] * 4  # 2 configurations x (1 split + retrain)
    assert result.settings["momentum_form"] == "torch"
    assert "PyTorch's momentum form" in result.to_markdown()
    with pytest.raises(ValueError, match="other settings"):
        macro.run_macro_cv(job.build, digits, momentum_form="keras", **grid)
    keras_seen = OptimizerSeen()
    macro.run_macro_cv(job.build, digits, momentum_form="keras", callbacks=[keras_seen],
                       **dict(grid, project_dir=str(tmp_path / "keras")))
    assert keras_seen.seen == ["SGD"] * 4
    with pytest.raises(ValueError, match="momentum form"):
        macro.run_macro_cv(job.build, digits, momentum_form="Torch",
                           **dict(grid, project_dir=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizers=()), "optimizers` is empty"),
        (dict(optimizers=("rmsprop",)), "Unknown optimizer"),
        (dict(learning_rates=()), "learning_rates` is empty"),
        (dict(learning_rates=(0.1, -0.01)), r"-0\.01.*> 0"),
        (dict(learning_rates=(0.1, float("nan"))), "finite"),
        (dict(learning_rates=(0.1, 0.1)), "duplicates"),
        (dict(decays=(0.0,)), r"> 0.*\(\) to skip"),
        (dict(repeats=0), "repeats` must be an integer >= 1"),
        (dict(patience=-1), "patience"),
        (dict(max_epochs=0), "max_epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(val_fraction=1.0), "val_fraction"),
    ],
)
def test_invalid_arguments_raise_before_training(job, digits, tmp_path, kwargs, match):
    grid = dict(job.SMALL_GRID)
    grid.update(kwargs)
    with pytest.raises(ValueError, match=match):
        macro.run_macro_cv(job.build, digits, **grid, project_dir=str(tmp_path / "p"))
    assert not (tmp_path / "p").exists()  # nothing started


def test_too_little_data_for_stratified_splits(job, digits, tmp_path):
    tiny = data_lib.ArrayData(
        digits.x_train[:12], digits.y_train[:12], digits.x_test, digits.y_test,
        digits.class_names, "tiny",
    )
    with pytest.raises(ValueError, match="stratified"):
        macro.run_macro_cv(job.build, tiny, project_dir=str(tmp_path / "p"))


# ----------------------------------------------------------------- oracle


def _values(trial):
    v = trial.hyperparameters.values
    return (v["optimizer"], v["learning_rate"], v["decay"] or None)


def test_oracle_hands_out_stage_two_only_after_stage_one(tmp_path):
    oracle = macro.MacroCVOracle(("sgd", "adam"), (0.1, 0.01), (1e-3, 1e-4), settings="s")
    macro.MacroCVTuner(oracle, None, None, directory=str(tmp_path), project_name="p")
    trials = [oracle.create_trial(f"w{i}") for i in range(4)]
    assert [_values(t) for t in trials] == [
        ("sgd", 0.1, None), ("sgd", 0.01, None), ("adam", 0.1, None), ("adam", 0.01, None)
    ]
    assert oracle.create_trial("w4").status == "IDLE"  # stage 1 still running
    # SGD 0.01 is the best SGD rate; Adam 0.1 is best overall (irrelevant here).
    for i, (trial, score) in enumerate(zip(trials, [0.5, 0.3, 0.1, 0.2])):
        oracle.update_trial(trial.trial_id, {macro.OBJECTIVE: score})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
        if i < 3:
            assert oracle.create_trial("w4").status == "IDLE"
    stage2 = [oracle.create_trial("w4"), oracle.create_trial("w5")]
    assert [_values(t) for t in stage2] == [("sgd", 0.01, 1e-3), ("sgd", 0.01, 1e-4)]
    assert oracle.create_trial("w6").status == "IDLE"
    for trial in stage2:
        oracle.update_trial(trial.trial_id, {macro.OBJECTIVE: 0.4})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    assert oracle.create_trial("w6").status == "STOPPED"


class _FakeTuner(macro.MacroCVTuner):
    """Scores a configuration by a formula; can stop the search between trials."""

    runs = []
    stop_after = None

    def run_trial(self, trial, *args, **kwargs):
        self.runs.append(_values(trial))
        optimizer, lr, decay = _values(trial)
        return {macro.OBJECTIVE: abs(math.log10(lr) + 2) + (decay or 0) + (optimizer == "adam")}

    def on_trial_end(self, trial):
        super().on_trial_end(trial)  # the oracle ends the trial and saves
        if self.stop_after is not None and len(self.runs) == self.stop_after:
            raise KeyboardInterrupt


def test_search_stopped_between_trials_resumes_the_rest(tmp_path):
    # keras_tuner's GridSearchOracle stops or fails with KeyError here (it does not
    # save its grid position); MacroCVOracle continues from the tried values.
    def tuner():
        oracle = macro.MacroCVOracle(("sgd", "adam"), (0.1, 0.01, 0.001), (1e-3,), settings="s")
        return _FakeTuner(oracle, None, None, directory=str(tmp_path), project_name="p")

    _FakeTuner.runs, _FakeTuner.stop_after = [], 2
    with pytest.raises(KeyboardInterrupt):
        tuner().search()
    assert len(_FakeTuner.runs) == 2
    _FakeTuner.stop_after = None
    resumed = tuner()
    resumed.search()
    assert _FakeTuner.runs == [
        ("sgd", 0.1, None), ("sgd", 0.01, None), ("sgd", 0.001, None),
        ("adam", 0.1, None), ("adam", 0.01, None), ("adam", 0.001, None),
        ("sgd", 0.01, 1e-3),
    ]
    result = macro.MacroResult.from_oracle(resumed.oracle, wall_time_s=0.0)
    assert len(result.rows) == 7 and result.winner.config == ("sgd", 0.01, None)


# ----------------------------------------------------------------- one process


def test_table_has_one_row_per_configuration(single):
    result = single["result"]
    configs = [r.config for r in result.rows]
    sgd_lrs = {r.lr: r for r in result.rows if r.optimizer == "sgd" and not r.decay}
    best_sgd = min(sgd_lrs.values(), key=lambda r: r.best_val_loss)
    assert configs == [
        ("sgd", 0.1, None), ("sgd", 0.01, None), ("sgd", best_sgd.lr, 1e-3),
        ("adam", 0.1, None), ("adam", 0.01, None),
    ]
    assert all(r.status == "ok" and not r.diverged for r in result.rows)
    assert [r.stage for r in result.rows] == [1, 1, 2, 1, 1]
    # Every configuration ran exactly once.
    ends = collections.Counter(_key(e) for e in single["log"] if e["event"] == "end")
    assert sorted(ends.values()) == [1] * 5
    assert result.trial_time_s <= result.wall_time_s <= single["elapsed"] + 1e-6


def test_split_runs_and_retrain_match_recorded_fits(single, digits):
    result = single["result"]
    fits = single["recorder"].fits
    repeats = 2
    order = [_key(e) for e in single["log"] if e["event"] == "end"]
    assert len(fits) == (repeats + 1) * len(order)
    n = len(digits.y_train)
    n_val = math.ceil(0.2 * n)
    rows = {r.config: r for r in result.rows}
    for i, key in enumerate(order):
        row = rows[key]
        chunk = fits[i * (repeats + 1):(i + 1) * (repeats + 1)]
        best_epochs, best_vals = [], []
        for fit in chunk[:repeats]:
            # 80% of the training set, validated on the other 20%.
            assert fit["params"]["steps"] == math.ceil((n - n_val) / 64)
            assert fit["params"]["epochs"] == 3
            val = [log["val_loss"] for log in fit["logs"]]
            best_epochs.append(int(np.argmin(val)) + 1)
            best_vals.append(min(val))
        assert row.best_epochs == best_epochs
        assert row.mean_epochs == pytest.approx(np.mean(best_epochs))
        assert row.best_val_loss == pytest.approx(np.mean(best_vals), rel=1e-6)
        retrain = chunk[repeats]
        expected = int(math.floor(np.mean(best_epochs) + 0.5))
        assert row.retrain_epochs == expected
        assert retrain["params"]["epochs"] == expected
        assert len(retrain["logs"]) == expected
        assert retrain["params"]["steps"] == math.ceil(n / 64)  # all training data
        assert "val_loss" not in retrain["logs"][-1]
        assert 0.0 <= row.test_accuracy <= 1.0 and math.isfinite(row.test_loss)


def test_winner_is_lowest_mean_validation_loss(single, tmp_path):
    result = single["result"]
    best = min(r.best_val_loss for r in result.rows)
    assert result.winner.best_val_loss == best
    assert result.winner in result.rows
    md = result.to_markdown()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(result.rows)  # header + one line per row
    assert "**" in md and "Winner:" in md and "Total wall time" in md
    path = result.save(tmp_path, recipe="digits_test")
    record = record_lib.read_record(path)
    assert record["kind"] == "macro" and record["status"] == "complete"
    assert len(record["rows"]) == len(result.rows)
    assert record["rows"][record["winner"]]["best_val_loss"] == pytest.approx(best)
    assert record["test"]["accuracy"] == pytest.approx(result.winner.test_accuracy)
    assert (tmp_path / macro.TABLE_NAME).read_text() == md


def test_diverging_configuration_is_recorded_not_raised(job, digits, tmp_path):
    result = macro.run_macro_cv(
        job.build, digits, batch_size=64, optimizers=("sgd",),
        learning_rates=(0.1, 1e38), decays=(1e-3,), repeats=2, patience=1,
        max_epochs=2, project_dir=str(tmp_path / "p"),
    )
    rows = {r.config: r for r in result.rows}
    bad = rows[("sgd", 1e38, None)]
    assert bad.diverged and bad.status == "diverged"
    assert bad.best_val_loss is None and bad.test_loss is None
    assert rows[("sgd", 0.1, None)].status == "ok"
    assert result.winner.config == ("sgd", 0.1, None)
    # Stage 2 uses the best non-diverged SGD learning rate.
    assert ("sgd", 0.1, 1e-3) in rows
    line = next(l for l in result.to_markdown().splitlines() if "1e+38" in l)
    assert "diverged" in line and "None" in line


def test_all_diverged_gives_no_winner_and_no_stage_two(job, digits, tmp_path):
    result = macro.run_macro_cv(
        job.build, digits, batch_size=64, optimizers=("sgd", "adam"),
        learning_rates=(1e38,), decays=(1e-3,), repeats=1, patience=1,
        max_epochs=2, project_dir=str(tmp_path / "p"),
    )
    assert [r.status for r in result.rows] == ["diverged", "diverged"]
    assert result.winner is None
    assert record_lib.read_record(result.save(tmp_path))["winner"] is None


# ----------------------------------------------------------------- processes


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env.update(
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
    )
    env.update(extra)
    return env


def _spawn(job, kwargs, log_path, **env):
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, job.PATH, json.dumps(kwargs)], env=_env(**env),
        stdout=log, stderr=subprocess.STDOUT, cwd=os.path.dirname(job.PATH),
    )
    proc.log_file = log
    return proc


def _wait(proc, timeout):
    try:
        return proc.wait(timeout=timeout)
    finally:
        proc.log_file.close()


@pytest.mark.slow
def test_distributed_chief_and_two_workers_match_single_process(job, single, tmp_path):
    port = str(_free_port())
    common = dict(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=port)
    procs = {
        "chief": _spawn(
            job, {"project_dir": str(tmp_path / "chief"), "out": str(tmp_path / "out")},
            tmp_path / "chief.log", KERASTUNER_TUNER_ID="chief", **common,
        )
    }
    for tid in ("tuner0", "tuner1"):  # own directories, as on other machines
        procs[tid] = _spawn(
            job, {"project_dir": str(tmp_path / tid)}, tmp_path / f"{tid}.log",
            KERASTUNER_TUNER_ID=tid, **common,
        )
    try:
        codes = {name: _wait(p, 240) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in procs}
    assert codes == {"chief": 0, "tuner0": 0, "tuner1": 0}, logs
    assert "JOB DONE 5" in logs["chief"]
    assert "JOB DONE worker" in logs["tuner0"] and "JOB DONE worker" in logs["tuner1"]

    # Every configuration ran exactly once, on the workers only.
    events = _read_log(str(tmp_path / "tuner0")) + _read_log(str(tmp_path / "tuner1"))
    assert not _read_log(str(tmp_path / "chief"))
    starts = collections.Counter(_key(e) for e in events if e["event"] == "start")
    ends = collections.Counter(_key(e) for e in events if e["event"] == "end")
    assert starts == ends
    assert sorted(ends.values()) == [1] * 5
    assert {e["tuner_id"] for e in events} <= {"tuner0", "tuner1"}

    record = record_lib.read_record(tmp_path / "out" / macro.RECORD_NAME)
    reference = single["result"]
    got = {(r["optimizer"], r["lr"], r["decay"]): r for r in record["rows"]}
    assert list(got) == [r.config for r in reference.rows]  # same rows, same order
    for row in reference.rows:
        other = got[row.config]
        assert other["status"] == row.status
        # Seeded splits and initialisations: the same numbers in every process.
        assert other["best_epochs"] == row.best_epochs
        assert other["retrain_epochs"] == row.retrain_epochs
        assert other["best_val_loss"] == pytest.approx(row.best_val_loss, rel=1e-4)
        assert other["test_accuracy"] == pytest.approx(row.test_accuracy, abs=1e-3)
    win = record["rows"][record["winner"]]
    assert (win["optimizer"], win["lr"], win["decay"]) == reference.winner.config

    # A chief restarted on the finished project returns the table at once,
    # without serving (no worker is running now).
    os.remove(tmp_path / "out" / macro.RECORD_NAME)
    chief = _spawn(
        job, {"project_dir": str(tmp_path / "chief"), "out": str(tmp_path / "out")},
        tmp_path / "chief2.log", KERASTUNER_TUNER_ID="chief", **common,
    )
    try:
        assert _wait(chief, 60) == 0, (tmp_path / "chief2.log").read_text()
    finally:
        if chief.poll() is None:
            chief.kill()
    again = record_lib.read_record(tmp_path / "out" / macro.RECORD_NAME)
    assert again["rows"] == record["rows"]


@pytest.mark.slow
def test_killed_search_resumes_without_repeating_completed_trials(job, tmp_path):
    project = tmp_path / "tuner"
    kwargs = {"project_dir": str(project), "decays": [], "max_epochs": 4}
    proc = _spawn(job, dict(kwargs), tmp_path / "first.log")
    trial_files = project / macro.PROJECT_NAME
    deadline = time.time() + 120

    def completed():
        done = set()
        for path in trial_files.glob("trial_*/trial.json"):
            try:
                trial = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if trial["status"] == "COMPLETED":
                v = trial["hyperparameters"]["values"]
                done.add((v["optimizer"], v["learning_rate"], v["decay"] or None))
        return done

    try:
        while not completed() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        proc.send_signal(signal.SIGKILL)
    finally:
        _wait(proc, 30)
    done_before = completed()
    assert 1 <= len(done_before) < 4, done_before
    before = _read_log(str(project))

    grid = dict(job.SMALL_GRID, decays=(), max_epochs=4)
    result = macro.run_macro_cv(job.build, job.load(), **grid, project_dir=str(project))
    after = [e for e in _read_log(str(project)) if e["pid"] == os.getpid()]
    rerun = {_key(e) for e in after if e["event"] == "start"}
    assert not rerun & done_before, (rerun, done_before)
    assert rerun  # the rest did run
    assert [r.config for r in result.rows] == [
        ("sgd", 0.1, None), ("sgd", 0.01, None), ("adam", 0.1, None), ("adam", 0.01, None)
    ]
    assert all(r.status == "ok" for r in result.rows)
    # Each configuration completed once overall; only an interrupted one restarted.
    ends = collections.Counter(_key(e) for e in before + after if e["event"] == "end")
    assert all(ends[c] == 1 for c in done_before)
    assert set(ends) == {r.config for r in result.rows}

    # A finished search returns its table again without running anything.
    n_events = len(_read_log(str(project)))
    again = macro.run_macro_cv(job.build, job.load(), **grid, project_dir=str(project))
    assert len(_read_log(str(project))) == n_events
    assert _table(again) == _table(result)

    # Reusing the project with other settings is refused, not mixed in.
    with pytest.raises(ValueError, match="other settings"):
        macro.run_macro_cv(
            job.build, job.load(), **dict(grid, repeats=3), project_dir=str(project)
        )


# ----------------------------------------------------------------- CLI


@pytest.fixture
def fake_recipes(job, digits, monkeypatch):
    """A stand-in `recipes` registry with one digits recipe (contract of recipes/)."""
    import types

    from recipes.config import RecipeConfig

    calls = []

    def load_data(path, subset):
        calls.append((path, subset))
        return digits

    config = RecipeConfig(name="fake_digits", load_data=load_data,
                          build_model=job.build, batch_size=64)
    module = types.ModuleType("recipes")

    def get_config(name):
        if name != "fake_digits":
            raise KeyError(f"no recipe {name!r}")
        return config

    module.get_config = get_config
    monkeypatch.setitem(sys.modules, "recipes", module)
    return calls


def test_cli_tune_runs_and_writes_record(fake_recipes, tmp_path, capsys):
    from keras_mcv import cli

    out = tmp_path / "macro"
    code = cli.main([
        "tune", "fake_digits", "--optimizers", "sgd", "--lrs", "0.1,0.01",
        "--decays", "none", "--repeats", "1", "--patience", "1", "--max-epochs", "2",
        "--subset", "500", "--data", "somewhere", "--out", str(out), "--verbose", "0",
    ])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert fake_recipes == [("somewhere", 500)]
    record = record_lib.read_record(out / macro.RECORD_NAME)
    assert record["recipe"] == "fake_digits" and len(record["rows"]) == 2
    assert record["config"]["batch_size"] == 64  # the recipe's
    assert record["config"]["momentum_form"] == "torch"  # the recipe's: the thesis's
    assert "| Momentum SGD | 0.1 |" in printed and "winner:" in printed
    assert "PyTorch's momentum form" in printed
    assert "total wall time" in printed
    assert (out / "tuner" / macro.PROJECT_NAME / "oracle.json").exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--lrs", "0.1,abc"], "--lrs"),
        (["--repeats", "0"], "repeats"),
        (["--optimizers", "rmsprop"], "rmsprop"),
        (["--decays", "0"], "decays"),
        (["--momentum-form", "pytorch"], "--momentum-form"),
    ],
)
def test_cli_tune_rejects_bad_arguments(fake_recipes, tmp_path, capsys, argv, match):
    from keras_mcv import cli

    code = cli.main(["tune", "fake_digits", "--out", str(tmp_path), *argv])
    assert code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "tuner").exists()


def test_cli_tune_keras_form_goes_to_its_own_directory(fake_recipes, tmp_path, capsys,
                                                        monkeypatch):
    from keras_mcv import cli

    monkeypatch.chdir(tmp_path)
    code = cli.main([
        "tune", "fake_digits", "--optimizers", "sgd", "--lrs", "0.1", "--decays", "none",
        "--repeats", "1", "--patience", "1", "--max-epochs", "1", "--momentum-form", "keras",
        "--verbose", "0",
    ])
    assert code == 0, capsys.readouterr().err
    record = record_lib.read_record(tmp_path / "runs" / "fake_digits" / "macro_kerasmom"
                                    / macro.RECORD_NAME)
    assert record["config"]["momentum_form"] == "keras"


def test_cli_tune_unknown_recipe(fake_recipes, capsys):
    from keras_mcv import cli

    assert cli.main(["tune", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
