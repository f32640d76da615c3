"""The saved_runs record format: one JSON file per run, written atomically.

A record is a dict:

```
{
  "format": "keras_mcv.run/1",
  "kind": "mcv" | "baseline" | "macro",
  "status": "running" | "complete" | "incomplete" | "failed",
  "recipe": str, "method": str, "config": {...},
  "started": ISO-8601 time, "wall_time_s": float,
  "epochs": [{"epoch": int, "wall_time_s": float, "logs": {name: float},
              "lr": float | None, "candidates": [float] | None,
              "candidate_losses": [float] | None, "pre_loss": float | None,
              "next_lr": float | None}],
  "ops": {"forward": int, "backward": int, "step": int},
  "test": {"loss": float, "accuracy": float} | None,
}
```
Non-finite floats are written as null, so every record is strict JSON.

`method` is one of `"baseline"` (optimizer in `config["optimizer"]`), `"discard"`,
`"voting"`, `"search1"`, `"search2"` (alpha in `config["alpha"]`), `"search3"`, or any
other string (shown as is). `ops` counts whole-run forward, backward and step operations
(thesis Table 4.1 times steps); it may be null when not counted. A record still
`"running"` when read back belongs to a process that died: the report shows it as
incomplete. `"failed"` records may carry an `"error"` string.

A macro-CV record (`kind == "macro"`, thesis 4.5) has, instead of `epochs`/`ops`/`test`
(which it may still carry):

```
  "rows": [{"optimizer": str, "lr": float, "decay": float | None,
            "mean_epochs": float, "best_val_loss": float | None,
            "test_loss": float | None, "test_accuracy": float | None,
            "diverged": bool, "wall_time_s": float}],
  "winner": int (index into rows) | {"optimizer": .., "lr": .., "decay": ..} | None,
```
and `wall_time_s` is the wall time of the whole search.

References: thesis Tables 4.1 (theoretical cost), 4.2-4.4 (macro-CV grid) and 4.5
(results of MCV methods).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import numbers
import os
import re
import tempfile

RECORD_FORMAT = "keras_mcv.run/1"
KINDS = ("mcv", "baseline", "macro")
STATUSES = ("running", "complete", "incomplete", "failed")
FINAL_STATUSES = ("complete", "incomplete", "failed")

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
_METHOD_NAMES = {
    "discard": "MCV-discard",
    "voting": "MCV-lr-voting",
    "search1": "Method 1",
    "search2": "Method 2",
    "search3": "Method 3",
    "tuned": "Tuned MCV",
    "race": "LR race",
}
_METHOD_ORDER = ("baseline", "discard", "voting", "search1", "search2", "search3", "tuned", "race")
_DASH = "–"


class RunRecordError(ValueError):
    """A file is not a valid run record; the message names the file and the problem."""


# --------------------------------------------------------------------------- writing


def _finite_or_none(value):
    """JSON-ready copy of `value`: non-finite floats -> None, NumPy scalars/arrays -> Python."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy arrays and 0-d tensors' numpy() values.
        return _finite_or_none(value.tolist())
    return value


def write_record(path, record: dict) -> None:
    """Write `record` as JSON to `path` atomically (temporary file, then rename).

    A failure while writing leaves any previous file at `path` untouched and no
    temporary file behind. Non-finite floats are written as null.

    Args:
        path: destination file; its directory is created if needed.
        record: the run record.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".record-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_finite_or_none(record), f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def new_record(kind: str, recipe: str, method: str, config: dict | None = None) -> dict:
    """A fresh record with status "running", the start time, and empty results.

    Args:
        kind: one of `KINDS`: "mcv", "baseline" or "macro".
        recipe: recipe name, e.g. "cifar10_small_cnn".
        method: method name, e.g. "search2" (see the module docstring).
        config: the run's configuration (optimizer, alpha, batch size, ...); copied.
            Defaults to an empty dict.

    Returns:
        The record dict, ready for `add_epoch`, `finalize` and `write_record`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    record = {
        "format": RECORD_FORMAT,
        "kind": kind,
        "status": "running",
        "recipe": str(recipe),
        "method": str(method),
        "config": _finite_or_none(dict(config or {})),
        "started": _now_iso(),
        "wall_time_s": 0.0,
        "epochs": [],
        "ops": None,
        "test": None,
    }
    if kind == "macro":
        record["rows"] = []
        record["winner"] = None
    return record


