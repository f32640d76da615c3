"""Time-to-target scoring as in the AlgoPerf benchmark, in plain Python.

```
time to target   t(run)    = training time at the first evaluation with
                               validation accuracy >= target; inf if none
                               comes within the budget
sequential grid  t(grid)   = sum of the times of the runs before the first
                               one that reaches the target + that run's time
                               to it (runs in a fixed order)
per workload     t(m, w)   = median over seeds of t (inf counts as the largest)
ratio            r(m, w)   = t(m, w) / min over methods t(., w)
profile          rho_m(tau)= share of workloads with r(m, w) <= tau
score            B_m       = integral of rho_m from 1 to r_max, / (r_max - 1)
                           = mean over workloads of max(0, r_max - r) / (r_max - 1)
speed-up         s(m, w)   = t(reference, w) / t(m, w)   (0 when m misses)
overall speed-up           = geometric mean of s over workloads
```

References: Dahl et al., Benchmarking Neural Network Training Algorithms,
2023, section 4 (time-to-result, performance profiles, the benchmark score
with r_max = 4, the self-tuning ruleset).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

R_MAX = 4.0
"""Where the performance profile is cut off (AlgoPerf's r_max)."""

INF = math.inf


def time_to_target(curve: Sequence, target: float, budget: float = INF) -> float:
    """Training time at the first evaluation whose accuracy reaches `target`.

    Args:
        curve: `(time, accuracy)` pairs in time order (one per evaluation).
        target: the accuracy to reach.
        budget: time after which a reach does not count. Defaults to inf.

    Returns:
        The time, or inf when the target is not reached within the budget.
    """
    for t, accuracy in curve:
        if t > budget:
            return INF
        if accuracy is not None and math.isfinite(accuracy) and accuracy >= target:
            return float(t)
    return INF


def sequential_time_to_target(curves: Sequence, totals: Sequence, target: float,
                              budget: float = INF) -> float:
    """A grid run one configuration after another, stopped when one reaches the target.

    Args:
        curves: each run's `(time, accuracy)` pairs, in the order the grid runs them.
        totals: each run's whole training time (what a run costs when it misses).
        target: the accuracy to reach.
        budget: time after which a reach does not count. Defaults to inf.
    """
    if len(curves) != len(totals):
        raise ValueError(f"{len(curves)} curves but {len(totals)} totals: give one total per run.")
    spent = 0.0
    for curve, total in zip(curves, totals):
        reached = time_to_target(curve, target)
        if math.isfinite(reached):
            t = spent + reached
            return t if t <= budget else INF
        spent += float(total)
        if spent > budget:
            return INF
    return INF


def median(values: Iterable[float]) -> float:
    """The median, with inf ordered last (an even count averages the middle two)."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("median of no values: give at least one.")
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    a, b = ordered[n // 2 - 1], ordered[n // 2]
    return INF if math.isinf(a) or math.isinf(b) else (a + b) / 2.0


def ratios(times: Mapping[str, float]) -> dict:
    """Each method's time over the fastest method's, on one workload (inf stays inf)."""
    finite = [t for t in times.values() if math.isfinite(t)]
    best = min(finite) if finite else INF
    out = {}
    for method, t in times.items():
        if not math.isfinite(t) or not math.isfinite(best):
            out[method] = INF
        else:
            out[method] = t / best if best > 0 else (1.0 if t == 0 else INF)
    return out


def profile(workload_ratios: Sequence[float], tau: float) -> float:
    """The share of workloads whose ratio is at most `tau`."""
    if not workload_ratios:
        raise ValueError("a performance profile needs at least one workload.")
    return sum(1 for r in workload_ratios if r <= tau) / len(workload_ratios)


def score(workload_ratios: Sequence[float], r_max: float = R_MAX) -> float:
    """AlgoPerf's benchmark score: the area under the profile from 1 to `r_max`, normalised.

    Exact: each workload contributes `max(0, r_max - max(r, 1)) / (r_max - 1)`.
    """
    if not workload_ratios:
        raise ValueError("a score needs at least one workload.")
    if r_max <= 1:
        raise ValueError(f"r_max must be > 1, got {r_max}.")
    total = 0.0
    for r in workload_ratios:
        if math.isfinite(r):
            total += max(0.0, r_max - max(float(r), 1.0)) / (r_max - 1.0)
    return total / len(workload_ratios)


def speedup(reference_time: float, time: float) -> float:
    """`reference_time / time`: 0 when the method misses, inf when only the reference misses."""
    if not math.isfinite(time):
        return 0.0
    if not math.isfinite(reference_time):
        return INF
    return reference_time / time


def geometric_mean(values: Sequence[float]) -> float:
    """The geometric mean (0 if any value is 0, inf if any is inf and none is 0)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("a geometric mean needs at least one value.")
    if any(v < 0 or math.isnan(v) for v in values):
        raise ValueError(f"a geometric mean needs values >= 0, got {values}.")
    if any(v == 0 for v in values):
        return 0.0
    if any(math.isinf(v) for v in values):
        return INF
    return math.exp(sum(math.log(v) for v in values) / len(values))
