"""Torch datasets over downstream manifests (classification / segmentation / detection).

A manifest comes from an adapter in :mod:`ecamp.data.sources` (see ``sources/common.py`` for
its columns); :func:`get_source` builds one by name.  Manifests are read in the one vocabulary
of :mod:`ecamp.data.manifest` (older ``path`` columns and ``validate`` splits included).  Each
item is a dict:

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

With ``cache`` (a :class:`ecamp.data.downstream_cache.DownstreamCache`, ``ecamp cache``) the
images come squashed to the cache's side S and masks at S x S from the cache; boxes are
scaled into that frame, and crops are drawn in it.  ``prepare_size=S`` without a cache decodes
every file to exactly those arrays: the two paths give identical tensors for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ecamp.data.manifest import SPLITS, normalize_manifest
from ecamp.data.sources.chestxray14 import ChestXray14
from ecamp.data.sources.chexpert import CheXpert
from ecamp.data.sources.common import DownstreamSource, parse_boxes
from ecamp.data.sources.covidx import COVIDx
from ecamp.data.sources.phantom import PhantomWorld
from ecamp.data.sources.rsna import RSNAPneumonia
from ecamp.data.sources.siim import SIIMPneumothorax
from ecamp.errors import UserError

if TYPE_CHECKING:
    from ecamp.config.finetune import FinetuneDataConfig

SOURCES: dict[str, type[DownstreamSource]] = {
    "chestxray14": ChestXray14,
    "chexpert": CheXpert,
    "rsna": RSNAPneumonia,
    "covidx": COVIDx,
    "siim": SIIMPneumothorax,
    "phantom": PhantomWorld,
}
TASKS = ("cls", "seg", "det")


def get_source(name: str, root: str | Path, **kwargs) -> DownstreamSource:
    """The dataset adapter ``name`` (chestxray14, chexpert, rsna, covidx, siim, phantom) over
    ``root``."""
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
        cache: Any = None,
        prepare_size: int = 0,
    ) -> None:
        from ecamp.data.downstream_cache import DownstreamCache, mask_key, mask_target

        if task not in TASKS:
            raise UserError(f"task must be one of {TASKS}, not {task!r}")
        manifest = normalize_manifest(manifest)
        missing = [c for c in ["image", *label_columns] if c not in manifest.columns]
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
        if isinstance(cache, (str, Path)):
            cache = DownstreamCache(cache) if str(cache) else None
        self.cache = cache
        self.ids = self.frame["id"].astype(str).tolist() if "id" in self.frame else []
        self.mask_keys: list[str] = []
        if cache is not None:
            if prepare_size and prepare_size != cache.size:
                raise UserError(
                    f"data.cache_size={prepare_size} but the cache {cache.folder} holds "
                    f"{cache.size} px images; leave cache_size at 0 or use a matching cache"
                )
            if not self.ids:
                raise UserError("a downstream manifest read through a cache needs an id column")
            prepare_size = cache.size
            cache.check(self.ids, self.frame["image"].astype(str).tolist())
            if task == "seg":
                shapes = cache.images.orig_shapes
                self.mask_keys = [
                    mask_key(*mask_target(r), shapes[i])
                    for i, r in zip(self.ids, self.frame.to_dict("records"))
                ]
                cache.check_masks(self.mask_keys, self.ids)
        self.prepare_size = int(prepare_size)
        self.records: list[dict] = self.frame.to_dict("records")  # rows without pandas per item
        self._parsed: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.frame)

    def _boxes(self, index: int) -> np.ndarray:
        boxes = self._parsed.get(index)
        if boxes is None:
            text = str(self.records[index].get("boxes", "") or "[]")
            boxes = self._parsed[index] = np.asarray(parse_boxes(text), np.float32).reshape(-1, 4)
        return boxes

    def _load(self, index: int, row: dict) -> tuple[np.ndarray, tuple[int, int]]:
        """The image to crop (full-size float, or the prepared S x S uint8) and the file's (H, W)."""
        from ecamp.data.images import load_image, prepare_image

        if self.cache is not None:
            key = self.ids[index]
            img = self.cache.images.get(key)
            return img, self.cache.images.orig_shapes[key]
        if self.prepare_size:
            img, _, original = prepare_image(row["image"], self.prepare_size, "squash")
            return img, original
        img = load_image(row["image"])
        return img, (int(img.shape[0]), int(img.shape[1]))

    def _mask(self, index: int, row: dict, shape: tuple[int, int]) -> torch.Tensor:
        """(1, h, w) mask in the frame the crop is drawn in: float {0, 1} at full resolution,
        uint8 0..255 (soft edges) when prepared or cached."""
        from ecamp.data.downstream_cache import full_mask, mask_target, prepare_mask

        if self.cache is not None:
            m = self.cache.masks.get(self.mask_keys[index])
        else:
            mask = full_mask(*mask_target(row), shape, where=str(row["image"]))
            if not self.prepare_size:
                return torch.from_numpy(mask.astype(np.float32))[None]
            m = prepare_mask(mask, self.prepare_size)
        return torch.from_numpy(np.ascontiguousarray(m))[None]

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        from ecamp.data.images import CropParams, apply_crop, crop_resize, sample_crop

        index, seed = item if isinstance(item, tuple) else (item, 0)
        row = self.records[index]
        img, (h, w) = self._load(index, row)
        fh, fw = img.shape  # the frame crops are drawn in
        if self.train:
            params = sample_crop(
                fh, fw, np.random.default_rng(seed), self.crop_scale, flip_prob=self.flip_prob
            )
        else:
            params = CropParams(0, 0, fh, fw, False)
        image = crop_resize(img, params, self.size)
        image = image.sub_(self.mean).div_(self.std).expand(3, -1, -1).contiguous()
        out: dict = {
            "image": image,
            "index": torch.tensor(index),
            "orig_size": torch.tensor([h, w]),
        }
        if self.task == "cls":
            out["label"] = torch.tensor(self.targets[index])
        elif self.task == "seg":
            m = apply_crop(self._mask(index, row, (h, w)), params, self.size, "bilinear")
            out["mask"] = (m >= 128 if m.dtype == torch.uint8 else m > 0.5).float()
        else:
            boxes = self._boxes(index)
            if (fh, fw) != (h, w):  # original pixels -> the prepared square
                boxes = boxes * np.array([fw / w, fh / h, fw / w, fh / h], np.float32)
            boxes = _crop_boxes(boxes, params, self.size)[: self.max_boxes]
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
    manifest = normalize_manifest(manifest)
    out = {}
    for split in SPLITS:
        part = manifest[manifest["split"] == split]
        if len(part):
            out[split] = DownstreamDataset(
                part, task, label_columns, train=split == "train", multilabel=multilabel, **kwargs
            )
    return out


