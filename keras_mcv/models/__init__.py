"""The model classes, one algorithm per module.

- `base.LRModel`: what every model that chooses its learning rate shares.
- `split.MCVModel`: the batch-splitting base of the thesis's models.
- `discard.DiscardModel`, `voting.VotingModel`, `search.SearchModel`: the
  thesis's algorithms (chapter 3).
- `race.RaceModel`: the learning-rate race (beyond the thesis).
- `adaptive_nesterov.AdaptiveNesterovModel`, `persistency.PersistencyModel`:
  the companion methods (Polyak-step Nesterov, minibatch persistency).
"""

from keras_mcv.models.adaptive_nesterov import AdaptiveNesterovModel
from keras_mcv.models.base import LRModel
from keras_mcv.models.discard import DiscardModel
from keras_mcv.models.persistency import PersistencyModel
from keras_mcv.models.race import RaceModel
from keras_mcv.models.search import TUNED_OPTIONS
from keras_mcv.models.search import SearchModel
from keras_mcv.models.split import MCVModel
from keras_mcv.models.voting import VotingModel

__all__ = [
    "AdaptiveNesterovModel",
    "DiscardModel",
    "LRModel",
    "MCVModel",
    "PersistencyModel",
    "RaceModel",
    "SearchModel",
    "TUNED_OPTIONS",
    "VotingModel",
]
