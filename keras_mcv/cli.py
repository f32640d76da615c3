"""`keras-mcv` command line: parses arguments, then calls library functions.

Subcommands: run, list, check, lr-find, tune, compare, report, bench. Nothing heavy is
imported before a subcommand needs it, so `--help` and `list` answer at once.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_OUT = "runs"
"""Where `run` and `compare` write records unless `--out` says otherwise: a
directory of the user's own, apart from the records committed in `saved_runs/`."""


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a bad value is a one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _floats(text: str, flag: str) -> tuple:
    """Comma-separated numbers; '' or 'none' is the empty tuple."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(
            f"{flag} {text!r} is not a comma-separated list of numbers, e.g. {flag} 0.1,0.01"
        ) from None


MOMENTUM_FORM_HELP = (
    "SGD's momentum form: torch (PyTorch's buffer of gradients, TorchSGD: what the "
    "thesis ran) or keras (keras.optimizers.SGD's velocity of weight steps; records "
    "end in _kerasmom). Defaults to the recipe's (torch)."
)


def _add_momentum_form(parser) -> None:
    parser.add_argument("--momentum-form", default=None, choices=("torch", "keras"),
                        help=MOMENTUM_FORM_HELP)


def _load_recipe(name: str):
    import recipes

    return recipes.get_config(name)


def _add_report_parser(sub) -> None:
    """Add `keras-mcv report DIR [--out OUT]` to the subparsers `sub`."""
    p = sub.add_parser(
        "report",
        help="tables (thesis Table 4.5) and plots from saved run records",
        description="Read every run record (*.json) under DIR and write report.md "
        "and PNG plots; print the Markdown and the paths written.",
    )
    p.add_argument("directory", metavar="DIR", help="directory of saved runs, walked recursively")
    p.add_argument("--out", default=None, help="output directory. Defaults to DIR.")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    """Run `keras-mcv report`: build the report, print it, the warnings and the files."""
    from keras_mcv import report as report_lib

    try:
        report = report_lib.build_report(args.directory, out_dir=args.out)
    except FileNotFoundError as e:
        print(f"keras-mcv report: {e}", file=sys.stderr)
        return 2
    print(report.markdown)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path in report.files:
        print(f"wrote {path}")
    if not report.records:
        print(f"keras-mcv report: no run records under {args.directory}", file=sys.stderr)
        return 1
    return 0


def _add_tune_parser(sub) -> None:
    """Add `keras-mcv tune RECIPE [...]` (macro-CV baseline, thesis 4.5) to `sub`."""
    p = sub.add_parser(
        "tune",
        help="macro-CV grid search (thesis 4.5) or random search, on Keras Tuner",
        description="--search grid (default): grid over optimizer x learning rate, then "
        "decays for the best SGD learning rate; each configuration is scored by early "
        "stopping on REPEATS stratified 80/20 splits, retrained on all training data and "
        "tested. Resumes from OUT/tuner unless --overwrite. Runs as Keras Tuner's "
        "distributed search when KERASTUNER_TUNER_ID/_ORACLE_IP/_ORACLE_PORT are set "
        "(start the same command on the chief and on every worker). "
        "--search random: random search over log-uniform ranges of the learning rate, "
        "L2 and dropout on one 80/20 split, coarse (--trials, --coarse-epochs) then fine "
        "(ranges narrowed around the coarse best, --epochs), with a warning when the best "
        "value lies on the border of its range and ensembles of the top fine trials.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe name, e.g. digits_small_cnn")
    p.add_argument("--search", default="grid", choices=("grid", "random"),
                   help="grid (macro-CV, thesis 4.5) or random (coarse to fine). "
                   "Defaults to grid.")
    p.add_argument("--optimizers", default=None,
                   help="[grid] comma-separated subset of sgd,adam. Defaults to sgd,adam.")
    p.add_argument("--lrs", default=None,
                   help="[grid] comma-separated stage-1 learning rates. "
                   "Defaults to 0.1,0.01,0.001,0.0001.")
    p.add_argument("--decays", default=None,
                   help="[grid] comma-separated stage-2 decay rates for the best SGD learning "
                   "rate; 'none' skips stage 2. Defaults to 0.001,0.0005,0.0001.")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="[grid] stratified splits per configuration. Defaults to 5.")
    p.add_argument("--patience", type=positive_int, default=None,
                   help="[grid] early-stopping patience in epochs. Defaults to 20.")
    p.add_argument("--max-epochs", type=positive_int, default=None,
                   help="[grid] epoch cap of each split run. Defaults to 100.")
    for flag, text in RANDOM_FLAGS.items():
        p.add_argument(flag, default=None, help=f"[random] {text}",
                       type=positive_int if flag in _RANDOM_INT_FLAGS else str)
    p.add_argument("--subset", type=positive_int, default=None,
                   help="keep the first N training examples (stratified). Defaults to all.")
    p.add_argument("--data", default=None,
                   help="dataset location. Defaults to the recipe's.")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="batch size. Defaults to the recipe's.")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed of splits and initialisations. Defaults to 0.")
    _add_momentum_form(p)
    p.add_argument("--out", default=None,
                   help=f"output directory. Defaults to {DEFAULT_OUT}/RECIPE/macro "
                   "(grid; macro_kerasmom with --momentum-form keras) or "
                   ".../random_search (random).")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh instead of resuming OUT/tuner.")
    p.add_argument("--verbose", type=int, default=1,
                   help="0 quiet, 1 Keras Tuner trial display, 2 also fit progress. "
                   "Defaults to 1.")
    p.set_defaults(func=_cmd_tune)


RANDOM_FLAGS = {
    "--trials": "trials of the coarse stage. Defaults to 8.",
    "--fine-trials": "trials of the fine stage. Defaults to --trials.",
    "--coarse-epochs": "epochs of a coarse trial. Defaults to 2.",
    "--epochs": "epochs of a fine trial. Defaults to 10.",
    "--ensemble": "report ensembles of the top k = 1..K fine trials (0: none). Defaults to 3.",
    "--lr-range": "LOW,HIGH[,linear] of the learning rate, or none. Defaults to 1e-4,1 (log).",
    "--l2-range": "LOW,HIGH[,linear] of the L2 factor, or none. Defaults to 1e-6,1e-2 (log).",
    "--dropout-range": "LOW,HIGH[,linear] of the dropout rate, or none. "
                       "Defaults to 0.01,0.5 (log).",
    "--shrink": "fine range width / coarse range width, in (0, 1]. Defaults to 0.25.",
}
"""`tune --search random`'s own flags (refused with the grid)."""