def add_epoch(
    record: dict,
    epoch: int,
    wall_time_s: float,
    logs: dict | None = None,
    lr: float | None = None,
    candidates=None,
    candidate_losses=None,
    pre_loss: float | None = None,
    next_lr: float | None = None,
) -> dict:
    """Append one epoch entry to `record["epochs"]` and return the entry.

    Args:
        record: a record from `new_record`.
        epoch: 1-based epoch number.
        wall_time_s: seconds since the start of training at the end of this epoch.
        logs: the epoch's Keras logs (`loss`, `accuracy`, `lr`, `mcv_val_loss`, ...).
            Defaults to an empty dict.
        lr: learning rate used during the epoch. Defaults to None.
        candidates: candidate learning rates tried during the epoch. Defaults to None.
        candidate_losses: their average losses, in the same order. Defaults to None.
        pre_loss: the average pre-step validation loss. Defaults to None.
        next_lr: learning rate chosen for the next epoch. Defaults to None.
    """
    entry = _finite_or_none(
        {
            "epoch": int(epoch),
            "wall_time_s": wall_time_s,
            "logs": dict(logs or {}),
            "lr": lr,
            "candidates": None if candidates is None else list(candidates),
            "candidate_losses": (
                None if candidate_losses is None else list(candidate_losses)
            ),
            "pre_loss": pre_loss,
            "next_lr": next_lr,
        }
    )
    record.setdefault("epochs", []).append(entry)
    record["wall_time_s"] = entry["wall_time_s"]
    return entry


def _elapsed_since(started) -> float | None:
    try:
        start = datetime.datetime.fromisoformat(started)
    except (TypeError, ValueError):
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=datetime.timezone.utc)
    return (datetime.datetime.now(datetime.timezone.utc) - start).total_seconds()


def finalize(
    record: dict,
    status: str,
    wall_time_s: float | None = None,
    test: dict | None = None,
    ops: dict | None = None,
    rows: list | None = None,
    winner=None,
    error: str | None = None,
) -> dict:
    """Set the final status and results of `record` (in place) and return it.

    Args:
        record: a record from `new_record`.
        status: "complete", "incomplete" (stopped early, e.g. interrupted) or "failed".
        wall_time_s: total wall time in seconds. Defaults to the time since
            `record["started"]`.
        test: `{"loss": .., "accuracy": ..}` on the test set. Defaults to keeping
            the record's current value.
        ops: `{"forward": .., "backward": .., "step": ..}` whole-run counts.
            Defaults to keeping the record's current value.
        rows: macro-CV per-configuration rows. Defaults to keeping the current value.
        winner: macro-CV winner (index into rows, or a dict). Defaults to keeping
            the current value.
        error: a message for a failed run. Defaults to None (not stored).
    """
    if status not in FINAL_STATUSES:
        raise ValueError(f"final status must be one of {FINAL_STATUSES}, got {status!r}")
    record["status"] = status
    if wall_time_s is None:
        wall_time_s = _elapsed_since(record.get("started"))
    record["wall_time_s"] = _finite_or_none(wall_time_s)
    if test is not None:
        record["test"] = _finite_or_none(dict(test))
    if ops is not None:
        record["ops"] = {k: int(ops[k]) for k in ("forward", "backward", "step")}
    if rows is not None:
        record["rows"] = _finite_or_none(list(rows))
    if winner is not None:
        record["winner"] = _finite_or_none(winner)
    if error is not None:
        record["error"] = str(error)
    return record


