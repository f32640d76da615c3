"""SVHN (tfds `svhn_cropped`) on ResNet-18. References: thesis 4.3, 4.6.

Run: `keras-mcv run svhn_resnet18 --method search1` or `python -m recipes.svhn_resnet18`.
"""

import sys

from keras_mcv import architectures, data
from recipes._common import make_config, script_main

NAME = "svhn_resnet18"


def get_config():
    return make_config(NAME, data.load_svhn, architectures.resnet18)


if __name__ == "__main__":
    sys.exit(script_main(NAME))
