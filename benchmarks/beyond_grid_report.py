"""Tables of `benchmarks.beyond_grid`: the races against the anchor, and time to target.

```
single run   = median training time of the 8 constant-LR runs (per pair and seed)
anchor       = the test accuracy of the run, among the 16 half-decade runs
               (constant and cosine), with the best final validation accuracy
delta        = a method's test accuracy - the anchor's (points)
target       = median over seeds of the decade grid's best final validation accuracy
time         = training time to the target (validation time left out); the
               grids run one configuration after another (largest LR first,
               constant before cosine) and stop when one reaches the target
budget       = 3 single runs (a reach after it counts as never)
```
Scoring functions: `benchmarks.scoring`.
"""

from __future__ import annotations

import math
import statistics

from benchmarks import scoring
from benchmarks.beyond_grid import (BUDGET_RUNS, DECADES, GOAL_WALL_RUNS, HALF_DECADES,
                                    OTHER_METHODS, OWN_OPTIMIZER, VARIANTS)

GOAL_MEAN_DELTA = 0.3
"""The goal: test accuracy this many points above the anchor, on average over the pairs..."""
GOAL_WORST_DELTA = -0.5
"""...and no pair more than this many points below it."""

GRIDS = {
    "decade grid": [f"const:{lr:g}" for lr in DECADES],
    "half-decade grid": [f"const:{lr:g}" for lr in HALF_DECADES],
    "half-decade grids, constant + cosine": ([f"const:{lr:g}" for lr in HALF_DECADES]
                                             + [f"cos:{lr:g}" for lr in HALF_DECADES]),
}
ANCHOR_SPECS = GRIDS["half-decade grids, constant + cosine"]


def _run(results, problem, optimizer, seed, spec):
    own = spec.split(":")[0] in OWN_OPTIMIZER
    return results["runs"].get(f"{problem}|{'own' if own else optimizer}|{seed}|{spec}")


def _cells(results):
    """{(problem, optimizer): [seeds]} for which the 16 anchor runs are complete."""
    cells = {}
    for k in results["runs"]:
        problem, optimizer, seed, _ = k.split("|")
        if optimizer == "own":
            continue
        if all(_run(results, problem, optimizer, int(seed), s) for s in ANCHOR_SPECS):
            cells.setdefault((problem, optimizer), set()).add(int(seed))
    return {c: sorted(s) for c, s in sorted(cells.items())}


def single_run(results, problem, optimizer, seed):
    return statistics.median(_run(results, problem, optimizer, seed, s)["train_s"]
                             for s in GRIDS["half-decade grid"])


def anchor(results, problem, optimizer, seed):
    """(spec, test accuracy) of the run with the best final validation accuracy; oracle test."""
    runs = [(s, _run(results, problem, optimizer, seed, s)) for s in ANCHOR_SPECS]
    spec, best = max(runs, key=lambda sr: (sr[1]["curve"][-1]["val_acc"], -ANCHOR_SPECS.index(sr[0])))
    oracle = max(r["test_acc"] for _, r in runs)
    return spec, best["test_acc"], oracle


def _methods(results, cells, only=None):
    names = []
    for spec in list(VARIANTS) + list(OTHER_METHODS):
        if only is not None and spec not in only:
            continue
        if any(_run(results, p, o, s, spec) for (p, o), seeds in cells.items() for s in seeds):
            names.append(spec)
    return names


def _fmt(x, digits=1, plus=True):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "never"
    return f"{x:+.{digits}f}" if plus else f"{x:.{digits}f}"


def _lrs(run):
    h = run.get("history")
    if not h:
        return ""
    return " ".join(f"{e['lr']:.2g}" for e in h)


