"""Recipes: one module per dataset/architecture pair of the thesis, plus digits.

Each module has `get_config() -> keras_mcv.experiment.RecipeConfig` and runs as
a script (`python -m recipes.digits_small_cnn --method search1`), which is the
same as `keras-mcv run digits_small_cnn --method search1`.
"""

from __future__ import annotations

import difflib
import importlib

RECIPES = (
    "digits_small_cnn",
    "cifar10_small_cnn",
    "cifar10_resnet18",
    "cifar10_vgg11",
    "svhn_small_cnn",
    "svhn_resnet18",
    "svhn_vgg11",
    "adience_resnet50",
)


def available() -> list:
    """The recipe names, embedded default first."""
    return list(RECIPES)


def get_recipe(name: str):
    """The recipe module called `name`; an unknown name suggests the closest."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown recipe {name!r}.{hint} Known recipes: {', '.join(RECIPES)} "
            "(`keras-mcv list`)."
        )
    return importlib.import_module(f"recipes.{name}")
