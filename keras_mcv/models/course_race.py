"""`CourseRaceModel`: the learning-rate race, then a race of LR courses from the winner's point.

The pure rules (courses, continuations, the round plan) are in
`keras_mcv.rules.course`; this module runs them on `RaceModel`'s branches and
compiled steps. Only the Python side differs: which branches race in each
round, and the LR each one takes on each step (assigned before the step).
"""

from __future__ import annotations

import numpy as np
import keras

from keras_mcv.models.race import FINISHED, NOT_STARTED, RACING, RaceModel
from keras_mcv.rules import course as course_rules
from keras_mcv.rules import race
from keras_mcv.rules import thesis as thesis_rules

LEVEL_SHAPES = ("constant", "warmup", "cosine")


class _Round:
    """Python state of one round in progress (kept out of Keras attribute tracking)."""

    def __init__(self, kind, number, courses, names, length=None):
        self.kind = kind  # "level" or "course"
        self.round = number
        self.slots = list(courses)  # the Course each slot follows
        self.names = list(names)  # a label per slot: its candidate LR or continuation
        self.length = length  # epochs (course rounds; level rounds double)
        self.epochs_in_round = 0
        self.losses = []
        self.decided_this_epoch = False


@keras.saving.register_keras_serializable(package="keras_mcv")
class CourseRaceModel(RaceModel):
    """The learning-rate race, then courses raced from the leader's point, in one `fit`.

    ```
    level race:   RaceModel's successive halving of the candidate LRs over
                  rounds of 1, 2, ... epochs; each candidate follows the level
                  shape ("constant"; "warmup": linear warm-up over round 1;
                  "cosine": cosine to zero over the whole budget)
    course rounds (plan "final": one round to the end of the budget;
                   "doubling": rounds of 4, 8, ... epochs, the last cut at E):
                  fork the leader into one branch per continuation in
                  `courses` (keep, cosine / linear to zero over the budget
                  left, seq3 by epoch, a step down; `+`/`-`: one level step
                  q = sqrt(spacing of the candidates) up/down; `~`: one level
                  step toward the level race's runner-up); identical courses
                  race once; judged as the race judges (mean pre-step loss
                  over the round's last half, the same batches for all)
    the winner:   trains on, on its course, plain Keras steps
    ```
    Every branch takes, on every step, the LR its course gives at that step
    (the budget is `fit`'s `epochs` x steps per epoch, so the steps per epoch
    must be known). At the end of every epoch the model holds the leading
    branch, as in `RaceModel`. The plan's cost in branch-epochs is
    `rules.course.plan_cost_epochs(E, K, len(courses), plan)`.

    Resuming: the leader's course and the step count are model variables; a
    run resumed inside a round goes on with the leader of the last saved
    epoch, on its course, as plain training. A second `fit` in the same
    process goes on with the live round; past the first `fit`'s budget,
    decaying courses hold their last LR.

    Args:
        candidates: the level race's candidate LRs. Defaults to
            `[1e-1, 1e-2, 1e-3, 1e-4]`.
        level_shape: "constant", "warmup" or "cosine". Defaults to "constant".
        courses: the continuations raced in every course round, at most
            `len(candidates)`; `()` races no course (the leader keeps its
            course). Defaults to `("keep", "cosine")`.
        plan: "final" or "doubling". Defaults to "final".
        **kwargs: `keras.Model` arguments (`inputs`, `outputs`, `name`).

    References: Jamieson & Talwalkar, AISTATS 2016 (successive halving);
    Jaderberg et al., Population Based Training of Neural Networks, 2017;
    Loshchilov & Hutter, SGDR, ICLR 2017; `keras_mcv.rules.course`.
    """

    method_name = "course"

    def __init__(self, *args, candidates=thesis_rules.DEFAULT_CANDIDATES, level_shape="constant",
                 courses=("keep", "cosine"), plan="final", **kwargs):
        if level_shape not in LEVEL_SHAPES:
            raise ValueError(
                f"Unknown level_shape {level_shape!r}; use one of {', '.join(LEVEL_SHAPES)}."
            )
        if plan not in course_rules.ROUND_PLANS:
            raise ValueError(f"Unknown plan {plan!r}; use one of {', '.join(course_rules.ROUND_PLANS)}.")
        courses = tuple(courses)
        for name in courses:
            course_rules.parse_continuation(name)
        super().__init__(*args, candidates=candidates, **kwargs)
        if len(courses) > len(self.candidates):
            raise ValueError(
                f"{len(courses)} courses need as many branches, but the race holds "
                f"{len(self.candidates)} (one per candidate). Race at most "
                f"{len(self.candidates)} courses, or give more candidates."
            )
        self.level_shape = level_shape
        self.courses = courses
        self.plan = plan
        self.q = float(np.sqrt(course_rules.spacing(self.candidates)))
        self.mcv_course = self._state_weight("mcv_course", (6,), "float64", "zeros")
        self.mcv_course_step = self._state_weight("mcv_course_step", (), "int64", "zeros")
        self._mcv.step = 0
        self._mcv.lrs = None  # the LRs last assigned (racing slots, or the plain LR)
        self._mcv.leader_course = None
        self._mcv.toward = 1

    def get_config(self):
        config = super().get_config()
        config.update(level_shape=self.level_shape, courses=list(self.courses), plan=self.plan)
        return config

    # -------------------------------------------------------------- the plan

    def _budget(self):
        clock = self._mcv.clock
        if clock["steps"] is None or clock["epochs"] is None:
            raise ValueError(
                "CourseRaceModel needs the number of steps per epoch to lay its courses over "
                "the budget: pass arrays, a dataset of known length, or steps_per_epoch= to fit."
            )
        return int(clock["steps"]), int(clock["epochs"])

    def _race_start_or_finish(self):
        state = int(self.mcv_race_state.numpy())
        self._mcv.step = int(self.mcv_course_step.numpy())
        if state == NOT_STARTED:
            steps, epochs = self._budget()
            start = self._mcv.step
            end = start + steps * epochs
            shape = self.level_shape
            warm_end = start + steps * race.round_epochs(1) if shape == "warmup" else 0
            courses = [course_rules.Course(shape, c, start, end, steps, warm_end)
                       for c in self.candidates]
            self._mcv.rounds = iter([("course", n) for n in course_rules.course_rounds(
                epochs, len(self.candidates), self.plan)])
            self._fill_slots()
            self.mcv_race_alive.assign(len(courses))
            self.mcv_race_leader.assign(0)
            self.mcv_race_state.assign(RACING)
            self._mcv.race = _Round("level", 1, courses, [f"{c:g}" for c in self.candidates])
            self._set_leader_course(courses[0])
        elif self._mcv.race is None:
            if state == RACING:
                # Begun in another process: the branches are gone; go on with the saved leader.
                self.mcv_race_state.assign(FINISHED)
            self._mcv.leader_course = course_rules.Course.from_vector(self.mcv_course.numpy())

    def _set_leader_course(self, course):
        self._mcv.leader_course = course
        self.mcv_course.assign(np.asarray(course.as_vector(), "float64"))

    def _plain_lr(self):
        # After the race, the leader's course sets the LR of every step.
        return self.mcv_lr

    def _refuses_lr_callbacks(self) -> bool:
        # The courses set the LR of every step to the end of `fit`.
        return True

    def _lr_choice(self) -> str:
        return "at every step, on the course it races"

    # ------------------------------------------------------------- each step

    def _next_mode(self) -> tuple:
        mode = super()._next_mode()
        step = self._mcv.step
        if mode[0] == "race":
            lrs = np.zeros(len(self.candidates))
            lrs[: len(self._mcv.race.slots)] = [c.lr_at(step) for c in self._mcv.race.slots]
            if self._mcv.lrs is None or not np.array_equal(lrs, self._mcv.lrs):
                self.mcv_race_lrs.assign(lrs)
                self._mcv.lrs = lrs
        else:
            lr = np.asarray([self._mcv.leader_course.lr_at(step)])
            if self._mcv.lrs is None or not np.array_equal(lr, self._mcv.lrs):
                self.mcv_lr.assign(lr[0])
                self._mcv.lrs = lr
        return mode

    def _after_call(self, mode) -> None:
        self._mcv.step += 1
        super()._after_call(mode)

    # ------------------------------------------------------------ epoch ends

    def _race_end_epoch(self):
        r = self._mcv.race
        if r is None or r.decided_this_epoch:
            return
        r.decided_this_epoch = True
        clock = self._mcv.clock
        r.epochs_in_round += 1
        last_epoch = clock["epochs"] is not None and clock["epoch"] + 1 >= clock["epochs"]
        due = race.round_epochs(r.round) if r.kind == "level" else r.length
        round_over = r.epochs_in_round >= due or last_epoch
        entry = {"race_round": r.round, "candidates": [c.lr_at(self._mcv.step) for c in r.slots],
                 "courses": list(r.names), "candidate_losses": None, "survivors": None}
        self._mcv.race_entry = entry
        if not r.losses:
            return
        judged = race.judged_losses(r.losses)
        entry["candidate_losses"] = [float(v) for v in judged]
        if not round_over:
            self._load_leader(race.ranking(judged)[0])
            return
        if r.kind == "level":
            kept = race.survivors(r.losses, final=last_epoch)
            if len(kept) == 1 and len(r.slots) > 1:
                runner_up = race.ranking(judged)[1]
                self._mcv.toward = 1 if r.slots[runner_up].lr0 > r.slots[kept[0]].lr0 else -1
        else:
            kept = race.ranking(judged)[:1]
        entry["survivors"] = [r.slots[s].lr_at(self._mcv.step) for s in kept]
        entry["survivor_courses"] = [r.names[s] for s in kept]
        self._reorder_slots(kept)
        r.slots, r.names = [r.slots[s] for s in kept], [r.names[s] for s in kept]
        r.round += 1
        r.epochs_in_round, r.losses = 0, []
        self.mcv_race_alive.assign(len(kept))
        self._load_leader(0)
        if len(r.slots) == 1:
            self._next_round(r.round, last_epoch)

    def _load_leader(self, slot):
        r = self._mcv.race
        self._restore_slot(slot)
        self._set_leader_course(r.slots[slot])
        self.mcv_lr.assign(r.slots[slot].lr_at(self._mcv.step))
        self.mcv_race_leader.assign(slot)
        self._mcv.lrs = None

    def _next_round(self, number, last_epoch):
        """Fork the leader (now in the model) into the next course round, or finish."""
        nxt = None if last_epoch else next(self._mcv.rounds, None)
        leader = self._mcv.leader_course
        step = self._mcv.step
        if nxt is not None and self.courses:
            courses = [course_rules.continue_course(leader, name, step, self.q, self._mcv.toward)
                       for name in self.courses]
            keep = course_rules.distinct(courses, step)
            if len(keep) > 1:
                self._fill_slots()
                self._mcv.race = _Round("course", number, [courses[i] for i in keep],
                                        [self.courses[i] for i in keep], length=nxt[1])
                self._mcv.race.decided_this_epoch = True  # it starts with the next epoch
                self.mcv_race_alive.assign(len(keep))
                self.mcv_race_leader.assign(0)
                self._set_leader_course(courses[keep[0]])
                return
            self._set_leader_course(courses[keep[0]])
        self.mcv_race_state.assign(FINISHED)
        self._mcv.race = None

    def end_epoch(self, epoch: int) -> dict:
        """This epoch's summary; `lr` is the LR the leader takes on the next step."""
        self._race_end_epoch()
        if self._mcv.leader_course is not None:
            self.mcv_lr.assign(self._mcv.leader_course.lr_at(self._mcv.step))
            self._mcv.lrs = None
        entry = super().end_epoch(epoch)
        entry.setdefault("courses", None)
        entry.setdefault("survivor_courses", None)
        self.mcv_course_step.assign(self._mcv.step)
        return entry
