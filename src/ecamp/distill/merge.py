"""Join distilled reports to the pre-training manifest by study id (column ``distilled``).

The release's users joined the LLM output to their image list by hand; here one command
does it, for any number of shard outputs, and says how many manifest rows got no text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecamp.errors import DataError, UserError
from ecamp.utils.io import atomic_write


def normalize_id(value: Any) -> str:
    """One spelling per study id: "s50414267", "50414267" and 50414267.0 all -> "50414267"."""
    s = str(value).strip()
    if s.endswith(".0") and s[:-2].isdigit():
        s = s[:-2]
    if len(s) > 1 and s[0] in "sS" and s[1:].isdigit():
        s = s[1:]
    return s


def read_table(path: str | Path):
    """A CSV / TSV / JSONL / Parquet file as a DataFrame (ids kept as text)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            return pd.read_json(p, lines=suffix == ".jsonl", dtype=False)
        if suffix == ".parquet":
            return pd.read_parquet(p)
        return pd.read_csv(
            p, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False
        )
    except (ValueError, OSError) as e:
        raise DataError(f"{p}: cannot read the table ({e})") from None


def write_table(df, path: str | Path) -> None:
    """Write a DataFrame by extension, atomically."""
    p = Path(path)
    suffix = p.suffix.lower()

    def write(tmp: str) -> None:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif suffix in (".jsonl", ".json"):
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            df.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")

    atomic_write(p, write)


def read_distilled(paths: list[str | Path]) -> dict[str, str]:
    """id -> distilled text from one or more ``ecamp distill`` outputs (later files win)."""
    out: dict[str, str] = {}
    for path in paths:
        df = read_table(path)
        for col in ("id", "distilled"):
            if col not in df.columns:
                raise DataError(f"{path}: not an `ecamp distill` output (no {col!r} column)")
        for i, text in zip(df["id"], df["distilled"]):
            out[normalize_id(i)] = "" if text is None or (isinstance(text, float)) else str(text)
    return out


def merge_manifest(
    manifest: str | Path,
    distilled: list[str | Path],
    output: str | Path | None = None,
    id_column: str = "study_id",
    column: str = "distilled",
) -> dict[str, Any]:
    """Add / replace ``column`` in the manifest; returns counts (rows, matched, missing)."""
    df = read_table(manifest)
    if id_column not in df.columns:
        raise DataError(
            f"{manifest}: no {id_column!r} column to join on (columns: {list(df.columns)}); see --id-column"
        )
    texts = read_distilled(list(distilled))
    ids = df[id_column].map(normalize_id)
    df[column] = ids.map(texts).fillna("")
    matched = int(ids.isin(texts.keys()).sum())
    out = Path(output) if output else Path(manifest)
    write_table(df, out)
    stats = {
        "rows": len(df),
        "matched": matched,
        "missing": len(df) - matched,
        "studies_distilled": len(texts),
        "output": str(out),
    }
    missing_ids = ids[~ids.isin(texts.keys())].unique()[:5].tolist()
    if missing_ids:
        stats["missing_examples"] = missing_ids
    return stats


def dumps(stats: dict[str, Any]) -> str:
    return json.dumps(stats)
