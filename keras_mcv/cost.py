"""Theoretical cost of a training step: forward, backward and step operations.

Table 4.1 of the thesis, with K candidate learning rates:

```
method          forward   backward  step
baseline        1         1         1
MCV-discard     3         1         1
MCV-lr-voting   K + 2     1         K + 1
Method 1, 3     K + 2     1         K + 1
Method 2        2K + 2    1         K + 1     (2K + 2 only when alpha > 0)
```
A step that runs no trials (`trial_every` > 1, or a batch of one example)
costs what the baseline step costs. A run's cost is the sum over its steps,
which the models count in-graph; `theoretical_cost` sums it as the thesis does.
Each row is one function here; the method registry (`keras_mcv.methods`)
names the row of each method.

References: thesis section 4.4 and Table 4.1.
"""

from __future__ import annotations

BASELINE = (1, 1, 1)


def baseline_step(num_candidates: int = 0, alpha: float = 0.0) -> tuple:
    """A plain step: 1 forward, 1 backward, 1 step."""
    return BASELINE


def discard_step(num_candidates: int = 0, alpha: float = 0.0) -> tuple:
    """MCV-discard: the step, plus the validation half before and after it."""
    return (3, 1, 1)


def candidate_step(num_candidates: int, alpha: float = 0.0) -> tuple:
    """MCV-lr-voting, Methods 1 and 3: K trial steps judged on the validation half."""
    k = int(num_candidates)
    return (k + 2, 1, k + 1)


def mixed_score_step(num_candidates: int, alpha: float = 0.0) -> tuple:
    """Method 2: as `candidate_step`, plus K training-half forwards when alpha > 0."""
    k = int(num_candidates)
    return ((2 * k + 2) if alpha > 0 else (k + 2), 1, k + 1)


def theoretical_cost(ops: dict) -> tuple:
    """A run's `(forward + backward, step)` pair, the thesis's "Theoretic Cost"."""
    return (int(ops["forward"]) + int(ops["backward"]), int(ops["step"]))
