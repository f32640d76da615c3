"""Exploratory prototype (ISSUE #7, session 3): LR trials over real multi-step lookaheads.

A custom training loop, not the library: K copies of the network ("branches")
train on the same batches at different LRs and are judged on each batch before
they step on it (prequential). Two schemes:

- windows (default): at each epoch start, the current LR times `--factors`
  race for `--S` batches (the first window: the thesis's list 1e-1..1e-4,
  for `--first-S` batches, -1 = the whole epoch); the branch with the lowest
  loss over the window's last half goes on (`--margin z`: only if it beats the
  current LR by z paired standard errors); the rest of the epoch is plain.
- `--race sh`: successive halving of 1e-1..1e-4 over rounds of 1 epoch
  (`--round-length fixed`) or 1, 2, 4 ... epochs (`--round-length double`, what
  `keras_mcv.RaceModel` implements), then plain training at the winner.

Accuracy is compared with the fixed-LR grids saved in
`saved_runs/beyond_thesis/{ablation,ablation_seed2,cifar4000_ablation}.json`
(same problem, seed and budget). Wall ratios compare this loop with Keras `fit`
runs of another process: not evidence on time. Outputs and the flags of every
run are in `saved_runs/beyond_thesis/lookahead_windows/`.

Run from the repository root, e.g.:

    .venv/bin/python -m benchmarks.lookahead_windows --pairs digits_mlp,digits_cnn --seeds 0,1 --S 10
"""
import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf
import keras

from benchmarks import beyond_thesis as bt

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--pairs", default="digits_mlp,digits_cnn")
p.add_argument("--opts", default="sgd,adam")
p.add_argument("--seeds", default="0")
p.add_argument("--S", type=int, default=10)
p.add_argument("--factors", default="0.316,1,3.16")
p.add_argument("--judge", default="last_half")
p.add_argument("--margin", type=float, default=0.0)
p.add_argument("--first-S", type=int, default=None)
p.add_argument("--race", default="none")
p.add_argument("--refine", type=int, default=1)
p.add_argument("--round-length", default="double", choices=("fixed", "double"))
p.add_argument("--every", type=int, default=1, help="window every N epochs")
p.add_argument("--cifar-subset", type=int, default=4000)
p.add_argument("--epochs", type=int, default=None)
a = p.parse_args()
factors = [float(f) for f in a.factors.split(",")]

grids = {}
for fn in ["ablation.json", "ablation_seed2.json", "cifar4000_ablation.json"]:
    r = json.load(open(os.path.join("saved_runs", "beyond_thesis", fn)))
    for pr in r["pairs"]:
        if len(pr["grid"]) == 4:
            grids[(pr["problem"], pr["optimizer"], pr["seed"], pr["epochs"])] = pr["grid"]

def make(build, d, opt, lr):
    net = build(d.input_shape, d.num_classes)
    o = bt.make_optimizer(opt, lr)
    o.build(net.trainable_variables)
    lossf = keras.losses.SparseCategoricalCrossentropy()
    @tf.function
    def step(x, y):
        with tf.GradientTape() as t:
            pr = net(x, training=True)
            l = lossf(y, pr)
        g = t.gradient(l, net.trainable_variables)
        o.apply_gradients(zip(g, net.trainable_variables))
        return l
    return net, o, step

def state(net, o):
    return list(net.variables) + list(o.variables)

def copy(dst, src):
    for u, v in zip(state(*dst), state(*src)):
        u.assign(v)

