"""The method registry: every way `keras-mcv` can train, by name, in one place.

A method is a name (`"search1"`, `"race"`, ...) with everything the rest of
the package needs to know about it:

```
name -> Method(build(net, options) -> model,   # the model class that runs it
               batch_multiple,                 # fit's batch = multiple x m
               step_cost(K, alpha),            # thesis Table 4.1 row of a trial step
               label, summary,                 # report and `keras-mcv list`
               options, defaults,              # what it accepts, checked once
               takes_optimizer,                # False: compiled without an optimizer
               check, callbacks, learning_rate,  # optional hooks (schedules)
               validation_split)               # share of training data held out
```
The command line's choices, `experiment.run_method`, the report and the
benchmarks read this table; nothing else decodes a method name. Adding a
method is one `register(Method(...))` call here and the method's own module.

Importing this module imports neither TensorFlow nor Keras: the builders
import the model classes when they run, so `keras-mcv --help` and `list`
answer at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Callable, Mapping

from keras_mcv import cost

OPTION_NAMES = (
    "alpha", "trial_every", "trial_batch_size", "candidates", "persistency",
    "sequence", "strategy", "clr_mode", "base_lr", "max_lr", "step_size",
)
"""Options a method may accept (`Method.options`); each is refused elsewhere."""

_OPTION_FLAGS = {name: "--" + name.replace("_", "-") for name in OPTION_NAMES}


@dataclasses.dataclass(frozen=True)
class Method:
    """One entry of the registry.

    Attributes:
        name: the name on the command line and in run records.
        label: the name in reports (the thesis's, where it has one).
        summary: one line for `keras-mcv list`.
        build: `build(net, options)` -> the model that trains `net` by this
            method (for a plain method, `net` itself); `options` holds only
            names of `options`, already defaulted.
        batch_multiple: `fit` gets batches of `batch_multiple * m` for a
            gradient batch of m (2 for the methods that split every batch into
            a training and a validation half). Defaults to 1.
        step_cost: thesis Table 4.1's row of a step with trials,
            `step_cost(K, alpha)` -> (forward, backward, step). Defaults to the
            baseline's.
        options: the options (of `OPTION_NAMES`) the method accepts.
        defaults: values of options the user does not give.
        thesis: True for the thesis's own methods.
        fixed_lr: True when the run trains at the optimizer's learning rate
            (the record keeps it); False when the method chooses it.
        selects_per_epoch: True when the model decides at epoch ends and takes
            the thesis's MCV stopping rule (`callbacks.default`).
        name_options: options that appear in the run record's file name.
        takes_optimizer: False when the model computes its own update and is
            compiled without an optimizer (`--optimizer`, `--lr` and `--ema`
            are then refused). Defaults to True.
        check: `check(options, settings)` raises a clear `ValueError` for a
            combination the method refuses; `settings` holds the run's
            `learning_rate` (None: not given) and `validation_split`.
            Defaults to None (nothing more to check).
        callbacks: `callbacks(options, context)` -> Keras callbacks the run
            adds to `fit` (`context`: `experiment.RunContext`). Defaults to
            None (none).
        learning_rate: `learning_rate(options, context)` -> the optimizer's
            learning rate (a number or a `LearningRateSchedule`). Defaults to
            None (the run's fixed rate).
        validation_split: share of the training set held out (stratified) as
            `fit`'s validation data unless the run says otherwise. Defaults
            to 0.0 (none).
    """

    name: str
    label: str
    summary: str
    build: Callable
    batch_multiple: int = 1
    step_cost: Callable = cost.baseline_step
    options: tuple = ()
    defaults: Mapping = dataclasses.field(default_factory=dict)
    thesis: bool = False
    fixed_lr: bool = False
    selects_per_epoch: bool = True
    name_options: tuple = ()
    takes_optimizer: bool = True
    check: Callable | None = None
    callbacks: Callable | None = None
    learning_rate: Callable | None = None
    validation_split: float = 0.0

    def label_for(self, options: Mapping) -> str:
        """The report label with the run's options filled in, e.g. "Decay seq3 by cutoff"."""
        return self.label.format_map({**self.defaults, **(options or {})})

    def fit_batch_size(self, m: int) -> int:
        """The batch `fit` gets for a gradient batch of `m`."""
        return self.batch_multiple * int(m)

    def resolve_options(self, **given) -> dict:
        """The options to build with: `given` (None: not given) over `defaults`.

        Raises a clear `ValueError` for an option this method does not take.
        """
        for key, value in given.items():
            if key not in OPTION_NAMES:
                raise ValueError(f"Unknown option {key!r}; options are {', '.join(OPTION_NAMES)}.")
            if value is not None and key not in self.options:
                takers = [m.name for m in REGISTRY.values() if key in m.options]
                raise ValueError(
                    f"{_OPTION_FLAGS[key]} does not apply to method {self.name!r}; "
                    f"it applies to {', '.join(takers)}."
                )
        options = {k: v for k, v in self.defaults.items()}
        options.update({k: v for k, v in given.items() if v is not None})
        _check_values(options)
        return options

    def run_name(self, options: Mapping, optimizer=None, learning_rate=None,
                 momentum_form=None, validation_split=None) -> str:
        """File stem of a run record, e.g. `search2_alpha0.5`, `decay_seq3_cutoff`.

        Args:
            options: the run's options (`resolve_options`).
            optimizer: an optimizer name that overrides the recipe's, or None.
            learning_rate: a learning rate that overrides the recipe's, or None.
            momentum_form: the SGD momentum form of the run, or None (not SGD):
                "keras" adds `_kerasmom`, so both forms' records sit side by
                side; "torch" (the thesis's, the default) adds nothing.
            validation_split: a held-out share other than the method's, or None.
        """
        name = self.name
        for key in self.name_options:
            if key in options:
                value = options[key]
                name += f"_{value}" if isinstance(value, str) else f"_{key}{value:g}"
        if optimizer is not None:
            name += f"_{optimizer}"
        if learning_rate is not None:
            name += f"_lr{learning_rate:g}"
        if options.get("trial_batch_size") is not None:
            name += f"_tbs{int(options['trial_batch_size'])}"
        if momentum_form == "keras":
            name += "_kerasmom"
        if validation_split is not None and validation_split != self.validation_split:
            name += f"_val{validation_split:g}"
        return name


def _check_values(options: Mapping) -> None:
    alpha = options.get("alpha")
    if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
    for key in ("trial_every", "trial_batch_size", "persistency"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ValueError(f"{_OPTION_FLAGS[key]} must be an integer >= 1, got {value!r}.")
    candidates = options.get("candidates")
    if candidates is not None:
        from keras_mcv.rules import thesis as thesis_rules

        thesis_rules.validate_candidates(candidates)
    if any(options.get(k) is not None for k in ("sequence", "strategy", "clr_mode")):
        from keras_mcv import schedules, sequence_update  # imports Keras: only when given

        for key, valid in (("sequence", schedules.SEQUENCES),
                           ("strategy", sequence_update.STRATEGIES),
                           ("clr_mode", schedules.CLR_MODES)):
            if options.get(key) is not None and options[key] not in valid:
                raise ValueError(f"Unknown {_OPTION_FLAGS[key]} {options[key]!r}; "
                                 f"choose one of {', '.join(valid)}.")
    for key in ("base_lr", "max_lr", "step_size"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{_OPTION_FLAGS[key]} must be a number > 0, got {value!r}.")
    base, top = options.get("base_lr"), options.get("max_lr")
    if base is not None and top is not None and top <= base:
        raise ValueError(f"--max-lr ({top:g}) must be greater than --base-lr ({base:g}).")
    if options.get("step_size") is not None and options["step_size"] < 1:
        raise ValueError(f"--step-size must be >= 1 iteration (half a cycle), "
                         f"got {options['step_size']:g}.")


REGISTRY: dict = {}
"""Method name -> `Method`, in the order reports and `keras-mcv list` show them."""


def register(method: Method) -> Method:
    """Add `method` to the registry (its name must be new)."""
    if method.name in REGISTRY:
        raise ValueError(f"A method named {method.name!r} is registered already.")
    bad = [o for o in method.options if o not in OPTION_NAMES]
    if bad:
        raise ValueError(f"Method {method.name!r}: unknown options {bad}; known: {OPTION_NAMES}.")
    REGISTRY[method.name] = method
    return method


def names() -> tuple:
    """Every method's name, in registry order."""
    return tuple(REGISTRY)


def get(name: str) -> Method:
    """The method called `name`; an unknown name gets the closest one suggested."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown method {name!r}.{hint} Choose one of: {', '.join(REGISTRY)}."
        ) from None


def order(name: str) -> int:
    """Position of `name` in the registry (unknown names after every known one)."""
    return list(REGISTRY).index(name) if name in REGISTRY else len(REGISTRY)


# ------------------------------------------------------------------ builders
# Each imports its model class when it runs (see the module docstring).


def _split_options(options):
    return {k: options[k] for k in ("trial_every", "trial_batch_size") if k in options}


def _candidate_options(options):
    return {"candidates": options["candidates"]} if "candidates" in options else {}


def _build_plain(net, options):
    if "persistency" not in options:
        return net
    from keras_mcv.models.persistency import PersistencyModel

    return PersistencyModel.wrap(net, persistency=options["persistency"])


def _build_discard(net, options):
    from keras_mcv.models.discard import DiscardModel

    return DiscardModel.wrap(net, **_split_options(options))


def _build_voting(net, options):
    from keras_mcv.models.voting import VotingModel

    return VotingModel.wrap(net, **_split_options(options), **_candidate_options(options))


def _search_builder(number):
    def build(net, options):
        from keras_mcv.models.search import SearchModel

        extra = {"alpha": options["alpha"]} if number == 2 else {}
        return SearchModel.wrap(
            net, method=number, **extra, **_split_options(options), **_candidate_options(options)
        )

    return build


def _build_tuned(net, options):
    from keras_mcv.models.search import TUNED_OPTIONS, SearchModel

    return SearchModel.wrap(
        net, **{**TUNED_OPTIONS, **_split_options(options)}, **_candidate_options(options)
    )


def _build_race(net, options):
    from keras_mcv.models.race import RaceModel

    return RaceModel.wrap(net, **_candidate_options(options))


_SPLIT = ("trial_every", "trial_batch_size", "candidates")

register(Method(
    "baseline", "Baseline", "plain Keras training at the optimizer's fixed learning rate",
    _build_plain, fixed_lr=True, selects_per_epoch=False,
    options=("persistency",), name_options=("persistency",),
))
register(Method(
    "discard", "MCV-discard",
    "thesis Algorithm 3: keep each step only if the validation half's loss does not rise",
    _build_discard, batch_multiple=2, step_cost=cost.discard_step,
    options=("trial_every", "trial_batch_size"), thesis=True, fixed_lr=True,
))
register(Method(
    "voting", "MCV-lr-voting",
    "thesis Algorithms 4-6: every step votes for a candidate LR; the top vote trains",
    _build_voting, batch_multiple=2, step_cost=cost.candidate_step, options=_SPLIT, thesis=True,
))
register(Method(
    "search1", "Method 1",
    "thesis Algorithms 7-8, Method 1: per epoch, the LR of the lowest validation-half loss",
    _search_builder(1), batch_multiple=2, step_cost=cost.candidate_step, options=_SPLIT,
    thesis=True,
))
register(Method(
    "search2", "Method 2",
    "thesis Method 2: as Method 1, scoring validation and training loss mixed by alpha",
    _search_builder(2), batch_multiple=2, step_cost=cost.mixed_score_step,
    options=("alpha",) + _SPLIT, defaults={"alpha": 0.5}, thesis=True, name_options=("alpha",),
))
register(Method(
    "search3", "Method 3",
    "thesis Method 3: per epoch, the largest LR that lowers the validation-half loss",
    _search_builder(3), batch_multiple=2, step_cost=cost.candidate_step, options=_SPLIT,
    thesis=True,
))
register(Method(
    "tuned", "Tuned MCV",
    "Method 1 with update trials, smoothing and test-then-train, trials every 4th step",
    _build_tuned, batch_multiple=2, step_cost=cost.candidate_step, options=_SPLIT,
    defaults={"trial_every": 4},
))
register(Method(
    "race", "LR race",
    "the learning-rate race: successive halving of candidate LRs over rounds of epochs",
    _build_race, options=("candidates",),
))


def _build_course(net, options):
    from keras_mcv.models.course_race import CourseRaceModel

    return CourseRaceModel.wrap(net, **_candidate_options(options))


register(Method(
    "course", "LR course race",
    "the race, then LR courses (keep, decays, neighbouring levels) raced from the winner's point",
    _build_course, options=("candidates",),
))


def _build_adaptive_nesterov(net, options):
    from keras_mcv.models.adaptive_nesterov import AdaptiveNesterovModel

    return AdaptiveNesterovModel.wrap(net)


register(Method(
    "adaptive-nesterov", "Adaptive Nesterov",
    "Nesterov momentum with Polyak's step size computed every step (Mandatelli 2018, Alg. 5)",
    _build_adaptive_nesterov, selects_per_epoch=False, takes_optimizer=False,
))


def _hook(name):
    """A hook of `keras_mcv.schedule_methods`, imported when it runs."""

    def hook(*args):
        from keras_mcv import schedule_methods

        return getattr(schedule_methods, name)(*args)

    return hook


register(Method(
    "decay", "Decay {sequence} by {strategy}",
    "a decay sequence (seq1-seq4) popped by epoch, by cutoff or when the validation loss rises",
    _build_plain, options=("sequence", "strategy"),
    defaults={"sequence": "seq3", "strategy": "epoch"}, selects_per_epoch=False,
    name_options=("sequence", "strategy"), validation_split=0.2,
    check=_hook("decay_check"), callbacks=_hook("decay_callbacks"),
))
register(Method(
    "clr", "CLR {clr_mode}",
    "cyclical learning rate (Smith); bounds from the LR range test unless given",
    _build_plain, options=("clr_mode", "base_lr", "max_lr", "step_size"),
    defaults={"clr_mode": "triangular"}, selects_per_epoch=False,
    name_options=("clr_mode", "base_lr", "max_lr", "step_size"),
    check=_hook("clr_check"), callbacks=_hook("clr_callbacks"),
    learning_rate=_hook("clr_learning_rate"),
))
