"""Super-resolution guidance on disk: entity attention maps and release-style windows.

``ecamp attention export`` writes one folder; :class:`GuidanceStore` reads it for the
pre-training data (SPEC.md section 4, both guidance modes of the SR loss)::

    meta.json                      {"version": 1, "size": S, "window_grid": G,
                                    "window_patches": K, "pool": ..., "mentions": ...,
                                    "manifest": ..., "n_images": ..., "n_maps": ...}
    index.csv                      one row per exported image: id, shard (-1: no entity
                                   word, so no map), row, col (window, -1 without a map),
                                   entities (";"-joined), sentence (the entity sentences)
    shards/shard_NNNNN.safetensors float16 (S, S) maps keyed by image id (plus
                                   "<id>#<entity>" keys when maps are kept per entity)
    shards/shard_NNNNN.csv         that shard's index rows (a shard is complete when both
                                   files exist: an interrupted export resumes there)

Maps cover the whole original image (any aspect ratio), are scaled to a maximum of 1 (only
their shape matters: the SR loss rescales each to mean 1) and are stored at S x S (448 by
default: 392 KiB per image; choose a smaller ``export.size`` for big corpora, the data
pipeline resamples maps to the crop anyway).  The window is the release's: the top-left
(row, col) of the K x K block of patches (K = 12) with the largest attention mass, in the
G x G patch grid of the pre-training encoder (G = 14: 16-pixel patches of the 224 input,
32 pixels of the 448 image), i.e. 0 <= row, col <= G - K.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ecamp.errors import DataError, UserError
from ecamp.utils.io import atomic_write, atomic_write_text
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

VERSION = 1
META_NAME = "meta.json"
INDEX_NAME = "index.csv"
SHARD_DIR = "shards"
INDEX_COLUMNS = ("id", "shard", "row", "col", "entities", "sentence")


def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}"


def entity_key(image_id: str, entity: str) -> str:
    """Key of a per-entity map inside a shard."""
    return f"{image_id}#{entity}"


# --------------------------------------------------------------------------- windows


def best_window(maps: np.ndarray | torch.Tensor, grid: int, window_patches: int) -> np.ndarray:
    """Top-left (row, col) of the ``window_patches``-square window of a ``grid`` x ``grid``
    patch grid holding the most mass of each map: (B, S, S) or (S, S) -> (B, 2) / (2,) int.

    A window as large as the grid (or larger) sits at (0, 0).
    """
    t = torch.as_tensor(np.asarray(maps) if isinstance(maps, np.ndarray) else maps).float()
    single = t.ndim == 2
    t = t.reshape(-1, 1, *t.shape[-2:])
    k = min(window_patches, grid)
    cells = F.adaptive_avg_pool2d(t, grid)  # mass per patch (up to a constant)
    sums = F.avg_pool2d(cells, kernel_size=k, stride=1)[:, 0]  # (B, G-k+1, G-k+1)
    n = sums.shape[-1]
    flat = sums.reshape(sums.shape[0], -1).argmax(dim=1)
    out = torch.stack([flat // n, flat % n], dim=1).numpy().astype(np.int64)
    return out[0] if single else out


# --------------------------------------------------------------------------- writing


class GuidanceWriter:
    """Writes an export folder shard by shard; ``done(shard)`` tells what a rerun may skip."""

    def __init__(self, folder: str | Path, meta: dict[str, Any]):
        self.folder = Path(folder)
        self.meta = dict(meta)
        (self.folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        old = self.folder / META_NAME
        if old.is_file():
            prev = json.loads(old.read_text("utf-8"))
            keys = (
                "size",
                "window_grid",
                "window_patches",
                "pool",
                "mentions",
                "n_rows",
                "shard_size",
            )
            changed = [k for k in keys if prev.get(k) != self.meta.get(k)]
            if changed:
                raise UserError(
                    f"{self.folder} holds an export with other settings ({', '.join(changed)}); "
                    "choose a new output folder or delete it"
                )
        atomic_write_text(old, json.dumps({**self.meta, "complete": False}, indent=1))

    def _paths(self, shard: int) -> tuple[Path, Path]:
        base = self.folder / SHARD_DIR / shard_name(shard)
        return base.with_suffix(".safetensors"), base.with_suffix(".csv")

    def done(self, shard: int) -> bool:
        return all(p.is_file() for p in self._paths(shard))

    def write_shard(self, shard: int, maps: dict[str, np.ndarray], rows: pd.DataFrame) -> None:
        """Store a shard's float16 maps and index rows (maps first: the csv marks completion)."""
        from safetensors.numpy import save_file

        tensors = {k: np.ascontiguousarray(v, dtype=np.float16) for k, v in maps.items()}
        st, csv = self._paths(shard)
        atomic_write(st, lambda tmp: save_file(tensors, tmp))
        out = rows.loc[:, list(INDEX_COLUMNS)]
        atomic_write(csv, lambda tmp: out.to_csv(tmp, index=False))

    def finish(self, n_shards: int) -> Path:
        """Merge the shard indexes into index.csv and mark the export complete."""
        parts = [
            pd.read_csv(self._paths(s)[1], dtype={"id": str}, keep_default_na=False)
            for s in range(n_shards)
        ]
        index = (
            pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=INDEX_COLUMNS)
        )
        atomic_write(self.folder / INDEX_NAME, lambda tmp: index.to_csv(tmp, index=False))
        meta = {
            **self.meta,
            "n_images": int(len(index)),
            "n_maps": int((index["shard"] >= 0).sum()) if len(index) else 0,
            "complete": True,
        }
        atomic_write_text(self.folder / META_NAME, json.dumps(meta, indent=1))
        return self.folder


