"""CIFAR-10 on VGG-11 with dropout in the dense layers (thesis Figure 4.1). References: thesis 4.3, 4.5.

Run: `keras-mcv run cifar10_vgg11 --method search1` or `python -m recipes.cifar10_vgg11`.
"""

import sys

from keras_mcv import architectures, data
from keras_mcv.experiment import RecipeConfig
from recipes._common import normalized, script_main

NAME = "cifar10_vgg11"


def get_config() -> RecipeConfig:
    return RecipeConfig(
        name=NAME,
        load_data=normalized(data.load_cifar10),
        build_model=architectures.vgg11,
        batch_size=128,
        epochs=100,
        optimizer="sgd",
        momentum=0.9,
        learning_rate=0.01,
        method="search1",
    )


if __name__ == "__main__":
    sys.exit(script_main(NAME))
