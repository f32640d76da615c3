"""In-graph machinery of micro cross-validation: split, snapshot/restore, decide.

Everything here runs inside the `tf.function` that Keras builds around
`train_step`. Keras does not autograph-convert `train_step`, so control flow is
written with tensor ops (`tf.where`), never Python `if` on tensors. Branch-free
code also keeps `optimizer.apply` out of `tf.cond`/`tf.while_loop`, where
`tf.distribute` cannot run it.

The decision functions are twins of those in `keras_mcv.rules.thesis` and are
tested against them.

References: thesis chapter 3.
"""

from __future__ import annotations

import tensorflow as tf

INF = float("inf")


def split_batch(data, validation_fraction: float):
    """Split a batch into a training half and a validation half.

    The last `floor(f * n)` examples of a batch of `n` validate; the first
    `n - floor(f * n)` train, so an odd batch puts the extra example in training.

    Args:
        data: a nested structure of tensors (or None) sharing the batch axis.
        validation_fraction: the fraction `f` in (0, 1).

    Returns:
        `(train_part, val_part, has_val)`: two structures like `data` and a
        boolean scalar, False when the validation half is empty (a batch of one).
    """
    flat = [t for t in tf.nest.flatten(data) if t is not None]
    n = tf.shape(flat[0])[0]
    n_val = tf.cast(
        tf.floor(validation_fraction * tf.cast(n, tf.float64)), tf.int32
    )
    n_train = n - n_val

    def take(t, start, stop):
        return None if t is None else t[start:stop]

    train = tf.nest.map_structure(lambda t: take(t, 0, n_train), data)
    val = tf.nest.map_structure(lambda t: take(t, n_train, n), data)
    return train, val, n_val > 0


def as_scores(loss):
    """A loss with NaN and +-inf replaced by +inf (twin of `rules.thesis.as_scores`)."""
    loss = tf.convert_to_tensor(loss)
    return tf.where(tf.math.is_finite(loss), loss, tf.constant(INF, loss.dtype))


def first_index_of(mask):
    """Index of the first True of a 1-D boolean tensor (its length if none).

    `tf.argmin`/`tf.argmax` do not promise which index wins a tie; the pure
    the thesis rules take the first, and so does this.
    """
    k = tf.shape(mask)[0]
    return tf.reduce_min(tf.where(mask, tf.range(k), k))


def best_candidate(losses, pre_loss):
    """Twin of `rules.thesis.best_candidate`: lowest loss below `pre_loss`, or -1."""
    scores = as_scores(losses)
    pre = as_scores(tf.cast(pre_loss, scores.dtype))
    lowering = scores < pre
    masked = tf.where(lowering, scores, tf.constant(INF, scores.dtype))
    index = first_index_of(tf.logical_and(lowering, masked <= tf.reduce_min(masked)))
    return tf.where(tf.reduce_any(lowering), index, -1)


def update_votes(history, best_index, ema):
    """Twin of `rules.thesis.update_votes` (an index of -1 is "no vote")."""
    vote = tf.one_hot(best_index, tf.shape(history)[0], dtype=history.dtype)
    return ema * vote + (1.0 - ema) * history


def top_candidate(history):
    """Twin of `rules.thesis.top_candidate`: index of the highest history, first on ties."""
    return first_index_of(history >= tf.reduce_max(history))


def should_discard(pre_loss, post_loss):
    """Twin of `rules.thesis.should_discard`: the loss went up (non-finite counts as +inf)."""
    return as_scores(post_loss) > as_scores(pre_loss)