def accuracy_tables(results, cells, methods):
    lines = ["## Accuracy against the anchor", "",
             "Δ = test accuracy − the anchor's (points), mean over seeds; wall = training time in single",
             "runs (mean over seeds). Goal: mean Δ ≥ +0.3 over the pairs, no pair below −0.5, wall ≤ "
             f"{GOAL_WALL_RUNS}. ± s.e.: the standard error of the mean Δ over all (pair, seed) runs.",
             ""]
    pairs = list(cells)
    lines += ["| method | " + " | ".join(f"{p} {o}" for p, o in pairs)
              + " | mean Δ | worst pair | max wall | goal |",
              "|---|" + "---|" * (len(pairs) + 4)]
    summary = {}
    for spec in ["anchor (oracle: best test of 16)"] + methods:
        cells_txt, deltas, walls, every = [], [], [], []
        for (p, o) in pairs:
            ds, ws = [], []
            for s in cells[(p, o)]:
                _, a, oracle = anchor(results, p, o, s)
                if spec.startswith("anchor"):
                    ds.append((oracle - a) * 100)
                    continue
                r = _run(results, p, o, s, spec)
                if r is None:
                    continue
                ds.append((r["test_acc"] - a) * 100)
                ws.append(r["train_s"] / single_run(results, p, o, s))
            every += ds
            if ds:
                d = sum(ds) / len(ds)
                deltas.append(d)
                w = sum(ws) / len(ws) if ws else None
                if w is not None:
                    walls.append(w)
                cells_txt.append(f"{d:+.2f}" + (f" / {w:.2f}" if w is not None else "")
                                 + ("" if len(ds) == len(cells[(p, o)]) else f" ({len(ds)} seeds)"))
            else:
                cells_txt.append("–")
        if deltas:
            summary[spec] = (sum(deltas) / len(deltas), min(deltas), max(walls) if walls else None)
            mean, worst, wall = summary[spec]
            verdict = "–" if spec.startswith("anchor") else goal_verdict(mean, worst, wall)
            se = statistics.stdev(every) / math.sqrt(len(every)) if len(every) > 1 else float("nan")
            lines.append(f"| {spec} | " + " | ".join(cells_txt)
                         + f" | {mean:+.2f} ± {_fmt(se, 2, False)} | {worst:+.2f} | {_fmt(wall, 2, False)} "
                         f"| {verdict} |")
    lines.append("")
    for (p, o), seeds in cells.items():
        lines += [f"### {p} / {o}", "",
                  "| seed | anchor (its run) | oracle | single run s | "
                  + " | ".join(methods) + " |", "|---|---|---|---|" + "---|" * len(methods)]
        for s in seeds:
            spec, a, oracle = anchor(results, p, o, s)
            row = [str(s), f"{a*100:.2f} ({spec})", f"{oracle*100:.2f}", f"{single_run(results, p, o, s):.1f}"]
            for m in methods:
                r = _run(results, p, o, s, m)
                row.append("–" if r is None else
                           f"{r['test_acc']*100:.2f} ({(r['test_acc']-a)*100:+.2f}, "
                           f"{r['train_s']/single_run(results, p, o, s):.2f}) {_lrs(r)}".strip())
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines, summary


def goal_verdict(mean, worst, wall):
    """"met", or what misses: mean Δ < +0.3, a pair below −0.5, wall over the goal."""
    misses = []
    if mean < GOAL_MEAN_DELTA:
        misses.append(f"mean {mean:+.2f} < {GOAL_MEAN_DELTA:+.1f}")
    if worst < GOAL_WORST_DELTA:
        misses.append(f"a pair {worst:+.2f} < {GOAL_WORST_DELTA:+.1f}")
    if wall is None or wall > GOAL_WALL_RUNS:
        misses.append(f"wall {_fmt(wall, 2, False)} > {GOAL_WALL_RUNS}")
    return "met" if not misses else "no: " + "; ".join(misses)


def target_of(results, p, o, seeds):
    bests = [max(_run(results, p, o, s, spec)["curve"][-1]["val_acc"] for spec in GRIDS["decade grid"])
             for s in seeds]
    return scoring.median(bests)


def _curve(run):
    return [(c["t"], c["val_acc"]) for c in run["curve"]]


