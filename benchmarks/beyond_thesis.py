"""Ablation of the beyond-the-thesis SearchModel levers and the race against a fixed-LR grid.

For every (problem, optimizer) pair: the fixed-LR grid {1e-1, 1e-2, 1e-3, 1e-4}
(batch m, the recipe's epoch budget) and each variant (a SearchModel variant:
batch 2m split into m to train and m to validate; the race: batch m), the same
epoch budget, all in one process, on the same data and seed. Writes
`<out>/<name>.md` and `<out>/<name>.json` (`--name`, default "ablation").

Run (from the repository root):

    .venv/bin/python -m benchmarks.beyond_thesis \
        --pairs digits_mlp,digits_cnn --optimizers sgd,adam --out saved_runs/beyond_thesis

Target: test accuracy within 1 point of the grid's best, in at most half of
the grid's total wall time, with no learning rate given. Findings:
`docs/beyond_the_thesis.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

GRID = (1e-1, 1e-2, 1e-3, 1e-4)

# name: (SearchModel options, description). "thesis*" are the thesis's Methods.
VARIANTS = {
    "thesis_m1": (dict(method=1), "thesis Method 1: raw one-step trials, minimum"),
    "thesis_m3": (dict(method=3), "thesis Method 3: raw one-step trials, largest LR below pre-step loss"),
    "eff": (dict(trial_step="effective"),
            "effective trial step: one optimizer step at c x 1/(1-momentum) (SGD; Adam: x1 = raw)"),
    "eff_tol": (dict(trial_step="effective", selection="tolerant"),
                "effective step + tolerant selection (largest LR within 1 paired SE of the best)"),
    "h3": (dict(trial_horizon=3), "raw trial step repeated over a horizon of 3 optimizer steps"),
    "eff_h3": (dict(trial_step="effective", trial_horizon=3), "effective step over a horizon of 3"),
    "upd": (dict(trial_step="update"),
            "update trials: the actual update rescaled, w0 + c/lr_avg (w1 - w0); Method 1"),
    "upd_s": (dict(trial_step="update", smoothing=0.5), "update trials + log smoothing 0.5"),
    "upd_s_m3": (dict(trial_step="update", smoothing=0.5, method=3),
                 "update trials + smoothing, Method 3's rule"),
    "upd_s_frac": (dict(trial_step="update", smoothing=0.5, selection="fraction"),
                   "update trials + smoothing, fraction rule (>= 1/2 of the best gain)"),
    "upd_s_tol": (dict(trial_step="update", smoothing=0.5, selection="tolerant"),
                  "update trials + smoothing, tolerant rule (1 SE)"),
    "upd_s_te4": (dict(trial_step="update", smoothing=0.5, trial_every=4),
                  "update trials + smoothing, trials on every 4th step"),
    "upd_s_tv": (dict(trial_step="update", smoothing=0.5, train_validation_half=True),
                 "update trials + smoothing + a second step on the validation half (test-then-train)"),
    "upd_s_tv_te2": (dict(trial_step="update", smoothing=0.5, train_validation_half=True, trial_every=2),
                     "as upd_s_tv, trials on every 2nd step"),
    "upd_s_tv_te4": (dict(trial_step="update", smoothing=0.5, train_validation_half=True, trial_every=4),
                     "as upd_s_tv, trials on every 4th step"),
    "upd_h3_s_tv_te4": (dict(trial_step="update", trial_horizon=3, smoothing=0.5, train_validation_half=True,
                             trial_every=4),
                        "as upd_s_tv_te4, each trial moves 3 steps of the update (w0 + 3 c/lr_avg (w1 - w0))"),
    "upd_h10_s_tv_te4": (dict(trial_step="update", trial_horizon=10, smoothing=0.5, train_validation_half=True,
                              trial_every=4),
                         "as upd_s_tv_te4, each trial moves 10 steps of the update"),
    # Not a SearchModel: `keras_mcv.RaceModel`, which trains on whole batches of m.
    "race": (dict(model="race"),
             "learning-rate race: successive halving of the candidates over rounds of 1, 2, ... "
             "epochs, judged on pre-step (prequential) losses; whole batches of m (RaceModel)"),
}
DEFAULT_VARIANTS = ("thesis_m1,thesis_m3,eff,eff_tol,h3,upd,upd_s,upd_s_m3,upd_s_frac,upd_s_tol,"
                    "upd_s_te4,upd_s_tv,upd_s_tv_te2,upd_s_tv_te4")


def digits_mlp(input_shape, num_classes):
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="digits_mlp")


def problem(name, cifar_subset):
    """`(data, build_model, batch m, epochs)` of a pair's problem."""
    from keras_mcv import architectures, data

    if name in ("digits_mlp", "digits_cnn"):
        d = data.normalize(data.load_digits())
        build = digits_mlp if name == "digits_mlp" else architectures.digits_cnn
        return d, build, 64, 15
    if name == "cifar_cnn":
        d = data.normalize(data.load_cifar10(subset=cifar_subset))
        return d, architectures.cifar_small_cnn, 128, 10
    raise ValueError(f"unknown problem {name!r}")


