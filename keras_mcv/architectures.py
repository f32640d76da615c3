"""Network architectures of the thesis's experiments (section 4.3) and the digits CNN.

Every builder has the signature `builder(input_shape, num_classes, *, l2=None,
dropout=None)` and returns an uncompiled, untrained functional `keras.Model`
whose last layer is a softmax over `num_classes`. `BUILDERS` maps the names
recipes use to the builders, and `get(name)` looks one up.

`l2` and `dropout` are the regularisation knobs of a hyperparameter search
(`keras_mcv.macro.random_search`): `l2` puts `keras.regularizers.L2(l2)` on
every convolution and dense kernel, `dropout` a `Dropout(dropout)` layer
before each dense layer after the first (before the softmax layer for the
single-dense networks). Left at None, every network is exactly the thesis's
(VGG-11 keeps its own dropout of 0.5).

References: thesis section 4.3 (network architectures) and Figure 4.1;
Bakhshi, Training Neural Networks (lecture 09), section 2.1 (L2, dropout).
"""

from __future__ import annotations

import math
import numbers

import keras
from keras import layers


def _check_knobs(l2, dropout):
    """`(kernel_regularizer or None, dropout rate or None)`, or a ValueError."""
    for name, value, high in (("l2", l2, math.inf), ("dropout", dropout, 1.0)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            0.0 <= value < high
        ):
            span = ">= 0" if high == math.inf else "in [0, 1)"
            raise ValueError(f"`{name}` must be None or a number {span}, got {value!r}.")
    regularizer = keras.regularizers.L2(float(l2)) if l2 else None
    return regularizer, (float(dropout) if dropout else None)


def _dropout(x, rate):
    return layers.Dropout(rate)(x) if rate else x

# VGG-11 ("configuration A" of Simonyan & Zisserman): conv widths, "M" = 2x2 max-pool.
VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

# ResNet-18: (filters, stride of the first block) of its four stages of two BasicBlocks.
RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def digits_cnn(input_shape=(8, 8, 1), num_classes: int = 10, *, l2=None,
               dropout=None) -> keras.Model:
    """Small CNN for scikit-learn's 8x8 digits: conv 16, 32 + dense 64.

    Args:
        input_shape: image shape. Defaults to `(8, 8, 1)`.
        num_classes: output classes. Defaults to 10.
        l2: L2 factor on every kernel. Defaults to None (none).
        dropout: dropout rate before the softmax layer. Defaults to None (none).

    References:
        Not in the thesis: the embedded default recipe that runs anywhere
        (`recipes`), shaped like the small CNNs of section 4.3.
    """
    reg, rate = _check_knobs(l2, dropout)
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", kernel_regularizer=reg)(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", kernel_regularizer=reg)(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu", kernel_regularizer=reg)(x)
    x = _dropout(x, rate)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def _conv_pairs(x, widths, reg=None):
    """3x3 "same" ReLU convs, with a 2x2 max-pool after every second one."""
    for i, filters in enumerate(widths):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_regularizer=reg)(x)
        if i % 2 == 1:
            x = layers.MaxPooling2D()(x)
    return x


def _small_cnn(input_shape, num_classes, conv_widths, dense_widths, name, l2=None, dropout=None):
    """Plain conv/pool stack + dense head: no batch norm, no dropout unless asked."""
    reg, rate = _check_knobs(l2, dropout)
    inputs = keras.Input(shape=input_shape)
    x = _conv_pairs(inputs, conv_widths, reg)
    x = layers.Flatten()(x)
    for units in dense_widths:
        x = layers.Dense(units, activation="relu", kernel_regularizer=reg)(x)
        x = _dropout(x, rate)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name=name)


def cifar_small_cnn(input_shape=(32, 32, 3), num_classes: int = 10, *, l2=None,
                    dropout=None) -> keras.Model:
    """The thesis's small CIFAR-10 CNN: conv 48,48,96,96,192,192 + dense 512,256.

    Six 3x3 ReLU convolutions ("same" padding) with a 2x2 max-pool after each
    pair, then dense 512 and 256 (ReLU) and a softmax layer. Deliberately no
    regularisation (no batch norm, no dropout), as in the thesis. The thesis
    prints the second dense width as "265", a typo for 256.

    Args:
        input_shape: image shape. Defaults to `(32, 32, 3)`.
        num_classes: output classes. Defaults to 10.
        l2: L2 factor on every kernel. Defaults to None (none).
        dropout: dropout rate after each hidden dense layer. Defaults to None
            (none).

    References:
        Thesis section 4.3 (small custom CNN for CIFAR-10).
    """
    return _small_cnn(
        input_shape, num_classes, (48, 48, 96, 96, 192, 192), (512, 256), "cifar_small_cnn",
        l2, dropout,
    )


def svhn_small_cnn(input_shape=(32, 32, 3), num_classes: int = 10, *, l2=None,
                   dropout=None) -> keras.Model:
    """The thesis's small SVHN CNN: conv 32,32,64,64 + dense 512.

    Four 3x3 ReLU convolutions ("same" padding) with a 2x2 max-pool after each
    pair, then dense 512 (ReLU) and a softmax layer. No regularisation.

    Args:
        input_shape: image shape. Defaults to `(32, 32, 3)`.
        num_classes: output classes. Defaults to 10.
        l2: L2 factor on every kernel. Defaults to None (none).
        dropout: dropout rate after the hidden dense layer. Defaults to None
            (none).

    References:
        Thesis sections 4.3 and 4.6 (small custom CNN for SVHN).
    """
    return _small_cnn(input_shape, num_classes, (32, 32, 64, 64), (512,), "svhn_small_cnn",
                      l2, dropout)


