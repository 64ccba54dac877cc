"""RSNA Pneumonia Detection Challenge (stage 2): labels CSV + DICOMs: class, boxes, masks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ecamp.data.sources.common import DownstreamSource, find_file, index_files, read_table

LABEL_FILES = (
    "stage_2_train_labels.csv",
    "stage_2_train_labels.csv.zip",
    "stage_2_train_labels.csv.gz",
)


class RSNAPneumonia(DownstreamSource):
    """RSNA Pneumonia from its official layout: ``stage_2_train_labels.csv``
    (``patientId,x,y,width,height,Target``) and ``stage_2_train_images/<patientId>.dcm``
    (``stage_2_test_images/`` too, when present: the release's classification test list uses
    them, with labels from the list).  PNG copies named ``<patientId>.png`` are found as well.
    ``id`` is the patientId.  Tasks: ``cls`` (label ``Pneumonia`` = Target), ``det`` (boxes
    ``[x1, y1, x2, y2]`` in original pixels) and ``seg`` (the boxes filled as masks).
    """

    name = "rsna"
    labels = ("Pneumonia",)
    multilabel = True  # one binary label, scored by AUC
    release_sets = {
        "cls": ("Classification", "RSNA"),
        "det": ("Detection", "RSNA"),
        "seg": ("Segmentation", "RSNA"),
    }

    def list_id(self, entry: str) -> str:
        return entry.rsplit("/", 1)[-1].rsplit(".", 1)[0]

    def table(self, task: str) -> pd.DataFrame:
        df = read_table(
            find_file(self.root, LABEL_FILES, "RSNA labels"),
            ["patientId", "x", "y", "width", "height", "Target"],
        )
        files = index_files(self.root, (".dcm", ".png"), key="stem")
        has_box = df["Target"].eq(1) & df[["x", "y", "width", "height"]].notna().all(axis=1)
        b = df[has_box]
        corners = np.stack([b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]], 1).tolist()
        boxes = pd.Series(corners, index=b.index).groupby(b["patientId"]).agg(list)
        per = df.groupby("patientId", sort=False)["Target"].max()
        out = pd.DataFrame({"id": per.index, "Pneumonia": per.to_numpy(dtype=float)})
        out["boxes"] = [json.dumps(boxes.get(i, [])) for i in out["id"]]
        out["official_split"] = "train"
        # unlabelled test images: reachable through the release lists only
        test_ids = sorted(set(files) - set(out["id"]))
        test = pd.DataFrame(
            {"id": test_ids, "Pneumonia": np.nan, "boxes": "[]", "official_split": "test"}
        )
        out = pd.concat([out, test], ignore_index=True)
        out = out[out["id"].isin(files)].copy()
        out["image"] = out["id"].map(files)
        return out.reset_index(drop=True)