def replica_sum(value):
    """The sum of a per-replica value over all replicas (identity on one device)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def replica_share(count):
    """`replicas * count / sum_r count_r`: the weight that makes summed gradients exact.

    Keras divides each replica's mean loss by the number of replicas and sums
    the gradients: the mean of the shards' means, exact only for equal shards.
    Multiplying a replica's loss by this share gives the mean over the whole
    global batch instead (an empty shard weighs 0). 1 on one device.
    """
    ctx = tf.distribute.get_replica_context()
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if ctx is None or replicas == 1:
        return tf.constant(1.0)
    count = tf.cast(count, tf.float32)
    return replicas * count / tf.maximum(replica_sum(count), 1.0)


def replica_mean(value, count=None):
    """The mean of a per-replica loss over all replicas (identity on one device).

    Keras divides each replica's loss by the number of replicas so that summed
    gradients come out right; decisions need the true mean, so this undoes the
    scaling and averages across replicas. Every replica then takes the same
    decision.

    With `count` (the number of examples behind the replica's loss), the mean
    is weighted by it: `sum_r count_r * loss_r / sum_r count_r`, the loss of the
    whole global batch, as on one device. That matters when the shards are
    uneven (the last batch of an epoch) or empty: an empty shard's loss is
    ignored rather than averaged in (it may be 0 or NaN).
    """
    ctx = tf.distribute.get_replica_context()
    strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if ctx is None or replicas == 1:
        return value
    value = value * replicas
    if count is None:
        return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, value)
    count = tf.cast(count, value.dtype)
    # Select rather than multiply: 0 * NaN is NaN.
    weighted = tf.where(count > 0, value * count, tf.zeros_like(value))
    total, n = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [weighted, count])
    return tf.math.divide_no_nan(total, n)


def all_finite(variables):
    """True when every floating-point variable in `variables` is finite."""
    checks = [
        tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v)))
        for v in variables
        if tf.as_dtype(v.dtype).is_floating
    ]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


class Snapshot:
    """Pre-allocated copies of a fixed list of variables, made once.

    `save()` copies the variables into the snapshot; `restore()` copies them
    back, bit for bit; `restore_where(flag)` restores only when `flag` is True,
    without a branch.

    Args:
        variables: the Keras or TF variables to protect.
        name: a prefix for the copies' names.
    """

    def __init__(self, variables, name: str):
        self.variables = list(variables)
        self.copies = []
        for i, v in enumerate(self.variables):
            # tf.Variable rather than keras.Variable: a plain tf.Variable is not
            # tracked into model.weights, so snapshots are never saved with the model.
            # Aggregation NONE: under tf.distribute each replica saves and
            # restores its own copy, locally and without a merge_call. That is
            # exact for state a replica keeps for itself (BatchNorm moving
            # statistics, metric totals), and for mirrored state every replica
            # holds the same value anyway.
            self.copies.append(
                tf.Variable(
                    tf.zeros(v.shape, dtype=v.dtype),
                    trainable=False,
                    name=f"{name}_{i}",
                    aggregation=tf.VariableAggregation.NONE,
                )
            )

    def save(self):
        for v, c in zip(self.variables, self.copies):
            c.assign(tf.convert_to_tensor(v))

    def restore(self):
        for v, c in zip(self.variables, self.copies):
            v.assign(c)

    def restore_where(self, flag):
        for v, c in zip(self.variables, self.copies):
            v.assign(tf.where(flag, c, tf.convert_to_tensor(v)))


class BranchStore:
    """`slots` copies of a fixed list of variables, stacked: slot j holds one copy.

    The race's branches (`keras_mcv.RaceModel`): `restore(j)` loads branch j
    into the variables, `save(j)` writes them back, with `j` a Python int or
    an int32 tensor (so one `tf.while_loop` body serves every branch). Slots
    are read with a gather and written in place with a scatter, which XLA
    compiles with a tensor index too (`jit_compile=True`).

    Args:
        variables: the Keras or TF variables every branch owns.
        slots: how many branches.
        name: a prefix for the stacks' names.
    """

    def __init__(self, variables, slots: int, name: str):
        self.variables = list(variables)
        self.slots = int(slots)
        self.stacks = [
            # As Snapshot: untracked tf.Variables, each replica keeps its own.
            tf.Variable(
                tf.zeros((self.slots,) + tuple(v.shape), dtype=v.dtype),
                trainable=False,
                name=f"{name}_{i}",
                aggregation=tf.VariableAggregation.NONE,
            )
            for i, v in enumerate(self.variables)
        ]

    def save(self, j):
        index = tf.reshape(tf.cast(j, tf.int32), [1])
        for v, s in zip(self.variables, self.stacks):
            s.scatter_update(tf.IndexedSlices(tf.convert_to_tensor(v)[None], index))

    def restore(self, j):
        j = tf.cast(j, tf.int32)
        for v, s in zip(self.variables, self.stacks):
            v.assign(tf.gather(s, j))

    def fill(self):
        """Every slot = the variables' current values."""
        for v, s in zip(self.variables, self.stacks):
            s.assign(tf.repeat(tf.convert_to_tensor(v)[None], self.slots, axis=0))

    def reorder(self, order):
        """Slot i takes what slot `order[i]` held (the rest keep their order after them)."""
        order = [int(i) for i in order]
        full = order + [i for i in range(self.slots) if i not in order]
        for s in self.stacks:
            s.assign(tf.gather(tf.convert_to_tensor(s), full))
