"""keras_mcv: learning-rate search by micro (batch-level) cross-validation for Keras 3."""

from keras_mcv import callbacks
from keras_mcv import cost
from keras_mcv import policies
from keras_mcv.models import DiscardModel
from keras_mcv.models import MCVModel
from keras_mcv.models import TUNED_OPTIONS
from keras_mcv.models import SearchModel
from keras_mcv.models import VotingModel
from keras_mcv.race_model import RaceModel

__version__ = "0.1.0"
