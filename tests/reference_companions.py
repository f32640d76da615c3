"""NumPy references of minibatch persistency and adaptive Nesterov on a one-layer model.

Written from the pseudo-code of "Improved Training Methods for Neural Networks"
(Algorithm 4; Algorithm 5 with the clips of section 3.4), with no TensorFlow,
on the model of `tests.reference`: `logits = x @ W + b` with softmax
cross-entropy ("ce") or mean squared error ("mse"). `l2` adds an L2 penalty
`l2 * sum(W**2)` on the kernel, as `keras.regularizers.L2(l2)` does.
"""

from __future__ import annotations

import numpy as np

from tests.reference import grad_fn, loss_fn


def regularized_loss(params, x, y, kind, l2=0.0):
    return loss_fn(params, x, y, kind) + l2 * np.sum(params[0] ** 2)


def regularized_grad(params, x, y, kind, l2=0.0):
    g = grad_fn(params, x, y, kind)
    g[0] = g[0] + 2.0 * l2 * params[0]
    return g


def adaptive_nesterov(params, batches, kind, momentum=0.9, gamma=1.0,
                      grad_norm_clip=(1e-4, 1e10), step_size_clip=(1e-3, 0.1), l2=0.0):
    """Algorithm 5 with the clips. Yields a dict per step.

    Keys: params (w after the step), velocity (v), eta, loss (at the
    look-ahead point), squared_norm (||g||^2 before its clip), raw_eta (before
    its clip).
    """
    velocity = [np.zeros_like(p) for p in params]
    for x, y in batches:
        ahead = [p - momentum * v for p, v in zip(params, velocity)]
        loss = regularized_loss(ahead, x, y, kind, l2)
        g = regularized_grad(ahead, x, y, kind, l2)
        squared_norm = sum(float(np.sum(gi**2)) for gi in g)
        raw_eta = gamma * abs(loss) / np.clip(squared_norm, *grad_norm_clip)
        eta = float(np.clip(raw_eta, *step_size_clip))
        velocity = [momentum * v + eta * gi for v, gi in zip(velocity, g)]
        params = [p - v for p, v in zip(params, velocity)]
        yield {"params": params, "velocity": velocity, "eta": eta, "loss": loss,
               "squared_norm": squared_norm, "raw_eta": raw_eta}


def persistency(params, opt, batches, k, lr, kind):
    """Algorithm 4: `k` updates of `opt` (a `tests.reference.Optimizer`) per batch.

    Yields (params, optimizer state, loss before the batch's first update)
    after each batch.
    """
    for x, y in batches:
        first_loss = loss_fn(params, x, y, kind)
        for _ in range(k):
            params = opt.apply(params, grad_fn(params, x, y, kind), np.float32(lr))
        yield params, opt.state(), first_loss