def vgg11(input_shape=(32, 32, 3), num_classes: int = 10, *, l2=None,
          dropout=None) -> keras.Model:
    """VGG-11 for 32x32 images: 8 conv layers + 3 FC layers with dropout.

    Convolutions follow `VGG11_CONFIG` (3x3, "same", ReLU; "M" is a 2x2
    max-pool), so a 32x32 input ends as 1x1x512. The classifier is the
    CIFAR-sized version of Figure 4.1's three FC layers: dense 512, dropout
    0.5, dense 512, dropout 0.5, softmax. No batch norm (Figure 4.1: only
    ResNet-18 has it).

    Args:
        input_shape: image shape; height and width at least 32. Defaults to
            `(32, 32, 3)`.
        num_classes: output classes. Defaults to 10.
        l2: L2 factor on every kernel. Defaults to None (none).
        dropout: the rate of both dropout layers; 0 removes them. Defaults to
            None (0.5, the network's own).

    References:
        Thesis section 4.3 and Figure 4.1 (VGG-11).
    """
    reg, rate = _check_knobs(l2, 0.5 if dropout is None else dropout)
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for item in VGG11_CONFIG:
        if item == "M":
            x = layers.MaxPooling2D()(x)
        else:
            x = layers.Conv2D(item, 3, padding="same", activation="relu", kernel_regularizer=reg)(x)
    x = layers.Flatten()(x)
    for _ in range(2):
        x = layers.Dense(512, activation="relu", kernel_regularizer=reg)(x)
        x = _dropout(x, rate)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name="vgg11")


def _conv_bn(x, filters, kernel_size, strides=1, reg=None):
    # The bias is redundant: BatchNorm's beta adds the same per-channel offset.
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                      kernel_regularizer=reg)(x)
    return layers.BatchNormalization()(x)


def _basic_block(x, filters, strides, reg=None):
    """ResNet BasicBlock: two 3x3 conv+BN, plus the (projected) shortcut, then ReLU."""
    shortcut = x
    y = layers.ReLU()(_conv_bn(x, filters, 3, strides, reg))
    y = _conv_bn(y, filters, 3, reg=reg)
    if strides != 1 or x.shape[-1] != filters:
        # Identity cannot be added across a change of shape: 1x1 conv+BN projection.
        shortcut = _conv_bn(x, filters, 1, strides, reg)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def resnet18(input_shape=(32, 32, 3), num_classes: int = 10, *, l2=None,
             dropout=None) -> keras.Model:
    """CIFAR-style ResNet-18: 3x3 stem + 8 BasicBlocks + global pooling + dense.

    Stem: 3x3 conv 64 + BN + ReLU (no 7x7 conv or max-pool, which would shrink
    32x32 inputs too early). Four stages of two BasicBlocks with 64, 128, 256,
    512 filters and first-block strides 1, 2, 2, 2; a 1x1 conv+BN projects the
    shortcut where the shape changes. Global average pooling, then a softmax
    dense layer. Convolutions carry no bias (BN follows each one). About
    11.17M parameters for 10 classes.

    Args:
        input_shape: image shape. Defaults to `(32, 32, 3)`.
        num_classes: output classes. Defaults to 10.
        l2: L2 factor on every kernel. Defaults to None (none).
        dropout: dropout rate before the softmax layer. Defaults to None (none).

    References:
        Thesis section 4.3 and Figure 4.1 (ResNet-18); He et al. 2016.
    """
    reg, rate = _check_knobs(l2, dropout)
    inputs = keras.Input(shape=input_shape)
    x = layers.ReLU()(_conv_bn(inputs, 64, 3, reg=reg))
    for filters, first_stride in RESNET18_STAGES:
        x = _basic_block(x, filters, first_stride, reg)
        x = _basic_block(x, filters, 1, reg)
    x = layers.GlobalAveragePooling2D()(x)
    x = _dropout(x, rate)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name="resnet18")


def resnet50(input_shape=(224, 224, 3), num_classes: int = 8, *, l2=None,
             dropout=None) -> keras.Model:
    """Keras's ResNet-50, untrained (no weight download), with a softmax head.

    A thin wrapper on `keras.applications.ResNet50(weights=None,
    include_top=True, ...)`, so it needs no internet. Inputs are used as
    given (no ImageNet preprocessing inside the model).

    Args:
        input_shape: image shape; height and width at least 32.
            Defaults to `(224, 224, 3)`.
        num_classes: output classes. Defaults to 8 (Adience age groups).
        l2, dropout: not available: Keras's ResNet-50 takes no regularizer;
            anything but None raises a ValueError. Defaults to None.

    References:
        Thesis sections 4.3 and 4.7 (ResNet-50 for Adience).
    """
    if l2 is not None or dropout is not None:
        raise ValueError(
            "resnet50 (keras.applications.ResNet50) has no l2 or dropout knob; "
            f"got l2={l2!r}, dropout={dropout!r}. Leave them None, or search only the "
            "learning rate on this network."
        )
    return keras.applications.ResNet50(
        include_top=True,
        weights=None,
        input_shape=tuple(input_shape),
        classes=num_classes,
        name="resnet50",
    )


BUILDERS = {
    "digits_cnn": digits_cnn,
    "cifar_small_cnn": cifar_small_cnn,
    "svhn_small_cnn": svhn_small_cnn,
    "vgg11": vgg11,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def get(name: str):
    """The builder registered as `name` in `BUILDERS`.

    Args:
        name: a key of `BUILDERS`, e.g. `"resnet18"`.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.

    References:
        Thesis section 4.3.
    """
    try:
        return BUILDERS[name]
    except KeyError:
        known = ", ".join(sorted(BUILDERS))
        raise ValueError(f"Unknown architecture {name!r}; known architectures: {known}.") from None
