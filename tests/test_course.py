"""The course race's pure rules (`keras_mcv.rules.course`), exactly."""

import math

import pytest

from keras_mcv.rules import course as rules
from keras_mcv.rules import race

S = 10  # steps per epoch


def test_course_shapes_give_their_formulas():
    c = rules.Course("constant", 0.1, 0, 100, S)
    assert [c.lr_at(s) for s in (0, 50, 99, 150)] == [0.1] * 4
    w = rules.Course("warmup", 0.1, 0, 100, S, warmup_end=10)
    assert w.lr_at(0) == pytest.approx(0.01) and w.lr_at(4) == pytest.approx(0.05)
    assert w.lr_at(9) == pytest.approx(0.1) and w.lr_at(50) == 0.1
    cos = rules.Course("cosine", 0.2, 20, 100, S)
    assert cos.lr_at(20) == pytest.approx(0.2)
    assert cos.lr_at(60) == pytest.approx(0.1)  # half way: (1 + cos(pi/2)) / 2
    assert cos.lr_at(99) == pytest.approx(0.1 * (1 + math.cos(math.pi * 79 / 80)))
    assert cos.lr_at(500) == cos.lr_at(99)  # past the budget: the last step's LR is held
    lin = rules.Course("linear", 0.2, 20, 100, S)
    assert lin.lr_at(20) == pytest.approx(0.2) and lin.lr_at(60) == pytest.approx(0.1)
    assert lin.lr_at(99) == pytest.approx(0.2 / 80) and lin.lr_at(200) == lin.lr_at(99)
    seq = rules.Course("seq3", 1.0, 5, 100, S)
    assert [seq.lr_at(s) for s in (5, 14, 15, 25)] == pytest.approx([0.9, 0.9, 0.81, 0.729])


def test_course_vector_round_trip_and_bad_courses():
    c = rules.Course("warmup", 0.03, 7, 97, 9, warmup_end=16)
    assert c.as_vector() == [1.0, 0.03, 7.0, 97.0, 9.0, 16.0]
    assert rules.Course.from_vector(c.as_vector()) == c
    with pytest.raises(ValueError, match="Unknown course shape 'exp'"):
        rules.Course("exp", 0.1, 0, 10, S)
    with pytest.raises(ValueError, match="finite and >= 0"):
        rules.Course("constant", -0.1, 0, 10, S)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        rules.Course("constant", 0.1, 0, 10, 0)


def test_spacing_is_the_median_neighbour_ratio():
    assert rules.spacing([1e-4, 1e-1, 1e-2, 1e-3]) == pytest.approx(10.0)
    assert rules.spacing([1.0, 2.0, 8.0]) == pytest.approx(3.0)  # ratios 2 and 4
    with pytest.raises(ValueError, match="at least 2"):
        rules.spacing([0.1])


def test_parse_continuation():
    assert rules.parse_continuation("keep") == ("keep", 0)
    assert rules.parse_continuation("cosine+") == ("cosine", 1)
    assert rules.parse_continuation("step-") == ("step", -1)
    assert rules.parse_continuation("keep~", toward=-1) == ("keep", -1)
    for bad in ("", "exp", "keep++", None):
        with pytest.raises(ValueError):
            rules.parse_continuation(bad)


def test_continuations_start_from_the_leaders_lr_at_the_fork():
    q = math.sqrt(10.0)
    leader = rules.Course("warmup", 0.1, 0, 150, S, warmup_end=10)
    assert rules.continue_course(leader, "keep", 30, q) is leader
    up = rules.continue_course(leader, "keep+", 30, q)
    assert up == rules.Course("constant", 0.1 * q, 0, 150, S, warmup_end=10)
    cos = rules.continue_course(leader, "cosine", 30, q)
    assert cos == rules.Course("cosine", 0.1, 30, 150, S)
    step = rules.continue_course(leader, "step", 30, q)
    assert step.lr_at(30) == pytest.approx(0.1 / q) and step.lr_at(149) == pytest.approx(0.1 / q)
    toward = rules.continue_course(leader, "cosine~", 30, q, toward=-1)
    assert toward.lr_at(30) == pytest.approx(0.1 / q) and toward.shape == "cosine"
    # From a decaying leader, a continuation starts at the LR the leader has reached.
    seq = rules.continue_course(cos, "seq3", 90, q)
    assert seq.lr0 == pytest.approx(cos.lr_at(90)) and seq.lr_at(90) == pytest.approx(0.9 * cos.lr_at(90))


def test_distinct_drops_courses_that_give_the_same_lrs():
    leader = rules.Course("cosine", 0.1, 0, 50, S)
    # "cosine" from a cosine leader starts a new, steeper cosine from the LR reached.
    fresh = rules.continue_course(leader, "cosine", 20, 3.0)
    assert rules.distinct([leader, fresh], 20) == [0, 1]
    again = rules.Course("cosine", 0.1, 0, 50, S)
    assert rules.distinct([leader, again, fresh], 20) == [0, 2]
    const = rules.Course("constant", 0.1, 0, 50, S)
    warm_done = rules.Course("warmup", 0.1, 0, 50, S, warmup_end=10)
    assert rules.distinct([const, warm_done], 10) == [0]


@pytest.mark.parametrize(
    "epochs,k,plan,rounds",
    [(15, 4, "final", [12]), (15, 4, "doubling", [4, 8]), (8, 4, "doubling", [4, 1]),
     (10, 4, "doubling", [4, 3]), (3, 4, "final", []), (2, 4, "final", []), (9, 8, "final", [2]),
     (12, 2, "doubling", [2, 4, 5]), (8, 4, "half", [3]), (15, 4, "half", [6]), (4, 4, "half", [1])],
)
def test_course_rounds_follow_the_level_race(epochs, k, plan, rounds):
    assert rules.course_rounds(epochs, k, plan) == rounds
    assert sum(rules.level_rounds(k)) == race.race_epochs(k)


def test_plan_cost():
    # K = 4 over 15 epochs: 4 + 2 x 2 level branch-epochs, then 2 branches x 12 epochs.
    assert rules.plan_cost_epochs(15, 4, 2) == 8 + 24
    assert rules.plan_cost_epochs(15, 4, 1) == 8 + 12
    assert rules.plan_cost_epochs(8, 4, 2, "doubling") == 8 + 2 * 5
    assert rules.plan_cost_epochs(8, 4, 2, "half") == 8 + 2 * 3 + 2
    # A budget shorter than the level race: the race is cut with it.
    assert rules.plan_cost_epochs(2, 4, 2) == 4 + 2
    with pytest.raises(ValueError, match="round plan"):
        rules.course_rounds(10, 4, "halving")
