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


AUGMENT_PAD = 4


def _augment_image(image, seed):
    """Random horizontal flip, then pad by `AUGMENT_PAD` and crop back at a random offset.

    Stateless ops seeded per example, so a fixed `make_dataset(seed=...)`
    gives the same augmented epochs on every run.
    """
    import tensorflow as tf

    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    p = AUGMENT_PAD
    padded = tf.pad(image, [[p, p], [p, p], [0, 0]])  # zero padding
    return tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)


def make_dataset(x, y, batch_size: int, shuffle: bool = False, augment: bool = False, seed=None):
    """A `tf.data.Dataset` of `(float32 x, int64 y)` batches.

    Pipeline: shuffle (whole array, reshuffled each epoch) -> per-example
    augmentation (horizontal flip + pad-4-and-random-crop translation) ->
    batch -> prefetch. Both extras are off by default, as in the thesis.

    Args:
        x: inputs `(n, ...)`; images `(n, h, w, c)` when `augment` is on.
        y: integer labels `(n,)`.
        batch_size: examples per batch; the last batch may be smaller.
        shuffle: shuffle the examples every epoch. Defaults to False.
        augment: random flip and translation of images. Defaults to False.
        seed: seed of shuffling and augmentation. Defaults to None (random).
    """
    import tensorflow as tf

    x, y = np.asarray(x), np.asarray(y)
    if augment and x.ndim != 4:
        raise ValueError(f"augment=True needs images (n, h, w, c); got x of shape {x.shape}.")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), tf.cast(b, tf.int64)))
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda xy, s: (_augment_image(xy[0], s), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
