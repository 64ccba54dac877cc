"""CheXpert: ``train.csv`` / ``valid.csv`` + ``train/`` ``valid/`` folders, 5 competition labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecamp.data.sources.common import DownstreamSource, read_table
from ecamp.errors import DataError, UserError

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)
# read off the release lists: uncertain -> 1 for these, -> 0 for the other two (U-Ones / U-Zeros mix)
RELEASE_UNCERTAIN_ONES = frozenset({"Atelectasis", "Edema", "Pleural Effusion"})
POLICIES = ("release", "ones", "zeros", "ignore")


class CheXpert(DownstreamSource):
    """CheXpert (v1.0 or v1.0-small).  ``id`` is the path below the dataset folder
    (``train/patientX/studyY/view1_frontal.jpg``), as in the release lists.

    ``uncertain``: what the label -1 becomes: ``release`` (1 for Atelectasis, Edema, Pleural
    Effusion, 0 for Cardiomegaly, Consolidation: what the release lists hold), ``ones``,
    ``zeros`` or ``ignore`` (NaN, left out of loss and AUC).  Blank = 0.  The policy acts on
    labels read from the CSVs (``labels_from="official"`` or random sampling).
    """

    name = "chexpert"
    labels = CHEXPERT_LABELS
    multilabel = True
    release_sets = {"cls": ("Classification", "CheXpert")}

    def __init__(self, root, uncertain: str = "release", missing: str = "skip") -> None:
        super().__init__(root, missing)
        if uncertain not in POLICIES:
            raise UserError(f"uncertain must be one of {POLICIES}, not {uncertain!r}")
        self.uncertain = uncertain

    def _uncertain_value(self, label: str) -> float:
        if self.uncertain == "release":
            return 1.0 if label in RELEASE_UNCERTAIN_ONES else 0.0
        return {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[self.uncertain]

    def table(self, task: str) -> pd.DataFrame:
        parts = []
        for fname, split in (("train.csv", "train"), ("valid.csv", "val"), ("test.csv", "test")):
            path = self.root / fname
            if not path.is_file():
                if fname == "test.csv":
                    continue
                raise DataError(
                    f"CheXpert: {path} not found; point the source at the folder holding train.csv"
                )
            df = read_table(path, ["Path", *self.labels])
            # CSV paths start with the dataset folder's own name (CheXpert-v1.0-small/...)
            rel = df["Path"].astype(str).str.split("/", n=1).str[-1]
            out = pd.DataFrame({"id": rel, "image": [str(self.root / r) for r in rel]})
            for name in self.labels:
                v = pd.to_numeric(df[name], errors="coerce").fillna(0.0).to_numpy(dtype=float)
                out[name] = np.where(v == -1, self._uncertain_value(name), v)
            out["official_split"] = split
            parts.append(out)
        return pd.concat(parts, ignore_index=True)