def make_optimizer(kind, lr):
    """The ablation's optimizers: Keras's SGD (momentum 0.9) or Adam, as measured."""
    from keras_mcv import optimizers

    return optimizers.make_optimizer(kind, lr, momentum=0.9, momentum_form="keras")


def run_one(d, build, m, epochs, opt, seed, lr=None, options=None):
    """One run; returns test accuracy, wall time and (MCV) the LR per epoch."""
    import keras
    import numpy as np

    from keras_mcv import callbacks as mcv_callbacks
    from keras_mcv import models
    from keras_mcv.models import RaceModel

    t0, c0 = time.perf_counter(), time.process_time()
    keras.utils.set_random_seed(seed)
    net = build(d.input_shape, d.num_classes)
    if options is None:
        model, batch, cbs = net, m, []
        optimizer = make_optimizer(opt, lr)
    elif options.get("model") == "race":
        model = RaceModel.wrap(net, **{k: v for k, v in options.items() if k != "model"})
        batch, cbs = m, []
        optimizer = make_optimizer(opt, 1e-3)
    else:
        model = models.SearchModel.wrap(net, **options)
        batch, cbs = 2 * m, mcv_callbacks.default(patience=20)
        optimizer = make_optimizer(opt, 1e-3)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(d.x_train, d.y_train, batch_size=batch, epochs=epochs, shuffle=True,
                     verbose=0, callbacks=cbs)
    test = model.evaluate(d.x_test, d.y_test, verbose=0, return_dict=True)
    wall = time.perf_counter() - t0
    out = {"test_accuracy": float(test["accuracy"]), "test_loss": float(test["loss"]),
           "wall_s": wall, "cpu_s": time.process_time() - c0, "epochs_run": len(hist.history["loss"]),
           "final_train_loss": float(hist.history["loss"][-1])}
    if options is not None:
        out["lrs"] = [float(e["lr"]) for e in model.mcv_history]
        out["next_lr"] = float(model.mcv_history[-1]["next_lr"]) if model.mcv_history else None
        out["diverged"] = bool(not np.isfinite(out["final_train_loss"])
                               or out["epochs_run"] < epochs)
    return out


def interleave(grid, variants):
    """Grid runs spread evenly among the MCV runs, so load changes hit both alike."""
    jobs, step = [], max(1, round(len(variants) / len(grid)))
    variants = list(variants)
    for i, lr in enumerate(grid):
        jobs.append(lr)
        jobs.extend(variants[i * step:(i + 1) * step] if i < len(grid) - 1 else variants[i * step:])
    return jobs


def fmt_lrs(lrs):
    return " ".join(f"{x:.2g}" for x in lrs)


def _pair_stats(pair):
    g = pair["grid"]
    best_lr = max(g, key=lambda k: g[k]["test_accuracy"])
    return g[best_lr]["test_accuracy"], best_lr, sum(r["wall_s"] for r in g.values())


def _cpu_ratio(pair, r):
    total = sum(x.get("cpu_s", float("nan")) for x in pair["grid"].values())
    return r.get("cpu_s", float("nan")) / total


def _matching_pair(previous, pair, cifar_subset):
    """The pair of an earlier results file with the same problem, optimizer, seed and budget."""
    if pair["problem"] == "cifar_cnn" and f"--cifar-subset {cifar_subset}" not in previous["command"]:
        raise SystemExit(f"--grid-from {previous['command']!r} was not run with --cifar-subset {cifar_subset}.")
    for old in previous["pairs"]:
        if all(old[k] == pair[k] for k in ("problem", "optimizer", "seed", "epochs", "batch_m")):
            if len(old["grid"]) == len(GRID):
                return old
    raise SystemExit(f"--grid-from has no complete grid for {pair['problem']} / {pair['optimizer']} "
                     f"seed {pair['seed']}, {pair['epochs']} epochs.")


