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

References: thesis section 4.4 and Table 4.1.
"""

from __future__ import annotations

BASELINE = (1, 1, 1)


def step_cost(method: str, num_candidates: int = 0, alpha: float = 0.0) -> tuple:
    """`(forward, backward, step)` operations of one step with trials.

    Args:
        method: "baseline", "discard", "voting", "search1", "search2" or "search3".
        num_candidates: K, the number of candidate learning rates.
        alpha: Method 2's weight of the training loss; the extra K forwards
            are only spent when alpha > 0. Defaults to 0.
    """
    k = int(num_candidates)
    if method == "baseline":
        return BASELINE
    if method == "discard":
        return (3, 1, 1)
    if method in ("voting", "search1", "search3"):
        return (k + 2, 1, k + 1)
    if method == "search2":
        return ((2 * k + 2) if alpha > 0 else (k + 2), 1, k + 1)
    raise ValueError(
        f"Unknown method {method!r}; expected baseline, discard, voting, "
        "search1, search2 or search3."
    )


def theoretical_cost(ops: dict) -> tuple:
    """A run's `(forward + backward, step)` pair, the thesis's "Theoretic Cost"."""
    return (int(ops["forward"]) + int(ops["backward"]), int(ops["step"]))
