"""Data loaders that all end in the same place: an `ArrayData` of NumPy arrays.

Every loader returns uint8 (images, NHWC) or float32 (features) arrays plus
int64 labels, so that the macro cross-validation baseline can make stratified
splits with scikit-learn and every method sees exactly the same examples.
`make_dataset` turns arrays into a `tf.data` pipeline with optional
augmentation; `normalize` standardises per channel with training statistics.

Sources: scikit-learn's bundled digits, TensorFlow Datasets (`cifar10`,
`svhn_cropped`), image folders or zips in the `train/<class>/`, `test/<class>/`
layout (the CIFAR-10 JPEG copy), and the Adience aligned faces with their five
fold files. Decoded image folders are cached as `.npz` outside the repository.

References: thesis section 4.2 (datasets).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from keras_mcv.data.adience import (
    ADIENCE_AGE_GROUPS,
    ADIENCE_CLASS_NAMES,
    ADIENCE_NUM_FOLDS,
    adience_age_class,
    load_adience,
)
from keras_mcv.data.arrays import (
    AUGMENT_JITTER,
    AUGMENT_PAD,
    AUGMENT_TRANSFORMS,
    ArrayData,
    DataError,
    _apply_subset,
    augmentation_layers,
    channel_stats,
    class_quotas,
    interleave_classes,
    load_digits,
    make_dataset,
    normalize,
    stratified_first,
)
from keras_mcv.data.image_folders import (
    IMAGE_EXTENSIONS,
    default_cache_dir,
    load_image_folder,
)
from keras_mcv.data.tfds import load_tfds

__all__ = [
    "ADIENCE_AGE_GROUPS",
    "ADIENCE_CLASS_NAMES",
    "ADIENCE_NUM_FOLDS",
    "AUGMENT_JITTER",
    "AUGMENT_PAD",
    "AUGMENT_TRANSFORMS",
    "ArrayData",
    "DataError",
    "IMAGE_EXTENSIONS",
    "adience_age_class",
    "augmentation_layers",
    "channel_stats",
    "class_quotas",
    "default_cache_dir",
    "interleave_classes",
    "load_adience",
    "load_cifar10",
    "load_digits",
    "load_image_folder",
    "load_svhn",
    "load_tfds",
    "make_dataset",
    "normalize",
    "stratified_first",
]


def _default_cifar10_path():
    """`$KERAS_MCV_CIFAR10`, else `shared/data/cifar10-jpeg.zip` in the folder that holds the repository, else None."""
    env = os.environ.get("KERAS_MCV_CIFAR10")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for base in (repo.parent, Path.cwd().parent):
        candidate = base / "shared" / "data" / "cifar10-jpeg.zip"
        if candidate.exists():
            return candidate
    return None


def load_cifar10(data_path=None, subset=None) -> ArrayData:
    """CIFAR-10 as `(n, 32, 32, 3)` uint8 arrays, from an image folder/zip or tfds.

    Source, first match wins: `data_path` (directory or zip, read by
    `load_image_folder`); `$KERAS_MCV_CIFAR10`; `shared/data/cifar10-jpeg.zip`
    beside the repository (or the working directory); `load_tfds("cifar10")`.

    Args:
        data_path: directory or zip in the `train/<class>/` layout.
            Defaults to None (search as above).
        subset: keep only the first `subset` training images, stratified.
            Defaults to None (all 50,000).

    Raises:
        DataError: the chosen source is missing or unreadable (an explicitly
            set `$KERAS_MCV_CIFAR10` that does not exist is an error, not a
            silent fallback to tfds).

    References:
        Thesis section 4.2.1.
    """
    path = Path(data_path) if data_path is not None else _default_cifar10_path()
    if path is not None:
        data = load_image_folder(path, subset=subset)
        return dataclasses.replace(data, name="cifar10")
    return _apply_subset(load_tfds("cifar10"), subset)


def load_svhn(data_path=None, subset=None) -> ArrayData:
    """SVHN digits (tfds `svhn_cropped`) as `(n, 32, 32, 3)` uint8 arrays.

    Args:
        data_path: tfds data directory holding a prepared `svhn_cropped`.
            Defaults to None (tfds's default, `~/tensorflow_datasets`).
        subset: keep only the first `subset` training images, stratified.
            Defaults to None (all 73,257).

    Raises:
        DataError: `svhn_cropped` is not prepared in the data directory.

    References:
        Thesis section 4.2.2.
    """
    data = load_tfds("svhn_cropped", data_dir=data_path)
    return dataclasses.replace(_apply_subset(data, subset), name="svhn")
