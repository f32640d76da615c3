"""The models that choose the learning rate while they train, one algorithm per module.

- `base.LRModel`: what every such model shares.
- `split.MCVModel`: the batch-splitting base of the thesis's models.
- `discard.DiscardModel`, `voting.VotingModel`, `search.SearchModel`: the
  thesis's algorithms (chapter 3).
- `race.RaceModel`: the learning-rate race (beyond the thesis).
"""

from keras_mcv.models.base import LRModel
from keras_mcv.models.discard import DiscardModel
from keras_mcv.models.race import RaceModel
from keras_mcv.models.search import TUNED_OPTIONS
from keras_mcv.models.search import SearchModel
from keras_mcv.models.split import MCVModel
from keras_mcv.models.voting import VotingModel
