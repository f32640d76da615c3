"""Network architectures of the thesis's experiments (section 4.3) and the digits CNN.

Every builder has the signature `builder(input_shape, num_classes)` and returns
an uncompiled, untrained functional `keras.Model` whose last layer is a softmax
over `num_classes`. `BUILDERS` maps the names recipes use to the builders, and
`get(name)` looks one up.

References: thesis section 4.3 (network architectures) and Figure 4.1.
"""

from __future__ import annotations

import keras
from keras import layers

# VGG-11 ("configuration A" of Simonyan & Zisserman): conv widths, "M" = 2x2 max-pool.
VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

# ResNet-18: (filters, stride of the first block) of its four stages of two BasicBlocks.
RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def digits_cnn(input_shape=(8, 8, 1), num_classes: int = 10) -> keras.Model:
    """Small CNN for scikit-learn's 8x8 digits: conv 16, 32 + dense 64.

    Args:
        input_shape: image shape. Defaults to `(8, 8, 1)`.
        num_classes: output classes. Defaults to 10.

    References:
        Not in the thesis: the embedded default recipe that runs anywhere
        (`recipes`), shaped like the small CNNs of section 4.3.
    """
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def _conv_pairs(x, widths):
    """3x3 "same" ReLU convs, with a 2x2 max-pool after every second one."""
    for i, filters in enumerate(widths):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        if i % 2 == 1:
            x = layers.MaxPooling2D()(x)
    return x


def _small_cnn(input_shape, num_classes, conv_widths, dense_widths, name):
    """Plain conv/pool stack + dense head: no batch norm, no dropout."""
    inputs = keras.Input(shape=input_shape)
    x = _conv_pairs(inputs, conv_widths)
    x = layers.Flatten()(x)
    for units in dense_widths:
        x = layers.Dense(units, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def cifar_small_cnn(input_shape=(32, 32, 3), num_classes: int = 10) -> keras.Model:
    """The thesis's small CIFAR-10 CNN: conv 48,48,96,96,192,192 + dense 512,256.

    Six 3x3 ReLU convolutions ("same" padding) with a 2x2 max-pool after each
    pair, then dense 512 and 256 (ReLU) and a softmax layer. Deliberately no
    regularisation (no batch norm, no dropout), as in the thesis. The thesis
    prints the second dense width as "265", a typo for 256.

    Args:
        input_shape: image shape. Defaults to `(32, 32, 3)`.
        num_classes: output classes. Defaults to 10.

    References:
        Thesis section 4.3 (small custom CNN for CIFAR-10).
    """
    return _small_cnn(
        input_shape, num_classes, (48, 48, 96, 96, 192, 192), (512, 256), "cifar_small_cnn"
    )


def svhn_small_cnn(input_shape=(32, 32, 3), num_classes: int = 10) -> keras.Model:
    """The thesis's small SVHN CNN: conv 32,32,64,64 + dense 512.

    Four 3x3 ReLU convolutions ("same" padding) with a 2x2 max-pool after each
    pair, then dense 512 (ReLU) and a softmax layer. No regularisation.

    Args:
        input_shape: image shape. Defaults to `(32, 32, 3)`.
        num_classes: output classes. Defaults to 10.

    References:
        Thesis sections 4.3 and 4.6 (small custom CNN for SVHN).
    """
    return _small_cnn(input_shape, num_classes, (32, 32, 64, 64), (512,), "svhn_small_cnn")


def vgg11(input_shape=(32, 32, 3), num_classes: int = 10) -> keras.Model:
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

    References:
        Thesis section 4.3 and Figure 4.1 (VGG-11).
    """
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for item in VGG11_CONFIG:
        if item == "M":
            x = layers.MaxPooling2D()(x)
        else:
            x = layers.Conv2D(item, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    for _ in range(2):
        x = layers.Dense(512, activation="relu")(x)
        x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="vgg11")


def _conv_bn(x, filters, kernel_size, strides=1):
    # The bias is redundant: BatchNorm's beta adds the same per-channel offset.
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False)(x)
    return layers.BatchNormalization()(x)


def _basic_block(x, filters, strides):
    """ResNet BasicBlock: two 3x3 conv+BN, plus the (projected) shortcut, then ReLU."""
    shortcut = x
    y = layers.ReLU()(_conv_bn(x, filters, 3, strides))
    y = _conv_bn(y, filters, 3)
    if strides != 1 or x.shape[-1] != filters:
        # Identity cannot be added across a change of shape: 1x1 conv+BN projection.
        shortcut = _conv_bn(x, filters, 1, strides)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def resnet18(input_shape=(32, 32, 3), num_classes: int = 10) -> keras.Model:
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

    References:
        Thesis section 4.3 and Figure 4.1 (ResNet-18); He et al. 2016.
    """
    inputs = keras.Input(shape=input_shape)
    x = layers.ReLU()(_conv_bn(inputs, 64, 3))
    for filters, first_stride in RESNET18_STAGES:
        x = _basic_block(x, filters, first_stride)
        x = _basic_block(x, filters, 1)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="resnet18")


def resnet50(input_shape=(224, 224, 3), num_classes: int = 8) -> keras.Model:
    """Keras's ResNet-50, untrained (no weight download), with a softmax head.

    A thin wrapper on `keras.applications.ResNet50(weights=None,
    include_top=True, ...)`, so it needs no internet. Inputs are used as
    given (no ImageNet preprocessing inside the model).

    Args:
        input_shape: image shape; height and width at least 32.
            Defaults to `(224, 224, 3)`.
        num_classes: output classes. Defaults to 8 (Adience age groups).

    References:
        Thesis sections 4.3 and 4.7 (ResNet-50 for Adience).
    """
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
