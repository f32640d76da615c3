"""SVHN (tfds `svhn_cropped`; `--data` is the tfds data directory) on the small CNN (conv 32,32,64,64 + dense 512,10). References: thesis 4.3, 4.6.

Run: `keras-mcv run svhn_small_cnn --method search1` or `python -m recipes.svhn_small_cnn`.
"""

import sys

from keras_mcv import architectures, data
from recipes._common import make_config, script_main

NAME = "svhn_small_cnn"


def get_config():
    return make_config(NAME, data.load_svhn, architectures.svhn_small_cnn)


if __name__ == "__main__":
    sys.exit(script_main(NAME))
