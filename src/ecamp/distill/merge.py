"""Join distilled reports to the pre-training manifest by study id (column ``distilled``).

The release's users joined the LLM output to their image list by hand; here one command
does it, for any number of shard outputs, and says how many manifest rows got no text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecamp.errors import DataError, UserError
from ecamp.utils import tables
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
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return tables.read_jsonl(p)
    if suffix == ".json":
        return tables.read_json(p)
    if suffix == ".parquet":
        return tables.read_parquet(p)
    return tables.read_csv(
        p, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False
    )


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


def _blank(values) -> Any:
    """True where a column value holds no text (missing, NaN or whitespace)."""
    return values.isna() | (values.astype(str).str.strip() == "")


def merge_manifest(
    manifest: str | Path,
    distilled: list[str | Path],
    output: str | Path | None = None,
    id_column: str = "study_id",
    column: str = "distilled",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fill ``column`` of the manifest from distilled outputs; returns counts.

    Nothing is ever lost: a row without distilled text keeps the value it had, and a row
    whose ``column`` already holds text keeps it unless ``overwrite`` (then new, non-empty
    text replaces it).  When no manifest id matches a distilled id, nothing is written and
    a DataError says so (a wrong ``id_column`` or the wrong files, not an empty result).
    """
    df = read_table(manifest)
    if id_column not in df.columns:
        raise DataError(
            f"{manifest}: no {id_column!r} column to join on (columns: {list(df.columns)}); see --id-column"
        )
    texts = read_distilled(list(distilled))
    ids = df[id_column].map(normalize_id)
    found = ids.isin(texts.keys())
    matched = int(found.sum())
    if len(df) and not matched:
        raise DataError(
            f"{manifest}: none of its {len(df)} {id_column!r} values (e.g. "
            f"{ids.iloc[0]!r}) matches an id of the {len(texts)} distilled report(s) in "
            f"{', '.join(map(str, distilled))} (e.g. {next(iter(texts), None)!r}); nothing "
            "written. Check --id-column and that the files belong together."
        )
    new = ids.map(texts).fillna("").astype(str)
    if column in df.columns:
        old = df[column]
        has_old, has_new = ~_blank(old), new.str.strip() != ""
        replace = has_new & (~has_old | overwrite)
        kept = int((has_old & has_new & ~replace & (old.astype(str) != new)).sum())
        df[column] = old.where(~replace, new).where(has_old | replace, "")
    else:
        kept = 0
        df[column] = new
    out = Path(output) if output else Path(manifest)
    write_table(df, out)
    stats: dict[str, Any] = {
        "rows": len(df),
        "matched": matched,
        "missing": len(df) - matched,
        "studies_distilled": len(texts),
        "kept_existing": kept,
        "output": str(out),
    }
    missing_ids = ids[~found].unique()[:5].tolist()
    if missing_ids:
        stats["missing_examples"] = missing_ids
    return stats


def dumps(stats: dict[str, Any]) -> str:
    return json.dumps(stats)
