"""Thesis Table 4.5 (small CNN on CIFAR-10) side by side with a directory of run records.

For every thesis method the table gives, in the thesis and here: the difference in
test accuracy to the baseline (the macro-CV grid's SGD winner retrained, the thesis's
"Baseline SGD" row), the epochs trained, and the theoretical cost as a fraction of the
grid search's (section 4.4: cost = avg_epochs * steps_per_epoch * [(#forward +
#backward), #step], Table 4.1's counts per step). The thesis's baseline row carries the
cost of its whole grid (5 splits, patience 20, up to 100 epochs), so its method/baseline
ratios are method/grid ratios, and ours are computed the same way against a grid record.

Only records in the thesis's momentum form (PyTorch's) are matched; Keras-form records
(`_kerasmom`) are left out. Run (repository root):

    .venv/bin/python -m benchmarks.table45 --runs saved_runs/cifar10_small_cnn \
        --baseline-grid saved_runs/cifar10_small_cnn/macro/macro_cv.json \
        --cost-grid saved_runs/cifar10_small_cnn/macro_kerasmom/macro_cv.json

Reference: Bakhshi, *Micro Cross-Validation for Deep Neural Network Training*, Table 4.5
(small CNN rows) and Table 4.1.
"""

from __future__ import annotations

import argparse
import sys

# Thesis Table 4.5, small CNN: label -> (epochs, test accuracy %, theoretical cost
# (forward + backward, step) in thousands, None where the thesis gives none).
THESIS_SMALL_CNN = {
    "Baseline SGD": (6, 76.6, (656, 378)),
    "MCV-discard": (44, 77.19, None),
    "MCV-lr-voting": (100, 66.74, (273, 195)),
    "Method 1": (53.2, 68.48, (285, 228)),
    "Method 2, α = 0.1": (35.6, 73.59, (368, 173)),
    "Method 2, α = 0.3": (5.2, 38.37, (167, 78)),
    "Method 2, α = 0.5": (4.4, 45.68, (162, 72)),
    "Method 3": (65.8, 71.96, (334, 268)),
}


def _cost(ops):
    return None if not ops else (ops["forward"] + ops["backward"], ops["step"])


def _ratio(cost, grid_cost):
    if cost is None or grid_cost is None:
        return "–"
    return f"{cost[0] / grid_cost[0]:.2f}, {cost[1] / grid_cost[1]:.2f}"


def _sgd_winner(grid):
    rows = [r for r in grid.get("rows") or () if r.get("optimizer") == "sgd"
            and r.get("status", "ok") == "ok" and r.get("best_val_loss") is not None]
    if not rows:
        raise SystemExit("the baseline grid has no finished SGD row; run `keras-mcv tune` first")
    return min(rows, key=lambda r: r["best_val_loss"])


def side_by_side(records, baseline_grid, cost_grid) -> str:
    """The Markdown side-by-side table.

    Args:
        records: run records (`keras_mcv.records.load_records`); thesis-form ones are used.
        baseline_grid: a macro-CV record whose SGD winner (lowest validation loss) is the
            baseline of the accuracy differences.
        cost_grid: a macro-CV record whose whole-search cost is the denominator of the
            cost ratios.
    """
    from keras_mcv import report

    winner = _sgd_winner(baseline_grid)
    base_acc = 100.0 * winner["test_accuracy"]
    grid_cost = _cost(cost_grid.get("ops"))
    thesis_base = THESIS_SMALL_CNN["Baseline SGD"]
    ours = {}
    for record in records:
        if record.get("kind") == "macro" or report.keras_momentum(record):
            continue
        if record.get("status") != "complete":
            continue
        ours[report.method_label(record)] = record
    lines = [
        ("| Method | Thesis: Δ acc. | Thesis: epochs | Thesis: cost / grid's | "
        "Ours: Δ acc. | Ours: epochs | Ours: cost / grid's |"),
        "|---|---|---|---|---|---|---|",
        (f"| Baseline SGD (grid's SGD winner) | 0 ({thesis_base[1]:.2f}) | {thesis_base[0]} | "
        f"1, 1 | 0 ({base_acc:.2f}) | {winner.get('retrain_epochs', winner.get('mean_epochs'))} "
        "| 1, 1 |"),
    ]
    for label, (epochs, acc, cost) in THESIS_SMALL_CNN.items():
        if label == "Baseline SGD":
            continue
        thesis_cost = None if cost is None else (cost[0] * 1e3, cost[1] * 1e3)
        thesis_ratio = _ratio(thesis_cost, (thesis_base[2][0] * 1e3, thesis_base[2][1] * 1e3))
        record = ours.get(label)
        if record is None:
            ours_cells = "not run | – | –"
        else:
            acc_ours = 100.0 * record["test"]["accuracy"]
            ours_cells = (f"{acc_ours - base_acc:+.2f} ({acc_ours:.2f}) | "
                          f"{len(record.get('epochs') or [])} | "
                          f"{_ratio(_cost(record.get('ops')), grid_cost)}")
        lines.append(f"| {label} | {acc - thesis_base[1]:+.2f} ({acc:.2f}) | {epochs} | "
                     f"{thesis_ratio} | {ours_cells} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.table45", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="directory of run records")
    p.add_argument("--baseline-grid", required=True,
                   help="macro-CV record whose SGD winner is the accuracy baseline")
    p.add_argument("--cost-grid", help="macro-CV record whose cost is the ratios' denominator "
                   "(defaults to --baseline-grid)")
    args = p.parse_args(argv)

    from keras_mcv import records as records_mod

    found, warnings = records_mod.load_records(args.runs)
    for warning in warnings:
        print(warning, file=sys.stderr)
    baseline_grid = records_mod.read_record(args.baseline_grid)
    cost_grid = records_mod.read_record(args.cost_grid or args.baseline_grid)
    print(side_by_side(found, baseline_grid, cost_grid))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
