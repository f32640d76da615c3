"""Shared pieces of the recipe modules (loaders that normalise, the script entry)."""

from __future__ import annotations

import sys

from keras_mcv import data


def normalized(loader):
    """Wrap `loader(data_path, subset)` so its result is per-channel normalised."""

    def load(data_path=None, subset=None):
        return data.normalize(loader(data_path, subset))

    return load


def script_main(name: str) -> int:
    """`python -m recipes.NAME [flags]` is `keras-mcv run NAME [flags]`."""
    from keras_mcv.cli import main

    return main(["run", name, *sys.argv[1:]])