# --------------------------------------------------------------------------- reading


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(record, path) -> None:
    """Raise `RunRecordError` naming `path` and the first problem found in `record`."""

    def check(cond, message):
        if not cond:
            raise RunRecordError(f"{path}: {message}")

    def number_or_null(value, where):
        ok = value is None or _is_number(value)
        check(ok, f"{where} must be a number or null, got {value!r}")

    check(
        isinstance(record, dict),
        f"not a run record (top level is {type(record).__name__}, expected an object)",
    )
    fmt = record.get("format")
    check(
        fmt == RECORD_FORMAT,
        f"not a keras_mcv run record (format {fmt!r}, expected {RECORD_FORMAT!r})",
    )
    for key in ("kind", "status", "recipe", "method", "config", "started", "wall_time_s"):
        check(key in record, f"missing key {key!r}")
    check(record["kind"] in KINDS, f"'kind' must be one of {KINDS}, got {record['kind']!r}")
    check(
        record["status"] in STATUSES,
        f"'status' must be one of {STATUSES}, got {record['status']!r}",
    )
    for key in ("recipe", "method", "started"):
        check(isinstance(record[key], str), f"{key!r} must be a string, got {record[key]!r}")
    check(isinstance(record["config"], dict), "'config' must be an object")
    number_or_null(record["wall_time_s"], "'wall_time_s'")

    is_macro = record["kind"] == "macro"
    if not is_macro:
        for key in ("epochs", "ops", "test"):
            check(key in record, f"missing key {key!r}")
    epochs = record.get("epochs", [])
    check(isinstance(epochs, list), "'epochs' must be a list")
    for i, entry in enumerate(epochs):
        where = f"epochs[{i}]"
        check(isinstance(entry, dict), f"{where} must be an object")
        check(_is_int(entry.get("epoch")), f"{where}['epoch'] must be an integer")
        logs = entry.get("logs", {})
        check(isinstance(logs, dict), f"{where}['logs'] must be an object")
        for name, value in logs.items():
            number_or_null(value, f"{where}['logs'][{name!r}]")
        for key in ("wall_time_s", "lr", "pre_loss", "next_lr"):
            number_or_null(entry.get(key), f"{where}[{key!r}]")
        for key in ("candidates", "candidate_losses"):
            values = entry.get(key)
            ok = values is None or isinstance(values, list)
            check(ok, f"{where}[{key!r}] must be a list or null")
            for j, value in enumerate(values or []):
                number_or_null(value, f"{where}[{key!r}][{j}]")
    ops = record.get("ops")
    if ops is not None:
        check(isinstance(ops, dict), "'ops' must be an object or null")
        for key in ("forward", "backward", "step"):
            value = ops.get(key)
            check(
                _is_number(value) and value >= 0,
                f"'ops'[{key!r}] must be a non-negative number, got {value!r}",
            )
    test = record.get("test")
    if test is not None:
        check(isinstance(test, dict), "'test' must be an object or null")
        for key in ("loss", "accuracy"):
            number_or_null(test.get(key), f"'test'[{key!r}]")

    if not is_macro:
        return
    for key in ("rows", "winner"):
        check(key in record, f"missing key {key!r} (required for kind 'macro')")
    rows = record["rows"]
    check(isinstance(rows, list), "'rows' must be a list")
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        check(isinstance(row, dict), f"{where} must be an object")
        check(isinstance(row.get("optimizer"), str), f"{where}['optimizer'] must be a string")
        check(_is_number(row.get("lr")), f"{where}['lr'] must be a number")
        for key in ("decay", "mean_epochs", "best_val_loss", "test_loss", "test_accuracy",
                    "wall_time_s"):
            number_or_null(row.get(key), f"{where}[{key!r}]")
    winner = record["winner"]
    if _is_int(winner):
        check(0 <= winner < len(rows), f"'winner' index {winner} out of range for {len(rows)} rows")
    else:
        check(
            winner is None or isinstance(winner, dict),
            "'winner' must be a row index, an object or null",
        )


