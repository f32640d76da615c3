"""Settings of the macro-CV grid: validation, repeated stratified splits, retraining epochs.

References: thesis section 4.5.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from keras_mcv.data import ArrayData

OPTIMIZERS = ("sgd", "adam")
OPTIMIZER_LABELS = {"sgd": "Momentum SGD", "adam": "Adam"}
OBJECTIVE = "mean_val_loss"
PROJECT_NAME = "search"
EXECUTIONS_LOG = "executions.jsonl"
RECORD_NAME = "macro_cv.json"
TABLE_NAME = "macro_cv.md"

_HP_OPTIMIZER = "optimizer"
_HP_LR = "learning_rate"
_HP_DECAY = "decay"
_HP_SETTINGS = "settings"
_IDLE_POLL_S = 0.5


# ----------------------------------------------------------------------------
# Validation and small helpers
# ----------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _as_float_tuple(values, name: str, fix: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(
            f"`{name}` must be a sequence of numbers, got {values!r}. {fix}"
        )
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"`{name}` holds {v!r}, which is not a number. {fix}"
            ) from None
        if not math.isfinite(f) or f <= 0:
            raise ValueError(
                f"`{name}` holds {v!r}; every value must be a finite number "
                f"> 0. {fix}"
            )
        out.append(f)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}` holds duplicates: {list(values)!r}. {fix}")
    return tuple(out)


def validate_settings(
    data: ArrayData,
    *,
    batch_size,
    optimizers,
    learning_rates,
    decays,
    repeats,
    patience,
    max_epochs,
    val_fraction,
) -> tuple[tuple, tuple, tuple]:
    """Check every argument of `run_macro_cv` before anything is trained.

    Returns the normalised `(optimizers, learning_rates, decays)`; raises
    `ValueError` naming the offending value and how to fix it.
    """
    if isinstance(optimizers, str):
        optimizers = tuple(o for o in optimizers.split(",") if o.strip())
    optimizers = tuple(str(o).strip().lower() for o in optimizers)
    if not optimizers:
        raise ValueError(
            "`optimizers` is empty; pass at least one of "
            f"{', '.join(OPTIMIZERS)} (e.g. optimizers=('sgd', 'adam'))."
        )
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise ValueError(
            f"Unknown optimizer(s) {unknown!r} in `optimizers`; use "
            f"{' or '.join(OPTIMIZERS)}."
        )
    if len(set(optimizers)) != len(optimizers):
        raise ValueError(
            f"`optimizers` holds duplicates: {optimizers!r}; list each once."
        )
    learning_rates = _as_float_tuple(
        learning_rates,
        "learning_rates",
        "Pass positive learning rates, e.g. (0.1, 0.01, 0.001, 0.0001).",
    )
    if not learning_rates:
        raise ValueError(
            "`learning_rates` is empty; pass at least one learning rate, "
            "e.g. (0.1, 0.01, 0.001, 0.0001)."
        )
    decays = _as_float_tuple(
        decays,
        "decays",
        "Pass positive decay rates such as (1e-3, 5e-4, 1e-4), or () to skip "
        "stage 2 (stage 1 already covers 'no decay').",
    )
    for name, value, low, fix in (
        ("repeats", repeats, 1, "repeats=5 (the thesis)"),
        ("patience", patience, 0, "patience=20 (the thesis)"),
        ("max_epochs", max_epochs, 1, "max_epochs=100 (the thesis)"),
        ("batch_size", batch_size, 1, "batch_size=128"),
    ):
        if not _is_int(value) or value < low:
            raise ValueError(
                f"`{name}` must be an integer >= {low}, got {value!r}; "
                f"e.g. {fix}."
            )
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(
            f"`val_fraction` must be in (0, 1), got {val_fraction!r}; "
            "e.g. 0.2 for the thesis's 80/20 splits."
        )
    if not isinstance(data, ArrayData):
        raise ValueError(
            f"`data` must be a keras_mcv.data.ArrayData, got {type(data)!r}; "
            "load it with a keras_mcv.data loader or a recipe's load_data."
        )
    n, n_test = len(data.y_train), len(data.y_test)
    if len(data.x_train) != n or len(data.x_test) != n_test:
        raise ValueError(
            f"`data` has {len(data.x_train)} training inputs but {n} labels "
            f"and {len(data.x_test)} test inputs but {n_test} labels; "
            "inputs and labels must have the same length."
        )
    if n_test == 0:
        raise ValueError(
            "`data` has an empty test set; the baseline reports test loss "
            "and accuracy, so pass data with test examples."
        )
    classes, counts = np.unique(data.y_train, return_counts=True)
    n_val = math.ceil(val_fraction * n)
    smallest = int(counts.min()) if counts.size else 0
    if smallest < 2 or n_val < len(classes) or n - n_val < len(
        classes
    ):
        raise ValueError(
            f"Cannot make stratified {1 - val_fraction:.0%}/{val_fraction:.0%} "
            f"splits of {n} training examples in {len(classes)} classes "
            f"(smallest class: {smallest} examples). Use more "
            "training data (e.g. a larger --subset) or another val_fraction."
        )
    return optimizers, learning_rates, decays


def retrain_epochs(best_epochs: Sequence[int]) -> int:
    """Epochs of the final retrain: the mean best epoch, rounded half up.

    ```
    retrain_epochs([3, 4]) == 4      # 3.5 -> 4 (Python's round would give 4)
    retrain_epochs([2, 3]) == 3      # 2.5 -> 3 (Python's round would give 2)
    ```

    Args:
        best_epochs: the 1-based best epoch of each split.

    References: thesis section 4.5.
    """
    return max(1, int(math.floor(float(np.mean(best_epochs)) + 0.5)))


def stratified_splits(
    y: np.ndarray, repeats: int, val_fraction: float = 0.2, seed: int = 0
) -> list:
    """Index pairs `(train_idx, val_idx)` of `repeats` stratified random splits.

    ```
    split r = sklearn train_test_split(arange(n), test_size=val_fraction,
                                       stratify=y, random_state=seed + r)
    ```
    Each split keeps the class proportions of `y` (within one example per
    class) and uses its own seed, so the splits differ between repeats and are
    the same for every configuration and every process.

    Args:
        y: integer labels of the training set.
        repeats: number of splits.
        val_fraction: share held out for validation. Defaults to 0.2.
        seed: seed of the first split. Defaults to 0.

    References: thesis section 4.5.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    idx = np.arange(len(y))
    splits = []
    for r in range(repeats):
        tr, va = train_test_split(
            idx, test_size=val_fraction, stratify=y, random_state=seed + r
        )
        splits.append((np.sort(tr), np.sort(va)))
    return splits
