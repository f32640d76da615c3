"""Pure rules of the beyond-the-thesis search mode, in plain Python and NumPy.

The thesis's adaptive search (`thesis_rules.select_lr`) judges each candidate LR
by the loss after one raw optimizer step and keeps the minimum. Two biases
follow:

- With momentum, a chosen LR acts about `1 / (1 - beta)` times over the
  following steps; one raw step hides that, so the search grows the LR until
  training diverges. `trial_lr_scale` enlarges a trial step to the
  steady-state step ("effective"); `lr_average` (Keras's SGD) or
  `torch_lr_average` (PyTorch's, `TorchSGD`) and `update_trial_ratio`
  rescale the optimizer's actual update instead ("update", the mode that
  worked in `saved_runs/beyond_thesis`).
- The greedy one-step minimum prefers small LRs (short-horizon bias, Wu et
  al., ICLR 2018). `tolerant_select` prefers the largest LR whose average loss
  is statistically indistinguishable from the best one: within `k` standard
  errors of the paired per-step differences (the "one-standard-error rule");
  `fraction_select` the largest LR with a given share of the best gain;
  `smooth_lr` damps decisions across epochs.

The in-graph parts live in `keras_mcv.models.search.SearchModel` and are tested
against these functions.

Nothing here imports TensorFlow, so every rule is unit-tested exactly.

References: thesis section 3.2 (the rules these options replace); Wu et al.,
Understanding Short-Horizon Bias in Stochastic Meta-Optimization, ICLR 2018;
Breiman et al., Classification and Regression Trees, 1984 (one-standard-error rule).
"""

from __future__ import annotations

import math

import numpy as np

from keras_mcv.rules import thesis as thesis_rules

TRIAL_STEPS = ("raw", "effective", "update")
"""`raw`: a trial is one optimizer step at the candidate LR (the thesis).
`effective`: at the candidate LR times `trial_lr_scale` (see there).
`update`: the actual update, rescaled to the candidate (`update_trial_ratio`)."""

SELECTIONS = ("thesis", "tolerant", "fraction")
"""`thesis`: `thesis_rules.select_lr`. `tolerant`: `tolerant_select`.
`fraction`: `fraction_select`."""

DEFAULT_TOLERANCE = 1.0
"""`k` of the tolerant rule: one standard error (Breiman et al.'s 1-SE rule)."""


def trial_lr_scale(optimizer: str, momentum: float = 0.0) -> float:
    """Factor from a candidate LR to the LR of its trial step ("effective step").

    ```
    SGD (Keras's form), momentum beta:  1 / (1 - beta)  (steady-state step of
                                                         a constant gradient)
    TorchSGD (PyTorch's form):          1   (its step at c multiplies the
                                             whole buffer: once the buffer has
                                             filled, already c's steady state)
    Adam, RMSprop, others:              1   (the first moment is an average,
                                             not a sum: its steady state is g)
    ```
    Derived from the optimizer, never from the data.

    Args:
        optimizer: lowercase class name, e.g. "sgd", "torchsgd", "adam".
        momentum: SGD's momentum; ignored for other optimizers. Defaults to 0.
    """
    if optimizer == "sgd":
        beta = float(momentum)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"SGD momentum must be in [0, 1), got {momentum!r}.")
        return 1.0 / (1.0 - beta)
    return 1.0


def lr_average(previous: float, lr: float, momentum: float) -> float:
    """One step of the LR average that scales SGD's momentum buffer (Keras's form).

    ```
    lr_avg <- momentum * lr_avg + (1 - momentum) * lr       (lr_avg starts at 0)
    ```
    Keras's velocity `m <- momentum * m - lr * g` then equals
    `-lr_avg / (1 - momentum) * g_avg` for the momentum-averaged gradient
    `g_avg`, whatever LRs were used before. For optimizers whose update is
    not a sum of past steps (Adam, RMSprop) use `momentum = 0`: lr_avg = lr.
    PyTorch's form (`TorchSGD`) uses `torch_lr_average` instead.
    """
    return float(momentum) * float(previous) + (1.0 - float(momentum)) * float(lr)


