"""Beyond the grid: the races against the practitioner's grids, and time to target.

For every (problem, optimizer, seed): the half-decade grids {3e-1, 1e-1,
3e-2, ... 1e-4} with a constant LR and with cosine decay to zero over the
budget (the practitioner's anchor: the better of the two, chosen by final
validation accuracy), the learning-rate race, the course race's variants,
and the other methods of the time-to-target study. Every run records its
validation accuracy after every epoch against its training time (time spent
on validation excluded), and its test accuracy at the end. Results go to
`<out>/<name>.json` (runs already there are not run again) and tables to
`<out>/<name>.md`.

Run (repository root; CPU):

    .venv/bin/python -m benchmarks.beyond_grid --problems digits_mlp,digits_cnn \
        --optimizers sgd,adam --seeds 0,1,2 --methods grid,race,c_keep_cos --out saved_runs/beyond_grid

or `keras-mcv bench grid ...`. Scoring: `benchmarks.scoring`; findings:
`docs/beyond_the_grid.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

HALF_DECADES = (3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
DECADES = (1e-1, 1e-2, 1e-3, 1e-4)
BUDGET_RUNS = 3.0
"""Time-to-target budget, in single runs (AlgoPerf's self-tuning budget is 3x)."""
GOAL_WALL_RUNS = 2.4
"""The wall-time goal of the race, in single runs (0.15 of the 16-run anchor grids)."""

# name: (CourseRaceModel options, description). "race" is today's RaceModel.
VARIANTS = {
    "race": (None, "RaceModel: successive halving of 1e-1..1e-4, then the winner held"),
    "race_cos": (dict(courses=(), level_shape="cosine"),
                 "the race with every candidate on cosine to zero over the budget"),
    "c_keep_cos": (dict(courses=("keep", "cosine")),
                   "race, then keep vs cosine to zero over the rest, one round to the end"),
    "c_cos": (dict(courses=("cosine",)), "race, then cosine to zero over the rest (no choice)"),
    "c_cos_cos~": (dict(courses=("cosine", "cosine~")),
                   "race, then cosine from the winner vs from half a decade toward the runner-up"),
    "c_keep_keep~": (dict(courses=("keep", "keep~")),
                     "race, then the winner vs half a decade toward the runner-up, constant"),
    "w_keep_cos": (dict(level_shape="warmup", courses=("keep", "cosine")),
                   "as c_keep_cos, with a linear warm-up over round 1"),
    "h_cos_cos~": (dict(plan="half", courses=("cosine", "cosine~")),
                   "race, then cosine from the winner vs half a decade toward the runner-up, "
                   "over half the epochs left; the winner alone on the rest"),
    "h_cos3": (dict(plan="half", courses=("cosine", "cosine-", "cosine+")),
               "race, then cosine from the winner and half a decade below and above, over half "
               "the epochs left"),
    "rc_keep~": (dict(level_shape="cosine", plan="half", courses=("keep", "keep~")),
                 "race on cosine-to-zero courses, then the winner's course vs half a decade toward "
                 "the runner-up, over half the epochs left"),
    "rc_keep3": (dict(level_shape="cosine", plan="half", courses=("keep", "keep-", "keep+")),
                 "race on cosine-to-zero courses, then the winner's course and half a decade below "
                 "and above, over half the epochs left"),
    "d_keep_cos": (dict(plan="doubling", courses=("keep", "cosine")),
                   "race, then keep vs cosine in rounds of 4, 8 ... epochs"),
    "d_four": (dict(plan="doubling", courses=("keep", "cosine", "step", "seq3")),
               "race, then keep / cosine / step down / seq3 in rounds of 4, 8 ... epochs"),
}
OTHER_METHODS = {
    "sf": "ScheduleFreeAdamW at its defaults (keras_mcv's, x read before the step), evaluated at x",
    "sf_race": "the learning-rate race over ScheduleFreeAdamW's LR (1e-1..1e-4), evaluated at x",
    "plateau": "Adam 1e-3 with ReduceLROnPlateau on validation loss (factor 0.1, patience 2)",
    "thesis": "thesis Method 1 (SearchModel) with its own optimizer, PyTorch-form SGD momentum 0.9",
    "clr": "cyclical LR (triangular) with bounds from the LR range test",
    "race_plateau": "RaceModel, then ReduceLROnPlateau on validation loss from its winner (the "
                    "plateau method's rule: factor 0.1, patience 2)",
    "nesterov": "adaptive Nesterov (AdaptiveNesterovModel: Polyak's step size every step) at the "
                "document's defaults",
}
PLATEAU_RULE = {"monitor": "val_loss", "factor": 0.1, "patience": 2}
"""`ReduceLROnPlateau`'s settings in `plateau` and `race_plateau` (one rule for both)."""
OWN_OPTIMIZER = ("sf", "sf_race", "plateau", "thesis", "nesterov")
"""Methods that bring their own optimizer: run once per problem and seed."""


# ------------------------------------------------------------------ problems


def digits_mlp(input_shape, num_classes):
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="digits_mlp")


