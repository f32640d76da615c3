"""The method registry: one table that every part of the package reads."""

import subprocess
import sys

import pytest

from keras_mcv import methods


def test_registry_names_and_order():
    assert methods.names() == (
        "baseline", "discard", "voting", "search1", "search2", "search3", "tuned", "race", "course",
        "adaptive-nesterov", "decay", "clr",
    )
    assert [methods.order(n) for n in methods.names()] == list(range(len(methods.names())))
    assert methods.order("not_registered") == len(methods.names())


def test_unknown_method_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'search1'"):
        methods.get("serch1")


def test_batch_multiples():
    splitting = {"discard", "voting", "search1", "search2", "search3", "tuned"}
    for name in methods.names():
        assert methods.get(name).fit_batch_size(64) == (128 if name in splitting else 64)


def test_options_are_checked_once_with_the_flag_named():
    with pytest.raises(ValueError, match="--alpha does not apply to method 'search1'.*search2"):
        methods.get("search1").resolve_options(alpha=0.5)
    with pytest.raises(ValueError, match="--trial-every does not apply to method 'race'"):
        methods.get("race").resolve_options(trial_every=2)
    with pytest.raises(ValueError, match="--trial-batch-size does not apply to method 'baseline'"):
        methods.get("baseline").resolve_options(trial_batch_size=8)
    with pytest.raises(ValueError, match="alpha must be in"):
        methods.get("search2").resolve_options(alpha=1.5)
    with pytest.raises(ValueError, match="--trial-every must be an integer >= 1"):
        methods.get("search1").resolve_options(trial_every=0)
    with pytest.raises(ValueError, match="candidates"):
        methods.get("race").resolve_options(candidates=[0.1, -1.0])


def test_defaults_fill_what_the_user_leaves_out():
    assert methods.get("search2").resolve_options() == {"alpha": 0.5}
    assert methods.get("search2").resolve_options(alpha=0.3) == {"alpha": 0.3}
    assert methods.get("tuned").resolve_options() == {"trial_every": 4}
    assert methods.get("race").resolve_options(candidates=(0.1, 0.01)) == {"candidates": (0.1, 0.01)}


def test_run_names():
    assert methods.get("search2").run_name({"alpha": 0.5}) == "search2_alpha0.5"
    assert methods.get("baseline").run_name({}, optimizer="adam", learning_rate=1e-3) == (
        "baseline_adam_lr0.001"
    )
    assert methods.get("voting").run_name({"trial_batch_size": 8}) == "voting_tbs8"
    # PyTorch's momentum form (the thesis's, the default) keeps the plain name.
    assert methods.get("search1").run_name({}, momentum_form="torch") == "search1"
    assert methods.get("search2").run_name({"alpha": 0.5}, momentum_form="keras") == (
        "search2_alpha0.5_kerasmom"
    )


def test_register_refuses_duplicates_and_unknown_options():
    with pytest.raises(ValueError, match="registered already"):
        methods.register(methods.get("race"))
    bogus = methods.Method("bogus", "B", "b", lambda net, o: net, options=("warp",))
    with pytest.raises(ValueError, match="unknown options"):
        methods.register(bogus)
    assert "bogus" not in methods.names()


def test_importing_the_registry_loads_no_tensorflow():
    code = "import sys, keras_mcv.methods; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
