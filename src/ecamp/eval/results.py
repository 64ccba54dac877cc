"""The pipeline's results rows, pivoted for tables: pre-trained vs random-init encoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def pivot_results(
    rows: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, str], dict[str, float | None]]:
    """``{(task, metric): {encoder: value}}`` from ``results.json`` rows (``None`` = no value)."""
    keyed: dict[tuple[str, str], dict[str, float | None]] = {}
    for r in rows:
        v = r["value"]
        keyed.setdefault((r["task"], r["metric"]), {})[r["encoder"]] = (
            None if v is None else float(v)
        )
    return keyed
