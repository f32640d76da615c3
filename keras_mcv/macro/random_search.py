"""Random search over log-uniform ranges, coarse to fine, on Keras Tuner.

The lecture's recipe for hyperparameter search, for the learning rate, the L2
factor and the dropout rate of a recipe's network:

```
split      = one stratified 80/20 split of the training data (one validation fold)
coarse:    trials x (values drawn uniformly in each range's scale; log10 for "log")
           each: train coarse_epochs on the 80%, score = lowest validation loss
fine:      each range narrowed around the coarse best:
               width = shrink x (range width in its scale), centred on the best
               value, shifted back inside the coarse range if it crosses an end
           fine_trials x (values drawn in the narrowed ranges), each trained
           `epochs` epochs; its model at its best epoch is kept
best       = the fine trial of lowest validation loss (test numbers reported only)
border     = a best value in the outer `border` fraction of its range (in its
             scale): warn, the optimum may lie outside the range searched
ensemble   = average the class probabilities of the top-k fine trials
             (`keras_mcv.ensemble`), against the best trial alone
```
Each stage is a Keras Tuner search: `keras_tuner.oracles.RandomSearchOracle`
draws the values (its `Float(sampling="log")` is the log-uniform draw
`low * (high / low) ** u`, u ~ U(0, 1)), a `keras_tuner.Tuner` subclass trains
a trial. Each stage is its own project under `project_dir` (`coarse/`,
`fine/`), so a search reruns only its unfinished trials; a project made with
other settings is refused (pass `overwrite=True`).

References: Bakhshi, Training Neural Networks (lecture 09), section 4.5
(4.5.2 one validation fold, 4.5.3 log-scale ranges, 4.5.4 random rather than
grid search, 4.5.5 best values on the border, 4.5.6 coarse to fine) and
section 5.1 (ensembles of the top models); Bergstra & Bengio, Random Search
for Hyper-Parameter Optimization, JMLR 2012.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
import warnings
from typing import Callable, Optional, Sequence

import numpy as np

from keras_mcv.data import ArrayData
from keras_mcv.macro.random_result import (  # noqa: F401 (re-exported)
    RECORD_NAME,
    TABLE_NAME,
    RandomSearchResult,
    StageResult,
    TrialRow,
    rank,
)

HYPERPARAMETERS = ("learning_rate", "l2", "dropout")
"""What the search may tune: the optimizer's LR and the network's `l2` and `dropout`."""

SCALES = ("log", "linear")

STAGES = ("coarse", "fine")
OBJECTIVE = "val_loss"
_HP_SETTINGS = "settings"


@dataclasses.dataclass(frozen=True)
class SearchRange:
    """The range of one hyperparameter, sampled uniformly in its scale.

    ```
    u(v) = log10(v) if scale == "log" else v
    value_at(p) = u^-1(u(low) + p (u(high) - u(low)))      # p in [0, 1]
    ```
    With `scale="log"` a uniform p gives a log-uniform value: every decade of
    the range is drawn equally often.

    Args:
        name: one of `HYPERPARAMETERS`.
        low: the smallest value, > 0 for "log".
        high: the largest value, > low (dropout: < 1).
        scale: "log" or "linear". Defaults to "log".

    References: Bakhshi, Training Neural Networks (lecture 09), section 4.5.3.
    """

    name: str
    low: float
    high: float
    scale: str = "log"

    def __post_init__(self):
        if self.name not in HYPERPARAMETERS:
            raise ValueError(
                f"Unknown hyperparameter {self.name!r}; the search tunes "
                f"{', '.join(HYPERPARAMETERS)}."
            )
        if self.scale not in SCALES:
            raise ValueError(f"{self.name}: scale must be 'log' or 'linear', got {self.scale!r}.")
        for bound in (self.low, self.high):
            if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not math.isfinite(bound):
                raise ValueError(f"{self.name}: range bounds must be finite numbers, got "
                                 f"({self.low!r}, {self.high!r}).")
        if not self.low < self.high:
            raise ValueError(f"{self.name}: the range needs low < high, got "
                             f"({self.low!r}, {self.high!r}); e.g. 1e-4,1 for a learning rate.")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"{self.name}: a log-scale range needs low > 0, got {self.low!r}; "
                             "use e.g. 1e-6 for an L2 factor, or scale='linear' to reach 0.")
        if self.name != "learning_rate" and self.low < 0:
            raise ValueError(f"{self.name}: values must be >= 0, got low {self.low!r}.")
        if self.name == "dropout" and self.high >= 1:
            raise ValueError(f"dropout: the rate must stay below 1, got high {self.high!r}.")

    def _u(self, value: float) -> float:
        return math.log10(value) if self.scale == "log" else float(value)

    def _from_u(self, u: float) -> float:
        return 10.0 ** u if self.scale == "log" else float(u)

    def value_at(self, p: float) -> float:
        """The value at position p in [0, 1] of the range, in its scale."""
        lo, hi = self._u(self.low), self._u(self.high)
        return self._from_u(lo + p * (hi - lo))

    def position(self, value: float) -> float:
        """Where `value` lies in the range, in its scale: 0 at `low`, 1 at `high`."""
        lo, hi = self._u(self.low), self._u(self.high)
        return (self._u(value) - lo) / (hi - lo)

    def narrowed(self, best: float, shrink: float) -> "SearchRange":
        """The fine stage's range: `shrink` of this range's width, centred on `best`.

        ```
        w = shrink (u(high) - u(low));  lo = u(best) - w / 2;  hi = lo + w
        lo < u(low):  lo, hi = u(low), u(low) + w         # shifted back inside
        hi > u(high): lo, hi = u(high) - w, u(high)
        ```
        """
        check_fraction("shrink", shrink, closed_top=True)
        lo, hi = self._u(self.low), self._u(self.high)
        width = shrink * (hi - lo)
        new_lo = self._u(best) - width / 2
        new_lo = min(max(new_lo, lo), hi - width)
        new_hi = new_lo + width
        low = self.low if new_lo == lo else self._from_u(new_lo)
        high = self.high if new_hi >= hi else self._from_u(new_hi)
        return SearchRange(self.name, low, high, self.scale)

    def border(self, value: float, fraction: float) -> Optional[str]:
        """"low" or "high" when `value` lies in the outer `fraction` of the range, else None."""
        p = self.position(value)
        if p <= fraction:
            return "low"
        if p >= 1.0 - fraction:
            return "high"
        return None

    def add_to(self, hp) -> None:
        """Declare this range in Keras Tuner's `HyperParameters` `hp`."""
        hp.Float(self.name, float(self.low), float(self.high), sampling=self.scale)

    def __str__(self):
        return f"{self.name} in [{self.low:.3g}, {self.high:.3g}] ({self.scale})"


