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

`method` is a name of the method registry (`keras_mcv.methods`), e.g. `"baseline"`
(optimizer in `config["optimizer"]`) or `"search2"` (alpha in `config["alpha"]`), or
any other string (shown as is). `config["momentum_form"]` is SGD's momentum form,
`"torch"` (PyTorch's, `TorchSGD`) or `"keras"` (`keras.optimizers.SGD`), and None for
other optimizers; an SGD record without the key predates it and ran Keras's form. `ops` counts whole-run forward, backward and step operations
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

import datetime
import json
import math
import numbers
import os
import tempfile

RECORD_FORMAT = "keras_mcv.run/1"
KINDS = ("mcv", "baseline", "macro")
STATUSES = ("running", "complete", "incomplete", "failed")
FINAL_STATUSES = ("complete", "incomplete", "failed")


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



def write_atomic(path, write, mode: str = "w") -> None:
    """Write a file through a temporary one beside it, then rename: all or nothing.

    A failure while writing leaves any previous file at `path` untouched and no
    temporary file behind. The file gets the permissions a plain `open` would
    give (the process's umask), not the private mode of a temporary file.

    Args:
        path: destination file; its directory is created if needed.
        write: `write(f)` writes the content to the open file object `f`.
        mode: "w" (text) or "wb" (binary). Defaults to "w".
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_record(path, record: dict) -> None:
    """Write `record` as JSON to `path` atomically (`write_atomic`); non-finite floats as null.

    Args:
        path: destination file; its directory is created if needed.
        record: the run record.
    """
    write_atomic(path, lambda f: json.dump(_finite_or_none(record), f, indent=1, allow_nan=False))


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
