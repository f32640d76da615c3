"""Run one method on one recipe, or every method on the same data, and record it.

Data flows one way: recipe config -> data + architecture -> model class -> fit
-> callbacks -> run record. A recipe config (`recipes.config.RecipeConfig`)
says what to train; the method registry (`keras_mcv.methods`) says how.
"""

from __future__ import annotations

import os

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
                      ema=False, **options) -> tuple:
    """Check a method name, its options, an optimizer name and a momentum form before any work.

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
        learning_rate: override the recipe's learning rate (fixed-LR runs).
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

    Returns:
        The run record (also written to `out_dir/<recipe>/<run name>.json`).
    """
    from keras_mcv import callbacks as mcv_callbacks

    entry = registry.get(method)
    if candidates is None and "candidates" in entry.options:
        candidates = getattr(config, "candidates", None)
    entry, options = check_run_options(
        method, optimizer, momentum_form, learning_rate=learning_rate, ema=ema, alpha=alpha,
        trial_every=trial_every, trial_batch_size=trial_batch_size, candidates=candidates,
        persistency=persistency,
    )
    transforms = check_augment(config) if augment else ()
    epochs = config.epochs if epochs is None else int(epochs)
    m = config.batch_size if batch_size is None else int(batch_size)
    if epochs < 1 or m < 1:
        raise ValueError(f"epochs and batch size must be >= 1, got {epochs} and {m}.")
    patience = config.patience if patience is None else patience
    if data is None:
        data = config.load_data(data_path, subset)
    keras.utils.set_random_seed(seed)
    net = config.build_model(data.input_shape, data.num_classes)
    model = entry.build(net, options)
    compiled = {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}
    if entry.takes_optimizer:
        run_optimizer = make_optimizer(config, optimizer, learning_rate, momentum_form, ema)
        model.compile(optimizer=run_optimizer, **compiled)
        optimizer_lib.build_optimizer(model)
    else:
        model.compile(**compiled)
    # The momentum form is an SGD setting: None for the other optimizers (and none at all).
    uses_sgd = entry.takes_optimizer and (optimizer or config.optimizer) == "sgd"
    form = momentum_form_of(config, momentum_form) if uses_sgd else None
    name = entry.run_name(options, optimizer=optimizer, learning_rate=learning_rate,
                          momentum_form=form)
    name += "_ema" * bool(ema) + "_augment" * bool(augment)
    path = os.path.join(out_dir, config.name, name + ".json")
    run_config = {
        "recipe": config.name, "dataset": data.name, "method": method,
        "alpha": options.get("alpha"),
        "epochs": epochs, "gradient_batch": m, "fit_batch": entry.fit_batch_size(m),
        "train_examples": int(len(data.y_train)), "test_examples": int(len(data.y_test)),
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
        "device": "CPU" if not _has_gpu() else "GPU",
    }
    counts_ops = hasattr(model, "ops_counts")
    recorder = mcv_callbacks.RunRecorder(path, config.name, method, run_config,
                                         kind="mcv" if counts_ops or not entry.takes_optimizer
                                         else "baseline")
    steps = _StepCount()
    cbs = [*(callbacks or []), recorder, steps, _PrintLR()]
    if ema:
        cbs.insert(0, keras.callbacks.SwapEMAWeights())
    fit_data = {"x": data.x_train, "y": data.y_train, "batch_size": entry.fit_batch_size(m),
                "shuffle": True}
    if transforms:
        from keras_mcv.data import make_dataset

        fit_data = {"x": make_dataset(data.x_train, data.y_train, entry.fit_batch_size(m),
                                      shuffle=True, augment=transforms, seed=seed),
                    "shuffle": False}  # the pipeline shuffles
    if entry.selects_per_epoch:
        cbs = mcv_callbacks.default(patience) + cbs
    try:
        model.fit(**fit_data, epochs=epochs, verbose=verbose, callbacks=cbs)
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

    Returns:
        The `report.Report` built from `out_dir/<recipe>`.
    """
    from keras_mcv import macro, report

    methods = list(registry.names()) if methods is None else list(methods)
    for method in methods:
        check_run_options(method)
    anchors = check_anchors(anchors)
    form = momentum_form_of(config, momentum_form)
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
