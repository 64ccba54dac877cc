"""Torch datasets over downstream manifests (classification / segmentation / detection).

A manifest comes from an adapter in :mod:`ecamp.data.sources` (see ``sources/common.py`` for
its columns); :func:`get_source` builds one by name.  Each item is a dict:

- ``image`` (3,S,S) float, resized to ``size`` (squashed, both sides), normalised with
  mean 0.4721 / std 0.3037; training adds a random resized crop (scale ``crop_scale``) and a
  horizontal flip, applied alike to mask and boxes;
- ``index`` (row in the manifest) and ``orig_size`` (H,W of the decoded original image);
- cls: ``label`` (K,) float (NaN = ignored) for multi-label sets, a class index () long else;
- seg: ``mask`` (1,S,S) float in {0,1};
- det: ``boxes`` (max_boxes,4) x1y1x2y2 in resized-image pixels, zero-padded, ``num_boxes``.
  Multiplying x by W/S and y by H/S maps them (and predictions) back to original pixels.

Items may be requested as ``(index, seed)`` (the training loop passes seeds): the random
augmentation is then a pure function of the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ecamp.data.sources.chestxray14 import ChestXray14
from ecamp.data.sources.chexpert import CheXpert
from ecamp.data.sources.common import DownstreamSource, boxes_to_mask, parse_boxes, rle_decode
from ecamp.data.sources.covidx import COVIDx
from ecamp.data.sources.rsna import RSNAPneumonia
from ecamp.data.sources.siim import SIIMPneumothorax
from ecamp.errors import DataError, UserError

SOURCES: dict[str, type[DownstreamSource]] = {
    "chestxray14": ChestXray14,
    "chexpert": CheXpert,
    "rsna": RSNAPneumonia,
    "covidx": COVIDx,
    "siim": SIIMPneumothorax,
}
TASKS = ("cls", "seg", "det")


def get_source(name: str, root: str | Path, **kwargs) -> DownstreamSource:
    """The dataset adapter ``name`` (chestxray14, chexpert, rsna, covidx, siim) over ``root``."""
    if name not in SOURCES:
        raise UserError(f"unknown dataset {name!r}; use one of {sorted(SOURCES)}")
    return SOURCES[name](root, **kwargs)


def _crop_boxes(boxes: np.ndarray, params, size: int) -> np.ndarray:
    """Boxes (G,4) in original pixels -> the cropped, resized (and flipped) frame; empty ones dropped."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4)
    sx, sy = size / params.width, size / params.height
    out = (
        boxes - np.array([params.left, params.top, params.left, params.top], np.float32)
    ) * np.array([sx, sy, sx, sy], np.float32)
    out = np.clip(out, 0, size)
    if params.flip:
        out = np.stack([size - out[:, 2], out[:, 1], size - out[:, 0], out[:, 3]], 1)
    keep = ((out[:, 2] - out[:, 0]) >= 1) & ((out[:, 3] - out[:, 1]) >= 1)
    return out[keep].astype(np.float32)


class DownstreamDataset(Dataset):
    """One split of a downstream manifest for ``task`` (cls | seg | det)."""

    accepts_seed = True

    def __init__(
        self,
        manifest: pd.DataFrame,
        task: str,
        label_columns: Sequence[str],
        size: int = 224,
        train: bool = False,
        multilabel: bool = True,
        mean: float = 0.4721,
        std: float = 0.3037,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        flip_prob: float = 0.5,
        max_boxes: int = 16,
    ) -> None:
        if task not in TASKS:
            raise UserError(f"task must be one of {TASKS}, not {task!r}")
        missing = [c for c in ["path", *label_columns] if c not in manifest.columns]
        if missing:
            raise UserError(f"downstream manifest lacks column(s) {missing}")
        self.frame = manifest.reset_index(drop=True)
        self.task, self.size, self.train = task, size, train
        self.label_columns = list(label_columns)
        self.multilabel = multilabel
        self.mean, self.std = mean, std
        self.crop_scale, self.flip_prob, self.max_boxes = crop_scale, flip_prob, max_boxes
        if task == "cls":  # targets as one array, read once
            values = self.frame[self.label_columns].to_numpy(dtype=np.float32)
            self.targets = values if multilabel else values[:, 0].astype(np.int64)

    def __len__(self) -> int:
        return len(self.frame)

    def _boxes(self, row: pd.Series) -> np.ndarray:
        return np.asarray(parse_boxes(str(row.get("boxes", "") or "[]")), dtype=np.float32).reshape(
            -1, 4
        )

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        from ecamp.data.images import CropParams, apply_crop, load_image, sample_crop, to_tensor

        index, seed = item if isinstance(item, tuple) else (item, 0)
        row = self.frame.iloc[index]
        img = load_image(row["path"])
        h, w = img.shape
        if self.train:
            params = sample_crop(
                h, w, np.random.default_rng(seed), self.crop_scale, flip_prob=self.flip_prob
            )
        else:
            params = CropParams(0, 0, h, w, False)
        image = apply_crop(to_tensor(img), params, self.size).clamp_(0.0, 1.0)
        image = image.sub_(self.mean).div_(self.std).expand(3, -1, -1).contiguous()
        out: dict = {
            "image": image,
            "index": torch.tensor(index),
            "orig_size": torch.tensor([h, w]),
        }
        if self.task == "cls":
            out["label"] = torch.tensor(self.targets[index])
        elif self.task == "seg":
            rle = row.get("rle", None)
            if isinstance(rle, str):
                try:
                    mask = rle_decode(rle, h, w)
                except DataError as e:
                    raise DataError(f"{row['path']}: {e}") from e
            else:
                mask = boxes_to_mask(self._boxes(row), h, w)
            m = apply_crop(
                torch.from_numpy(mask.astype(np.float32))[None], params, self.size, "bilinear"
            )
            out["mask"] = (m > 0.5).float()
        else:
            boxes = _crop_boxes(self._boxes(row), params, self.size)[: self.max_boxes]
            padded = torch.zeros(self.max_boxes, 4)
            padded[: len(boxes)] = torch.from_numpy(boxes)
            out["boxes"], out["num_boxes"] = padded, torch.tensor(len(boxes))
        return out


def build_datasets(
    manifest: pd.DataFrame,
    task: str,
    label_columns: Sequence[str],
    multilabel: bool = True,
    **kwargs,
) -> dict[str, DownstreamDataset]:
    """One dataset per split of the manifest (training augmentation on ``train`` only)."""
    out = {}
    for split in ("train", "val", "test"):
        part = manifest[manifest["split"] == split]
        if len(part):
            out[split] = DownstreamDataset(
                part, task, label_columns, train=split == "train", multilabel=multilabel, **kwargs
            )
    return out


def save_manifest(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Write a downstream manifest as CSV (boxes stay JSON strings)."""
    from ecamp.utils.io import atomic_write

    return atomic_write(path, lambda tmp: manifest.to_csv(tmp, index=False))


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read a downstream manifest written by :func:`save_manifest`."""
    from ecamp.utils.tables import read_csv

    df = read_csv(
        path,
        dtype={"id": str, "boxes": str, "rle": str},
        keep_default_na=True,
        what="downstream manifest",
    )
    for col in ("boxes", "rle"):
        if col in df.columns:
            df[col] = df[col].fillna("")
    return df


__all__ = [
    "SOURCES",
    "DownstreamDataset",
    "build_datasets",
    "get_source",
    "load_manifest",
    "save_manifest",
]
