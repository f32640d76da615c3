"""`RaceModel`: the learning-rate race, micro cross-validation over whole epochs.

The pure rules (round lengths, judging, survivors) are in `keras_mcv.rules.race`;
this module holds the Keras model that runs them: the branches live in
pre-allocated snapshots (`keras_mcv.trials.Snapshot`), one per candidate, and
one compiled step trains every surviving branch on the same batch.
"""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_mcv import cost
from keras_mcv import trials
from keras_mcv.models.base import LRModel
from keras_mcv.models.base import _json_bytes
from keras_mcv.models.base import batch_size_of
from keras_mcv.models.base import selection_first
from keras_mcv.rules import race
from keras_mcv.rules import thesis as thesis_rules

# The batch-splitting models' arguments (`MCVModel`): refused by name, with the
# reason, rather than by Keras as unknown keyword arguments.
_SPLIT_ARGUMENTS = ("validation_fraction", "trial_every", "trial_training", "trial_batch_size")

NOT_STARTED, RACING, FINISHED = 0, 1, 2
"""Values of `RaceModel.mcv_race_state`."""


class _Race:
    """Python state of a race in progress (kept out of Keras attribute tracking).

    Saved with the model while the race runs (`RaceModel.save_own_variables`),
    together with the branches, as JSON: the losses are float32 values held in
    float64, which JSON writes and reads back exactly.
    """

    def __init__(self, slots):
        self.slots = list(slots)  # candidate index held by each snapshot slot, in slot order
        self.round = 1
        self.epochs_in_round = 0
        self.losses = []  # one row per step of the round: each slot's pre-step loss
        self.decided_this_epoch = False

    def to_dict(self) -> dict:
        return {"slots": [int(i) for i in self.slots], "round": int(self.round),
                "epochs_in_round": int(self.epochs_in_round),
                "losses": [[float(v) for v in row] for row in self.losses]}

    @classmethod
    def from_dict(cls, saved) -> "_Race":
        r = cls(saved["slots"])
        r.round = int(saved["round"])
        r.epochs_in_round = int(saved["epochs_in_round"])
        r.losses = [np.asarray(row, dtype=np.float64) for row in saved["losses"]]
        return r


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

    Logs: every branch keeps its own metric state (the `loss`, `lr`,
    `mcv_val_loss` logs and the compiled metrics), so an epoch's logs are
    those of one branch over the whole epoch: the branch the model holds at
    the epoch's end, whose LR `mcv_history` records. (Within an epoch, the
    progress bar shows the branch leading so far.) `mcv_val_loss` is the same
    pre-step loss as `loss` (it is measured before the step, so it is also a
    validation loss). `mcv_history` holds, per epoch, the racing LRs, their
    judged losses at the end of a round and the survivors.

    The learning rate, the user's own: while the race runs, it sets every
    branch's LR, and the LR the optimizer had at `compile` is not used. When
    the race ends, the winner's LR is written into the optimizer, once; from
    then on the optimizer's `learning_rate` is the user's, and plain steps use
    it as plain Keras does: `model.optimizer.learning_rate = x`,
    `keras.callbacks.LearningRateScheduler` and `ReduceLROnPlateau` act on it
    (the race's choice is where they start). Setting the learning rate while
    the race runs (by hand between two `fit`s, or by a callback) ends the
    race there: the branch leading at that moment goes on, at the LR that
    was set, with a warning, and that epoch's `mcv_history` entry says
    `race_ended: "learning rate set"`; set before the race starts (e.g. by a
    `LearningRateScheduler` at epoch 0), it means no race. A schedule that
    returns the LR it is given leaves the race alone. `compile` again (with
    a new optimizer, say) starts a new race at the next `fit`, from the
    current weights.

    `train_on_batch`: give `steps_per_epoch` (the race's rounds are counted
    in epochs of that many calls), else it is refused. `jit_compile=True`
    works: the branches are read with a gather and written with a scatter,
    which XLA compiles inside the loop over branches.

    Memory: one copy of the weights and the optimizer state per candidate
    (K = 4 with SGD-momentum: 8 copies of the weights), held for the whole
    `fit`; a model saved while the race runs holds them too.

    Resuming: while the race runs, the model's saved state (`save`,
    `save_weights`, `keras.callbacks.BackupAndRestore`) includes the
    branches and the race's round, losses and survivors, so a run resumed
    from an epoch's backup (`BackupAndRestore`'s default `save_freq`) goes on
    with the race exactly where it was: it ends bit-identical to a run that
    never stopped (with deterministic ops). A model saved after the race
    holds no branches. A second `fit` in the same process (after early
    stopping, say) goes on with the race where it stopped.

    Args:
        candidates: the candidate LRs. Defaults to `[1e-1, 1e-2, 1e-3, 1e-4]`
            (the thesis's initial list).
        **kwargs: `steps_per_epoch` (see `LRModel`) and the `keras.Model`
            arguments (`inputs`, `outputs`, `name`).

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
        self._mcv.race_note = None
        self._mcv.branches = None
        self._mcv.metric_branches = None
        self._mcv.metrics_reset = False
        self._mcv.leader_logs = None
        # The optimizer's LR as the race last left it (None: read it when
        # training starts); a different LR at a race step was set by the user.
        self._mcv.lr_written = None
        self._mcv.clock = {"steps": None, "epochs": None, "epoch": 0, "epoch_steps": 0,
                           "checked": False}

    def get_config(self):
        config = super().get_config()
        config.update(candidates=list(self.candidates))
        return config

    # ----------------------------------------------------------------- build

    def _branch_variables(self) -> list:
        """What each branch owns: weights, optimizer state, other network state.

        Other network state is BatchNorm statistics and seed-generator states.
        Metric state is per branch too, in a store of its own
        (`_mcv.metric_branches`), so that logs follow one branch.
        """
        state = {id(v) for v in self._mcv.state}
        trainable = list(self.trainable_variables)
        trainable_ids = {id(v) for v in trainable}
        metric_ids = {id(v) for v in self.metrics_variables}
        other = [
            v for v in self.variables
            if id(v) not in state and id(v) not in trainable_ids and id(v) not in metric_ids
        ]
        return trainable + list(self.optimizer.variables) + other

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Private Keras hook (see `LRModel`). Without tf.distribute, Keras
        # builds the compiled metrics while tracing the first step; the race
        # needs their variables before, to give every branch its own copy. So
        # build them here, symbolically, from the batch's shapes (`_symbolic_build`
        # is what Keras itself runs under tf.distribute; the TF epoch
        # iterator's dataset gives the shapes without reading a batch).
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        metrics = getattr(self, "_compile_metrics", None)
        losses = getattr(self, "_compile_loss", None)
        if (metrics is None or metrics.built) and (losses is None or losses.built):
            return
        spec = data_batch
        if spec is None and iterator is not None:
            spec = getattr(getattr(iterator, "_distributed_dataset", None), "element_spec", None)
        if spec is not None:
            with self.distribute_strategy.scope():
                self._symbolic_build(data_batch=spec)

    def _mcv_build(self):
        # A race never restores a trial, so it needs no snapshots: only the branches.
        self._build_branches()
        if self._mcv.metric_branches is None:
            with self.distribute_strategy.scope():
                self._mcv.metric_branches = trials.BranchStore(
                    self.metrics_variables, len(self.candidates), "mcv_branch_metrics"
                )
            self._mcv.metrics_reset = True  # filled from the model's before the next race step

    def _build_branches(self):
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        if self._mcv.branches is None:
            with self.distribute_strategy.scope():
                self._mcv.branches = trials.BranchStore(
                    self._branch_variables(), len(self.candidates), "mcv_branch"
                )

    def _on_compile(self) -> None:
        """`compile` again: a new race at the next `fit`, from the current weights."""
        self._mcv.branches = None
        self._mcv.metric_branches = None
        self._mcv.race = None
        self._mcv.lr_written = None
        if int(self.mcv_race_state.numpy()) != NOT_STARTED:
            self.mcv_race_state.assign(NOT_STARTED)

    def _on_replicas(self, fn):
        """Run `fn` in each replica's context (metric state is per replica), or just run it."""
        if self.distribute_strategy.num_replicas_in_sync > 1:
            self.distribute_strategy.run(fn)
        else:
            fn()

    def reset_metrics(self):
        # Every branch's metric state is reset with the model's, at the next step.
        super().reset_metrics()
        self._mcv.metrics_reset = True

    def evaluate(self, *args, **kwargs):
        # `fit` evaluates `validation_data` after an epoch's last step with
        # this private Keras argument. When the number of steps per epoch is
        # unknown, the race has not closed the epoch yet: close it first, so
        # that validation sees the branch the epoch chose.
        if kwargs.get("_use_cached_eval_dataset"):
            logs = self._close_epoch_late()
            if logs:
                self._mcv.leader_logs = logs
        return super().evaluate(*args, **kwargs)

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
        if self._mcv.metrics_reset:
            self._mcv.metrics_reset = False
            self._on_replicas(self._mcv.metric_branches.fill)
        if not self._refuses_lr_callbacks():
            if self._mcv.lr_written is None:
                self._record_lr()
            if self._lr_now() != self._mcv.lr_written:
                self._end_race_by_user()
                return ("plain",)
        if self.distribute_strategy.num_replicas_in_sync > 1:
            # `optimizer.apply` cannot run inside a `tf.while_loop` under
            # tf.distribute (its merge_call): unroll, one graph per branch count.
            return ("race", len(self._mcv.race.slots))
        # One graph for every branch count: a `tf.while_loop` over the branches.
        return ("race", None)

    def _lr_now(self) -> float:
        return float(np.asarray(self.optimizer.learning_rate.numpy()))

    def _lr_as_stored(self, lr) -> float:
        """`lr` as the optimizer's learning-rate variable holds it."""
        dtype = np.dtype(tf.as_dtype(self.optimizer.learning_rate.dtype).as_numpy_dtype)
        return float(np.asarray(lr, dtype=dtype))

    def _record_lr(self) -> None:
        """When training starts: the LR the race will compare with, if it has none."""
        if self._mcv.lr_written is None and getattr(self, "optimizer", None) is not None:
            self._mcv.lr_written = self._lr_now()

    def _race_start_or_finish(self):
        """At a `fit`'s first step: start the race, or end one a resume cut short."""
        state = int(self.mcv_race_state.numpy())
        if state == NOT_STARTED:
            if self._mcv.lr_written is not None and self._lr_now() != self._mcv.lr_written:
                self._end_race_by_user()
                return
            self._fill_slots()
            self.mcv_race_lrs.assign(np.asarray(self.candidates, "float64"))
            self.mcv_race_alive.assign(len(self.candidates))
            self.mcv_race_leader.assign(0)
            self.mcv_race_state.assign(RACING)
            self._mcv.race = _Race(range(len(self.candidates)))
            if self._mcv.lr_written is None:
                self._mcv.lr_written = self._lr_now()
        elif state == RACING and self._mcv.race is None:
            # A race state without its branches (loaded into a model that was
            # not compiled, say): the weights and LR are those of its last
            # saved leader, which trains on.
            warnings.warn(
                "RaceModel: the race was loaded without its branches (the model was "
                "not compiled when it was loaded); its last saved leader, LR "
                f"{float(self.mcv_lr.numpy()):g}, trains on as plain training.",
                stacklevel=2,
            )
            self.optimizer.learning_rate.assign(self._lr_as_stored(self.mcv_lr.numpy()))
            self.mcv_race_state.assign(FINISHED)

    def _end_race_by_user(self):
        """The LR was set from outside during the race: its leader goes on at that LR."""
        now = self._lr_now()
        r = self._mcv.race
        epoch = self._mcv.clock["epoch"] + 1
        if r is None:
            warnings.warn(
                f"RaceModel: the optimizer's learning rate was set to {now:g} before the "
                "race could start (by a callback at the start of training, say); that "
                f"ends the race before it starts: training goes on at {now:g} as plain "
                "Keras training.",
                stacklevel=3,
            )
        else:
            slot = int(self.mcv_race_leader.numpy())
            self._restore_slot(slot)
            self.optimizer.learning_rate.assign(now)
            lr = self.candidates[r.slots[slot]]
            self.mcv_lr.assign(lr)
            warnings.warn(
                f"RaceModel: the optimizer's learning rate was set to {now:g} during the "
                f"race (in epoch {epoch}); that ends the race: the branch leading so far "
                f"(LR {lr:g}) trains on at {now:g}. To let the race choose, set the "
                f"learning rate after it (it ends after epoch "
                f"{race.race_epochs(len(self.candidates))}).",
                stacklevel=3,
            )
        self._mcv.race = None
        self.mcv_race_state.assign(FINISHED)
        self._mcv.race_note = "learning rate set"

    def _after_call(self, mode) -> None:
        if mode[0] != "race":
            return
        clock = self._mcv.clock
        clock["epoch_steps"] += 1
        r = self._mcv.race
        r.losses.append(np.asarray(self.mcv_race_losses.numpy())[: len(r.slots)].astype(np.float64))
        self.mcv_race_leader.assign(race.running_leader(r.losses))
        # The step ends with the last branch loaded, its LR in the optimizer.
        self._mcv.lr_written = self._lr_now()
        if clock["steps"] is not None and clock["epoch_steps"] >= clock["steps"]:
            # Decide before Keras evaluates `validation_data`, so it sees the leader.
            self._race_end_epoch()

    def _race_end_epoch(self):
        """Close a race epoch: end the round if due, then load the leader into the model.

        The leader comes with its weights, optimizer state (its LR included)
        and metric state (`_restore_slot`).
        """
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
        self._restore_slot(leader_slot)
        self.mcv_lr.assign(self.candidates[r.slots[leader_slot]])
        self.mcv_race_leader.assign(leader_slot)
        self._mcv.lr_written = self._lr_now()
        if len(r.slots) == 1:
            # The race is over: the optimizer holds the winner's LR (restored
            # with its branch), which is the user's from now on.
            self.mcv_race_state.assign(FINISHED)
            self._mcv.race = None
        self._mcv.race_entry = entry

    def _compact(self, kept):
        """Move the kept branches to slots 0..len(kept)-1, in `kept` order."""
        self._reorder_slots(kept)
        lrs = np.zeros(len(self.candidates))
        lrs[: len(kept)] = [self.candidates[self._mcv.race.slots[s]] for s in kept]
        self.mcv_race_lrs.assign(lrs)
        self.mcv_race_alive.assign(len(kept))

    # The branches, with their metric state, for subclasses that race other rounds.

    def _fill_slots(self):
        """Every branch = the model as it is (weights, optimizer, metrics)."""
        self._mcv.branches.fill()
        self._on_replicas(self._mcv.metric_branches.fill)
        self._mcv.metrics_reset = False

    def _restore_slot(self, slot):
        """Load branch `slot` into the model, its metric state too."""
        self._mcv.branches.restore(slot)
        self._on_replicas(lambda: self._mcv.metric_branches.restore(slot))

    def _reorder_slots(self, kept):
        """Slots 0..len(kept)-1 take the branches `kept` names, in its order."""
        self._mcv.branches.reorder(kept)
        self._on_replicas(lambda: self._mcv.metric_branches.reorder(kept))

    # ---------------------------------------------------------------- saving

    def _save_method_state(self, store):
        """While the race runs: its branches and Python state (round, losses, survivors)."""
        r = self._mcv.race
        if not isinstance(r, _Race) or self._mcv.branches is None:
            return
        store["mcv_race"] = _json_bytes(r.to_dict())
        for i, stack in enumerate(self._mcv.branches.stacks):
            store[f"mcv_branch_{i}"] = stack.numpy()

    def _load_method_state(self, store, keys):
        self._mcv.race = None
        self._mcv.lr_written = None
        if "mcv_race" not in keys:
            return
        if getattr(self, "optimizer", None) is None:
            return  # not compiled: no branches to fill (see `_race_start_or_finish`)
        self._build_branches()
        stacks = self._mcv.branches.stacks
        saved = sorted((k for k in keys if k.startswith("mcv_branch_")),
                       key=lambda k: int(k.rsplit("_", 1)[1]))
        if len(saved) != len(stacks):
            raise ValueError(
                f"The saved race has {len(saved)} branch variables, this RaceModel "
                f"{len(stacks)}: load it into a model with the same network and optimizer."
            )
        for stack, key in zip(stacks, saved):
            stack.assign(np.asarray(store[key]))
        self._mcv.race = _Race.from_dict(json.loads(bytes(np.asarray(store["mcv_race"])).decode()))

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
        if mode[0] == "plain":
            # After the race: a plain Keras step at the optimizer's own LR.
            loss, y_pred, grads = self._gradient(batch, weight=share)
            global_loss = trials.replica_mean(tf.cast(loss, tf.float32), n)
            lr = self._apply(grads, self._plain_lr())
            self.mcv_ops.assign_add(tf.constant(cost.BASELINE, tf.int64))
            self.mcv_val_loss_tracker.update_state(global_loss)
            return self._update_metrics(
                batch, global_loss, y_pred, {"lr": lr, "pre_loss": None, "discarded": None},
                tf.constant(False),
            )
        n_metrics = len(self._mcv.metric_branches.variables)
        losses, shown = self._race_branches(batch, share, mode[1])
        if len(self.metrics_variables) != n_metrics:
            raise RuntimeError(
                "RaceModel: a metric was built during the race's first step, so it would "
                "mix the branches. Build the model's metrics first (e.g. run "
                "`model.evaluate` on one batch before `fit`)."
            )
        self.mcv_race_losses.assign(losses)
        alive = tf.cast(self.mcv_race_alive, tf.int64)
        self.mcv_ops.assign_add(tf.constant(cost.BASELINE, tf.int64) * alive)
        # The step's logs: the metric state of the branch shown.
        self._mcv.metric_branches.restore(shown)
        return self.get_metrics_result()

    def _branch_step(self, j, batch, share):
        """Branch j: load it (its metrics too), its loss on `batch` before its step, its step, store it."""
        branches, metrics = self._mcv.branches, self._mcv.metric_branches
        branches.restore(j)
        metrics.restore(j)
        loss, y_pred, grads = self._gradient(batch, weight=share)
        loss = trials.replica_mean(tf.cast(loss, tf.float32), batch_size_of(batch))
        lr = self._apply(grads, self.mcv_race_lrs[j])
        self.mcv_val_loss_tracker.update_state(loss)
        self._update_metrics(batch, loss, y_pred, {"lr": lr, "pre_loss": None, "discarded": None},
                             tf.constant(False))
        branches.save(j)
        metrics.save(j)
        return loss

    def _race_branches(self, batch, share, alive):
        """Every racing branch's step; returns their losses and the index of the branch shown.

        The logs show the leader (`mcv_race_leader`); if its loss is not finite
        on this batch, the branch with the lowest finite loss (a NaN would
        poison the epoch's mean). `alive` is the branch count when unrolled
        (tf.distribute), else None: a `tf.while_loop` up to `mcv_race_alive`.
        """
        k = len(self.candidates)
        leader = tf.cast(self.mcv_race_leader, tf.int32)
        losses = tf.fill([k], tf.constant(trials.INF, tf.float32))

        def body(j, losses):
            loss = self._branch_step(j, batch, share)
            return j + 1, tf.tensor_scatter_nd_update(losses, [[j]], [loss])

        state = (tf.constant(0), losses)
        if alive is None:
            count = tf.cast(self.mcv_race_alive, tf.int32)
            state = tf.while_loop(lambda j, _: j < count, body, state)
        else:
            for _ in range(alive):
                state = body(*state)
        _, losses = state
        leader_ok = tf.math.is_finite(tf.gather(losses, leader))
        scores = trials.as_scores(losses)
        best_index = trials.first_index_of(scores <= tf.reduce_min(scores))
        index = tf.where(leader_ok, leader, tf.cast(best_index, tf.int32))
        return losses, index

    # ------------------------------------------------------------------ epochs

    def _clock(self, **values):
        self._mcv.clock.update(values)

    def _epoch_begin(self, epoch: int):
        self._clock(epoch=int(epoch), epoch_steps=0)
        self._mcv.race_entry = None
        if self._mcv.race is not None:
            self._mcv.race.decided_this_epoch = False

    def _loop_epoch_begin(self, epoch: int) -> None:
        # `train_on_batch`: an epoch is `steps_per_epoch` calls, the end unknown.
        self._clock(steps=self.steps_per_epoch, epochs=None, checked=False)
        self._record_lr()
        self._epoch_begin(epoch)

    def _close_epoch_late(self):
        """At an epoch's end, when its steps were not counted: decide; the leader's logs.

        Returns the logs of the branch the epoch chose when this call (or
        the validation run before it) closed the epoch, else None.
        """
        r = self._mcv.race
        logs, self._mcv.leader_logs = self._mcv.leader_logs, None
        if r is None or r.decided_this_epoch:
            return logs
        self._race_end_epoch()
        return _plain_logs(self.get_metrics_result())

    def _plain_lr(self):
        """The LR of a plain step: None, the optimizer's own (the user's, after the race)."""
        return None

    def _lr_in_effect(self) -> float:
        """The LR of the model at an epoch's end: the race's choice, or after it the optimizer's."""
        chosen = float(self.mcv_lr.numpy())
        if (self._mcv.race is not None or self._plain_lr() is not None
                or getattr(self, "optimizer", None) is None):
            return chosen
        now = self._lr_now()
        # The race's choice as the exact number given, until the user sets another.
        return chosen if self._lr_as_stored(chosen) == now else now

    def end_epoch(self, epoch: int) -> dict:
        """This epoch's summary (appended to `mcv_history`); called by `EpochLRSelection`.

        Ends the race epoch first if the number of steps per epoch was unknown.
        After the race, `lr` is the optimizer's LR at the epoch's end (before
        the callbacks that run after `EpochLRSelection` change it).
        """
        self._race_end_epoch()
        self._mcv.leader_logs = None
        lr = self._lr_in_effect()
        entry = {"epoch": int(epoch), "lr": lr,
                 "candidates": None, "candidate_losses": None, "race_round": None,
                 "survivors": None}
        if self._mcv.race_entry is not None:
            entry.update(self._mcv.race_entry)
        if self._mcv.race_note is not None:
            entry["race_ended"] = self._mcv.race_note
            self._mcv.race_note = None
        entry["next_lr"] = lr
        self._mcv.race_entry = None
        self._mcv.history.append(entry)
        return entry

    def fit(self, *args, callbacks=None, **kwargs):
        # The clock runs first: it opens each epoch before the selection closes
        # it; its twin runs last, to read the LR once the callbacks (a backup
        # restored, say) have set it at the start of training.
        callbacks = [_RaceClock()] + selection_first(callbacks) + [_RaceClock(last=True)]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def _refuses_lr_callbacks(self) -> bool:
        # The LR is the user's once the race is over; during it, a change ends it.
        return False


def _plain_logs(logs) -> dict:
    out = {}
    for key, value in logs.items():
        try:
            out[key] = float(np.asarray(value))
        except (TypeError, ValueError):
            continue
    return out


class _RaceClock(keras.callbacks.Callback):
    """Tells a `RaceModel` the steps per epoch, the epoch count and each epoch's start.

    The last one in the list reads the optimizer's LR when training starts.
    """

    def __init__(self, last=False):
        super().__init__()
        self.last = last

    def on_train_begin(self, logs=None):
        if self.last:
            self.model._record_lr()
            return
        self.model._clock(steps=self.params.get("steps"), epochs=self.params.get("epochs"),
                          checked=False)

    def on_epoch_begin(self, epoch, logs=None):
        if not self.last:
            self.model._epoch_begin(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.last:
            return
        leader_logs = self.model._close_epoch_late()
        if leader_logs and logs is not None:
            logs.update(leader_logs)
