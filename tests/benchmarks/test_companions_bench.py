"""The companion benchmark: rows from other runs, merging arms run apart, the table and plot."""

import json
import os
import pathlib

import pytest

from benchmarks import companions as bench
from keras_mcv import records

META = {"recipe": "digits_small_cnn", "train_examples": 100, "test_examples": 50, "epochs": 2,
        "batch_m": 32, "seed": 0}


def _arm(arm, accuracies, seconds):
    rows = [{"epoch": i + 1, "train_s": t, "train_loss": 1.0, "lr": 0.01, "test_loss": 1.0 - a,
             "test_accuracy": a} for i, (a, t) in enumerate(zip(accuracies, seconds))]
    return {"arm": arm, "label": bench.LABELS[arm], "epochs": rows, "wall_s": seconds[-1],
            "train_s": seconds[-1], "load_before": (1.0, 1.0, 1.0),
            "load_after": (2.0, 2.0, 2.0), "final": rows[-1]}


def _read(path):
    return json.loads(pathlib.Path(path).read_text())


def _write(path, record):
    with open(path, "w") as f:
        json.dump(record, f)
    return str(path)


def _run_record(path, kind, accuracy, wall_s, epochs, status="complete"):
    record = records.new_record(kind, "digits_small_cnn", "baseline" if kind != "macro" else "macro")
    for epoch in range(1, epochs + 1):
        records.add_epoch(record, epoch, wall_s * epoch / epochs, {"loss": 1.0}, lr=0.01)
    if status != "running":
        records.finalize(record, status, wall_time_s=wall_s,
                         test={"loss": 1.0, "accuracy": accuracy})
    records.write_record(path, record)
    return str(path)


def test_record_rows_from_a_grid_a_run_and_a_random_search(tmp_path):
    grid = _run_record(tmp_path / "macro.json", "macro", 0.4423, 1452.0, 10)
    row = bench.record_row("grid", grid)
    assert row["accuracy"] == 0.4423 and row["wall_s"] == 1452.0 and row["epochs"] == 10
    assert row["source"].startswith("macro-CV grid")
    run = _run_record(tmp_path / "run.json", "baseline", 0.9, 3.0, 4)
    assert bench.record_row("run", run)["source"] == "run record"
    search = _write(tmp_path / "random_search.json", {
        "format": "keras_mcv.random_search/1", "wall_time_s": 60.0,
        "ensembles": [
            {"k": 1, "accuracy": 0.90, "loss": 0.3, "gain": 0.0, "single_accuracy": 0.90},
            {"k": 2, "accuracy": 0.93, "loss": 0.2, "gain": 0.03, "single_accuracy": 0.90},
            {"k": 3, "accuracy": 0.93, "loss": 0.2, "gain": 0.03, "single_accuracy": 0.90},
        ]})
    row = bench.record_row("ensemble", search)
    # The best ensemble, and of equal accuracies the smallest.
    assert (row["k"], row["accuracy"], row["gain"]) == (2, 0.93, 0.03)
    assert "top 2" in row["source"] and "+3.00" in row["source"]


def test_bad_record_rows_are_refused_with_the_reason(tmp_path):
    with pytest.raises(SystemExit, match="LABEL=PATH"):
        bench.parse_record_args(["no-equals-sign"])
    with pytest.raises(SystemExit, match="no file"):
        bench.parse_record_args([f"x={tmp_path / 'missing.json'}"])
    running = _run_record(tmp_path / "running.json", "baseline", None, 2.0, 2, status="running")
    with pytest.raises(SystemExit, match="not complete"):
        bench.record_row("r", running)
    # A run record the project's validator refuses is refused with its reason.
    broken = _write(tmp_path / "broken.json", {
        "format": "keras_mcv.run/1", "kind": "run", "status": "complete",
        "test": {"accuracy": 0.9}, "wall_time_s": 3.0, "epochs": [{}] * 4})
    with pytest.raises(SystemExit, match="broken.json"):
        bench.record_row("b", broken)
    other = _write(tmp_path / "other.json", {"format": "something/1"})
    with pytest.raises(SystemExit, match="neither"):
        bench.record_row("o", other)
    empty = _write(tmp_path / "rs.json", {"format": "keras_mcv.random_search/1", "ensembles": []})
    with pytest.raises(SystemExit, match="--ensemble"):
        bench.record_row("e", empty)


