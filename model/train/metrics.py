"""Metrics to CSV (always) and TensorBoard (when the ``tensorboard`` package is installed)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

FIRST_COLUMNS = ("step", "epoch", "lr", "loss", "elapsed_s", "audio_s_per_s")


class MetricsLog:
    """Appends one row per logged step to ``<dir>/metrics.csv``.

    On resume, rows past the checkpoint's step (logged by the killed run after its last
    checkpoint) are dropped first, so the file reads as one clean run.
    """

    def __init__(self, out_dir: Path, resume_step: int = 0, tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] | None = None
        if self.path.exists():
            with self.path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or []) or None
                rows = [r for r in reader if int(float(r["step"])) <= resume_step]
            if self.columns:
                with self.path.open("w", newline="", encoding="utf-8") as f:
                    writer = csv.DictWriter(f, self.columns)
                    writer.writeheader()
                    writer.writerows(rows)
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:  # the tensorboard package is not installed: CSV only
                self._tb = None

    def log(self, row: dict[str, float | int]) -> None:
        if self.columns is None:
            rest = sorted(k for k in row if k not in FIRST_COLUMNS)
            self.columns = [c for c in FIRST_COLUMNS if c in row] + rest
            with self.path.open("w", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, self.columns).writeheader()
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(
                {k: _fmt(row.get(k, "")) for k in self.columns}
            )
        if self._tb is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_metrics(out_dir: Path) -> list[dict[str, str]]:
    """All rows of ``<dir>/metrics.csv`` (for tests and reports)."""
    path = Path(out_dir) / "metrics.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
