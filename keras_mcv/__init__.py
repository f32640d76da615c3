"""keras_mcv: learning-rate search by micro (batch-level) cross-validation for Keras 3.

The public API, one name per line below. Names are imported on first use, so
that `import keras_mcv.methods` (the command line's first step) does not load
TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    # modules
    "callbacks": "keras_mcv.callbacks",
    "cost": "keras_mcv.cost",
    "methods": "keras_mcv.methods",
    "optimizers": "keras_mcv.optimizers",
    "practice": "keras_mcv.practice",
    "schedules": "keras_mcv.schedules",
    # the LR range test
    "LRFindResult": "keras_mcv.range_test",
    "lr_find": "keras_mcv.range_test",
    # optimizers
    "TorchSGD": "keras_mcv.optimizers",
    # models
    "AdaptiveNesterovModel": "keras_mcv.models",
    "DiscardModel": "keras_mcv.models",
    "LRModel": "keras_mcv.models",
    "MCVModel": "keras_mcv.models",
    "PersistencyModel": "keras_mcv.models",
    "RaceModel": "keras_mcv.models",
    "SearchModel": "keras_mcv.models",
    "TUNED_OPTIONS": "keras_mcv.models",
    "VotingModel": "keras_mcv.models",
}

if TYPE_CHECKING:
    from keras_mcv import callbacks
    from keras_mcv import cost
    from keras_mcv import methods
    from keras_mcv import optimizers
    from keras_mcv import practice
    from keras_mcv import schedules
    from keras_mcv.optimizers import TorchSGD
    from keras_mcv.range_test import LRFindResult
    from keras_mcv.range_test import lr_find
    from keras_mcv.models import TUNED_OPTIONS
    from keras_mcv.models import AdaptiveNesterovModel
    from keras_mcv.models import DiscardModel
    from keras_mcv.models import LRModel
    from keras_mcv.models import MCVModel
    from keras_mcv.models import PersistencyModel
    from keras_mcv.models import RaceModel
    from keras_mcv.models import SearchModel
    from keras_mcv.models import VotingModel


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_mcv' has no attribute {name!r}")
    value = importlib.import_module(module)
    if module != f"keras_mcv.{name}":
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
