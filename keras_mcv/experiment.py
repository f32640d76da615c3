"""Recipe configuration and the function that runs one method on one recipe.

Data flows one way: recipe config -> data + architecture -> model class -> fit
-> callbacks -> run record.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras

from keras_mcv.data import ArrayData


@dataclasses.dataclass
class RecipeConfig:
    """Everything a recipe fixes: data, architecture, batch size, epochs, method defaults.

    Attributes:
        name: recipe name, e.g. `"digits_small_cnn"`.
        load_data: `load_data(data_path, subset)` -> `ArrayData`, already
            normalised per channel. `data_path` may be None (the loader's
            default location); `subset` keeps the first N training examples,
            stratified, or all when None.
        build_model: `build_model(input_shape, num_classes)` -> a fresh,
            uncompiled `keras.Model`.
        batch_size: batch size of `fit`; MCV models split each batch in halves.
        epochs: epoch budget.
        optimizer: `"sgd"` (momentum `momentum`) or `"adam"`.
        momentum: SGD momentum. Defaults to 0.9.
        learning_rate: the LR of fixed-LR runs (baseline, DiscardModel).
        method: default MCV method name (see `keras_mcv.experiment.METHODS`).
        alpha: Method 2's alpha. Defaults to 0.5.
        patience: MCV stopping patience in epochs. Defaults to 20.
        augment: flip/translate augmentation. Off, as in the thesis.
        data_path: default `--data` location, or None.
    """

    name: str
    load_data: Callable[[Optional[str], Optional[int]], ArrayData]
    build_model: Callable[[tuple, int], keras.Model]
    batch_size: int = 128
    epochs: int = 100
    optimizer: str = "sgd"
    momentum: float = 0.9
    learning_rate: float = 0.01
    method: str = "search1"
    alpha: float = 0.5
    patience: int = 20
    augment: bool = False
    data_path: Optional[str] = None