_RANDOM_INT_FLAGS = ("--trials", "--fine-trials", "--coarse-epochs", "--epochs")
_GRID_FLAGS = ("--optimizers", "--lrs", "--decays", "--repeats", "--patience", "--max-epochs")


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _check_search_flags(args) -> None:
    """Refuse the flags of the other kind of search, by name."""
    own, other = (_GRID_FLAGS, RANDOM_FLAGS)
    if args.search == "random":
        own, other = other, own
    given = [f for f in other if getattr(args, _dest(f)) is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} does not apply to --search {args.search}; "
            f"its flags are {', '.join(own)}."
        )


def _cmd_tune(args) -> int:
    """Run `keras-mcv tune`: load the recipe and data, run the search, print and save it."""
    import os

    floats = _floats
    try:
        config = _load_recipe(args.recipe)
        _check_search_flags(args)
    except (ImportError, KeyError, ValueError) as e:
        print(f"keras-mcv tune: {e}", file=sys.stderr)
        return 2
    if args.search == "random":
        return _cmd_random_search(args, config)
    defaults = {"optimizers": "sgd,adam", "lrs": "0.1,0.01,0.001,0.0001",
                "decays": "0.001,0.0005,0.0001", "repeats": 5, "patience": 20,
                "max_epochs": 100}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    from keras_mcv import experiment, macro

    try:
        form = experiment.momentum_form_of(config, args.momentum_form)
    except ValueError as e:
        print(f"keras-mcv tune: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(DEFAULT_OUT, config.name, experiment.macro_dir_name(form))
    try:
        lrs = floats(args.lrs, "--lrs")
        decays = floats(args.decays, "--decays")
        optimizers = tuple(o.strip() for o in args.optimizers.split(",") if o.strip())
        data_path = args.data if args.data is not None else config.data_path
        data = config.load_data(data_path, args.subset)
        result = macro.run_macro_cv(
            config.build_model, data,
            batch_size=args.batch_size or config.batch_size,
            optimizers=optimizers, learning_rates=lrs, decays=decays,
            repeats=args.repeats, patience=args.patience, max_epochs=args.max_epochs,
            momentum=config.momentum, momentum_form=form,
            project_dir=os.path.join(out, "tuner"),
            overwrite=args.overwrite, seed=args.seed, verbose=args.verbose,
        )
    except (ValueError, FileNotFoundError) as e:  # keras_mcv.data.DataError is a ValueError
        print(f"keras-mcv tune: {e}", file=sys.stderr)
        return 2
    if result is None:
        print(f"worker {os.environ.get('KERASTUNER_TUNER_ID')}: search finished; "
              "the chief writes the table.")
        return 0
    path = result.save(out, recipe=config.name)
    print(result.to_markdown())
    if result.winner is not None:
        print(f"winner: {result.winner.label()}")
    print(f"total wall time: {result.wall_time_s:.1f} s")
    print(f"wrote {path} and {os.path.join(out, macro.TABLE_NAME)}")
    return 0


def _cmd_random_search(args, config) -> int:
    """`keras-mcv tune RECIPE --search random`: coarse-to-fine random search, printed and saved."""
    import os
    import warnings

    from keras_mcv import experiment
    from keras_mcv.macro import random_search as rs

    out = args.out or os.path.join(DEFAULT_OUT, config.name, "random_search")
    try:
        ranges = []
        for default in rs.DEFAULT_RANGES:
            flag = {"learning_rate": "lr_range"}.get(default.name, f"{default.name}_range")
            text = getattr(args, flag)
            if text is None:
                ranges.append(default)
            elif text.strip().lower() != "none":
                ranges.append(rs.parse_range(default.name, text))
        try:
            ensemble = 3 if args.ensemble is None else int(args.ensemble)
            shrink = 0.25 if args.shrink is None else float(args.shrink)
        except ValueError:
            raise ValueError(
                "--ensemble takes an integer >= 0 and --shrink a number in (0, 1]."
            ) from None
        trials = args.trials or 8
        settings = dict(
            ranges=ranges, trials=trials, fine_trials=args.fine_trials or trials,
            coarse_epochs=args.coarse_epochs or 2, epochs=args.epochs or 10,
            shrink=shrink, ensemble=ensemble, optimizer=config.optimizer,
            momentum=config.momentum, learning_rate=config.learning_rate,
            momentum_form=experiment.momentum_form_of(config, args.momentum_form),
            batch_size=args.batch_size or config.batch_size,
        )
        rs.check_settings(**settings)
        data_path = args.data if args.data is not None else config.data_path
        data = config.load_data(data_path, args.subset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # printed from the result below
            result = rs.random_search(
                config.build_model, data, project_dir=os.path.join(out, "tuner"),
                overwrite=args.overwrite, seed=args.seed, verbose=args.verbose, **settings,
            )
    except ValueError as e:
        print(f"keras-mcv tune: {e}", file=sys.stderr)
        return 2
    path = result.save(out)
    print(result.to_markdown())
    for text in result.warnings:
        print(f"warning: {text}", file=sys.stderr)
    print(f"wrote {path} and {os.path.join(out, rs.TABLE_NAME)}")
    return 0


def _add_run_parsers(sub) -> None:
    """Add `keras-mcv run RECIPE --method M` and `keras-mcv list` to `sub`."""
    from keras_mcv import methods

    p = sub.add_parser(
        "run",
        help="train a recipe with one method and write a run record",
        description="Train RECIPE with METHOD, print the LR chosen per epoch and the "
        f"test accuracy, and write OUT/RECIPE/METHOD.json (OUT defaults to {DEFAULT_OUT}/).",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe name (`keras-mcv list`)")
    p.add_argument("--method", default=None, choices=methods.names(),
                   help="method (`keras-mcv list`). Defaults to the recipe's "
                   "(race: the learning-rate race).")
    p.add_argument("--alpha", type=float, default=None,
                   help="Method 2's weight of the training loss. Defaults to 0.5.")
    p.add_argument("--candidates", default=None,
                   help="comma-separated candidate LRs of race, voting and search. "
                   "Defaults to the recipe's, else 0.1,0.01,0.001,0.0001.")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="epoch budget. Defaults to the recipe's.")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="gradient batch m (the batch-splitting MCV methods fit batches of 2m; "
                   "the others fit m). Defaults to the recipe's.")
    p.add_argument("--subset", type=positive_int, default=None,
                   help="first N training examples, stratified. Defaults to all.")
    p.add_argument("--data", default=None, help="data path (folder, zip or tfds dir).")
    p.add_argument("--patience", type=positive_int, default=None, help="MCV stopping patience.")
    p.add_argument("--trial-every", type=positive_int, default=None,
                   help="trials on every N-th step (batch-splitting methods). Defaults to 4 "
                   "for 'tuned', else 1 (the thesis).")
    p.add_argument("--trial-batch-size", type=positive_int, default=None,
                   help="judge trials on this many validation examples (noisier, cheaper). "
                   "Defaults to the whole validation half.")
    p.add_argument("--optimizer", default=None,
                   choices=("sgd", "adam", "schedule_free_adamw", "adagrad"),
                   help="override the recipe's optimizer (the record's name says so).")
    p.add_argument("--lr", type=float, default=None,
                   help="override the recipe's learning rate of fixed-LR runs (decay: r0).")
    _add_momentum_form(p)
    p.add_argument("--persistency", type=positive_int, default=None, metavar="K",
                   help="K updates on each minibatch (minibatch persistency; baseline). "
                   "Defaults to 1, standard training.")
    p.add_argument("--ema", action="store_true",
                   help="keep Keras's moving average of the weights (use_ema) and test it.")
    p.add_argument("--augment", action="store_true",
                   help="random flip, 4-pixel translation and brightness/contrast jitter "
                   "(image recipes; refused for digits).")
    p.add_argument("--validation-split", type=float, default=None,
                   help="hold out this share of the training set (stratified) as validation "
                   "data. Defaults to 0.2 for decay, else 0.")
    g = p.add_argument_group("decay (docs/schedules.md)")
    g.add_argument("--sequence", default=None, help="seq1, seq2, seq3 or seq4. Defaults to seq3.")
    g.add_argument("--strategy", default=None,
                   help="epoch, cutoff or oscillate. Defaults to epoch.")
    g = p.add_argument_group("clr (docs/schedules.md)")
    g.add_argument("--clr-mode", default=None,
                   help="triangular, triangular2 or exp_range. Defaults to triangular.")
    g.add_argument("--base-lr", type=float, default=None,
                   help="lower bound. Defaults to the LR range test's.")
    g.add_argument("--max-lr", type=float, default=None,
                   help="upper bound. Defaults to the LR range test's.")
    g.add_argument("--step-size", type=float, default=None,
                   help="iterations in half a cycle. Defaults to 2-4 epochs' worth, "
                   "ending the run at the end of a cycle.")
    p.add_argument("--seed", type=int, default=0, help="seed. Defaults to 0.")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"output directory. Defaults to {DEFAULT_OUT}.")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Keras verbosity.")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("list", help="list the recipes and the methods")
    p.set_defaults(func=_cmd_list)


