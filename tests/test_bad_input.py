"""Bad input: every case raises a clear error before any training time is spent.

One table, one row per kind of bad input the package must refuse. A row builds what a user
would pass, checks the error names the problem (`match`) and, for model rows,
that no training step was traced or run.
"""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

import keras_mcv
import recipes
from keras_mcv import data
from keras_mcv import records as record_lib
from keras_mcv import report as report_lib


def small_model(cls=keras_mcv.SearchModel, **kwargs):
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, activation="softmax")(inputs)
    return cls(inputs, outputs, **kwargs)


def compiled(cls=keras_mcv.SearchModel, optimizer=None, **kwargs):
    model = small_model(cls, **kwargs)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    return model


X = np.zeros((32, 4), "float32")
Y = np.arange(32) % 3


def fit_with(batch_size=16, y=Y, **kwargs):
    model = compiled(**kwargs)
    try:
        model.fit(X, y, batch_size=batch_size, epochs=1, verbose=0)
    finally:
        assert model.trace_count == 0 and model.ops_counts()["backward"] == 0


def image_folder(root, corrupt=False):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.fromarray(np.full((4, 4, 3), 40 * i, "uint8")).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "a" / "broken.png").write_bytes(b"not an image")
    return root


def adience_dir(root, bad_line=False):
    (root / "faces").mkdir(parents=True)
    header = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score\n"
    for fold in range(5):
        lines = header + f"u{fold}\timg{fold}.jpg\t1\t(25, 32)\tf\t0\t0\t1\t1\t0\t0\t0\n"
        if bad_line and fold == 2:
            lines += "u2\tonly-two-columns\n"
        (root / f"fold_{fold}_data.txt").write_text(lines)
    return root


def report_with_corrupt_record(tmp_path):
    src = os.path.join(os.path.dirname(__file__), "fixtures", "runs", "digits_small_cnn", "search1.json")
    (tmp_path / "search1.json").write_text(open(src).read())
    (tmp_path / "broken.json").write_text('{"format": "keras_mcv.run/1", "epochs": [')
    report = report_lib.build_report(tmp_path)
    assert len(report.records) == 1 and "Method 1" in report.markdown
    raise RuntimeError(" | ".join(report.warnings))


CASES = [
    ("empty candidates", lambda p: small_model(candidates=[]), ValueError, "empty"),
    ("non-positive candidates", lambda p: small_model(candidates=[0.1, 0.0]), ValueError, "positive"),
    ("non-finite candidates", lambda p: small_model(candidates=[0.1, float("inf")]), ValueError, "finite"),
    ("validation_fraction 0", lambda p: small_model(validation_fraction=0.0), ValueError, "validation_fraction"),
    ("validation_fraction 1.5", lambda p: small_model(validation_fraction=1.5), ValueError, "validation_fraction"),
    ("batch that cannot be split", lambda p: fit_with(batch_size=1), ValueError, "batch_size=1"),
    ("method not 1, 2, 3", lambda p: small_model(method=0), ValueError, "method"),
    ("alpha outside [0, 1]", lambda p: small_model(method=2, alpha=-0.1), ValueError, "alpha"),
    ("ema outside (0, 1]", lambda p: small_model(keras_mcv.VotingModel, ema=1.5), ValueError, "ema"),
    ("trial_every < 1", lambda p: small_model(trial_every=0), ValueError, "trial_every"),
    (
        "LR schedule to an LR-choosing model",
        lambda p: compiled(optimizer=keras.optimizers.SGD(
            keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9))),
        ValueError, "schedule",
    ),
    ("labels of the wrong shape", lambda p: fit_with(y=np.eye(3)[Y]), ValueError, "categorical_crossentropy"),
    ("labels out of range", lambda p: fit_with(y=Y + 1), ValueError, r"outputs 3 classes"),
    ("unknown recipe", lambda p: recipes.get_config("cifar10_smallcnn"), ValueError, "Did you mean 'cifar10_small_cnn'"),
    ("missing --data path", lambda p: data.load_image_folder(p / "nowhere"), data.DataError, "nowhere"),
    (
        "unreadable zip",
        lambda p: (p / "bad.zip").write_bytes(b"PK garbage") and data.load_image_folder(p / "bad.zip"),
        data.DataError, "bad.zip",
    ),
    (
        "malformed Adience fold file",
        lambda p: data.load_adience(adience_dir(p / "adience", bad_line=True), cache_dir=p / "c"),
        data.DataError, "fold_2_data.txt",
    ),
    ("unreadable run record in report", report_with_corrupt_record, RuntimeError, "broken.json"),
]


@pytest.mark.parametrize("name,make,error,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_clearly(name, make, error, match, tmp_path):
    with pytest.raises(error, match=match):
        make(tmp_path)


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    """The documented choice: a corrupt image is skipped with a warning and a count."""
    root = image_folder(tmp_path / "imgs", corrupt=True)
    with pytest.warns(UserWarning, match="broken.png"):
        loaded = data.load_image_folder(root, cache_dir=tmp_path / "cache")
    assert loaded.skipped == 1 and len(loaded.y_train) == 4


def test_killed_run_leaves_an_incomplete_record(tmp_path):
    """A run killed midway keeps every finished epoch; the report says incomplete."""
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "keras_mcv.cli", "run", "digits_small_cnn", "--method", "voting",
           "--epochs", "500", "--out", str(out), "--verbose", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record_path = out / "digits_small_cnn" / "voting.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if record_path.exists() and len(json.loads(record_path.read_text())["epochs"]) >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run wrote no epoch within 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    record = record_lib.read_record(record_path)
    assert record["status"] == "running"
    assert len(record["epochs"]) >= 2
    # A SIGKILL can land inside a write: then its hidden temporary file stays
    # beside the record, which is still the whole previous version, and the
    # report reads past it.
    leftovers = [f for f in os.listdir(record_path.parent) if f.endswith(".tmp")]
    assert all(f.startswith(".") for f in leftovers)
    report = report_lib.build_report(out)
    assert "(incomplete)" in report.markdown
    assert not report.warnings
