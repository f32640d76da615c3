"""Training practice: sanity checks before learning and a numerical gradient check.

`sanity_check(model, x, y)` runs the three checks that come before any long
training run (chance-level initial loss, loss rising with regularization, a
tiny subset overfit); `gradient_check(model, x, y)` compares the autodiff
gradient with centred differences in float64. Both work on a copy of the
model: the model passed in is never changed.

References: Bakhshi, Training Neural Networks (Computer Vision, lecture 09),
sections 4.1 "Gradient Checks" and 4.2 "Sanity Checks Before Learning";
Karpathy, CS231n course notes, "Neural Networks Part 3: Learning and
Evaluation" (the relative-error formula and its thresholds).
"""

from keras_mcv.practice.common import CHANCE_LOSS_TOLERANCE, chance_loss
from keras_mcv.practice.gradient_check import (
    HAPPY,
    OK_WITH_KINKS,
    PROBABLY_WRONG,
    GradientCheckResult,
    GradientCheckRow,
    gradient_check,
    gradient_verdict,
    relative_error,
)
from keras_mcv.practice.sanity import CheckResult, SanityReport, sanity_check

__all__ = [
    "CHANCE_LOSS_TOLERANCE",
    "CheckResult",
    "GradientCheckResult",
    "GradientCheckRow",
    "HAPPY",
    "OK_WITH_KINKS",
    "PROBABLY_WRONG",
    "SanityReport",
    "chance_loss",
    "gradient_check",
    "gradient_verdict",
    "relative_error",
    "sanity_check",
]
