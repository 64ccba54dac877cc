"""SIIM-ACR Pneumothorax Segmentation: DICOMs + ``train-rle.csv`` -> masks."""

from __future__ import annotations

import pandas as pd

from ecamp.data.sources.common import DownstreamSource, find_file, index_files, read_table

RLE_FILES = ("train-rle.csv", "stage_2_train.csv", "train-rle.csv.gz")


class SIIMPneumothorax(DownstreamSource):
    """SIIM-ACR from its official layout: ``train-rle.csv`` (``ImageId, EncodedPixels``; one row
    per pneumothorax region, ``-1`` = none) and ``dicom-images-train/<study>/<series>/<ImageId>.dcm``
    (any folder below the root).  ``id`` is the ImageId; ``rle`` joins an image's RLE rows with
    ``|`` (decode with :func:`ecamp.data.sources.common.rle_decode`).  Task: ``seg``."""

    name = "siim"
    labels = ("Pneumothorax",)
    multilabel = True
    seg_target = "rle"
    release_sets = {"seg": ("Segmentation", "SIIM")}

    def table(self, task: str) -> pd.DataFrame:
        df = read_table(
            find_file(self.root, RLE_FILES, "SIIM RLE table"),
            ["ImageId", "EncodedPixels"],
            dtype=str,
        )
        files = index_files(self.root, (".dcm", ".png"), key="stem")
        rle = df["EncodedPixels"].fillna("-1").str.strip()
        joined = rle[rle != "-1"].groupby(df["ImageId"]).agg("|".join)
        ids = pd.unique(df["ImageId"])
        out = pd.DataFrame({"id": ids})
        out["rle"] = [joined.get(i, "") for i in ids]
        out["official_split"] = "train"
        out = out[out["id"].isin(files)].copy()
        out["image"] = out["id"].map(files)
        return out.reset_index(drop=True)