def torch_step_fill(steps: int, momentum: float, dampening: float = 0.0,
                    nesterov: bool = False) -> float:
    """Size of PyTorch's momentum step after `steps` updates, as a share of its steady state.

    ```
    n_1 = 1;  n_s = momentum * n_(s-1) + (1 - dampening)   # the buffer's total gradient weight
    n_inf = (1 - dampening) / (1 - momentum)
    fill  = n_s / n_inf                                    # the step is lr * buf
          = (1 + momentum n_s) / (1 + momentum n_inf)      # nesterov: lr * (g + momentum buf)
    ```
    `n_s = momentum^(s-1) + (1 - dampening) (1 - momentum^(s-1)) / (1 - momentum)`.
    With dampening 0, `fill = 1 - momentum^s` (plain) and tends to 1 as the
    buffer fills; with momentum 0 it is 1.

    Args:
        steps: updates the buffer holds, >= 1 (the step just taken included).
        momentum: TorchSGD's momentum, in [0, 1).
        dampening: TorchSGD's dampening, in [0, 1). Defaults to 0.
        nesterov: TorchSGD's Nesterov flag. Defaults to False.

    References: PyTorch documentation, `torch.optim.SGD` (its algorithm).
    """
    beta, d = float(momentum), float(dampening)
    if not 0.0 <= beta < 1.0 or not 0.0 <= d < 1.0:
        raise ValueError(
            f"momentum and dampening must be in [0, 1) for the step's steady state to "
            f"exist, got momentum={momentum!r}, dampening={dampening!r}."
        )
    if int(steps) < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps!r}.")
    if beta == 0.0:
        return 1.0
    decayed = beta ** (int(steps) - 1)
    n_s = decayed + (1.0 - d) * (1.0 - decayed) / (1.0 - beta)
    n_inf = (1.0 - d) / (1.0 - beta)
    if nesterov:
        return (1.0 + beta * n_s) / (1.0 + beta * n_inf)
    return n_s / n_inf


def torch_lr_average(lr: float, steps: int, momentum: float, dampening: float = 0.0,
                     nesterov: bool = False) -> float:
    """The LR scale of PyTorch's momentum step (TorchSGD), for `update_trial_ratio`.

    ```
    lr_avg = lr * torch_step_fill(steps, momentum, dampening, nesterov)
    ```
    PyTorch's step `-lr * buf` applies the current LR to the whole buffer, so
    it equals `-lr_avg * n_inf * g_avg` (`n_inf = 1 / (1 - momentum)` without
    dampening) for the normalised momentum average `g_avg = buf / n_s`,
    whatever LRs were used before: the LR average is the current LR,
    discounted while the buffer fills. A trial `w0 + c / lr_avg * (w1 - w0)`
    is then `w0 - c * n_inf * g_avg`, the steady-state step of LR `c`. `lr_average`, Keras's counterpart, averages past LRs
    instead, because Keras's velocity keeps them.

    Args:
        lr: the LR of the step just taken.
        steps: updates the buffer holds, >= 1.
        momentum, dampening, nesterov: TorchSGD's.

    References: PyTorch documentation, `torch.optim.SGD` (its algorithm).
    """
    return float(lr) * torch_step_fill(steps, momentum, dampening, nesterov)


def update_trial_ratio(candidate: float, lr_avg: float) -> float:
    """Factor applied to the actual update `w1 - w0` to try `candidate`.

    ```
    trial = w0 + candidate / lr_avg * (w1 - w0)
    ```
    The actual update at the current LR is the steady-state step of `lr_avg`
    along the optimizer's own direction (momentum-averaged gradient, Adam's
    normalised moment); rescaling it tries the steady-state step of
    `candidate`, so momentum's amplification is in every trial without
    stepping the optimizer again. The candidate equal to the current LR (in
    steady state) is the actual step itself.
    """
    if not lr_avg > 0:
        raise ValueError(f"`lr_avg` must be > 0, got {lr_avg!r}.")
    return float(candidate) / float(lr_avg)


def paired_standard_errors(sums, cross_sums, count, best: int) -> np.ndarray:
    """Standard error of `mean(L_k - L_best)` over the trial steps, per candidate.

    `sums[k] = sum_t L_k,t` and `cross_sums[i, j] = sum_t L_i,t * L_j,t` over
    `count` steps. Differences are paired by step, so the batch's difficulty,
    common to all candidates, cancels:

    ```
    d_t = L_k,t - L_best,t
    se  = sqrt(sample_var(d) / n)
    ```
    With fewer than 2 steps the standard error is 0. Non-finite inputs give
    non-finite errors (the caller excludes those candidates).
    """
    s = np.asarray(sums, dtype="float64")
    q = np.asarray(cross_sums, dtype="float64")
    n = float(count)
    if n < 2:
        return np.zeros_like(s)
    b = int(best)
    with np.errstate(invalid="ignore", over="ignore"):
        mean_d = (s - s[b]) / n
        mean_d2 = (np.diag(q) - 2.0 * q[:, b] + q[b, b]) / n
        var = np.maximum(mean_d2 - mean_d**2, 0.0) * n / (n - 1.0)
        return np.sqrt(var / n)


