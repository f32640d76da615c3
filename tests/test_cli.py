"""The `keras-mcv` command line at its edges: bad arguments and data give one line and exit
status 2, records go to a directory of the user's own, `--help` and `list` start without
TensorFlow, batch sizes at the smallest end train, and the optional extras are declared."""

import json
import os
import subprocess
import sys
import tomllib

import pytest

from keras_mcv.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize("command", [
    ["run", "digits_small_cnn"],
    ["compare", "digits_small_cnn", "--no-macro"],
    ["tune", "digits_small_cnn"],
])
@pytest.mark.parametrize("flags", [["--epochs", "-1"], ["--epochs", "0"], ["--batch-size", "0"]])
def test_bad_numbers_are_usage_errors(command, flags, capsys):
    if command[0] == "tune" and flags[0] == "--epochs":
        flags = ["--max-epochs", flags[1]]
    assert main([*command, *flags]) == 2
    capsys.readouterr()


@pytest.mark.parametrize("command", [
    ["run", "cifar10_small_cnn"],
    ["compare", "cifar10_small_cnn", "--no-macro", "--methods", "race"],
    ["tune", "cifar10_small_cnn"],
])
def test_a_missing_data_path_is_one_line_and_status_2(command, tmp_path, capsys):
    missing = str(tmp_path / "no-such-cifar.zip")
    assert main([*command, "--data", missing, "--out", str(tmp_path / "out")]) == 2
    one_line_error(capsys, missing)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["run", "compare", "tune"])
def test_an_unreadable_zip_is_one_line_and_status_2(command, tmp_path, capsys):
    bad = tmp_path / "cifar.zip"
    bad.write_bytes(b"this is not a zip file")
    argv = [command, "cifar10_small_cnn", "--data", str(bad), "--out", str(tmp_path / "out")]
    if command == "compare":
        argv += ["--no-macro", "--methods", "race"]
    assert main(argv) == 2
    one_line_error(capsys, str(bad))


def test_digits_refuses_a_data_path(capsys):
    assert main(["run", "digits_small_cnn", "--data", "/no/such/place"]) == 2
    one_line_error(capsys, "does not apply")


def test_runs_go_to_runs_with_the_users_umask(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o027)
    try:
        assert main(["run", "digits_small_cnn", "--epochs", "1", "--subset", "200",
                     "--verbose", "0"]) == 0
    finally:
        os.umask(old)
    path = tmp_path / "runs" / "digits_small_cnn" / "race.json"
    assert json.loads(path.read_text())["status"] == "complete"
    assert (path.stat().st_mode & 0o777) == 0o640
    assert "record: runs/digits_small_cnn/race.json" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["search1", "tuned", "voting", "discard"])
@pytest.mark.parametrize("batch", ["1", "2"])
def test_the_smallest_batch_sizes_train_the_digits_cnn(method, batch, tmp_path):
    """`--batch-size 1` fits batches of 2 (one to train, one to validate); 21 examples
    leave a last batch of one, which trains without trials."""
    assert main(["run", "digits_small_cnn", "--method", method, "--batch-size", batch,
                 "--subset", "21", "--epochs", "1", "--out", str(tmp_path), "--verbose", "0"]) == 0
    record = json.loads((tmp_path / "digits_small_cnn" / f"{method}.json").read_text())
    assert record["status"] == "complete"
    fit_batch = 2 * int(batch)
    assert record["ops"]["backward"] >= -(-21 // fit_batch)


def test_help_and_list_start_without_tensorflow():
    code = (
        "import sys, io, contextlib\n"
        "from keras_mcv.cli import main\n"
        "listing, usage = io.StringIO(), io.StringIO()\n"
        "with contextlib.redirect_stdout(listing):\n"
        "    status = main(['list'])\n"
        "with contextlib.redirect_stdout(usage):\n"
        "    help_status = main(['--help'])\n"
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "print(status, help_status, heavy)\n"
        "print(listing.getvalue() + '----' + usage.getvalue())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    first, *rest = result.stdout.splitlines()
    assert first == "0 0 []", result.stdout + result.stderr
    listing, usage = "\n".join(rest).split("----")
    listed = [line for line in listing.splitlines() if line.startswith("  ")]
    # Every recipe and method comes with its description, not a bare name.
    assert len(listed) > 10 and all(len(line.split()) > 3 for line in listed)
    assert usage.startswith("usage: keras-mcv")


def test_tensorboard_is_an_optional_extra():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    extra = project["optional-dependencies"]["tensorboard"]
    assert len(extra) == 1 and extra[0].startswith("tensorboard")
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert 'keras_mcv[tensorboard]' in readme or '".[tensorboard]"' in readme