DEFAULT_RANGES = (
    SearchRange("learning_rate", 1e-4, 1.0),
    SearchRange("l2", 1e-6, 1e-2),
    SearchRange("dropout", 0.01, 0.5),
)
"""The lecture's coarse ranges: the LR and the L2 factor over decades; dropout
(also a regularisation strength) log-uniform from 1% to 50%."""


def check_fraction(name, value, closed_top=False):
    """`value` as a float in (0, 1) (or (0, 1] with `closed_top`), or a ValueError."""
    top_ok = closed_top and value == 1
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
        0 < value < 1 or top_ok
    ):
        span = "(0, 1]" if closed_top else "(0, 1)"
        raise ValueError(f"`{name}` must be a number in {span}, got {value!r}.")
    return float(value)


def check_ranges(ranges) -> tuple:
    """`ranges` as a tuple of `SearchRange`s, one per hyperparameter, or a ValueError."""
    ranges = tuple(ranges)
    if not ranges or not all(isinstance(r, SearchRange) for r in ranges):
        raise ValueError(
            "`ranges` must be a non-empty sequence of SearchRange, e.g. "
            "(SearchRange('learning_rate', 1e-4, 1.0),)."
        )
    names = [r.name for r in ranges]
    if len(set(names)) != len(names):
        raise ValueError(f"`ranges` names a hyperparameter twice: {names}.")
    return ranges