def tolerant_select(candidates, sums, cross_sums, count, tolerance: float = DEFAULT_TOLERANCE) -> float:
    """The largest candidate whose average loss is within `tolerance` SEs of the best.

    ```
    mean_k = sums[k] / n;   best = argmin_k mean_k
    admissible_k = mean_k - mean_best <= tolerance * se_k   (paired, see
                                                             paired_standard_errors)
    lr = max { c_k : admissible_k }
    ```
    Non-finite means never qualify; if none is finite, the smallest candidate.
    `tolerance = 0` is the thesis's Method 1 (the minimum; on an exact tie,
    the largest of the tied candidates).

    Args:
        candidates: the candidate learning rates.
        sums: per-candidate sums of the per-step losses.
        cross_sums: `(K, K)` sums of products of per-step losses.
        count: number of trial steps summed.
        tolerance: `k`, in standard errors. Defaults to 1.
    """
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError(f"`tolerance` must be a finite number >= 0, got {tolerance!r}.")
    c = np.asarray(candidates, dtype="float64")
    n = float(count)
    if n <= 0:
        raise ValueError("`count` must be > 0: no trial step was summed.")
    with np.errstate(invalid="ignore", over="ignore"):
        means = thesis_rules.as_scores(np.asarray(sums, dtype="float64") / n)
    finite = np.isfinite(means)
    if not finite.any():
        return float(c.min())
    best = int(np.argmin(means))
    se = paired_standard_errors(sums, cross_sums, count, best)
    with np.errstate(invalid="ignore"):
        admissible = finite & np.isfinite(se) & (means - means[best] <= tolerance * se)
    admissible[best] = True
    return float(c[admissible].max())


def smooth_lr(current: float, selected: float, smoothing: float = 1.0) -> float:
    """Move the LR a fraction of the way to the selected one, in log space.

    ```
    log lr_next = log lr + smoothing * (log selected - log lr)
    ```
    `smoothing = 1` takes the selection as it is.
    """
    if not 0.0 < smoothing <= 1.0:
        raise ValueError(f"`smoothing` must be in (0, 1], got {smoothing!r}.")
    if smoothing == 1.0:
        return float(selected)
    return float(math.exp(math.log(current) + smoothing * (math.log(selected) - math.log(current))))


DEFAULT_FRACTION = 0.5
"""`rho` of the fraction rule: half of the best candidate's improvement."""


def fraction_select(candidates, avg_losses, avg_pre_loss, fraction: float = DEFAULT_FRACTION) -> float:
    """The largest candidate that achieves `fraction` of the best improvement.

    ```
    gain_k = pre - mean_k;   best = max_k gain_k
    lr = max { c_k : gain_k >= fraction * best }     if best > 0
    lr = argmin_k mean_k                              otherwise (as Method 1)
    ```
    On a quadratic, the one-step gain `a c - b c^2` is best at `c* = a / 2b`;
    `fraction = 1/2` admits up to `c* (1 + sqrt(1/2)) ~ 1.7 c*`, and `fraction
    -> 0` is the thesis's Method 3 (any gain, up to `2 c*`). It resists the
    greedy decay (Wu et al., 2018) by a margin that scales with the gain
    itself, not with a noise estimate.

    Args:
        candidates: the candidate learning rates.
        avg_losses: average loss after a trial step, per candidate.
        avg_pre_loss: average loss before the step.
        fraction: `rho` in [0, 1]. Defaults to 0.5.
    """
    if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction!r}.")
    c = np.asarray(candidates, dtype="float64")
    means = thesis_rules.as_scores(avg_losses)
    if not np.isfinite(means).any():
        return float(c.min())
    pre = float(avg_pre_loss)
    gains = pre - means
    best = float(np.max(gains)) if math.isfinite(pre) else -math.inf
    if not best > 0:
        return float(c[int(np.argmin(means))])
    return float(c[gains >= fraction * best].max())
