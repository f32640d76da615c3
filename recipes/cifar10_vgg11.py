"""CIFAR-10 on VGG-11 with dropout in the dense layers (thesis Figure 4.1). References: thesis 4.3, 4.5.

Run: `keras-mcv run cifar10_vgg11 --method search1` or `python -m recipes.cifar10_vgg11`.
"""

import sys

from keras_mcv import architectures, data
from recipes._common import make_config, script_main

NAME = "cifar10_vgg11"


def get_config():
    return make_config(NAME, data.load_cifar10, architectures.vgg11)


if __name__ == "__main__":
    sys.exit(script_main(NAME))