def load_problem(name, cifar_train, cifar_val, epochs=None):
    """`dict(data=(x_tr, y_tr, x_val, y_val, x_te, y_te), build, m, epochs, describe)`."""
    from sklearn.model_selection import train_test_split

    from keras_mcv import architectures, data

    if name in ("digits_mlp", "digits_cnn"):
        d = data.normalize(data.load_digits())
        val = 0.2
        build = digits_mlp if name == "digits_mlp" else architectures.digits_cnn
        m, default_epochs = 64, 15
        describe = ("scikit-learn digits: the training split less 20% held out for validation "
                    "(stratified), the 360-image test split")
    elif name == "cifar_cnn":
        d = data.normalize(data.load_cifar10(subset=cifar_train + cifar_val))
        val = cifar_val
        build = architectures.cifar_small_cnn
        m, default_epochs = 128, 8
        describe = (f"CIFAR-10: {cifar_train:,} training and {cifar_val:,} validation images (a "
                    "stratified subset of the training set), the full 10,000-image test set")
    else:
        raise ValueError(f"unknown problem {name!r}; use digits_mlp, digits_cnn or cifar_cnn")
    x_tr, x_val, y_tr, y_val = train_test_split(
        d.x_train, d.y_train, test_size=val, stratify=d.y_train, random_state=0)
    return {"data": (x_tr, y_tr, x_val, y_val, d.x_test, d.y_test), "build": build, "m": m,
            "epochs": epochs or default_epochs, "describe": describe,
            "input_shape": d.input_shape, "num_classes": d.num_classes,
            "sizes": [int(len(y_tr)), int(len(y_val)), int(len(d.y_test))]}


def make_optimizer(kind, lr, schedule=None):
    import keras

    from keras_mcv import optimizers

    rate = schedule if schedule is not None else lr
    if kind == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=0.9)
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate=rate)
    if kind == "torch_sgd":
        return optimizers.TorchSGD(learning_rate=rate, momentum=0.9)
    if kind == "sf":
        return optimizers.ScheduleFreeAdamW()
    raise ValueError(kind)


# ---------------------------------------------------------------------- runs


def _clock_callback(start):
    import keras

    class Clock(keras.callbacks.Callback):
        """Training time at every epoch end, the time spent validating left out."""

        def __init__(self):
            super().__init__()
            self.curve, self.eval_time, self._t = [], 0.0, None

        def on_test_begin(self, logs=None):
            self._t = time.perf_counter()

        def on_test_end(self, logs=None):
            self.eval_time += time.perf_counter() - self._t

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            lr = logs.get("lr")
            if lr is None:
                opt = self.model.optimizer
                lr = float(opt.learning_rate.numpy()) if hasattr(opt.learning_rate, "numpy") else None
            self.curve.append({
                "epoch": epoch + 1,
                "t": time.perf_counter() - start - self.eval_time,
                "val_acc": float(logs.get("val_accuracy", float("nan"))),
                "val_loss": float(logs.get("val_loss", float("nan"))),
                "loss": float(logs.get("loss", float("nan"))),
                "lr": None if lr is None else float(lr),
            })

    return Clock()


