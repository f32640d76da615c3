"""`RecipeConfig`: everything a recipe fixes about a dataset/architecture pair."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional


@dataclasses.dataclass
class RecipeConfig:
    """Data, architecture, batch size, epochs and method defaults of one recipe.

    Attributes:
        name: recipe name, e.g. `"digits_small_cnn"`.
        load_data: `load_data(data_path, subset)` -> `keras_mcv.data.ArrayData`,
            already normalised per channel. `data_path` may be None (the
            loader's default location); `subset` keeps the first N training
            examples, stratified, or all when None.
        build_model: `build_model(input_shape, num_classes)` -> a fresh,
            uncompiled `keras.Model`.
        batch_size: the gradient batch m (`fit` gets m times the method's
            batch multiple: 2m for the batch-splitting MCV methods, which
            split it in halves; m for the others). Defaults to 128.
        epochs: epoch budget. Defaults to 100.
        optimizer: a name of `keras_mcv.optimizers.OPTIMIZERS`. Defaults to
            "sgd".
        momentum: SGD momentum. Defaults to 0.9.
        momentum_form: how SGD keeps its momentum (a name of
            `keras_mcv.optimizers.MOMENTUM_FORMS`): "torch", PyTorch's
            buffer of gradients (`TorchSGD`, what the thesis ran), or
            "keras", `keras.optimizers.SGD`'s velocity of weight steps.
            Defaults to "torch".
        learning_rate: the LR of fixed-LR runs (baseline, MCV-discard).
            Defaults to 0.01.
        method: the method of `keras-mcv run` without `--method` (a name of
            `keras_mcv.methods`). Defaults to "race".
        candidates: the candidate LRs of the methods that take them (the
            race, voting, search), or None for each method's own default
            (`[1e-1, 1e-2, 1e-3, 1e-4]`, the thesis's initial list).
        patience: MCV stopping patience in epochs. Defaults to 20.
        data_path: default `--data` location, or None.
        description: one line for `keras-mcv list`.
        augment: the transforms `--augment` applies, names of
            `keras_mcv.data.AUGMENT_TRANSFORMS` ("flip", "translate",
            "jitter"); empty when the recipe cannot be augmented, and
            `--augment` is then refused. Defaults to ().
        augment_note: why the recipe leaves a transform out (or has none),
            shown when `--augment` is refused. Defaults to "".
    """

    name: str
    load_data: Callable
    build_model: Callable
    batch_size: int = 128
    epochs: int = 100
    optimizer: str = "sgd"
    momentum: float = 0.9
    momentum_form: str = "torch"
    learning_rate: float = 0.01
    method: str = "race"
    candidates: Optional[tuple] = None
    patience: int = 20
    data_path: Optional[str] = None
    description: str = ""
    augment: tuple = ()
    augment_note: str = ""
