"""Tests of the run records and the report (keras_mcv.records, keras_mcv.report, `keras-mcv report`)."""

import datetime
import json
import math
import os
import shutil

import numpy as np
import pytest

from keras_mcv import cli
from keras_mcv import records as record_lib
from keras_mcv import report as report_lib

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "runs")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

DIGITS_TABLE = [
    "| Method | Epochs | Test loss | Test acc. | Theoretical cost | Wall time |",
    "|---|---|---|---|---|---|",
    "| Macro-CV grid (winner: SGD lr=0.01, decay=0.0001) | 6.4 | 0.72 | 76.60 | – | 36m 46s |",
    "| Baseline SGD lr=0.01 | 6 | 0.72 | 76.60 | ~656K, ~328K | 1m 05s |",
    "| MCV-lr-voting (incomplete) | 2 | – | – | ~1.2K, 999 | 7.5s |",
    "| Method 1 | 4 | 0.91 | 68.48 | ~285K, ~228K | 22m 56s |",
    "| Method 2, α = 0.5 | 3 | 1.49 | 45.68 | ~162K, ~72K | 8m 37s |",
]
SVHN_TABLE = DIGITS_TABLE[:2] + [
    "| Method 3 | 2 | 0.39 | 90.16 | ~1.37M, ~1.1M | 2h 02m |",
]


@pytest.fixture
def saved_runs(tmp_path):
    """A copy of the fixture records (so reports written next to them stay in tmp)."""
    directory = tmp_path / "saved_runs"
    shutil.copytree(FIXTURES, directory)
    return directory


@pytest.fixture(scope="module")
def report_out(tmp_path_factory):
    """The report of the fixture records, built once: `(report, out_dir)`."""
    root = tmp_path_factory.mktemp("report")
    shutil.copytree(FIXTURES, root / "saved_runs")
    out = root / "out"
    return report_lib.build_report(root / "saved_runs", out_dir=out), out


@pytest.fixture
def report(report_out):
    return report_out[0]


def _record(**overrides):
    record = record_lib.new_record("mcv", "tiny", "search1", {"alpha": 0.0, "momentum_form": "torch"})
    record.update(overrides)
    return record


# --------------------------------------------------------------------------- report


def test_report_table_matches_table_4_5_layout(report):
    assert report.tables["digits_small_cnn"].splitlines() == DIGITS_TABLE
    assert report.tables["digits_small_cnn"] in report.markdown


def test_report_one_table_per_recipe(report):
    assert sorted(report.tables) == ["digits_small_cnn", "svhn_small_cnn"]
    assert report.tables["svhn_small_cnn"].splitlines() == SVHN_TABLE
    assert report.markdown.index("## digits_small_cnn") < report.markdown.index("## svhn_small_cnn")
    assert [row["Method"] for row in report.rows["svhn_small_cnn"]] == ["Method 3"]


def test_report_skips_corrupt_and_foreign_files_with_warning(report):
    assert len(report.records) == 6
    assert len(report.warnings) == 2
    corrupt, foreign = report.warnings
    assert "corrupt.json" in corrupt and "not valid JSON" in corrupt
    assert "foreign.json" in foreign and "not a keras_mcv run record" in foreign
    assert "## Skipped files" in report.markdown
    assert "corrupt.json" in report.markdown


def test_report_macro_grid_table_marks_winner_and_divergence(report):
    md = report.markdown
    assert "| **SGD** | **0.01** | **0.0001** | **6.4** | **0.72** | **76.60** | **5m 20s** |" in md
    assert "| Adam | 0.1 | – | 13.8 | diverged | 10.00 | 11m 30s |" in md


def test_report_writes_markdown_and_valid_pngs(report_out):
    report, out = report_out
    assert report.files[0] == os.path.join(out, "report.md")
    with open(report.files[0], encoding="utf-8") as f:
        assert f.read() == report.markdown
    pngs = report.files[1:]
    names = sorted(os.path.basename(p) for p in pngs)
    assert names == sorted(
        f"{recipe}_{kind}.png"
        for recipe in ("digits_small_cnn", "svhn_small_cnn")
        for kind in ("lr", "val_loss", "accuracy_vs_time")
    )
    for path in pngs:
        with open(path, "rb") as f:
            data = f.read()
        assert data[:8] == PNG_MAGIC
        assert len(data) > 5000
        assert f"]({os.path.basename(path)})" in report.markdown


