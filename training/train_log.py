"""The training job's log: ``log.csv`` (and TensorBoard when installed) on rank 0, and its result.

On resume the CSV keeps its rows up to the resumed step and drops the later ones, so the
file always tells one run's history.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS = ("loss_g", "loss_d", "adv_g", "l1", "lpips", "d_real", "d_fake", "lam_mean", "paired", "lr")
"""The scalars of one step, in the CSV's column order (after ``step``, before ``sec_per_step``)."""


class TrainLog:
    """CSV (and TensorBoard when installed) on rank 0; on resume, later rows are dropped."""

    def __init__(self, path: Path, start: int, active: bool) -> None:
        self.active = active
        self.path = path
        self.tb = None
        if not active:
            return
        rows: list[dict[str, str]] = []
        if start > 0 and path.is_file():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
        self.f = path.open("w", newline="")
        self.cols = ["step", *METRICS, "sec_per_step"]
        self.w = csv.DictWriter(self.f, fieldnames=self.cols, extrasaction="ignore")
        self.w.writeheader()
        self.w.writerows(rows)
        self.f.flush()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tb"))
        except ImportError:  # tensorboard is optional
            self.tb = None

    def write(self, step: int, row: dict[str, float]) -> None:
        if not self.active:
            return
        self.w.writerow({"step": step, **{k: f"{v:.6g}" for k, v in row.items()}})
        self.f.flush()
        if self.tb is not None:
            for key, v in row.items():
                self.tb.add_scalar(f"train/{key}", v, step)

    def close(self) -> None:
        if self.active:
            self.f.close()
            if self.tb is not None:
                self.tb.close()


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run produced."""

    steps: int
    final: dict[str, float]
    output_dir: Path
    checkpoint: Path
    log_csv: Path
    control: bool
    trainable: dict[str, int] = field(default_factory=dict)
    peak_gpu_gib: float | None = None
    """Peak GPU memory allocated during the training steps (after set-up), this process."""
    history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Every field but ``history``, paths as strings (``result.json``)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(self).items() if k != "history"}
