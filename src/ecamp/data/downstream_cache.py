"""The image cache of a downstream set: images squashed to S x S, masks kept aligned.

Same folder contract as :mod:`ecamp.data.cache` (``index.json`` + ``images.npy`` or shards,
resumable, atomic), always ``resize: squash`` (downstream images are squashed to a square,
so a box in original pixels maps into the cache by (S / W, S / H)).  Segmentation targets
get two more files::

    masks.npy     (M, S, S) uint8: a mask resized to S x S with bilinear antialiasing,
                  0..255 (thresholded at 0.5 after the training crop, like the decode path)
    masks.json    {"version": 1, "size": S, "capacity": M, "rows": {key: row}}

A mask is keyed by :func:`mask_key` (its target text, RLE or boxes, and the image's original
size), not by image id, so the empty masks of a set share one row and one image may carry
the different targets of different lists.  :class:`DownstreamCache` checks a manifest against
the cache before training (every image and mask present) and names what is missing.

:class:`ecamp.data.downstream.DownstreamDataset` given ``prepare_size=S`` and no cache decodes
every file to exactly these arrays, so both paths give identical tensors for the same seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ecamp.data.cache import (
    CacheReport,
    ImageCache,
    _open_array,
    build_cache,
)
from ecamp.data.manifest import normalize_manifest
from ecamp.errors import DataError, UserError
from ecamp.utils.io import atomic_write_text
from ecamp.utils.logging import get_logger

if TYPE_CHECKING:
    import pandas as pd

log = get_logger(__name__)

MASK_ARRAY = "masks.npy"
MASK_INDEX = "masks.json"


# --------------------------------------------------------------------------- masks


def mask_target(row: Any) -> tuple[str, str]:
    """(kind, text) a manifest row's mask is built from: its RLE when it has one, else boxes."""
    from ecamp.data.sources.common import parse_boxes

    rle = row.get("rle", None)
    if isinstance(rle, str):
        return "rle", rle.strip()
    boxes = parse_boxes(str(row.get("boxes", "") or "[]"))
    return "boxes", json.dumps(boxes)


def mask_key(kind: str, text: str, shape: tuple[int, int]) -> str:
    """The cache key of the mask ``text`` (RLE or box JSON) over an image of ``shape``."""
    if text in ("", "-1", "[]"):
        return "empty"  # all zeros at any size: one row for every empty mask
    h, w = shape
    digest = hashlib.sha1(f"{kind}\n{h}x{w}\n{text}".encode()).hexdigest()[:20]
    return f"{h}x{w}-{digest}"


def full_mask(kind: str, text: str, shape: tuple[int, int], where: str = "") -> np.ndarray:
    """The bool (H, W) mask of a target in original pixels."""
    from ecamp.data.sources.common import boxes_to_mask, rle_decode

    h, w = shape
    if kind == "rle":
        try:
            return rle_decode(text, h, w)
        except DataError as e:
            raise DataError(f"{where}: {e}" if where else str(e)) from e
    return boxes_to_mask(json.loads(text), h, w)


def prepare_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool (H, W) mask as the cache stores it: (size, size) uint8, bilinear, 0..255."""
    from PIL import Image

    if not mask.any():
        return np.zeros((size, size), np.uint8)
    pil = Image.fromarray(mask.astype(np.float32))
    small = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), np.float32)
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


class MaskStore:
    """Read side of ``masks.npy`` / ``masks.json`` (lazy memmap, safe to pickle)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = _read_json(self.folder / MASK_INDEX)
        if index is None or not (self.folder / MASK_ARRAY).is_file():
            raise UserError(
                f"image cache {self.folder} has no segmentation masks ({MASK_INDEX}); "
                "build it with `ecamp cache DATASET DIR --task seg`"
            )
        self.size = int(index["size"])
        self.rows: dict[str, int] = {str(k): int(v) for k, v in index["rows"].items()}
        self._arr: np.ndarray | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arr"] = None
        return state

    def __contains__(self, key: object) -> bool:
        return str(key) in self.rows

    def get(self, key: str) -> np.ndarray:
        """The (S, S) uint8 mask stored under ``key``."""
        if self._arr is None:
            self._arr = np.load(self.folder / MASK_ARRAY, mmap_mode="r")
        return np.array(self._arr[self.rows[key]])


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); delete the cache folder to rebuild") from None


