"""Random search, coarse to fine: exact values of the ranges, the narrowing rule and the
border warning; Keras Tuner's log-uniform draw; one tiny search end to end on digits."""

import json
import warnings

import keras_tuner
import numpy as np
import pytest

import recipes
from keras_mcv.macro import random_search as rs
from keras_mcv.macro.random_search import SearchRange

LR = SearchRange("learning_rate", 1e-4, 1.0)


# ------------------------------------------------------------------ ranges


def test_value_at_and_position_are_the_log_scale():
    assert LR.value_at(0.0) == pytest.approx(1e-4, rel=1e-12)
    assert LR.value_at(0.25) == pytest.approx(1e-3, rel=1e-12)
    assert LR.value_at(0.5) == pytest.approx(1e-2, rel=1e-12)
    assert LR.value_at(1.0) == pytest.approx(1.0, rel=1e-12)
    assert LR.position(1e-3) == pytest.approx(0.25, abs=1e-12)
    linear = SearchRange("dropout", 0.1, 0.5, "linear")
    assert linear.value_at(0.5) == pytest.approx(0.3) and linear.position(0.2) == pytest.approx(0.25)


def test_value_at_is_keras_tuners_own_draw():
    # RandomSearchOracle draws p ~ U(0, 1) and maps it with Float.prob_to_value.
    for r in (LR, SearchRange("l2", 1e-6, 1e-2), SearchRange("dropout", 0.0, 0.5, "linear")):
        hp = keras_tuner.HyperParameters()
        r.add_to(hp)
        (spec,) = hp.space
        for p in (0.0, 0.1, 0.37, 0.5, 0.99):
            assert r.value_at(p) == pytest.approx(spec.prob_to_value(p), rel=1e-12, abs=1e-15)


def test_oracle_draws_are_log_uniform():
    hp = keras_tuner.HyperParameters()
    LR.add_to(hp)
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("val_loss", "min"), max_trials=2000, seed=3,
        hyperparameters=hp)
    values = np.array([oracle.populate_space(str(i))["values"]["learning_rate"]
                       for i in range(2000)])
    assert values.min() >= 1e-4 and values.max() <= 1.0
    # A quarter of the draws in each decade (binomial sd ~ 1%), not 90% in the top decade.
    counts = np.histogram(np.log10(values), bins=[-4, -3, -2, -1, 0])[0] / len(values)
    np.testing.assert_allclose(counts, 0.25, atol=0.04)


def test_narrowing_rule_exact_values():
    # A quarter of four decades = one decade, centred on the best value (in log10).
    fine = LR.narrowed(1e-2, 0.25)
    assert (fine.low, fine.high) == pytest.approx((10 ** -2.5, 10 ** -1.5), rel=1e-12)
    # Near an end the window keeps its width and shifts back inside the range.
    low_end = LR.narrowed(2e-4, 0.25)
    assert (low_end.low, low_end.high) == pytest.approx((1e-4, 1e-3), rel=1e-12)
    high_end = LR.narrowed(0.9, 0.25)
    assert (high_end.low, high_end.high) == pytest.approx((0.1, 1.0), rel=1e-12)
    half = LR.narrowed(1e-2, 0.5)
    assert (half.low, half.high) == pytest.approx((1e-3, 1e-1), rel=1e-12)
    whole = LR.narrowed(3e-3, 1.0)
    assert (whole.low, whole.high) == (1e-4, 1.0)
    linear = SearchRange("dropout", 0.0, 0.5, "linear").narrowed(0.25, 0.2)
    assert (linear.low, linear.high) == pytest.approx((0.2, 0.3)) and linear.scale == "linear"


def test_border_rule_and_warnings():
    assert LR.border(1e-4, 0.1) == "low"
    assert LR.border(10 ** -3.6, 0.1) == "low"      # position 0.1: on the border
    assert LR.border(10 ** -3.5, 0.1) is None       # position 0.125
    assert LR.border(10 ** -0.4, 0.1) == "high"     # position 0.9
    assert LR.border(1e-2, 0.1) is None
    texts = rs.border_warnings(
        [LR, SearchRange("l2", 1e-6, 1e-2)], {"learning_rate": 0.9, "l2": 1e-4}, 0.1, "coarse")
    assert len(texts) == 1
    assert "best learning_rate = 0.9 lies on the high border of its range [0.0001, 1]" in texts[0]
    assert "above" in texts[0]
    low = rs.border_warnings([LR], {"learning_rate": 1.1e-4}, 0.1, "fine")[0]
    assert low.startswith("fine stage") and "below" in low


