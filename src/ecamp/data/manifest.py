"""The one table every dataset becomes, and the one vocabulary of its columns and splits.

Every manifest, pre-training or downstream, names its image column ``image`` (:data:`IMAGE`)
and its splits ``train`` | ``val`` | ``test`` (:data:`SPLITS`).  Readers also accept the older
spellings (:func:`normalize_manifest`): a ``path`` column is read as ``image``, and splits
``validate`` / ``valid`` / ``validation`` / ``dev`` as ``val``, so existing files still load;
writers write only the new names.

A *pre-training manifest* has one row per image:

=============  =====================================================================
column         meaning
=============  =====================================================================
id             unique string key of the image (MIMIC: the dicom_id)
image          image path, absolute or relative to an image root (see below)
report         report text used for MLM (MIMIC: FINDINGS + IMPRESSION); never empty
distilled      distilled report (SPEC section 1); may be empty
study_id       the report/study the image belongs to (several images may share one)
split          train | val | test
guidance_id    optional key into a guidance store (defaults to ``id``)
=============  =====================================================================

``id``, ``image`` and ``report`` are required; ``distilled`` defaults to "", ``study_id`` to
the id and ``split`` to "train".  Extra columns (labels, boxes, masks of the downstream
tasks) are kept.  A *downstream manifest* (:mod:`ecamp.data.sources.common`) shares ``id``,
``image`` and ``split`` and carries its task's targets.

Tables are CSV (``.csv``, ``.csv.gz``), JSON lines (``.jsonl``, ``.jsonl.gz``) or Parquet
(``.parquet``), chosen by extension.  :func:`read_table` records the table's folder in
``df.attrs["root"]`` so relative image paths can be resolved without extra arguments, and
normalises the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecamp.errors import DataError, UserError
from ecamp.utils import tables
from ecamp.utils.io import atomic_write
from ecamp.utils.logging import get_logger

if TYPE_CHECKING:  # heavy: imported where used, so `ecamp --help` stays fast
    import pandas as pd

log = get_logger(__name__)

IMAGE = "image"  # the image column of every manifest
SPLITS: tuple[str, ...] = ("train", "val", "test")
# older spellings readers still accept: downstream manifests named the image column "path",
# pre-training manifests (and MIMIC-CXR's split file) called the validation split "validate"
COLUMN_ALIASES = {"path": IMAGE}
SPLIT_ALIASES = {"validate": "val", "valid": "val", "validation": "val", "dev": "val"}
REQUIRED_COLUMNS: tuple[str, ...] = ("id", IMAGE, "report")
PRETRAIN_COLUMNS: tuple[str, ...] = ("id", IMAGE, "report", "distilled", "study_id", "split")
# string columns that must never be parsed as numbers (ids like "00012" keep their zeros)
_STR_COLUMNS = (
    "id",
    IMAGE,
    *COLUMN_ALIASES,
    "report",
    "distilled",
    "study_id",
    "split",
    "guidance_id",
)


def _kind(path: Path) -> str:
    name = path.name.lower()
    for ext, kind in (
        (".csv", "csv"),
        (".csv.gz", "csv"),
        (".jsonl", "jsonl"),
        (".jsonl.gz", "jsonl"),
    ):
        if name.endswith(ext):
            return kind
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    raise UserError(
        f"{path}: unknown table format; use .csv, .csv.gz, .jsonl, .jsonl.gz or .parquet"
    )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV / JSONL / Parquet table (by extension); id-like columns stay strings."""
    p = Path(path)
    kind = _kind(p)
    if not p.is_file():
        raise UserError(f"manifest {p} does not exist")
    if kind == "csv":
        dtypes = dict.fromkeys(_STR_COLUMNS, str)
        df = tables.read_csv(
            p, dtype=dtypes, keep_default_na=False, na_values=[""], what="manifest"
        )
    elif kind == "jsonl":
        df = tables.read_jsonl(p, what="manifest")
    else:
        df = tables.read_parquet(p, what="manifest")
    df = normalize_manifest(df)
    df.attrs["source"] = str(p)
    df.attrs["root"] = str(p.resolve().parent)
    return df


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV / JSONL / Parquet (by extension), atomically."""
    p = Path(path)
    kind = _kind(p)
    out = df.reset_index(drop=True)
    compression = "gzip" if p.name.lower().endswith(".gz") else None

    def write(tmp: str) -> None:
        if kind == "csv":
            out.to_csv(tmp, index=False, compression=compression)
        elif kind == "jsonl":
            out.to_json(
                tmp, orient="records", lines=True, force_ascii=False, compression=compression
            )
        else:
            out.to_parquet(tmp, index=False)

    return atomic_write(p, write)


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str | None = None) -> None:
    """Raise a :class:`UserError` naming the file, the missing column and the present ones."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        src = source or df.attrs.get("source", "<table>")
        raise UserError(
            f"manifest {src} lacks required column(s) {', '.join(repr(m) for m in missing)}; "
            f"columns present: {', '.join(map(str, df.columns)) or '(none)'}"
        )