def _cmd_run(args) -> int:
    from keras_mcv import data as data_lib
    from keras_mcv import experiment

    try:
        config = _load_recipe(args.recipe)
        method = args.method or config.method
        candidates = _floats(args.candidates, "--candidates") if args.candidates else None
        options = dict(alpha=args.alpha, trial_every=args.trial_every,
                       trial_batch_size=args.trial_batch_size, candidates=candidates,
                       persistency=args.persistency,
                       sequence=args.sequence, strategy=args.strategy, clr_mode=args.clr_mode,
                       base_lr=args.base_lr, max_lr=args.max_lr, step_size=args.step_size)
        experiment.check_run_options(method, args.optimizer, args.momentum_form,
                                     learning_rate=args.lr, ema=args.ema,
                                     validation_split=args.validation_split, **options)
        if args.augment:
            experiment.check_augment(config)
        data_path = args.data if args.data is not None else config.data_path
        data = config.load_data(data_path, args.subset)
    except (ValueError, data_lib.DataError, FileNotFoundError) as e:
        default = " (the recipe's default method; choose one with --method)"
        print(f"keras-mcv run: {e}{default if args.method is None and 'method' in str(e) else ''}",
              file=sys.stderr)
        return 2
    record = experiment.run_method(
        config, method, epochs=args.epochs, batch_size=args.batch_size,
        patience=args.patience, out_dir=args.out, seed=args.seed, verbose=args.verbose,
        optimizer=args.optimizer, learning_rate=args.lr, momentum_form=args.momentum_form,
        data=data, ema=args.ema, augment=args.augment,
        validation_split=args.validation_split, **options,
    )
    test = record["test"]
    print(
        f"{config.name} {method}: test accuracy {test['accuracy']:.4f}, test loss "
        f"{test['loss']:.4f}, {len(record['epochs'])} epochs, {record['wall_time_s']:.1f}s "
        f"(CPU)\nrecord: {record['path']}"
    )
    return 0


