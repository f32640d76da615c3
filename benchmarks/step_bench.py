"""Step benchmark: the MCV train step against the plain Keras step.

Everything is timed in one process, interleaved: every repeat runs each
configuration once, round-robin (the order rotates from repeat to repeat), and
each figure is the median over repeats. Compared on the same gradient batch `m`:

```
plain      keras.Model, same architecture, train step on m images       (reference S)
forward    the same model: training-mode forward + loss on m images     (F)
apply      optimizer.apply_gradients with a fixed gradient              (A)
MCV        SearchModel / VotingModel / DiscardModel step on 2m images (m train + m validate)
ratio      time(MCV step) / S, paired within each repeat, median over repeats
floor      (N*S + extra) / (N*S), extra = the work of one trial step beyond the plain step:
             Search (method 1, 3), Voting:  (K+1) F + K A     (pre-loss forward, K candidates)
             Search method 2, alpha > 0:    (2K+1) F + K A
             Discard:                       2 F              (pre and post forward)
           N = trial_every: the trials are amortised over N steps.
```
With backward ~ 2 forwards and a free apply, the floor is (K+4)/3 (3.67 at K=7).
Each ratio is also given in process CPU time (`time.process_time`, all
threads), with its floor from the CPU-time F and A: on a shared machine
other processes inflate wall time at random, CPU time much less, so the
CPU ratio/floor is the sharper test of the step's overhead; "best" is the
fastest sample over the fastest plain sample.
Steps are run by calling the compiled `model.train_function(iterator)` directly
on a repeated dataset of fixed batches (no callbacks, no progress bar), after a
warm-up that traces every graph. Memory growth is the process RSS
(`/proc/self/status`) before and after each timed sample, summed over the
repeats after the first; the trace count is `MCVModel.trace_count` after
warm-up against after the last repeat.

Levers (each a separate set of rows, same process, same repeats):
- `jit`: `model.compile(jit_compile=True)` (XLA) for the plain model, the
  forward/apply probes and the MCV models; ratios against the XLA plain step
  and against the default plain step.
- `subsample`: trials judged on a quarter of the validation half
  (`trial_batch_size`).
(A recompute-the-candidates prototype, evaluated with `stateless_call`
instead of writing and restoring variables, was measured and dropped; its
figures stay in `saved_runs/benchmarks/step_bench.md`.)

Run it as `keras-mcv bench step` or `python -m benchmarks.step_bench`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import statistics
import sys
import time

from keras_mcv import methods

DEFAULT_ARCHS = ("cifar_small_cnn", "bn_small_cnn")
DEFAULT_KS = (4, 7)
DEFAULT_TRIAL_EVERY = (1, 2, 4, 8)
LEVERS = ("jit", "subsample")
SUBSAMPLE = 0.25  # the "subsample" lever's trial_batch_size, as a fraction of m
SGD_LR = 1e-2
SGD_MOMENTUM = 0.9


# ------------------------------------------------------------- architectures


def bn_small_cnn(input_shape=(32, 32, 3), num_classes: int = 10):
    """The CIFAR small CNN with BatchNorm: conv(no bias) + BN + ReLU, widths 48..192.

    Same convolution widths, pooling and dense head (512, 256) as
    `architectures.cifar_small_cnn`, with a BatchNorm after every convolution,
    so the two rows differ only by BatchNorm (its moving statistics are state
    the trials must restore).
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape)
    x = inputs
    for i, filters in enumerate((48, 48, 96, 96, 192, 192)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        if i % 2 == 1:
            x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    for units in (512, 256):
        x = layers.Dense(units, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="bn_small_cnn")


def tiny(input_shape=(8, 8, 3), num_classes: int = 10):
    """A tiny conv + BatchNorm + dense model on 8x8x3 images, for smoke tests."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Flatten()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny")


def _arch(name):
    """`(builder, input_shape)` of a benchmark architecture."""
    from keras_mcv import architectures

    if name == "bn_small_cnn":
        return bn_small_cnn, (32, 32, 3)
    if name == "tiny":
        return tiny, (8, 8, 3)
    builder = architectures.get(name)  # raises a clear ValueError for unknown names
    return builder, (224, 224, 3) if name == "resnet50" else (32, 32, 3)


ARCH_NAMES = ("tiny", "bn_small_cnn", "cifar_small_cnn", "svhn_small_cnn", "vgg11", "resnet18")


# ------------------------------------------------------------ configurations


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmarked configuration.

    `kind` is "plain" (the reference step), "forward", "apply" or an MCV method
    ("search1", "search2", "voting", "discard", "tuned": `SearchModel` with
    `keras_mcv.TUNED_OPTIONS`, "race": a `RaceModel` step with K branches
    racing, on a batch of m); `trial_fraction` < 1 judges trials on that fraction of the validation half
    (`trial_batch_size`).
    """

    kind: str
    k: int = 0
    trial_every: int = 1
    alpha: float = 0.0
    jit: bool = False
    trial_fraction: float = 1.0

    @property
    def is_mcv(self) -> bool:
        return self.kind not in ("plain", "forward", "apply")

    @property
    def batch_multiple(self) -> int:
        """The step's batch in units of m (the method registry's batch multiple)."""
        return methods.get(self.kind).batch_multiple if self.is_mcv else 1

    @property
    def label(self) -> str:
        if self.kind in ("plain", "forward", "apply"):
            text = {"plain": "plain step (m)", "forward": "forward (m)", "apply": "apply"}[self.kind]
        elif self.kind == "race":
            text = f"race K={self.k}"
        else:
            text = self.kind
            if self.kind == "search2":
                text += f" a={self.alpha:g}"
            if self.k:
                text += f" K={self.k}"
            text += f" N={self.trial_every}"
        if self.trial_fraction != 1.0:
            text += f" [trial_batch_size=m*{self.trial_fraction:g}]"
        if self.jit:
            text += " [xla]"
        return text

    def extra(self, f: float, a: float) -> float:
        """Work of one trial step beyond the plain step(s), in units of F and A.

        Trial forwards run on `trial_fraction` of the validation half, and a
        forward's cost is taken as proportional to its batch.
        """
        f = f * self.trial_fraction
        forwards, _, steps = methods.get(self.kind).step_cost(self.k, self.alpha)
        if self.kind == "tuned":
            # Update trials: no optimizer step per candidate, only a weight assignment.
            steps = 1
        # Beyond the plain step's one forward and one step (thesis Table 4.1).
        return (forwards - 1) * f + (steps - 1) * a

    def floor(self, f: float, a: float) -> float:
        """Theoretical ratio to the plain step, from the ratios f = F/S and a = A/S.

        "tuned" takes two plain steps per batch of 2m (train_validation_half);
        "race" takes one plain step per racing branch, K in all.
        """
        if self.kind == "race":
            return float(self.k)
        n = self.trial_every
        steps = 2 * n if self.kind == "tuned" else n
        return (steps + self.extra(f, a)) / n


def default_configs(ks=DEFAULT_KS, trial_every=DEFAULT_TRIAL_EVERY, levers=LEVERS, extras=True):
    """The configurations of `keras-mcv bench step`, references first."""
    configs = [Config("plain"), Config("forward"), Config("apply")]
    for k in ks:
        for n in trial_every:
            configs.append(Config("search1", k=k, trial_every=n))
    if extras:
        k = max(ks)
        configs += [
            Config("search2", k=k, alpha=0.5),
            Config("voting", k=min(ks)),
            Config("discard"),
            Config("tuned", k=k, trial_every=4),
            Config("race", k=min(ks)),
        ]
    k_max, n_amortised = max(ks), 4 if 4 in trial_every else max(trial_every)
    if "subsample" in levers:
        configs.append(Config("search1", k=k_max, trial_fraction=SUBSAMPLE))
        if n_amortised != 1:
            configs.append(Config("search1", k=k_max, trial_every=n_amortised, trial_fraction=SUBSAMPLE))
    if "jit" in levers:
        configs += [Config("plain", jit=True), Config("forward", jit=True), Config("apply", jit=True)]
        configs.append(Config("search1", k=k_max, jit=True))
        if n_amortised != 1:
            configs.append(Config("search1", k=k_max, trial_every=n_amortised, jit=True))
    return configs


# ------------------------------------------------------------------ runners


def rss_kb() -> float:
    """Resident set size of this process in kB (`/proc/self/status` VmRSS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1])
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class _Runner:
    """Runs `n` steps of one configuration and waits for the result."""

    def __init__(self, config, steps, run, traces=None):
        self.config = config
        self.steps = steps
        self._run = run
        self._traces = traces

    def run(self, n=None):
        self._run(self.steps if n is None else n)

    def trace_count(self):
        return None if self._traces is None else self._traces()


def _build_runner(config, arch, m, min_steps, seed):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_mcv import models
    from keras_mcv.rules import thesis as thesis_rules

    builder, input_shape = _arch(arch)
    rng = np.random.default_rng(seed)
    num_classes = 10
    mcv = config.is_mcv
    n = config.batch_multiple * m
    x = rng.random((n,) + tuple(input_shape), dtype=np.float32)
    y = rng.integers(0, num_classes, size=(n,)).astype("int64")

    keras.utils.set_random_seed(seed)  # same initial weights for every configuration
    base = builder(input_shape, num_classes)
    kwargs = {}
    if config.kind in ("plain", "forward", "apply"):
        cls = keras.Model
    elif config.kind == "race":
        # Called outside `fit`, the race never closes an epoch: every step races K branches.
        cls, kwargs = models.RaceModel, {"candidates": list(thesis_rules.candidate_list(SGD_LR))[: config.k]}
    elif config.kind == "discard":
        cls, kwargs = models.DiscardModel, {"trial_every": config.trial_every}
    else:
        candidates = (
            list(thesis_rules.DEFAULT_CANDIDATES)[: config.k]
            if config.k <= len(thesis_rules.DEFAULT_CANDIDATES)
            else thesis_rules.candidate_list(SGD_LR)[: config.k]
        )
        kwargs = {"candidates": candidates, "trial_every": config.trial_every}
        if config.trial_fraction != 1.0:
            kwargs["trial_batch_size"] = max(1, round(config.trial_fraction * m))
        if config.kind == "voting":
            cls = models.VotingModel
        elif config.kind == "tuned":
            cls = models.SearchModel
            kwargs = {**models.TUNED_OPTIONS, **kwargs}
        else:
            method = int(config.kind[-1])
            kwargs.update(method=method)
            if method == 2:
                kwargs.update(alpha=config.alpha)
            cls = models.SearchModel
    model = cls(base.inputs, base.outputs, name=f"bench_{config.kind}", **kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(SGD_LR, momentum=SGD_MOMENTUM),
        loss="sparse_categorical_crossentropy",
        jit_compile=config.jit,
    )
    if isinstance(model, models.SearchModel):
        model.mcv_lr.assign(SGD_LR / 10)  # a sensible actual step; trials cover the list

    if config.kind == "forward":
        xt, yt = tf.constant(x), tf.constant(y)

        @tf.function(jit_compile=config.jit)
        def forward():
            y_pred = model(xt, training=True)
            return model.compute_loss(x=xt, y=yt, y_pred=y_pred, training=True)

        def run(k):
            for _ in range(k):
                out = forward()
            float(out)

        return _Runner(config, min_steps, run)

    if config.kind == "apply":
        model.optimizer.build(model.trainable_variables)
        grads = [
            tf.constant(rng.normal(scale=1e-3, size=v.shape).astype(v.dtype)) for v in model.trainable_variables
        ]
        opt = model.optimizer

        @tf.function(jit_compile=config.jit)
        def apply():
            # As MCVModel._apply: set the learning rate, then apply.
            opt.learning_rate.assign(tf.cast(SGD_LR, opt.learning_rate.dtype))
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return opt.iterations

        def run(k):
            for _ in range(k):
                out = apply()
            int(out)

        return _Runner(config, min_steps, run)

    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    iterator = iter(dataset)
    model.make_train_function()

    def run(k):
        for _ in range(k):
            logs = model.train_function(iterator)
        float(logs["loss"])

    steps = config.trial_every * max(1, math.ceil(min_steps / config.trial_every))
    traces = (lambda: model.trace_count) if mcv else None
    runner = _Runner(config, steps, run, traces)
    runner.model = model
    return runner


# -------------------------------------------------------------------- bench


def step_bench(
    archs=DEFAULT_ARCHS,
    m: int = 128,
    repeats: int = 5,
    ks=DEFAULT_KS,
    trial_every=DEFAULT_TRIAL_EVERY,
    levers=LEVERS,
    extras: bool = True,
    min_steps: int = 4,
    seed: int = 0,
    log=None,
) -> list:
    """Time the plain and MCV train steps, interleaved in one process.

    Args:
        archs: architecture names (see `ARCH_NAMES`). Defaults to the CIFAR
            small CNN and the same CNN with BatchNorm.
        m: the gradient batch: the plain step trains on `m` images, the MCV
            step on `2m` (m train + m validate). Defaults to 128.
        repeats: timed rounds over all configurations; figures are medians.
            Defaults to 5.
        ks: candidate counts K of the SearchModel rows. Defaults to (4, 7).
        trial_every: the `trial_every` values N. Defaults to (1, 2, 4, 8).
        levers: subset of `LEVERS` ("jit", "subsample"). Defaults to both.
        extras: also time Method 2 (alpha 0.5), Voting and Discard.
            Defaults to True.
        min_steps: steps per timed sample (rounded up to a multiple of N).
            Defaults to 4.
        seed: data and initialisation seed. Defaults to 0.
        log: a `print`-like function for progress, or None.

    Returns:
        A list of row dicts (one per architecture and configuration) with
        `arch`, `config`, `kind`, `k`, `trial_every`, `jit`, `ratio`
        (median of time / plain step of the same XLA setting), `ratio_min`,
        `ratio_max`, `floor`, `vs_floor` (ratio / floor), `vs_default_plain`
        (time / plain step without XLA), `traces_warm`, `traces_end`,
        `rss_kb_per_step`, `ms_per_step` (absolute, for the record only).
    """
    levers = tuple(levers or ())
    unknown = set(levers) - set(LEVERS)
    if unknown:
        raise ValueError(f"Unknown levers {sorted(unknown)}; known: {', '.join(LEVERS)}.")
    if m < 1 or repeats < 1:
        raise ValueError(f"m and repeats must be >= 1, got m={m}, repeats={repeats}.")
    log = log or (lambda *a, **k: None)
    configs = default_configs(ks, trial_every, levers, extras)
    rows = []
    for arch in archs:
        _arch(arch)  # unknown names fail before any building
    for arch in archs:
        log(f"[{arch}] building and warming up {len(configs)} configurations (m={m})")
        runners = []
        for config in configs:
            runner = _build_runner(config, arch, m, min_steps, seed)
            runner.run(max(2, 2 * config.trial_every))  # traces every graph
            runners.append(runner)
        warm_traces = [r.trace_count() for r in runners]
        times = [[] for _ in runners]
        cpu = [[] for _ in runners]
        rss = [0.0 for _ in runners]
        for rep in range(repeats):
            start = rep % len(runners)
            for i in list(range(start, len(runners))) + list(range(start)):
                runner = runners[i]
                gc.collect()
                before = rss_kb()
                c0, t0 = time.process_time(), time.perf_counter()
                runner.run()
                elapsed = time.perf_counter() - t0
                cpu[i].append((time.process_time() - c0) / runner.steps)
                if rep > 0:
                    rss[i] += rss_kb() - before
                times[i].append(elapsed / runner.steps)
            log(f"[{arch}] repeat {rep + 1}/{repeats} done")
        arch_rows = _rows(arch, configs, runners, times, cpu, rss, warm_traces, repeats)
        log(format_table(arch_rows))
        rows += arch_rows
        del runners
        gc.collect()
    return rows


def _rows(arch, configs, runners, times, cpu, rss, warm_traces, repeats):
    index = {c: i for i, c in enumerate(configs)}

    def ref(kind, jit):
        return times[index[Config(kind, jit=jit)]]

    rows = []
    for i, config in enumerate(configs):
        s = ref("plain", config.jit)
        per_rep = [t / p for t, p in zip(times[i], s)]
        f = statistics.median(x / p for x, p in zip(ref("forward", config.jit), s))
        a = statistics.median(x / p for x, p in zip(ref("apply", config.jit), s))
        default_plain = ref("plain", False)
        ratio = statistics.median(per_rep)
        floor = config.floor(f, a) if config.is_mcv else None
        s_cpu = cpu[index[Config("plain", jit=config.jit)]]
        cpu_ratio = statistics.median(c / p for c, p in zip(cpu[i], s_cpu))
        f_cpu = statistics.median(
            c / p for c, p in zip(cpu[index[Config("forward", jit=config.jit)]], s_cpu)
        )
        a_cpu = statistics.median(
            c / p for c, p in zip(cpu[index[Config("apply", jit=config.jit)]], s_cpu)
        )
        cpu_floor = config.floor(f_cpu, a_cpu) if config.is_mcv else None
        steps_after_first = runners[i].steps * (repeats - 1)
        rows.append(
            {
                "arch": arch,
                "config": config.label,
                "kind": config.kind,
                "k": config.k,
                "trial_every": config.trial_every,
                "alpha": config.alpha,
                "jit": config.jit,
                "ratio": ratio,
                "ratio_min": min(per_rep),
                "ratio_max": max(per_rep),
                "floor": floor,
                "vs_floor": ratio / floor if floor else None,
                # Least disturbed estimates on a shared machine: the fastest sample of
                # each, and process CPU time (all threads) instead of wall time.
                "best_ratio": min(times[i]) / min(s),
                "cpu_ratio": cpu_ratio,
                "cpu_floor": cpu_floor,
                "cpu_vs_floor": cpu_ratio / cpu_floor if cpu_floor else None,
                "vs_default_plain": statistics.median(
                    t / p for t, p in zip(times[i], default_plain)
                ),
                "traces_warm": warm_traces[i],
                "traces_end": runners[i].trace_count(),
                "rss_kb_per_step": rss[i] / steps_after_first if steps_after_first else None,
                "ms_per_step": 1000 * statistics.median(times[i]),
            }
        )
    return rows


def format_table(rows) -> str:
    """The rows as a Markdown table (ratios only; absolute times stay in the rows)."""

    def num(v, fmt="{:.2f}"):
        return "–" if v is None else fmt.format(v)

    lines = [
        "| arch | configuration | ratio | [min, max] | best | floor | ratio/floor "
        "| CPU ratio | CPU floor | CPU ratio/floor | vs plain (XLA off) | traces warm→end "
        "| RSS kB/step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        traces = "–" if r["traces_warm"] is None else f"{r['traces_warm']}→{r['traces_end']}"
        lines.append(
            f"| {r['arch']} | {r['config']} | {num(r['ratio'])} "
            f"| [{num(r['ratio_min'])}, {num(r['ratio_max'])}] | {num(r['best_ratio'])} "
            f"| {num(r['floor'])} | {num(r['vs_floor'])} | {num(r['cpu_ratio'])} "
            f"| {num(r['cpu_floor'])} | {num(r['cpu_vs_floor'])} "
            f"| {num(r['vs_default_plain'])} | {traces} "
            f"| {num(r['rss_kb_per_step'], '{:+.1f}')} |"
        )
    return "\n".join(lines)


def run_from_args(args) -> int:
    """`keras-mcv bench step`: run `step_bench` with parsed CLI arguments and print the table."""

    def ints(text, flag):
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            raise ValueError(f"{flag} {text!r} must be comma-separated integers >= 1, e.g. {flag} 1,2,4")
        return values

    levers = () if args.levers.strip().lower() in ("", "none") else tuple(
        v.strip() for v in args.levers.split(",") if v.strip()
    )
    archs = tuple(a.strip() for a in args.arch.split(",") if a.strip())
    ks = ints(args.k, "--k")
    trial_every = ints(args.trial_every, "--trial-every")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    rows = step_bench(
        archs=archs, m=args.m, repeats=args.repeats, ks=ks, trial_every=trial_every,
        levers=levers, extras=not args.no_extras, min_steps=args.steps, seed=args.seed,
        log=lambda *a: print(*a, file=sys.stderr, flush=True),
    )
    table = format_table(rows)
    print(f"# keras-mcv bench step  ({started}, {time.perf_counter() - t0:.0f} s)")
    print(f"m={args.m} repeats={args.repeats} K={ks} trial_every={trial_every} levers={levers or 'none'}")
    print(table)
    if args.out:
        import json

        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `keras-mcv bench step` (and `python -m benchmarks.step_bench`)."""
    s = argparse.ArgumentParser(
        prog="keras-mcv bench step",
        description="Time the plain Keras train step on m images and each MCV model's "
        "step on 2m images (same gradient batch m), round-robin over configurations, "
        "median of REPEATS; print each ratio beside its theoretical floor, the trace "
        "counts and the memory growth per step.",
    )
    s.add_argument("--arch", default="cifar_small_cnn,bn_small_cnn",
                   help="comma-separated architectures (tiny, bn_small_cnn, cifar_small_cnn, "
                   "svhn_small_cnn, vgg11, resnet18). Defaults to cifar_small_cnn,bn_small_cnn.")
    s.add_argument("--m", type=int, default=128,
                   help="gradient batch m (MCV steps see 2m). Defaults to 128.")
    s.add_argument("--repeats", type=int, default=5,
                   help="interleaved rounds; figures are medians. Defaults to 5.")
    s.add_argument("--k", default="4,7",
                   help="comma-separated candidate counts K. Defaults to 4,7.")
    s.add_argument("--trial-every", default="1,2,4,8",
                   help="comma-separated trial_every values. Defaults to 1,2,4,8.")
    s.add_argument("--levers", default="jit",
                   help="comma-separated levers to time as extra rows (jit, subsample) "
                   "or 'none'. Defaults to jit.")
    s.add_argument("--no-extras", action="store_true",
                   help="skip the Method 2, Voting, Discard, tuned and race rows.")
    s.add_argument("--steps", type=int, default=4,
                   help="steps per timed sample (rounded up to a multiple of "
                   "trial_every). Defaults to 4.")
    s.add_argument("--seed", type=int, default=0, help="data and weight seed. Defaults to 0.")
    s.add_argument("--out", default=None, help="also write the rows as JSON to this file.")
    return s


def main(argv=None) -> int:
    """`python -m benchmarks.step_bench [flags]`, the same as `keras-mcv bench step [flags]`."""
    args = build_parser().parse_args(argv)
    try:
        return run_from_args(args)
    except ValueError as e:
        print(f"keras-mcv bench step: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