# --------------------------------------------------------------------------- reading


class GuidanceStore:
    """Read side of an export folder, for the pre-training data.

    ``kind`` is ``"map"`` (paper, Eq. 5) or ``"window"`` (release); :meth:`get` returns what
    that mode needs, :meth:`map` and :meth:`window` each kind explicitly.  Ids the export
    does not know (or whose shard is missing) return None and are counted in ``missing``
    (logged: the data then uses uniform guidance); ids exported without an entity word also
    return None but count in ``no_entity`` (uniform by design).  Shards are memory-mapped
    lazily, one tensor read per call; the store pickles into DataLoader workers without its
    open files.
    """

    def __init__(self, folder: str | Path, kind: str = "map"):
        if kind not in ("map", "window"):
            raise UserError(f"guidance kind {kind!r}: use 'map' or 'window'")
        self.folder = Path(folder)
        self.kind = kind
        meta_path, index_path = self.folder / META_NAME, self.folder / INDEX_NAME
        if not meta_path.is_file() or not index_path.is_file():
            raise UserError(
                f"{self.folder} is not a finished guidance export (no {META_NAME} / {INDEX_NAME}); "
                "run `ecamp attention export` (it resumes) or set data.guidance to ''"
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text("utf-8"))
        try:
            index = pd.read_csv(index_path, dtype={"id": str}, keep_default_na=False)
        except (ValueError, OSError, pd.errors.ParserError) as e:
            raise DataError(f"guidance index {index_path} cannot be read: {e}") from None
        missing_cols = [c for c in ("id", "shard", "row", "col") if c not in index.columns]
        if missing_cols:
            raise DataError(f"guidance index {index_path} lacks column(s) {missing_cols}")
        self.size = int(self.meta.get("size", 0))
        self._row: dict[str, int] = {k: i for i, k in enumerate(index["id"].astype(str))}
        self._shard = index["shard"].to_numpy(np.int32)
        self._window = index[["row", "col"]].to_numpy(np.int32)
        self._entities = index["entities"].astype(str).tolist() if "entities" in index else None
        self._sentence = index["sentence"].astype(str).tolist() if "sentence" in index else None
        self._handles: dict[int, Any] = {}
        self._keys: dict[int, set[str]] = {}
        self.missing = 0
        self.no_entity = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_keys"] = {}, {}
        return state

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, key: object) -> bool:
        return str(key) in self._row

    def _lookup(self, key: str) -> int | None:
        i = self._row.get(str(key))
        if i is None:
            self._count_missing(key, "not in the export")
            return None
        if self._shard[i] < 0:
            self.no_entity += 1
            return None
        return i

    def _count_missing(self, key: str, why: str) -> None:
        self.missing += 1
        if self.missing & (self.missing - 1) == 0:  # 1, 2, 4, 8, ...: a count without a flood
            log.warning(
                "no guidance for id %s (%s): uniform guidance used; %d id(s) so far",
                key,
                why,
                self.missing,
            )

    def _open(self, shard: int) -> Any:
        h = self._handles.get(shard)
        if h is None:
            from safetensors import safe_open

            path = self.folder / SHARD_DIR / f"{shard_name(shard)}.safetensors"
            if not path.is_file():
                return None
            h = safe_open(str(path), framework="np")
            self._handles[shard] = h
            self._keys[shard] = set(h.keys())
        return h

    def map(self, key: str, entity: str | None = None) -> np.ndarray | None:
        """The (S, S) float32 map of ``key`` (of one entity, when exported per entity)."""
        i = self._lookup(key)
        if i is None:
            return None
        shard = int(self._shard[i])
        h = self._open(shard)
        name = str(key) if entity is None else entity_key(str(key), entity)
        if h is None:
            self._count_missing(key, f"shard {shard_name(shard)} missing")
            return None
        if name not in self._keys[shard]:
            if entity is None:
                self._count_missing(key, f"not in {shard_name(shard)}")
            return None
        return np.asarray(h.get_tensor(name), dtype=np.float32)

    def window(self, key: str) -> tuple[int, int] | None:
        """The window's top-left (row, col) in patches of the encoder grid, or None."""
        i = self._lookup(key)
        if i is None:
            return None
        r, c = self._window[i]
        return int(r), int(c)

    def get(self, key: str) -> np.ndarray | tuple[int, int] | None:
        """What the pre-training data needs for ``key`` in this store's ``kind``."""
        return self.map(key) if self.kind == "map" else self.window(key)

    def entities(self, key: str) -> list[str]:
        """The entities whose words were pooled into the map of ``key``."""
        i = self._row.get(str(key))
        if i is None or self._entities is None or not self._entities[i]:
            return []
        return self._entities[i].split(";")

    def sentence(self, key: str) -> str:
        """The entity sentences of ``key``'s text (the overlay title)."""
        i = self._row.get(str(key))
        return "" if i is None or self._sentence is None else self._sentence[i]

    def ids_with_maps(self) -> list[str]:
        """Ids that have a map, in export order."""
        keys = list(self._row)
        return [keys[i] for i in np.flatnonzero(self._shard >= 0)]
