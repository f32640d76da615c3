"""`CourseRaceModel` against the NumPy reference, step by step, and its contracts."""

import keras
import numpy as np
import pytest

from keras_mcv.models import course_race
from keras_mcv.models import race as race_model
from tests import reference
from tests.test_models import BATCH, assert_close, build, make_data, ref_setup
from tests.test_race_model import CANDIDATES, Capture

CASES = {
    "keep_cosine": dict(courses=("keep", "cosine")),
    "warmup_four_doubling": dict(level_shape="warmup", courses=("keep", "cosine", "step", "seq3"),
                                 plan="doubling"),
    "cosine_levels": dict(level_shape="cosine", courses=("keep~", "cosine~")),
    "half": dict(courses=("cosine", "cosine-", "cosine+"), plan="half"),
}


def course_and_reference(optimizer, epochs, options, seed=3):
    x, y = make_data(seed=seed)
    candidates = CANDIDATES[optimizer]
    model = build(course_race.CourseRaceModel, optimizer=optimizer, candidates=candidates, **options)
    params, opt, batches = ref_setup(model, x, y, "ce", optimizer)
    cap = Capture()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[cap])
    events = list(reference.course_race(params, opt, [batches] * epochs, candidates, "ce", **options))
    return model, cap, events


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("case,epochs", [("keep_cosine", 5), ("warmup_four_doubling", 8),
                                         ("cosine_levels", 6), ("half", 7)])
def test_course_race_matches_reference(optimizer, case, epochs):
    model, cap, events = course_and_reference(optimizer, epochs, CASES[case])
    ref_steps = [e[1] for e in events if e[0] == "step"]
    ref_epochs = [e[1] for e in events if e[0] == "epoch"]
    assert len(cap.steps) == len(ref_steps) == 10 * epochs
    for step, (got, want) in enumerate(zip(cap.steps, ref_steps)):
        if step % 10 == 9:
            continue  # an epoch's last step: rounds may end and fork (checked below)
        assert len(got) == len(want), f"number of branches differs at step {step}"
        for j, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"branch {j} weights", step)
    history = model.mcv_history
    assert len(history) == len(ref_epochs) == epochs
    for e, (g, r, w) in enumerate(zip(history, ref_epochs, cap.epochs)):
        assert g["lr"] == pytest.approx(r["lr"], rel=1e-9), f"epoch {e + 1}"
        assert_close(w, r["params"], "the model's weights (the leader) at epoch end", e)
        assert g["courses"] == r["courses"], f"epoch {e + 1}"
        if r["candidates"] is not None:
            assert g["candidates"] == pytest.approx(r["candidates"], rel=1e-9)
            np.testing.assert_allclose(g["candidate_losses"], r["candidate_losses"], rtol=1e-5)
        assert (g["survivors"] is None) == (r["survivors"] is None), f"epoch {e + 1}"
        if r["survivors"] is not None:
            assert g["survivors"] == pytest.approx(r["survivors"], rel=1e-9)
    assert model.mcv_race_state.numpy() == race_model.FINISHED
    # Some course round raced more than one branch, and the LR changed within it.
    raced = [h for h in history if h["courses"] and h["courses"][0] in ("keep", "keep~", "cosine")]
    assert raced and len(raced[0]["courses"]) > 1
