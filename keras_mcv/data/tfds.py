"""TensorFlow Datasets as `ArrayData` (CIFAR-10, SVHN `svhn_cropped`).

References: thesis section 4.2 (datasets).
"""

from __future__ import annotations

import numpy as np

from keras_mcv.data.arrays import ArrayData, DataError


def _tfds_to_numpy(ds, name, split):
    """All (image, label) pairs of a supervised tf.data split as two arrays."""
    import tensorflow_datasets as tfds

    batches = list(tfds.as_numpy(ds.batch(4096)))
    if not batches:
        raise DataError(f"tfds dataset {name!r} split {split!r} is empty.")
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches]).astype("int64")
    return x, y


def load_tfds(name: str, data_dir=None, download: bool = False, split=("train", "test")) -> ArrayData:
    """A TensorFlow Datasets image classification set (`cifar10`, `svhn_cropped`) as arrays.

    Reads with `tfds.load(name, split=..., as_supervised=True)` and converts
    with `tfds.as_numpy`. Batches of 4,096 are concatenated rather than
    asking for `batch_size=-1`: tfds sizes that single batch from the split
    metadata and falls back to `sys.maxsize` when it is missing, which aborts
    the process (as under `tfds.testing.mock_data`).

    Args:
        name: tfds name, e.g. `"cifar10"` or `"svhn_cropped"`.
        data_dir: tfds data directory. Defaults to None (tfds's own default,
            `~/tensorflow_datasets`).
        download: let tfds download and prepare the data when missing.
            Defaults to False, so an offline machine fails fast with a
            `DataError` instead of trying the network.
        split: the (train, test) split names. Defaults to `("train", "test")`.

    Raises:
        DataError: the dataset is unknown or not prepared in `data_dir`.

    References:
        Thesis sections 4.2.1 (CIFAR-10) and 4.2.2 (SVHN).
    """
    import tensorflow_datasets as tfds

    if len(split) != 2:
        raise ValueError(f"split must be (train, test), got {split!r}.")
    where = data_dir or "tfds's default data_dir (~/tensorflow_datasets)"
    try:
        (train, test), info = tfds.load(
            name,
            split=list(split),
            data_dir=data_dir,
            download=download,
            as_supervised=True,
            with_info=True,
        )
    except AssertionError as err:  # tfds's "could not find data in <dir>"
        raise DataError(
            f"tfds dataset {name!r} is not prepared in {where}. Fix: run once with "
            f"download=True on a machine with internet (or `tfds build {name}`), or pass "
            f"data_dir= pointing at a prepared copy. ({err})"
        ) from err
    except tfds.core.DatasetNotFoundError as err:
        raise DataError(f"{name!r} is not a tfds dataset name; use e.g. 'cifar10' or 'svhn_cropped'.") from err
    x_train, y_train = _tfds_to_numpy(train, name, split[0])
    x_test, y_test = _tfds_to_numpy(test, name, split[1])
    class_names = list(info.features[info.supervised_keys[1]].names)
    return ArrayData(x_train, y_train, x_test, y_test, class_names, name)