def _cmd_list(args) -> int:
    import recipes
    from keras_mcv import methods

    print("recipes:")
    width = max(len(n) for n in recipes.available())
    for name in recipes.available():
        print(f"  {name:<{width}}  {recipes.describe(name)}")
    print("methods (--method):")
    width = max(len(n) for n in methods.names())
    for name in methods.names():
        print(f"  {name:<{width}}  {methods.get(name).summary}")
    return 0


def _add_check_parser(sub) -> None:
    """Add `keras-mcv check RECIPE`: the sanity checks before learning, and a gradient check."""
    p = sub.add_parser(
        "check",
        help="sanity checks before learning (and a gradient check) on a recipe's network",
        description="Build RECIPE's network, compile it with the recipe's optimizer and run "
        "keras_mcv.practice.sanity_check on N training examples (initial loss near ln C, "
        "loss rising with L2, 20 examples overfit), then gradient_check on 2 examples "
        "(float64, step 1e-6). "
        "Exit status 0 when every check passes, 1 when one fails.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe name (`keras-mcv list`)")
    p.add_argument("--examples", type=positive_int, default=200,
                   help="training examples the checks use. Defaults to 200.")
    p.add_argument("--no-gradient-check", action="store_true",
                   help="skip the float64 gradient check (slow on large networks).")
    p.add_argument("--data", default=None, help="data path. Defaults to the recipe's.")
    p.add_argument("--seed", type=int, default=0, help="seed. Defaults to 0.")
    p.set_defaults(func=_cmd_check)


