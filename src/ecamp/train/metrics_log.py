"""Scalar logging: a CSV file (always) and TensorBoard (optional), rank 0 only.

The CSV's columns grow when a new scalar first appears (the file is rewritten once).
On resume, rows after the resumed step are dropped so the file tells one story.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from ecamp.utils.io import atomic_write_text
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

_LEAD = ("step", "epoch", "lr", "loss")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


class MetricsLogger:
    """Append scalar rows to ``output_dir/<csv_name>`` and TensorBoard tag ``<tb_prefix>/<key>``."""

    def __init__(
        self,
        output_dir: str | Path,
        csv_name: str = "metrics.csv",
        tensorboard: bool = False,
        tb_prefix: str = "train",
        enabled: bool = True,
        resume_step: int | None = None,
        tb_writer: Any = None,
    ) -> None:
        self.path = Path(output_dir) / csv_name
        self.enabled = enabled
        self.tb_prefix = tb_prefix
        self.columns: list[str] = []
        self.tb = tb_writer
        self._own_tb = False
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            self._truncate_after(resume_step)
        if tensorboard and self.tb is None:
            self.tb = open_tensorboard(Path(output_dir) / "tensorboard", resume_step)
            self._own_tb = self.tb is not None

    def _truncate_after(self, step: int) -> None:
        with self.path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            self.columns = list(reader.fieldnames or [])
            rows = [r for r in reader if _as_int(r.get("step")) <= step]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
        atomic_write_text(self.path, buf.getvalue())

    def log(self, row: dict[str, Any]) -> None:
        """Write one row; ``row['step']`` is the x-axis for TensorBoard."""
        if not self.enabled:
            return
        new = [k for k in row if k not in self.columns]
        if new:
            if self.path.is_file() and self.columns:
                with self.path.open(newline="", encoding="utf-8") as f:
                    old = list(csv.DictReader(f))
            else:
                old = []
            lead = [c for c in _LEAD if c in row or c in self.columns]
            rest = [c for c in self.columns + new if c not in lead]
            self.columns = lead + rest
            self._rewrite(old)
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: _fmt(v) for k, v in row.items()}
            )
        if self.tb is not None:
            step = int(row.get("step", 0))
            for k, v in row.items():
                if k in ("step", "epoch") or not isinstance(v, (int, float)):
                    continue
                self.tb.add_scalar(f"{self.tb_prefix}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None and self._own_tb:
            self.tb.close()
        self.tb = None


def open_tensorboard(log_dir: Path, resume_step: int | None) -> Any:
    """A SummaryWriter, or None (with a warning) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # pragma: no cover - tensorboard is a declared dependency
        log.warning("TensorBoard logging disabled: %s", e)
        return None
    # purge_step hides events a killed run wrote after the checkpoint we resume from
    return SummaryWriter(str(log_dir), purge_step=(resume_step + 1) if resume_step else None)


def _as_int(v: Any) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return 0
