"""CIFAR-10 on the thesis's small CNN (conv 48,48,96,96,192,192 + dense 512,256,10).

Data: `--data` (the CIFAR-10 JPEG zip or an image folder), else
`../shared/data/cifar10-jpeg.zip`, else tfds `cifar10`. References: thesis 4.3, 4.5.

Run: `keras-mcv run cifar10_small_cnn --method search1` or `python -m recipes.cifar10_small_cnn`.
"""

import sys

from keras_mcv import architectures, data
from recipes._common import make_config, script_main

NAME = "cifar10_small_cnn"


def get_config():
    return make_config(NAME, data.load_cifar10, architectures.cifar_small_cnn)


if __name__ == "__main__":
    sys.exit(script_main(NAME))
