"""Recipe configuration and the function that runs one method on one recipe.

Data flows one way: recipe config -> data + architecture -> model class -> fit
-> callbacks -> run record.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras

from keras_mcv.data import ArrayData


@dataclasses.dataclass
class RecipeConfig:
    """Everything a recipe fixes: data, architecture, batch size, epochs, method defaults.

    Attributes:
        name: recipe name, e.g. `"digits_small_cnn"`.
        load_data: `load_data(data_path, subset)` -> `ArrayData`, already
            normalised per channel. `data_path` may be None (the loader's
            default location); `subset` keeps the first N training examples,
            stratified, or all when None.
        build_model: `build_model(input_shape, num_classes)` -> a fresh,
            uncompiled `keras.Model`.
        batch_size: the gradient batch m (`fit` gets 2m for the batch-splitting
            MCV methods, which split it in halves; m for baseline and race).
        epochs: epoch budget.
        optimizer: `"sgd"` (momentum `momentum`) or `"adam"`.
        momentum: SGD momentum. Defaults to 0.9.
        learning_rate: the LR of fixed-LR runs (baseline, DiscardModel).
        method: default MCV method name (see `keras_mcv.experiment.METHODS`).
            Defaults to "race" (ISSUE #7's working mode; the thesis's methods
            are "search1" etc.).
        alpha: Method 2's alpha. Defaults to 0.5.
        patience: MCV stopping patience in epochs. Defaults to 20.
        augment: flip/translate augmentation. Off, as in the thesis.
        data_path: default `--data` location, or None.
    """

    name: str
    load_data: Callable[[Optional[str], Optional[int]], ArrayData]
    build_model: Callable[[tuple, int], keras.Model]
    batch_size: int = 128
    epochs: int = 100
    optimizer: str = "sgd"
    momentum: float = 0.9
    learning_rate: float = 0.01
    method: str = "race"
    alpha: float = 0.5
    patience: int = 20
    augment: bool = False
    data_path: Optional[str] = None


METHODS = ("baseline", "discard", "voting", "search1", "search2", "search3", "tuned", "race")
"""Method names of `run_method` and `keras-mcv run --method`.

