"""Training curves from the ``metrics.csv`` / ``eval.csv`` files the training loop writes.

One figure per file: one small panel per scalar (the losses of ECAMP differ by an order of
magnitude, so they do not share an axis), step on the x-axis.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ecamp.errors import DataError

if TYPE_CHECKING:  # heavy: imported where used, so `ecamp --help` stays fast
    import pandas as pd

METRIC_FILES = ("metrics.csv", "eval.csv")
# bookkeeping columns: not curves
_SKIP = {"step", "epoch", "lr", "images_per_s", "samples_per_s", "seconds", "time", "n"}


def find_metric_files(folder: str | Path) -> list[Path]:
    """``metrics.csv`` / ``eval.csv`` files below ``folder`` (not in ``*.previous`` backups)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [p for name in METRIC_FILES for p in root.rglob(name)]
    return sorted(
        p
        for p in found
        if not any(part.endswith(".previous") for part in p.relative_to(root).parts)
    )


def read_metrics(path: str | Path) -> pd.DataFrame:
    """The numeric columns of a metrics CSV, sorted by step (later rows win on duplicate steps)."""
    import pandas as pd

    p = Path(path)
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{p}: cannot read the metrics table ({e})") from None
    if "step" not in df.columns:
        raise DataError(f"{p}: no 'step' column; not a training metrics file")
    df = df.apply(pd.to_numeric, errors="coerce")
    return df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def curve_columns(df: pd.DataFrame) -> list[str]:
    """Columns worth a panel: numeric, not bookkeeping, with at least one finite value."""
    import numpy as np

    return [c for c in df.columns if c not in _SKIP and np.isfinite(df[c].to_numpy(float)).any()]


def curves_png(df: pd.DataFrame, title: str, cols: int = 4, panel_inches: float = 2.6) -> bytes:
    """PNG bytes of one panel per curve column (empty figure text when there is none)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = curve_columns(df)
    n = max(1, len(names))
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * panel_inches, rows * panel_inches * 0.8 + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=10)
    if not names:
        fig.text(0.5, 0.5, "no scalar logged", ha="center", va="center")
    x = df["step"].to_numpy(float)
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        y = df[name].to_numpy(float)
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], marker="." if ok.sum() < 30 else None, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
