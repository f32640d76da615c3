"""Run one method on one recipe, or every method on the same data, and record it.

Data flows one way: recipe config -> data + architecture -> model class -> fit
-> callbacks -> run record. A recipe config (`recipes.config.RecipeConfig`)
says what to train; the method registry (`keras_mcv.methods`) says how.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable

import keras

from keras_mcv import methods as registry
from keras_mcv import optimizers as optimizer_lib


def make_optimizer(config, optimizer=None, learning_rate=None, momentum_form=None, ema=False):
    """The run's optimizer: the recipe's, or `optimizer` (a name of `optimizers.OPTIMIZERS`).

    `learning_rate` defaults to the recipe's for SGD, Adam and AdaGrad, and to
    Keras's default for ScheduleFreeAdamW (a learning-rate-free anchor run).
    `momentum_form` ("torch" or "keras", SGD only) defaults to the recipe's.
    `ema` turns on Keras's `use_ema`.
    """
    name = optimizer or config.optimizer
    if learning_rate is None and name != "schedule_free_adamw":
        learning_rate = config.learning_rate
    return optimizer_lib.make_optimizer(
        name, learning_rate, momentum=config.momentum,
        momentum_form=momentum_form_of(config, momentum_form), use_ema=ema,
    )


def momentum_form_of(config, momentum_form=None) -> str:
    """The run's SGD momentum form: `momentum_form`, else the recipe's ("torch" if unset)."""
    return optimizer_lib.check_momentum_form(
        momentum_form or getattr(config, "momentum_form", "torch")
    )


def check_run_options(method: str, optimizer=None, momentum_form=None, *, learning_rate=None,
                      ema=False, validation_split=None, **options) -> tuple:
    """Check a method name, its options, an optimizer name and the run's settings before any work.

    Args:
        method: a name of the method registry.
        optimizer: an optimizer name overriding the recipe's, or None.
        momentum_form: "torch" or "keras" (SGD), or None for the recipe's.
        learning_rate: a learning rate overriding the recipe's, or None.
        ema: Keras's `use_ema` on the optimizer.
        validation_split: share of the training set held out as validation
            data, in [0, 1), or None for the method's `validation_split`.
        **options: the method's options (`methods.OPTION_NAMES`), None: not given.

    Returns `(Method, options)` with the method's defaults filled in; raises a
    clear `ValueError` otherwise (also for `optimizer`, `learning_rate` or
    `ema` given to a method that takes no optimizer).
    """
    entry = registry.get(method)
    resolved = entry.resolve_options(**options)
    if optimizer is not None and optimizer not in optimizer_lib.OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer {optimizer!r}; use one of {', '.join(optimizer_lib.OPTIMIZERS)}."
        )
    if momentum_form is not None:
        optimizer_lib.check_momentum_form(momentum_form)
    if not entry.takes_optimizer:
        given = [flag for flag, value in (("--optimizer", optimizer), ("--lr", learning_rate),
                                          ("--ema", ema or None),
                                          ("--momentum-form", momentum_form)) if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} does not apply to method {method!r}: it computes its own "
                "step and is compiled without an optimizer, so there is no optimizer to "
                "configure (nor an optimizer's weight average). Remove the flag."
            )
    if learning_rate is not None and not (
        isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate)
        and learning_rate > 0
    ):
        raise ValueError(f"--lr must be a number > 0, got {learning_rate!r}.")
    split = entry.validation_split if validation_split is None else validation_split
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1:
        raise ValueError(
            f"--validation-split must be a share in [0, 1), e.g. 0.2, got {validation_split!r}."
        )
    if entry.check is not None:
        entry.check(resolved, {"learning_rate": learning_rate, "validation_split": split})
    return entry, resolved


def check_augment(config) -> tuple:
    """The transforms `--augment` applies to `config`'s recipe, or a clear `ValueError`."""
    transforms = tuple(getattr(config, "augment", ()) or ())
    if not transforms:
        raise ValueError(
            f"--augment does not apply to recipe {config.name!r}: "
            + (getattr(config, "augment_note", "") or "it has no augmentation defined").rstrip(".")
            + "."
            + " Use an image recipe such as cifar10_small_cnn, or drop --augment."
        )
    return transforms


