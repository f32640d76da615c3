"""One run of the beyond-the-grid benchmark end to end: the race, then ReduceLROnPlateau."""

import math

import numpy as np

from benchmarks import beyond_grid


def test_race_then_plateau_reduces_the_winners_lr():
    problem = beyond_grid.load_problem("digits_mlp", 0, 0, epochs=7)
    x_tr, y_tr, x_val, y_val, x_te, y_te = problem["data"]
    # Validation labels drawn at random: the validation loss rises as the net fits the
    # training set, so the plateau rule must cut the LR within the run.
    y_val = np.random.default_rng(0).permutation(y_val)
    problem["data"] = (x_tr, y_tr, x_val, y_val, x_te, y_te)
    run = beyond_grid.run_one(problem, "sgd", 0, "race_plateau")
    assert beyond_grid.key("digits_mlp", "sgd", 0, "race_plateau") == "digits_mlp|sgd|0|race_plateau"
    lrs = [e["lr"] for e in run["history"]]
    assert len(lrs) == 7 and len(run["curve"]) == 7
    assert lrs[0] in beyond_grid.DECADES
    # Every LR is a candidate divided by a power of ten, never raised after the race's
    # last epoch, and the run ends below where the race left it.
    raced = [i for i, e in enumerate(run["history"]) if e["race_round"] is not None]
    start = lrs[raced[-1]]
    for lr in lrs[raced[-1]:]:
        exponent = math.log10(start / lr)
        assert abs(exponent - round(exponent)) < 1e-6
    assert all(b <= a for a, b in zip(lrs[raced[-1]:], lrs[raced[-1] + 1:]))
    assert lrs[-1] < start
