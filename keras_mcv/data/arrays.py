"""`ArrayData`, the one shape every loader returns, and what works on it: subsets,
per-channel normalisation, a `tf.data` pipeline with augmentation; the bundled digits.

References: thesis section 4.2 (datasets).
"""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """Data that cannot be loaded as asked; the message names the path and the fix."""


@dataclasses.dataclass
class ArrayData:
    """Train and test arrays of one dataset.

    Attributes:
        x_train: training inputs, `(n, ...)`; images are `(n, h, w, c)` uint8.
        y_train: integer class labels `(n,)`, int64.
        x_test: test inputs.
        y_test: test labels.
        class_names: one name per class; its length is the number of classes.
        name: a short name of the dataset, used in run records.
        skipped: image files that were listed but could not be read or
            decoded and were left out. Defaults to 0.
        unlabeled: examples left out because they carry no usable label
            (Adience rows with age "None"). Defaults to 0.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    name: str
    skipped: int = 0
    unlabeled: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ArrayData:
    """scikit-learn's bundled 8x8 digits as `(n, 8, 8, 1)` images in 0..16.

    The split is stratified and fixed by `seed`, so every method sees the same
    test set.

    Args:
        test_fraction: share of the 1,797 images kept for testing.
            Defaults to 0.2.
        seed: seed of the stratified split. Defaults to 0.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    x = digits.images.astype("float32")[..., None]
    y = digits.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return ArrayData(x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)], "digits")


def _check_subset(subset):
    if subset is not None and (isinstance(subset, bool) or int(subset) != subset or subset < 1):
        raise ValueError(f"subset must be a positive integer or None, got {subset!r}.")


def class_quotas(num_classes: int, n: int) -> list[int]:
    """How many of `n` examples each class gets: equal shares, the remainder to the first classes.

    Args:
        num_classes: number of classes.
        n: total examples wanted.
    """
    share, extra = divmod(n, num_classes)
    return [share + (1 if c < extra else 0) for c in range(num_classes)]


def stratified_first(y: np.ndarray, n: int, num_classes: int | None = None) -> np.ndarray:
    """Indices of the first examples of each class, `class_quotas(num_classes, n)` of them.

    Deterministic (no shuffling: the source order decides) and in the original
    order. A class with fewer examples than its quota gives all it has, so the
    result may hold fewer than `n` indices.

    Args:
        y: integer labels.
        n: total examples wanted.
        num_classes: number of classes. Defaults to `max(y) + 1`.
    """
    y = np.asarray(y)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    keep = [np.flatnonzero(y == c)[:q] for c, q in enumerate(class_quotas(num_classes, n))]
    return np.sort(np.concatenate(keep))


def _apply_subset(data: ArrayData, subset) -> ArrayData:
    """`data` with only the first `subset` training examples, stratified."""
    _check_subset(subset)
    if subset is None:
        return data
    idx = stratified_first(data.y_train, subset, data.num_classes)
    return dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])


def interleave_classes(y: np.ndarray) -> np.ndarray:
    """The order that deals examples round-robin over classes, each class keeping its order.

    With it, any prefix of the data is as stratified as it can be: the first
    k * num_classes examples hold k of every class (while the classes last).
    """
    y = np.asarray(y)
    rank = np.empty(len(y), dtype="int64")
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rank[members] = np.arange(len(members))
    return np.lexsort((y, rank))


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over all but the last axis."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype="float64").astype("float32")
    std = x.std(axis=axes, dtype="float64").astype("float32")
    return mean, np.maximum(std, 1e-6)


def normalize(data: ArrayData) -> ArrayData:
    """Per-channel standardisation with statistics of the training set only.

    uint8 images are cast to float32 first; the result is float32.
    """
    mean, std = channel_stats(data.x_train)
    return dataclasses.replace(
        data,
        x_train=((data.x_train.astype("float32") - mean) / std).astype("float32"),
        x_test=((data.x_test.astype("float32") - mean) / std).astype("float32"),
    )


AUGMENT_TRANSFORMS = ("flip", "translate", "jitter")
"""What augmentation may do: random horizontal flip, random translation, photometric jitter."""

AUGMENT_PAD = 4
"""Largest translation, in pixels, along each axis."""

AUGMENT_JITTER = 0.1
"""Brightness and contrast factor of the jitter (a small one)."""


