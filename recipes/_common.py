"""Shared pieces of the recipe modules (loaders that normalise, the script entry)."""

from __future__ import annotations

import sys

from keras_mcv import data
from keras_mcv.experiment import RecipeConfig


def normalized(loader):
    """Wrap `loader(data_path, subset)` so its result is per-channel normalised."""

    def load(data_path=None, subset=None):
        return data.normalize(loader(data_path, subset))

    return load


def script_main(name: str) -> int:
    """`python -m recipes.NAME [flags]` is `keras-mcv run NAME [flags]`."""
    from keras_mcv.cli import main

    return main(["run", name, *sys.argv[1:]])


def make_config(name: str, loader, build_model, **overrides) -> RecipeConfig:
    """A recipe's config: the thesis's shared defaults, then the recipe's overrides.

    Shared defaults: SGD with momentum 0.9 at LR 0.01 (fixed-LR runs), gradient
    batch 128, 100 epochs, the learning-rate race (`RaceModel`, ISSUE #7: it met
    the fixed-LR grid on every pair measured, `saved_runs/beyond_thesis/`; the
    thesis's methods stay one `--method` away), the loader's output normalised
    per channel.
    """
    settings = dict(batch_size=128, epochs=100, optimizer="sgd", momentum=0.9,
                    learning_rate=0.01, method="race")
    settings.update(overrides)
    return RecipeConfig(name=name, load_data=normalized(loader), build_model=build_model, **settings)
