"""Does Keras's ScheduleFreeAdamW train the CIFAR small CNN here? (the end-to-end anchor)

The end-to-end benchmark runs `keras.optimizers.ScheduleFreeAdamW` at its
defaults as a learning-rate-free anchor; in its first run its training loss
stayed at ln 10 on `cifar10_small_cnn`. This separates "the optimizer at these
settings" from "the way it is built": plain `model.fit` with ScheduleFreeAdamW
at its default LR (built lazily by `fit`, and built eagerly after `compile` by
`keras_mcv.optimizers.build_optimizer`), at a 10x smaller LR and with warm-up,
against Adam at the same LR, on a CIFAR-10 subset; one step at LR 0 (which must
leave the weights alone); and both optimizers on a small least-squares problem.

Run (from the repository root; CPU, a few minutes):

    .venv/bin/python -m benchmarks.schedule_free_check [--subset 2000 --epochs 3]

Prints one line per run: training loss per epoch and test accuracy.
"""

from __future__ import annotations

import argparse
import sys


def _runs(steps_per_epoch: int, epochs: int):
    import keras

    warmup = max(1, steps_per_epoch * epochs // 10)
    return [
        ("ScheduleFreeAdamW defaults (lr 0.0025, no warm-up)", lambda: keras.optimizers.ScheduleFreeAdamW()),
        ("ScheduleFreeAdamW lr 0.00025", lambda: keras.optimizers.ScheduleFreeAdamW(2.5e-4)),
        (f"ScheduleFreeAdamW warm-up {warmup} steps (10%)",
         lambda: keras.optimizers.ScheduleFreeAdamW(warmup_steps=warmup)),
        ("Adam lr 0.0025", lambda: keras.optimizers.Adam(2.5e-3)),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    import recipes

    config = recipes.get_config("cifar10_small_cnn")
    data = config.load_data(args.data, args.subset)
    steps = -(-len(data.y_train) // config.batch_size)
    print(f"cifar10_small_cnn, {len(data.y_train)} training images, batch {config.batch_size}, "
          f"{args.epochs} epochs ({steps * args.epochs} steps), CPU; test on 2000 test images")
    from keras_mcv import optimizers

    runs = [(name, make, False) for name, make in _runs(steps, args.epochs)]
    runs.insert(1, (runs[0][0] + ", built eagerly (optimizers.build_optimizer)", runs[0][1], True))
    for name, make, eager in runs:
        keras.utils.set_random_seed(0)
        net = config.build_model(data.input_shape, data.num_classes)
        net.compile(optimizer=make(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        if eager:
            optimizers.build_optimizer(net)
        hist = net.fit(data.x_train, data.y_train, batch_size=config.batch_size, epochs=args.epochs, verbose=0)
        _, acc = net.evaluate(data.x_test[:2000], data.y_test[:2000], verbose=0)
        losses = ", ".join(f"{v:.3f}" for v in hist.history["loss"])
        print(f"  {name}: training loss {losses}; test accuracy {acc:.3f}")

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 10)).astype("float32")
    y = (x @ rng.normal(size=(10, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((10,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])
    net.compile(optimizer=keras.optimizers.ScheduleFreeAdamW(0.0), loss="mse")
    before = float(np.abs(net.layers[0].kernel.numpy()).max())
    net.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0)
    after = float(np.abs(net.layers[0].kernel.numpy()).max())
    print(f"one ScheduleFreeAdamW step at LR 0, built by fit: max |first kernel| {before:.3f} -> {after:.3f}")
    print("least squares, 10 -> 32 (ReLU) -> 1, batch 64, 5 epochs, LR 0.01, optimizers built eagerly:")
    for name, make in (("ScheduleFreeAdamW", keras.optimizers.ScheduleFreeAdamW), ("Adam", keras.optimizers.Adam)):
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((10,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)])
        net.compile(optimizer=make(0.01), loss="mse")
        optimizers.build_optimizer(net)
        hist = net.fit(x, y, batch_size=64, epochs=5, verbose=0)
        print(f"  {name}: training MSE " + ", ".join(f"{v:.3f}" for v in hist.history["loss"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