def _cmd_check(args) -> int:
    from keras_mcv import data as data_lib

    try:
        config = _load_recipe(args.recipe)
        data_path = args.data if args.data is not None else config.data_path
        data = config.load_data(data_path, args.examples)
    except (ValueError, data_lib.DataError, FileNotFoundError) as e:
        print(f"keras-mcv check: {e}", file=sys.stderr)
        return 2
    from keras_mcv import experiment

    report, gradients = experiment.check_recipe(
        config, data, gradient=not args.no_gradient_check, seed=args.seed
    )
    print(f"{config.name}: sanity checks on {len(data.y_train)} training examples")
    print(report)
    if gradients is not None:
        print(gradients)
    passed = report.passed and (gradients is None or gradients.passed)
    print("all checks passed" if passed else "a check failed")
    return 0 if passed else 1


def _add_lr_find_parser(sub) -> None:
    """Add `keras-mcv lr-find RECIPE [--out DIR]`: the LR range test on a fresh network."""
    p = sub.add_parser(
        "lr-find",
        help="LR range test: suggestion and cyclical-LR bounds, with a plot",
        description="Train RECIPE's fresh network while the learning rate rises from "
        "--min-lr to --max-lr (one rate per step), restore it, and print the suggested "
        "LR and the bounds for a cyclical LR; write OUT/RECIPE_lr_find.png (both marked) "
        "and OUT/RECIPE_lr_find.json.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe name (`keras-mcv list`)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory. Defaults to {DEFAULT_OUT}.")
    p.add_argument("--optimizer", default=None, choices=("sgd", "adam", "schedule_free_adamw"),
                   help="override the recipe's optimizer.")
    p.add_argument("--min-lr", type=float, default=None, help="first LR. Defaults to 1e-7.")
    p.add_argument("--max-lr", type=float, default=None, help="last LR. Defaults to 10.")
    p.add_argument("--steps", type=int, default=None,
                   help="steps of the sweep. Defaults to one epoch of batches, at least 100.")
    p.add_argument("--mode", default=None,
                   help="exponential or linear. Defaults to exponential.")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="batch. Defaults to the recipe's.")
    p.add_argument("--subset", type=positive_int, default=None,
                   help="first N training examples, stratified. Defaults to all.")
    p.add_argument("--data", default=None, help="data path (folder, zip or tfds dir).")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights. Defaults to 0.")
    p.set_defaults(func=_cmd_lr_find)


