"""The macro-CV grid's table (thesis Tables 4.2-4.4), its winner and its cost.

References: thesis section 4.5.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

from keras_mcv import records
from keras_mcv.macro.settings import (
    _HP_DECAY,
    _HP_LR,
    _HP_OPTIMIZER,
    OBJECTIVE,
    OPTIMIZER_LABELS,
    OPTIMIZERS,
    RECORD_NAME,
    TABLE_NAME,
)

# ----------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class MacroRow:
    """One configuration of the grid (one row of Tables 4.2-4.4).

    Attributes:
        optimizer: `"sgd"` or `"adam"`.
        lr: initial learning rate.
        decay: `InverseTimeDecay` rate, or None (stage 1).
        mean_epochs: mean best epoch over the splits (the table's "Epochs").
        retrain_epochs: epochs of the retrain on all training data.
        best_val_loss: mean over the splits of the minimum validation loss;
            the selection criterion.
        test_loss: test loss of the retrained model.
        test_accuracy: test accuracy of the retrained model, in [0, 1].
        diverged: True if a loss became NaN or infinite.
        wall_time_s: time of the trial (splits and retrain).
        status: `"ok"`, `"diverged"`, `"failed"` (an exception; see
            `message`) or `"missing"` (never ran).
        stage: 1 or 2.
        best_epochs: best epoch of each split.
        val_losses: minimum validation loss of each split.
        ops: batch counts `{"forward", "backward", "step"}`.
        trial_id: Keras Tuner trial id.
        message: error message of a failed trial.
    """

    optimizer: str
    lr: float
    decay: Optional[float]
    mean_epochs: Optional[float] = None
    retrain_epochs: Optional[int] = None
    best_val_loss: Optional[float] = None
    test_loss: Optional[float] = None
    test_accuracy: Optional[float] = None
    diverged: bool = False
    wall_time_s: Optional[float] = None
    status: str = "ok"
    stage: int = 1
    best_epochs: list = dataclasses.field(default_factory=list)
    val_losses: list = dataclasses.field(default_factory=list)
    ops: dict = dataclasses.field(default_factory=dict)
    trial_id: Optional[str] = None
    message: Optional[str] = None

    @property
    def config(self) -> tuple:
        """`(optimizer, lr, decay)`."""
        return (self.optimizer, self.lr, self.decay)

    def label(self) -> str:
        text = f"{OPTIMIZER_LABELS.get(self.optimizer, self.optimizer)} lr={self.lr:g}"
        return text + (f" decay={self.decay:g}" if self.decay else "")


_FORM_TEXT = {
    "torch": "PyTorch's momentum form (`TorchSGD`, momentum buffer in gradient units)",
    "keras": "Keras's momentum form (`keras.optimizers.SGD`, velocity in weight units)",
}


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "None"
    return format(value, spec)


@dataclasses.dataclass
class MacroResult:
    """The table of a macro-CV search, its winner, and its cost.

    Attributes:
        rows: one `MacroRow` per configuration, in table order (SGD without
            decay, SGD with decay, then Adam), like Tables 4.2-4.4.
        winner: the row with the lowest `best_val_loss` among rows with status
            "ok" (ties: the earlier row), or None.
        wall_time_s: elapsed time of the `run_macro_cv` call that produced the
            table, retrains included (on the chief in distributed mode). A
            resumed search counts only the resumed session.
        trial_time_s: sum of the trials' own times over all sessions and
            workers.
        settings: the search's arguments, for the run record.
        dataset: name of the dataset.
        started: ISO-8601 start time of the call.
    """

    rows: list
    winner: Optional[MacroRow]
    wall_time_s: float
    trial_time_s: float
    settings: dict = dataclasses.field(default_factory=dict)
    dataset: str = ""
    started: str = ""

    @classmethod
    def from_oracle(cls, oracle, settings=None, **kwargs) -> "MacroResult":
        """Assemble the table from the trials of a (chief or local) oracle."""
        rows = []
        for trial in oracle.trials.values():
            v = trial.hyperparameters.values
            decay = float(v.get(_HP_DECAY) or 0.0) or None
            row = MacroRow(
                optimizer=v[_HP_OPTIMIZER], lr=float(v[_HP_LR]), decay=decay,
                stage=2 if decay else 1, trial_id=trial.trial_id,
            )
            m = trial.metrics

            def get(name):
                if not m.exists(name):
                    return None
                value = m.get_last_value(name)
                return None if value is None else float(value)

            if trial.status == "COMPLETED":
                row.diverged = bool(get("diverged"))
                row.status = "diverged" if row.diverged else "ok"
                row.best_val_loss = get(OBJECTIVE)
                if row.best_val_loss is not None and not math.isfinite(
                    row.best_val_loss
                ):
                    row.best_val_loss = None
                row.mean_epochs = get("mean_epochs")
                re = get("retrain_epochs")
                row.retrain_epochs = None if re is None else int(re)
                row.test_loss = get("test_loss")
                row.test_accuracy = get("test_accuracy")
                row.wall_time_s = get("wall_time_s")
                r = 0
                while m.exists(f"best_epoch_{r}"):
                    row.best_epochs.append(int(get(f"best_epoch_{r}")))
                    row.val_losses.append(get(f"val_loss_{r}"))
                    r += 1
                row.ops = {
                    k: int(get(f"ops_{k}"))
                    for k in ("forward", "backward", "step")
                    if get(f"ops_{k}") is not None
                }
            elif trial.status in ("FAILED", "INVALID"):
                row.status = "failed"
                lines = (trial.message or "").strip().splitlines()
                row.message = lines[-1] if lines else None
            else:
                row.status = "missing"
            rows.append(row)
        optimizers = tuple((settings or {}).get("optimizers", OPTIMIZERS))
        lrs = tuple((settings or {}).get("learning_rates", ()))
        decays = tuple((settings or {}).get("decays", ()))

        def order(row):
            opt = optimizers.index(row.optimizer) if row.optimizer in optimizers else 99
            lr_i = lrs.index(row.lr) if row.lr in lrs else 99
            d_i = decays.index(row.decay) if row.decay in decays else -1
            return (opt, row.stage, lr_i, d_i, row.lr)

        rows.sort(key=order)
        ok = [r for r in rows if r.status == "ok" and r.best_val_loss is not None]
        winner = min(ok, key=lambda r: r.best_val_loss) if ok else None
        trial_time = sum(r.wall_time_s or 0.0 for r in rows)
        return cls(rows=rows, winner=winner, trial_time_s=trial_time,
                   settings=dict(settings or {}), **kwargs)

    def to_markdown(self) -> str:
        """The table in the form of thesis Tables 4.2-4.4 (winner in bold)."""
        lines = [
            "| Optimizer | LR | LR Decay | Epochs | Val Loss | Test Loss "
            "| Test Acc | Time (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            bold = "**" if row is self.winner else ""
            acc = None if row.test_accuracy is None else 100 * row.test_accuracy
            status = "" if row.status == "ok" else f" ({row.status})"
            lines.append(
                f"| {OPTIMIZER_LABELS.get(row.optimizer, row.optimizer)}{status} "
                f"| {row.lr:g} | {'–' if not row.decay else format(row.decay, 'g')} "
                f"| {_fmt(row.mean_epochs, '.1f')} "
                f"| {bold}{_fmt(row.best_val_loss, '.4f')}{bold} "
                f"| {bold}{_fmt(row.test_loss, '.4f')}{bold} "
                f"| {bold}{_fmt(acc, '.2f')}{bold} "
                f"| {_fmt(row.wall_time_s, '.1f')} |"
            )
        repeats = self.settings.get("repeats", "?")
        winner = (
            f"{self.winner.label()} (lowest mean validation loss over "
            f"{repeats} stratified splits; test numbers are reported, not "
            "used for selection)"
            if self.winner else "none (every configuration diverged or failed)"
        )
        form = self.settings.get("momentum_form")
        lines += [""]
        if form is not None and "sgd" in self.settings.get("optimizers", OPTIMIZERS):
            lines.append(f"Momentum SGD: {_FORM_TEXT.get(form, form)}.")
        lines += [
            f"Winner: {winner}.",
            f"Total wall time: {self.wall_time_s:.1f} s (whole search, retrains "
            f"included); sum of trial times: {self.trial_time_s:.1f} s.",
        ]
        return "\n".join(lines) + "\n"

    def to_record(self, recipe: Optional[str] = None) -> dict:
        """The run record (`keras_mcv.records` format, kind "macro").

        `rows` holds every `MacroRow` field, `winner` is the winner's index into
        `rows` (or None), `test` the winner's test numbers, `ops` the batch
        passes of the whole search (training steps, plus validation and test
        forwards), and `wall_time_s` the wall time of the whole search.
        """
        ops = {"forward": 0, "backward": 0, "step": 0}
        for row in self.rows:
            for k in ops:
                ops[k] += row.ops.get(k, 0)
        complete = bool(self.rows) and all(
            r.status in ("ok", "diverged") for r in self.rows
        )
        winner = self.winner
        record = records.new_record(
            "macro", recipe or self.dataset, "macro_cv", self.settings
        )
        if self.started:
            record["started"] = self.started
        records.finalize(
            record,
            "complete" if complete else "incomplete",
            wall_time_s=self.wall_time_s,
            test=(
                {"loss": winner.test_loss, "accuracy": winner.test_accuracy}
                if winner else None
            ),
            ops=ops,
            rows=[dataclasses.asdict(r) for r in self.rows],
            winner=self.rows.index(winner) if winner else None,
        )
        record["trial_time_s"] = self.trial_time_s
        return record

    def save(self, out_dir, recipe: Optional[str] = None) -> str:
        """Write `macro_cv.json` (run record) and `macro_cv.md` to `out_dir`.

        Args:
            out_dir: directory, created if needed.
            recipe: recipe name of the record. Defaults to the dataset name.

        Returns:
            The path of the record.
        """
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, RECORD_NAME)
        records.write_record(path, self.to_record(recipe))
        markdown = self.to_markdown()
        records.write_atomic(os.path.join(out_dir, TABLE_NAME), lambda f: f.write(markdown))
        return path