def test_arms_saved_by_separate_invocations_all_stay(tmp_path):
    path = str(tmp_path / "c.json")
    bench.save_arm(path, META, "sgd", _arm("sgd", [0.5, 0.6], [1.0, 2.0]))
    # A second invocation that started before the first one wrote still keeps it.
    bench.save_arm(path, META, "ema", _arm("ema", [0.4, 0.7], [1.5, 3.0]))
    bench.save_arm(path, META, record_rows=[{"label": "grid", "accuracy": 0.6, "wall_s": 9.0,
                                             "source": "s", "path": "p"}])
    saved = _read(path)
    assert sorted(saved["runs"]) == ["ema", "sgd"] and list(saved["records"]) == ["grid"]
    with pytest.raises(SystemExit, match="other settings"):
        bench.save_arm(path, {**META, "epochs": 3}, "clr", _arm("clr", [0.1], [1.0]))
    assert sorted(_read(path)["runs"]) == ["ema", "sgd"]


def test_table_target_is_the_lowest_best_accuracy_and_rows_follow(tmp_path):
    results = {"ema": _arm("ema", [0.4, 0.7], [1.5, 3.0]),
               "sgd": _arm("sgd", [0.5, 0.6], [1.0, 2.0])}
    records = {"grid": {"label": "grid", "accuracy": 0.65, "wall_s": 9.0, "source": "s",
                        "path": "p"}}
    md = str(tmp_path / "c.md")
    bench.write_markdown(results, md, META, records)
    text = pathlib.Path(md).read_text()
    assert "Target for \"time to target\": 60.00%" in text
    # sgd reaches 60% at its second epoch (2 s), ema at its second (3 s).
    sgd_line = next(line for line in text.splitlines() if line.startswith("| SGD lr 0.01"))
    assert "| 60.00 | 2 | 2s |" in sgd_line and "| 2s | 60.00 |" in sgd_line
    assert text.index("SGD lr 0.01 momentum 0.9 (persistency") < text.index("EMA")  # ARMS order
    assert "| grid | 65.00 | 9s | s (`p`) |" in text
    png = str(tmp_path / "c.png")
    bench.plot(results, png, META, records)
    assert os.path.getsize(png) > 1000


def test_race_and_sgd_arms_run_end_to_end_on_digits(tmp_path):
    out = str(tmp_path)
    assert bench.main(["--recipe", "digits_small_cnn", "--subset", "300", "--epochs", "2",
                       "--arms", "sgd,race", "--name", "t", "--out", out]) == 0
    saved = _read(os.path.join(out, "t.json"))
    assert sorted(saved["runs"]) == ["race", "sgd"]
    race = saved["runs"]["race"]["epochs"]
    assert len(race) == 2 and all(0.0 <= r["test_accuracy"] <= 1.0 for r in race)
    # The race logs the leader's LR, one of the candidates.
    from keras_mcv.rules.thesis import DEFAULT_CANDIDATES
    from recipes import get_config

    candidates = get_config("digits_small_cnn").candidates or DEFAULT_CANDIDATES
    assert all(min(abs(r["lr"] / c - 1) for c in candidates) < 1e-6 for r in race)  # float32
    assert os.path.exists(os.path.join(out, "t.png"))
    with pytest.raises(SystemExit):  # argparse's error: the reason on stderr, exit status 2
        bench.main(["--recipe", "digits_small_cnn", "--arms", "augment", "--out", out])
