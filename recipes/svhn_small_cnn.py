"""SVHN (tfds `svhn_cropped`; `--data` is the tfds data directory) on the small CNN (conv 32,32,64,64 + dense 512,10). References: thesis 4.3, 4.6.

Run: `keras-mcv run svhn_small_cnn --method search1` or `python -m recipes.svhn_small_cnn`.
"""

import sys

from keras_mcv import architectures, data
from keras_mcv.experiment import RecipeConfig
from recipes._common import normalized, script_main

NAME = "svhn_small_cnn"


def get_config() -> RecipeConfig:
    return RecipeConfig(
        name=NAME,
        load_data=normalized(data.load_svhn),
        build_model=architectures.svhn_small_cnn,
        batch_size=128,
        epochs=100,
        optimizer="sgd",
        momentum=0.9,
        learning_rate=0.01,
        method="search1",
    )


if __name__ == "__main__":
    sys.exit(script_main(NAME))
