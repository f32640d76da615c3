"""The beyond-the-thesis search options of `SearchModel`: exact rules and one end-to-end check."""

import math

import numpy as np
import pytest

from keras_mcv.rules import search_options as selection


def _sums(losses):
    """`(sums, cross_sums, count)` of per-step candidate losses, shape (steps, K)."""
    a = np.asarray(losses, dtype="float64")
    return a.sum(axis=0), a.T @ a, a.shape[0]


def test_trial_lr_scale():
    assert selection.trial_lr_scale("sgd", 0.9) == pytest.approx(10.0)
    assert selection.trial_lr_scale("sgd", 0.0) == 1.0
    assert selection.trial_lr_scale("sgd", 0.5) == 2.0
    assert selection.trial_lr_scale("adam", 0.0) == 1.0
    assert selection.trial_lr_scale("rmsprop") == 1.0
    # PyTorch's form: the step at c already multiplies the whole buffer.
    assert selection.trial_lr_scale("torchsgd", 0.9) == 1.0
    with pytest.raises(ValueError, match="momentum"):
        selection.trial_lr_scale("sgd", 1.0)


def test_paired_standard_errors_by_hand():
    # Candidate 0: differences to candidate 1 (the best) are 1, 2, 3 ->
    # mean 2, sample variance 1, se = sqrt(1 / 3).
    losses = [[2.0, 1.0], [4.0, 2.0], [6.0, 3.0]]
    sums, cross, n = _sums(losses)
    se = selection.paired_standard_errors(sums, cross, n, best=1)
    assert se[1] == 0.0
    assert se[0] == pytest.approx(math.sqrt(1.0 / 3.0))
    # The batch difficulty (common to both) cancels: constant difference -> se 0.
    same = [[1.5, 1.0], [3.5, 3.0], [0.5, 0.0]]
    sums, cross, n = _sums(same)
    assert selection.paired_standard_errors(sums, cross, n, best=1)[0] == pytest.approx(0.0, abs=1e-12)
    assert np.all(selection.paired_standard_errors(sums, cross, 1, best=1) == 0.0)


def test_tolerant_select_prefers_largest_within_band():
    candidates = [0.5, 0.2, 0.1, 0.05]
    # Per step: 0.5 is clearly worse; 0.2 is 0.01 worse than the best (0.1)
    # on average with a paired se of ~0.0129 -> within 1 SE, not within 0.5 SE.
    losses = [
        [2.0, 1.00, 1.00, 1.10],
        [2.1, 1.04, 1.00, 1.10],
        [2.2, 0.98, 1.00, 1.10],
        [2.0, 1.02, 1.00, 1.10],
    ]
    sums, cross, n = _sums(losses)
    se = selection.paired_standard_errors(sums, cross, n, best=2)
    d = np.mean(np.asarray(losses)[:, 1] - 1.0)
    assert d == pytest.approx(0.01)
    assert d <= se[1] and d > 0.5 * se[1]
    assert selection.tolerant_select(candidates, sums, cross, n, tolerance=1.0) == 0.2
    assert selection.tolerant_select(candidates, sums, cross, n, tolerance=0.5) == 0.1
    # tolerance 0 is the thesis's minimum.
    assert selection.tolerant_select(candidates, sums, cross, n, tolerance=0.0) == 0.1


def test_tolerant_select_non_finite():
    candidates = [1.0, 0.1, 0.01]
    losses = [[np.inf, 1.0, 1.2], [np.nan, 1.1, 1.3]]
    a = np.asarray(losses)
    sums = np.array([np.inf, a[:, 1].sum(), a[:, 2].sum()])
    cross = np.where(np.isfinite(a.T @ a), a.T @ a, np.inf)
    # A non-finite candidate never qualifies, even with a huge tolerance.
    assert selection.tolerant_select(candidates, sums, cross, 2, tolerance=1e9) == 0.1
    all_bad = np.full(3, np.inf)
    assert selection.tolerant_select(candidates, all_bad, np.full((3, 3), np.inf), 2) == 0.01
    with pytest.raises(ValueError, match="tolerance"):
        selection.tolerant_select(candidates, sums, cross, 2, tolerance=-1)
    with pytest.raises(ValueError, match="count"):
        selection.tolerant_select(candidates, sums, cross, 0)


