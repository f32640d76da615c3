"""Decay sequences x update strategies against fixed-LR SGD and Adam, CLR and the race.

The experiment of Yang & Huang, *Learning Rate Investigation* (2019), section 4,
on one recipe: its 12 combinations (seq1-seq4 x by epoch, by cutoff, by
oscillate) with SGD at r0 = the recipe's LR (0.01), its two benchmarks (SGD and
Adam at a fixed 1e-3), and beside them SGD at a fixed r0, the cyclical LR with
bounds from the LR range test (and with the range test's suggested LR as the
maximum, a quarter of it as the base), and the learning-rate race. Every run holds out
the same stratified 20% of the training set as validation data (the decay
strategies watch its loss; epochs to convergence are read from its accuracy).
Writes the run records under OUT/seed<N>/RECIPE and a table in the shape of the
document's Tables 1-2, with its numbers beside ours, to TABLE.

Run it as `keras-mcv bench schedules` or `python -m benchmarks.schedules`;
records that are complete already are kept, not rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

SEQUENCES = ("seq1", "seq2", "seq3", "seq4")
STRATEGIES = ("epoch", "cutoff", "oscillate")
STRATEGY_NAMES = {"epoch": "By Epoch", "cutoff": "By Cutoff", "oscillate": "By Oscillate"}
BENCHMARK_LR = 1e-3
VALIDATION_SPLIT = 0.2
CONVERGENCE_THRESHOLD = 0.009
CONVERGENCE_WINDOW = 4
FAILED_BELOW = 0.2  # test accuracy of a failed run: twice chance on the 10-class recipes

# The document's Tables 1 (MNIST) and 2 (CIFAR-10): (accuracy, epochs to
# convergence) per row; its budgets were 50 and 25 epochs.
DOCUMENT = {
    "MNIST": {
        "budget": 50,
        "sgd": (0.98264, 34), "adam": (0.98574, 30),
        ("epoch", "seq1"): (0.97608, 48), ("epoch", "seq2"): (0.98230, 38),
        ("epoch", "seq3"): (0.98263, 19), ("epoch", "seq4"): (0.98527, 40),
        ("cutoff", "seq1"): (0.98290, 32), ("cutoff", "seq2"): (0.98405, 28),
        ("cutoff", "seq3"): (0.98614, 29), ("cutoff", "seq4"): (0.98656, 22),
        ("oscillate", "seq1"): (0.98372, 25), ("oscillate", "seq2"): (0.98544, 27),
        ("oscillate", "seq3"): (0.98514, 24), ("oscillate", "seq4"): (0.98586, 30),
    },
    "CIFAR-10": {
        "budget": 25,
        "sgd": (0.7487, 25), "adam": (0.7309, 17),
        ("epoch", "seq1"): (0.763, 8), ("epoch", "seq2"): (0.7696, 12),
        ("epoch", "seq3"): (0.7803, 11), ("epoch", "seq4"): (0.7679, 14),
        ("cutoff", "seq1"): (0.7714, 15), ("cutoff", "seq2"): (0.6438, 25),
        ("cutoff", "seq3"): (0.6004, 25), ("cutoff", "seq4"): (0.5848, 25),
        ("oscillate", "seq1"): (0.7677, 8), ("oscillate", "seq2"): (0.773, 11),
        ("oscillate", "seq3"): (0.7692, 15), ("oscillate", "seq4"): (0.7673, 12),
    },
}
DOCUMENT_TABLE = {"digits_small_cnn": "MNIST", "cifar10_small_cnn": "CIFAR-10"}


def convergence_epoch(accuracies, threshold=CONVERGENCE_THRESHOLD, window=CONVERGENCE_WINDOW):
    """Epochs to convergence of a validation-accuracy curve, as the document counts them.

    ```
    a_1 .. a_E            validation accuracy after each epoch
    s_t = sum_{j=t}^{t+window-1} |a_{j+1} - a_j|      (t = 1 .. E - window)
    convergence = (first t with s_t < threshold) - 1  # epochs before the settled stretch
                  None when no t qualifies            # not converged within the budget
    ```
    The settled stretch is `window + 1` consecutive epochs whose accuracy moves
    by less than `threshold` in total; the count is the number of epochs
    trained before it starts (the authors' code reports that 0-based index).

    Args:
        accuracies: the validation accuracy of every epoch, in order.
        threshold: the total movement allowed. Defaults to 0.009.
        window: epoch-to-epoch changes summed. Defaults to 4.

    References: Yang & Huang, Learning Rate Investigation, 2019, section 4
    ("the number of epochs at convergence point"), computed as in the project
    code the document links.
    """
    a = [float(v) for v in accuracies]
    changes = [abs(a[i + 1] - a[i]) for i in range(len(a) - 1)]
    for t in range(len(changes) - window + 1):
        if sum(changes[t:t + window]) < threshold:
            return t
    return None


def plan(recipe_lr):
    """The runs: `(key, method, run_method keyword arguments)` in table order."""
    runs = [
        ("sgd", "baseline", dict(optimizer="sgd", learning_rate=BENCHMARK_LR)),
        ("adam", "baseline", dict(optimizer="adam", learning_rate=BENCHMARK_LR)),
    ]
    runs += [((strategy, sequence), "decay", dict(sequence=sequence, strategy=strategy))
             for strategy in STRATEGIES for sequence in SEQUENCES]
    runs += [
        ("sgd_r0", "baseline", dict(optimizer="sgd", learning_rate=recipe_lr)),
        ("clr", "clr", {}),
        ("clr_suggested", "clr", SUGGESTED),
        ("race", "race", {}),
    ]
    return runs


SUGGESTED = {"base_lr": "suggestion / 4", "max_lr": "suggestion"}
"""The second CLR run's bounds, read from the first CLR run's range test: the
suggestion (a decade below the smoothed loss's minimum) as the maximum and a
quarter of it as the base (Smith's rule of thumb: base 1/3 to 1/4 of max)."""


def resolve(kwargs, clr_path):
    """`kwargs` with `SUGGESTED`'s bounds filled in from the CLR record at `clr_path`.

    None when that record is not there (yet).
    """
    if kwargs is not SUGGESTED:
        return kwargs
    from keras_mcv import records

    if clr_path is None or not os.path.exists(clr_path):
        return None
    suggestion = records.read_record(clr_path)["config"]["schedule"]["range_test"]["suggestion"]
    return {"base_lr": suggestion / 4, "max_lr": suggestion}


def record_path(out_dir, recipe, method, kwargs):
    """Where `run_method` writes the record of one planned run."""
    from keras_mcv import experiment

    kwargs = dict(kwargs)
    optimizer, lr = kwargs.pop("optimizer", None), kwargs.pop("learning_rate", None)
    entry, options = experiment.check_run_options(
        method, optimizer, learning_rate=lr, validation_split=VALIDATION_SPLIT, **kwargs)
    name = entry.run_name(options, optimizer=optimizer, learning_rate=lr,
                          validation_split=VALIDATION_SPLIT)
    return os.path.join(out_dir, recipe, name + ".json")


def _label(key):
    if key == "sgd":
        return f"Benchmark SGD {BENCHMARK_LR:g}"
    if key == "adam":
        return f"Benchmark Adam {BENCHMARK_LR:g}"
    if key == "sgd_r0":
        return "SGD fixed r0"
    if key == "clr":
        return "CLR triangular (range-test bounds)"
    if key == "clr_suggested":
        return "CLR triangular (suggestion/4 – suggestion)"
    if key == "race":
        return "LR race"
    return f"{STRATEGY_NAMES[key[0]]} {key[1]}"


def summarize(record):
    """One table row of numbers from a run record."""
    epochs = record.get("epochs") or []
    val = [e["logs"].get("val_accuracy") for e in epochs]
    lrs = [e.get("lr") for e in epochs]
    if lrs and all(v is None for v in lrs):  # a fixed-LR baseline logs none
        lrs = [(record.get("config") or {}).get("learning_rate")] * len(lrs)
    test = record.get("test") or {}
    conv = convergence_epoch(val) if val and None not in val else None
    # A run that ends at chance level or with a non-finite loss has a flat
    # curve that "converges" at once: it failed, and counts as not converged.
    failed = test.get("loss") is None or (test.get("accuracy") or 0.0) < FAILED_BELOW
    return {
        "failed": failed,
        "test_accuracy": test.get("accuracy"),
        "val_accuracy": val[-1] if val else None,
        "convergence": conv,
        "epochs": len(epochs),
        "lr_first": lrs[0] if lrs else None,
        "lr_last": lrs[-1] if lrs else None,
        "wall_time_s": record.get("wall_time_s"),
        "status": record.get("status"),
        "clr_bounds": ((record["config"].get("schedule") or {}).get("base_lr"),
                       (record["config"].get("schedule") or {}).get("max_lr"))
        if record.get("method") == "clr" else None,
    }


def aggregate(rows):
    """Per-seed rows of one method -> means, per-seed convergence, and the first seed's LRs."""
    def mean(key):
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else None

    first = rows[0]
    accuracies = [r["test_accuracy"] for r in rows if r["test_accuracy"] is not None]
    return {
        "test_accuracy": mean("test_accuracy"),
        "test_accuracy_sd": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else None,
        "val_accuracy": mean("val_accuracy"),
        # Not converged counts as the budget, as in the document's tables.
        "convergence": float(np.mean([r["epochs"] if r["convergence"] is None or r["failed"]
                                      else r["convergence"] for r in rows])),
        "convergences": ["failed" if r["failed"] else r["convergence"] for r in rows],
        "epochs": first["epochs"],
        "lr_first": first["lr_first"], "lr_last": first["lr_last"],
        "clr_bounds": first.get("clr_bounds"),
        "wall_time_s": mean("wall_time_s"),
        "status": "complete" if all(r["status"] == "complete" for r in rows)
        else ", ".join(sorted({r["status"] for r in rows} - {"complete"})),
        "seeds": len(rows),
    }


def _pct(value):
    return "–" if value is None else f"{100 * value:.2f}"


def _acc(row):
    text = _pct(row["test_accuracy"])
    if row.get("test_accuracy_sd") is not None:
        text += f" ± {100 * row['test_accuracy_sd']:.2f}"
    return text


def _conv(row):
    values = ["none" if c is None else str(c) for c in row["convergences"]]
    if len(values) == 1 and row["convergences"][0] == "failed":
        return "failed"
    text = " / ".join(values)
    if len(values) > 1:
        text += f" (mean {row['convergence']:.3g})"
    return text


def _lr(row):
    if row.get("clr_bounds"):
        text = "cycles {:.3g}–{:.3g}".format(*row["clr_bounds"])
        return text + (" (first seed)" if row["seeds"] > 1 else "")
    first, last = row["lr_first"], row["lr_last"]
    if first is None:
        return "–"
    return f"{first:.3g}" if last is None or abs(last - first) <= 1e-6 * first else (
        f"{first:.3g} → {last:.3g}")


def grid_rows(path):
    """The best constant LR per optimizer of a macro-CV record (lowest validation loss)."""
    with open(path) as f:
        record = json.load(f)
    best = {}
    for row in record.get("rows") or []:
        if row.get("decay") or row.get("diverged") or row.get("best_val_loss") is None:
            continue
        current = best.get(row["optimizer"])
        if current is None or row["best_val_loss"] < current["best_val_loss"]:
            best[row["optimizer"]] = row
    return record, best


def build_table(recipe, rows, document=None, grid=None, grid_path=None):
    """Markdown: our rows beside the document's, then the grid's best constant LRs."""
    head = ("| Method | Test acc. | Final val. acc. | Epochs to conv. | LR per epoch "
            "| Wall time |")
    sep = "|---|---|---|---|---|---|"
    if document:
        head += " Doc. acc. | Doc. conv. |"
        sep += "---|---|"
    lines = [head, sep]
    for key, row in rows:
        cells = [_label(key), _acc(row), _pct(row["val_accuracy"]),
                 _conv(row), _lr(row), f"{row['wall_time_s']:.0f}s"]
        if row["status"] != "complete":
            cells[0] += f" ({row['status']})"
        if document:
            doc = document.get(key)
            cells += ["–", "–"] if doc is None else [f"{100 * doc[0]:.2f}", str(doc[1])]
        lines.append("| " + " | ".join(cells) + " |")
    if grid:
        record, best = grid
        cfg = record.get("config") or {}
        lines += ["", f"Decade grid (`{grid_path}`, macro-CV: {cfg.get('repeats')} "
                  f"stratified 80/20 split(s), patience {cfg.get('patience')}, at most "
                  f"{cfg.get('max_epochs')} epochs, retrained on the whole training set), "
                  "best constant LR per optimizer by validation loss:", ""]
        for optimizer, row in sorted(best.items()):
            lines.append(f"- {optimizer.upper() if optimizer == 'sgd' else 'Adam'} lr={row['lr']:g}: "
                         f"test accuracy {_pct(row['test_accuracy'])}%, "
                         f"{row['mean_epochs']:.3g} epochs")
    return "\n".join(lines)


def _winners(keys, source, index, largest):
    """The keys with the best value (ties all kept); [] when none has a value."""
    scored = [(source[k][index], k) for k in keys
              if source.get(k) is not None and source[k][index] is not None]
    if not scored:
        return []
    target = (max if largest else min)(v for v, _ in scored)
    return [k for v, k in scored if v == target]


def shape(rows, document=None):
    """Which strategy and sequence win, by test accuracy and by convergence, ours and the document's."""
    # A row none of whose seeds converged has no convergence to rank (its mean counts the
    # budget), so it cannot be "fastest".
    ours = {k: (r["test_accuracy"],
                r["convergence"] if any(isinstance(c, int) for c in r["convergences"]) else None)
            for k, r in rows}

    def names(keys, short, candidates, source, index):
        if not keys:
            return "none converged"
        ranked = [k for k in candidates if source.get(k) is not None
                  and source[k][index] is not None]
        if len(keys) == len(ranked) > 1:
            return f"all {len(ranked)} tied"
        return ", ".join(k[1] if short else _label(k) for k in keys)

    def winners(keys, source, short):
        return (f"{names(_winners(keys, source, 0, True), short, keys, source, 0)}; "
                f"{'' if source is not ours else 'fastest '}"
                f"{names(_winners(keys, source, 1, False), short, keys, source, 1)}")

    lines = []
    for strategy in STRATEGIES:
        keys = [(strategy, s) for s in SEQUENCES]
        text = f"- {STRATEGY_NAMES[strategy]}: best accuracy {winners(keys, ours, True)}"
        if document:
            text += f" (document: {winners(keys, document, True)})"
        lines.append(text)
    keys = [(st, s) for st in STRATEGIES for s in SEQUENCES]
    text = f"- Overall: best accuracy {winners(keys, ours, False)}"
    if document:
        text += f" (document: {winners(keys, document, False)})"
    lines.append(text)
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(
        prog="keras-mcv bench schedules",
        description="Decay sequences x update strategies (SGD at r0 = the recipe's LR) "
        "against SGD and Adam at a fixed 1e-3, SGD at a fixed r0, CLR with range-test "
        "bounds and the LR race, all on the same data with the same 20%% held out; "
        "a table in the shape of Yang & Huang's Tables 1-2.",
    )
    p.add_argument("--recipe", default="digits_small_cnn", help="Defaults to digits_small_cnn.")
    p.add_argument("--subset", type=int, default=None, help="training examples, stratified.")
    p.add_argument("--epochs", type=int, default=None, help="epoch budget. Defaults to the recipe's.")
    p.add_argument("--data", default=None, help="data path. Defaults to the recipe's.")
    p.add_argument("--grid", default=None,
                   help="a macro-CV record (macro_cv.json) whose best constant LRs are listed.")
    p.add_argument("--out", default="saved_runs/schedules/runs",
                   help="records root. Defaults to saved_runs/schedules/runs.")
    p.add_argument("--table", default=None,
                   help="Markdown table to write. Defaults to OUT/../RECIPE.md.")
    p.add_argument("--table-only", action="store_true",
                   help="build the table from the records under OUT; run nothing.")
    p.add_argument("--seeds", default="0",
                   help="comma-separated seeds; records go to OUT/seed<N>/RECIPE and the table "
                   "shows means. Defaults to 0.")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import recipes
    from keras_mcv import experiment, records

    try:
        config = recipes.get_config(args.recipe)
    except ValueError as e:
        print(f"keras-mcv bench schedules: {e}", file=sys.stderr)
        return 2
    runs = plan(config.learning_rate)
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    roots = {seed: os.path.join(args.out, f"seed{seed}") for seed in seeds}
    paths = {seed: [] for seed in seeds}
    data = None
    for seed in seeds:
        clr_path = None
        for key, method, kwargs in runs:
            kwargs = resolve(kwargs, clr_path)
            path = None if kwargs is None else record_path(roots[seed], config.name, method, kwargs)
            clr_path = path if key == "clr" else clr_path
            paths[seed].append(path)
            if path is None:
                continue
            done = os.path.exists(path) and records.read_record(path)["status"] == "complete"
            if args.table_only or done:
                continue
            if data is None:
                data = config.load_data(args.data, args.subset)
            record = experiment.run_method(
                config, method, epochs=args.epochs, out_dir=roots[seed], seed=seed,
                verbose=0, data=data, validation_split=VALIDATION_SPLIT, **kwargs,
            )
            print(f"seed {seed} {_label(key)}: test accuracy "
                  f"{record['test']['accuracy']:.4f} ({record['wall_time_s']:.0f}s) -> "
                  f"{record['path']}", flush=True)
    rows = []
    for i, (key, _, _) in enumerate(runs):
        found = [summarize(records.read_record(paths[s][i])) for s in seeds
                 if paths[s][i] is not None and os.path.exists(paths[s][i])]
        if found:
            rows.append((key, aggregate(found)))
    doc_name = DOCUMENT_TABLE.get(config.name)
    document = DOCUMENT.get(doc_name)
    grid = grid_rows(args.grid) if args.grid else None
    text = "\n\n".join([
        f"## {config.name}" + (f" (the document's {doc_name})" if doc_name else "")
        + f"\n\nSeeds {', '.join(map(str, seeds))}; {rows[0][1]['epochs'] if rows else '?'} "
        f"epochs; {VALIDATION_SPLIT:.0%} of the training set held out (stratified).",
        build_table(config.name, rows, document, grid, args.grid),
        "Shape:\n\n" + shape(rows, document),
    ]) + "\n"
    table = args.table or os.path.join(os.path.dirname(os.path.normpath(args.out)),
                                       f"{config.name}.md")
    records.write_atomic(table, lambda f: f.write(text))
    print(text)
    print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
