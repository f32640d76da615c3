"""NumPy reference of every MCV algorithm on a one-layer model (Dense + loss).

Written from the thesis's pseudo-code and Keras's optimizer update rules, with
no TensorFlow, so the Keras models can be compared with it step by step.
The model is `logits = x @ W + b`; the loss is softmax cross-entropy
("ce", softmax regression) or mean squared error ("mse", linear regression).
"""

from __future__ import annotations

import math

import numpy as np

from keras_mcv.rules import thesis as policies


def forward(params, x):
    W, b = params
    return x @ W + b


def loss_fn(params, x, y, kind):
    z = forward(params, x)
    if kind == "ce":
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(len(y)), y].mean()
    with np.errstate(over="ignore", invalid="ignore"):
        return np.mean(np.square(z[:, 0] - y))


def grad_fn(params, x, y, kind):
    z = forward(params, x)
    n = len(x)
    if kind == "ce":
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d = p.copy()
        d[np.arange(n), y] -= 1.0
        d /= n
    else:
        d = (2.0 / n) * (z - y[:, None])
    return [x.T @ d, d.sum(axis=0)]


class Optimizer:
    """Keras 3's SGD (with momentum / Nesterov) and Adam update rules."""

    def __init__(self, kind, params, momentum=0.9, nesterov=False, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        self.kind = kind
        self.momentum, self.nesterov = momentum, nesterov
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.slots = [[np.zeros_like(p) for p in params]]
        if kind == "adam":
            self.slots.append([np.zeros_like(p) for p in params])
        self.iterations = 0

    def state(self):
        return ([[s.copy() for s in group] for group in self.slots], self.iterations)

    def set_state(self, state):
        self.slots = [[s.copy() for s in group] for group in state[0]]
        self.iterations = state[1]

    def apply(self, params, grads, lr):
        new = []
        if self.kind == "sgd":
            for i, (p, g) in enumerate(zip(params, grads)):
                m = self.slots[0][i]
                m = m * self.momentum - g * lr
                self.slots[0][i] = m
                step = (m * self.momentum - g * lr) if self.nesterov else m
                new.append(p + step)
        else:
            t = self.iterations + 1
            alpha = lr * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
            for i, (p, g) in enumerate(zip(params, grads)):
                m = self.slots[0][i] + (g - self.slots[0][i]) * (1 - self.beta_1)
                v = self.slots[1][i] + (g * g - self.slots[1][i]) * (1 - self.beta_2)
                self.slots[0][i], self.slots[1][i] = m, v
                new.append(p - (m * alpha) / (np.sqrt(v) + self.epsilon))
        self.iterations += 1
        return new


def split(x, y, f=0.5, trial_size=None):
    """Training half, validation half (the judging part: its first `trial_size`)."""
    n = len(x)
    n_val = math.floor(f * n)
    val = (x[n - n_val :], y[n - n_val :])
    if trial_size is not None:
        val = (val[0][:trial_size], val[1][:trial_size])
    return (x[: n - n_val], y[: n - n_val]), val


def _try(params, opt, grads, lr, batch, kind):
    saved = opt.state()
    trial = opt.apply(params, grads, np.float32(lr))
    loss = loss_fn(trial, *batch, kind)
    opt.set_state(saved)
    return loss


def discard(params, opt, batches, lr, kind, trial_size=None):
    """Algorithm 3. Yields (params, slots, discarded) after every step."""
    for x, y in batches:
        b1, b2 = split(x, y, trial_size=trial_size)
        pre = loss_fn(params, *b2, kind)
        g = grad_fn(params, *b1, kind)
        saved = opt.state()
        new = opt.apply(params, g, lr)
        post = loss_fn(new, *b2, kind)
        discarded = policies.should_discard(pre, post)
        if discarded:
            opt.set_state(saved)
        else:
            params = new
        yield params, opt.state(), discarded


def voting(params, opt, batches, candidates, ema, kind, trial_size=None):
    """Algorithms 4-6. Yields (params, slots, votes, discarded) after every step."""
    votes = policies.initial_votes(len(candidates))
    for x, y in batches:
        b1, b2 = split(x, y, trial_size=trial_size)
        pre = loss_fn(params, *b2, kind)
        g = grad_fn(params, *b1, kind)
        losses = [_try(params, opt, g, c, b2, kind) for c in candidates]
        best = policies.best_candidate(losses, pre)
        votes = policies.update_votes(votes, best, ema)
        if best >= 0:
            lr = candidates[policies.top_candidate(votes)]
            params = opt.apply(params, g, np.float32(lr))
        yield params, opt.state(), votes.copy(), best < 0


def search(params, opt, epochs, method, alpha, kind, candidates=policies.DEFAULT_CANDIDATES,
           trial_size=None):
    """Algorithms 7-8. `epochs` is a list of lists of batches.

    Yields ("step", params, slots) after every step and ("epoch", summary) at
    each epoch end.
    """
    candidates = list(candidates)
    lr = min(candidates)
    for batches in epochs:
        scores = np.zeros(len(candidates))
        vals = np.zeros(len(candidates))
        pre_sum = 0.0
        for x, y in batches:
            b1, b2 = split(x, y, trial_size=trial_size)
            pre = loss_fn(params, *b2, kind)
            g = grad_fn(params, *b1, kind)
            for k, c in enumerate(candidates):
                saved = opt.state()
                trial = opt.apply(params, g, np.float32(c))
                val = policies.as_scores([loss_fn(trial, *b2, kind)])[0]
                score = val
                if alpha > 0:
                    tr = policies.as_scores([loss_fn(trial, *b1, kind)])[0]
                    score = policies.as_scores([(1 - alpha) * val + alpha * tr])[0]
                opt.set_state(saved)
                scores[k] += score
                vals[k] += val
            pre_sum += pre
            params = opt.apply(params, g, np.float32(lr))
            yield "step", params, opt.state()
        n = len(batches)
        next_lr = policies.select_lr(method, candidates, scores / n, vals / n, pre_sum / n)
        yield "epoch", {"lr": lr, "candidates": list(candidates), "scores": scores / n, "next_lr": next_lr}
        lr = next_lr
        candidates = policies.candidate_list(lr)


def accuracy(params, x, y):
    """The fraction of `x` whose highest logit is its label (Keras's "accuracy" on sparse labels)."""
    return float(np.mean(np.argmax(forward(params, x), axis=1) == y))


def race(params, opt, epochs, candidates, kind, lrs_after=None):
    """The learning-rate race (`keras_mcv.RaceModel`), written out without its rules module.

    `epochs` is a list of lists of batches. Every branch starts from `params`
    and `opt`'s state. Yields ("step", [params of each racing branch]) after a
    race step, ("step", [params]) after a plain step, and ("epoch", summary)
    at each epoch end. A summary's "loss" and "accuracy" are the means over
    the epoch's batches, before each step, of the branch the summary's "lr"
    names (the one the model holds at the epoch's end). `lrs_after` maps an
    epoch index after the race to the LR its plain steps take (the user's
    own LR); other plain epochs keep the race's choice.
    """
    candidates = list(candidates)
    lrs_after = dict(lrs_after or {})
    start = opt.state()
    branches = [(list(params), start) for _ in candidates]
    lrs = list(candidates)  # the LR of each racing branch, in branch order
    round_number, epochs_in_round, rows = 1, 0, []
    current, lr = None, None
    for e, batches in enumerate(epochs):
        last = e == len(epochs) - 1
        if current is not None:  # the race is over: plain steps
            lr = lrs_after.get(e, lr)
            losses, hits = [], []
            for x, y in batches:
                losses.append(loss_fn(current[0], x, y, kind))
                hits.append(accuracy(current[0], x, y) if kind == "ce" else None)
                opt.set_state(current[1])
                p = opt.apply(current[0], grad_fn(current[0], x, y, kind), np.float32(lr))
                current = (p, opt.state())
                yield "step", [p]
            yield "epoch", {"lr": lr, "candidates": None, "candidate_losses": None, "survivors": None,
                            "params": current[0], "loss": float(np.mean(losses)),
                            "accuracy": None if kind != "ce" else float(np.mean(hits))}
            continue
        epoch_rows, epoch_hits = [], []
        for x, y in batches:
            row, moved = [], []
            epoch_hits.append([accuracy(p, x, y) if kind == "ce" else None for p, _ in branches])
            for (p, state), c in zip(branches, lrs):
                loss = loss_fn(p, x, y, kind)
                row.append(loss if np.isfinite(loss) else np.inf)
                opt.set_state(state)
                p = opt.apply(p, grad_fn(p, x, y, kind), np.float32(c))
                moved.append((p, opt.state()))
            branches = moved
            rows.append(row)
            epoch_rows.append(row)
            yield "step", [p for p, _ in branches]
        epochs_in_round += 1
        table = np.asarray(rows)
        judged = table[len(rows) // 2:].mean(axis=0)  # the last half of the round's steps
        order = sorted(range(len(branches)), key=lambda j: (judged[j], j))
        shown = order[0]  # the branch held at the epoch's end, in this epoch's order
        summary = {"candidates": list(lrs), "candidate_losses": judged, "survivors": None,
                   "loss": float(np.mean([r[shown] for r in epoch_rows])),
                   "accuracy": None if kind != "ce" else float(np.mean([h[shown] for h in epoch_hits]))}
        if epochs_in_round == 2 ** (round_number - 1) or last:
            keep = 1 if last else -(-len(branches) // 2)
            order = order[:keep]
            branches = [branches[j] for j in order]
            lrs = [lrs[j] for j in order]
            summary["survivors"] = list(lrs)
            round_number, epochs_in_round, rows = round_number + 1, 0, []
            leader = 0
        else:
            leader = order[0]
        summary["lr"] = lrs[leader]
        summary["params"] = branches[leader][0]
        yield "epoch", summary
        if len(branches) == 1:
            current, lr = branches[0], lrs[0]


class TorchSGD:
    """PyTorch's SGD update rule (`torch.optim.SGD`), with the interface of `Optimizer`.

    ```
    g   = grad + weight_decay * p
    buf = g  (first step),  momentum * buf + (1 - dampening) * g  (later steps)
    d   = g + momentum * buf if nesterov else buf     (d = g when momentum == 0)
    p   = p - lr * d
    ```
    `weight_decay` is one number or one per parameter array. The state is laid
    out as `Optimizer`'s: ([buffers], iterations).
    """

    def __init__(self, params, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov
        if np.ndim(weight_decay) == 0:
            weight_decay = [weight_decay] * len(params)
        self.weight_decay = list(weight_decay)
        self.slots = [[np.zeros_like(p) for p in params]]
        self.iterations = 0

    def state(self):
        return ([[s.copy() for s in group] for group in self.slots], self.iterations)

    def set_state(self, state):
        self.slots = [[s.copy() for s in group] for group in state[0]]
        self.iterations = state[1]

    def apply(self, params, grads, lr):
        new = []
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + self.weight_decay[i] * p
            if self.momentum != 0:
                if self.iterations == 0:
                    buf = g
                else:
                    buf = self.momentum * self.slots[0][i] + (1 - self.dampening) * g
                self.slots[0][i] = buf
                g = g + self.momentum * buf if self.nesterov else buf
            new.append(p - lr * g)
        self.iterations += 1
        return new


def torch_sgd(params, batches, lrs, kind, **hyper):
    """PyTorch's SGD on the one-layer model: one batch and one learning rate per step.

    `hyper` goes to `TorchSGD` (momentum, dampening, nesterov, weight_decay).
    Yields (params, buffers) after every step.
    """
    opt = TorchSGD(params, **hyper)
    for (x, y), lr in zip(batches, lrs):
        params = opt.apply(params, grad_fn(params, x, y, kind), lr)
        yield params, [b.copy() for b in opt.slots[0]]


class ScheduleFree:
    """Keras 3.15's `ScheduleFreeAdamW` step, with the averaged point x kept explicitly.

    ```
    t += 1;  lr_t = lr * min(t / warmup_steps, 1)  (lr without warm-up)
    v = v + (g^2 - v) (1 - beta_2)
    z = z - lr_t g / (sqrt(v / (1 - beta_2^t)) + eps)
    x = (1 - 1/t) x + (1/t) z                      (x_0 = z_0 = w_0)
    y = (1 - beta_1) z + beta_1 x                  (the weights Keras trains)
    ```
    Keras recovers x from y and z instead of storing it; this keeps it, as
    the authors' Algorithm 1 does, so the two forms can be compared.
    `keras_read_order=True` reproduces `keras.optimizers.ScheduleFreeAdamW` as
    Keras 3.15 runs it: it recovers x from y and the *stepped* z, so before
    the averaging x takes `x + (1 - beta_1) / beta_1 (z_old - z_new)`.
    """

    def __init__(self, params, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8, warmup_steps=0,
                 keras_read_order=False):
        self.keras_read_order = keras_read_order
        self.lr, self.beta_1, self.beta_2, self.epsilon = lr, beta_1, beta_2, epsilon
        self.warmup_steps = warmup_steps
        self.z = [p.copy() for p in params]
        self.x = [p.copy() for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def apply(self, params, grads):
        """One step from the interpolated point `params` (= y); returns the new y."""
        self.t += 1
        t = self.t
        lr = self.lr * (min(t / self.warmup_steps, 1.0) if self.warmup_steps else 1.0)
        new = []
        for i, g in enumerate(grads):
            self.v[i] = self.v[i] + (g * g - self.v[i]) * (1 - self.beta_2)
            denom = np.sqrt(self.v[i] / (1 - self.beta_2**t)) + self.epsilon
            z_old = self.z[i]
            self.z[i] = z_old - lr * g / denom
            if self.keras_read_order:
                self.x[i] = self.x[i] + (1 - self.beta_1) / self.beta_1 * (z_old - self.z[i])
            self.x[i] = (1 - 1 / t) * self.x[i] + (1 / t) * self.z[i]
            new.append((1 - self.beta_1) * self.z[i] + self.beta_1 * self.x[i])
        return new


def schedule_free(params, batches, lr, kind, **hyper):
    """ScheduleFreeAdamW on the one-layer model; yields (y, x, z) after every step."""
    opt = ScheduleFree(params, lr, **hyper)
    y = [p.copy() for p in params]
    for xb, yb in batches:
        y = opt.apply(y, grad_fn(y, xb, yb, kind))
        yield y, [a.copy() for a in opt.x], [a.copy() for a in opt.z]


def course_race(params, opt, epochs, candidates, kind, level_shape="constant",
                courses=("keep", "cosine"), plan="final"):
    """The course race (`keras_mcv.models.course_race.CourseRaceModel`), written out.

    The LR of a course on a step and the continuations come from the pure
    rules (`keras_mcv.rules.course`: `Course.lr_at`, `continue_course`,
    `distinct`, `spacing`); the rounds, judging and survivors are written out
    here. `epochs` is a list of lists of batches (the same number each).
    Yields ("step", [params of each racing branch]) after every step and
    ("epoch", summary) at each epoch end.
    """
    from keras_mcv.rules import course as rules

    steps, total = len(epochs[0]), len(epochs)
    q = math.sqrt(rules.spacing(candidates))
    end = steps * total
    warm_end = steps if level_shape == "warmup" else 0
    start = opt.state()
    branches = [(list(params), start, rules.Course(level_shape, c, 0, end, steps, warm_end))
                for c in candidates]
    names = [f"{c:g}" for c in candidates]
    # Rounds after the level race: one to the end ("final"), or 4, 8, ... epochs ("doubling").
    level_epochs, alive, r = 0, len(candidates), 0
    while alive > 1:
        r += 1
        level_epochs += 2 ** (r - 1)
        alive = -(-alive // 2)
    left, course_lengths, r2 = total - level_epochs, [], r + 1
    if plan == "half" and left > 0:
        left, course_lengths = 0, [-(-left // 2)]
    while left > 0:
        length = left if plan == "final" else min(2 ** (r2 - 1), left)
        course_lengths.append(length)
        left -= length
        r2 += 1
    kind_of_round, round_number, in_round, rows, length = "level", 1, 0, [], None
    toward, step, finished = 1, 0, False
    for e, batches in enumerate(epochs):
        last = e == total - 1
        for x, y in batches:
            row, moved = [], []
            for p, state, course in branches:
                loss = loss_fn(p, x, y, kind)
                row.append(loss if np.isfinite(loss) else np.inf)
                opt.set_state(state)
                lr = np.float32(course.lr_at(step))
                p = opt.apply(p, grad_fn(p, x, y, kind), lr)
                moved.append((p, opt.state(), course))
            branches = moved
            rows.append(row)
            step += 1
            yield "step", [p for p, _, _ in branches]
        summary = {"candidates": None, "courses": None, "survivors": None}
        if finished:
            lead = branches[0]
            summary.update(lr=lead[2].lr_at(step), params=lead[0])
            yield "epoch", summary
            continue
        in_round += 1
        table = np.asarray(rows)
        judged = table[len(rows) // 2:].mean(axis=0)
        order = sorted(range(len(branches)), key=lambda j: (judged[j], j))
        summary.update(candidates=[b[2].lr_at(step) for b in branches], courses=list(names),
                       candidate_losses=judged)
        due = 2 ** (round_number - 1) if kind_of_round == "level" else length
        if in_round == due or last:
            if kind_of_round == "level":
                keep = 1 if last else -(-len(branches) // 2)
                if keep == 1 and len(branches) > 1:
                    toward = 1 if branches[order[1]][2].lr0 > branches[order[0]][2].lr0 else -1
            else:
                keep = 1
            order = order[:keep]
            branches, names = [branches[j] for j in order], [names[j] for j in order]
            summary["survivors"] = [b[2].lr_at(step) for b in branches]
            round_number, in_round, rows = round_number + 1, 0, []
            leader = 0
            if len(branches) == 1:
                p, state, course = branches[0]
                nxt = course_lengths.pop(0) if (course_lengths and not last) else None
                kind_of_round = "course"
                if nxt is not None and courses:
                    forks = [rules.continue_course(course, n, step, q, toward) for n in courses]
                    kept = rules.distinct(forks, step)
                    if len(kept) > 1:
                        branches = [(list(p), state, forks[i]) for i in kept]
                        names = [courses[i] for i in kept]
                        length = nxt
                    else:
                        branches, finished = [(p, state, forks[kept[0]])], True
                else:
                    finished = True
        else:
            leader = order[0]
        summary["lr"] = branches[leader][2].lr_at(step)
        summary["params"] = branches[leader][0]
        yield "epoch", summary
