"""End-to-end benchmark: time to accuracy of every method against the macro-CV grid.

On one recipe and the same data, in one process: the macro-CV grid (scaled
down by the flags), every method of the registry, and single runs with other
optimizers ("anchors"). Writes run records, a Table 4.5-style report and
plots (test accuracy against wall time among them) under OUT/RECIPE.

Run it as `keras-mcv bench e2e` or `python -m benchmarks.e2e`.
"""

from __future__ import annotations

import argparse
import sys

E2E_ANCHORS = (("adam", 1e-3), ("schedule_free_adamw", None), ("adam", None, "race"),
               ("adam", None, "course"))
"""The extra runs: Adam 1e-3, ScheduleFreeAdamW at its defaults, evaluated at its
averaged point (baselines), and the learning-rate race and the course race with Adam."""


def build_parser() -> argparse.ArgumentParser:
    e = argparse.ArgumentParser(
        prog="keras-mcv bench e2e",
        description="On one recipe and the same data in one process: the macro-CV grid "
        "(scaled down by the flags), every method, and single runs of Adam 1e-3, "
        "ScheduleFreeAdamW at its defaults and the two races with Adam. Writes "
        "records, a Table 4.5-style table and plots under OUT/RECIPE.",
    )
    e.add_argument("--recipe", default="cifar10_small_cnn", help="Defaults to cifar10_small_cnn.")
    e.add_argument("--subset", type=int, default=4000,
                   help="training images, stratified. Defaults to 4000.")
    e.add_argument("--epochs", type=int, default=10, help="epochs of every single run. Defaults to 10.")
    e.add_argument("--repeats", type=int, default=1, help="macro-CV splits per configuration. Defaults to 1.")
    e.add_argument("--patience", type=int, default=3, help="macro-CV patience. Defaults to 3.")
    e.add_argument("--max-epochs", type=int, default=10, help="macro-CV epoch cap. Defaults to 10.")
    e.add_argument("--data", default=None, help="data path (default: the recipe's).")
    e.add_argument("--momentum-form", default=None, choices=("torch", "keras"),
                   help="SGD's momentum form: torch (PyTorch's, TorchSGD: the thesis's) or "
                   "keras (keras.optimizers.SGD). Defaults to the recipe's (torch).")
    e.add_argument("--out", default="saved_runs/benchmarks/e2e",
                   help="Defaults to saved_runs/benchmarks/e2e.")
    return e


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import recipes
    from keras_mcv import experiment

    try:
        config = recipes.get_config(args.recipe)
    except ValueError as e:
        print(f"keras-mcv bench e2e: {e}", file=sys.stderr)
        return 2
    report = experiment.compare(
        config, epochs=args.epochs, subset=args.subset, data_path=args.data,
        macro_settings={"repeats": args.repeats, "patience": args.patience,
                        "max_epochs": args.max_epochs},
        anchors=E2E_ANCHORS, out_dir=args.out, momentum_form=args.momentum_form,
    )
    print(report.markdown)
    for path in report.files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