for prob in a.pairs.split(","):
    d, build, m, epochs = bt.problem(prob, a.cifar_subset)
    epochs = a.epochs or epochs
    for opt in a.opts.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            t0 = time.perf_counter()
            keras.utils.set_random_seed(seed)
            first = list(bt.GRID)
            K = max(len(first), len(factors))
            branches = []
            for k in range(K):
                net, o, step = make(build, d, opt, 1e-3)
                branches.append((net, o, step))
            main = 0
            alive = None
            round_ep, round_len = 0, 1
            for k in range(1, K):
                copy(branches[k][:2], branches[0][:2])
            n = len(d.x_train)
            rng = np.random.default_rng(seed)
            lr = None
            lrs = []
            steps = 0
            for ep in range(epochs):
                idx = rng.permutation(n)
                batches = [idx[i:i + m] for i in range(0, n, m)]
                bi = 0
                if a.race == "sh" and (lr is None or alive is not None):
                    if alive is None:
                        alive = list(range(len(first)))
                        for k in alive:
                            if k: copy(branches[k][:2], branches[0][:2])
                            branches[k][1].learning_rate.assign(first[k])
                    if round_ep == 0:
                        round_scores = []
                    scores = np.zeros((len(alive), len(batches)))
                    for s_, b in enumerate(batches):
                        x, y = d.x_train[b], d.y_train[b]
                        for j, k in enumerate(alive):
                            l = float(branches[k][2](x, y)); steps += 1
                            scores[j, s_] = l if np.isfinite(l) else np.inf
                    round_scores.append(scores)
                    round_ep += 1
                    if round_ep < round_len and ep < epochs - 1:
                        lrs.append(first[alive[0]])
                        continue
                    allsc = np.concatenate(round_scores, 1)
                    sc = allsc[:, allsc.shape[1] // 2:].mean(1)
                    round_ep = 0
                    round_len *= 2 if a.round_length == "double" else 1
                    print("race", ep, [first[k] for k in alive], np.round(sc, 3), flush=True)
                    order = [alive[j] for j in np.argsort(sc)]
                    alive = order[: (len(alive) + 1) // 2]
                    main = alive[0]
                    lr = first[main]
                    if len(alive) == 1:
                        alive = None
                        # branch order no longer matters: main holds the state
                    lrs.append(lr)
                    continue
                if a.refine and ep % a.every == 0:
                    cands = first if lr is None else [lr * f for f in factors]
                    for k in range(len(cands)):
                        if k != main:
                            copy(branches[k][:2], branches[main][:2])
                    # reorder so branch k gets cands[k]; main's state copied to all
                    S = (a.first_S or a.S) if lr is None else a.S
                    if S < 0: S = len(batches)
                    S = min(S, len(batches))
                    scores = np.zeros((len(cands), S))
                    for k, c in enumerate(cands):
                        branches[k][1].learning_rate.assign(c)
                    for s in range(S):
                        b = batches[bi]; bi += 1
                        x, y = d.x_train[b], d.y_train[b]
                        for k in range(len(cands)):
                            l = float(branches[k][2](x, y)); steps += 1
                            scores[k, s] = l if np.isfinite(l) else np.inf
                    if a.judge == "last_half":
                        sc = scores[:, S // 2:].mean(1)
                    elif a.judge == "last":
                        sc = scores[:, -1]
                    else:
                        sc = scores.mean(1)
                    print("window", ep, [f"{c:.3g}" for c in cands], np.round(scores.mean(1), 3), np.round(sc, 3), flush=True)
                    if lr is None or a.margin == 0:
                        main = int(np.argmin(sc))
                    else:
                        cur = factors.index(1.0)
                        part = scores[:, S // 2:] if a.judge == "last_half" else scores
                        dif = part - part[cur]
                        md = dif.mean(1)
                        se = dif.std(1, ddof=1) / np.sqrt(dif.shape[1])
                        ok = md < -a.margin * se
                        ok[cur] = False
                        main = int(np.argmin(np.where(ok, md, np.inf))) if ok.any() else cur
                    lr = cands[main]
                net, o, step = branches[main]
                o.learning_rate.assign(lr)
                for b in batches[bi:]:
                    step(d.x_train[b], d.y_train[b]); steps += 1
                lrs.append(lr)
            net = branches[main][0]
            net.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            acc = net.evaluate(d.x_test, d.y_test, verbose=0, return_dict=True)["accuracy"]
            wall = time.perf_counter() - t0
            g = grids.get((prob, opt, seed, epochs))
            if g:
                best = max(r["test_accuracy"] for r in g.values())
                tot = sum(r["wall_s"] for r in g.values())
                extra = f"grid best {best:.4f} delta {100*(acc-best):+.1f} wall/grid {wall/tot:.2f}"
            else:
                extra = ""
            print(f"{prob} {opt} seed{seed} S={a.S} f={a.factors} judge={a.judge} margin={a.margin} firstS={a.first_S}: acc {acc:.4f} {extra} steps {steps} "
                  f"wall {wall:.1f}s lrs {' '.join(f'{x:.2g}' for x in lrs)}", flush=True)
