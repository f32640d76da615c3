"""CIFAR-10 on the thesis's small CNN (conv 48,48,96,96,192,192 + dense 512,256,10).

Data: `--data` (the CIFAR-10 JPEG zip or an image folder), else
`../shared/data/cifar10-jpeg.zip`, else tfds `cifar10`. References: thesis 4.3, 4.5.

Run: `keras-mcv run cifar10_small_cnn --method search1` or `python -m recipes.cifar10_small_cnn`.
"""

import sys

from keras_mcv import architectures, data
from keras_mcv.experiment import RecipeConfig
from recipes._common import normalized, script_main

NAME = "cifar10_small_cnn"


def get_config() -> RecipeConfig:
    return RecipeConfig(
        name=NAME,
        load_data=normalized(data.load_cifar10),
        build_model=architectures.cifar_small_cnn,
        batch_size=128,
        epochs=100,
        optimizer="sgd",
        momentum=0.9,
        learning_rate=0.01,
        method="search1",
    )


if __name__ == "__main__":
    sys.exit(script_main(NAME))
