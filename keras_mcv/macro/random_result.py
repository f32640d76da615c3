"""The random search's results: trials, stages, the best trial, warnings, ensembles.

References: Bakhshi, Training Neural Networks (lecture 09), sections 4.5 and 5.1.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

from keras_mcv import records

RECORD_NAME = "random_search.json"
TABLE_NAME = "random_search.md"


@dataclasses.dataclass
class TrialRow:
    """One trial of a stage.

    Attributes:
        trial_id: Keras Tuner's trial id.
        values: the hyperparameter values, by name.
        val_loss: the lowest validation loss over the trial's epochs (None if
            it never was finite).
        val_accuracy: the validation accuracy at that epoch.
        best_epoch: that epoch, 1-based.
        test_loss, test_accuracy: the kept model's test numbers (fine stage).
        diverged: True if a loss became NaN or infinite.
        status: "ok", "diverged", "failed" or "missing".
        wall_time_s: the trial's time.
    """

    trial_id: str
    values: dict
    val_loss: Optional[float] = None
    val_accuracy: Optional[float] = None
    best_epoch: Optional[int] = None
    test_loss: Optional[float] = None
    test_accuracy: Optional[float] = None
    diverged: bool = False
    status: str = "ok"
    wall_time_s: Optional[float] = None


@dataclasses.dataclass
class StageResult:
    """A stage: its ranges, epochs and trials (best first)."""

    name: str
    ranges: tuple
    epochs: int
    rows: list

    @property
    def best(self) -> Optional[TrialRow]:
        """The trial of lowest validation loss, or None when none finished."""
        ok = [r for r in self.rows if r.val_loss is not None]
        return ok[0] if ok else None


def rank(rows) -> list:
    """Trials by validation loss, lowest first; unfinished ones last."""
    return sorted(rows, key=lambda r: (r.val_loss is None, r.val_loss or 0.0, r.trial_id))


@dataclasses.dataclass
class RandomSearchResult:
    """The two stages, the best trial, the border warnings and the ensembles.

    Attributes:
        stages: the coarse and the fine `StageResult`.
        warnings: the border warnings (also issued as Python warnings).
        ensembles: `keras_mcv.ensemble.EnsembleResult` of the top k = 1..K
            fine trials on the test set (empty when not asked).
        wall_time_s: the whole search's time.
        settings: the search's arguments.
        dataset: the dataset's name.
    """

    stages: list
    warnings: list
    ensembles: list
    wall_time_s: float
    settings: dict
    dataset: str = ""

    @property
    def best(self) -> Optional[TrialRow]:
        """The fine stage's best trial."""
        return self.stages[-1].best

    def to_markdown(self) -> str:
        """The stages' tables (best first, the best in bold), the warnings and the ensembles."""
        lines = []
        for stage in self.stages:
            names = [r.name for r in stage.ranges]
            lines += [
                f"### {stage.name.capitalize()} stage: {len(stage.rows)} trials, "
                f"{stage.epochs} epochs each",
                "",
                "Ranges: " + "; ".join(str(r) for r in stage.ranges) + ".",
                "",
                "| Trial | " + " | ".join(names)
                + " | Val loss | Val acc. | Best epoch | Test acc. | Time (s) |",
                "|---|" + "---|" * (len(names) + 5),
            ]
            for row in stage.rows:
                bold = "**" if row is stage.best else ""
                status = "" if row.status == "ok" else f" ({row.status})"
                cells = [f"{row.values.get(n, float('nan')):.3g}" for n in names]
                lines.append(
                    f"| {row.trial_id}{status} | " + " | ".join(cells)
                    + f" | {bold}{_fmt(row.val_loss, '.4f')}{bold}"
                    + f" | {_pct(row.val_accuracy)} | {_fmt(row.best_epoch, 'd')}"
                    + f" | {_pct(row.test_accuracy)} | {_fmt(row.wall_time_s, '.1f')} |"
                )
            lines.append("")
        best = self.best
        if best is not None:
            values = ", ".join(f"{k} = {v:.3g}" for k, v in best.values.items())
            lines.append(f"Best: {values} (fine trial {best.trial_id}: validation loss "
                         f"{best.val_loss:.4f}, test accuracy {_pct(best.test_accuracy)}%; "
                         "chosen on validation loss, test numbers reported only).")
        else:
            lines.append("Best: none (no fine trial finished).")
        for text in self.warnings:
            lines.append(f"\nWarning: {text}")
        if self.ensembles:
            lines += ["", "| Ensemble of the top k fine trials | Test acc. | Test loss | "
                      "Gain over the best trial (points) |", "|---|---|---|---|"]
            for e in self.ensembles:
                lines.append(f"| k = {e.k} | {_pct(e.accuracy)} | {e.loss:.4f} | "
                             f"{100 * e.gain:+.2f} |")
        lines.append(f"\nTotal wall time: {self.wall_time_s:.1f} s.")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """A JSON-ready dict of everything above."""
        return {
            "format": "keras_mcv.random_search/1",
            "dataset": self.dataset,
            "settings": self.settings,
            "wall_time_s": self.wall_time_s,
            "stages": [
                {"name": s.name, "epochs": s.epochs,
                 "ranges": [dataclasses.asdict(r) for r in s.ranges],
                 "rows": [dataclasses.asdict(r) for r in s.rows],
                 "best": None if s.best is None else s.best.trial_id}
                for s in self.stages
            ],
            "warnings": list(self.warnings),
            "ensembles": [
                {"k": e.k, "accuracy": e.accuracy, "loss": e.loss, "gain": e.gain,
                 "single_accuracy": e.single_accuracy, "members": list(e.names or ())}
                for e in self.ensembles
            ],
        }

    def save(self, out_dir) -> str:
        """Write `random_search.json` and `random_search.md` to `out_dir`; return the JSON's path."""
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, RECORD_NAME)
        # The run-record writer: atomic, strict JSON (non-finite floats as null).
        records.write_record(path, self.to_dict())
        markdown = self.to_markdown()
        records.write_atomic(os.path.join(out_dir, TABLE_NAME), lambda f: f.write(markdown))
        return path


def _fmt(value, spec) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"
