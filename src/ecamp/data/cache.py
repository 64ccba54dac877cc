"""A preprocessed image cache, so training epochs never decode full-size images again.

Layout of a cache folder::

    images.npy    (N, S, S) uint8, memory-mapped; row r holds one image resized to S x S
                  (``pad``: aspect kept, longer side S, zero padding; ``squash``: both sides S)
    index.json    {"version": 1, "size": S, "resize": "pad", "capacity": N,
                   "rows": {id: row}, "shapes": {id: [H, W] decoded before resizing},
                   "failed": {id: reason}}

``index.json`` is rewritten atomically after every chunk, and only ids whose pixels are
already flushed to ``images.npy`` are listed in ``rows``: a killed build resumes where it
stopped, and a second build with a larger manifest only decodes the new ids (the array grows
when needed).  Unreadable images are listed under ``failed`` with the reason and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ecamp.errors import DataError, UserError
from ecamp.utils.io import atomic_write, atomic_write_text
from ecamp.utils.logging import get_logger

if TYPE_CHECKING:
    import pandas as pd

log = get_logger(__name__)

ARRAY_NAME = "images.npy"
INDEX_NAME = "index.json"
VERSION = 1


@dataclass
class CacheReport:
    """What one :func:`build_cache` call did."""

    total: int
    built: int
    skipped: int
    failed: int
    failures: dict[str, str] = field(default_factory=dict)


def _read_index(folder: Path) -> dict | None:
    p = folder / INDEX_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(
            f"image cache index {p} is unreadable ({e}); delete the folder to rebuild"
        ) from None


def _write_index(folder: Path, index: dict) -> None:
    atomic_write_text(folder / INDEX_NAME, json.dumps(index))


def _open_array(folder: Path, capacity: int, size: int) -> np.memmap:
    """Open images.npy for writing with at least ``capacity`` rows (growing it if needed)."""
    path = folder / ARRAY_NAME
    if path.is_file():
        arr = np.load(path, mmap_mode="r+")
        if arr.shape[1:] != (size, size) or arr.dtype != np.uint8:
            raise DataError(
                f"image cache {path} holds {arr.shape} {arr.dtype}, not (N,{size},{size}) uint8"
            )
        if arr.shape[0] >= capacity:
            return arr
        old = arr

        def grow(tmp: str) -> None:
            new = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(capacity, size, size)
            )
            new[: old.shape[0]] = old
            new.flush()
            del new

        atomic_write(path, grow)
        del old
    else:
        np.lib.format.open_memmap(
            path, mode="w+", dtype=np.uint8, shape=(capacity, size, size)
        ).flush()
    return np.load(path, mmap_mode="r+")


def build_cache(
    manifest: pd.DataFrame,
    out_dir: str | Path,
    size: int = 512,
    num_workers: int = 0,
    image_root: str | Path | None = None,
    resize: str = "pad",
    chunk: int = 256,
    retry_failed: bool = False,
) -> CacheReport:
    """Decode every manifest image once into the cache in ``out_dir`` (resumable).

    ``manifest`` needs ``id`` and ``image``; relative paths resolve against ``image_root`` or
    the manifest's folder (``df.attrs["root"]``).  ``num_workers`` > 0 decodes in that many
    threads (PIL and numpy release the GIL while decoding and resizing).
    """
    # imported here so `ecamp --help` (which imports every stage module) stays light
    from ecamp.data.images import decode_for_cache
    from ecamp.data.manifest import resolve_image

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    root = image_root if image_root is not None else manifest.attrs.get("root")
    index = _read_index(folder) or {
        "version": VERSION,
        "size": size,
        "resize": resize,
        "capacity": 0,
        "rows": {},
        "shapes": {},
        "failed": {},
    }
    if index["size"] != size or index["resize"] != resize:
        raise UserError(
            f"image cache {folder} was built with size={index['size']} resize={index['resize']}, "
            f"not size={size} resize={resize}; use another folder or delete it"
        )
    rows: dict[str, int] = index["rows"]
    shapes: dict[str, list[int]] = index.setdefault("shapes", {})
    failed: dict[str, str] = index["failed"] if not retry_failed else {}
    index["failed"] = failed
    ids = manifest["id"].astype(str).tolist()
    paths = [str(resolve_image(str(im), root)) for im in manifest["image"]]
    todo = [(i, p) for i, p in zip(ids, paths) if i not in rows and i not in failed]
    skipped = len(ids) - len(todo)
    report = CacheReport(total=len(ids), built=0, skipped=skipped, failed=0)
    if not todo:
        log.info("image cache %s: all %d images present", folder, len(ids))
        return report
    next_row = max(rows.values(), default=-1) + 1
    capacity = max(index["capacity"], next_row + len(todo))
    arr = _open_array(folder, capacity, size)
    index["capacity"] = capacity
    _write_index(folder, index)

    def work(item: tuple[str, str]) -> tuple[str, np.ndarray | None, list[int] | str]:
        try:
            img, shape = decode_for_cache(item[1], size, resize)
            return item[0], img, list(shape)
        except DataError as e:
            return item[0], None, str(e)

    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    try:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            results: Iterable = pool.map(work, part) if pool else map(work, part)
            new_rows = {}
            for key, img, info in results:
                if img is None:
                    failed[key] = report.failures[key] = str(info)
                    report.failed += 1
                    log.warning("image cache: %s", info)
                    continue
                arr[next_row] = img
                shapes[key] = info
                new_rows[key] = next_row
                next_row += 1
                report.built += 1
            arr.flush()  # pixels on disk before the index points at them
            rows.update(new_rows)
            _write_index(folder, index)
            log.info("image cache %s: %d/%d", folder, start + len(part), len(todo))
    finally:
        if pool:
            pool.shutdown()
        del arr
    return report


class ImageCache:
    """Read side of a cache folder; opens the memmap lazily (safe to pickle into workers)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = _read_index(self.folder)
        if index is None or not (self.folder / ARRAY_NAME).is_file():
            raise UserError(
                f"{self.folder} is not an image cache (no {INDEX_NAME} / {ARRAY_NAME}); build it first"
            )
        self.size: int = int(index["size"])
        self.resize: str = index["resize"]
        self.rows: dict[str, int] = {str(k): int(v) for k, v in index["rows"].items()}
        self.shapes: dict[str, tuple[int, int]] = {
            str(k): (int(v[0]), int(v[1])) for k, v in index.get("shapes", {}).items()
        }
        self.failed: dict[str, str] = dict(index["failed"])
        self._arr: np.ndarray | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arr"] = None  # every process maps the file itself
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: object) -> bool:
        return str(key) in self.rows

    def get(self, key: str) -> np.ndarray | None:
        """The (S, S) uint8 image of ``key``, or None when the cache lacks it."""
        row = self.rows.get(str(key))
        if row is None:
            return None
        if self._arr is None:
            self._arr = np.load(self.folder / ARRAY_NAME, mmap_mode="r")
        return np.array(self._arr[row])  # a private, writable copy (256 KB at S=512)


