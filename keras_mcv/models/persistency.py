"""Minibatch persistency: K consecutive optimizer updates on each minibatch.

References: Mandatelli, Improved Training Methods for Neural Networks, 2018,
chapter 2 (section 2.1, Algorithm 4).
"""

from __future__ import annotations

import numbers
import warnings

import keras
import tensorflow as tf

from keras_mcv.models.wrapping import Wrappable

DEFAULT_PERSISTENCY = 1


def check_persistency(persistency) -> int:
    """`persistency` as an int, or a ValueError naming the problem and the fix."""
    if (
        isinstance(persistency, bool)
        or not isinstance(persistency, numbers.Integral)
        or persistency < 1
    ):
        raise ValueError(
            f"`persistency` must be an integer >= 1, got {persistency!r}. "
            "Use 1 for standard training, or e.g. 2 (the document finds K = 2 "
            "the most consistent gain)."
        )
    return int(persistency)


@keras.saving.register_keras_serializable(package="keras_mcv")
class PersistencyModel(Wrappable, keras.Model):
    """A model that takes K consecutive optimizer steps on each minibatch.

    For each minibatch (x, y) that `fit` delivers, with K = `persistency`:
    ```
    repeat K times:
        g = grad L(w; x, y)          # a fresh forward and backward pass
        w = optimizer.apply(g, w)    # the compiled optimizer's own update
    ```
    K = 1 is standard training, step for step identical to `keras.Model`.
    Any optimizer works (SGD with momentum is the document's); its state
    (momentum, `iterations`, a learning-rate schedule) advances K times per
    minibatch. Each pass runs the model with `training=True`, so dropout draws
    new masks and BatchNorm updates its statistics on every pass.

    `fit` logs the loss (and compiled metrics) of the first pass, before the
    minibatch's K updates, as standard Keras logs the loss before its step;
    with K = 1 the logs equal `keras.Model`'s. One `fit` step costs K forward
    passes, K backward passes and K optimizer updates; the K passes are
    unrolled in the compiled step.

    Args:
        inputs, outputs: as for a functional `keras.Model`; or use `wrap`.
        persistency: K, the number of updates per minibatch, an integer >= 1.
            Defaults to 1.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    References: Mandatelli, Improved Training Methods for Neural Networks,
    2018, section 2.1 (Algorithm 4, "minibatch persistency") and sections
    2.3-2.4 (Tables 2.1-2.2: K in {1, 2, 5}).
    """

    def __init__(self, *args, persistency=DEFAULT_PERSISTENCY, **kwargs):
        # Checked before the network is built: a bad option costs nothing.
        persistency = check_persistency(persistency)
        super().__init__(*args, **kwargs)
        self.persistency = persistency

    def get_config(self):
        config = super().get_config()
        config.update(persistency=self.persistency)
        return config

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        weights = self.trainable_variables
        first_loss = first_pred = None
        for _ in range(self.persistency):
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                )
                scaled = self.optimizer.scale_loss(loss)
            if first_loss is None:
                first_loss, first_pred = loss, y_pred
            if not weights:
                warnings.warn("The model does not have any trainable weights.")
                break
            grads = tape.gradient(scaled, weights)
            self.optimizer.apply(grads, weights)

        # Keras scales each replica's loss by 1/replicas; the tracker wants the
        # replica's own loss, weighted by its shard, as in Keras's own step.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        loss_tracker = next(m for m in self.metrics if m.name == "loss")
        loss_tracker.update_state(first_loss * replicas, sample_weight=batch_size)
        return self.compute_metrics(x, y, first_pred, sample_weight=sample_weight)
