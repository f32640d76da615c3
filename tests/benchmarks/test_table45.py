"""The Table 4.5 side-by-side: differences, ratios and the momentum-form filter."""

from benchmarks import table45


def _run(method, accuracy, ops, form="torch", alpha=None, epochs=10):
    return {"kind": "baseline" if method == "baseline" else "mcv", "method": method,
            "status": "complete", "config": {"optimizer": "sgd", "momentum_form": form,
                                             "alpha": alpha, "learning_rate": 0.01},
            "test": {"accuracy": accuracy, "loss": 1.0},
            "epochs": [{}] * epochs, "ops": ops}


def _grid(rows, ops):
    return {"kind": "macro", "rows": rows, "ops": ops, "config": {"optimizers": ["sgd"]}}


def _row(lr, val_loss, accuracy, optimizer="sgd"):
    return {"optimizer": optimizer, "lr": lr, "decay": None, "status": "ok",
            "best_val_loss": val_loss, "test_accuracy": accuracy, "retrain_epochs": 8}


def test_differences_and_cost_ratios():
    grid = _grid([_row(0.1, 2.0, 0.10), _row(0.01, 1.5, 0.46), _row(0.001, 1.4, 0.45, "adam")],
                 {"forward": 8000, "backward": 2000, "step": 4000})
    records = [_run("search1", 0.40, {"forward": 900, "backward": 100, "step": 800}),
               _run("search1", 0.10, {"forward": 1, "backward": 1, "step": 1}, form="keras")]
    table = table45.side_by_side(records, grid, grid)
    method1 = next(line for line in table.splitlines() if line.startswith("| Method 1 |"))
    # Thesis: 68.48 - 76.6; cost (285K, 228K) / (656K, 378K). Ours: the SGD winner by
    # validation loss (0.46, not Adam's row), and (1000 / 10000, 800 / 4000).
    assert method1 == ("| Method 1 | -8.12 (68.48) | 53.2 | 0.43, 0.60 | "
                       "-6.00 (40.00) | 10 | 0.10, 0.20 |")
    assert "| Method 3 | -4.64 (71.96) | 65.8 | 0.51, 0.71 | not run | – | – |" in table
    assert "| MCV-discard | +0.59 (77.19) | 44 | – |" in table
    assert "0 (46.00) | 8 | 1, 1 |" in table


def test_a_grid_without_sgd_is_refused():
    import pytest

    with pytest.raises(SystemExit, match="no finished SGD row"):
        table45.side_by_side([], _grid([_row(0.001, 1.4, 0.45, "adam")], None), _grid([], None))
