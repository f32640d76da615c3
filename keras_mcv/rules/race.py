"""Pure rules of the learning-rate race, in plain Python and NumPy.

The race (`keras_mcv.RaceModel`) is micro cross-validation with a
horizon of whole epochs instead of one step: every candidate LR trains its own
copy of the network ("branch") on the same batches, and each branch is judged
on every batch *before* it trains on it (prequential validation, so on data
that branch has not fitted yet). Candidates are eliminated by successive
halving (Jamieson & Talwalkar, AISTATS 2016; Li et al.'s Hyperband, JMLR 2018)
inside one `fit`:

```
round 1: all K candidates, 1 epoch
round r: the best ceil(A / 2) of round r - 1's A branches, 2^(r-1) epochs,
         each continuing from its own weights and optimizer state
judge:   a branch's mean pre-step loss over the last half of the round's
         batches (the same batches for every branch: a paired comparison)
one left: it trains on, at its LR, to the end of `fit`
```

Why a race and not one-step trials: a greedy comparison over a short horizon
prefers smaller LRs (short-horizon bias, Wu et al., ICLR 2018), and measured
here it did so even over 10 and 20 real steps (`saved_runs/beyond_thesis/`).
Doubling the round length gives the final comparison the longest
horizon at a fixed total cost: K candidates cost about
`sum over rounds of (A_r - 1) * 2^(r-1)` extra epochs (K = 4: 3 + 2 = 5).

Nothing here imports TensorFlow, so every rule is unit-tested exactly.

References: Jamieson & Talwalkar, AISTATS 2016; Li et al., Hyperband, JMLR 2018;
Wu et al., Understanding Short-Horizon Bias in Stochastic Meta-Optimization,
ICLR 2018.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from keras_mcv.rules import thesis as thesis_rules

JUDGED_FRACTION = 0.5
"""The share of a round's batches (the last ones) whose losses judge it.

The first half of a round holds the transient after the branches part (or
after the previous round); the last half says where each branch has got to.
"""


def round_epochs(round_number: int) -> int:
    """Epochs in round `round_number` (1-based): 1, 2, 4, ... (successive halving)."""
    if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 1:
        raise ValueError(f"`round_number` must be an integer >= 1, got {round_number!r}.")
    return 2 ** (round_number - 1)


def survivors_count(alive: int) -> int:
    """How many of `alive` branches go on to the next round: `ceil(alive / 2)`."""
    if isinstance(alive, bool) or not isinstance(alive, int) or alive < 1:
        raise ValueError(f"`alive` must be an integer >= 1, got {alive!r}.")
    return math.ceil(alive / 2)


def race_epochs(num_candidates: int) -> int:
    """Epochs until one branch is left: `sum of round_epochs` over the rounds."""
    alive, rounds = int(num_candidates), 0
    while alive > 1:
        rounds += 1
        alive = survivors_count(alive)
    return sum(round_epochs(r) for r in range(1, rounds + 1))


def race_cost_epochs(num_candidates: int) -> int:
    """Branch-epochs of training the race spends: `sum over rounds of A_r * 2^(r-1)`.

    `race_cost_epochs(K) - race_epochs(K)` is the extra cost over plain
    training, in epochs (K = 4: 8 - 3 = 5).
    """
    alive, rounds, total = int(num_candidates), 0, 0
    while alive > 1:
        rounds += 1
        total += alive * round_epochs(rounds)
        alive = survivors_count(alive)
    return total


def judged_losses(step_losses: Sequence[Sequence[float]]) -> np.ndarray:
    """Each branch's mean pre-step loss over the last `JUDGED_FRACTION` of a round.

    Args:
        step_losses: one row per training step of the round, one column per
            branch (the same batch for every column of a row).

    Returns:
        One score per branch; +inf for a branch with a non-finite loss on any
        judged step (a diverged branch never wins).
    """
    losses = thesis_rules.as_scores(np.asarray(step_losses, dtype=np.float64))
    if losses.ndim != 2 or losses.shape[0] == 0:
        raise ValueError(
            f"`step_losses` must be a non-empty (steps, branches) table, got shape {losses.shape}."
        )
    start = int(math.floor(losses.shape[0] * (1.0 - JUDGED_FRACTION)))
    start = min(start, losses.shape[0] - 1)
    return losses[start:].mean(axis=0)


def ranking(scores: Sequence[float]) -> list:
    """Branch indices from the best (lowest score) to the worst; ties keep index order."""
    scores = thesis_rules.as_scores(np.asarray(scores, dtype=np.float64))
    return [int(i) for i in np.argsort(scores, kind="stable")]


def survivors(step_losses, final: bool = False) -> list:
    """The branches kept at the end of a round, best first.

    Args:
        step_losses: the round's `(steps, branches)` pre-step losses.
        final: keep only the best (training ends inside this round).
    """
    order = ranking(judged_losses(step_losses))
    keep = 1 if final else survivors_count(len(order))
    return order[:keep]


def running_leader(step_losses) -> int:
    """The branch with the lowest judged loss over the round's steps so far (0 before any)."""
    if len(step_losses) == 0:
        return 0
    return ranking(judged_losses(step_losses))[0]
