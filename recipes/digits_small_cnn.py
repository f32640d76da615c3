"""scikit-learn's bundled 8x8 digits on a small CNN: the embedded default, under a minute on 2 CPU cores.

Run: `keras-mcv run digits_small_cnn --method search1` or `python -m recipes.digits_small_cnn`.
"""

import sys

from keras_mcv import architectures, data
from recipes._common import make_config, script_main

NAME = "digits_small_cnn"


def _load_digits(data_path=None, subset=None):
    """scikit-learn's digits; `data_path` is unused (the data ships with scikit-learn)."""
    digits = data.load_digits()
    if subset is None:
        return digits
    keep = data.stratified_first(digits.y_train, subset, digits.num_classes)
    return data.ArrayData(
        digits.x_train[keep], digits.y_train[keep], digits.x_test, digits.y_test,
        digits.class_names, digits.name,
    )


def get_config():
    return make_config(NAME, _load_digits, architectures.digits_cnn, batch_size=64, epochs=15)


if __name__ == "__main__":
    sys.exit(script_main(NAME))