def _cmd_lr_find(args) -> int:
    from keras_mcv import data as data_lib
    from keras_mcv import experiment

    try:
        config = _load_recipe(args.recipe)
        data_path = args.data if args.data is not None else config.data_path
        result, png, js = experiment.lr_find_recipe(
            config, args.out, optimizer=args.optimizer, batch_size=args.batch_size,
            subset=args.subset, data_path=data_path, seed=args.seed, min_lr=args.min_lr,
            max_lr=args.max_lr, steps=args.steps, mode=args.mode,
        )
    except (ValueError, data_lib.DataError, FileNotFoundError) as e:
        print(f"keras-mcv lr-find: {e}", file=sys.stderr)
        return 2
    suggestion = "none" if result.suggestion is None else f"{result.suggestion:.3g}"
    bounds = ("none (no rise)" if result.bounds is None
              else f"{result.bounds[0]:.3g} to {result.bounds[1]:.3g}")
    stop = f", stopped: {result.stop_reason}" if result.stop_reason else ""
    print(f"{config.name}: suggested LR {suggestion}; CLR bounds {bounds} "
          f"({len(result.learning_rates)} steps{stop})\nwrote {png}\nwrote {js}")
    return 0



BENCHMARKS = {
    "step": ("benchmarks.step_bench", "MCV train step on 2m images vs the plain Keras step on m"),
    "e2e": ("benchmarks.e2e", "time to accuracy: macro-CV grid, every method and anchors"),
    "schedules": ("benchmarks.schedules",
                  "decay sequences x strategies against fixed SGD/Adam, CLR and the race"),
    "grid": ("benchmarks.beyond_grid",
             "the races against the half-decade grids, and time to target"),
}
"""`keras-mcv bench NAME ARGS` runs `main(ARGS)` of the module; `ARGS --help` lists its flags."""


def _add_bench_parser(sub) -> None:
    """Add `keras-mcv bench {step,e2e,schedules,grid} [...]`: the benchmarks, which live outside the package."""
    p = sub.add_parser(
        "bench",
        help="benchmarks (step, e2e, schedules, grid)",
        description="Performance benchmarks, timed in one process. "
        + " ".join(f"{name}: {text}." for name, (_, text) in BENCHMARKS.items())
        + " `keras-mcv bench NAME --help` lists a benchmark's flags.",
    )
    p.add_argument("benchmark", choices=tuple(BENCHMARKS), help="which benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own flags")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    import importlib

    module = importlib.import_module(BENCHMARKS[args.benchmark][0])
    return module.main(args.args)


def _parse_anchors(text):
    """`[METHOD/]OPTIMIZER[:LR]` items, comma-separated.

    `"adam:0.001,schedule_free_adamw,tuned/adam"` ->
    `(("adam", 0.001), ("schedule_free_adamw", None), ("adam", None, "tuned"))`.
    """
    anchors = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        method, _, rest = item.rpartition("/")
        name, _, lr = rest.partition(":")
        try:
            value = float(lr) if lr else None
        except ValueError:
            raise ValueError(f"anchor {item!r}: learning rate {lr!r} is not a number.") from None
        anchors.append((name, value, method) if method else (name, value))
    return tuple(anchors)