def test_smooth_lr():
    assert selection.smooth_lr(0.01, 0.1, 1.0) == 0.1
    assert selection.smooth_lr(0.01, 0.1, 0.5) == pytest.approx(math.sqrt(0.01 * 0.1))
    assert selection.smooth_lr(0.01, 0.0001, 0.5) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="smoothing"):
        selection.smooth_lr(0.01, 0.1, 0.0)


def test_lr_average_and_update_ratio():
    # SGD's buffer after two steps at lr 0.1 then 0.3 with a constant g = 1:
    # m = -(0.9 * 0.1 + 0.3) = -0.39 = -lr_avg / (1 - 0.9) with lr_avg below.
    avg = selection.lr_average(0.0, 0.1, 0.9)
    avg = selection.lr_average(avg, 0.3, 0.9)
    assert avg / (1 - 0.9) == pytest.approx(0.39)
    assert selection.lr_average(0.5, 0.01, 0.0) == 0.01
    assert selection.update_trial_ratio(0.2, avg) == pytest.approx(0.2 / 0.039)
    with pytest.raises(ValueError, match="lr_avg"):
        selection.update_trial_ratio(0.1, 0.0)


def test_torch_step_fill_by_hand():
    # Without dampening the buffer's weight after s steps is 1 + 0.9 + ... + 0.9^(s-1),
    # a share 1 - 0.9^s of its steady state 10.
    assert selection.torch_step_fill(1, 0.9) == pytest.approx(0.1)
    assert selection.torch_step_fill(2, 0.9) == pytest.approx(0.19)
    # Dampening 0.5: n_1 = 1 (the first step is undamped), n_2 = 0.9 + 0.5; n_inf = 5.
    assert selection.torch_step_fill(1, 0.9, 0.5) == pytest.approx(0.2)
    assert selection.torch_step_fill(2, 0.9, 0.5) == pytest.approx(1.4 / 5)
    # Nesterov steps along g + 0.9 buf: weight 1 + 0.9 n_s, steady state 1 + 0.9 * 10.
    assert selection.torch_step_fill(1, 0.9, nesterov=True) == pytest.approx(1.9 / 10)
    assert selection.torch_step_fill(7, 0.0) == 1.0
    assert selection.torch_lr_average(0.3, 2, 0.9) == pytest.approx(0.3 * 0.19)


def test_torch_step_fill_is_the_buffers_recursion():
    for beta, d, nesterov in [(0.9, 0.0, False), (0.5, 0.3, False), (0.99, 0.0, True)]:
        n, n_inf = 1.0, (1 - d) / (1 - beta)
        for steps in range(1, 60):
            want = (1 + beta * n) / (1 + beta * n_inf) if nesterov else n / n_inf
            assert selection.torch_step_fill(steps, beta, d, nesterov) == pytest.approx(want, rel=1e-12)
            n = beta * n + (1 - d)


@pytest.mark.parametrize("kwargs", [dict(momentum=1.0), dict(momentum=0.9, dampening=1.0),
                                    dict(steps=0, momentum=0.9)])
def test_torch_step_fill_refuses_what_has_no_steady_state(kwargs):
    with pytest.raises(ValueError, match="steady state|steps"):
        selection.torch_step_fill(kwargs.pop("steps", 1), **kwargs)


def test_fraction_select():
    candidates = [0.5, 0.2, 0.1, 0.05]
    # gains with pre = 2.0: 0.2, 0.9, 1.0, 0.6 -> best 1.0; half: >= 0.5.
    losses = [1.8, 1.1, 1.0, 1.4]
    assert selection.fraction_select(candidates, losses, 2.0, 0.5) == 0.2
    assert selection.fraction_select(candidates, losses, 2.0, 0.95) == 0.1
    # fraction 0 -> any gain: the thesis's Method 3.
    assert selection.fraction_select(candidates, losses, 2.0, 0.0) == 0.5
    # No gain: the minimum, as Method 1.
    assert selection.fraction_select(candidates, losses, 0.5, 0.5) == 0.1
    assert selection.fraction_select(candidates, [np.nan] * 4, 2.0) == 0.05
    with pytest.raises(ValueError, match="fraction"):
        selection.fraction_select(candidates, losses, 2.0, 1.5)


# ------------------------------------------------------------------ in the model

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_mcv  # noqa: E402

