"""Pure decision rules of micro cross-validation, in plain Python and NumPy.

Nothing here imports TensorFlow, so every rule is unit-tested exactly. The
in-graph twins in `keras_mcv.trials` are tested against these functions.

References: thesis chapter 3 (Algorithms 3-8).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DEFAULT_CANDIDATES = (1e-1, 1e-2, 1e-3, 1e-4)
"""Initial candidate learning rates of MCV-lr-voting and adaptive search (thesis 3.2)."""

SEARCH_FACTORS = (5.0, 2.0, 4.0 / 3.0, 1.0, 3.0 / 4.0, 1.0 / 2.0, 1.0 / 5.0)
"""Multipliers of the chosen LR that make the next epoch's candidate list (thesis 3.2)."""


def validate_candidates(candidates: Sequence[float], name: str = "candidates") -> list:
    """Return `candidates` as a list of floats, or raise a clear `ValueError`.

    A candidate list must be non-empty and hold finite, positive numbers.
    """
    try:
        values = [float(c) for c in candidates]
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a list of positive learning rates, got {candidates!r}. "
            "Pass e.g. [0.1, 0.01, 0.001, 0.0001]."
        ) from None
    if not values:
        raise ValueError(
            f"`{name}` is empty. Pass at least one positive learning rate, "
            "e.g. [0.1, 0.01, 0.001, 0.0001]."
        )
    bad = [v for v in values if not math.isfinite(v) or v <= 0]
    if bad:
        raise ValueError(
            f"`{name}` must hold finite, positive learning rates; {bad} is not. "
            "Remove or replace those values."
        )
    return values


def candidate_list(lr: float, factors: Sequence[float] = SEARCH_FACTORS) -> list:
    """The next epoch's candidates around the chosen `lr` (Algorithm 8).

    ```
    lr_list = [5 lr, 2 lr, 4/3 lr, lr, 3/4 lr, 1/2 lr, 1/5 lr]
    ```
    """
    return [float(f) * float(lr) for f in factors]


def as_scores(losses) -> np.ndarray:
    """Losses as float64 with every NaN or +-inf replaced by +inf.

    A non-finite candidate loss counts as +inf: it never wins and never makes an
    average NaN.
    """
    scores = np.asarray(losses, dtype="float64").copy()
    scores[~np.isfinite(scores)] = np.inf
    return scores


def best_candidate(losses, pre_loss: float) -> int:
    """Index of the candidate that lowers the validation loss most, or -1 (Algorithm 5).

    Among candidates whose loss is strictly below `pre_loss`, the one with the
    lowest loss wins (the first one on ties). If none lowers it, -1 means "no
    vote": the step is discarded.
    """
    scores = as_scores(losses)
    pre = float(pre_loss)
    if not math.isfinite(pre):
        pre = math.inf
    lowering = scores < pre
    if not lowering.any():
        return -1
    masked = np.where(lowering, scores, np.inf)
    return int(np.argmin(masked))


def initial_votes(num_candidates: int) -> np.ndarray:
    """Uniform vote history, 1/K for each of K candidates (Algorithm 4)."""
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}.")
    return np.full(num_candidates, 1.0 / num_candidates)


def update_votes(history, best_index: int, ema: float) -> np.ndarray:
    """Exponential moving average of one-hot votes (Algorithm 6).

    ```
    history <- ema * onehot(best) + (1 - ema) * history   if best >= 0
    history <- (1 - ema) * history                        if no candidate lowered the loss
    ```
    """
    history = np.asarray(history, dtype="float64")
    vote = np.zeros_like(history)
    if best_index >= 0:
        vote[best_index] = 1.0
    return ema * vote + (1.0 - ema) * history


def top_candidate(history) -> int:
    """Index of the candidate with the highest vote history ("top LR"); first on ties."""
    return int(np.argmax(np.asarray(history, dtype="float64")))


def should_discard(pre_loss: float, post_loss: float) -> bool:
    """MCV-discard's rule (Algorithm 3): discard when the loss went up.

    A non-finite `post_loss` counts as +inf, so it is discarded unless the
    pre-step loss was already non-finite too.
    """
    post = float(as_scores([post_loss])[0])
    pre = float(as_scores([pre_loss])[0])
    return post > pre


def select_lr(method: int, candidates, avg_scores, avg_val_losses, avg_pre_loss) -> float:
    """The learning rate of the next epoch from the epoch's averages (Algorithm 8).

    ```
    method 1, 2: argmin_k avg_scores[k]
    method 3:    max { c_k : avg_val_losses[k] < avg_pre_loss }, else as method 1
    ```
    `avg_scores` is `(1 - alpha) * val + alpha * train` averaged over the epoch
    (equal to `avg_val_losses` when alpha = 0). Ties go to the first candidate.
    If every candidate's score is non-finite, the smallest candidate is chosen:
    the safest step when all of them blew up.

    Args:
        method: 1, 2 or 3.
        candidates: the epoch's candidate learning rates.
        avg_scores: epoch-average score per candidate.
        avg_val_losses: epoch-average validation (`batch_2`) loss per candidate.
        avg_pre_loss: epoch-average `batch_2` loss before the step.

    References: thesis section 3.2, Algorithm 8 and the two selection approaches.
    """
    if method not in (1, 2, 3):
        raise ValueError(f"`method` must be 1, 2 or 3, got {method!r}.")
    candidates = np.asarray(candidates, dtype="float64")
    scores = as_scores(avg_scores)
    if method == 3:
        val = as_scores(avg_val_losses)
        pre = float(avg_pre_loss)
        if math.isfinite(pre):
            lowering = val < pre
            if lowering.any():
                return float(candidates[lowering].max())
    if not np.isfinite(scores).any():
        return float(candidates.min())
    return float(candidates[int(np.argmin(scores))])


def stopping_decision(epoch_losses: Sequence[float], patience: int) -> tuple:
    """The adaptive search's stopping rule (thesis 3.2), as `(stop, restore_epoch)`.

    `epoch_losses` are the epoch-average pre-step validation losses so far, one
    per finished epoch (0-based index = epoch). Training stops when:

    - the newest average is non-finite: stop and restore the weights of the epoch
      with the lowest average (`restore_epoch` is its index, None if none is
      finite); or
    - the average has not improved for `patience` epochs: stop, keep the weights
      (`restore_epoch` is None).

    Otherwise `(False, None)`.
    """
    if patience < 1:
        raise ValueError(f"`patience` must be >= 1, got {patience}.")
    if not epoch_losses:
        return False, None
    losses = np.asarray(epoch_losses, dtype="float64")
    finite = np.isfinite(losses)
    if not finite[-1]:
        if not finite.any():
            return True, None
        return True, int(np.argmin(np.where(finite, losses, np.inf)))
    best = int(np.argmin(losses))
    if len(losses) - 1 - best >= patience:
        return True, None
    return False, None
