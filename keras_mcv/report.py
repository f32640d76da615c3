"""Tables and plots from run records: the report of `keras-mcv report`.

One table per recipe in the style of the thesis's Table 4.5 (epochs, test
loss and accuracy, theoretical cost, wall time), the macro-CV grid's table
(Tables 4.2-4.4), and plots of the LR and validation loss per epoch and of
test accuracy against wall time.

References: thesis Tables 4.1-4.5.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from keras_mcv import methods
from keras_mcv.records import _is_number
from keras_mcv.records import _load
from keras_mcv.records import write_atomic

REPORT_COLUMNS = (
    "Method",
    "Epochs",
    "Test loss",
    "Test acc.",
    "Theoretical cost",
    "Wall time",
)
PLOT_FILES = {
    "lr": "{recipe}_lr.png",
    "val_loss": "{recipe}_val_loss.png",
    "accuracy_vs_time": "{recipe}_accuracy_vs_time.png",
}

_PLOT_TITLES = {
    "lr": "learning rate per epoch",
    "val_loss": "validation loss per epoch",
    "accuracy_vs_time": "test accuracy against wall time",
}
_DASH = "–"

# --------------------------------------------------------------------------- formatting


def _fmt_g(value) -> str:
    return f"{value:g}"


def method_label(record: dict) -> str:
    """The thesis's display name of a record's method, e.g. "Method 2, α = 0.5".

    SGD runs in Keras's momentum form (not the thesis's PyTorch form) say so:
    "Baseline SGD lr=0.01 (Keras momentum)".

    Args:
        record: a run record (for macro records, see `results_rows`).
    """
    method = record.get("method", "")
    config = record.get("config") or {}
    keras_form = keras_momentum(record)
    if record.get("kind") == "macro":
        return macro_label(record)
    if record.get("kind") == "baseline":
        optimizer = str(config.get("optimizer", "sgd"))
        label = f"Baseline {_optimizer_name(optimizer)}"
        if _is_number(config.get("learning_rate")) and optimizer != "schedule_free_adamw":
            label += f" lr={_fmt_g(config['learning_rate'])}"
        return label + (" (Keras momentum)" if keras_form else "") + _extras(config)
    if method in methods.REGISTRY:
        name = methods.get(method).label_for(config.get("method_options") or {})
    else:
        name = method
    if _takes_alpha(method) and _is_number(config.get("alpha")):
        name += f", α = {_fmt_g(config['alpha'])}"
    entry = methods.REGISTRY.get(method)
    if entry is not None and not entry.thesis and entry.takes_optimizer:
        # Beyond-the-thesis methods ran with either optimizer: say which.
        optimizer = _optimizer_name(str(config.get("optimizer", "sgd")))
        name += f" ({optimizer}, Keras momentum)" if keras_form else f" ({optimizer})"
    elif keras_form:
        name += " (Keras momentum)"
    if _is_number(config.get("trial_batch_size")):
        name += f", trial batch {int(config['trial_batch_size'])}"
    return name + _extras(config)


def _extras(config) -> str:
    """What `--persistency`, `--ema` and `--augment` add to a run, for its label."""
    text = ""
    if _is_number(config.get("persistency")):
        text += f", persistency K = {int(config['persistency'])}"
    if config.get("weight_ema"):
        text += " + EMA"
    if config.get("augment"):
        text += " + augmentation"
    return text


def keras_momentum(record: dict) -> bool:
    """Whether a record's SGD ran in Keras's momentum form (not PyTorch's, the thesis's).

    `config["momentum_form"]` says so; a record that has SGD and no such key
    predates the key, when every SGD run used `keras.optimizers.SGD`. For a
    macro-CV record, `config` is the grid's settings and counts when they list
    "sgd" among their optimizers.

    Args:
        record: a run record.
    """
    config = record.get("config") or {}
    if record.get("kind") == "macro":
        uses_sgd = "sgd" in (config.get("optimizers") or ())
    else:
        uses_sgd = str(config.get("optimizer", "sgd")) == "sgd"
    return uses_sgd and config.get("momentum_form", "keras") == "keras"


def macro_label(record: dict) -> str:
    """A macro-CV record's row name, e.g. "Macro-CV grid (winner: SGD lr=0.01, decay=0.001)".

    A grid of SGD rows only says "SGD only"; a Keras-form grid says "Keras momentum".

    Args:
        record: a record of kind "macro".
    """
    config = record.get("config") or {}
    label = "Macro-CV grid"
    if list(config.get("optimizers") or ()) == ["sgd"]:
        label += ", SGD only"
    if keras_momentum(record):
        label += ", Keras momentum"
    win = _winner_row(record)
    return label + (f" (winner: {_winner_text(win)})" if win else "")


def _takes_alpha(method: str) -> bool:
    return method in methods.REGISTRY and "alpha" in methods.get(method).options


def _optimizer_name(name: str) -> str:
    return {
        "sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "schedule_free_adamw": "ScheduleFreeAdamW",
        "adagrad": "AdaGrad",
    }.get(name.lower(), name)


def format_count(n) -> str:
    """An operation count to three significant digits, e.g. 656123 -> "~656K".

    Counts below 1000 are shown exactly, without "~".

    Args:
        n: the count; None gives "–".
    """
    if n is None:
        return _DASH
    n = float(n)
    if n < 1000:
        return f"{n:.0f}"
    for unit, scale in (("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        scaled = float(f"{n / scale:.3g}")
        if scaled < 1000 or unit == "T":
            return f"~{scaled:g}{unit}"
    raise AssertionError("unreachable")


def format_duration(seconds) -> str:
    """A wall time like "8.4s", "1m 05s" or "2h 02m".

    Args:
        seconds: the duration; None gives "–".
    """
    if seconds is None or not math.isfinite(seconds):
        return _DASH
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    total = int(round(seconds))
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _fmt_epochs(value) -> str:
    if value is None:
        return _DASH
    return _fmt_g(round(float(value), 1))


def _fmt_loss(value) -> str:
    return _DASH if value is None else f"{value:.2f}"


def _fmt_acc(value) -> str:
    return _DASH if value is None else f"{100.0 * value:.2f}"


def _fmt_cost(ops) -> str:
    if not ops:
        return _DASH
    return f"{format_count(ops['forward'] + ops['backward'])}, {format_count(ops['step'])}"


def _status_suffix(record) -> str:
    status = record.get("status")
    if status in ("running", "incomplete"):
        return " (incomplete)"
    if status == "failed":
        return " (failed)"
    return ""


def _winner_row(record):
    winner, rows = record.get("winner"), record.get("rows") or []
    if winner is None:
        return None
    if isinstance(winner, int):
        return rows[winner]
    for row in rows:  # A dict naming the winner: prefer the full row from the grid.
        if all(row.get(k) == winner.get(k) for k in ("optimizer", "lr", "decay") if k in winner):
            return row
    return winner


def _winner_text(row) -> str:
    text = f"{_optimizer_name(str(row.get('optimizer', '?')))} lr={_fmt_g(row.get('lr'))}"
    if row.get("decay"):
        text += f", decay={_fmt_g(row['decay'])}"
    return text


def _sort_key(record):
    method = record.get("method", "")
    if record.get("kind") == "macro":
        rank = -1
    elif record.get("kind") == "baseline":
        rank = 0
    else:
        rank = methods.order(method)
    alpha = (record.get("config") or {}).get("alpha")
    alpha = alpha if _is_number(alpha) and _takes_alpha(method) else 0.0
    # A Keras-form run follows its PyTorch-form (the thesis's) counterpart.
    return (rank, method, alpha, keras_momentum(record), record.get("started", ""))


def results_rows(records) -> list:
    """One Table 4.5 row (a dict keyed by `REPORT_COLUMNS`) per record, in table order.

    Rows come in the order macro-CV, baseline, MCV-discard, MCV-lr-voting, Method 1,
    Method 2 (by α), Method 3, others; ties by start time. A macro-CV record gives its
    winner's epochs and test results with the wall time of the whole search.

    Args:
        records: run records, usually of one recipe.
    """
    rows = []
    for record in sorted(records, key=_sort_key):
        suffix = _status_suffix(record)
        if record["kind"] == "macro":
            win = _winner_row(record) or {}
            rows.append(
                {
                    "Method": macro_label(record) + suffix,
                    "Epochs": _fmt_epochs(win.get("mean_epochs")),
                    "Test loss": _fmt_loss(win.get("test_loss")),
                    "Test acc.": _fmt_acc(win.get("test_accuracy")),
                    "Theoretical cost": _fmt_cost(record.get("ops")),
                    "Wall time": format_duration(record.get("wall_time_s")),
                }
            )
            continue
        test = record.get("test") or {}
        rows.append(
            {
                "Method": method_label(record) + suffix,
                "Epochs": _fmt_epochs(len(record.get("epochs") or [])),
                "Test loss": _fmt_loss(test.get("loss")),
                "Test acc.": _fmt_acc(test.get("accuracy")),
                "Theoretical cost": _fmt_cost(record.get("ops")),
                "Wall time": format_duration(record.get("wall_time_s")),
            }
        )
    return rows


def _markdown_table(columns, rows) -> str:
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def results_table(records) -> str:
    """A Markdown table in the form of thesis Table 4.5 for `records`.

    Columns: Method | Epochs | Test loss | Test acc. (%) | Theoretical cost as
    (forward+backward, step) operation counts | Wall time.

    Args:
        records: run records, usually of one recipe.
    """
    return _markdown_table(REPORT_COLUMNS, results_rows(records))


def macro_table(record: dict) -> str:
    """A Markdown table of a macro-CV record's grid (thesis Tables 4.2-4.4).

    The winner's row is in bold; diverged configurations are marked.

    Args:
        record: a record of kind "macro".
    """
    columns = ("Optimizer", "LR", "LR decay", "Epochs", "Test loss", "Test acc.", "Wall time")
    winner = _winner_row(record)
    rows = []
    for row in record.get("rows") or []:
        cells = {
            "Optimizer": _optimizer_name(str(row.get("optimizer"))),
            "LR": _fmt_g(row["lr"]),
            "LR decay": _fmt_g(row["decay"]) if row.get("decay") else _DASH,
            "Epochs": _fmt_epochs(row.get("mean_epochs")),
            "Test loss": _fmt_loss(row.get("test_loss")),
            "Test acc.": _fmt_acc(row.get("test_accuracy")),
            "Wall time": format_duration(row.get("wall_time_s")),
        }
        if row.get("diverged"):
            loss = cells["Test loss"]
            cells["Test loss"] = "diverged" if loss == _DASH else f"{loss} (diverged)"
        if row is winner:
            cells = {k: f"**{v}**" for k, v in cells.items()}
        rows.append(cells)
    return _markdown_table(columns, rows)


# --------------------------------------------------------------------------- plots


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "runs"


def _run_label(record, counts) -> str:
    label = method_label(record) + _status_suffix(record)
    counts[label] = counts.get(label, 0) + 1
    return label if counts[label] == 1 else f"{label} #{counts[label]}"


def _epoch_lr(entry):
    if entry.get("lr") is not None:
        return entry["lr"]
    logs = entry.get("logs") or {}
    return logs.get("lr", logs.get("learning_rate"))


def _epoch_val_loss(entry):
    logs = entry.get("logs") or {}
    if "mcv_val_loss" in logs:
        return logs["mcv_val_loss"], "mcv_val_loss"
    return logs.get("val_loss"), "val_loss"


def _new_axes(title, xlabel, ylabel):
    from matplotlib.figure import Figure  # Figure + savefig: Agg, no pyplot state.

    fig = Figure(figsize=(7.5, 4.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def _nan(value):
    return float("nan") if value is None else value


def _plot_recipe(recipe, records, out_dir) -> list:
    """Write the three plots for one recipe; return `(kind, path)` per plot written."""
    records = sorted(records, key=_sort_key)
    counts = {}
    labels = [_run_label(r, counts) for r in records]
    written = []
    stem = _safe_name(recipe)

    fig, ax = _new_axes(f"{recipe}: learning rate per epoch", "epoch", "learning rate")
    plotted = False
    for record, label in zip(records, labels):
        points = [(e["epoch"], _epoch_lr(e)) for e in record.get("epochs") or []]
        points = [(x, y) for x, y in points if y is not None and y > 0]
        if points:
            xs, ys = zip(*points)
            style = "--" if record["kind"] == "baseline" else "-"
            ax.plot(
                xs, ys, style, marker="o", markersize=3, label=label,
                drawstyle="steps-mid", alpha=0.85,
            )
            plotted = True
    if plotted:
        ax.set_yscale("log")
        ax.legend(fontsize="small")
        path = os.path.join(out_dir, PLOT_FILES["lr"].format(recipe=stem))
        fig.savefig(path)
        written.append(("lr", path))

    fig, ax = _new_axes(f"{recipe}: validation loss per epoch", "epoch", "validation loss")
    lines = []
    for record, label in zip(records, labels):
        xs, ys, keys = [], [], set()
        for entry in record.get("epochs") or []:
            value, key = _epoch_val_loss(entry)
            if key in (entry.get("logs") or {}):
                keys.add(key)
            xs.append(entry["epoch"])
            ys.append(_nan(value))
        if any(math.isfinite(y) for y in ys):
            lines.append((xs, ys, label, ", ".join(sorted(keys))))
    if lines:
        mixed = len({key for *_, key in lines}) > 1
        for xs, ys, label, key in lines:
            ax.plot(xs, ys, marker="o", markersize=3, label=f"{label} [{key}]" if mixed else label)
        if not mixed:
            ax.set_ylabel(f"validation loss ({lines[0][3]})")
        ax.legend(fontsize="small")
        path = os.path.join(out_dir, PLOT_FILES["val_loss"].format(recipe=stem))
        fig.savefig(path)
        written.append(("val_loss", path))

    fig, ax = _new_axes(
        f"{recipe}: test accuracy against wall time", "wall time (s)", "test accuracy (%)"
    )
    points = []
    for record, label in zip(records, labels):
        if record["kind"] == "macro":
            acc = (_winner_row(record) or {}).get("test_accuracy")
        else:
            acc = (record.get("test") or {}).get("accuracy")
        seconds = record.get("wall_time_s")
        if acc is not None and seconds is not None and seconds > 0:
            points.append((record, label, seconds, 100.0 * acc))
    if points:
        markers = {"macro": "s", "baseline": "D", "mcv": "o"}
        times = [p[2] for p in points]
        log_x = max(times) / min(times) > 20
        scale = math.log if log_x else (lambda t: t)
        lo, hi = scale(min(times)), scale(max(times))
        for i, (record, label, seconds, acc) in enumerate(points):
            color = f"C{i % 10}"
            done = record.get("status") == "complete"
            ax.scatter(
                [seconds], [acc], s=45, marker=markers.get(record["kind"], "o"),
                edgecolors=color, facecolors=color if done else "none",
            )
            # Labels of points in the right half go to their left, so they stay inside.
            right = hi > lo and (scale(seconds) - lo) / (hi - lo) > 0.5
            ax.annotate(
                label, (seconds, acc), textcoords="offset points",
                xytext=(-6, 5) if right else (6, 5), ha="right" if right else "left",
                fontsize="small", color=color,
            )
        if log_x:
            ax.set_xscale("log")
        ax.margins(x=0.12, y=0.12)
        path = os.path.join(out_dir, PLOT_FILES["accuracy_vs_time"].format(recipe=stem))
        fig.savefig(path)
        written.append(("accuracy_vs_time", path))
    return written


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class Report:
    """The result of `build_report`.

    Attributes:
        markdown: the text of `report.md`.
        tables: recipe name -> its Table 4.5-style Markdown table.
        rows: recipe name -> its table rows (dicts keyed by `REPORT_COLUMNS`).
        records: the valid records read.
        warnings: one message per skipped file.
        files: paths written: `report.md` first, then the PNG plots.
    """

    markdown: str
    tables: dict
    rows: dict
    records: list
    warnings: list
    files: list


def build_report(directory, out_dir=None) -> Report:
    """Render `report.md` and PNG plots from the run records under `directory`.

    Per recipe: a table in the form of thesis Table 4.5 (plus each macro-CV grid), and
    plots of the learning rate each method chose per epoch, the validation loss per
    epoch (`mcv_val_loss`, else `val_loss`) and test accuracy against wall time.
    Unreadable or invalid files are skipped with a warning.

    Args:
        directory: root of the saved runs, walked recursively for `*.json`.
        out_dir: where to write `report.md` and the PNGs. Defaults to `directory`.

    Raises:
        FileNotFoundError: `directory` does not exist.
    """
    pairs, warnings = _load(directory)
    records = [record for _, record in pairs]
    out_dir = os.fspath(directory if out_dir is None else out_dir)
    os.makedirs(out_dir, exist_ok=True)

    by_recipe = {}
    for record in records:
        by_recipe.setdefault(record["recipe"], []).append(record)

    lines = [
        "# Run report",
        "",
        "Test acc. in %. Theoretical cost: (forward + backward, step) operations of the "
        "whole run (thesis Table 4.1). Macro-CV grid: the winner's epochs and test "
        "results, with the wall time of the whole search.",
        "",
    ]
    if not records:
        lines += [f"No run records found under `{os.fspath(directory)}`.", ""]
    tables, rows, images = {}, {}, []
    for recipe in sorted(by_recipe):
        group = by_recipe[recipe]
        rows[recipe] = results_rows(group)
        tables[recipe] = _markdown_table(REPORT_COLUMNS, rows[recipe])
        lines += [f"## {recipe or '(no recipe name)'}", "", tables[recipe], ""]
        for record in sorted(group, key=_sort_key):
            if record["kind"] == "macro" and record.get("rows"):
                lines += [f"### Macro-CV grid{_status_suffix(record)}", "", macro_table(record), ""]
        for kind, path in _plot_recipe(recipe, group, out_dir):
            images.append(path)
            lines += [f"![{recipe}: {_PLOT_TITLES[kind]}]({os.path.basename(path)})", ""]
    if warnings:
        lines += ["## Skipped files", ""] + [f"- {w}" for w in warnings] + [""]
    markdown = "\n".join(lines).rstrip() + "\n"
    report_path = os.path.join(out_dir, "report.md")
    write_atomic(report_path, lambda f: f.write(markdown))
    return Report(
        markdown=markdown,
        tables=tables,
        rows=rows,
        records=records,
        warnings=warnings,
        files=[report_path] + images,
    )
