"""The schedules benchmark's pure parts: convergence count, plan, record names, shape."""

import os

import pytest

from benchmarks import schedules as bench


def test_convergence_epoch_counts_as_the_document_does():
    f = bench.convergence_epoch
    # Changes 0.2, 0.1, 0.05, 0.002, 0.002, 0.002, 0.002: the first four-change sum
    # below 0.009 starts at change 3 (0-based): three epochs before the settled stretch.
    curve = [0.3, 0.5, 0.6, 0.65, 0.652, 0.654, 0.656, 0.658]
    assert f(curve) == 3
    # A sum of exactly the threshold is not below it.
    assert f([0.0, 0.25, 0.5, 0.5, 0.5], threshold=0.5) is None
    assert f([0.0, 0.004, 0.008, 0.008, 0.008]) == 0
    assert f([0.1, 0.9, 0.1, 0.9, 0.1, 0.9]) is None       # oscillating: never
    assert f([0.5, 0.5, 0.5, 0.5]) is None                  # too short for a window
    assert f([0.5] * 5) == 0
    assert f(curve, threshold=0.2, window=2) == 1           # 0.1 + 0.05 < 0.2


def test_plan_and_record_names():
    runs = bench.plan(0.01)
    assert len(runs) == 2 + 12 + 4
    assert runs[-2] == ("clr_suggested", "clr", bench.SUGGESTED)
    assert bench.resolve(bench.SUGGESTED, None) is None
    runs = [r for r in runs if r[2] is not bench.SUGGESTED]
    names = [os.path.basename(bench.record_path("OUT", "r", m, k)) for _, m, k in runs]
    assert names[:3] == ["baseline_sgd_lr0.001_val0.2.json", "baseline_adam_lr0.001_val0.2.json",
                         "decay_seq1_epoch.json"]
    assert names[-3:] == ["baseline_sgd_lr0.01_val0.2.json", "clr_triangular_val0.2.json",
                          "race_val0.2.json"]
    assert len(set(names)) == len(names)
    assert set(k for k, _, _ in runs) >= set(k for k in bench.DOCUMENT["MNIST"] if k != "budget")


def _row(acc, conv, epochs=10):
    return {"failed": acc < bench.FAILED_BELOW, "test_accuracy": acc, "val_accuracy": acc, "convergence": conv, "epochs": epochs,
            "lr_first": 0.01, "lr_last": 0.01, "wall_time_s": 1.0, "status": "complete",
            "clr_bounds": None}


def test_aggregate_counts_no_convergence_as_the_budget():
    row = bench.aggregate([_row(0.5, None), _row(0.7, 4)])
    assert row["test_accuracy"] == pytest.approx(0.6)
    assert row["test_accuracy_sd"] == pytest.approx(0.1414213562, rel=1e-8)
    assert row["convergence"] == 7.0 and row["convergences"] == [None, 4]
    assert bench._conv(row) == "none / 4 (mean 7)"
    # A run at chance level "converges" at once on its flat curve: counted as failed.
    row = bench.aggregate([_row(0.1, 1), _row(0.7, 4)])
    assert row["convergences"] == ["failed", 4] and row["convergence"] == 7.0
    summary = bench.summarize({"epochs": [{"logs": {"val_accuracy": 0.1}, "lr": 0.1}] * 6,
                               "test": {"loss": None, "accuracy": 0.1}, "config": {},
                               "method": "clr", "status": "complete"})
    assert summary["failed"] and summary["convergence"] == 0


def test_shape_names_ties_and_the_document():
    rows = [(("epoch", s), bench.aggregate([_row(0.9 if s in ("seq2", "seq3") else 0.8, i)]))
            for i, s in enumerate(bench.SEQUENCES, start=3)]
    text = bench.shape(rows, bench.DOCUMENT["CIFAR-10"])
    assert "- By Epoch: best accuracy seq2, seq3; fastest seq1 (document: seq3; seq1)" in text
    # A strategy whose rows are one run (nothing fired) and never converged says so.
    rows = [((st, s), bench.aggregate([_row(0.4, None)])) for st in bench.STRATEGIES
            for s in bench.SEQUENCES]
    text = bench.shape(rows, bench.DOCUMENT["CIFAR-10"])
    assert "- By Cutoff: best accuracy all 4 tied; fastest none converged (document: seq1; seq1)" in text
    assert "- Overall: best accuracy all 12 tied; fastest none converged (document: " in text
