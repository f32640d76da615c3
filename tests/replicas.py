"""Shared pieces of the tests that run a model under tf.distribute in a subprocess.

A `MirroredStrategy` over two logical CPUs must be configured before
TensorFlow starts, so those tests run their test file again as a script in a
fresh process, which writes every variable's per-replica values to an `.npz`.
"""

import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def store(result: dict, prefix: str, variables) -> None:
    """Put each variable's value on each replica into `result[f"{prefix}/{i}/{r}"]`."""
    for i, variable in enumerate(variables):
        local = getattr(variable.value, "values", None) or (variable.value,)
        for r, value in enumerate(local):
            result[f"{prefix}/{i}/{r}"] = np.asarray(value)


def run_script(argv, out: str, timeout: int = 240) -> dict:
    """Run `python argv... out` from the repository root; return the `.npz` it wrote."""
    proc = subprocess.run(
        [sys.executable, *argv, out], capture_output=True, text=True, timeout=timeout,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},  # this tree's keras_mcv
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}