def check_transforms(augment) -> tuple:
    """`augment` (True, False/None, or names of `AUGMENT_TRANSFORMS`) as a tuple of names."""
    if augment is None or augment is False:
        return ()
    if augment is True:
        return AUGMENT_TRANSFORMS
    if isinstance(augment, str):
        augment = (augment,)
    names = tuple(augment)
    unknown = [t for t in names if t not in AUGMENT_TRANSFORMS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"augment must be True, False or distinct names of {AUGMENT_TRANSFORMS}, "
            f"got {augment!r}."
        )
    return names


def augmentation_layers(transforms, image_shape, value_range, seed=None):
    """The augmentation as a `keras.Sequential` of Keras preprocessing layers.

    ```
    "flip":      RandomFlip("horizontal")                     # probability 1/2
    "translate": RandomTranslation(p / h, p / w, fill 0, nearest)   # up to p = 4 pixels
    "jitter":    RandomBrightness(0.1, value_range)           # + U(-0.1, 0.1) x range
                 RandomContrast(0.1, value_range)             # (x - mean) x U(0.9, 1.1) + mean
    ```
    Each image of a batch draws its own transform. Translation fills with 0
    (black for raw pixels, the mean colour after per-channel standardisation)
    and samples the nearest pixel, so a shift is a whole number of pixels.
    Brightness and contrast clip to `value_range`. The layers act only with
    `training=True`.

    Args:
        transforms: names of `AUGMENT_TRANSFORMS`.
        image_shape: `(h, w, c)`.
        value_range: `(low, high)` of the pixel values (the data's range).
        seed: seed of the layers' random draws. Defaults to None.

    References: Mandatelli, Improved Training Methods for Neural Networks,
    2018, section 2.4 (flip with probability 0.5, translation of 4 pixels with
    zero padding); Bakhshi, Training Neural Networks (lecture 09) and the
    DD2424 assignment report (small geometric and photometric jitter).
    """
    import keras

    h, w = int(image_shape[0]), int(image_shape[1])
    value_range = (float(value_range[0]), float(value_range[1]))
    def seed_of(i):  # one seed per layer, so two layers never draw the same numbers
        return None if seed is None else int(seed) + i

    layers = []
    if "flip" in transforms:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed_of(0)))
    if "translate" in transforms:
        layers.append(keras.layers.RandomTranslation(
            AUGMENT_PAD / h, AUGMENT_PAD / w, fill_mode="constant", fill_value=0.0,
            interpolation="nearest", seed=seed_of(1),
        ))
    if "jitter" in transforms:
        layers.append(keras.layers.RandomBrightness(
            AUGMENT_JITTER, value_range=value_range, seed=seed_of(2)))
        layers.append(keras.layers.RandomContrast(
            AUGMENT_JITTER, value_range=value_range, seed=seed_of(3)))
    return keras.Sequential(layers, name="augmentation")


def make_dataset(x, y, batch_size: int, shuffle: bool = False, augment=False, seed=None):
    """A `tf.data.Dataset` of `(float32 x, int64 y)` batches.

    Pipeline: shuffle (whole array, reshuffled each epoch) -> batch ->
    augmentation (`augmentation_layers`, per image) -> prefetch. Both extras
    are off by default, as in the thesis.

    Args:
        x: inputs `(n, ...)`; images `(n, h, w, c)` when `augment` is on.
        y: integer labels `(n,)`.
        batch_size: examples per batch; the last batch may be smaller.
        shuffle: shuffle the examples every epoch. Defaults to False.
        augment: True for every transform of `AUGMENT_TRANSFORMS`, or the
            names of those to apply; False or None for none. Brightness and
            contrast clip to the range of `x`. Defaults to False.
        seed: seed of shuffling and augmentation. Defaults to None (random).
    """
    import tensorflow as tf

    transforms = check_transforms(augment)
    x, y = np.asarray(x), np.asarray(y)
    if transforms and x.ndim != 4:
        raise ValueError(f"augment needs images (n, h, w, c); got x of shape {x.shape}.")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), tf.cast(b, tf.int64)))
    if transforms:
        layers = augmentation_layers(
            transforms, x.shape[1:], (float(x.min()), float(x.max())), seed=seed
        )
        ds = ds.map(lambda a, b: (layers(a, training=True), b))
    return ds.prefetch(tf.data.AUTOTUNE)