def split_name(value: object) -> str:
    """A split name in the one vocabulary (``validate`` and friends -> ``val``; case and
    surrounding blanks ignored); names outside it come back lower-cased, unchecked."""
    s = str(value).strip().lower()
    return SPLIT_ALIASES.get(s, s)


def normalize_split(value: object) -> str:
    """:func:`split_name`, checked: a ValueError for a name that is not train / val / test."""
    s = split_name(value)
    if s not in SPLITS:
        raise ValueError(s)
    return s


def normalize_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` in the one vocabulary: old column names renamed (``path`` -> ``image``, unless
    an ``image`` column exists too) and split names mapped by :func:`split_name` (missing
    values stay missing).  Returns ``df`` itself when nothing changes, else a copy (``attrs``
    kept); every manifest reader passes its table through here."""
    renames = {
        old: new
        for old, new in COLUMN_ALIASES.items()
        if old in df.columns and new not in df.columns
    }
    splits = None
    if "split" in df.columns:
        old_splits = df["split"].tolist()
        mapped = [split_name(v) if isinstance(v, str) else v for v in old_splits]
        if mapped != old_splits:
            splits = mapped
    if not renames and splits is None:
        return df
    out = df.rename(columns=renames)  # a copy: the caller's frame stays as it was
    if splits is not None:
        out["split"] = splits
    out.attrs = dict(df.attrs)
    return out


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype(str).str.strip() == "")


def validate_pretrain(
    df: pd.DataFrame, source: str | None = None, bad_rows: str = "fail"
) -> pd.DataFrame:
    """Check and normalise a pre-training manifest (:func:`normalize_manifest` first); return
    a cleaned copy.

    Missing required columns, duplicate ids and unknown splits always raise.  Rows with an
    empty/NaN report or image path raise a :class:`DataError` listing their row numbers when
    ``bad_rows`` is ``"fail"``; with ``"skip"`` they are dropped and logged.
    """
    src = source or df.attrs.get("source", "<table>")
    df = normalize_manifest(df)
    require_columns(df, REQUIRED_COLUMNS, src)
    out = df.copy()
    out.attrs = dict(df.attrs)
    bad = _blank(out["report"]) | _blank(out["image"]) | _blank(out["id"])
    if bad.any():
        rows = [int(i) for i in out.index[bad]]
        shown = ", ".join(map(str, rows[:20])) + (" ..." if len(rows) > 20 else "")
        msg = f"manifest {src}: {len(rows)} row(s) with an empty id, image or report (rows {shown})"
        if bad_rows == "fail":
            raise DataError(msg + "; fix them or set data.bad_rows=skip")
        log.warning("%s; skipped", msg)
        out = out.loc[~bad]
    out["id"] = out["id"].astype(str)
    dup = out["id"].duplicated(keep=False)
    if dup.any():
        ids = sorted(set(out.loc[dup, "id"]))[:10]
        raise DataError(f"manifest {src}: duplicate id(s) {ids}; ids must be unique")
    out["image"] = out["image"].astype(str)
    out["report"] = out["report"].astype(str)
    out["distilled"] = (
        out["distilled"].where(~_blank(out["distilled"]), "").astype(str)
        if "distilled" in out.columns
        else ""
    )
    out["study_id"] = out["study_id"].astype(str) if "study_id" in out.columns else out["id"]
    if "split" in out.columns:
        try:
            out["split"] = [normalize_split(s) for s in out["split"]]
        except ValueError as e:
            raise DataError(
                f"manifest {src}: unknown split {e.args[0]!r}; use one of {', '.join(SPLITS)}"
            ) from None
    else:
        out["split"] = "train"
    return out.reset_index(drop=True)


def load_pretrain_manifest(path: str | Path, bad_rows: str = "fail") -> pd.DataFrame:
    """:func:`read_table` + :func:`validate_pretrain`."""
    df = read_table(path)
    return validate_pretrain(df, str(path), bad_rows=bad_rows)


def resolve_image(image: str, root: str | Path | None) -> Path:
    """An image path from a manifest, resolved against ``root`` when relative."""
    p = Path(image)
    if p.is_absolute() or not root:
        return p
    return Path(root) / p


PATH_COLUMNS = (IMAGE, "mask", "mask_classes")


def rebase_paths(manifest: str | Path, old_root: str | Path, run_dir: Path) -> None:
    """Rewrite the relative path columns of a manifest copied away from its images.

    Paths inside the run directory become relative to the manifest's new folder (the run
    directory can move as a whole); paths outside it become absolute.  The copy is written
    in the one vocabulary (:func:`read_table` normalises it).
    """
    import os

    path = Path(manifest)
    df = read_table(path)
    new_root, run = path.parent.resolve(), run_dir.resolve()

    def rebase(p: Any) -> Any:
        if not isinstance(p, str) or not p or Path(p).is_absolute():
            return p
        target = (Path(old_root) / p).resolve()
        return os.path.relpath(target, new_root) if target.is_relative_to(run) else str(target)

    for col in PATH_COLUMNS:
        if col in df.columns:
            df[col] = df[col].map(rebase)
    write_table(df, path)