@dataclasses.dataclass
class RunContext:
    """What a method's hooks (`Method.callbacks`, `Method.learning_rate`) see of their run.

    Attributes:
        model: the model `Method.build` made, not compiled yet.
        x, y: the training arrays `fit` gets (without the held-out part).
        validation: `(x, y)` held out as `fit`'s validation data, or None.
        learning_rate: the run's fixed learning rate (`--lr`, else the recipe's).
        epochs: the epoch budget.
        batch_size: the batch `fit` gets.
        steps_per_epoch: optimizer steps per epoch.
        seed: the run's seed.
        compile: `compile(learning_rate)` compiles `model` with the run's
            optimizer at `learning_rate` (a number or schedule), loss and
            metrics, and builds the optimizer.
        notes: what the hooks chose (JSON-ready), kept in the run record as
            `config["schedule"]`.
    """

    model: keras.Model
    x: object
    y: object
    validation: tuple | None
    learning_rate: float
    epochs: int
    batch_size: int
    steps_per_epoch: int
    seed: int
    compile: Callable
    notes: dict = dataclasses.field(default_factory=dict)


def _held_out(data, split, seed):
    """`(x, y, validation)`: a stratified `split` share of the training set held out."""
    if not split:
        return data.x_train, data.y_train, None
    from keras_mcv.macro.settings import stratified_splits

    train, val = stratified_splits(data.y_train, 1, val_fraction=split, seed=seed)[0]
    return (data.x_train[train], data.y_train[train],
            (data.x_train[val], data.y_train[val]))


class _PrintLR(keras.callbacks.Callback):
    """Print the LR of each finished epoch and, for SearchModel, the next one."""

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        history = getattr(self.model, "mcv_history", None)
        lr = logs.get("lr")
        if lr is None:  # a plain Keras model logs no LR: read the optimizer's
            lr = self.model.optimizer.learning_rate.numpy()
        line = f"epoch {epoch + 1}: lr {float(lr):.4g}"
        if history and history[-1].get("epoch") == epoch + 1:
            entry = history[-1]
            if entry.get("race_round") is not None:
                line += f" (race round {entry['race_round']}: {len(entry['candidates'])} LRs"
                if entry.get("survivors"):
                    line += ", kept " + ", ".join(f"{v:g}" for v in entry["survivors"])
                line += ")"
            line += f" -> next lr {entry['next_lr']:.4g}"
        print(line, flush=True)