def test_report_out_dir_defaults_to_directory(saved_runs):
    report = report_lib.build_report(saved_runs)
    assert report.files[0] == os.path.join(saved_runs, "report.md")
    assert os.path.exists(os.path.join(saved_runs, "digits_small_cnn_lr.png"))
    assert not [n for n in os.listdir(saved_runs) if n.endswith(".tmp")]


def test_report_status_markers(tmp_path):
    base = dict(test={"loss": 1.0, "accuracy": 0.5}, wall_time_s=3.0)
    for i, status in enumerate(["complete", "incomplete", "failed", "running"]):
        started = f"2024-01-01T00:00:0{i}+00:00"
        record = _record(status=status, method="discard", started=started, **base)
        record_lib.write_record(tmp_path / f"{i}.json", record)
    report = report_lib.build_report(tmp_path)
    assert [row["Method"] for row in report.rows["tiny"]] == [
        "MCV-discard",
        "MCV-discard (incomplete)",
        "MCV-discard (failed)",
        "MCV-discard (incomplete)",
    ]
    # A running record is read back as stored; only the report calls it incomplete.
    assert record_lib.read_record(tmp_path / "3.json")["status"] == "running"


def test_report_macro_winner_given_as_dict_and_ops(tmp_path):
    record = record_lib.new_record("macro", "tiny", "macro", {"repeats": 2})
    rows = [
        {"optimizer": "adam", "lr": 0.001, "decay": None, "mean_epochs": 4.8, "best_val_loss": 0.6,
         "test_loss": 0.6789, "test_accuracy": 0.773, "diverged": False, "wall_time_s": 12.0},
    ]
    record_lib.finalize(record, "complete", wall_time_s=7322.0, rows=rows,
                  winner={"optimizer": "adam", "lr": 0.001},
                  ops={"forward": 1_000_000, "backward": 999_999, "step": 999_999})
    record_lib.write_record(tmp_path / "macro.json", record)
    report = report_lib.build_report(tmp_path, out_dir=tmp_path / "out")
    assert report.tables["tiny"].splitlines()[2] == (
        "| Macro-CV grid (winner: Adam lr=0.001) | 4.8 | 0.68 | 77.30 | ~2M, ~1M | 2h 02m |"
    )


def test_report_momentum_forms_side_by_side(tmp_path):
    """Keras-form rows say so and follow their PyTorch-form counterparts; an SGD-only
    grid says so."""
    base = dict(test={"loss": 1.0, "accuracy": 0.5}, wall_time_s=3.0)
    for i, (kind, method, config) in enumerate([
        ("mcv", "search1", {"optimizer": "sgd", "momentum_form": "keras"}),
        ("baseline", "baseline", {"optimizer": "sgd", "momentum_form": "keras", "learning_rate": 0.01}),
        ("mcv", "search1", {"optimizer": "sgd", "momentum_form": "torch"}),
        ("baseline", "baseline", {"optimizer": "sgd", "momentum_form": "torch", "learning_rate": 0.01}),
    ]):
        record = record_lib.new_record(kind, "tiny", method, config)
        record_lib.finalize(record, "complete", **base)
        record_lib.write_record(tmp_path / f"{i}.json", record)
    rows = [{"optimizer": "sgd", "lr": 0.01, "decay": 0.001, "mean_epochs": 4.0,
             "best_val_loss": 0.6, "test_loss": 0.7, "test_accuracy": 0.5, "diverged": False,
             "wall_time_s": 1.0}]
    for name, settings in [("m1", {"optimizers": ["sgd"], "momentum_form": "torch"}),
                           ("m2", {"optimizers": ["sgd", "adam"], "momentum_form": "keras"}),
                           ("m3", {"optimizers": ["sgd", "adam"]})]:
        record = record_lib.new_record("macro", "tiny", "macro_cv", settings)
        record_lib.finalize(record, "complete", wall_time_s=9.0, rows=rows, winner=0)
        record_lib.write_record(tmp_path / f"{name}.json", record)
    report = report_lib.build_report(tmp_path)
    assert [row["Method"] for row in report.rows["tiny"]] == [
        "Macro-CV grid, SGD only (winner: SGD lr=0.01, decay=0.001)",
        "Macro-CV grid, Keras momentum (winner: SGD lr=0.01, decay=0.001)",
        # A grid from before the key: every SGD run then used keras.optimizers.SGD.
        "Macro-CV grid, Keras momentum (winner: SGD lr=0.01, decay=0.001)",
        "Baseline SGD lr=0.01",
        "Baseline SGD lr=0.01 (Keras momentum)",
        "Method 1",
        "Method 1 (Keras momentum)",
    ]