def build_masks(
    targets: Iterable[tuple[str, str, str]], folder: str | Path, chunk: int = 256
) -> int:
    """Add the masks of ``targets`` ((image id, kind, text) each) to the cache in ``folder``.

    The images must be cached already (their original sizes come from ``index.json``).
    Resumable like the image cache: ``masks.json`` lists a key only once its row is flushed.
    Returns how many masks were built.
    """
    folder = Path(folder)
    images = ImageCache(folder)
    index = _read_json(folder / MASK_INDEX) or {
        "version": 1,
        "size": images.size,
        "capacity": 0,
        "rows": {},
    }
    rows: dict[str, int] = index["rows"]
    todo: dict[str, tuple[str, str, tuple[int, int], str]] = {}
    for image_id, kind, text in targets:
        shape = images.orig_shapes.get(str(image_id))
        if shape is None:
            continue  # not cached (failed to decode): the image cache lists why
        key = mask_key(kind, text, shape)
        if key not in rows:
            todo.setdefault(key, (kind, text, shape, str(image_id)))
    if not todo:
        return 0
    next_row = max(rows.values(), default=-1) + 1
    capacity = max(int(index["capacity"]), next_row + len(todo))
    arr = _open_array(folder, capacity, images.size, name=MASK_ARRAY)
    index["capacity"] = capacity
    atomic_write_text(folder / MASK_INDEX, json.dumps(index))
    items = list(todo.items())
    try:
        for start in range(0, len(items), chunk):
            new: dict[str, int] = {}
            for key, (kind, text, shape, image_id) in items[start : start + chunk]:
                mask = full_mask(kind, text, shape, where=f"image {image_id}")
                arr[next_row] = prepare_mask(mask, images.size)
                new[key] = next_row
                next_row += 1
            arr.flush()
            rows.update(new)
            atomic_write_text(folder / MASK_INDEX, json.dumps(index))
    finally:
        del arr
    return len(items)


# --------------------------------------------------------------------------- the reader