class _StepCount(keras.callbacks.Callback):
    """Count training steps (a plain model's cost: 1 forward, 1 backward, 1 step each)."""

    def on_train_begin(self, logs=None):
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def run_method(
    config,
    method: str,
    *,
    alpha=None,
    epochs=None,
    batch_size=None,
    subset=None,
    data_path=None,
    patience=None,
    trial_every=None,
    trial_batch_size=None,
    candidates=None,
    out_dir="runs",
    seed: int = 0,
    verbose: int = 1,
    data=None,
    optimizer=None,
    learning_rate=None,
    momentum_form=None,
    persistency=None,
    ema: bool = False,
    augment: bool = False,
    callbacks=None,
    validation_split=None,
    **options,
) -> dict:
    """Train `config`'s model with `method`, evaluate on the test set, write a run record.

    The recipe's `batch_size` is the gradient batch m: `fit` gets batches of
    m times the method's batch multiple (the batch-splitting MCV models split
    batches of 2m into m to train and m to validate, the thesis's batch_1 and
    batch_2), so every method computes its gradient on m examples.

    Args:
        config: the recipe (`recipes.config.RecipeConfig`).
        method: a name of the method registry (`keras_mcv.methods`).
        alpha: Method 2's alpha. Defaults to 0.5 for search2.
        epochs, batch_size, subset, data_path: override the recipe's.
        patience: MCV stopping patience. Defaults to the recipe's.
        trial_every: run trials on every N-th step. Defaults to the method's
            (4 for "tuned", 1, the thesis, for the others).
        trial_batch_size: judge trials on this many validation examples
            (`MCVModel`'s option). Defaults to None: the whole half.
        candidates: the candidate LRs of the methods that take them. Defaults
            to the recipe's `candidates`, else the method's.
        out_dir: where `<recipe>/<run name>.json` goes. Defaults to "runs".
        seed: seed of weights and shuffling. Defaults to 0.
        verbose: Keras progress bar mode. Defaults to 1.
        data: an `ArrayData` to use instead of loading (for `compare`).
        optimizer: override the recipe's optimizer (a name of
            `optimizers.OPTIMIZERS`); the record's file name then says so.
            A ScheduleFreeAdamW run is evaluated at its averaged point
            (`callbacks.ScheduleFreeEvaluation`).
        learning_rate: override the recipe's learning rate (fixed-LR runs;
            the decay method's r0).
        momentum_form: override the recipe's SGD momentum form ("torch" or
            "keras"); a Keras-form SGD run's file name ends in `_kerasmom`.
        persistency: K updates per minibatch (`PersistencyModel`), for the
            methods that take it. Defaults to None: standard training.
        ema: Keras's `use_ema` on the optimizer; `fit` ends with the averaged
            weights, which the test evaluates, and `keras.callbacks.SwapEMAWeights`
            evaluates them during `fit`. Defaults to False.
        augment: train on the recipe's augmentation (`RecipeConfig.augment`:
            Keras preprocessing layers in the input pipeline); refused for
            recipes without one. Defaults to False.
        callbacks: extra callbacks, run before the recorder (whose record
            then holds the logs they add). Defaults to None.
        validation_split: hold out this share of the training set
            (stratified, seeded) as `fit`'s validation data. Defaults to the
            method's (0.2 for decay, else 0: none).
        **options: further method options (`methods.OPTION_NAMES`), e.g.
            `sequence="seq3", strategy="cutoff"` for decay.

    Returns:
        The run record (also written to `out_dir/<recipe>/<run name>.json`).
    """
    from keras_mcv import callbacks as mcv_callbacks

    entry = registry.get(method)
    if candidates is None and "candidates" in entry.options:
        candidates = getattr(config, "candidates", None)
    entry, options = check_run_options(
        method, optimizer, momentum_form, learning_rate=learning_rate, ema=ema,
        validation_split=validation_split, alpha=alpha, trial_every=trial_every,
        trial_batch_size=trial_batch_size, candidates=candidates, persistency=persistency,
        **options,
    )
    transforms = check_augment(config) if augment else ()
    split = entry.validation_split if validation_split is None else validation_split
    epochs = config.epochs if epochs is None else int(epochs)
    m = config.batch_size if batch_size is None else int(batch_size)
    if epochs < 1 or m < 1:
        raise ValueError(f"epochs and batch size must be >= 1, got {epochs} and {m}.")
    patience = config.patience if patience is None else patience
    if data is None:
        data = config.load_data(data_path, subset)
    x_fit, y_fit, validation = _held_out(data, split, seed)
    keras.utils.set_random_seed(seed)
    net = config.build_model(data.input_shape, data.num_classes)
    model = entry.build(net, options)
    compiled = {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}

    def compile_model(lr):
        if entry.takes_optimizer:
            run_optimizer = make_optimizer(config, optimizer, lr, momentum_form, ema)
            model.compile(optimizer=run_optimizer, **compiled)
            optimizer_lib.build_optimizer(model)
        else:
            model.compile(**compiled)

    fit_batch = entry.fit_batch_size(m)
    context = RunContext(
        model=model, x=x_fit, y=y_fit, validation=validation,
        learning_rate=config.learning_rate if learning_rate is None else learning_rate,
        epochs=epochs, batch_size=fit_batch, steps_per_epoch=math.ceil(len(y_fit) / fit_batch),
        seed=seed, compile=compile_model,
    )
    run_lr = learning_rate
    if entry.learning_rate is not None:
        run_lr = entry.learning_rate(options, context)
    hook_callbacks = list(entry.callbacks(options, context)) if entry.callbacks else []
    keras.utils.set_random_seed(seed)  # a hook's range test leaves fit's shuffling as it was
    compile_model(run_lr)
    # The momentum form is an SGD setting: None for the other optimizers (and none at all).
    uses_sgd = entry.takes_optimizer and (optimizer or config.optimizer) == "sgd"
    form = momentum_form_of(config, momentum_form) if uses_sgd else None
    name = entry.run_name(options, optimizer=optimizer, learning_rate=learning_rate,
                          momentum_form=form, validation_split=validation_split)
    name += "_ema" * bool(ema) + "_augment" * bool(augment)
    path = os.path.join(out_dir, config.name, name + ".json")
    run_config = {
        "recipe": config.name, "dataset": data.name, "method": method,
        "alpha": options.get("alpha"),
        "epochs": epochs, "gradient_batch": m, "fit_batch": fit_batch,
        "train_examples": int(len(data.y_train)), "test_examples": int(len(data.y_test)),
        "validation_split": split,
        "validation_examples": 0 if validation is None else int(len(validation[1])),
        "optimizer": (optimizer or config.optimizer) if entry.takes_optimizer else None,
        "momentum": config.momentum if entry.takes_optimizer else model.momentum,
        "momentum_form": form,
        "learning_rate": (
            float(model.optimizer.learning_rate.numpy()) if entry.fixed_lr else None
        ),
        "patience": patience, "trial_every": options.get("trial_every"),
        "trial_batch_size": options.get("trial_batch_size"), "seed": seed,
        "candidates": options.get("candidates"),
        "search_options": _search_options(model),
        "persistency": options.get("persistency"), "weight_ema": bool(ema),
        "augment": list(transforms) or None,
        "method_options": {k: v for k, v in options.items() if k not in _TOP_LEVEL_OPTIONS},
        "schedule": context.notes or None,
        "device": "CPU" if not _has_gpu() else "GPU",
    }
    counts_ops = hasattr(model, "ops_counts")
    # "baseline" records are plain training at a fixed LR; every method that
    # chooses or moves the LR is labelled from the registry.
    kind = "baseline" if entry.fixed_lr and entry.takes_optimizer and not counts_ops else "mcv"
    recorder = mcv_callbacks.RunRecorder(path, config.name, method, run_config, kind=kind)
    steps = _StepCount()
    cbs = [*(callbacks or []), *hook_callbacks, recorder, steps, _PrintLR()]
    if ema:
        cbs.insert(0, keras.callbacks.SwapEMAWeights())
    fit_data = {"x": x_fit, "y": y_fit, "batch_size": fit_batch, "shuffle": True}
    if transforms:
        from keras_mcv.data import make_dataset

        fit_data = {"x": make_dataset(x_fit, y_fit, fit_batch, shuffle=True,
                                      augment=transforms, seed=seed),
                    "shuffle": False}  # the pipeline shuffles
    if entry.selects_per_epoch:
        cbs = mcv_callbacks.default(patience) + cbs
    if isinstance(model.optimizer, keras.optimizers.ScheduleFreeAdamW):
        # Evaluate (and record) at the averaged point x, as Schedule-Free's authors do.
        cbs.append(mcv_callbacks.ScheduleFreeEvaluation())
    try:
        model.fit(**fit_data, validation_data=validation, epochs=epochs, verbose=verbose,
                  callbacks=cbs)
        test = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)
    except KeyboardInterrupt:
        recorder.finish("incomplete")
        raise
    except Exception as e:
        recorder.finish("failed", error=f"{type(e).__name__}: {e}")
        raise
    extra = {}
    if not counts_ops:
        k = options.get("persistency", 1)  # K passes and updates per minibatch
        extra["ops"] = {"forward": k * steps.steps, "backward": k * steps.steps,
                        "step": k * steps.steps}
    recorder.finish("complete", test={"loss": float(test["loss"]), "accuracy": float(test["accuracy"])}, **extra)
    record = recorder.record
    record["path"] = path
    return record


