"""The beyond-the-grid report: the goal's verdict, the levers of each variant, the tables."""

from benchmarks import beyond_grid_report as report
from benchmarks.beyond_grid import HALF_DECADES, VARIANTS


def test_goal_verdict_met_and_each_miss():
    assert report.goal_verdict(0.4, -0.2, 2.0) == "met"
    assert "mean" in report.goal_verdict(0.2, 0.0, 1.0)
    assert "a pair" in report.goal_verdict(0.5, -0.6, 1.0)
    assert "wall" in report.goal_verdict(0.5, 0.0, 2.5)
    assert "wall" in report.goal_verdict(0.5, 0.0, None)


def test_levers_of_the_variants():
    assert report.levers("race") == ("constant", "–", "–", "no")
    assert report.levers("race_cos") == ("cosine", "–", "–", "no")
    assert report.levers("c_keep_cos") == ("constant", "keep / cosine", "final", "no")
    assert report.levers("h_cos3")[2:] == ("half", "yes")
    assert report.levers("rc_keep3")[0] == "cosine"
    for name in VARIANTS:
        assert len(report.levers(name)) == 4


def _run(spec, final, test, seconds):
    curve = [{"epoch": e, "t": seconds * e / 3, "val_acc": final * (0.9 + 0.05 * (e - 1)),
              "val_loss": 0.0, "loss": 0.0, "lr": 0.1} for e in (1, 2, 3)]
    return {"spec": spec, "curve": curve, "train_s": seconds, "test_acc": test}


def test_write_tables_from_synthetic_runs(tmp_path):
    runs = {}
    for seed in (0, 1):
        for kind in ("const", "cos"):
            for i, lr in enumerate(HALF_DECADES):
                acc = 0.9 - 0.01 * i + (0.005 if kind == "cos" else 0.0)
                runs[f"p|sgd|{seed}|{kind}:{lr:g}"] = _run(f"{kind}:{lr:g}", acc, acc, 10.0)
        runs[f"p|sgd|{seed}|race"] = _run("race", 0.91, 0.91, 13.0)
        runs[f"p|sgd|{seed}|c_keep_cos"] = _run("c_keep_cos", 0.89, 0.89, 30.0)
    path = tmp_path / "runs.md"
    report.write({"runs": runs, "problems": {}, "commands": []}, path)
    text = path.read_text()
    assert "## Time to target" in text and "## Ablation of the levers" in text
    # anchor: cos:0.3 at 90.5; race +0.5 in 1.3 single runs; c_keep_cos -1.5 in 3.0.
    assert "| race | +0.50 / 1.30 | +0.50 ± 0.00 | +0.50 | 1.30 | met |" in text
    assert "a pair -1.50 < -0.5" in text and "wall 3.00 > 2.4" in text


def test_write_only_the_methods_asked(tmp_path):
    runs = {}
    for kind in ("const", "cos"):
        for lr in HALF_DECADES:
            runs[f"p|sgd|0|{kind}:{lr:g}"] = _run(f"{kind}:{lr:g}", 0.9, 0.9, 10.0)
    runs["p|sgd|0|race"] = _run("race", 0.91, 0.91, 13.0)
    runs["p|sgd|0|race_cos"] = _run("race_cos", 0.91, 0.91, 13.0)
    path = tmp_path / "only.md"
    report.write({"runs": runs, "problems": {}, "commands": []}, path, only=["race"])
    text = path.read_text()
    assert "| race |" in text and "race_cos" not in text