def test_empty_directory_gives_empty_report(tmp_path):
    report = report_lib.build_report(tmp_path)
    assert report.records == [] and report.tables == {}
    assert "No run records found" in report.markdown
    assert report.files == [os.path.join(tmp_path, "report.md")]


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    "count, text",
    [(None, "–"), (0, "0"), (999, "999"), (1000, "~1K"), (1200, "~1.2K"), (656_123, "~656K"),
     (999_600, "~1M"), (1_371_741, "~1.37M"), (2.5e9, "~2.5G")],
)
def test_format_count(count, text):
    assert report_lib.format_count(count) == text


@pytest.mark.parametrize(
    "seconds, text",
    [(None, "–"), (float("nan"), "–"), (0.0, "0.0s"), (7.54, "7.5s"), (59.94, "59.9s"),
     (59.96, "1m 00s"), (65.4, "1m 05s"), (3599.4, "59m 59s"), (3599.6, "1h 00m"),
     (7322.0, "2h 02m"), (90061.0, "25h 01m")],
)
def test_format_duration(seconds, text):
    assert report_lib.format_duration(seconds) == text


@pytest.mark.parametrize(
    "kind, method, config, label",
    [
        ("baseline", "baseline", {"optimizer": "sgd", "momentum_form": "torch"}, "Baseline SGD"),
        ("baseline", "baseline", {"optimizer": "sgd", "momentum_form": "keras",
                                  "learning_rate": 0.01}, "Baseline SGD lr=0.01 (Keras momentum)"),
        # Records from before the key: every SGD run then used keras.optimizers.SGD.
        ("baseline", "baseline", {"optimizer": "sgd"}, "Baseline SGD (Keras momentum)"),
        ("baseline", "baseline", {}, "Baseline SGD (Keras momentum)"),
        ("baseline", "baseline", {"optimizer": "adam"}, "Baseline Adam"),
        ("baseline", "baseline", {"optimizer": "adam", "momentum_form": None}, "Baseline Adam"),
        ("mcv", "discard", {"momentum_form": "torch"}, "MCV-discard"),
        ("mcv", "search2", {"alpha": 0.5, "momentum_form": "keras"},
         "Method 2, α = 0.5 (Keras momentum)"),
        ("mcv", "tuned", {"optimizer": "sgd", "momentum_form": "keras"},
         "Tuned MCV (SGD, Keras momentum)"),
        ("mcv", "tuned", {"optimizer": "adam", "momentum_form": None}, "Tuned MCV (Adam)"),
        ("mcv", "tuned", {"optimizer": "sgd", "momentum_form": "torch"}, "Tuned MCV (SGD)"),
        ("mcv", "discard", {}, "MCV-discard (Keras momentum)"),
        ("mcv", "voting", {"momentum_form": "torch"}, "MCV-lr-voting"),
        ("mcv", "search1", {"alpha": 0.0, "momentum_form": "torch"}, "Method 1"),
        ("mcv", "search2", {"alpha": 0.1, "momentum_form": "torch"}, "Method 2, α = 0.1"),
        ("mcv", "search2", {"momentum_form": "torch"}, "Method 2"),
        ("mcv", "search3", {"momentum_form": "torch"}, "Method 3"),
        ("mcv", "my_rule", {"optimizer": "adam"}, "my_rule"),
        ("mcv", "adaptive-nesterov", {"optimizer": None}, "Adaptive Nesterov"),
        ("baseline", "baseline", {"optimizer": "sgd", "momentum_form": "torch",
                                  "learning_rate": 0.01, "persistency": 2},
         "Baseline SGD lr=0.01, persistency K = 2"),
        ("baseline", "baseline", {"optimizer": "adagrad", "weight_ema": True, "augment": ["flip"]},
         "Baseline AdaGrad + EMA + augmentation"),
        ("mcv", "race", {"optimizer": "sgd", "momentum_form": "torch", "weight_ema": True},
         "LR race (SGD) + EMA"),
        ("mcv", "voting", {"ema": 0.5, "momentum_form": "torch"}, "MCV-lr-voting"),  # vote EMA
    ],
)
def test_method_label(kind, method, config, label):
    assert report_lib.method_label(record_lib.new_record(kind, "r", method, config)) == label


