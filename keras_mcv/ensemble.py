"""Model ensembles: average the class probabilities of the best few models of a search.

```
p_ens(x) = mean over the k members of p_i(x)       # softmax outputs, averaged
ensemble prediction = argmax_c p_ens(x)[c]
loss = mean over examples of -ln max(p_ens(x)[y], 1e-7)
gain = accuracy(ensemble of the top k) - accuracy(top 1)
```
Members are ranked before they come here, best first, by what the search
selected them on (the validation loss): the top 1 is the model the search
would pick alone, so the gain is what averaging adds to the search's own
choice, with test numbers used only to report. `evaluate_ensemble` also
reports the best member on the test set, for information only (choosing
it would select on the test set).

Where the members come from: the random search (`keras_mcv.macro.random_search`)
keeps its fine stage's models' validation and test probabilities, so its
top-k ensemble needs no retraining (the lecture's "top models discovered
during cross-validation"). The learning-rate race is not a source: its
eliminated branches stop training at their round's end (the last runner-up
has trained only the race's epochs when the winner finishes the budget) and
every branch starts from the same weights and sees the same batches,
differing only in the LR, so its survivors are neither trained alike nor
diverse; keeping them would also keep the branch copies in memory after the
race, which a finished race releases.

References: Bakhshi, Training Neural Networks (lecture 09), section 5.1
"Model Ensembles" (top models discovered during cross-validation).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

PROBABILITY_FLOOR = 1e-7
"""Probabilities are floored here before the log of the ensemble's loss."""


def _probabilities(member, x, batch_size) -> np.ndarray:
    if hasattr(member, "predict"):
        if x is None:
            raise ValueError(
                "An ensemble member is a model, so pass the inputs `x` to predict on "
                "(or pass arrays of class probabilities instead of models)."
            )
        return np.asarray(member.predict(x, batch_size=batch_size, verbose=0), dtype="float64")
    return np.asarray(member, dtype="float64")


def average_predictions(members: Sequence, x=None, batch_size: int = 256) -> np.ndarray:
    """The mean of the members' class probabilities, `(n, classes)`.

    Args:
        members: Keras models with softmax outputs (each predicts on `x`) or
            arrays of class probabilities `(n, classes)`, at least one.
        x: the inputs, needed when a member is a model. Defaults to None.
        batch_size: batch size of `predict`. Defaults to 256.
    """
    members = list(members)
    if not members:
        raise ValueError("An ensemble needs at least one member; got none.")
    probabilities = [_probabilities(m, x, batch_size) for m in members]
    shapes = {p.shape for p in probabilities}
    if len(shapes) != 1 or probabilities[0].ndim != 2:
        raise ValueError(
            f"Every member must give probabilities of one shape (n, classes); got shapes "
            f"{sorted(shapes)}."
        )
    return np.mean(probabilities, axis=0)


def accuracy_and_loss(probabilities, y) -> tuple:
    """`(accuracy, mean cross-entropy)` of class probabilities `(n, classes)` on labels `y`."""
    probabilities = np.asarray(probabilities, dtype="float64")
    y = np.asarray(y).astype("int64").ravel()
    if probabilities.ndim != 2 or len(probabilities) != len(y):
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not match {len(y)} labels; "
            "pass (n, classes) probabilities for n labels."
        )
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == y))
    picked = np.maximum(probabilities[np.arange(len(y)), y], PROBABILITY_FLOOR)
    return accuracy, float(-np.mean(np.log(picked)))


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
    """An ensemble of the top `k` members against the top member alone.

    Attributes:
        k: members averaged (the first k in rank order).
        accuracy: the ensemble's accuracy.
        loss: the ensemble's mean cross-entropy.
        member_accuracies: each member's own accuracy, in rank order (all
            members given, not only the first k).
        member_losses: each member's own loss, in rank order.
        names: the members' names, in rank order (or None).
    """

    k: int
    accuracy: float
    loss: float
    member_accuracies: tuple
    member_losses: tuple
    names: Optional[tuple] = None

    @property
    def single_accuracy(self) -> float:
        """Accuracy of the top-ranked member alone (the search's own pick)."""
        return self.member_accuracies[0]

    @property
    def gain(self) -> float:
        """`accuracy - single_accuracy`: what averaging adds to the search's pick."""
        return self.accuracy - self.single_accuracy

    @property
    def best_member_accuracy(self) -> float:
        """The best accuracy of the k averaged members alone (information only: choosing
        by it would select on the data it is scored on)."""
        return max(self.member_accuracies[: self.k])

    def __str__(self):
        return (
            f"ensemble of the top {self.k}: accuracy {100 * self.accuracy:.2f}% "
            f"(loss {self.loss:.4f}); top-ranked model alone {100 * self.single_accuracy:.2f}%: "
            f"gain {100 * self.gain:+.2f} points"
        )


def evaluate_ensemble(members: Sequence, y, *, k: Optional[int] = None, x=None,
                      batch_size: int = 256, names=None) -> EnsembleResult:
    """Average the top `k` of `members` (ranked best first) and compare with the top one.

    Args:
        members: models or class-probability arrays, best first (ranked on
            validation data, not on `y`).
        y: the integer labels the ensemble is scored on.
        k: how many of the first members to average, 1 <= k <= len(members).
            Defaults to None (all).
        x: the inputs when members are models. Defaults to None.
        batch_size: batch size of `predict`. Defaults to 256.
        names: a name per member, for reports. Defaults to None.

    Returns:
        An `EnsembleResult`.
    """
    members = list(members)
    if not members:
        raise ValueError("An ensemble needs at least one member; got none.")
    k = len(members) if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(members):
        raise ValueError(
            f"k must be an integer in [1, {len(members)}] (the members given), got {k!r}."
        )
    if names is not None and len(names) != len(members):
        raise ValueError(f"names has {len(names)} entries for {len(members)} members.")
    probabilities = [_probabilities(m, x, batch_size) for m in members]
    singles = [accuracy_and_loss(p, y) for p in probabilities]
    accuracy, loss = accuracy_and_loss(average_predictions(probabilities[:k]), y)
    return EnsembleResult(
        k=int(k), accuracy=accuracy, loss=loss,
        member_accuracies=tuple(a for a, _ in singles),
        member_losses=tuple(v for _, v in singles),
        names=None if names is None else tuple(names),
    )