def check_recipe(config, data, *, gradient: bool = True, gradient_examples: int = 2,
                 epsilon: float = 1e-6, seed=0):
    """The checks before learning on `config`'s network: `(SanityReport, GradientCheckResult)`.

    ```
    net = config.build_model(...), compiled with the recipe's optimizer and LR
    report    = practice.sanity_check(net, x_train, y_train)
    gradients = practice.gradient_check(net, first gradient_examples of x_train,
                                        epsilon)                 # or None
    ```
    The step is 1e-6, not the usual 1e-5: the check runs in float64, where 1e-6 costs
    no precision, and on the deeper ReLU/max-pool networks a step of 1e-5 crosses
    kinks (`cifar10_small_cnn`, 1 to 4 examples: largest relative errors 0.02 to 0.33
    at 1e-5, below 2e-5 at 1e-6).

    Args:
        config: the recipe.
        data: its `ArrayData` (a few hundred training examples suffice).
        gradient: run the gradient check too. Defaults to True.
        gradient_examples: examples of the gradient check. Defaults to 2.
        epsilon: the gradient check's step h. Defaults to 1e-6.
        seed: seed of the weights and of the checks' draws. Defaults to 0.

    References: Bakhshi, Training Neural Networks (lecture 09), sections 4.1
    (gradient checks) and 4.2 (sanity checks before learning).
    """
    from keras_mcv import practice

    keras.utils.set_random_seed(seed)
    net = config.build_model(data.input_shape, data.num_classes)
    net.compile(optimizer=make_optimizer(config), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    report = practice.sanity_check(net, data.x_train, data.y_train, seed=seed)
    gradients = None
    if gradient:
        n = min(int(gradient_examples), len(data.y_train))
        gradients = practice.gradient_check(net, data.x_train[:n], data.y_train[:n],
                                            epsilon=epsilon, seed=seed)
    return report, gradients


def macro_dir_name(momentum_form: str) -> str:
    """The macro-CV grid's directory under a recipe's: `macro`, or `macro_kerasmom` (Keras form)."""
    return "macro_kerasmom" if momentum_form == "keras" else "macro"


_TOP_LEVEL_OPTIONS = ("alpha", "trial_every", "trial_batch_size", "candidates", "persistency")


def _search_options(model) -> dict | None:
    """A SearchModel's beyond-the-thesis options, for the run record (None otherwise)."""
    from keras_mcv.models.search import SearchModel

    if not isinstance(model, SearchModel):
        return None
    keys = ("trial_step", "trial_horizon", "selection", "tolerance", "fraction",
            "smoothing", "train_validation_half")
    return {k: getattr(model, k) for k in keys}


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def lr_find_recipe(
    config, out_dir, *, optimizer=None, batch_size=None, subset=None, data_path=None,
    seed: int = 0, data=None, min_lr=None, max_lr=None, steps=None, mode=None,
):
    """Run the LR range test on a recipe's fresh network; write a PNG and a JSON.

    The network is built with `seed`, compiled with the recipe's optimizer (or
    `optimizer`), and swept on the training set in batches of the gradient
    batch m, with `schedule_methods.RANGE_TEST`'s sweep unless overridden;
    the `clr` method reads its bounds from the same sweep.

    Args:
        config: the recipe.
        out_dir: where `<recipe>_lr_find.png` and `.json` go.
        optimizer: override the recipe's optimizer. Defaults to None.
        batch_size: the batch. Defaults to the recipe's m.
        subset, data_path: as `run_method`'s.
        seed: seed of the weights. Defaults to 0.
        data: an `ArrayData` to use instead of loading. Defaults to None.
        min_lr, max_lr, steps, mode: `lr_find`'s, None for `RANGE_TEST`'s
            (and one epoch of batches, at least 100, for `steps`).

    Returns:
        `(LRFindResult, png_path, json_path)`.
    """
    import json

    from keras_mcv import schedule_methods
    from keras_mcv.range_test import lr_find, sweep_learning_rates

    check_run_options("baseline", optimizer)
    sweep = {**schedule_methods.RANGE_TEST,
             **{k: v for k, v in dict(min_lr=min_lr, max_lr=max_lr, steps=steps, mode=mode).items()
                if v is not None}}
    # Checks the sweep before any data is loaded (steps None: one epoch, checked later).
    sweep_learning_rates(sweep["min_lr"], sweep["max_lr"], sweep.get("steps") or 2, sweep["mode"])
    m = config.batch_size if batch_size is None else int(batch_size)
    if data is None:
        data = config.load_data(data_path, subset)
    keras.utils.set_random_seed(seed)
    model = config.build_model(data.input_shape, data.num_classes)
    model.compile(optimizer=make_optimizer(config, optimizer), metrics=["accuracy"],
                  loss="sparse_categorical_crossentropy")
    optimizer_lib.build_optimizer(model)
    result = lr_find(model, data.x_train, data.y_train, batch_size=m, **sweep)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{config.name}_lr_find")
    result.plot(stem + ".png")
    summary = {
        "recipe": config.name, "dataset": data.name, "optimizer": optimizer or config.optimizer,
        "momentum": config.momentum, "batch_size": m, "train_examples": int(len(data.y_train)),
        "seed": seed, "min_lr": sweep["min_lr"], "max_lr": sweep["max_lr"],
        **schedule_methods.range_test_summary(result),
    }
    from keras_mcv.records import write_atomic

    write_atomic(stem + ".json", lambda f: json.dump(summary, f, indent=1))
    return result, stem + ".png", stem + ".json"


def check_anchors(anchors) -> list:
    """`compare`'s anchors as `(optimizer, learning_rate, method)` triples, checked.

    Raises a clear `ValueError` for an unknown optimizer or method, or a
    method that takes no optimizer.
    """
    triples = [tuple(a) if len(a) == 3 else (*a, "baseline") for a in anchors]
    for optimizer, learning_rate, method in triples:
        if optimizer not in optimizer_lib.OPTIMIZERS:
            raise ValueError(
                f"Unknown anchor optimizer {optimizer!r}; use one of "
                f"{', '.join(optimizer_lib.OPTIMIZERS)}."
            )
        try:
            check_run_options(method, optimizer, learning_rate=learning_rate)
        except ValueError as e:
            raise ValueError(f"anchor {method}/{optimizer}: {e}") from None
    return triples


def compare(
    config,
    *,
    methods=None,
    alpha: float = 0.5,
    epochs=None,
    batch_size=None,
    subset=None,
    data_path=None,
    macro_settings=None,
    out_dir="runs",
    seed: int = 0,
    verbose: int = 0,
    anchors=(),
    momentum_form=None,
    data=None,
):
    """Run the macro-CV baseline and each method on the same data; write records and a report.

    Every run loads nothing twice: the data are loaded once and shared. The
    macro-CV search resumes from `out_dir/<recipe>/macro/tuner` when it exists.

    Args:
        config: the recipe.
        methods: the method names to run. Defaults to every registered method.
        alpha: Method 2's alpha. Defaults to 0.5.
        epochs, batch_size, subset, data_path: override the recipe's.
        macro_settings: keyword arguments of `macro.run_macro_cv` (grid,
            repeats, patience, max_epochs); None skips the macro baseline.
        out_dir: root of the run records. Defaults to "runs".
        seed: seed of every run. Defaults to 0.
        verbose: Keras verbosity. Defaults to 0.
        anchors: extra runs with another optimizer: `(optimizer, learning_rate)`
            pairs, baseline runs (`learning_rate` None: the optimizer's
            default), or `(optimizer, learning_rate, method)` triples for a
            method other than the baseline, e.g.
            `(("adam", 1e-3), ("schedule_free_adamw", None), ("adam", None, "tuned"))`.
            Defaults to none.
        momentum_form: SGD's momentum form ("torch" or "keras") for every
            run and the macro-CV grid. Defaults to the recipe's ("torch").
            The Keras form's records end in `_kerasmom` and its grid goes to
            `macro_kerasmom/`, so both forms can share `out_dir`.
        data: the `keras_mcv.data.ArrayData` to use, already loaded (then
            `data_path` and `subset` are not read). Defaults to None (load them).

    Returns:
        The `report.Report` built from `out_dir/<recipe>`.
    """
    from keras_mcv import macro, report

    methods = list(registry.names()) if methods is None else list(methods)
    for method in methods:
        check_run_options(method)
    anchors = check_anchors(anchors)
    form = momentum_form_of(config, momentum_form)
    if data is None:
        data = config.load_data(data_path, subset)
    recipe_dir = os.path.join(out_dir, config.name)
    if macro_settings is not None:
        macro_dir = os.path.join(recipe_dir, macro_dir_name(form))
        settings = {"batch_size": batch_size or config.batch_size, "momentum": config.momentum,
                    "momentum_form": form}
        settings.update(macro_settings)
        result = macro.run_macro_cv(
            config.build_model, data, project_dir=os.path.join(macro_dir, "tuner"),
            seed=seed, verbose=verbose, **settings,
        )
        if result is not None:
            result.save(macro_dir, recipe=config.name)
    for method in methods:
        run_method(
            config, method, alpha=alpha if "alpha" in registry.get(method).options else None,
            epochs=epochs,
            batch_size=batch_size, out_dir=out_dir, seed=seed, verbose=verbose, data=data,
            momentum_form=form,
        )
    for optimizer, learning_rate, method in anchors:
        run_method(
            config, method, epochs=epochs, batch_size=batch_size, out_dir=out_dir,
            seed=seed, verbose=verbose, data=data, optimizer=optimizer,
            learning_rate=learning_rate, momentum_form=form,
        )
    return report.build_report(recipe_dir)
