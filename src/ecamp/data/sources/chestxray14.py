"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` + ``images*/`` folders (PNG), 14 labels."""

from __future__ import annotations

import pandas as pd

from ecamp.data.sources.common import DownstreamSource, find_file, index_files, read_table
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

# the release's (and NIH's) label order
CXR14_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
LABEL_FILES = (
    "Data_Entry_2017.csv",
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017.csv.gz",
    "Data_Entry_2017_v2020.csv.gz",
)


class ChestXray14(DownstreamSource):
    """ChestX-ray14 from its official layout: the label table at the root, PNGs anywhere below
    (``images/``, ``images_001/images/``, ...).  ``id`` is the image file name."""

    name = "chestxray14"
    labels = CXR14_LABELS
    multilabel = True
    release_sets = {"cls": ("Classification", "ChestX-ray14")}

    def list_id(self, entry: str) -> str:
        return entry.rsplit("/", 1)[-1]

    def table(self, task: str) -> pd.DataFrame:
        df = read_table(
            find_file(self.root, LABEL_FILES, "ChestX-ray14 labels"),
            ["Image Index", "Finding Labels"],
        )
        files = index_files(self.root, (".png",))
        found = df["Image Index"].isin(files)
        if not found.all():
            log.info(
                "chestxray14: %d of %d labelled images absent under %s",
                (~found).sum(),
                len(df),
                self.root,
            )
        df = df[found]
        findings = df["Finding Labels"].astype(str).str.get_dummies(sep="|")
        out = pd.DataFrame({"id": df["Image Index"], "image": df["Image Index"].map(files)})
        for name in self.labels:
            out[name] = findings[name].astype(float) if name in findings else 0.0
        out["official_split"] = "train"  # the release split the pooled data itself
        return out.reset_index(drop=True)