# --------------------------------------------------------------------------- command line

HELP = "Build (or resume) the preprocessed image cache of a manifest."


def add_arguments(parser: Any) -> None:
    """Flags of the cache builder (an ``ecamp`` stage module)."""
    parser.add_argument(
        "manifest", help="manifest table (.csv/.jsonl/.parquet) with id and image columns"
    )
    parser.add_argument("output", help="cache folder (created; an existing one is resumed)")
    parser.add_argument(
        "--size", type=int, default=512, help="side of the cached squares (default 512)"
    )
    parser.add_argument(
        "--resize",
        choices=("pad", "squash"),
        default="pad",
        help="pad: keep the aspect ratio with zero padding (default); squash: stretch to a square",
    )
    parser.add_argument(
        "--image-root", default=None, help="folder relative image paths resolve against"
    )
    parser.add_argument("--workers", type=int, default=4, help="decoding threads (default 4)")
    parser.add_argument(
        "--retry-failed", action="store_true", help="try images that failed before again"
    )


def run(args: Any) -> int:
    """Build the cache; exit status 1 when some images could not be read."""
    from ecamp.data.manifest import read_table, require_columns

    df = read_table(args.manifest)
    require_columns(df, ("id", "image"))
    report = build_cache(
        df,
        args.output,
        size=args.size,
        num_workers=args.workers,
        image_root=args.image_root,
        resize=args.resize,
        retry_failed=args.retry_failed,
    )
    log.info(
        "image cache %s: %d built, %d already present, %d failed (listed in %s)",
        args.output,
        report.built,
        report.skipped,
        report.failed,
        Path(args.output) / INDEX_NAME,
    )
    return 1 if report.failed else 0
