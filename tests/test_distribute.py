"""MCV models under tf.distribute give the single-device run, on every replica.

Logical devices must be configured before TensorFlow initialises, so each run
happens in a fresh interpreter executing this file as a script:

- `mirrored FAMILY OUT`: the same model trained under `MirroredStrategy` on two
  logical CPUs and on one device, in one process; weights (of both replicas),
  MCV state and logs go to `OUT` (npz).
- `worker INDEX PORTS OUT`: one worker of a two-worker
  `MultiWorkerMirroredStrategy` run on 127.0.0.1.

Each replica splits its own shard of the global batch (first half trains,
second half validates), so the single-device run sees every global batch
reordered as `[shard0 train, shard1 train, shard0 val, shard1 val]`: the same
training and validation halves, hence the same losses and gradients.
`RaceModel` splits nothing: its single-device run sees the batches as they are.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPLICAS, BATCH, N, D, C = 2, 16, 99, 5, 3  # 6 batches of 16, then 3: shards of 2 and 1
FAMILIES = {
    "search": ("SearchModel", {"method": 2, "alpha": 0.5, "candidates": [0.3, 0.03, 0.003]}),
    "search3": ("SearchModel", {"method": 3, "candidates": [0.3, 0.03, 0.003]}),
    "voting": ("VotingModel", {"candidates": [0.3, 0.03, 0.003], "ema": 0.5}),
    "discard": ("DiscardModel", {}),
    # The beyond-the-thesis options (keras_mcv.TUNED_OPTIONS, trials every 2nd step).
    "tuned": ("SearchModel", {"method": 1, "trial_step": "update", "smoothing": 0.5,
                              "train_validation_half": True, "trial_every": 2,
                              "candidates": [0.3, 0.03, 0.003]}),
    # No split: each replica trains every branch on its shard of the whole batch.
    "race": ("RaceModel", {"candidates": [0.3, 0.03, 0.003]}),
}


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(D, C)), axis=1).astype("int64")
    return x, y


def single_device_order(a):
    """Reorder each global batch so one device splits it as the replicas do."""
    out = []
    for i in range(0, len(a), BATCH):
        shards = np.array_split(a[i : i + BATCH], REPLICAS)
        out += [s[: len(s) - len(s) // 2] for s in shards]
        out += [s[len(s) - len(s) // 2 :] for s in shards]
    return np.concatenate(out)


def _build(family, strategy):
    import keras

    import keras_mcv

    name, kwargs = FAMILIES[family]
    with strategy.scope():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((D,))
        h = keras.layers.Dense(8, activation="tanh")(inputs)
        outputs = keras.layers.Dense(C, activation="softmax")(h)
        model = getattr(keras_mcv, name)(inputs, outputs, **kwargs)
        model.compile(
            optimizer=keras.optimizers.SGD(0.03, momentum=0.9),
            loss="sparse_categorical_crossentropy",
        )
    return model


def _weights(model):
    """Every variable of the model, per replica: position -> list of arrays.

    Keyed by position: a second model in the process gets uniquified names
    (layers and optimizer slots alike).
    """
    out = {}
    for i, v in enumerate(model.variables + model.optimizer.variables + model.mcv_state_variables):
        local = getattr(v.value, "values", None) or (v.value,)
        out[f"{i:03d}"] = [np.asarray(t) for t in local]
    return out


def _run_mirrored(family, out):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )
    x, y = data()
    result = {}
    for tag, strategy, xs, ys in [
        ("dist", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), x, y),
        ("single", tf.distribute.get_strategy(),
         *((x, y) if family == "race" else (single_device_order(x), single_device_order(y)))),
    ]:
        model = _build(family, strategy)
        hist = model.fit(xs, ys, batch_size=BATCH, epochs=3, verbose=0, shuffle=False)
        for key, value in hist.history.items():
            result[f"{tag}/log/{key}"] = np.asarray(value)
        for path, values in _weights(model).items():
            for r, value in enumerate(values):
                result[f"{tag}/var/{path}/{r}"] = value
        result[f"{tag}/history"] = np.asarray(json.dumps(model.mcv_history))
    np.savez(out, **result)


def _run_worker(index, ports, out):
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports.split(",")]},
            "task": {"type": "worker", "index": int(index)},
        }
    )
    import tensorflow as tf

    import keras

    keras.config.disable_traceback_filtering()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = data()
    model = _build("search", strategy)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    options = tf.data.Options()
    # Every worker reads the whole dataset and takes its shard of each batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    hist = model.fit(dataset.with_options(options), epochs=2, verbose=0)
    result = {f"log/{k}": np.asarray(v) for k, v in hist.history.items()}
    result.update({f"var/{p}": v[0] for p, v in _weights(model).items()})
    np.savez(out, **result)


# ---------------------------------------------------------------- the tests


def _python(args, timeout=240, env=None):
    return subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
    """All families in parallel subprocesses (one MirroredStrategy per process)."""
    tmp = tmp_path_factory.mktemp("mirrored")
    procs = {}
    for family in FAMILIES:
        out = str(tmp / f"{family}.npz")
        procs[family] = (
            subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "mirrored", family, out],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            ),
            out,
        )
    results = {}
    for family, (proc, out) in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, log[-3000:]
        with np.load(out) as f:
            results[family] = {k: f[k] for k in f.files}
    return results


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mirrored_matches_single_device(mirrored_runs, family):
    """Same weights on both replicas, equal to one device's; same logs and decisions."""
    r = mirrored_runs[family]
    dist = {k[len("dist/var/"):] for k in r if k.startswith("dist/var/")}
    paths = {k.rsplit("/", 1)[0] for k in dist}
    assert len(paths) >= 10  # MCV state, 4 weights, optimizer slots
    for path in sorted(paths):
        replica0, replica1 = r[f"dist/var/{path}/0"], r[f"dist/var/{path}/1"]
        single = r[f"single/var/{path}/0"]
        np.testing.assert_array_equal(replica0, replica1, err_msg=path)
        np.testing.assert_allclose(replica0, single, rtol=1e-5, atol=1e-5, err_msg=path)
    logs = {k[len("dist/log/"):] for k in r if k.startswith("dist/log/")}
    assert logs == {k[len("single/log/"):] for k in r if k.startswith("single/log/")}
    for key in logs:
        np.testing.assert_allclose(r[f"dist/log/{key}"], r[f"single/log/{key}"], rtol=1e-5, err_msg=key)
    dist_history = json.loads(str(r["dist/history"]))
    single_history = json.loads(str(r["single/history"]))
    assert [e["lr"] for e in dist_history] == pytest.approx([e["lr"] for e in single_history], rel=1e-12)
    for a, b in zip(dist_history, single_history):
        np.testing.assert_allclose(a["candidate_losses"], b["candidate_losses"], rtol=1e-5)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_search_model_ends_identical(tmp_path):
    ports = ",".join(str(p) for p in _free_ports(2))
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "worker", str(i), ports, str(tmp_path / f"w{i}.npz")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    w0, w1 = (np.load(tmp_path / f"w{i}.npz") for i in range(2))
    assert set(w0.files) == set(w1.files)
    assert sum(k.startswith("var/") for k in w0.files) >= 10
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    assert len(w0["log/lr"]) == 2


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        _run_mirrored(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "worker":
        _run_worker(sys.argv[2], sys.argv[3], sys.argv[4])
