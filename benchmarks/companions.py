"""The companion methods measured: adaptive Nesterov against scheduled SGD and CLR,
minibatch persistency, parameter EMA and augmentation, with accuracy against time.

Every arm trains the recipe's network on the same data, seed and epoch budget and
evaluates the test set after every epoch; the evaluation's time is measured and left
out of the training time, so "time" is training time only. Arms:

```
sgd_step           SGD, Nesterov momentum 0.5, LR 0.1 / 0.01 / 0.001 over the first 40% /
                   next 30% / last 30% of the epochs (PiecewiseConstantDecay)   [001, 3.4]
clr                SGD, Nesterov momentum 0.5, triangular CLR between 0.001 and 0.1,
                   half-cycle = a quarter of the budget: two whole cycles      [001, 3.5]
adaptive_nesterov  AdaptiveNesterovModel at the document's defaults (alpha 0.9, gamma 1,
                   clips [1e-4, 1e10] and [1e-3, 0.1]), no optimizer           [001, 3.3-3.4]
sgd                the recipe's SGD (LR 0.01, momentum 0.9): minibatch persistency K = 1
persistency2/5     the same, PersistencyModel K = 2 / 5                        [001, ch. 2]
ema                the same, use_ema=True; tested through SwapEMAWeights       [002, 5.1]
augment            the same, on the recipe's augmentation (flip, 4-pixel translation,
                   brightness/contrast jitter; Keras preprocessing layers)     [001, 2.4]
race               the learning-rate race (RaceModel) over the recipe's candidates, the
                   recipe's optimizer
```
`--record LABEL=PATH` adds a row from a finished run elsewhere: a run record (its test
accuracy and wall time; for a macro-CV grid, the winner's test accuracy and the whole
grid's time) or a random search's `random_search.json` (its best ensemble beside the
search's own pick, and the search's time). These rows have no per-epoch curve.
The step schedule's and CLR's range [0.001, 0.1] is adaptive Nesterov's step-size clip,
as in the document ("to have a fair comparison"); their SGD is PyTorch's (`TorchSGD`), the
document's framework, and the recipe's SGD runs in the recipe's momentum form. Writes `<out>/<name>.json` (every
arm's per-epoch test accuracy, loss, training time and LR; arms of earlier invocations
with the same name are kept, so arms can run one process at a time) and
`<out>/<name>.md` and `<out>/<name>.png` (test accuracy against training time).

Run (repository root), one arm per process under the shared lock:

    .venv/bin/python -m benchmarks.companions --recipe cifar10_small_cnn --subset 4000 \
        --epochs 10 --arms adaptive_nesterov --name cifar4000 --out saved_runs/companions

References: Mandatelli, Improved Training Methods for Neural Networks, 2018 (Figures
3.5 and 3.8; Tables 2.1-2.2); Bakhshi, Training Neural Networks (lecture 09), 5.1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

ARMS = ("sgd_step", "clr", "adaptive_nesterov", "sgd", "persistency2", "persistency5", "ema",
        "augment", "race")

LABELS = {
    "sgd_step": "SGD, step schedule 0.1/0.01/0.001 (Nesterov momentum 0.5)",
    "clr": "SGD, cyclical LR 0.001-0.1 (Nesterov momentum 0.5)",
    "adaptive_nesterov": "Adaptive Nesterov (alpha 0.9, step size clipped to [0.001, 0.1])",
    "sgd": "SGD lr 0.01 momentum 0.9 (persistency K = 1)",
    "persistency2": "SGD lr 0.01 momentum 0.9, persistency K = 2",
    "persistency5": "SGD lr 0.01 momentum 0.9, persistency K = 5",
    "ema": "SGD lr 0.01 momentum 0.9 + EMA of the weights (0.99)",
    "augment": "SGD lr 0.01 momentum 0.9 + augmentation",
    "race": "LR race over the recipe's candidate LRs (the recipe's optimizer)",
}


def _optimizer(arm, config, epochs, steps_per_epoch):
    import keras

    from keras_mcv import optimizers
    from keras_mcv.schedules import CyclicalLearningRate

    if arm == "sgd_step":
        boundaries = [int(0.4 * epochs + 0.5) * steps_per_epoch,
                      int(0.7 * epochs + 0.5) * steps_per_epoch]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [0.1, 0.01, 0.001])
        return optimizers.TorchSGD(schedule, momentum=0.5, nesterov=True)
    if arm == "clr":
        schedule = CyclicalLearningRate(1e-3, 0.1, step_size=max(1, epochs * steps_per_epoch // 4))
        return optimizers.TorchSGD(schedule, momentum=0.5, nesterov=True)
    if arm == "adaptive_nesterov":
        return None
    return optimizers.make_optimizer(config.optimizer, config.learning_rate,
                                     momentum=config.momentum, use_ema=arm == "ema",
                                     momentum_form=config.momentum_form)


def _wrap(arm, net, candidates=None):
    from keras_mcv.models.adaptive_nesterov import AdaptiveNesterovModel
    from keras_mcv.models.persistency import PersistencyModel

    if arm == "adaptive_nesterov":
        return AdaptiveNesterovModel.wrap(net)
    if arm.startswith("persistency"):
        return PersistencyModel.wrap(net, persistency=int(arm[len("persistency"):]))
    if arm == "race":
        from keras_mcv.models.race import RaceModel

        return RaceModel.wrap(net, **({"candidates": candidates} if candidates else {}))
    return net


def run_arm(arm, config, data, epochs, m, seed):
    """Train one arm; per epoch: test accuracy and loss, cumulative training time, LR."""
    import keras
    import numpy as np

    from keras_mcv import experiment, optimizers
    from keras_mcv.data import make_dataset

    steps_per_epoch = math.ceil(len(data.y_train) / m)
    keras.utils.set_random_seed(seed)
    model = _wrap(arm, config.build_model(data.input_shape, data.num_classes), config.candidates)
    optimizer = _optimizer(arm, config, epochs, steps_per_epoch)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if optimizer is not None:
        optimizers.build_optimizer(model)
    if arm == "augment":
        fit_data = {"x": make_dataset(data.x_train, data.y_train, m, shuffle=True,
                                      augment=experiment.check_augment(config), seed=seed),
                    "shuffle": False}
    else:
        fit_data = {"x": data.x_train, "y": data.y_train, "batch_size": m, "shuffle": True}

    class EachEpoch(keras.callbacks.Callback):
        """Test after each epoch, timed apart from training (EMA: the averaged weights)."""

        def on_train_begin(self, logs=None):
            self.train_s, self.rows = 0.0, []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.train_s += time.perf_counter() - self.t0
            swap = [keras.callbacks.SwapEMAWeights()] if arm == "ema" else []
            test = self.model.evaluate(data.x_test, data.y_test, batch_size=256, verbose=0,
                                       return_dict=True, callbacks=swap)
            lr = logs.get("lr")
            if lr is None:
                opt = self.model.optimizer
                lr = opt.learning_rate  # the value at the optimizer's current step
            self.rows.append({"epoch": epoch + 1, "train_s": self.train_s,
                              "train_loss": float(logs["loss"]), "lr": float(np.asarray(lr)),
                              "test_loss": float(test["loss"]),
                              "test_accuracy": float(test["accuracy"])})

    each = EachEpoch()
    load_before = os.getloadavg()
    start = time.perf_counter()
    model.fit(**fit_data, epochs=epochs, verbose=0, callbacks=[each])
    wall = time.perf_counter() - start
    return {"arm": arm, "label": LABELS[arm], "epochs": each.rows, "wall_s": wall,
            "train_s": each.train_s, "load_before": load_before, "load_after": os.getloadavg(),
            "final": each.rows[-1] if each.rows else None}


def summarize(result, target):
    """Best test accuracy (and its epoch and time), lowest test loss, time to `target`."""
    rows = result["epochs"]
    finite = [r for r in rows if math.isfinite(r["test_loss"])]
    best = max(rows, key=lambda r: (r["test_accuracy"], -r["epoch"]))
    low = min(finite, key=lambda r: r["test_loss"]) if finite else None
    reached = next((r for r in rows if r["test_accuracy"] >= target), None)
    return best, low, reached


def record_row(label, path):
    """A table row from a finished run elsewhere: a run record or a random search's result.

    Returns a dict with the label, the source, the test accuracy, the time it
    took and, for a random search, its best ensemble's gain over the search's pick.
    """
    with open(path) as f:
        record = json.load(f)
    kind = record.get("format", "")
    if kind.startswith("keras_mcv.run/"):
        from keras_mcv import records

        try:
            record = records.read_record(path)
        except records.RunRecordError as e:
            raise SystemExit(str(e)) from None
    row = {"label": label, "path": path, "wall_s": record.get("wall_time_s")}
    if kind.startswith("keras_mcv.run/"):
        if record.get("status") != "complete":
            raise SystemExit(f"{path}: the run is {record.get('status')!r}, not complete.")
        row.update(accuracy=record["test"]["accuracy"], source="run record",
                   epochs=len(record.get("epochs") or ()))
        if record.get("kind") == "macro":
            row["source"] = "macro-CV grid: the winner's test accuracy, the whole grid's time"
        return row
    if kind.startswith("keras_mcv.random_search/"):
        ensembles = record.get("ensembles") or []
        if not ensembles:
            raise SystemExit(f"{path}: the random search kept no ensembles; run it with "
                             "--ensemble K (K >= 2).")
        best = max(ensembles, key=lambda e: (e["accuracy"], -e["k"]))
        row.update(accuracy=best["accuracy"], single=best["single_accuracy"],
                   gain=best["gain"], k=best["k"],
                   source=f"random search: ensemble of the top {best['k']} "
                          f"(the search's pick alone {100 * best['single_accuracy']:.2f}%, "
                          f"gain {100 * best['gain']:+.2f}), the whole search's time")
        return row
    raise SystemExit(f"{path} is neither a run record nor a random search's result "
                     f"(format {kind!r}).")


def parse_record_args(values):
    """`LABEL=PATH` pairs, each checked to exist."""
    pairs = []
    for value in values or ():
        label, sep, path = value.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--record takes LABEL=PATH, got {value!r}.")
        if not os.path.exists(path):
            raise SystemExit(f"--record {label}: no file at {path}.")
        pairs.append((label, path))
    return pairs


def write_markdown(results, path, meta, records=None):
    order = [a for a in ARMS if a in results]
    best_of = {a: max(r["test_accuracy"] for r in results[a]["epochs"]) for a in order}
    target = min(best_of.values()) if best_of else 0.0
    lines = [
        f"# Companion methods: {meta['recipe']}, {meta['train_examples']} training images, "
        f"{meta['epochs']} epochs",
        "",
        "CPU only (2 cores, shared). Commands, commit, date and load: `README.md` beside "
        "this file. Test set evaluated after every epoch, its time left out: \"time\" is "
        "training time.",
        "",
        f"Target for \"time to target\": {100 * target:.2f}% test accuracy, the lowest of the "
        "arms' best accuracies (an accuracy every arm reaches).",
        "",
        "| Arm | Best test acc. | at epoch | at time | Min test loss (epoch, time) "
        "| Time to target | Final test acc. | Training time | Load (1-min avg, before/after) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in order:
        r = results[arm]
        best, low, reached = summarize(r, target)
        low_text = ("–" if low is None else
                    f"{low['test_loss']:.3f} ({low['epoch']}, {low['train_s']:.0f}s)")
        lines.append(
            f"| {r['label']} | {100 * best['test_accuracy']:.2f} | {best['epoch']} "
            f"| {best['train_s']:.0f}s | {low_text} "
            f"| {'–' if reached is None else format(reached['train_s'], '.0f') + 's'} "
            f"| {100 * r['final']['test_accuracy']:.2f} | {r['train_s']:.0f}s "
            f"| {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |"
        )
    if records:
        lines += ["", "Rows from runs elsewhere (same recipe and test set; no per-epoch curve):",
                  "", "| Row | Test acc. | Time | Source |", "|---|---|---|---|"]
        for row in records.values():
            wall = "–" if row.get("wall_s") is None else f"{row['wall_s']:.0f}s"
            lines.append(f"| {row['label']} | {100 * row['accuracy']:.2f} | {wall} "
                         f"| {row['source']} (`{row['path']}`) |")
    lines += ["", "Per epoch (test accuracy %, LR or mean step size):", ""]
    for arm in order:
        cells = ", ".join(f"{100 * e['test_accuracy']:.1f} ({e['lr']:.3g})"
                          for e in results[arm]["epochs"])
        lines.append(f"- `{arm}`: {cells}")
    from keras_mcv import records as run_records

    run_records.write_atomic(path, lambda f: f.write("\n".join(lines) + "\n"))


def plot(results, path, meta, records=None):
    """Test accuracy against training time, one line per arm; other runs as points."""
    from matplotlib.figure import Figure  # Figure + savefig: Agg, no pyplot state.

    figure = Figure(figsize=(7.5, 4.5))
    ax = figure.add_subplot()
    for arm in [a for a in ARMS if a in results]:
        rows = results[arm]["epochs"]
        ax.plot([r["train_s"] for r in rows], [100 * r["test_accuracy"] for r in rows],
                marker=".", label=arm)
    for row in (records or {}).values():
        if row.get("wall_s") is not None:
            ax.scatter([row["wall_s"]], [100 * row["accuracy"]], marker="*", s=80,
                       label=row["label"])
    ax.set_xlabel("training time (s, CPU)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{meta['recipe']}, {meta['train_examples']} training examples, "
                 f"{meta['epochs']} epochs")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def save_arm(json_path, meta, arm=None, result=None, record_rows=()):
    """Merge one arm's result (and record rows) into `json_path` as it is now on disk.

    The file is read at write time, not at start, so arms run by separate
    processes one after another all stay; other settings are refused.
    """
    from keras_mcv import records as run_records

    saved = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            saved = json.load(f)
    saved.setdefault("runs", {})
    saved.setdefault("records", {})
    if saved.get("meta") not in (None, meta):
        raise SystemExit(f"{json_path} holds runs of other settings {saved['meta']}; "
                         "use another --name.")
    saved["meta"] = meta
    if arm is not None:
        saved["runs"][arm] = result
    for row in record_rows:
        saved["records"][row["label"]] = row
    run_records.write_atomic(json_path, lambda f: json.dump(saved, f, indent=1))
    return saved


def main(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.companions", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="digits_small_cnn")
    p.add_argument("--subset", type=int, default=None, help="training examples (stratified)")
    p.add_argument("--data", default=None, help="data path. Defaults to the recipe's")
    p.add_argument("--epochs", type=int, default=None, help="defaults to the recipe's")
    p.add_argument("--batch-size", type=int, default=None, help="defaults to the recipe's")
    p.add_argument("--arms", default=",".join(a for a in ARMS if a != "augment"),
                   help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--record", action="append", metavar="LABEL=PATH",
                   help="a row from a run record or a random search's random_search.json "
                   "(repeatable); kept in the JSON for later invocations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="companions")
    p.add_argument("--out", default="runs/companions")
    args = p.parse_args(argv)

    import recipes

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    record_rows = [record_row(label, path) for label, path in parse_record_args(args.record)]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    config = recipes.get_config(args.recipe)
    if "augment" in arms:
        from keras_mcv import experiment

        try:
            experiment.check_augment(config)  # refused (digits) before anything trains
        except ValueError as e:
            p.error(str(e))
    epochs = args.epochs or config.epochs
    m = args.batch_size or config.batch_size
    data = config.load_data(args.data or config.data_path, args.subset)
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, args.name + ".json")
    meta = {"recipe": config.name, "train_examples": int(len(data.y_train)),
            "test_examples": int(len(data.y_test)), "epochs": epochs, "batch_m": m,
            "seed": args.seed}
    saved = save_arm(json_path, meta, record_rows=record_rows)  # refuses other settings now
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
        # The code, not the records this writes, decides whether the commit reproduces the run.
        changed = subprocess.run(["git", "status", "--porcelain", "--", "benchmarks", "keras_mcv",
                                  "recipes"], capture_output=True, text=True, check=False).stdout
        commit += " with uncommitted code changes" if changed.strip() else ""
    except OSError:
        commit = None
    for arm in arms:
        print(f"{arm} ...", flush=True)
        result = run_arm(arm, config, data, epochs, m, args.seed)
        result.update(command="python -m benchmarks.companions " + " ".join(argv or sys.argv[1:]),
                      commit=commit, date=datetime.date.today().isoformat(),
                      machine=f"{platform.machine()}, {os.cpu_count()} CPUs, CPU only")
        saved = save_arm(json_path, meta, arm, result)
        last = result["final"]
        print(f"{arm}: final test accuracy {100 * last['test_accuracy']:.2f}%, training "
              f"{result['train_s']:.1f}s", flush=True)
    write_markdown(saved["runs"], os.path.join(args.out, args.name + ".md"), meta,
                   saved.get("records"))
    plot(saved["runs"], os.path.join(args.out, args.name + ".png"), meta, saved.get("records"))
    print(f"wrote {json_path}, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
