"""Recipes: the thesis's dataset/architecture pairs, plus the embedded digits default.

A recipe is data: a row of `TABLE` names its loader, its architecture, and
what it changes of the shared defaults (SGD with momentum 0.9 in PyTorch's
form, as the thesis ran it, at LR 0.01 for fixed-LR runs, gradient batch 128, 100 epochs, the learning-rate race). Two
loaders need code of their own and live beside this file (`digits`,
`adience`). `get_config(NAME)` builds the `RecipeConfig`; `keras-mcv run NAME`
and `python -m recipes NAME` train it.

References: thesis sections 4.3 (datasets and architectures), 4.5-4.7.
"""

from __future__ import annotations

import difflib
import importlib

from recipes.config import RecipeConfig

TABLE = {
    # name: (loader, architecture, overrides, description)
    "digits_small_cnn": (
        "recipes.digits:load", "digits_cnn", {"batch_size": 64, "epochs": 15, "augment_note": (
            "flipping a digit changes its class (or makes it no digit), and a 4-pixel shift "
            "moves half of an 8x8 digit out of the frame")},
        "scikit-learn's bundled 8x8 digits on a small CNN: the embedded default, "
        "under a minute on 2 CPU cores",
    ),
    "cifar10_small_cnn": (
        "keras_mcv.data:load_cifar10", "cifar_small_cnn", {},
        "CIFAR-10 (JPEG zip, image folder or tfds) on the thesis's small CNN "
        "(conv 48,48,96,96,192,192 + dense 512,256,10), thesis 4.5",
    ),
    "cifar10_resnet18": (
        "keras_mcv.data:load_cifar10", "resnet18", {},
        "CIFAR-10 on ResNet-18 with BatchNorm, thesis 4.5 and Figure 4.1",
    ),
    "cifar10_vgg11": (
        "keras_mcv.data:load_cifar10", "vgg11", {}, "CIFAR-10 on VGG-11, thesis 4.5",
    ),
    "svhn_small_cnn": (
        "keras_mcv.data:load_svhn", "svhn_small_cnn", {},
        "SVHN (tfds svhn_cropped) on the small CNN (conv 32,32,64,64 + dense 512,10), thesis 4.6",
    ),
    "svhn_resnet18": (
        "keras_mcv.data:load_svhn", "resnet18", {}, "SVHN on ResNet-18, thesis 4.6",
    ),
    "svhn_vgg11": ("keras_mcv.data:load_svhn", "vgg11", {}, "SVHN on VGG-11, thesis 4.6"),
    "adience_resnet50": (
        "recipes.adience:load", "resnet50", {"batch_size": 32},
        "Adience age groups (8 classes, --data DIR) on an untrained ResNet-50 at 64x64, thesis 4.7",
    ),
}

RECIPES = tuple(TABLE)

SHARED_DEFAULTS = dict(batch_size=128, epochs=100, optimizer="sgd", momentum=0.9,
                       momentum_form="torch", learning_rate=0.01, method="race")
"""What every recipe starts from: the thesis's SGD with momentum 0.9 in PyTorch's
form (`TorchSGD`; LR 0.01 for fixed-LR runs), gradient batch 128, 100 epochs, and
the learning-rate race."""

_NATURAL_IMAGES = ("cifar10", "adience")
"""Recipes (by prefix) whose `--augment` is flip, translation and jitter (Mandatelli
2018, section 2.4); SVHN's house numbers get no flip (a mirrored digit is another shape)."""


def _augmentation(name: str) -> dict:
    if name.startswith(_NATURAL_IMAGES):
        return {"augment": ("flip", "translate", "jitter")}
    if name.startswith("svhn"):
        return {"augment": ("translate", "jitter"),
                "augment_note": "no horizontal flip: a mirrored house-number digit is not "
                "the same digit"}
    return {}


def available() -> list:
    """The recipe names, embedded default first."""
    return list(RECIPES)


def describe(name: str) -> str:
    """The one-line description of recipe `name`."""
    return TABLE[_check(name)][3]


def _check(name: str) -> str:
    if name not in TABLE:
        close = difflib.get_close_matches(str(name), RECIPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown recipe {name!r}.{hint} Known recipes: {', '.join(RECIPES)} "
            "(`keras-mcv list`)."
        )
    return name


def _resolve(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _normalized(loader):
    """Wrap `loader(data_path, subset)` so its result is per-channel normalised."""
    from keras_mcv import data

    def load(data_path=None, subset=None):
        return data.normalize(loader(data_path, subset))

    return load


def get_config(name: str) -> RecipeConfig:
    """The `RecipeConfig` of recipe `name`; an unknown name suggests the closest."""
    from keras_mcv import architectures

    loader, architecture, overrides, description = TABLE[_check(name)]
    settings = {**SHARED_DEFAULTS, **_augmentation(name), **overrides}
    return RecipeConfig(
        name=name, load_data=_normalized(_resolve(loader)),
        build_model=architectures.get(architecture), description=description, **settings,
    )
