"""COVIDx: its txt split files (``patient_id filename label source``) + ``train/`` ``test/`` folders."""

from __future__ import annotations

import pandas as pd

from ecamp.data.sources.common import DownstreamSource, index_files
from ecamp.errors import DataError

COVIDX_CLASSES: tuple[str, ...] = (
    "normal",
    "pneumonia",
    "COVID-19",
)  # class index order of the release


class COVIDx(DownstreamSource):
    """COVIDx (3 classes).  The split files are found at the root by name (``train*.txt``,
    ``test*.txt``; override with ``train_file`` / ``test_file``).  ``id`` is
    ``<train|test>/<filename>`` as in the release lists; ``label`` is the class index."""

    name = "covidx"
    labels = COVIDX_CLASSES
    multilabel = False
    release_sets = {"cls": ("Classification", "COVIDx")}

    def __init__(
        self,
        root,
        train_file: str | None = None,
        test_file: str | None = None,
        missing: str = "skip",
    ) -> None:
        super().__init__(root, missing)
        self.files = {"train": train_file, "test": test_file}

    def _split_file(self, split: str):
        name = self.files[split]
        if name:
            return self.root / name
        cands = sorted(p for p in self.root.glob("*.txt") if p.name.lower().startswith(split))
        if not cands:
            raise DataError(
                f"COVIDx: no {split}*.txt split file in {self.root}; pass {split}_file="
            )
        return cands[-1]

    def table(self, task: str) -> pd.DataFrame:
        lookup = {c.lower(): i for i, c in enumerate(self.labels)}
        parts = []
        for split in ("train", "test"):
            path = self._split_file(split)
            try:
                df = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, usecols=[0, 1, 2])
            except (OSError, ValueError) as e:
                raise DataError(
                    f"{path}: cannot read as 'patient_id filename label source' ({e})"
                ) from e
            bad = ~df[2].str.lower().isin(lookup)
            if bad.any():
                raise DataError(
                    f"{path} line {int(bad.idxmax()) + 1}: label {df[2][bad.idxmax()]!r} is not one of {self.labels}"
                )
            files = index_files(self.root / split)
            out = pd.DataFrame(
                {
                    "id": split + "/" + df[1],
                    "image": df[1].map(files),
                    "label": df[2].str.lower().map(lookup),
                }
            )
            out["official_split"] = split
            parts.append(out[out["image"].notna()])
        return pd.concat(parts, ignore_index=True)