N, D, C = 64, 5, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(D, C)) + rng.normal(scale=0.5, size=(N, C)), axis=1)
    return x, y.astype("int64")


def _softmax_model(optimizer="sgd", seed=1, **kwargs):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D,))
    outputs = keras.layers.Dense(C, activation="softmax")(inputs)
    model = keras_mcv.SearchModel(inputs, outputs, **kwargs)
    if optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    elif optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate=0.001)
    else:
        opt = optimizer
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    return model


def _np_loss(w, b, x, y):
    z = x @ w + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


@pytest.mark.parametrize("optimizer,horizon", [("sgd", 1), ("adam", 1), ("sgd", 3)])
def test_update_trials_match_reference(optimizer, horizon):
    """Two steps (one per epoch): every candidate's loss is the loss at
    w0 + H * c / lr_avg * (w1 - w0), with lr_avg the momentum-EMA of the LR."""
    x, y = _data()
    model = _softmax_model(optimizer, trial_step="update", candidates=[0.3, 0.1, 0.03], trial_horizon=horizon)
    capture = []

    class Cap(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            capture.append([v.numpy().copy() for v in model.trainable_variables])

    model.fit(x, y, batch_size=N, epochs=2, shuffle=False, verbose=0, callbacks=[Cap()])
    final = [v.numpy() for v in model.trainable_variables]
    beta = 0.9 if optimizer == "sgd" else 0.0
    lr_avg, val = 0.0, (x[N // 2:], y[N // 2:])
    for step, entry in enumerate(model.mcv_history):
        w0 = capture[step]
        w1 = capture[step + 1] if step + 1 < len(capture) else final
        lr_avg = beta * lr_avg + (1 - beta) * entry["lr"]
        expected = [
            _np_loss(*(a + horizon * c / lr_avg * (b_ - a) for a, b_ in zip(w0, w1)), *val)
            for c in entry["candidates"]
        ]
        np.testing.assert_allclose(entry["candidate_val_losses"], expected, rtol=2e-4)
        assert entry["pre_loss"] == pytest.approx(_np_loss(*w0, *val), rel=1e-5)
    assert model.ops_counts()["step"] == 2  # the actual step only


@pytest.mark.parametrize("nesterov,dampening", [(False, 0.0), (True, 0.0), (False, 0.5)])
def test_update_trials_torch_form_match_reference(nesterov, dampening):
    """TorchSGD: each trial is the steady-state step of its candidate along the
    buffer's normalised direction, computed here from PyTorch's rule in NumPy
    (no rescaled `w1 - w0`), over two epochs of 4 steps with the LR changing
    between them; the next LR follows Method 1 on these losses."""
    from keras_mcv.rules import thesis as thesis_rules
    from tests import reference

    beta = 0.9
    x, y = _data()
    candidates = [0.3, 0.1, 0.03]
    opt = keras_mcv.TorchSGD(0.01, momentum=beta, nesterov=nesterov, dampening=dampening)
    model = _softmax_model(opt, trial_step="update", candidates=candidates)
    params = [v.numpy().astype("float64") for v in model.trainable_variables]
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    torch = reference.TorchSGD(params, momentum=beta, dampening=dampening, nesterov=nesterov)
    n, n_inf = 0.0, (1 - dampening) / (1 - beta)
    weight = (lambda n: 1 + beta * n) if nesterov else (lambda n: n)
    lr = min(candidates)
    for entry in model.mcv_history:
        assert entry["candidates"] == pytest.approx(candidates, rel=1e-12)
        sums, pre = np.zeros(len(candidates)), 0.0
        for i in range(0, N, 16):
            (x1, y1), (x2, y2) = reference.split(x[i:i + 16].astype("float64"), y[i:i + 16])
            pre += reference.loss_fn(params, x2, y2, "ce")
            g = reference.grad_fn(params, x1, y1, "ce")
            n = 1.0 if torch.iterations == 0 else beta * n + (1 - dampening)
            new = torch.apply(params, g, lr)
            direction = [g_ + beta * b if nesterov else b for g_, b in zip(g, torch.slots[0])]
            for k, c in enumerate(candidates):
                trial = [p - c * weight(n_inf) * d / weight(n) for p, d in zip(params, direction)]
                sums[k] += reference.loss_fn(trial, x2, y2, "ce")
            params = new
        np.testing.assert_allclose(entry["candidate_val_losses"], sums / 4, rtol=2e-5)
        assert entry["lr"] == pytest.approx(lr, rel=1e-7)
        lr = thesis_rules.select_lr(1, candidates, sums / 4, sums / 4, pre / 4)
        candidates = list(thesis_rules.candidate_list(lr))
    assert model.mcv_history[0]["next_lr"] != model.mcv_history[0]["lr"], "the LR must change"
    for a, b in zip(model.trainable_variables, params):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-6)


def test_update_trials_agree_across_forms_at_a_constant_lr():
    """In the first epoch (one LR) both momentum forms take the same steps and
    both rescale them to the same steady state: the same trial losses."""
    x, y = _data()
    runs = []
    for opt in (keras.optimizers.SGD(0.01, momentum=0.9), keras_mcv.TorchSGD(0.01, momentum=0.9)):
        model = _softmax_model(opt, trial_step="update", candidates=[0.3, 0.1, 0.03])
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        runs.append(model.mcv_history[0]["candidate_val_losses"])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)


def test_torch_step_fill_in_graph_matches_the_rule():
    from keras_mcv.models.search import torch_step_fill

    for steps in (1, 2, 5, 40):
        for beta, d, nesterov in [(0.9, 0.0, False), (0.5, 0.3, False), (0.9, 0.0, True), (0.0, 0.0, False)]:
            got = float(torch_step_fill(tf.constant(steps, tf.int64), beta, d, nesterov))
            assert got == pytest.approx(selection.torch_step_fill(steps, beta, d, nesterov), rel=1e-12)


def test_effective_trials_are_raw_trials_for_torch_sgd():
    x, y = _data()
    losses = []
    for step in ("effective", "raw"):
        model = _softmax_model(keras_mcv.TorchSGD(0.01, momentum=0.9), trial_step=step,
                               candidates=[0.03, 0.01, 0.003])
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        losses.append(model.mcv_history[0]["candidate_val_losses"])
    np.testing.assert_array_equal(losses[0], losses[1])


@pytest.mark.parametrize("trial_step, optimizer", [
    ("update", lambda: keras_mcv.TorchSGD(0.01, momentum=1.0)),
    ("update", lambda: keras_mcv.TorchSGD(0.01, momentum=0.9, dampening=1.0)),
    ("update", lambda: keras.optimizers.SGD(0.01, momentum=1.0)),
    ("effective", lambda: keras.optimizers.SGD(0.01, momentum=1.0)),
])
def test_scaled_trials_refuse_a_momentum_without_steady_state(trial_step, optimizer):
    with pytest.raises(ValueError, match="steady state"):
        _softmax_model(optimizer(), trial_step=trial_step)


def test_effective_trials_are_raw_trials_at_scaled_lrs():
    x, y = _data()
    eff = _softmax_model(trial_step="effective", candidates=[0.03, 0.01, 0.003])
    raw = _softmax_model(trial_step="raw", candidates=[0.3, 0.1, 0.03, 0.003])
    # Same first-epoch actual LR (the minimum): 0.003 for both.
    eff.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    raw.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        eff.mcv_history[0]["candidate_val_losses"],
        raw.mcv_history[0]["candidate_val_losses"][:3], rtol=1e-5,
    )