def write_markdown(results, path, command):
    lines = ["# Beyond the thesis: ablation of the SearchModel levers and the race", "",
             "Reproduce (repository root):", "", "```", command, "```", "",
             f"Machine: {results['machine']}. One process, runs in sequence, grid runs",
             "interleaved with MCV runs; timings are noisy (2 CPU cores shared with other jobs).",
             "SearchModel runs fit batches of 2m (m train / m validate, the thesis's convention, as",
             "in `keras-mcv run`); the grid fits batches of m: same epoch budget, so they take half",
             "as many gradient steps. The race (`RaceModel`) fits batches of m, as the grid. No LR is",
             "given to MCV runs (candidates 1e-1..1e-4). SGD has momentum 0.9; Adam has Keras",
             "defaults.", "",
             "Target: test accuracy >= grid best - 1 point AND wall time <= 0.5 x the grid's",
             "total wall time. Δ = MCV accuracy - grid best accuracy (points).", "",
             "Variants:", ""]
    for v in results["variants"]:
        opts = VARIANTS[v][0]
        where = ("`RaceModel`, batches of m" if opts.get("model") == "race"
                 else f"`SearchModel` options `{opts}`")
        lines.append(f"- `{v}`: {VARIANTS[v][1]} — {where}")
    lines.append("")
    # Summary: mean over seeds per pair.
    keys = []
    for pair in results["pairs"]:
        k = (pair["problem"], pair["optimizer"])
        if k not in keys:
            keys.append(k)
    lines += ["## Summary", "",
              "Mean over seeds: Δ accuracy points / wall-time ratio (CPU-time ratio). ✓: target met",
              "on every seed (wall time). CPU time (this process) is less sensitive to other jobs.", "",
              "| variant | " + " | ".join(f"{a} {b}" for a, b in keys) + " |",
              "|---|" + "---|" * len(keys)]
    for v in results["variants"]:
        cells = []
        for k in keys:
            ds, rs, cs, oks = [], [], [], []
            for pair in results["pairs"]:
                if (pair["problem"], pair["optimizer"]) != k or v not in pair["mcv"]:
                    continue
                best, _, total = _pair_stats(pair)
                r = pair["mcv"][v]
                d = (r["test_accuracy"] - best) * 100
                ds.append(d)
                rs.append(r["wall_s"] / total)
                cs.append(_cpu_ratio(pair, r))
                oks.append(d >= -1.0 and r["wall_s"] / total <= 0.5)
            if ds:
                mark = " ✓" if all(oks) else ""
                cells.append(f"{sum(ds)/len(ds):+.1f} / {sum(rs)/len(rs):.2f} "
                             f"({sum(cs)/len(cs):.2f}){mark}")
            else:
                cells.append("–")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines.append("")
    for pair in results["pairs"]:
        g = pair["grid"]
        best, best_lr, total = _pair_stats(pair)
        lines += [f"## {pair['problem']} / {pair['optimizer']} (seed {pair['seed']}, m = {pair['batch_m']}, "
                  f"{pair['epochs']} epochs)", "",
                  *([f"Grid reused from `{pair['grid_from']}` (another process: its wall times are not "
                     "side by side with these MCV runs).", ""] if pair.get("grid_from") else []),
                  "Grid: " + ", ".join(f"lr {k}: {r['test_accuracy']*100:.1f}% ({r['wall_s']:.1f}s)"
                                       for k, r in g.items()),
                  f"— best {best*100:.1f}% at lr {best_lr}, total {total:.1f}s.", ""]
        if "half_reference" in pair:
            h = pair["half_reference"]
            lines += [f"Reference: plain Keras at lr {h['lr']:g} for half the epochs (the MCV runs' "
                      f"number of gradient steps): {h['test_accuracy']*100:.1f}%.", ""]
        lines += ["| variant | test acc % | Δ | wall s | wall / grid total | CPU / grid CPU | target met "
                  "| LR per epoch |", "|---|---|---|---|---|---|---|---|"]
        for v, r in pair["mcv"].items():
            delta = (r["test_accuracy"] - best) * 100
            ratio = r["wall_s"] / total
            ok = "yes" if delta >= -1.0 and ratio <= 0.5 else "no"
            div = " (stopped early)" if r.get("diverged") else ""
            lines.append(f"| {v} | {r['test_accuracy']*100:.1f}{div} | {delta:+.1f} | {r['wall_s']:.1f} | "
                         f"{ratio:.2f} | {_cpu_ratio(pair, r):.2f} | {ok} | {fmt_lrs(r['lrs'])} |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default="digits_mlp,digits_cnn",
                   help="problems: digits_mlp, digits_cnn, cifar_cnn")
    p.add_argument("--optimizers", default="sgd,adam")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"any of {','.join(VARIANTS)}")
    p.add_argument("--seeds", default="0")
    p.add_argument("--cifar-subset", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=None, help="override every problem's budget")
    p.add_argument("--half-reference", action="store_true",
                   help="also train the grid's best LR for half the epochs (the MCV step count)")
    p.add_argument("--out", default="saved_runs/beyond_thesis")
    p.add_argument("--name", default="ablation", help="stem of the .md and .json files")
    p.add_argument("--grid-from", default=None,
                   help="reuse the fixed-LR grid (and half reference) of the same problem, optimizer, "
                   "seed and budget from this earlier results .json instead of rerunning it; the "
                   "tables then say so (its wall times come from that other process)")
    args = p.parse_args(argv)
    previous = None
    if args.grid_from:
        with open(args.grid_from) as f:
            previous = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}")
    command = ".venv/bin/python -m benchmarks.beyond_thesis " + " ".join(
        a if " " not in a else repr(a) for a in (argv if argv is not None else sys.argv[1:]))
    results = {"command": command, "variants": variants, "pairs": [],
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, CPU only"}
    json_path = os.path.join(args.out, args.name + ".json")
    for prob in args.pairs.split(","):
        d, build, m, epochs = problem(prob, args.cifar_subset)
        epochs = args.epochs or epochs
        for opt in args.optimizers.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                pair = {"problem": prob, "optimizer": opt, "seed": seed, "batch_m": m,
                        "epochs": epochs, "grid": {}, "mcv": {}}
                results["pairs"].append(pair)
                jobs = interleave(list(GRID), variants)
                if previous is not None:
                    old = _matching_pair(previous, pair, args.cifar_subset)
                    pair["grid"] = old["grid"]
                    if "half_reference" in old:
                        pair["half_reference"] = old["half_reference"]
                    pair["grid_from"] = args.grid_from
                    jobs = list(variants)
                for job in jobs:
                    if isinstance(job, float):
                        r = run_one(d, build, m, epochs, opt, seed, lr=job)
                        pair["grid"][f"{job:g}"] = r
                        print(f"{prob} {opt} seed{seed} grid lr={job:g}: acc {r['test_accuracy']:.4f} "
                              f"{r['wall_s']:.1f}s", flush=True)
                    else:
                        r = run_one(d, build, m, epochs, opt, seed, options=VARIANTS[job][0])
                        pair["mcv"][job] = r
                        print(f"{prob} {opt} seed{seed} {job}: acc {r['test_accuracy']:.4f} "
                              f"{r['wall_s']:.1f}s lrs {fmt_lrs(r['lrs'])}", flush=True)
                    with open(json_path, "w") as f:
                        json.dump(results, f, indent=1)
                pair["grid"] = {f"{lr:g}": pair["grid"][f"{lr:g}"] for lr in GRID}
                if args.half_reference and previous is None:
                    best_lr = max(GRID, key=lambda lr: pair["grid"][f"{lr:g}"]["test_accuracy"])
                    r = run_one(d, build, m, max(1, epochs // 2), opt, seed, lr=best_lr)
                    r["lr"] = best_lr
                    pair["half_reference"] = r
                    print(f"{prob} {opt} seed{seed} half-steps reference lr={best_lr:g}: "
                          f"acc {r['test_accuracy']:.4f}", flush=True)
                pair["mcv"] = {v: pair["mcv"][v] for v in variants}
                write_markdown(results, os.path.join(args.out, args.name + ".md"), command)
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    write_markdown(results, os.path.join(args.out, args.name + ".md"), command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
