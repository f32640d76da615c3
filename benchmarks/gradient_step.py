"""The gradient check's step h on a recipe's network: largest relative error by h and examples.

`keras-mcv check` runs `practice.gradient_check` in float64; this measures which step
keeps clear of ReLU and max-pool kinks on the recipe's network, at its initial weights
(seed 0), sampling 5 entries of every variable.

Run (repository root):

    .venv/bin/python -m benchmarks.gradient_step --recipe cifar10_small_cnn \
        --out saved_runs/companions/gradient_step_cifar10.md

References: Bakhshi, Training Neural Networks (lecture 09), section 4.1; Karpathy,
CS231n course notes, "Neural Networks Part 3", gradient checks (kinks).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.gradient_step", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="cifar10_small_cnn")
    p.add_argument("--data", default=None)
    p.add_argument("--examples", default="1,2,4")
    p.add_argument("--steps", default="1e-5,1e-6")
    p.add_argument("--out", default=None, help="Markdown file to write. Defaults to stdout only.")
    args = p.parse_args(argv)

    import keras

    import recipes
    from keras_mcv import experiment, practice

    config = recipes.get_config(args.recipe)
    data = config.load_data(args.data or config.data_path, 200)
    keras.utils.set_random_seed(0)
    net = config.build_model(data.input_shape, data.num_classes)
    net.compile(optimizer=experiment.make_optimizer(config), loss="sparse_categorical_crossentropy")
    lines = [f"# Gradient check step on {args.recipe} (float64, initial weights, seed 0)", "",
             "Command: `python -m benchmarks.gradient_step " + " ".join(argv or sys.argv[1:]) + "`",
             "", "| examples | step h | largest relative error | verdict | worst entry | time |",
             "|---|---|---|---|---|---|"]
    for n in (int(v) for v in args.examples.split(",")):
        for h in (float(v) for v in args.steps.split(",")):
            start = time.perf_counter()
            result = practice.gradient_check(net, data.x_train[:n], data.y_train[:n], epsilon=h, seed=0)
            worst = max(result.rows, key=lambda row: row.relative_error)
            lines.append(f"| {n} | {h:g} | {result.max_relative_error:.2e} | {result.verdict} "
                         f"| {worst.variable}{list(worst.index)} | {time.perf_counter() - start:.1f}s |")
            print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