def parse_range(name: str, text: str) -> SearchRange:
    """`"LOW,HIGH"` or `"LOW,HIGH,linear"` as a `SearchRange` (the command line's form)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) not in (2, 3):
        raise ValueError(
            f"--{name.replace('_', '-')} range {text!r}: give LOW,HIGH (log scale) or "
            "LOW,HIGH,linear, e.g. 1e-4,1."
        )
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"range {text!r} of {name}: LOW and HIGH must be numbers.") from None
    return SearchRange(name, low, high, parts[2] if len(parts) == 3 else "log")


def border_warnings(ranges, best: dict, fraction: float, stage: str) -> list:
    """One sentence per hyperparameter whose `best` value lies on a border of its range.

    Args:
        ranges: the stage's `SearchRange`s.
        best: the best trial's values, by name.
        fraction: the border's width, a fraction of the range in its scale.
        stage: the stage's name, for the sentence.
    """
    out = []
    for r in ranges:
        if r.name not in best:
            continue
        side = r.border(best[r.name], fraction)
        if side is None:
            continue
        beyond = "below" if side == "low" else "above"
        out.append(
            f"{stage} stage: the best {r.name} = {best[r.name]:.3g} lies on the {side} border "
            f"of its range [{r.low:.3g}, {r.high:.3g}] (outer {fraction:.0%}); a better value "
            f"may lie {beyond} it: widen the range {beyond} and search again."
        )
    return out


# ------------------------------------------------------------------ Keras Tuner


def _make_tuner_class():
    import keras
    import keras_tuner

    from keras_mcv.optimizers import make_optimizer

    class RandomSearchTuner(keras_tuner.Tuner):
        """A trial: build with the values, train on the split, score on validation."""

        def __init__(self, oracle, build_model, split, data, settings, keep, **kwargs):
            self._build_model_fn = build_model
            self._split = split
            self._data = data
            self._settings = settings
            self._keep = keep
            super().__init__(oracle=oracle, hypermodel=None, **kwargs)

        def run_trial(self, trial, *args, **kwargs):
            start = time.perf_counter()
            s = self._settings
            values = {n: trial.hyperparameters.get(n) for n in HYPERPARAMETERS
                      if n in trial.hyperparameters.values}
            (x_tr, y_tr), (x_va, y_va) = self._split
            keras.backend.clear_session()
            keras.utils.set_random_seed(s["seed"] + int(trial.trial_id))
            data = self._data
            model = self._build_model_fn(
                data.input_shape, data.num_classes,
                **{k: values[k] for k in ("l2", "dropout") if k in values},
            )
            lr = values.get("learning_rate", s["learning_rate"])
            optimizer = make_optimizer(s["optimizer"], lr, momentum=s["momentum"],
                                       momentum_form=s["momentum_form"])
            model.compile(optimizer=optimizer,
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            history = model.fit(
                x_tr, y_tr, batch_size=s["batch_size"], epochs=s["epochs"],
                validation_data=(x_va, y_va), verbose=s["verbose"],
                callbacks=[keras.callbacks.TerminateOnNaN(),
                           keras.callbacks.EarlyStopping(
                               monitor="val_loss", patience=s["epochs"],
                               restore_best_weights=True)],
            )
            h = history.history
            losses = [float(v) for v in h.get("val_loss", [])]
            diverged = any(not math.isfinite(float(v)) for k in ("loss", "val_loss")
                           for v in h.get(k, [])) or len(losses) < s["epochs"]
            finite = [(v, i) for i, v in enumerate(losses) if math.isfinite(v)]
            metrics = {"diverged": float(diverged), "wall_time_s": 0.0}
            if not finite:
                metrics.update({OBJECTIVE: math.inf,
                                "wall_time_s": time.perf_counter() - start})
                return metrics
            best, epoch = min(finite)
            metrics.update({OBJECTIVE: best, "val_accuracy": float(h["val_accuracy"][epoch]),
                            "best_epoch": float(epoch + 1)})
            if self._keep:
                # The model now holds its best epoch's weights (restore_best_weights).
                val_p = model.predict(x_va, batch_size=256, verbose=0)
                test_p = model.predict(data.x_test, batch_size=256, verbose=0)
                np.savez(os.path.join(self.get_trial_dir(trial.trial_id), "predictions.npz"),
                         val=val_p.astype("float32"), test=test_p.astype("float32"))
                from keras_mcv.ensemble import accuracy_and_loss

                acc, loss = accuracy_and_loss(test_p, data.y_test)
                metrics.update({"test_accuracy": acc, "test_loss": loss})
            metrics["wall_time_s"] = time.perf_counter() - start
            return metrics

    return RandomSearchTuner


def _stage_rows(oracle, names) -> list:
    rows = []
    for trial in oracle.trials.values():
        m = trial.metrics

        def get(name):
            if not m.exists(name):
                return None
            value = m.get_last_value(name)
            return None if value is None else float(value)

        row = TrialRow(trial_id=trial.trial_id,
                       values={n: float(trial.hyperparameters.get(n)) for n in names})
        if trial.status == "COMPLETED":
            row.diverged = bool(get("diverged"))
            row.val_loss = get(OBJECTIVE)
            if row.val_loss is not None and not math.isfinite(row.val_loss):
                row.val_loss = None
            row.status = "diverged" if row.val_loss is None else "ok"
            row.val_accuracy = get("val_accuracy")
            epoch = get("best_epoch")
            row.best_epoch = None if epoch is None else int(epoch)
            row.test_accuracy = get("test_accuracy")
            row.test_loss = get("test_loss")
            row.wall_time_s = get("wall_time_s")
        elif trial.status in ("FAILED", "INVALID"):
            row.status = "failed"
        else:
            row.status = "missing"
        rows.append(row)
    return rank(rows)


def _run_stage(name, ranges, trials, epochs, build_model, split, data, settings, keep,
               project_dir, overwrite, fingerprint, seed, verbose):
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    for r in ranges:
        r.add_to(hp)
    hp.Fixed(_HP_SETTINGS, fingerprint)
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective(OBJECTIVE, direction="min"),
        max_trials=int(trials), seed=int(seed), hyperparameters=hp,
        allow_new_entries=False, tune_new_entries=False,
    )
    tuner = _make_tuner_class()(
        oracle, build_model, split, data, dict(settings, epochs=int(epochs)), keep,
        directory=os.fspath(project_dir), project_name=name, overwrite=bool(overwrite),
    )
    found = next((h.value for h in tuner.oracle.get_space().space if h.name == _HP_SETTINGS),
                 None)
    if found != fingerprint:
        raise ValueError(
            f"{tuner.project_dir} holds a random search made with other settings "
            f"(fingerprint {found} != {fingerprint}). Pass overwrite=True (--overwrite) to "
            "start afresh, or use another directory."
        )
    tuner.search(verbose=verbose)
    rows = _stage_rows(tuner.oracle, [r.name for r in ranges])
    return StageResult(name, tuple(ranges), int(epochs), rows), tuner


def check_settings(*, ranges=DEFAULT_RANGES, trials=8, fine_trials=None, coarse_epochs=2,
                   epochs=10, shrink=0.25, border=0.1, optimizer="sgd", batch_size=128,
                   val_fraction=0.2, ensemble=3, momentum_form="torch", **_) -> tuple:
    """Check `random_search`'s arguments before any work; a clear ValueError otherwise.

    Returns `(ranges, fine_trials, shrink, border, val_fraction)`, normalised.
    """
    from keras_mcv.optimizers import OPTIMIZERS, check_momentum_form

    check_momentum_form(momentum_form)
    ranges = check_ranges(ranges)
    fine_trials = trials if fine_trials is None else fine_trials
    for key, value, low in (("trials", trials, 1), ("fine_trials", fine_trials, 1),
                            ("coarse_epochs", coarse_epochs, 1), ("epochs", epochs, 1),
                            ("batch_size", batch_size, 1), ("ensemble", ensemble, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"`{key}` must be an integer >= {low}, got {value!r}.")
    if ensemble > fine_trials:
        raise ValueError(f"`ensemble` = {ensemble} exceeds the {fine_trials} fine trials; "
                         "ask for at most as many members as fine trials.")
    shrink = check_fraction("shrink", shrink, closed_top=True)
    border = check_fraction("border", border)
    if border >= 0.5:
        raise ValueError(f"`border` must be below 0.5 (each side's share), got {border!r}.")
    val_fraction = check_fraction("val_fraction", val_fraction)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}.")
    return ranges, fine_trials, shrink, border, val_fraction


def _probe_builder(build_model, data, ranges) -> None:
    """Build the network once with the searched knobs, so a builder without them fails now."""
    import keras

    knobs = {r.name: r.low for r in ranges if r.name in ("l2", "dropout")}
    if not knobs:
        return
    try:
        build_model(data.input_shape, data.num_classes, **knobs)
    except TypeError as e:
        raise ValueError(
            f"The network builder does not take {', '.join(knobs)} ({e}); search only the "
            "learning rate (ranges=(SearchRange('learning_rate', ...),), or --l2-range none "
            "--dropout-range none), or give the builder these keyword arguments."
        ) from None
    finally:
        keras.backend.clear_session()


def random_search(
    build_model: Callable,
    data: ArrayData,
    *,
    ranges: Sequence[SearchRange] = DEFAULT_RANGES,
    trials: int = 8,
    fine_trials: Optional[int] = None,
    coarse_epochs: int = 2,
    epochs: int = 10,
    shrink: float = 0.25,
    border: float = 0.1,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    momentum_form: str = "torch",
    learning_rate: float = 0.01,
    batch_size: int = 128,
    val_fraction: float = 0.2,
    ensemble: int = 3,
    project_dir="random_search",
    overwrite: bool = False,
    seed: int = 0,
    verbose: int = 0,
) -> RandomSearchResult:
    """Random search, coarse to fine, over `ranges` on Keras Tuner (module docstring).

    Args:
        build_model: `build_model(input_shape, num_classes, l2=..., dropout=...)`
            -> an uncompiled softmax `keras.Model` (`keras_mcv.architectures`);
            `l2` and `dropout` are passed only when searched.
        data: the `ArrayData`, normalised.
        ranges: the `SearchRange`s to search. Defaults to `DEFAULT_RANGES`
            (learning rate 1e-4..1, L2 1e-6..1e-2, dropout 0.01..0.5, all log).
        trials: trials of the coarse stage. Defaults to 8.
        fine_trials: trials of the fine stage. Defaults to `trials`.
        coarse_epochs: epochs of a coarse trial (the lecture: 1 to 5).
            Defaults to 2.
        epochs: epochs of a fine trial. Defaults to 10.
        shrink: the fine range's width as a fraction of the coarse one's, in
            (0, 1]. Defaults to 0.25 (a quarter: one decade of four).
        border: the border's width as a fraction of a range, in (0, 0.5).
            Defaults to 0.1.
        optimizer: a name of `keras_mcv.optimizers.OPTIMIZERS`. Defaults to "sgd".
        momentum: SGD momentum. Defaults to 0.9.
        momentum_form: SGD's momentum form, "torch" (`TorchSGD`, the thesis's)
            or "keras". Defaults to "torch".
        learning_rate: the LR when it is not searched. Defaults to 0.01.
        batch_size: batch size. Defaults to 128.
        val_fraction: the validation share of the split. Defaults to 0.2.
        ensemble: K: report ensembles of the top k = 1..K fine trials (0: none).
            Defaults to 3.
        project_dir: Keras Tuner directory (`coarse/`, `fine/` inside).
            Defaults to "random_search".
        overwrite: start afresh instead of resuming. Defaults to False.
        seed: seed of the split, the draws and the initialisations (trial t
            uses `seed + t`). Defaults to 0.
        verbose: 0 quiet, 1 Keras Tuner's display, 2 also `fit`. Defaults to 0.

    Returns:
        A `RandomSearchResult`; the border warnings are also issued with
        `warnings.warn`.

    References: Bakhshi, Training Neural Networks (lecture 09), sections 4.5
    and 5.1; Bergstra & Bengio, JMLR 2012.
    """
    from keras_mcv.ensemble import evaluate_ensemble
    from keras_mcv.macro import _data_digest, _fingerprint
    from keras_mcv.macro.settings import stratified_splits
    from keras_mcv.optimizers import check_momentum_form

    ranges, fine_trials, shrink, border, val_fraction = check_settings(
        ranges=ranges, trials=trials, fine_trials=fine_trials, coarse_epochs=coarse_epochs,
        epochs=epochs, shrink=shrink, border=border, optimizer=optimizer,
        batch_size=batch_size, val_fraction=val_fraction, ensemble=ensemble,
        momentum_form=momentum_form,
    )
    if not isinstance(data, ArrayData):
        raise ValueError(f"`data` must be a keras_mcv.data.ArrayData, got {type(data)!r}.")
    _probe_builder(build_model, data, ranges)
    start = time.perf_counter()
    (train_idx, val_idx), = stratified_splits(data.y_train, 1, val_fraction, seed)
    split = ((data.x_train[train_idx], data.y_train[train_idx]),
             (data.x_train[val_idx], data.y_train[val_idx]))
    settings = dict(
        ranges=[dataclasses.asdict(r) for r in ranges], trials=int(trials),
        fine_trials=int(fine_trials), coarse_epochs=int(coarse_epochs), epochs=int(epochs),
        shrink=shrink, border=border, optimizer=optimizer, momentum=float(momentum),
        momentum_form=check_momentum_form(momentum_form), learning_rate=float(learning_rate),
        batch_size=int(batch_size), val_fraction=val_fraction, seed=int(seed),
        data=_data_digest(data), dataset=data.name,
    )
    fingerprint = _fingerprint(settings)
    trial_settings = dict(seed=int(seed), optimizer=optimizer, momentum=float(momentum),
                          momentum_form=settings["momentum_form"],
                          learning_rate=float(learning_rate), batch_size=int(batch_size),
                          verbose=2 if verbose >= 2 else 0)
    common = dict(build_model=build_model, split=split, data=data, settings=trial_settings,
                  project_dir=project_dir, overwrite=overwrite, fingerprint=fingerprint,
                  verbose=verbose)
    coarse, _ = _run_stage("coarse", ranges, trials, coarse_epochs, keep=False,
                           seed=seed + 1, **common)
    found = []
    if coarse.best is None:
        fine_ranges = ranges
        found.append("coarse stage: no trial finished (every one diverged or failed), so the "
                     "fine stage searches the coarse ranges; lower the learning-rate range.")
    else:
        fine_ranges = tuple(r.narrowed(coarse.best.values[r.name], shrink) for r in ranges)
        found += border_warnings(ranges, coarse.best.values, border, "coarse")
    fine, tuner = _run_stage("fine", fine_ranges, fine_trials, epochs, keep=True,
                             seed=seed + 2, **common)
    if fine.best is not None:
        found += border_warnings(fine_ranges, fine.best.values, border, "fine")
    for text in found:
        warnings.warn(text, stacklevel=2)
    ensembles = []
    members = [r for r in fine.rows if r.val_loss is not None]
    if ensemble and members:
        probabilities = [np.load(os.path.join(tuner.get_trial_dir(r.trial_id),
                                              "predictions.npz"))["test"] for r in members]
        names = [r.trial_id for r in members]
        for k in range(1, min(ensemble, len(members)) + 1):
            ensembles.append(evaluate_ensemble(probabilities[:k], data.y_test, names=names[:k]))
    return RandomSearchResult(
        stages=[coarse, fine], warnings=found, ensembles=ensembles,
        wall_time_s=time.perf_counter() - start, settings=settings, dataset=data.name,
    )
