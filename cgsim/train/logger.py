"""Training logs: a CSV file (always) and TensorBoard event files."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from cgsim.io_utils import write_text_atomic


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
        """Write one row (``step`` is the x-axis in TensorBoard).

        The CSV is rewritten atomically with the new row, so a full disk never leaves half a row.
        """
        row = {"step": step, **row}
        text = ""
        if self.fields is None:
            self.fields = list(row)
        elif self.csv_path.is_file():
            text = self.csv_path.read_text()
        buf = io.StringIO()
        writer = csv.writer(buf)
        if not text:
            writer.writerow(self.fields)
        writer.writerow([row.get(k, "") for k in self.fields])
        write_text_atomic(self.csv_path, text + buf.getvalue())
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.tb is not None:
            self.tb.close()
