"""Pure rules of the course race: learning-rate courses, continuations, and the round plan.

The learning-rate race (`keras_mcv.rules.race`) chooses a constant LR among
candidates. The course race goes on after it: from the winner's point, it
forks the network into branches that continue on different *courses* (the LR
as a function of the step: keep, decay to zero, step down, or a neighbouring
level) and races them on the same batches, judged the same way (each
branch's mean pre-step loss over the last half of the round). Everything is
a function of the step count and the budget (`epochs x steps per epoch`),
so a run is reproducible; nothing is drawn at random.

```
course (shape, lr0, start, end, warmup_end) -> lr(step), step >= start:
    constant:  lr0                               (after a linear warm-up:
    warmup:    lr0 * min(1, (step - start + 1) / (warmup_end - start)))
    cosine:    lr0 * (1 + cos(pi (step - start) / (end - start))) / 2
    linear:    lr0 * (end - step) / (end - start)
               (past the budget, cosine and linear hold their last step's LR)
    seq3:      lr0 * 0.9 ** n,  n = 1 + (step - start) // steps_per_epoch
continuations of a course at step s (each from the leader's point):
    keep                 the same course
    cosine, linear, seq3 from the course's LR at s, to the end of the budget
    step                 the LR at s times 1 / q, held
    NAME+ / NAME-        as NAME, the LR times q or 1 / q
    NAME~                as NAME, one level step toward the level race's
                         runner-up (the finer second race around the winner)
    q = sqrt(g), g = the candidates' geometric spacing (decades: q = 10^0.5)
round plan over E epochs:
    level rounds of 1, 2, 4 ... epochs (successive halving of the candidates)
    then course rounds: "final"    one round to the end of the budget
                        "half"     one round over the first half of what is
                                   left (rounded up); the winner trains alone
                                   on the rest
                        "doubling" rounds continuing 2^(r-1) epochs, cut at E
```

References: Jamieson & Talwalkar, AISTATS 2016 (successive halving); Jaderberg
et al., Population Based Training of Neural Networks, 2017 (exploit from the
leader's point, here without random perturbation); Loshchilov & Hutter,
SGDR, ICLR 2017 (cosine decay); Yang & Huang, Learning Rate Investigation,
2019, section 3 (seq3); Goyal et al., Accurate, Large Minibatch SGD, 2017
(linear warm-up).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from keras_mcv.rules import race

SHAPES = ("constant", "warmup", "cosine", "linear", "seq3")
"""Course shapes, in the order of their codes (`Course.code`)."""

CONTINUATIONS = ("keep", "cosine", "linear", "seq3", "step")
"""Continuation kinds; each may carry a level suffix `+` or `-`."""

ROUND_PLANS = ("final", "half", "doubling")

SEQ3_FACTOR = 0.9
"""seq3's per-epoch factor (Yang & Huang's third decay sequence, r_n = 0.9^n r_0)."""


@dataclasses.dataclass(frozen=True)
class Course:
    """A learning-rate course: `lr_at(step)` for `step >= start`.

    Attributes:
        shape: one of `SHAPES`.
        lr0: the LR at `start` (after warm-up for "warmup").
        start: the step the course starts at.
        end: the step the budget ends at (the first step not taken).
        steps_per_epoch: steps in an epoch (seq3 decays once per epoch).
        warmup_end: for "warmup", the first step at the full `lr0`.
    """

    shape: str
    lr0: float
    start: int
    end: int
    steps_per_epoch: int
    warmup_end: int = 0

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"Unknown course shape {self.shape!r}; use one of {', '.join(SHAPES)}.")
        if not (math.isfinite(self.lr0) and self.lr0 >= 0):
            raise ValueError(f"A course's LR must be finite and >= 0, got {self.lr0!r}.")
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}.")

    def lr_at(self, step: int) -> float:
        """The LR of training step `step` (0-based, counted from the first fit)."""
        s = int(step) - self.start
        if self.shape == "constant":
            return float(self.lr0)
        if self.shape == "warmup":
            width = max(1, self.warmup_end - self.start)
            return float(self.lr0) * min(1.0, (s + 1) / width)
        span = max(1, self.end - self.start)
        s = min(s, span - 1)  # past the budget: the last step's LR is held
        if self.shape == "cosine":
            return float(self.lr0) * 0.5 * (1.0 + math.cos(math.pi * s / span))
        if self.shape == "linear":
            return float(self.lr0) * (span - s) / span
        n = 1 + s // self.steps_per_epoch
        return float(self.lr0) * SEQ3_FACTOR ** n

    @property
    def code(self) -> int:
        """The shape's index in `SHAPES` (how a course is kept in a model variable)."""
        return SHAPES.index(self.shape)

    def as_vector(self) -> list:
        """`[code, lr0, start, end, steps_per_epoch, warmup_end]`, for a float64 variable."""
        return [float(self.code), float(self.lr0), float(self.start), float(self.end),
                float(self.steps_per_epoch), float(self.warmup_end)]

    @classmethod
    def from_vector(cls, vector) -> "Course":
        """The course `as_vector` wrote."""
        code, lr0, start, end, spe, warm = (float(v) for v in vector)
        return cls(SHAPES[int(code)], lr0, int(start), int(end), max(1, int(spe)), int(warm))


