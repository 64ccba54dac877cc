"""MIMIC-CXR-JPG 2.0.0 + MIMIC-CXR reports -> the pre-training manifest.

Inputs (PhysioNet layouts)::

    <jpg_root>/files/p10/p10000032/s50414267/<dicom_id>.jpg       (MIMIC-CXR-JPG)
    <reports_root>/files/p10/p10000032/s50414267.txt              (mimic-cxr-reports)
    mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split
    mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, ..., ViewPosition (optional, view filter)

One manifest row per image (``id`` = dicom_id, ``image`` relative to ``jpg_root``), with
``report`` = FINDINGS + IMPRESSION of its study (:func:`ecamp.text.sections.report_text`,
which falls back to the last reading section when both are missing).  Studies whose report
file is missing or yields no text are dropped and counted.  Every view is kept by default:
the paper pre-trains on all 377,110 images; ``views`` (e.g. :data:`FRONTAL_VIEWS`, PA and AP,
with the metadata file) keeps those views only, counting the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecamp.data.manifest import normalize_split, require_columns
from ecamp.errors import UserError
from ecamp.text.sections import report_text
from ecamp.utils.logging import get_logger

if TYPE_CHECKING:  # heavy: imported where used, so `ecamp --help` stays fast
    import pandas as pd

log = get_logger(__name__)

FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP")  # the usual frontal-only option


def study_dir(subject_id: int | str, study_id: int | str) -> str:
    """``files/p10/p10000032/s50414267`` for subject 10000032, study 50414267."""
    subject = str(subject_id).lstrip("p")
    study = str(study_id).lstrip("s")
    return f"files/p{subject[:2]}/p{subject}/s{study}"


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise UserError(f"MIMIC-CXR {what} table {path} does not exist")
    df = pd.read_csv(path, dtype=str)
    df.attrs["source"] = str(path)
    return df


def build_mimic_manifest(
    jpg_root: str | Path,
    reports_root: str | Path,
    split_csv: str | Path,
    metadata_csv: str | Path | None = None,
    views: Sequence[str] | None = None,
    check_images: bool = True,
) -> pd.DataFrame:
    """Build the pre-training manifest (see module docstring); ``df.attrs["root"]`` = jpg_root.

    ``views=None`` (default) keeps every view, as the paper; ``check_images`` drops (and counts) rows whose JPEG is
    missing.  Extra columns: ``subject_id`` and, with metadata, ``view``.
    """
    import pandas as pd

    jpg_root, reports_root = Path(jpg_root), Path(reports_root)
    split = _read_csv(Path(split_csv), "split")
    require_columns(split, ("dicom_id", "study_id", "subject_id", "split"))
    df = split[["dicom_id", "study_id", "subject_id", "split"]].copy()
    if metadata_csv is not None:
        meta = _read_csv(Path(metadata_csv), "metadata")
        require_columns(meta, ("dicom_id", "ViewPosition"))
        df = df.merge(meta[["dicom_id", "ViewPosition"]], on="dicom_id", how="left")
        df = df.rename(columns={"ViewPosition": "view"})
        df["view"] = df["view"].fillna("")
        if views:
            keep = df["view"].str.upper().isin([v.upper() for v in views])
            log.info(
                "MIMIC-CXR: keeping %d of %d images with views %s",
                int(keep.sum()),
                len(df),
                list(views),
            )
            df = df.loc[keep]
    df["split"] = [normalize_split(s) for s in df["split"]]
    dirs = [study_dir(su, st) for su, st in zip(df["subject_id"], df["study_id"])]
    df["image"] = [f"{d}/{i}.jpg" for d, i in zip(dirs, df["dicom_id"])]
    df["_study_dir"] = dirs

    texts: dict[str, str] = {}
    missing_reports = 0
    for d in sorted(set(dirs)):
        path = reports_root / f"{d}.txt"
        try:
            texts[d] = report_text(path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            missing_reports += 1
            texts[d] = ""
    df["report"] = df["_study_dir"].map(texts)
    empty = df["report"] == ""
    if missing_reports or empty.any():
        log.warning(
            "MIMIC-CXR: %d report file(s) missing; dropping %d image(s) without report text",
            missing_reports,
            int(empty.sum()),
        )
    df = df.loc[~empty]
    if check_images:
        exists = [(jpg_root / p).is_file() for p in df["image"]]
        n_missing = len(exists) - sum(exists)
        if n_missing:
            log.warning(
                "MIMIC-CXR: dropping %d row(s) whose JPEG is missing under %s", n_missing, jpg_root
            )
        df = df.loc[exists]
    out = pd.DataFrame(
        {
            "id": df["dicom_id"].astype(str),
            "image": df["image"],
            "report": df["report"],
            "distilled": "",
            "study_id": df["study_id"].astype(str),
            "split": df["split"],
            "subject_id": df["subject_id"].astype(str),
        }
    )
    if "view" in df.columns:
        out["view"] = df["view"]
    out = out.reset_index(drop=True)
    out.attrs["root"] = str(jpg_root.resolve())
    out.attrs["source"] = str(split_csv)
    log.info("MIMIC-CXR manifest: %d images, %d studies", len(out), out["study_id"].nunique())
    return out


# --------------------------------------------------------------------------- command line

HELP = "Build the pre-training manifest from MIMIC-CXR-JPG and the MIMIC-CXR reports."


def add_arguments(parser: Any) -> None:
    """Flags of the MIMIC-CXR manifest builder (an ``ecamp`` stage module)."""
    parser.add_argument(
        "--jpg-root", required=True, help="MIMIC-CXR-JPG folder holding files/p10/..."
    )
    parser.add_argument(
        "--reports-root", required=True, help="mimic-cxr-reports folder holding files/p10/..."
    )
    parser.add_argument("--split", required=True, help="mimic-cxr-2.0.0-split.csv[.gz]")
    parser.add_argument(
        "--metadata", default=None, help="mimic-cxr-2.0.0-metadata.csv[.gz] (view filter)"
    )
    parser.add_argument(
        "--views",
        default="all",
        help="comma-separated ViewPosition values to keep, e.g. PA,AP (needs --metadata); "
        "'all' keeps every view as the paper does (default all)",
    )
    parser.add_argument(
        "--no-check-images", action="store_true", help="do not drop rows whose JPEG is missing"
    )
    parser.add_argument(
        "--output", "-o", required=True, help="manifest to write (.csv/.jsonl/.parquet)"
    )


def run(args: Any) -> int:
    """Write the manifest; image paths stay relative to --jpg-root (use it as data.image_root)."""
    from ecamp.data.manifest import write_table

    views = (
        None
        if args.views.lower() == "all"
        else [v.strip() for v in args.views.split(",") if v.strip()]
    )
    df = build_mimic_manifest(
        args.jpg_root,
        args.reports_root,
        args.split,
        args.metadata,
        views=views,
        check_images=not args.no_check_images,
    )
    write_table(df, args.output)
    log.info("wrote %s (%d rows); set data.image_root=%s", args.output, len(df), args.jpg_root)
    return 0
