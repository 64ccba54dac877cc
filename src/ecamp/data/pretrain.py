"""The pre-training dataset and its collator.

A sample is a dict::

    image_hr          (3, hr, hr) float32, augmented and normalised (SPEC section 2)
    report, distilled str ("" when there is no distilled report)
    id                str
    _seed             int: the seed that drew this sample's augmentation (and, in the
                      collator, its text masking), so a resumed run repeats it exactly
    guidance          (1, hr, hr) float32 map following the same crop/flip   } only with a
    guidance_window   (2,) long (row, col) as stored (release: not cropped)  } guidance store

``dataset[i]`` draws a fresh seed from torch's RNG; ``dataset[(i, seed)]`` is reproducible.
:class:`ecamp.train.sampling.ShardedBatchSampler` yields such pairs from (seed, epoch) so the
training loop can resume mid-epoch at the same samples with the same augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ecamp.config import DataConfig
from ecamp.data.cache import ImageCache
from ecamp.data.images import (
    CropParams,
    augment_pretrain,
    augment_region,
    content_box,
    crop_map,
    draw_pretrain_crop,
    load_image,
)
from ecamp.data.manifest import resolve_image, validate_pretrain
from ecamp.errors import DataError
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

_MAX_SUBSTITUTES = 64


@runtime_checkable
class GuidanceStore(Protocol):
    """Per-image SR guidance: a 2-D map over the whole image, a (row, col) window, or None.

    ``kind`` ("map" or "window") says what an id without guidance gets: a uniform map of ones,
    or the window (-1, -1) meaning "no window, use the whole image".
    """

    kind: str

    def get(self, key: str) -> np.ndarray | tuple[int, int] | None: ...


class PretrainDataset(Dataset):
    """Images + reports of a pre-training manifest (see :mod:`ecamp.data.manifest`)."""

    def __init__(
        self,
        manifest: pd.DataFrame,
        cfg: DataConfig,
        hr_size: int,
        image_root: str | Path | None = None,
        cache: ImageCache | str | Path | None = None,
        guidance: GuidanceStore | None = None,
    ):
        df = validate_pretrain(manifest, bad_rows=cfg.bad_rows)
        self.cfg = cfg
        self.hr_size = int(hr_size)
        root = image_root or cfg.image_root or manifest.attrs.get("root")
        self.ids: list[str] = df["id"].tolist()
        self.paths: list[Path] = [resolve_image(p, root) for p in df["image"]]
        self.reports: list[str] = df["report"].tolist()
        self.distilled: list[str] = df["distilled"].tolist()
        gcol = df["guidance_id"] if "guidance_id" in df.columns else df["id"]
        self.guidance_ids: list[str] = [str(g) if g == g else i for g, i in zip(gcol, self.ids)]
        if isinstance(cache, (str, Path)):
            cache = ImageCache(cache) if str(cache) else None
        self.cache = cache
        self.guidance = guidance
        self.bad_ids: set[str] = set()
        self.substitutions = 0
        self._shapes: dict[str, tuple[int, int]] = {}  # file headers read for crop_source_pixels

    def __len__(self) -> int:
        return len(self.ids)

    def crop_source_pixels(self, i: int, seed: int) -> tuple[float, float] | None:
        """(height, width) in real image pixels behind the crop sample ``(i, seed)`` draws.

        Computed from sizes alone (the cache's index, else the file's header), without
        decoding; None when the image is unreadable.
        """
        from ecamp.data.images import crop_source_pixels, draw_pretrain_crop, image_shape

        key = self.ids[i]
        scale = (self.cfg.crop_scale[0], self.cfg.crop_scale[1])
        cache = self.cache
        if cache is not None and key in cache:
            s = cache.size
            params = draw_pretrain_crop(s, s, seed, scale, self.cfg.augment)
            return crop_source_pixels(params, s, cache.shapes.get(key, (s, s)), cache.resize)
        if cache is not None and key in cache.failed:
            return None
        shape = self._shapes.get(key)
        if shape is None:
            try:
                shape = self._shapes[key] = image_shape(self.paths[i])
            except DataError:
                return None
        params = draw_pretrain_crop(shape[0], shape[1], seed, scale, self.cfg.augment)
        return float(params.height), float(params.width)

    def _image(self, i: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The image of row ``i`` and the box its original content covers in that frame."""
        key = self.ids[i]
        if self.cache is not None:
            if key in self.cache.failed:
                raise DataError(f"image {self.paths[i]} (id {key}): {self.cache.failed[key]}")
            img = self.cache.get(key)
            if img is not None:
                h, w = self.cache.shapes.get(key, (self.cache.size, self.cache.size))
                return img, content_box(h, w, self.cache.size, self.cache.resize)
        img = load_image(self.paths[i])
        return img, (0, 0, img.shape[0], img.shape[1])

    def _cached_crop(self, i: int, seed: int) -> tuple[torch.Tensor, CropParams, tuple] | None:
        """The augmented crop read from the cache region alone (None: not cached)."""
        cache, key, cfg = self.cache, self.ids[i], self.cfg
        if cache is None or key not in cache:
            return None
        s = cache.size
        scale = (cfg.crop_scale[0], cfg.crop_scale[1])
        params = draw_pretrain_crop(s, s, seed, scale, cfg.augment)
        region = cache.get_region(
            key, params.top, params.left, params.height, params.width, min_side=self.hr_size
        )
        assert region is not None
        image_hr = augment_region(region, params.flip, self.hr_size, cfg.mean, cfg.std)
        h, w = cache.shapes.get(key, (s, s))
        return image_hr, params, content_box(h, w, s, cache.resize)

    def _build(self, i: int, seed: int) -> dict[str, Any]:
        cfg = self.cfg
        cached = self._cached_crop(i, seed) if self.cache is not None else None
        if cached is not None:
            image_hr, params, box = cached
        else:
            img, box = self._image(i)
            image_hr, params = augment_pretrain(
                img,
                self.hr_size,
                seed,
                (cfg.crop_scale[0], cfg.crop_scale[1]),
                cfg.mean,
                cfg.std,
                cfg.augment,
            )
        sample: dict[str, Any] = {
            "image_hr": image_hr,
            "report": self.reports[i],
            "distilled": self.distilled[i],
            "id": self.ids[i],
            "_seed": int(seed),
        }
        if self.guidance is not None:
            g = self.guidance.get(self.guidance_ids[i])
            kind = getattr(self.guidance, "kind", "map")
            if isinstance(g, np.ndarray) and g.ndim >= 2:
                sample["guidance"] = crop_map(g, params, self.hr_size, box)
            elif g is not None:
                sample["guidance_window"] = torch.as_tensor(
                    [int(g[0]), int(g[1])], dtype=torch.long
                )
            elif kind == "window":
                sample["guidance_window"] = torch.tensor([-1, -1], dtype=torch.long)
            else:
                sample["guidance"] = torch.ones(1, self.hr_size, self.hr_size)
        return sample

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(item, tuple):
            index, seed = int(item[0]), int(item[1])
        else:
            index, seed = int(item), int(torch.randint(0, 2**31 - 1, ()).item())
        n = len(self)
        for step in range(min(n, _MAX_SUBSTITUTES)):
            j = (index + step) % n
            try:
                return self._build(j, seed)
            except DataError as e:
                if self.cfg.bad_rows == "fail":
                    raise
                self.substitutions += 1
                if self.ids[j] not in self.bad_ids:
                    self.bad_ids.add(self.ids[j])
                    log.warning("skipping bad row %d (%s); using the next sample instead", j, e)
        raise DataError(
            f"{_MAX_SUBSTITUTES} consecutive manifest rows from row {index} have unreadable images; "
            "check image_root and the image files"
        )