Beyond the thesis (ISSUE #7): `"tuned"` is `SearchModel(**keras_mcv.TUNED_OPTIONS)`
(Method 1 with update trials, smoothing, test-then-train on the validation half
and trials on every 4th step); `"race"` is `keras_mcv.RaceModel` (successive
halving of the candidate LRs over rounds of 1, 2, ... epochs). The others are
the thesis's.
"""

WHOLE_BATCH_METHODS = ("baseline", "race")
"""Methods that train on whole batches of m; the others split batches of 2m."""


def fit_batch_size(method: str, m: int) -> int:
    """The batch `fit` gets: m for `WHOLE_BATCH_METHODS`, else 2m (m train, m validate)."""
    return m if method in WHOLE_BATCH_METHODS else 2 * m


def check_method(method: str, alpha=None) -> None:
    """Raise a clear `ValueError` for an unknown method or a misplaced alpha."""
    if method not in METHODS:
        import difflib

        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown method {method!r}.{hint} Choose one of: {', '.join(METHODS)}.")
    if alpha is not None and method != "search2":
        raise ValueError(f"--alpha applies to search2 only, not {method!r}.")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")


OPTIMIZERS = ("sgd", "adam", "schedule_free_adamw")


def run_name(method: str, alpha=None, optimizer=None, learning_rate=None, trial_batch_size=None) -> str:
    """File stem of a run record: `search2_alpha0.5`, `voting`, `baseline_adam_lr0.001`..."""
    name = f"{method}_alpha{0.5 if alpha is None else alpha:g}" if method == "search2" else method
    if optimizer is not None:
        name += f"_{optimizer}"
    if learning_rate is not None:
        name += f"_lr{learning_rate:g}"
    if trial_batch_size is not None:
        name += f"_tbs{int(trial_batch_size)}"
    return name


def make_optimizer(config: RecipeConfig, optimizer=None, learning_rate=None):
    """An optimizer: the recipe's, or `optimizer` ("sgd", "adam", "schedule_free_adamw").

    SGD uses the recipe's momentum. `learning_rate` defaults to the recipe's for
    SGD and Adam, and to Keras's default for ScheduleFreeAdamW (a
    learning-rate-free anchor run at its defaults).
    """
    from keras_mcv import macro

    name = optimizer or config.optimizer
    if name == "schedule_free_adamw":
        if learning_rate is None:
            return keras.optimizers.ScheduleFreeAdamW()
        return keras.optimizers.ScheduleFreeAdamW(learning_rate=learning_rate)
    if name not in ("sgd", "adam"):
        raise ValueError(f"Unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}.")
    lr = config.learning_rate if learning_rate is None else learning_rate
    return macro.make_optimizer(name, lr, momentum=config.momentum)


def default_trial_every(method: str) -> int:
    """`trial_every` of `method` when the user gives none: 4 for "tuned", else 1 (the thesis)."""
    from keras_mcv import models

    return models.TUNED_OPTIONS["trial_every"] if method == "tuned" else 1


def build_optimizer(model: keras.Model) -> None:
    """Build `model`'s optimizer now, eagerly, on its trainable variables.

    Keras 3.15's `ScheduleFreeAdamW` copies the weights into its `momentum`
    slots in `build`; when `fit` builds it lazily, that copy does not happen,
    the slots stay zero and the first step sets every weight to about zero (a
    ReLU network then never trains: `benchmarks/schedule_free_check.py`).
    Building eagerly after `compile` makes the copy happen; for other
    optimizers it only moves the build earlier.
    """
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def build_method_model(
    net: keras.Model, method: str, alpha=None, trial_every=None, trial_batch_size=None
) -> keras.Model:
    """`net` as the model class that implements `method` (baseline: `net` itself)."""
    from keras_mcv import models
    from keras_mcv.race_model import RaceModel

    if method == "baseline":
        return net
    if method == "race":
        check_split_options(method, trial_every, trial_batch_size)
        return RaceModel.wrap(net)
    trial_every = default_trial_every(method) if trial_every is None else trial_every
    common = {"trial_every": trial_every, "trial_batch_size": trial_batch_size}
    if method == "tuned":
        options = {**models.TUNED_OPTIONS, **common}
        return models.SearchModel.wrap(net, **options)
    if method == "discard":
        return models.DiscardModel.wrap(net, **common)
    if method == "voting":
        return models.VotingModel.wrap(net, **common)
    number = int(method[-1])
    if number == 2:
        common["alpha"] = 0.5 if alpha is None else alpha
    return models.SearchModel.wrap(net, method=number, **common)


def check_split_options(method: str, trial_every=None, trial_batch_size=None) -> None:
    """Refuse `trial_every` / `trial_batch_size` for methods that run no per-step trials."""
    if method not in WHOLE_BATCH_METHODS:
        return
    what = "the baseline runs no trials" if method == "baseline" else (
        "the race trains and judges every branch on whole batches")
    if trial_batch_size is not None:
        raise ValueError(f"trial_batch_size applies to the batch-splitting MCV methods; {what}.")
    if method == "race" and trial_every is not None:
        raise ValueError(f"trial_every applies to the batch-splitting MCV methods; {what}.")


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
    config: RecipeConfig,
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
    out_dir="saved_runs",
    seed: int = 0,
    verbose: int = 1,
    data=None,
    optimizer=None,
    learning_rate=None,
) -> dict:
    """Train `config`'s model with `method`, evaluate on the test set, write a run record.

    The recipe's `batch_size` is the gradient batch m: the baseline trains on
    batches of m, the MCV models on batches of 2m that they split into m to
    train and m to validate (the thesis's batch_1 and batch_2), so every method
    computes its gradient on m examples.

    Args:
        config: the recipe.
        method: one of `METHODS`.
        alpha: Method 2's alpha. Defaults to 0.5 for search2.
        epochs, batch_size, subset, data_path: override the recipe's.
        patience: MCV stopping patience. Defaults to the recipe's.
        trial_every: run trials on every N-th step. Defaults to 4 for
            "tuned" and 1 (the thesis) for the other methods.
        trial_batch_size: judge trials on this many validation examples
            (`MCVModel`'s option). Defaults to None: the whole half.
        out_dir: where `<recipe>/<method>.json` goes. Defaults to "saved_runs".
        seed: seed of weights and shuffling. Defaults to 0.
        verbose: Keras progress bar mode. Defaults to 1.
        data: an `ArrayData` to use instead of loading (for `compare`).
        optimizer: override the recipe's optimizer ("sgd", "adam",
            "schedule_free_adamw"); the record's file name then says so.
        learning_rate: override the recipe's learning rate (fixed-LR runs).

    Returns:
        The run record (also written to `out_dir/<recipe>/<run name>.json`).
    """
    import os

    from keras_mcv import callbacks as mcv_callbacks

    check_method(method, alpha)
    check_split_options(method, trial_every, trial_batch_size)
    if method == "race":
        trial_every = None
    else:
        trial_every = default_trial_every(method) if trial_every is None else int(trial_every)
        if trial_every < 1:
            raise ValueError(f"trial_every must be >= 1, got {trial_every}.")
    if trial_batch_size is not None and int(trial_batch_size) < 1:
        raise ValueError(f"trial_batch_size must be >= 1, got {trial_batch_size}.")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}.")
    epochs = config.epochs if epochs is None else int(epochs)
    m = config.batch_size if batch_size is None else int(batch_size)
    if epochs < 1 or m < 1:
        raise ValueError(f"epochs and batch size must be >= 1, got {epochs} and {m}.")
    patience = config.patience if patience is None else patience
    if data is None:
        data = config.load_data(data_path, subset)
    keras.utils.set_random_seed(seed)
    net = config.build_model(data.input_shape, data.num_classes)
    model = build_method_model(net, method, alpha, trial_every, trial_batch_size)
    model.compile(
        optimizer=make_optimizer(config, optimizer, learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    build_optimizer(model)
    path = os.path.join(out_dir, config.name, run_name(method, alpha, optimizer, learning_rate, trial_batch_size) + ".json")
    run_config = {
        "recipe": config.name, "dataset": data.name, "method": method,
        "alpha": (0.5 if alpha is None else alpha) if method == "search2" else None,
        "epochs": epochs, "gradient_batch": m, "fit_batch": fit_batch_size(method, m),
        "train_examples": int(len(data.y_train)), "test_examples": int(len(data.y_test)),
        "optimizer": optimizer or config.optimizer, "momentum": config.momentum,
        "learning_rate": (
            float(model.optimizer.learning_rate.numpy()) if method in ("baseline", "discard") else None
        ),
        "patience": patience, "trial_every": trial_every,
        "trial_batch_size": trial_batch_size, "seed": seed,
        "search_options": _search_options(model),
        "device": "CPU" if not _has_gpu() else "GPU",
    }
    recorder = mcv_callbacks.RunRecorder(path, config.name, method, run_config,
                                         kind="baseline" if method == "baseline" else "mcv")
    steps = _StepCount()
    cbs = [recorder, steps, _PrintLR()]
    if method != "baseline":
        cbs = mcv_callbacks.default(patience) + cbs
    try:
        model.fit(
            data.x_train, data.y_train,
            batch_size=fit_batch_size(method, m),
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
    if method == "baseline":
        extra["ops"] = {"forward": steps.steps, "backward": steps.steps, "step": steps.steps}
    recorder.finish("complete", test={"loss": float(test["loss"]), "accuracy": float(test["accuracy"])}, **extra)
    record = recorder.record
    record["path"] = path
    return record


def _search_options(model) -> dict | None:
    """A SearchModel's beyond-the-thesis options, for the run record (None otherwise)."""
    from keras_mcv import models

    if not isinstance(model, models.SearchModel):
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
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown anchor optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}.")
        check_method(method)
    return triples