def test_parse_range_and_bad_ranges():
    assert rs.parse_range("l2", "1e-5,1e-3") == SearchRange("l2", 1e-5, 1e-3, "log")
    assert rs.parse_range("dropout", "0,0.5,linear") == SearchRange("dropout", 0.0, 0.5, "linear")
    with pytest.raises(ValueError, match="LOW,HIGH"):
        rs.parse_range("learning_rate", "0.1")
    with pytest.raises(ValueError, match="low < high"):
        SearchRange("learning_rate", 1.0, 0.1)
    with pytest.raises(ValueError, match="low > 0"):
        SearchRange("l2", 0.0, 1e-2)
    with pytest.raises(ValueError, match="below 1"):
        SearchRange("dropout", 0.1, 1.0)
    with pytest.raises(ValueError, match="Unknown hyperparameter 'momentum'"):
        SearchRange("momentum", 0.5, 0.99)
    with pytest.raises(ValueError, match="twice"):
        rs.check_ranges([LR, LR])


@pytest.mark.parametrize("kwargs, message", [
    ({"trials": 0}, "`trials` must be an integer >= 1"),
    ({"coarse_epochs": 1.5}, "`coarse_epochs` must be an integer"),
    ({"shrink": 0.0}, r"`shrink` must be a number in \(0, 1\]"),
    ({"shrink": 1.5}, "`shrink`"),
    ({"border": 0.5}, "below 0.5"),
    ({"ensemble": 5, "trials": 4}, "exceeds the 4 fine trials"),
    ({"optimizer": "rmsprop"}, "Unknown optimizer 'rmsprop'"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rs.check_settings(**kwargs)


def test_builder_without_knobs_is_refused_before_training():
    def no_knobs(input_shape, num_classes):
        raise AssertionError("never reached: the probe passes l2/dropout")

    data = recipes.get_config("digits_small_cnn").load_data(None, 100)
    with pytest.raises(ValueError, match="does not take l2, dropout"):
        rs.random_search(no_knobs, data, trials=1, epochs=1, coarse_epochs=1, ensemble=0,
                         project_dir="unused")


# ------------------------------------------------------------------ end to end


def test_tiny_search_on_digits(tmp_path):
    config = recipes.get_config("digits_small_cnn")
    data = config.load_data(None, 300)
    kwargs = dict(trials=3, fine_trials=3, coarse_epochs=1, epochs=2, batch_size=64,
                  ensemble=2, shrink=0.25, project_dir=tmp_path / "tuner", seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = rs.random_search(config.build_model, data, **kwargs)
    coarse, fine = result.stages
    assert [len(coarse.rows), len(fine.rows)] == [3, 3]
    for stage in (coarse, fine):
        for row in stage.rows:
            for r in stage.ranges:
                assert r.low <= row.values[r.name] <= r.high
        losses = [r.val_loss for r in stage.rows if r.val_loss is not None]
        assert losses == sorted(losses)  # best first
    # The fine ranges are the coarse ranges narrowed around the coarse best, exactly.
    for coarse_range, fine_range in zip(coarse.ranges, fine.ranges):
        assert fine_range == coarse_range.narrowed(coarse.best.values[coarse_range.name], 0.25)
    assert all(r.test_accuracy is None for r in coarse.rows)  # coarse trials are not tested
    assert [r.best_epoch <= 2 for r in fine.rows] == [True] * 3
    # The border warnings are the pure rule's, on both stages, and issued as warnings.
    expected = (rs.border_warnings(coarse.ranges, coarse.best.values, 0.1, "coarse")
                + rs.border_warnings(fine.ranges, fine.best.values, 0.1, "fine"))
    assert result.warnings == expected
    assert [str(w.message) for w in caught if "border" in str(w.message)] == expected
    # k = 1 is the best fine trial itself; k = 2 averages the two best trials' predictions.
    one, two = result.ensembles
    assert one.accuracy == pytest.approx(fine.best.test_accuracy) and one.gain == 0.0
    assert two.names == (fine.rows[0].trial_id, fine.rows[1].trial_id)
    assert two.single_accuracy == pytest.approx(fine.best.test_accuracy)
    path = result.save(tmp_path / "out")
    saved = json.load(open(path))
    assert [s["name"] for s in saved["stages"]] == ["coarse", "fine"]
    assert saved["ensembles"][1]["k"] == 2
    assert "Fine stage: 3 trials" in open(tmp_path / "out" / rs.TABLE_NAME).read()
    # Run again: every trial is reloaded, none retrained; other settings are refused.
    with pytest.warns(UserWarning) if expected else warnings.catch_warnings():
        again = rs.random_search(config.build_model, data, **kwargs)
    assert [r.values for r in again.stages[1].rows] == [r.values for r in fine.rows]
    assert again.wall_time_s < result.wall_time_s
    with pytest.raises(ValueError, match="other settings"):
        rs.random_search(config.build_model, data, **{**kwargs, "coarse_epochs": 2})
