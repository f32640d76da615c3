"""Smoke tests of the step benchmark: it runs, returns the expected rows, and the CLI parses.

Performance is measured, not asserted: no test here checks a timing.
"""

import math

import pytest

from benchmarks import step_bench as bench
from keras_mcv import cli


def test_floor_formulas():
    f, a = 1 / 3, 0.0  # backward = 2 forwards, free apply: the ratio (K+4)/3
    assert bench.Config("search1", k=7).floor(f, a) == pytest.approx(11 / 3)
    assert bench.Config("search1", k=7, trial_every=4).floor(f, a) == pytest.approx(1 + 8 / 12)
    assert bench.Config("voting", k=4).floor(0.25, 0.1) == pytest.approx(1 + 5 * 0.25 + 4 * 0.1)
    assert bench.Config("search2", k=4, alpha=0.5).floor(0.25, 0.1) == pytest.approx(
        1 + 9 * 0.25 + 4 * 0.1
    )
    assert bench.Config("search2", k=4, alpha=0.0).floor(0.25, 0.1) == pytest.approx(
        1 + 5 * 0.25 + 4 * 0.1
    )
    assert bench.Config("discard", trial_every=2).floor(0.25, 0.1) == pytest.approx(1 + 0.25)
    # A quarter of the validation half: every trial forward costs a quarter.
    assert bench.Config("search1", k=7, trial_fraction=0.25).floor(0.25, 0.1) == pytest.approx(
        1 + 8 * 0.25 * 0.25 + 7 * 0.1
    )
    # Tuned: two plain steps per batch, update trials (no optimizer step per candidate).
    assert bench.Config("tuned", k=7, trial_every=4).floor(0.25, 0.1) == pytest.approx(
        (8 + 8 * 0.25) / 4
    )
    # Race: one plain step (on m) per racing branch.
    assert bench.Config("race", k=4).floor(0.25, 0.1) == 4.0
    assert bench.Config("race", k=4).batch_multiple == 1
    assert bench.Config("search1", k=4).batch_multiple == 2


def test_default_configs_cover_every_method_and_lever():
    labels = [c.label for c in bench.default_configs()]
    for k in (4, 7):
        for n in (1, 2, 4, 8):
            assert f"search1 K={k} N={n}" in labels
    assert labels[:3] == ["plain step (m)", "forward (m)", "apply"]
    assert "search1 K=7 N=1 [xla]" in labels and "plain step (m) [xla]" in labels
    assert "search1 K=7 N=1 [trial_batch_size=m*0.25]" in labels
    assert "search1 K=7 N=4 [trial_batch_size=m*0.25]" in labels
    assert "tuned K=7 N=4" in labels
    assert "race K=4" in labels
    assert len(labels) == len(set(labels))


def test_step_bench_tiny_returns_finite_ratios():
    rows = bench.step_bench(
        archs=("tiny",), m=8, repeats=2, ks=(2,), trial_every=(1, 2),
        levers=("subsample",), min_steps=2,
    )
    labels = [r["config"] for r in rows]
    assert labels == [
        "plain step (m)", "forward (m)", "apply",
        "search1 K=2 N=1", "search1 K=2 N=2",
        "search2 a=0.5 K=2 N=1", "voting K=2 N=1", "discard N=1", "tuned K=2 N=4", "race K=2",
        "search1 K=2 N=1 [trial_batch_size=m*0.25]", "search1 K=2 N=2 [trial_batch_size=m*0.25]",
    ]
    for r in rows:
        assert r["arch"] == "tiny"
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        if r["kind"] == "plain":
            assert r["ratio"] == 1.0
        if r["kind"] not in ("plain", "forward", "apply"):
            assert math.isfinite(r["floor"]) and r["floor"] > 1
            assert r["vs_floor"] == pytest.approx(r["ratio"] / r["floor"])
            assert math.isfinite(r["cpu_floor"]) and r["cpu_floor"] > 1
            assert r["cpu_vs_floor"] == pytest.approx(r["cpu_ratio"] / r["cpu_floor"])
            # Each graph is traced once, at warm-up.
            assert r["traces_end"] == r["traces_warm"]
            assert r["traces_warm"] == (1 if r["trial_every"] == 1 else 2)
        assert r["rss_kb_per_step"] is not None
        assert r["best_ratio"] > 0 and r["cpu_ratio"] > 0
    table = bench.format_table(rows)
    assert table.count("\n") == len(rows) + 1
    assert "search1 K=2 N=2 [trial_batch_size=m*0.25]" in table


def test_unknown_lever_and_arch_are_refused():
    with pytest.raises(ValueError, match="Unknown levers"):
        bench.step_bench(archs=("tiny",), levers=("warp",))
    with pytest.raises(ValueError, match="Unknown architecture"):
        bench.step_bench(archs=("nope",), levers=())


def test_parses_bench_step():
    args = bench.build_parser().parse_args(
        ["--arch", "tiny", "--m", "8", "--repeats", "2",
         "--k", "2", "--trial-every", "1,2", "--levers", "none", "--steps", "2"]
    )
    assert (args.arch, args.m, args.repeats, args.k, args.trial_every) == ("tiny", 8, 2, "2", "1,2")
    defaults = bench.build_parser().parse_args([])
    assert (defaults.m, defaults.repeats, defaults.arch) == (128, 5, "cifar_small_cnn,bn_small_cnn")


def test_cli_bench_step_runs(capsys):
    code = cli.main(
        ["bench", "step", "--arch", "tiny", "--m", "8", "--repeats", "2", "--k", "2",
         "--trial-every", "1", "--levers", "none", "--no-extras", "--steps", "1"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| tiny | search1 K=2 N=1 |" in out


def test_cli_bench_rejects_bad_lists(capsys):
    assert cli.main(["bench", "step", "--arch", "tiny", "--k", "0"]) == 2
    assert "--k" in capsys.readouterr().err


def test_cli_bench_delegates_to_the_benchmark(monkeypatch):
    seen = {}
    monkeypatch.setattr(bench, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    cli.main(["bench", "step", "--m", "8"])
    assert seen["argv"] == ["--m", "8"]