# --------------------------------------------------------------------------- records


def test_new_record_add_epoch_finalize_round_trip(tmp_path):
    config = {"alpha": np.float32(0.5), "batch_size": np.int64(8)}
    record = record_lib.new_record("mcv", "tiny", "search2", config)
    assert record["status"] == "running" and record["format"] == record_lib.RECORD_FORMAT
    started = datetime.datetime.fromisoformat(record["started"])
    assert started.tzinfo is not None
    assert record["config"] == {"alpha": 0.5, "batch_size": 8}
    entry = record_lib.add_epoch(
        record, 1, np.float64(1.25), logs={"loss": np.float32(0.5), "mcv_val_loss": float("nan")},
        lr=1e-4, candidates=np.array([0.1, 0.01]), candidate_losses=[np.float32(np.inf), 0.75],
        pre_loss=0.9, next_lr=0.01,
    )
    assert entry == {"epoch": 1, "wall_time_s": 1.25, "logs": {"loss": 0.5, "mcv_val_loss": None},
                     "lr": 1e-4, "candidates": [0.1, 0.01], "candidate_losses": [None, 0.75],
                     "pre_loss": 0.9, "next_lr": 0.01}
    assert record["wall_time_s"] == 1.25
    record_lib.finalize(record, "complete", wall_time_s=2.5, test={"loss": 0.25, "accuracy": 0.9},
                  ops={"forward": 18, "backward": 2, "step": 16})
    path = tmp_path / "r.json"
    record_lib.write_record(path, record)
    assert record_lib.read_record(path) == record


def test_finalize_defaults_wall_time_and_rejects_bad_status():
    record = record_lib.new_record("baseline", "tiny", "baseline")
    record_lib.finalize(record, "failed", error="OOM")
    assert record["status"] == "failed" and record["error"] == "OOM"
    assert 0.0 <= record["wall_time_s"] < 60.0
    with pytest.raises(ValueError, match="final status"):
        record_lib.finalize(record, "running")
    with pytest.raises(ValueError, match="kind"):
        record_lib.new_record("grid", "tiny", "x")