def compare(
    config: RecipeConfig,
    *,
    methods=METHODS,
    alpha: float = 0.5,
    epochs=None,
    batch_size=None,
    subset=None,
    data_path=None,
    macro_settings=None,
    out_dir="saved_runs",
    seed: int = 0,
    verbose: int = 0,
    anchors=(),
):
    """Run the macro-CV baseline and each method on the same data; write records and a report.

    Every run loads nothing twice: the data are loaded once and shared. The
    macro-CV search resumes from `out_dir/<recipe>/macro/tuner` when it exists.

    Args:
        config: the recipe.
        methods: the methods of `run_method` to run. Defaults to all of them.
        alpha: Method 2's alpha. Defaults to 0.5.
        epochs, batch_size, subset, data_path: override the recipe's.
        macro_settings: keyword arguments of `macro.run_macro_cv` (grid,
            repeats, patience, max_epochs); None skips the macro baseline.
        out_dir: root of the run records. Defaults to "saved_runs".
        seed: seed of every run. Defaults to 0.
        verbose: Keras verbosity. Defaults to 0.
        anchors: extra runs with another optimizer: `(optimizer, learning_rate)`
            pairs, baseline runs (`learning_rate` None: the optimizer's
            default), or `(optimizer, learning_rate, method)` triples for a
            method other than the baseline, e.g.
            `(("adam", 1e-3), ("schedule_free_adamw", None), ("adam", None, "tuned"))`.
            Defaults to none.

    Returns:
        The `runs.Report` built from `out_dir/<recipe>`.
    """
    import os

    from keras_mcv import macro, runs

    for method in methods:
        check_method(method)
    anchors = check_anchors(anchors)
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
            config, method, alpha=alpha if method == "search2" else None, epochs=epochs,
            batch_size=batch_size, out_dir=out_dir, seed=seed, verbose=verbose, data=data,
        )
    for optimizer, learning_rate, method in anchors:
        run_method(
            config, method, epochs=epochs, batch_size=batch_size, out_dir=out_dir,
            seed=seed, verbose=verbose, data=data, optimizer=optimizer,
            learning_rate=learning_rate,
        )
    return runs.build_report(recipe_dir)
