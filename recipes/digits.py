"""The digits recipe's loader: scikit-learn's bundled 8x8 digits, which need no download."""

from keras_mcv import data


def load(data_path=None, subset=None):
    """scikit-learn's digits (80/20 split), optionally the first `subset` training examples.

    The data ship with scikit-learn, so there is nothing to point at: a
    `data_path` is refused rather than silently ignored.
    """
    if data_path is not None:
        raise data.DataError(
            f"digits_small_cnn reads scikit-learn's bundled digits; --data {data_path!r} "
            "does not apply. Remove --data."
        )
    digits = data.load_digits()
    if subset is None:
        return digits
    keep = data.stratified_first(digits.y_train, subset, digits.num_classes)
    return data.ArrayData(
        digits.x_train[keep], digits.y_train[keep], digits.x_test, digits.y_test,
        digits.class_names, digits.name,
    )
