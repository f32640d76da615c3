"""What judging trials on a sub-sample of the validation half does to decisions and cost.

`trial_batch_size` evaluates the pre-step loss and every candidate's loss on
the first `t` examples of the (shuffled) validation half instead of all `m`:
trial forwards cost `t / m` as much, and every decision reads a noisier loss.
For each method and `t`, on the same data and seeds, in one process, this runs
`keras_mcv.experiment.run_method` and tabulates test accuracy, wall time, the
LR chosen per epoch (SearchModel) or the discard rate (VotingModel), and how
many epoch decisions equal those of the run on the whole half.

Run (from the repository root):

    .venv/bin/python -m benchmarks.trial_batch_size --recipe digits_small_cnn \
        --methods search1,voting,tuned --fractions 1,0.25,0.125 --seeds 0,1 \
        --out saved_runs/benchmarks/trial_batch_size

Writes `<out>/<recipe>/*.json` (run records) and `<out>/<recipe>.md` (table).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time


def _lr_text(record) -> str:
    lrs = [e.get("lr") for e in record.get("epochs", [])]
    return ", ".join(f"{v:.2g}" for v in lrs if v is not None)


def _discard_text(record) -> str:
    rates = [(e.get("logs") or {}).get("discard_rate") for e in record.get("epochs", [])]
    rates = [r for r in rates if r is not None]
    return f"{rates[0]:.2f} → {rates[-1]:.2f}" if rates else "–"


def _same_decisions(record, reference) -> str:
    """Epochs whose LR equals the whole-half run's (SearchModel), as `k/n`."""
    a = [e.get("lr") for e in record.get("epochs", [])]
    b = [e.get("lr") for e in reference.get("epochs", [])]
    n = min(len(a), len(b))
    if not n or a[0] is None or record["epochs"][0].get("candidates") is None:
        return "–"  # not a SearchModel: its LR is not an epoch decision
    same = sum(1 for x, y in zip(a[:n], b[:n]) if y is not None and math.isclose(x, y, rel_tol=1e-9))
    return f"{same}/{n}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="digits_small_cnn")
    parser.add_argument("--methods", default="search1,voting,tuned")
    parser.add_argument("--fractions", default="1,0.25,0.125",
                        help="trial_batch_size as fractions of the gradient batch m; 1 = the whole half.")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default="saved_runs/benchmarks/trial_batch_size")
    args = parser.parse_args(argv)

    import recipes
    from keras_mcv import experiment

    config = recipes.get_config(args.recipe)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        experiment.check_method(method)
        if method == "baseline":
            raise SystemExit("trial_batch_size applies to the MCV methods, not the baseline.")
    fractions = [float(f) for f in args.fractions.split(",")]
    if any(not 0 < f <= 1 for f in fractions):
        raise SystemExit(f"--fractions must be in (0, 1], got {args.fractions}.")
    seeds = [int(s) for s in args.seeds.split(",")]
    m = config.batch_size
    data = config.load_data(args.data, args.subset)
    started = time.strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    rows = []
    for seed in seeds:
        for method in methods:
            reference = None
            for fraction in fractions:
                tbs = None if fraction == 1 else max(1, round(fraction * m))
                out = os.path.join(args.out, f"seed{seed}")
                record = experiment.run_method(
                    config, method, epochs=args.epochs, data=data, seed=seed, verbose=0,
                    trial_batch_size=tbs, out_dir=out,
                )
                reference = reference or record
                rows.append({
                    "seed": seed, "method": method, "tbs": tbs or m, "acc": record["test"]["accuracy"],
                    "wall": record["wall_time_s"], "lrs": _lr_text(record),
                    "discard": _discard_text(record), "same": _same_decisions(record, reference),
                    "ref_wall": reference["wall_time_s"],
                })
                print(f"seed {seed} {method} tbs={tbs or m}: acc {rows[-1]['acc']:.4f} "
                      f"wall {rows[-1]['wall']:.0f}s", file=sys.stderr, flush=True)
    lines = [
        f"# trial_batch_size on {config.name}",
        "",
        f"Run {started}, {time.perf_counter() - t0:.0f} s in all; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, **CPU only**. Gradient batch m = {m} (MCV fits 2m; the "
        f"validation half has m = {m} examples), {len(data.y_train)} training examples, "
        f"{args.epochs or config.epochs} epochs, seeds {args.seeds}. Reproduce:",
        "",
        "```",
        "python -m benchmarks.trial_batch_size " + " ".join(argv if argv is not None else sys.argv[1:]),
        "```",
        "",
        "`same LRs`: epochs whose LR equals the whole-half run's (same method and seed). "
        "`wall / whole half`: wall time over the whole-half run's, same process.",
        "",
        "| seed | method | trial batch | test acc. | wall / whole half | same LRs | LR per epoch | discard rate (first → last epoch) |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['method']} | {r['tbs']} | {100 * r['acc']:.2f} | "
            f"{r['wall'] / r['ref_wall']:.2f} | {r['same']} | {r['lrs']} | {r['discard']} |"
        )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{config.name}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