def test_tolerant_cross_sums_and_selection():
    x, y = _data()
    model = _softmax_model(selection="tolerant", candidates=[1.0, 0.3, 0.1, 0.03])
    seen = []

    class Cap(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((model.mcv_val_sum.numpy()[:4].copy(), model.mcv_cross_sum.numpy()[:4, :4].copy()))

    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[Cap()])
    sums = [s for s, _ in seen]
    per_step = np.diff(np.vstack([np.zeros(4)] + sums), axis=0)
    np.testing.assert_allclose(seen[-1][1], per_step.T @ per_step, rtol=1e-9)
    entry = model.mcv_history[0]
    expected = selection.tolerant_select(entry["candidates"], sums[-1], seen[-1][1], len(per_step))
    assert entry["next_lr"] == expected
    assert len(entry["candidate_standard_errors"]) == 4


def test_smoothing_from_the_second_decision():
    x, y = _data()
    model = _softmax_model(smoothing=0.5)
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    h = model.mcv_history
    assert h[0]["next_lr"] in h[0]["candidates"]  # first decision: not smoothed
    for e in h[1:]:
        assert e["next_lr"] == pytest.approx(math.sqrt(e["lr"] * e["selected_lr"]))


def test_options_round_trip(tmp_path):
    x, y = _data()
    opts = dict(trial_step="update", selection="tolerant", tolerance=2.0, smoothing=0.5)
    model = _softmax_model(**opts)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for k, v in opts.items():
        assert getattr(loaded, k) == v
    assert loaded.get_config()["fraction"] == 0.5
    np.testing.assert_array_equal(loaded.mcv_lr_avg.numpy(), model.mcv_lr_avg.numpy())
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # The thesis's defaults add no state variable.
    thesis = _softmax_model()
    assert not hasattr(thesis, "mcv_cross_sum") and not hasattr(thesis, "mcv_lr_avg")
    assert thesis.get_config()["trial_step"] == "raw"


