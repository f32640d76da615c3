"""Adience age groups (8 classes) on an untrained ResNet-50, faces resized to 64x64.

`--data` is the Adience directory (`faces/` and `fold_0_data.txt` ... `fold_4_data.txt`);
fold 0 is the test set. References: thesis 4.3, 4.7.

Run: `keras-mcv run adience_resnet50 --method search1` or `python -m recipes.adience_resnet50`.
"""

import sys

from keras_mcv import architectures, data
from recipes._common import make_config, script_main

NAME = "adience_resnet50"


def _load_adience(data_path=None, subset=None):
    if data_path is None:
        raise data.DataError(
            "adience_resnet50 needs the Adience directory: pass --data DIR holding "
            "faces/ and fold_0_data.txt ... fold_4_data.txt."
        )
    return data.load_adience(data_path, fold=0, image_size=64, subset=subset)


def get_config():
    return make_config(NAME, _load_adience, architectures.resnet50, batch_size=32)


if __name__ == "__main__":
    sys.exit(script_main(NAME))