def read_record(path) -> dict:
    """Read and validate one run record.

    The record is returned as stored: a `"running"` status stays `"running"` (the
    report shows it as incomplete).

    Args:
        path: the JSON file.

    Raises:
        RunRecordError: the file cannot be read, is not JSON, or is not a valid
            record; the message names the file and what is wrong.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RunRecordError(f"{path}: cannot read ({e})") from e
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunRecordError(f"{path}: not valid JSON ({e})") from e
    _validate(record, path)
    return record


def _walk_json(directory):
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "oracle.json" in files:
            # A Keras Tuner project (the macro-CV search's state), not run records.
            dirs[:] = []
            continue
        for name in sorted(files):
            if name.endswith(".json") and not name.startswith("."):
                yield os.path.join(root, name)


def _load(directory):
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no such directory: {directory}")
    pairs, warnings = [], []
    for path in _walk_json(directory):
        try:
            pairs.append((path, read_record(path)))
        except RunRecordError as e:
            warnings.append(f"skipped {e}")
    return pairs, warnings


def load_records(directory) -> tuple[list, list]:
    """Read every `*.json` run record under `directory` (recursively, sorted by path).

    Files that cannot be read, are not JSON, or are not valid records are skipped,
    each with a warning; hidden files and directories, and Keras Tuner project
    directories (those holding `oracle.json`), are ignored.

    Args:
        directory: the root to walk, e.g. "saved_runs".

    Returns:
        `(records, warnings)`: the valid records and one message per skipped file.

    Raises:
        FileNotFoundError: `directory` does not exist.
    """
    pairs, warnings = _load(directory)
    return [record for _, record in pairs], warnings


# --------------------------------------------------------------------------- formatting


def _fmt_g(value) -> str:
    return f"{value:g}"


def method_label(record: dict) -> str:
    """The thesis's display name of a record's method, e.g. "Method 2, α = 0.5".

    Args:
        record: a run record (for macro records, see `results_rows`).
    """
    method = record.get("method", "")
    config = record.get("config") or {}
    if record.get("kind") == "macro":
        return "Macro-CV grid"
    if method == "baseline" or record.get("kind") == "baseline":
        optimizer = str(config.get("optimizer", "sgd"))
        label = f"Baseline {_optimizer_name(optimizer)}"
        if _is_number(config.get("learning_rate")) and optimizer != "schedule_free_adamw":
            label += f" lr={_fmt_g(config['learning_rate'])}"
        return label
    name = _METHOD_NAMES.get(method, method)
    if method == "search2" and _is_number(config.get("alpha")):
        name += f", α = {_fmt_g(config['alpha'])}"
    if method in ("tuned", "race"):
        name += f" ({_optimizer_name(str(config.get('optimizer', 'sgd')))})"
    if _is_number(config.get("trial_batch_size")):
        name += f", trial batch {int(config['trial_batch_size'])}"
    return name


def _optimizer_name(name: str) -> str:
    return {
        "sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "schedule_free_adamw": "ScheduleFreeAdamW",
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
    elif method in _METHOD_ORDER:
        rank = _METHOD_ORDER.index(method)
    else:
        rank = len(_METHOD_ORDER)
    alpha = (record.get("config") or {}).get("alpha")
    alpha = alpha if _is_number(alpha) and method == "search2" else 0.0
    return (rank, method, alpha, record.get("started", ""))


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
            label = "Macro-CV grid"
            if win:
                label += f" (winner: {_winner_text(win)})"
            rows.append(
                {
                    "Method": label + suffix,
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
    if record["kind"] == "macro":
        win = _winner_row(record)
        label = "Macro-CV grid" + (f" ({_winner_text(win)})" if win else "")
        label += _status_suffix(record)
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
    tmp = report_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(markdown)
    os.replace(tmp, report_path)
    return Report(
        markdown=markdown,
        tables=tables,
        rows=rows,
        records=records,
        warnings=warnings,
        files=[report_path] + images,
    )
