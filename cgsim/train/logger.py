"""Training logs: a CSV file (always) and TensorBoard event files."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class MetricLogger:
    """Append rows of scalars to ``DIR/metrics.csv`` and TensorBoard ``DIR/tensorboard/``.

    Columns are fixed by the first row; later rows may omit keys (empty cells). On resume
    the CSV is appended to.
    """

    def __init__(self, directory: str | Path, tensorboard: bool = True) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / "metrics.csv"
        self.fields: list[str] | None = None
        if self.csv_path.is_file() and self.csv_path.stat().st_size > 0:
            with open(self.csv_path, newline="") as fh:
                self.fields = next(csv.reader(fh))
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tensorboard"))

    def log(self, row: dict[str, Any], step: int) -> None:
        """Write one row (``step`` is the x-axis in TensorBoard)."""
        row = {"step": step, **row}
        if self.fields is None:
            self.fields = list(row)
            with open(self.csv_path, "w", newline="") as fh:
                csv.writer(fh).writerow(self.fields)
        with open(self.csv_path, "a", newline="") as fh:
            csv.writer(fh).writerow([row.get(k, "") for k in self.fields])
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.tb is not None:
            self.tb.close()