@pytest.mark.parametrize("kwargs, match", [
    (dict(trial_step="big"), "trial_step"),
    (dict(trial_horizon=0), "trial_horizon"),
    (dict(trial_step="update", trial_horizon=2.5), "trial_horizon"),
    (dict(selection="best"), "selection"),
    (dict(selection="tolerant", method=3), "method=1"),
    (dict(tolerance=-1.0), "tolerance"),
    (dict(fraction=2.0), "fraction"),
    (dict(smoothing=0.0), "smoothing"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _softmax_model(**kwargs)


def test_digits_mlp_sgd_momentum_does_not_diverge():
    """The thesis's Method 1 grows the LR without bound with SGD
    momentum 0.9 on a digits MLP; update trials keep it in a sane range."""
    from keras_mcv import data

    d = data.normalize(data.load_digits())
    results = {}
    for mode in ("raw", "update"):
        keras.utils.set_random_seed(0)
        inputs = keras.Input(d.input_shape)
        h = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(inputs))
        outputs = keras.layers.Dense(d.num_classes, activation="softmax")(h)
        model = keras_mcv.SearchModel(inputs, outputs, trial_step=mode)
        model.compile(optimizer=keras.optimizers.SGD(momentum=0.9),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(d.x_train, d.y_train, batch_size=128, epochs=8, verbose=0)
        acc = model.evaluate(d.x_test, d.y_test, verbose=0, return_dict=True)["accuracy"]
        results[mode] = ([e["next_lr"] for e in model.mcv_history], acc)
    raw_lrs, raw_acc = results["raw"]
    upd_lrs, upd_acc = results["update"]
    # Thesis: the LR climbs every epoch after the first, past 0.4.
    assert all(b >= a for a, b in zip(raw_lrs[:6], raw_lrs[1:6]))
    assert max(raw_lrs) > 0.4
    assert max(upd_lrs) < 0.4
    assert upd_acc > 0.9 and upd_acc > raw_acc + 0.05


@pytest.mark.parametrize("trial_step", ["raw", "update"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_train_validation_half_steps_like_plain_keras(trial_step, optimizer):
    """Within an epoch (constant LR), training on both halves of batches of 2m
    is plain Keras on batches of m: the same steps in the same order. 65
    examples: the last batch has one example and no validation half."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(65, D)).astype("float32")
    y = rng.integers(0, C, size=65)
    model = _softmax_model(optimizer, trial_step=trial_step, train_validation_half=True,
                           candidates=[0.1, 0.01])
    keras.utils.set_random_seed(1)
    inputs = keras.Input((D,))
    plain = keras.Model(inputs, keras.layers.Dense(C, activation="softmax")(inputs))
    plain.set_weights([v.numpy() for v in model.trainable_variables])
    opt = (keras.optimizers.SGD(learning_rate=0.01, momentum=0.9) if optimizer == "sgd"
           else keras.optimizers.Adam(learning_rate=0.01))
    plain.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.trainable_variables, plain.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert int(model.optimizer.iterations.numpy()) == 9
    counts = model.ops_counts()
    # 5 trial steps (the last one without a validation half) + 4 second steps;
    # raw trials step the optimizer once per candidate (2 here).
    assert counts["backward"] == 9
    assert counts["step"] == (19 if trial_step == "raw" else 9)