def run_one(problem, optimizer, seed, spec):
    """Train one run; returns its record (curve, test accuracy, times, LR history)."""
    import keras

    from keras_mcv import callbacks as mcv_callbacks

    x_tr, y_tr, x_val, y_val, x_te, y_te = problem["data"]
    epochs, m = problem["epochs"], problem["m"]
    steps = math.ceil(len(y_tr) / m)
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    net = problem["build"](problem["input_shape"], problem["num_classes"])
    cbs, batch, extra = [], m, {}
    kind, _, arg = spec.partition(":")
    if kind in ("const", "cos"):
        lr = float(arg)
        schedule = None
        if kind == "cos":
            schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps, alpha=0.0)
        model, opt = net, make_optimizer(optimizer, lr, schedule)
    elif kind in VARIANTS:
        options = VARIANTS[kind][0]
        if options is None:
            from keras_mcv.models import RaceModel

            model = RaceModel.wrap(net)
        else:
            from keras_mcv.models.course_race import CourseRaceModel

            model = CourseRaceModel.wrap(net, **options)
        opt = make_optimizer(optimizer, 1e-3)
    elif kind == "sf":
        model, opt = net, make_optimizer("sf", None)
        cbs.append(mcv_callbacks.ScheduleFreeEvaluation())
    elif kind == "sf_race":
        from keras_mcv.models import RaceModel

        model, opt = RaceModel.wrap(net), make_optimizer("sf", None)
        cbs.append(mcv_callbacks.ScheduleFreeEvaluation())
    elif kind == "plateau":
        model, opt = net, make_optimizer("adam", 1e-3)
        cbs.append(keras.callbacks.ReduceLROnPlateau(**PLATEAU_RULE))
    elif kind == "race_plateau":
        from keras_mcv.models import RaceModel

        # RaceModel hands the optimizer's LR to the user's callbacks once the race has
        # ended; a reduction while it runs ends the race at the leader (documented there).
        model, opt = RaceModel.wrap(net), make_optimizer(optimizer, 1e-3)
        cbs.append(keras.callbacks.ReduceLROnPlateau(**PLATEAU_RULE))
    elif kind == "thesis":
        from keras_mcv.models import SearchModel

        model, opt = SearchModel.wrap(net, method=1), make_optimizer("torch_sgd", 1e-3)
        batch = 2 * m
        cbs += mcv_callbacks.default(patience=20)
    elif kind == "nesterov":
        from keras_mcv.models.adaptive_nesterov import AdaptiveNesterovModel

        model, opt = AdaptiveNesterovModel.wrap(net), None
    elif kind == "clr":
        from keras_mcv import range_test, schedules

        net.compile(optimizer=make_optimizer(optimizer, 1e-3), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
        found = range_test.lr_find(net, x_tr, y_tr, batch_size=m)
        bounds = found.bounds or (found.suggestion / 10.0, found.suggestion)
        cycles = max(1, epochs // 4)
        step_size = epochs * steps / (2 * cycles)
        schedule = schedules.CyclicalLearningRate(bounds[0], bounds[1], step_size)
        model, opt = net, make_optimizer(optimizer, None, schedule)
        extra["clr_bounds"] = [float(b) for b in bounds]
        extra["clr_cycles"] = cycles
    else:
        raise ValueError(f"unknown method {spec!r}")
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if opt is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    clock = _clock_callback(start)
    hist = model.fit(x_tr, y_tr, batch_size=batch, epochs=epochs, shuffle=True, verbose=0,
                     validation_data=(x_val, y_val), validation_batch_size=256,
                     callbacks=cbs + [clock])
    train_s = time.perf_counter() - start - clock.eval_time
    test = model.evaluate(x_te, y_te, verbose=0, return_dict=True, batch_size=256)
    out = {"spec": spec, "optimizer": optimizer, "seed": seed, "curve": clock.curve,
           "train_s": train_s, "wall_s": time.perf_counter() - start,
           "test_acc": float(test["accuracy"]), "test_loss": float(test["loss"]),
           "epochs_run": len(hist.history["loss"]), **extra}
    history = getattr(model, "mcv_history", None)
    if history:
        out["history"] = [{k: e.get(k) for k in ("epoch", "lr", "race_round", "courses", "survivors",
                                                   "survivor_courses", "candidates",
                                                   "race_ended")}
                          for e in history]
    return out


# ------------------------------------------------------------------- results


def key(problem, optimizer, seed, spec):
    own = spec.split(":")[0] in OWN_OPTIMIZER
    return f"{problem}|{'own' if own else optimizer}|{seed}|{spec}"


def expand(methods):
    """Method names -> run specs."""
    specs = []
    for name in methods:
        if name == "grid":
            specs += [f"const:{lr:g}" for lr in HALF_DECADES] + [f"cos:{lr:g}" for lr in HALF_DECADES]
        elif name in VARIANTS or name in OTHER_METHODS:
            specs.append(name)
        else:
            raise SystemExit(f"unknown method {name!r}: use grid, {', '.join(VARIANTS)}, "
                             f"{', '.join(OTHER_METHODS)}")
    return specs


def main(argv=None):
    p = argparse.ArgumentParser(prog="keras-mcv bench grid", description=__doc__.splitlines()[0])
    p.add_argument("--problems", default="digits_mlp,digits_cnn",
                   help="digits_mlp, digits_cnn, cifar_cnn. Defaults to the digits pair.")
    p.add_argument("--optimizers", default="sgd,adam", help="Defaults to sgd,adam.")
    p.add_argument("--seeds", default="0,1,2", help="Defaults to 0,1,2.")
    p.add_argument("--methods", default="grid,race,c_keep_cos",
                   help="grid (the 16 anchor runs), race variants "
                   f"({', '.join(VARIANTS)}), others ({', '.join(OTHER_METHODS)}).")
    p.add_argument("--cifar-train", type=int, default=2000, help="Defaults to 2000.")
    p.add_argument("--cifar-val", type=int, default=1000, help="Defaults to 1000.")
    p.add_argument("--epochs", type=int, default=None, help="override every problem's budget")
    p.add_argument("--out", default="saved_runs/beyond_grid")
    p.add_argument("--name", default="runs", help="stem of the .json and .md files")
    p.add_argument("--report-only", action="store_true", help="write the tables, run nothing")
    p.add_argument("--tabulate", default=None,
                   help="the methods to put in the tables (comma-separated; the grids always). "
                   "Defaults to every method in the file. The scores depend on which methods "
                   "compete: the profile's ratios are to the fastest of them.")
    p.add_argument("--table", default=None, help="the tables' path. Defaults to <out>/<name>.md.")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, args.name + ".json")
    results = {"runs": {}, "problems": {}, "commands": []}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    specs = expand(args.methods.split(","))
    command = "keras-mcv bench grid " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.report_only:
        results["commands"].append({"command": command, "date": time.strftime("%Y-%m-%d %H:%M"),
                                    "load_before": os.getloadavg()[0],
                                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, CPU only"})
        for name in args.problems.split(","):
            problem = load_problem(name, args.cifar_train, args.cifar_val, args.epochs)
            results["problems"][name] = {"epochs": problem["epochs"], "m": problem["m"],
                                         "sizes": problem["sizes"], "describe": problem["describe"]}
            for seed in (int(s) for s in args.seeds.split(",")):
                for optimizer in args.optimizers.split(","):
                    for spec in specs:
                        k = key(name, optimizer, seed, spec)
                        if k in results["runs"]:
                            continue
                        r = run_one(problem, optimizer, seed, spec)
                        r["load"] = os.getloadavg()[0]
                        results["runs"][k] = r
                        print(f"{k}: val {r['curve'][-1]['val_acc']:.4f} test {r['test_acc']:.4f} "
                              f"{r['train_s']:.1f}s", flush=True)
                        _write(path, results)
        results["commands"][-1]["load_after"] = os.getloadavg()[0]
        _write(path, results)
    from benchmarks import beyond_grid_report

    only = args.tabulate.split(",") if args.tabulate else None
    beyond_grid_report.write(results, args.table or os.path.join(args.out, args.name + ".md"), only)
    return 0


def _write(path, results):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
