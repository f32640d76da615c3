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


def make_optimizer(config, optimizer=None, learning_rate=None):
    """The run's optimizer: the recipe's, or `optimizer` (a name of `optimizers.OPTIMIZERS`).

    `learning_rate` defaults to the recipe's for SGD and Adam, and to Keras's
    default for ScheduleFreeAdamW (a learning-rate-free anchor run).
    """
    name = optimizer or config.optimizer
    if learning_rate is None and name != "schedule_free_adamw":
        learning_rate = config.learning_rate
    return optimizer_lib.make_optimizer(name, learning_rate, momentum=config.momentum)


def check_run_options(method: str, optimizer=None, **options) -> tuple:
    """Check a method name, its options and an optimizer name before any work.

    Returns `(Method, options)` with the method's defaults filled in; raises a
    clear `ValueError` otherwise.
    """
    entry = registry.get(method)
    resolved = entry.resolve_options(**options)
    if optimizer is not None and optimizer not in optimizer_lib.OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer {optimizer!r}; use one of {', '.join(optimizer_lib.OPTIMIZERS)}."
        )
    return entry, resolved


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

    Returns:
        The run record (also written to `out_dir/<recipe>/<run name>.json`).
    """
    from keras_mcv import callbacks as mcv_callbacks

    entry = registry.get(method)
    if candidates is None and "candidates" in entry.options:
        candidates = getattr(config, "candidates", None)
    entry, options = check_run_options(
        method, optimizer, alpha=alpha, trial_every=trial_every,
        trial_batch_size=trial_batch_size, candidates=candidates,
    )
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
    model.compile(
        optimizer=make_optimizer(config, optimizer, learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    optimizer_lib.build_optimizer(model)
    name = entry.run_name(options, optimizer=optimizer, learning_rate=learning_rate)
    path = os.path.join(out_dir, config.name, name + ".json")
    run_config = {
        "recipe": config.name, "dataset": data.name, "method": method,
        "alpha": options.get("alpha"),
        "epochs": epochs, "gradient_batch": m, "fit_batch": entry.fit_batch_size(m),
        "train_examples": int(len(data.y_train)), "test_examples": int(len(data.y_test)),
        "optimizer": optimizer or config.optimizer, "momentum": config.momentum,
        "learning_rate": (
            float(model.optimizer.learning_rate.numpy()) if entry.fixed_lr else None
        ),
        "patience": patience, "trial_every": options.get("trial_every"),
        "trial_batch_size": options.get("trial_batch_size"), "seed": seed,
        "candidates": options.get("candidates"),
        "search_options": _search_options(model),
        "device": "CPU" if not _has_gpu() else "GPU",
    }
    counts_ops = hasattr(model, "ops_counts")
    recorder = mcv_callbacks.RunRecorder(path, config.name, method, run_config,
                                         kind="mcv" if counts_ops else "baseline")
    steps = _StepCount()
    cbs = [recorder, steps, _PrintLR()]
    if entry.selects_per_epoch:
        cbs = mcv_callbacks.default(patience) + cbs
    try:
        model.fit(
            data.x_train, data.y_train,
            batch_size=entry.fit_batch_size(m),
            epochs=epochs, shuffle=True, verbose=verbose, callbacks=cbs,
        )
        test = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)
    except KeyboardInterrupt:
        recorder.finish("incomplete")
        raise
    except Exception as e:
        recorder.finish("failed", error=f"{type(e).__name__}: {e}")
        raise
    extra = {}
    if not counts_ops:
        extra["ops"] = {"forward": steps.steps, "backward": steps.steps, "step": steps.steps}
    recorder.finish("complete", test={"loss": float(test["loss"]), "accuracy": float(test["accuracy"])}, **extra)
    record = recorder.record
    record["path"] = path
    return record


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

    Raises a clear `ValueError` for an unknown optimizer or method.
    """
    triples = [tuple(a) if len(a) == 3 else (*a, "baseline") for a in anchors]
    for optimizer, _, method in triples:
        if optimizer not in optimizer_lib.OPTIMIZERS:
            raise ValueError(
                f"Unknown anchor optimizer {optimizer!r}; use one of "
                f"{', '.join(optimizer_lib.OPTIMIZERS)}."
            )
        registry.get(method)
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
    if data is None:
        data = config.load_data(data_path, subset)
    recipe_dir = os.path.join(out_dir, config.name)
    if macro_settings is not None:
        macro_dir = os.path.join(recipe_dir, "macro")
        settings = {"batch_size": batch_size or config.batch_size, "momentum": config.momentum}
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
        )
    for optimizer, learning_rate, method in anchors:
        run_method(
            config, method, epochs=epochs, batch_size=batch_size, out_dir=out_dir,
            seed=seed, verbose=verbose, data=data, optimizer=optimizer,
            learning_rate=learning_rate,
        )
    return report.build_report(recipe_dir)
