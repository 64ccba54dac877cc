"""The ECAMP release's downstream split lists, shipped as package data (xz-compressed).

Split names: ``train`` (the full training list, where the release has one), ``train_1`` and
``train_10`` (its 1% and 10% training subsets), ``val``, ``test`` and, for CheXpert,
``test_600``.  Provenance and licence: ``ecamp/resources/splits/PROVENANCE.md``.
"""

from __future__ import annotations

import functools
import io
import lzma
from importlib import resources
from importlib.abc import Traversable

import pandas as pd

from ecamp.errors import UserError

# (task, dataset) as the release names its folders
SPLIT_SETS: dict[tuple[str, str], str] = {
    ("Classification", "ChestX-ray14"): "txt",
    ("Classification", "CheXpert"): "txt",
    ("Classification", "RSNA"): "txt",
    ("Classification", "COVIDx"): "txt",
    ("Segmentation", "SIIM"): "csv",
    ("Segmentation", "RSNA"): "csv",
    ("Detection", "RSNA"): "csv",
}
# byte-identical lists stored once
_ALIASES = {("Segmentation", "RSNA"): ("Detection", "RSNA")}
_FILE_OF = {
    "train": "train_list",
    "train_1": "train_list_1",
    "train_10": "train_list_10",
    "val": "val_list",
    "test": "test_list",
    "test_600": "test_list_600",
}


def _folder(task: str, dataset: str) -> Traversable:
    if (task, dataset) not in SPLIT_SETS:
        raise UserError(f"no release split lists for {task}/{dataset}; known: {sorted(SPLIT_SETS)}")
    task, dataset = _ALIASES.get((task, dataset), (task, dataset))
    return resources.files("ecamp").joinpath("resources", "splits", task, dataset)


def available(task: str, dataset: str) -> list[str]:
    """Split names the package holds for ``task``/``dataset``."""
    ext = SPLIT_SETS.get((task, dataset), "")
    folder = _folder(task, dataset)
    return [
        name for name, stem in _FILE_OF.items() if folder.joinpath(f"{stem}.{ext}.xz").is_file()
    ]


def read_text(task: str, dataset: str, split: str) -> str | None:
    """The decompressed list, or None where the release has no such list."""
    if split not in _FILE_OF:
        raise UserError(f"unknown split {split!r}; use one of {sorted(_FILE_OF)}")
    ext = SPLIT_SETS.get((task, dataset), "")
    res = _folder(task, dataset).joinpath(f"{_FILE_OF[split]}.{ext}.xz")
    if not res.is_file():
        return None
    return lzma.decompress(res.read_bytes()).decode("utf-8")


def read_split(task: str, dataset: str, split: str) -> pd.DataFrame | None:
    """One release list as a table (a fresh copy), or None where the release has no such list.

    Classification lists give columns ``path`` and ``label_0 .. label_{K-1}`` (ints);
    segmentation / detection lists keep their CSV header (``ImageId,EncodedPixels`` or
    ``image_path,bbox``).
    """
    df = _parsed(task, dataset, split)
    return None if df is None else df.copy()


@functools.lru_cache(maxsize=32)
def _parsed(task: str, dataset: str, split: str) -> pd.DataFrame | None:
    text = read_text(task, dataset, split)
    if text is None:
        return None
    if SPLIT_SETS[(task, dataset)] == "csv":
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    rows = [line.split() for line in text.splitlines() if line.strip()]
    width = len(rows[0]) - 1
    if any(len(r) != width + 1 for r in rows):
        raise UserError(f"release list {task}/{dataset}/{split} has rows of unequal length")
    df = pd.DataFrame(rows, columns=["path"] + [f"label_{i}" for i in range(width)])
    for i in range(width):
        df[f"label_{i}"] = df[f"label_{i}"].astype(int)
    return df