def build_manifest(
    task: str,
    data: FinetuneDataConfig,
    seed: int,
    workdir: Path,
    *,
    main: bool = True,
    barrier: Callable[[], None] | None = None,
) -> tuple[pd.DataFrame, list[str], list[str], bool]:
    """(manifest, class names, label columns, multilabel) for ``data.dataset`` and ``task``.

    ``data``: the downstream data config (dataset, root or prepared manifest, fraction,
    sampling, label and split modes, ``source_args``; phantom: ``labels`` and ``synthetic_*``).
    ``seed`` draws random training shares.  A world drawn on the fly (phantom) goes to
    ``data.root`` or ``workdir/phantom``, by the ``main`` process while the others wait at
    ``barrier``.
    """
    cls = SOURCES[data.dataset]
    if task not in cls.release_sets:
        raise UserError(f"{data.dataset} has no {task!r} task; it has {list(cls.release_sets)}")
    if data.manifest:
        if cls.generated:
            raise UserError(
                "data.manifest is for prepared real datasets; the phantom world is built"
            )
        df = load_manifest(data.manifest)
    else:
        source = cls.from_data_config(data, workdir, main=main, barrier=barrier)
        df = source.manifest(
            task,
            fraction=data.fraction,
            sampling=data.sampling,
            seed=seed,
            labels_from=data.labels_from,
            split_mode=data.split_mode,
            split_seed=data.split_seed,
        )
    labels = cls.class_names(task, data.labels)
    return df, labels, cls.label_columns(task), cls.multilabel


def select_labels(
    labels: list[str], columns: list[str], wanted: list[str], multilabel: bool
) -> tuple[list[str], list[str]]:
    """Restrict a multi-label set to ``wanted`` (in the given order); empty = all."""
    if not wanted:
        return labels, columns
    if not multilabel:
        raise UserError("data.labels selects labels of a multi-label set; this one is multi-class")
    unknown = [w for w in wanted if w not in labels]
    if unknown:
        raise UserError(f"data.labels: unknown label(s) {unknown}; this set has {labels}")
    return list(wanted), list(wanted)


def save_manifest(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Write a downstream manifest as CSV (boxes stay JSON strings), in the one vocabulary."""
    from ecamp.utils.io import atomic_write

    out = normalize_manifest(manifest)
    return atomic_write(path, lambda tmp: out.to_csv(tmp, index=False))


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read a downstream manifest written by :func:`save_manifest` (or in the old vocabulary)."""
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
    return normalize_manifest(df)


__all__ = [
    "SOURCES",
    "DownstreamDataset",
    "build_datasets",
    "build_manifest",
    "get_source",
    "load_manifest",
    "save_manifest",
    "select_labels",
]