def time_to_target(results, cells, methods):
    names = list(GRIDS) + methods
    lines = ["## Time to target", "",
             "Target: median over seeds of the decade grid's best final validation accuracy.",
             "Time: training time to the first epoch end at or over the target, median over seeds",
             f"(seconds); budget {BUDGET_RUNS:g} single runs; grids run in sequence (largest LR first,",
             "constant before cosine) and stop at the first run that reaches the target. Speed-up:",
             "the decade grid's time (without the budget) over the method's. Score: AlgoPerf's area",
             "under the performance profile up to r = 4 (1 = fastest on every workload). Per",
             "workload: r (time over the fastest method's), the workload's share of the score",
             "max(0, 4 − r) / 3, and the speed-up ×.", ""]
    times, speedups, reference = {}, {}, {}
    rows = {}
    for (p, o), seeds in cells.items():
        target = target_of(results, p, o, seeds)
        unit = statistics.median(single_run(results, p, o, s) for s in seeds)
        budget = BUDGET_RUNS * unit
        per = {}
        for name in names:
            ts = []
            for s in seeds:
                if name in GRIDS:
                    runs = [_run(results, p, o, s, spec) for spec in GRIDS[name]]
                    ts.append(scoring.sequential_time_to_target(
                        [_curve(r) for r in runs], [r["train_s"] for r in runs], target, budget))
                else:
                    r = _run(results, p, o, s, name)
                    if r is None:
                        break
                    ts.append(scoring.time_to_target(_curve(r), target, budget))
            else:
                per[name] = scoring.median(ts)
        runs = [[_run(results, p, o, s, spec) for spec in GRIDS["decade grid"]] for s in seeds]
        ref = scoring.median(scoring.sequential_time_to_target(
            [_curve(r) for r in rr], [r["train_s"] for r in rr], target) for rr in runs)
        reference[(p, o)] = ref
        times[(p, o)] = per
        rows[(p, o)] = (target, unit)
    workloads = list(cells)
    lines += ["| workload | target | single run s | " + " | ".join(names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for w in workloads:
        target, unit = rows[w]
        lines.append(f"| {w[0]} {w[1]} | {target*100:.2f} | {unit:.1f} | "
                     + " | ".join(_fmt(times[w].get(n), 1, False) for n in names) + " |")
    lines += ["", "| method | score | " + " | ".join(f"{p} {o}" for p, o in workloads)
              + " | geometric-mean speed-up |", "|---|---|" + "---|" * (len(workloads) + 1)]
    ratios = {w: scoring.ratios({n: t for n, t in times[w].items()}) for w in workloads}
    for n in names:
        if not all(n in times[w] for w in workloads):
            continue
        rs = [ratios[w][n] for w in workloads]
        sp = [scoring.speedup(reference[w], times[w][n]) for w in workloads]
        speedups[n] = sp
        lines.append(f"| {n} | {scoring.score(rs):.2f} | "
                     + " | ".join(f"r {_fmt(r, 2, False)}, {scoring.score([r]):.2f}, ×{_fmt(x, 2, False)}"
                                  for r, x in zip(rs, sp))
                     + f" | ×{_fmt(scoring.geometric_mean(sp), 2, False)} |")
    lines.append("")
    return lines, {n: (scoring.geometric_mean(sp), scoring.score([ratios[w][n] for w in workloads]))
                   for n, sp in speedups.items()}


def levers(name):
    """(level shape, courses after the race, plan, finer LR?) of a race variant."""
    options = VARIANTS[name][0]
    if options is None:
        return "constant", "–", "–", "no"
    courses = options.get("courses", ("keep", "cosine"))
    finer = any(c[-1] in "+-~" for c in courses)
    return (options.get("level_shape", "constant"), " / ".join(courses) if courses else "–",
            options.get("plan", "final") if courses else "–", "yes" if finer else "no")


def ablation_table(methods, summary, speed):
    """One row per race variant: its levers, mean and worst Δ, wall, time-to-target figures."""
    lines = ["## Ablation of the levers", "",
             "Levers: the shape every LR candidate follows in the level race, the courses raced",
             "from the winner's point (a choice when more than one), the round plan, and whether",
             "a finer LR (half a decade around the winner) is raced. Δ and wall as above; speed-up",
             "and score from the time-to-target table.", "",
             "| variant | level shape | courses after the race | plan | finer LR | mean Δ | worst pair "
             "| max wall | score | speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in methods:
        if name not in VARIANTS or name not in summary:
            continue
        mean, worst, wall = summary[name]
        geo, sc = speed.get(name, (None, None))
        lines.append(f"| {name} | " + " | ".join(levers(name))
                     + f" | {mean:+.2f} | {worst:+.2f} | {_fmt(wall, 2, False)} | "
                     + ("–" if sc is None else f"{sc:.2f}") + " | "
                     + ("–" if geo is None else f"×{_fmt(geo, 2, False)}") + " |")
    lines.append("")
    return lines


def write(results, path, only=None):
    """Write the tables of `results` to `path`; `only`: the methods to tabulate (all if None)."""
    cells = _cells(results)
    methods = _methods(results, cells, only)
    lines = ["# Beyond the grid: races against the practitioner's grids, and time to target", "",
             "Written by `benchmarks/beyond_grid.py` from the runs in the `.json` beside this file.", "",
             "Commands (CPU; load average before and after):", ""]
    for c in results.get("commands", []):
        lines.append(f"- `{c['command']}` ({c['date']}, load {c.get('load_before', 0):.1f} → "
                     f"{c.get('load_after', float('nan')):.1f}; {c.get('machine', '')})")
    lines += ["", "Problems:", ""]
    for name, info in results.get("problems", {}).items():
        lines.append(f"- {name}: {info['describe']}; sizes train/val/test {info['sizes']}, "
                     f"batch {info['m']}, {info['epochs']} epochs")
    lines += ["", "Methods:", ""]
    for m in methods:
        lines.append(f"- `{m}`: " + (VARIANTS[m][1] if m in VARIANTS else OTHER_METHODS[m]))
    lines.append("")
    if cells:
        accuracy, summary = accuracy_tables(results, cells, methods)
        timing, speed = time_to_target(results, cells, methods)
        lines += accuracy + timing + ablation_table(methods, summary, speed)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