def drawn_seed(loop_seed: int) -> int:
    """The augmentation seed of an item the training loop asks for by index with ``loop_seed``.

    The dataset takes plain indices, so the loop seeds torch's RNG with ``loop_seed`` around
    the call (``ecamp.train.sampling.SeededIndexDataset``) and ``__getitem__`` draws its seed.
    """
    g = torch.Generator()
    g.manual_seed(loop_seed)
    return int(torch.randint(0, 2**31 - 1, (), generator=g).item())


def upsampled_fraction(
    dataset: PretrainDataset,
    items: Sequence[tuple[int, int]],
    hr_size: int,
    limit: int = 20_000,
) -> tuple[float, int]:
    """Share of the crops of ``items`` ((index, loop seed) pairs) whose real source is below
    ``hr_size`` pixels on a side, i.e. enlarged to become the SR target; and how many crops it
    looked at (``limit`` evenly spaced ones when there are more: an estimate, +-0.4% at most)."""
    if len(items) > limit:
        picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
        items = [items[k] for k in picks]
    up = n = 0
    for i, seed in items:
        src = dataset.crop_source_pixels(int(i), drawn_seed(int(seed)))
        if src is None:
            continue
        n += 1
        up += src[0] < hr_size or src[1] < hr_size
    return (up / n if n else 0.0), n


class PretrainCollator:
    """Stack images (and guidance), and turn the texts into MLM inputs with ``text_batcher``.

    ``text_batcher(reports, distilled, rng)`` returns a dict of tensors (``input_ids``,
    ``attention_mask``, ``mlm_labels``, ``mlm_weights``); its ``rng`` is seeded from the
    samples' ``_seed`` values, so the text masking of a batch is reproducible too.
    """

    def __init__(self, text_batcher: Any):
        self.text_batcher = text_batcher

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("PretrainCollator got an empty batch")
        batch: dict[str, Any] = {"image_hr": torch.stack([s["image_hr"] for s in samples])}
        for key in ("guidance", "guidance_window"):
            present = [key in s for s in samples]
            if all(present):
                batch[key] = torch.stack([s[key] for s in samples])
            elif any(present):
                raise ValueError(f"some samples of the batch have {key!r} and some do not")
        seeds = [int(s["_seed"]) for s in samples]
        rng = np.random.default_rng(seeds)
        reports = [s["report"] for s in samples]
        distilled = [s["distilled"] or None for s in samples]
        batch.update(self.text_batcher(reports, distilled, rng))
        batch["id"] = [s["id"] for s in samples]
        batch["_seed"] = torch.tensor(seeds, dtype=torch.long)
        return batch


def make_collator(text_cfg: Any, **kwargs: Any) -> PretrainCollator:
    """A :class:`PretrainCollator` around ``ecamp.text.masking.TextBatcher(text_cfg, **kwargs)``."""
    from ecamp.text.masking import TextBatcher  # lazy: the text package is optional here

    return PretrainCollator(TextBatcher(text_cfg, **kwargs))
