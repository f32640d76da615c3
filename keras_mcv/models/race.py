"""`RaceModel`: the learning-rate race, micro cross-validation over whole epochs.

The pure rules (round lengths, judging, survivors) are in `keras_mcv.rules.race`;
this module holds the Keras model that runs them: the branches live in
pre-allocated snapshots (`keras_mcv.trials.Snapshot`), one per candidate, and
one compiled step trains every surviving branch on the same batch.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_mcv import cost, trials
from keras_mcv.models.base import LRModel, batch_size_of, selection_first
from keras_mcv.rules import race
from keras_mcv.rules import thesis as thesis_rules

# The batch-splitting models' arguments (`MCVModel`): refused by name, with the
# reason, rather than by Keras as unknown keyword arguments.
_SPLIT_ARGUMENTS = ("validation_fraction", "trial_every", "trial_training", "trial_batch_size")

NOT_STARTED, RACING, FINISHED = 0, 1, 2
"""Values of `RaceModel.mcv_race_state`."""


class _Race:
    """Python state of a race in progress (kept out of Keras attribute tracking)."""

    def __init__(self, slots):
        self.slots = list(slots)  # candidate index held by each snapshot slot, in slot order
        self.round = 1
        self.epochs_in_round = 0
        self.losses = []  # one row per step of the round: each slot's pre-step loss
        self.decided_this_epoch = False


@keras.saving.register_keras_serializable(package="keras_mcv")
class RaceModel(LRModel):
    """Learning-rate race: successive halving of candidate LRs inside one `fit`.

    ```
    round 1 (1 epoch):  one branch per candidate LR, all from the same weights
                        and optimizer state; on every batch, each branch:
                            loss before its step  (prequential: data it has
                                                   not trained on yet)
                            its optimizer step at its LR
    end of round r:     judge = mean pre-step loss over the round's last half
                        of batches (the same batches for all: paired); keep
                        the best ceil(A / 2); round r + 1 lasts 2^r epochs
    one branch left:    it trains on at its LR, plain Keras steps, to the end
    ```
    At the end of every race epoch the model holds the leading branch (its
    weights, optimizer state and LR), so validation, checkpoints and
    `evaluate` see it; if `fit` ends inside a round, its best branch is kept.
    Each step trains on the whole batch (nothing is held out of training),
    and once the race is over a step costs what a plain Keras step costs.
    The race costs `race.race_cost_epochs(K) - race.race_epochs(K)` extra
    epochs of training (K = 4 candidates: 5 extra epochs, over the first 3).

    Why: one-step trials (the thesis's `SearchModel`) compare LRs over a
    horizon of one step, which biases the choice (toward large LRs along a
    persistent direction, toward small ones once noise dominates: short-
    horizon bias). Judging over rounds of 1, 2, 4 ... epochs removes most of
    it; measured against a fixed-LR grid in `saved_runs/beyond_thesis/`.

    Logs: during the race, `loss`, the compiled metrics and `lr` are those of
    the branch leading so far (`race.running_leader`); `mcv_val_loss` is the
    same pre-step loss (it is measured before the step, so it is also a
    validation loss). `mcv_history` holds, per epoch, the racing LRs, their
    judged losses at the end of a round and the survivors.

    Memory: one copy of the weights and the optimizer state per candidate
    (K = 4 with SGD-momentum: 8 copies of the weights), held for the whole
    `fit`.

    Resuming: the race's branches are not saved. A run resumed (from
    `keras.callbacks.BackupAndRestore`) inside the race goes on with the
    branch that led at the last saved epoch, at its LR, as plain training.
    A second `fit` in the same process (after early stopping, say) goes on
    with the race where it stopped.

    Args:
        candidates: the candidate LRs. Defaults to `[1e-1, 1e-2, 1e-3, 1e-4]`
            (the thesis's initial list).
        **kwargs: `keras.Model` arguments (`inputs`, `outputs`, `name`).

    References: Jamieson & Talwalkar, Non-stochastic Best Arm Identification and
    Hyperparameter Optimization, AISTATS 2016 (successive halving); Wu et al.,
    Understanding Short-Horizon Bias in Stochastic Meta-Optimization, ICLR 2018;
    `keras_mcv.rules.race`.
    """

    method_name = "race"

    def __init__(self, *args, candidates=thesis_rules.DEFAULT_CANDIDATES, **kwargs):
        given = [name for name in _SPLIT_ARGUMENTS if name in kwargs]
        if given:
            raise ValueError(
                f"RaceModel does not split batches, so {', '.join(given)} does not apply. "
                "Remove it; every branch trains and is judged on whole batches."
            )
        super().__init__(*args, **kwargs)
        self.candidates = thesis_rules.validate_candidates(candidates)
        if len(self.candidates) < 2:
            raise ValueError(
                f"A race needs at least 2 candidate LRs, got {self.candidates}. "
                "Pass e.g. [0.1, 0.01, 0.001, 0.0001], or train with a fixed LR."
            )
        k = len(self.candidates)
        self.mcv_lr = self._state_weight("mcv_lr", (), "float64", "zeros")
        self.mcv_lr.assign(self.candidates[0])
        self.mcv_race_state = self._state_weight("mcv_race_state", (), "int64", "zeros")
        self.mcv_race_lrs = self._state_weight("mcv_race_lrs", (k,), "float64", "zeros")
        self.mcv_race_leader = self._state_weight("mcv_race_leader", (), "int64", "zeros")
        self.mcv_race_alive = self._state_weight("mcv_race_alive", (), "int64", "zeros")
        self.mcv_race_losses = self._state_weight("mcv_race_losses", (k,), "float32", "zeros")
        self._mcv.race = None
        self._mcv.race_entry = None
        self._mcv.branches = None
        self._mcv.clock = {"steps": None, "epochs": None, "epoch": 0, "epoch_steps": 0,
                           "checked": False}

    def get_config(self):
        config = super().get_config()
        config.update(candidates=list(self.candidates))
        return config

    # ----------------------------------------------------------------- build

    def _branch_variables(self) -> list:
        """What each branch owns: weights, optimizer state, other network state.

        Other network state is BatchNorm statistics and seed-generator states;
        metric totals are shared (they report the leader).
        """
        state = {id(v) for v in self._mcv_state}
        trainable = list(self.trainable_variables)
        trainable_ids = {id(v) for v in trainable}
        metric_ids = {id(v) for v in self.metrics_variables}
        other = [
            v for v in self.variables
            if id(v) not in state and id(v) not in trainable_ids and id(v) not in metric_ids
        ]
        return trainable + list(self.optimizer.variables) + other

    def _mcv_build(self):
        # A race never restores a trial, so it needs no snapshots: only the branches.
        if self._mcv.branches is not None:
            return
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        variables = self._branch_variables()
        with self.distribute_strategy.scope():
            self._mcv.branches = trials.BranchStore(variables, len(self.candidates), "mcv_branch")

    # -------------------------------------------------------------- dispatch

    def _next_mode(self) -> tuple:
        clock = self._mcv.clock
        if not clock["checked"]:
            # Once per `fit`: a state read here syncs with the device, which on
            # steps of a few milliseconds would cost more than the step.
            clock["checked"] = True
            self._race_start_or_finish()
        if self._mcv.race is None:
            return ("plain",)
        if self.distribute_strategy.num_replicas_in_sync > 1:
            # `optimizer.apply` cannot run inside a `tf.while_loop` under
            # tf.distribute (its merge_call): unroll, one graph per branch count.
            return ("race", len(self._mcv.race.slots))
        # One graph for every branch count: a `tf.while_loop` over the branches.
        return ("race", None)

    def _race_start_or_finish(self):
        """At a `fit`'s first step: start the race, or end one a resume cut short."""
        state = int(self.mcv_race_state.numpy())
        if state == NOT_STARTED:
            self._mcv.branches.fill()
            self.mcv_race_lrs.assign(np.asarray(self.candidates, "float64"))
            self.mcv_race_alive.assign(len(self.candidates))
            self.mcv_race_leader.assign(0)
            self.mcv_race_state.assign(RACING)
            self._mcv.race = _Race(range(len(self.candidates)))
        elif state == RACING and self._mcv.race is None:
            # A race begun in another process (a resumed run): its branches are
            # gone; the weights and LR are those of its last saved leader. (A
            # second `fit` in the same process goes on with the live race.)
            self.mcv_race_state.assign(FINISHED)

    def _after_call(self, mode) -> None:
        if mode[0] != "race":
            return
        clock = self._mcv.clock
        clock["epoch_steps"] += 1
        r = self._mcv.race
        r.losses.append(np.asarray(self.mcv_race_losses.numpy())[: len(r.slots)].astype(np.float64))
        self.mcv_race_leader.assign(race.running_leader(r.losses))
        if clock["steps"] is not None and clock["epoch_steps"] >= clock["steps"]:
            # Decide before Keras evaluates `validation_data`, so it sees the leader.
            self._race_end_epoch()

    def _race_end_epoch(self):
        """Close a race epoch: end the round if due, then load the leader into the model."""
        r = self._mcv.race
        if r is None or r.decided_this_epoch:
            return
        r.decided_this_epoch = True
        clock = self._mcv.clock
        r.epochs_in_round += 1
        last_epoch = clock["epochs"] is not None and clock["epoch"] + 1 >= clock["epochs"]
        round_over = r.epochs_in_round >= race.round_epochs(r.round) or last_epoch
        racing = [self.candidates[i] for i in r.slots]
        entry = {"race_round": r.round, "candidates": racing, "candidate_losses": None,
                 "survivors": None}
        if not r.losses:
            self._mcv.race_entry = entry
            return
        judged = race.judged_losses(r.losses)
        entry["candidate_losses"] = [float(v) for v in judged]
        if round_over:
            kept = race.survivors(r.losses, final=last_epoch)
            entry["survivors"] = [self.candidates[r.slots[s]] for s in kept]
            self._compact(kept)
            r.slots = [r.slots[s] for s in kept]
            r.round += 1
            r.epochs_in_round = 0
            r.losses = []
            leader_slot = 0
        else:
            leader_slot = race.ranking(judged)[0]
        self._mcv.branches.restore(leader_slot)
        self.mcv_lr.assign(self.candidates[r.slots[leader_slot]])
        self.mcv_race_leader.assign(leader_slot)
        if len(r.slots) == 1:
            self.mcv_race_state.assign(FINISHED)
            self._mcv.race = None
        self._mcv.race_entry = entry

    def _compact(self, kept):
        """Move the kept branches to slots 0..len(kept)-1, in `kept` order."""
        self._mcv.branches.reorder(kept)
        lrs = np.zeros(len(self.candidates))
        lrs[: len(kept)] = [self.candidates[self._mcv.race.slots[s]] for s in kept]
        self.mcv_race_lrs.assign(lrs)
        self.mcv_race_alive.assign(len(kept))

    # ----------------------------------------------------------------- step

    def train_step(self, data):
        self._mcv.traces += 1
        mode = self._mcv.mode
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        batch = (x, y, sample_weight)
        n = batch_size_of(batch)
        # Under tf.distribute, weight each replica's loss by its share of the
        # global batch, so an uneven last batch takes the global mean gradient.
        share = trials.replica_share(n)
        no_val = tf.constant(False)
        if mode[0] == "plain":
            loss, y_pred, grads = self._gradient(batch, weight=share)
            global_loss = trials.replica_mean(tf.cast(loss, tf.float32), n)
            lr = self._apply(grads, self.mcv_lr)
            self.mcv_ops.assign_add(tf.constant(cost.BASELINE, tf.int64))
            self.mcv_val_loss_tracker.update_state(global_loss)
            return self._update_metrics(
                batch, global_loss, y_pred, {"lr": lr, "pre_loss": None, "discarded": None}, no_val
            )
        losses, y_pred, shown = self._race_branches(batch, share, mode[1])
        global_loss = tf.gather(losses, shown)
        self.mcv_race_losses.assign(losses)
        alive = tf.cast(self.mcv_race_alive, tf.int64)
        self.mcv_ops.assign_add(tf.constant(cost.BASELINE, tf.int64) * alive)
        self.mcv_val_loss_tracker.update_state(global_loss)
        leader_lr = tf.cast(tf.gather(self.mcv_race_lrs, shown), tf.float32)
        outcome = {"lr": leader_lr, "pre_loss": None, "discarded": None}
        return self._update_metrics(batch, global_loss, y_pred, outcome, no_val)

    def _branch_step(self, j, batch, share):
        """Branch j: load it, its loss on `batch` (before the step), its step, store it."""
        branches = self._mcv.branches
        branches.restore(j)
        loss, y_pred, grads = self._gradient(batch, weight=share)
        loss = trials.replica_mean(tf.cast(loss, tf.float32), batch_size_of(batch))
        self._apply(grads, self.mcv_race_lrs[j])
        branches.save(j)
        return loss, y_pred

    def _race_branches(self, batch, share, alive):
        """Every racing branch's step; returns their losses, and the predictions and index shown.

        The logs show the leader (`mcv_race_leader`); if its loss is not finite
        on this batch, the branch with the lowest finite loss (a NaN would
        poison the epoch's mean). Branch 0 runs first, outside the loop, so the
        shape of the predictions carried through the loop is known.
        `alive` is the branch count when unrolled (tf.distribute), else None:
        a `tf.while_loop` up to `mcv_race_alive`.
        """
        k = len(self.candidates)
        leader = tf.cast(self.mcv_race_leader, tf.int32)
        loss0, pred0 = self._branch_step(0, batch, share)
        losses = tf.tensor_scatter_nd_update(
            tf.fill([k], tf.constant(trials.INF, tf.float32)), [[0]], [loss0]
        )

        def select(flag, a, b):
            return tf.nest.map_structure(lambda x, y: tf.where(flag, x, y), a, b)

        def body(j, losses, shown, best, best_loss):
            loss, pred = self._branch_step(j, batch, share)
            losses = tf.tensor_scatter_nd_update(losses, [[j]], [loss])
            shown = select(tf.equal(j, leader), pred, shown)
            better = trials.as_scores(loss) < best_loss
            return (j + 1, losses, shown, select(better, pred, best),
                    tf.where(better, trials.as_scores(loss), best_loss))

        state = (tf.constant(1), losses, pred0, pred0, trials.as_scores(loss0))
        if alive is None:
            count = tf.cast(self.mcv_race_alive, tf.int32)
            state = tf.while_loop(lambda j, *_: j < count, body, state)
        else:
            for _ in range(1, alive):
                state = body(*state)
        _, losses, shown, best, _ = state
        leader_ok = tf.math.is_finite(tf.gather(losses, leader))
        scores = trials.as_scores(losses)
        best_index = trials.first_index_of(scores <= tf.reduce_min(scores))
        index = tf.where(leader_ok, leader, tf.cast(best_index, tf.int32))
        return losses, select(leader_ok, shown, best), index

    # ------------------------------------------------------------------ epochs

    def _clock(self, **values):
        self._mcv.clock.update(values)

    def _epoch_begin(self, epoch: int):
        self._clock(epoch=int(epoch), epoch_steps=0)
        self._mcv.race_entry = None
        if self._mcv.race is not None:
            self._mcv.race.decided_this_epoch = False

    def end_epoch(self, epoch: int) -> dict:
        """This epoch's summary (appended to `mcv_history`); called by `EpochLRSelection`.

        Ends the race epoch first if the number of steps per epoch was unknown.
        """
        self._race_end_epoch()
        entry = {"epoch": int(epoch), "lr": float(self.mcv_lr.numpy()),
                 "candidates": None, "candidate_losses": None, "race_round": None,
                 "survivors": None}
        if self._mcv.race_entry is not None:
            entry.update(self._mcv.race_entry)
        entry["next_lr"] = float(self.mcv_lr.numpy())
        self._mcv.race_entry = None
        self._mcv.history.append(entry)
        return entry

    def fit(self, *args, callbacks=None, **kwargs):
        # The clock runs first: it opens each epoch before the selection closes it.
        callbacks = [_RaceClock()] + selection_first(callbacks)
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def _checkbatch_size_of(self, x, batch_size):
        # Whole batches train and judge: any batch size works.
        return None


class _RaceClock(keras.callbacks.Callback):
    """Tells a `RaceModel` the steps per epoch, the epoch count and each epoch's start."""

    def on_train_begin(self, logs=None):
        self.model._clock(steps=self.params.get("steps"), epochs=self.params.get("epochs"),
                          checked=False)

    def on_epoch_begin(self, epoch, logs=None):
        self.model._epoch_begin(epoch)