def _add_compare_parser(sub) -> None:
    """Add `keras-mcv compare RECIPE` to `sub`."""
    from keras_mcv import methods

    names = methods.names()

    p = sub.add_parser(
        "compare",
        help="macro-CV baseline and every MCV method on the same data, with a report",
        description="Run the macro-CV grid search and each method on the same data, "
        "write their run records under OUT/RECIPE and a Table 4.5-style report.",
    )
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("--methods", default=",".join(names),
                   help=f"comma-separated methods. Defaults to {','.join(names)}.")
    p.add_argument("--alpha", type=float, default=0.5, help="Method 2's alpha. Defaults to 0.5.")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs of each method run.")
    p.add_argument("--batch-size", type=positive_int, default=None, help="gradient batch m.")
    p.add_argument("--subset", type=positive_int, default=None, help="first N training examples, stratified.")
    p.add_argument("--data", default=None, help="data path.")
    p.add_argument("--no-macro", action="store_true", help="skip the macro-CV baseline.")
    p.add_argument("--anchors", default="",
                   help="extra runs with another optimizer, [METHOD/]OPTIMIZER[:LR], e.g. "
                   "adam:0.001,schedule_free_adamw,tuned/adam (METHOD defaults to baseline).")
    p.add_argument("--lrs", default="0.1,0.01,0.001,0.0001", help="macro-CV learning rates.")
    p.add_argument("--decays", default="0.001,0.0005,0.0001",
                   help="macro-CV decays for the best SGD LR; 'none' skips stage 2.")
    p.add_argument("--repeats", type=positive_int, default=5, help="macro-CV splits per configuration.")
    p.add_argument("--patience", type=positive_int, default=20, help="macro-CV early-stopping patience.")
    p.add_argument("--max-epochs", type=positive_int, default=100, help="macro-CV epoch cap.")
    p.add_argument("--seed", type=int, default=0)
    _add_momentum_form(p)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output root. Defaults to {DEFAULT_OUT}.")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    from keras_mcv import data as data_lib
    from keras_mcv import experiment

    try:
        config = _load_recipe(args.recipe)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        anchors = _parse_anchors(args.anchors)
        for method in methods:
            experiment.check_run_options(method)
        experiment.check_anchors(anchors)
        macro_settings = None
        if not args.no_macro:
            macro_settings = {
                "learning_rates": _floats(args.lrs, "--lrs"),
                "decays": _floats(args.decays, "--decays"),
                "repeats": args.repeats, "patience": args.patience, "max_epochs": args.max_epochs,
            }
        data_path = args.data if args.data is not None else config.data_path
        data = config.load_data(data_path, args.subset)
    except (ValueError, data_lib.DataError, FileNotFoundError) as e:
        print(f"keras-mcv compare: {e}", file=sys.stderr)
        return 2
    report = experiment.compare(
        config, methods=methods, alpha=args.alpha, epochs=args.epochs, anchors=anchors,
        batch_size=args.batch_size, subset=args.subset, data=data,
        macro_settings=macro_settings, out_dir=args.out, seed=args.seed,
        momentum_form=args.momentum_form,
    )
    print(report.markdown)
    for path in report.files:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-mcv",
        description="Learning-rate search by micro cross-validation (Keras 3).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # --- run / list (core) ---
    _add_run_parsers(sub)
    _add_check_parser(sub)
    _add_lr_find_parser(sub)
    # --- tune (macro-CV baseline) ---
    _add_tune_parser(sub)
    # --- compare / report ---
    _add_compare_parser(sub)
    _add_report_parser(sub)
    # --- bench ---
    _add_bench_parser(sub)
    del sub
    return parser


def main(argv=None) -> int:
    """Run `keras-mcv ARGV`; returns the exit status (2 for a usage error, as argparse's)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error already printed
        return exit_request.code
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