class DownstreamCache:
    """A downstream cache folder: images (squashed S x S) and, when built, masks."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.images = ImageCache(self.folder)
        if self.images.resize != "squash":
            raise UserError(
                f"image cache {self.folder} holds padded squares (resize={self.images.resize}); "
                "downstream sets squash images: build it with `ecamp cache DATASET DIR` "
                "(or --resize squash)"
            )
        if len(self.images) and not self.images.orig_shapes:
            raise UserError(
                f"image cache {self.folder} predates original-size records (boxes and masks "
                "need them); delete it and build it again with `ecamp cache`"
            )
        self.size = self.images.size
        self._masks: MaskStore | None = None

    @property
    def masks(self) -> MaskStore:
        if self._masks is None:
            self._masks = MaskStore(self.folder)
        return self._masks

    def check(self, ids: Sequence[str], paths: Sequence[str], what: str = "the manifest") -> None:
        """Every image of ``ids`` must be cached; a UserError names the missing ones."""
        failed = [i for i in ids if i in self.images.failed]
        if failed:
            i = failed[0]
            raise DataError(
                f"image cache {self.folder}: {len(failed)} image(s) of {what} could not be "
                f"decoded when it was built, e.g. {i}: {self.images.failed[i]}"
            )
        missing = [(i, p) for i, p in zip(ids, paths) if i not in self.images]
        if missing:
            examples = ", ".join(f"{i} ({Path(p).name})" for i, p in missing[:3])
            raise UserError(
                f"image cache {self.folder} does not match {what}: {len(missing)} of {len(ids)} "
                f"images are not in it (e.g. {examples}); it was built for another dataset or "
                "task: build it for this one with `ecamp cache DATASET DIR --data-root ROOT`"
            )

    def check_masks(
        self, keys: Sequence[str], ids: Sequence[str], what: str = "the manifest"
    ) -> None:
        """Every mask key must be cached; a UserError names the first rows without one."""
        store = self.masks
        missing = [i for k, i in zip(keys, ids) if k not in store]
        if missing:
            raise UserError(
                f"image cache {self.folder} does not match {what}: the segmentation masks of "
                f"{len(missing)} of {len(ids)} images are not in it (e.g. {', '.join(missing[:3])}), "
                "or differ from the manifest's; rebuild it with `ecamp cache DATASET DIR --task seg`"
            )


# --------------------------------------------------------------------------- building


def build_downstream_cache(
    manifest: pd.DataFrame,
    out_dir: str | Path,
    size: int = 512,
    seg: bool = False,
    num_workers: int = 0,
    fmt: str = "npy",
    quality: int = 90,
    retry_failed: bool = False,
) -> tuple[CacheReport, int]:
    """Cache the images of a downstream manifest (``id``, ``image``) and, with ``seg``, the
    masks of its ``rle`` / ``boxes`` targets; returns the image report and the masks built."""
    manifest = normalize_manifest(manifest)
    if "image" not in manifest.columns or "id" not in manifest.columns:
        raise UserError("a downstream manifest needs the columns id and image")
    images = manifest.assign(id=manifest["id"].astype(str), image=manifest["image"].astype(str))
    report = build_cache(
        images[["id", "image"]],
        out_dir,
        size=size,
        num_workers=num_workers,
        image_root="",
        resize="squash",
        retry_failed=retry_failed,
        fmt=fmt,
        quality=quality,
    )
    built = 0
    if seg:
        targets = [(str(r["id"]), *mask_target(r)) for r in images.to_dict("records")]
        built = build_masks(targets, out_dir)
    return report, built


def build_set_cache(
    per_task: dict[str, pd.DataFrame], out_dir: str | Path, **kwargs: Any
) -> tuple[CacheReport, int]:
    """Cache every image of ``per_task`` (task -> downstream manifest, as
    :func:`source_manifests` returns) once, and the masks of its ``seg`` manifest if it has one;
    ``kwargs`` go to :func:`build_downstream_cache`.  Returns the image report and masks built."""
    import pandas as pd

    images = pd.concat([df[["id", "image"]] for df in per_task.values()], ignore_index=True)
    report, _ = build_downstream_cache(images.drop_duplicates(), out_dir, **kwargs)
    masks = 0
    if "seg" in per_task:
        _, masks = build_downstream_cache(per_task["seg"], out_dir, seg=True, **kwargs)
    return report, masks


def source_manifests(
    dataset: str,
    root: str,
    tasks: Sequence[str] = (),
    fractions: Sequence[float] = (1, 10, 100),
    labels_from: str = "list",
) -> dict[str, pd.DataFrame]:
    """Every manifest a downstream recipe of ``dataset`` can read, per task (rows of all the
    given fractions, an image once per task).  ``phantom`` reads (or makes) a world in ``root``."""
    import pandas as pd

    from ecamp.config import FinetuneConfig, from_dict
    from ecamp.data.downstream import SOURCES, build_manifest

    if dataset not in SOURCES:
        real = sorted(k for k, v in SOURCES.items() if not v.generated)
        raise UserError(f"unknown dataset {dataset!r}; use phantom or one of {real}")
    if not root:
        raise UserError(f"{dataset}: give --data-root (the dataset's folder)")
    all_tasks = tuple(SOURCES[dataset].release_sets)
    chosen = list(tasks) or list(all_tasks)
    unknown = [t for t in chosen if t not in all_tasks]
    if unknown:
        raise UserError(f"{dataset} has no task(s) {unknown}; it has {list(all_tasks)}")
    out: dict[str, pd.DataFrame] = {}
    for task in chosen:
        parts = []
        for fraction in fractions if not SOURCES[dataset].generated else (100,):
            # from_dict checks the mode strings (task, dataset, labels_from) as a YAML would be
            cfg = from_dict(
                FinetuneConfig,
                {
                    "task": task,
                    "data": {
                        "dataset": dataset,
                        "root": root,
                        "fraction": float(fraction),
                        "labels_from": labels_from,
                    },
                },
            )
            df = build_manifest(cfg.task, cfg.data, cfg.train.seed, Path(root))[0]
            parts.append(df)
        merged = pd.concat(parts, ignore_index=True)
        out[task] = merged.drop_duplicates(subset=[c for c in merged.columns if c != "split"])
    return out