def test_write_record_writes_non_finite_as_null(tmp_path):
    test = {"loss": np.float32("nan"), "accuracy": -math.inf}
    record = _record(wall_time_s=float("inf"), test=test)
    path = tmp_path / "r.json"
    record_lib.write_record(path, record)
    text = path.read_text()

    def reject(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    stored = json.loads(text, parse_constant=reject)
    assert stored["wall_time_s"] is None
    assert stored["test"] == {"loss": None, "accuracy": None}
    assert record_lib.read_record(path)["test"] == {"loss": None, "accuracy": None}


def test_write_record_leaves_no_temp_files(tmp_path):
    record_lib.write_record(tmp_path / "sub" / "r.json", _record())
    record_lib.write_record(tmp_path / "sub" / "r.json", _record(status="complete"))
    assert os.listdir(tmp_path / "sub") == ["r.json"]
    assert record_lib.read_record(tmp_path / "sub" / "r.json")["status"] == "complete"


def test_write_record_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    record_lib.write_record(path, _record(method="search1"))
    before = path.read_bytes()

    def failing_dump(obj, f, **kwargs):
        f.write('{"format": "keras_mcv.run/1", "partial')
        raise RuntimeError("disk full")

    monkeypatch.setattr(record_lib.json, "dump", failing_dump)
    with pytest.raises(RuntimeError, match="disk full"):
        record_lib.write_record(path, _record(method="search3"))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.json"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level is list"),
        ({"format": "other/1"}, "not a keras_mcv run record"),
        (dict(_record(), status="done"), "'status' must be one of"),
        (dict(_record(), kind="grid"), "'kind' must be one of"),
        ({k: v for k, v in _record().items() if k != "recipe"}, "missing key 'recipe'"),
        ({k: v for k, v in _record().items() if k != "epochs"}, "missing key 'epochs'"),
        (dict(_record(), epochs=[{"epoch": "1", "logs": {}}]),
         "epochs[0]['epoch'] must be an integer"),
        (dict(_record(), epochs=[{"epoch": 1, "logs": {"loss": "x"}}]),
         "epochs[0]['logs']['loss']"),
        (dict(_record(), epochs=[{"epoch": 1, "logs": {}, "candidates": [0.1, "a"]}]),
         "epochs[0]['candidates'][1]"),
        (dict(_record(), ops={"forward": 1, "backward": 1}), "'ops'['step']"),
        (dict(_record(), test={"loss": "low"}), "'test'['loss']"),
        (dict(record_lib.new_record("macro", "r", "macro"), winner=3), "'winner' index 3 out of range"),
        (dict(record_lib.new_record("macro", "r", "macro"), rows=[{"optimizer": "sgd"}]),
         "rows[0]['lr']"),
    ],
)
def test_read_record_rejects_invalid(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(record_lib.RunRecordError) as info:
        record_lib.read_record(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_read_record_unreadable_file(tmp_path):
    with pytest.raises(record_lib.RunRecordError, match="cannot read"):
        record_lib.read_record(tmp_path / "missing.json")


def test_load_records_walks_tree_and_ignores_other_files(saved_runs):
    (saved_runs / "notes.txt").write_text("not a record")
    (saved_runs / ".hidden").mkdir()
    (saved_runs / ".hidden" / "x.json").write_text("{}")
    records, warnings = record_lib.load_records(saved_runs)
    assert sorted((r["recipe"], r["method"]) for r in records) == [
        ("digits_small_cnn", "baseline"),
        ("digits_small_cnn", "macro"),
        ("digits_small_cnn", "search1"),
        ("digits_small_cnn", "search2"),
        ("digits_small_cnn", "voting"),
        ("svhn_small_cnn", "search3"),
    ]
    assert len(warnings) == 2
    with pytest.raises(FileNotFoundError):
        record_lib.load_records(saved_runs / "nope")


# --------------------------------------------------------------------------- CLI


def test_cli_report_prints_markdown_and_paths(saved_runs, tmp_path, capsys):
    out = tmp_path / "cli_out"
    assert cli.main(["report", str(saved_runs), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert DIGITS_TABLE[3] in captured.out
    assert f"wrote {os.path.join(out, 'report.md')}" in captured.out
    assert f"wrote {os.path.join(out, 'digits_small_cnn_lr.png')}" in captured.out
    assert "warning: skipped" in captured.err and "corrupt.json" in captured.err


def test_cli_report_missing_directory(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_keras_tuner_project_directories_are_not_read(tmp_path):
    src = os.path.join(os.path.dirname(__file__), "fixtures", "runs", "digits_small_cnn", "search1.json")
    shutil.copy(src, tmp_path / "search1.json")
    project = tmp_path / "macro" / "tuner" / "search"
    (project / "trial_0000").mkdir(parents=True)
    (project / "oracle.json").write_text("{}")
    (project / "trial_0000" / "trial.json").write_text("{}")
    records, warnings = record_lib.load_records(tmp_path)
    assert len(records) == 1 and warnings == []