def spacing(candidates: Sequence[float]) -> float:
    """The candidates' geometric spacing: the median ratio of neighbours, sorted (decades: 10)."""
    values = sorted(float(c) for c in candidates)
    if len(values) < 2:
        raise ValueError(f"A spacing needs at least 2 candidates, got {values}.")
    ratios = [b / a for a, b in zip(values, values[1:])]
    return float(np.median(ratios))


def parse_continuation(name: str, toward: int = 1) -> tuple:
    """`"cosine+"` -> ("cosine", +1); `"keep"` -> ("keep", 0); `"keep~"` -> ("keep", toward).

    Raises a `ValueError` naming the valid kinds on an unknown one.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A continuation is a name such as 'keep' or 'cosine+', got {name!r}.")
    level = {"+": 1, "-": -1, "~": int(toward)}.get(name[-1], 0)
    kind = name[:-1] if name[-1] in "+-~" else name
    if kind not in CONTINUATIONS:
        raise ValueError(
            f"Unknown continuation {name!r}: use one of {', '.join(CONTINUATIONS)}, "
            "optionally followed by + or - (one level step up or down) or ~ (toward the "
            "level race's runner-up)."
        )
    return kind, level


def continue_course(course: Course, name: str, step: int, q: float, toward: int = 1) -> Course:
    """The course that branch `name` follows from `step`, forked from `course`.

    Args:
        course: the leader's course.
        name: a continuation (`CONTINUATIONS`, with an optional `+`, `-` or `~`).
        step: the step the branch starts at.
        q: the level step (`sqrt(spacing(candidates))`).
        toward: +1 or -1, the side of the level race's runner-up (for `~`).
            Defaults to +1.
    """
    kind, level = parse_continuation(name, toward)
    scale = q ** level
    if kind == "keep":
        if level == 0:
            return course
        lr0 = course.lr0 * scale
        if course.shape == "warmup" and step >= course.warmup_end:
            return dataclasses.replace(course, shape="constant", lr0=lr0)
        return dataclasses.replace(course, lr0=lr0)
    now = course.lr_at(step) * scale
    if kind == "step":
        return Course("constant", now / q, step, course.end, course.steps_per_epoch)
    return Course(kind, now, step, course.end, course.steps_per_epoch)


def distinct(courses: Sequence[Course], step: int) -> list:
    """Indices of the first of each group of courses that give the same LR on every step left."""
    kept, seen = [], []
    for i, c in enumerate(courses):
        key = _signature(c, step)
        if key not in seen:
            seen.append(key)
            kept.append(i)
    return kept


def _signature(course: Course, step: int) -> tuple:
    steps = range(step, max(step + 1, course.end))
    return tuple(round(course.lr_at(s), 15) for s in steps)


def level_rounds(num_candidates: int) -> list:
    """Epochs of each round of the level race (successive halving): K = 4 -> [1, 2]."""
    alive, rounds = int(num_candidates), []
    while alive > 1:
        rounds.append(race.round_epochs(len(rounds) + 1))
        alive = race.survivors_count(alive)
    return rounds


def course_rounds(epochs: int, num_candidates: int, plan: str = "final") -> list:
    """Epochs of each course round after the level race, cut at the budget.

    Args:
        epochs: the budget E.
        num_candidates: K, which sets the level race's length.
        plan: "final" (one round to the end), "half" (one round over the
            first half of the epochs left, rounded up) or "doubling" (rounds
            of 2^(r-1) epochs continuing the level race's numbering, the
            last one cut at E). Defaults to "final".
    """
    if plan not in ROUND_PLANS:
        raise ValueError(f"Unknown round plan {plan!r}; use one of {', '.join(ROUND_PLANS)}.")
    levels = level_rounds(num_candidates)
    left = int(epochs) - sum(levels)
    if left <= 0:
        return []
    if plan == "final":
        return [left]
    if plan == "half":
        return [math.ceil(left / 2)]
    rounds, r = [], len(levels) + 1
    while left > 0:
        length = min(race.round_epochs(r), left)
        rounds.append(length)
        left -= length
        r += 1
    return rounds


def plan_cost_epochs(epochs: int, num_candidates: int, continuations: int,
                     plan: str = "final") -> int:
    """Branch-epochs of training the whole plan spends (every course round racing in full).

    The level race's `race.race_cost_epochs(K)` (cut at the budget), then
    `continuations` branches over every course round. Divide by `epochs` for
    the cost in single runs.
    """
    total, alive, spent = 0, int(num_candidates), 0
    for length in level_rounds(num_candidates):
        length = min(length, int(epochs) - spent)
        if length <= 0:
            break
        total += alive * length
        spent += length
        alive = race.survivors_count(alive)
    rounds = course_rounds(epochs, num_candidates, plan)
    for length in rounds:
        total += int(continuations) * length
    return total + max(0, int(epochs) - spent - sum(rounds))
