"""A preprocessed image cache, so training epochs never decode full-size images again.

Layout of a cache folder::

    index.json    {"version": 1, "size": S, "resize": "pad", "format": "npy",
                   "capacity": N, "rows": {id: row}, "shapes": {id: [H, W] decoded},
                   "orig_shapes": {id: [H, W] of the file}, "failed": {id: reason}}
    images.npy    format npy: (N, S, S) uint8, memory-mapped; row r holds one image resized
                  to S x S (``pad``: aspect kept, longer side S, zero padding; ``squash``:
                  both sides S)
    shards/       format jpeg | png: ``NNNNN.bin`` files of encoded images back to back;
                  ``rows`` maps id -> [shard, offset, length].  ``pad`` images are stored
                  without their padding (the content box of :func:`content_box`) and padded
                  again when read, so the reader returns the same S x S square as npy.

``index.json`` is rewritten atomically after every chunk, and only ids whose pixels are
already on disk (``images.npy`` flushed, or the chunk's shard renamed into place) are listed
in ``rows``: a killed build resumes where it stopped, and a second build with a larger
manifest only decodes the new ids (the array grows when needed).  Unreadable images are
listed under ``failed`` with the reason and counted.  ``shapes`` is the decoded size (a JPEG
decoded at reduced DCT scale is smaller than the file): what the real resolution of a cached
square is; ``orig_shapes`` is the file's own, what boxes and masks in original pixels need.

npy costs S*S bytes per image (1156 px: 1.34 MB, 504 GB for MIMIC-CXR's 377,110 images);
jpeg shards at quality 90 a fraction of that, decoded on the fly in the loader workers (see
``benchmarks/image_loader.py`` for both sizes and crop rates).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecamp.errors import DataError, UserError
from ecamp.utils.io import atomic_write, atomic_write_bytes, atomic_write_text
from ecamp.utils.logging import get_logger

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = get_logger(__name__)

ARRAY_NAME = "images.npy"
INDEX_NAME = "index.json"
SHARD_DIR = "shards"
VERSION = 1
FORMATS = ("npy", "jpeg", "png")


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


def _open_array(folder: Path, capacity: int, size: int, name: str = ARRAY_NAME) -> np.memmap:
    """Open ``name`` (images.npy) for writing with at least ``capacity`` rows (growing it)."""
    import numpy as np

    path = folder / name
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


def _encode(img: np.ndarray, fmt: str, quality: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
    else:
        Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def _shard_path(folder: Path, shard: int) -> Path:
    return folder / SHARD_DIR / f"{shard:05d}.bin"


def build_cache(
    manifest: pd.DataFrame,
    out_dir: str | Path,
    size: int = 512,
    num_workers: int = 0,
    image_root: str | Path | None = None,
    resize: str = "pad",
    chunk: int = 256,
    retry_failed: bool = False,
    fmt: str = "npy",
    quality: int = 90,
) -> CacheReport:
    """Decode every manifest image once into the cache in ``out_dir`` (resumable).

    ``manifest`` needs ``id`` and ``image``; relative paths resolve against ``image_root`` or
    the manifest's folder (``df.attrs["root"]``).  ``num_workers`` > 0 decodes in that many
    threads (PIL and numpy release the GIL while decoding, resizing and encoding).  ``fmt``
    picks the storage (``npy`` memory map, ``jpeg`` or ``png`` shards; ``quality`` is the
    JPEG quality).
    """
    # imported here so `ecamp --help` (which imports every stage module) stays light
    from ecamp.data.images import content_box, prepare_image
    from ecamp.data.manifest import normalize_manifest, resolve_image

    manifest = normalize_manifest(manifest)
    if fmt not in FORMATS:
        raise UserError(f"cache format must be one of {FORMATS}, not {fmt!r}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    root = image_root if image_root is not None else manifest.attrs.get("root")
    index = _read_index(folder) or {
        "version": VERSION,
        "size": size,
        "resize": resize,
        "format": fmt,
        "quality": quality if fmt == "jpeg" else None,
        "capacity": 0,
        "shards": 0,
        "rows": {},
        "shapes": {},
        "orig_shapes": {},
        "failed": {},
    }
    built_as = (index["size"], index["resize"], index.get("format", "npy"))
    if built_as != (size, resize, fmt):
        raise UserError(
            f"image cache {folder} was built with size={built_as[0]} resize={built_as[1]} "
            f"format={built_as[2]}, not size={size} resize={resize} format={fmt}; "
            "use another folder or delete it"
        )
    rows: dict[str, Any] = index["rows"]
    shapes: dict[str, list[int]] = index.setdefault("shapes", {})
    orig_shapes: dict[str, list[int]] = index.setdefault("orig_shapes", {})
    failed: dict[str, str] = index["failed"] if not retry_failed else {}
    index["failed"] = failed
    ids = manifest["id"].astype(str).tolist()
    paths = [str(resolve_image(str(im), root)) for im in manifest["image"]]
    first: dict[str, str] = {}
    for i, p in zip(ids, paths):
        first.setdefault(i, p)  # an id listed twice (a union of split lists) is built once
    todo = [(i, p) for i, p in first.items() if i not in rows and i not in failed]
    skipped = len(ids) - len(todo)
    report = CacheReport(total=len(ids), built=0, skipped=skipped, failed=0)
    if not todo:
        log.info("image cache %s: all %d images present", folder, len(ids))
        return report
    arr: np.memmap | None = None
    if fmt == "npy":
        next_row = max(rows.values(), default=-1) + 1
        capacity = max(index["capacity"], next_row + len(todo))
        arr = _open_array(folder, capacity, size)
        index["capacity"] = capacity
    _write_index(folder, index)

    def work(item: tuple[str, str]) -> tuple[str, Any, list[int] | str, list[int]]:
        try:
            img, decoded, original = prepare_image(item[1], size, resize)
        except DataError as e:
            return item[0], None, str(e), []
        if fmt == "npy":
            return item[0], img, list(decoded), list(original)
        top, left, nh, nw = content_box(decoded[0], decoded[1], size, resize)
        data = _encode(img[top : top + nh, left : left + nw], fmt, quality)
        return item[0], data, list(decoded), list(original)

    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    try:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            results: Iterable = pool.map(work, part) if pool else map(work, part)
            new_rows: dict[str, Any] = {}
            blobs: list[bytes] = []
            offset = 0
            for key, img, info, original in results:
                if img is None:
                    failed[key] = report.failures[key] = str(info)
                    report.failed += 1
                    log.warning("image cache: %s", info)
                    continue
                if arr is not None:
                    arr[next_row] = img
                    new_rows[key] = next_row
                    next_row += 1
                else:
                    new_rows[key] = [index["shards"], offset, len(img)]
                    blobs.append(img)
                    offset += len(img)
                shapes[key] = info  # type: ignore[assignment]
                orig_shapes[key] = original
                report.built += 1
            # pixels on disk before the index points at them
            if arr is not None:
                arr.flush()
            elif blobs:
                atomic_write_bytes(_shard_path(folder, index["shards"]), b"".join(blobs))
                index["shards"] += 1
            rows.update(new_rows)
            _write_index(folder, index)
            log.info("image cache %s: %d/%d", folder, start + len(part), len(todo))
    finally:
        if pool:
            pool.shutdown()
        del arr
    return report


class ImageCache:
    """Read side of a cache folder; opens its files lazily (safe to pickle into workers)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = _read_index(self.folder)
        self.format: str = str(index.get("format", "npy")) if index else "npy"
        data = self.folder / (ARRAY_NAME if self.format == "npy" else SHARD_DIR)
        if index is None or not data.exists():
            raise UserError(
                f"{self.folder} is not an image cache (no {INDEX_NAME} / {data.name}); "
                "build it first with `ecamp cache`"
            )
        self.size: int = int(index["size"])
        self.resize: str = index["resize"]
        self.rows: dict[str, Any] = {str(k): v for k, v in index["rows"].items()}
        self.shapes: dict[str, tuple[int, int]] = {
            str(k): (int(v[0]), int(v[1])) for k, v in index.get("shapes", {}).items()
        }
        self.orig_shapes: dict[str, tuple[int, int]] = {
            str(k): (int(v[0]), int(v[1])) for k, v in index.get("orig_shapes", {}).items()
        }
        self.failed: dict[str, str] = dict(index["failed"])
        self._arr: np.ndarray | None = None
        self._shards: dict[int, Any] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arr"], state["_shards"] = None, {}  # every process maps the files itself
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: object) -> bool:
        return str(key) in self.rows

    def _array(self) -> np.ndarray:
        """The npy cache's array, memory-mapped on first use (in each loader worker)."""
        import numpy as np

        if self._arr is None:
            self._arr = np.load(self.folder / ARRAY_NAME, mmap_mode="r")
        return self._arr

    def get(self, key: str) -> np.ndarray | None:
        """The (S, S) uint8 image of ``key``, or None when the cache lacks it."""
        import numpy as np

        row = self.rows.get(str(key))
        if row is None:
            return None
        if self.format == "npy":
            return np.array(self._array()[row])  # a private, writable copy (S*S bytes)
        return self._decode(str(key), int(row[0]), int(row[1]), int(row[2]))

    def get_region(
        self, key: str, top: int, left: int, height: int, width: int, min_side: int = 0
    ) -> np.ndarray | None:
        """Rows ``top:top+height``, columns ``left:left+width`` of the S x S image of ``key``
        (what ``get(key)[...]`` holds), touching only that region where the format allows.

        With ``min_side`` > 0 a JPEG shard may be decoded at 1/2, 1/4 or 1/8 scale in the
        DCT as long as the region keeps at least ``min_side`` pixels on each side: the
        region then comes back smaller (its caller resizes it anyway).  None when absent.
        """
        import numpy as np

        row = self.rows.get(str(key))
        if row is None:
            return None
        if self.format == "npy":
            return np.array(self._array()[row, top : top + height, left : left + width])
        need = max(min_side / height, min_side / width) if min_side else 1.0
        content, (top0, left0) = self._content(str(key), row, need)
        nh, nw = self._content_size(str(key))
        fy, fx = content.shape[0] / nh, content.shape[1] / nw  # 1 unless decoded reduced
        r0, c0 = round((top - top0) * fy), round((left - left0) * fx)
        r1, c1 = round((top - top0 + height) * fy), round((left - left0 + width) * fx)
        if r0 >= 0 and c0 >= 0 and r1 <= content.shape[0] and c1 <= content.shape[1]:
            return np.array(content[r0:r1, c0:c1])
        out = np.zeros((r1 - r0, c1 - c0), np.uint8)  # the region reaches into the padding
        a, b = max(r0, 0), min(r1, content.shape[0])
        c, d = max(c0, 0), min(c1, content.shape[1])
        if a < b and c < d:
            out[a - r0 : b - r0, c - c0 : d - c0] = content[a:b, c:d]
        return out

    def _content_size(self, key: str) -> tuple[int, int]:
        from ecamp.data.images import content_box

        h, w = self.shapes.get(key, (self.size, self.size))
        return content_box(h, w, self.size, self.resize)[2:]

    def _content(
        self, key: str, row: Any, scale: float = 1.0
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """The stored (unpadded) pixels of a shard entry and their (top, left) in the square;
        ``scale`` < 1 allows a reduced JPEG decode of at least that fraction of each side."""
        import io
        import mmap

        import numpy as np
        from PIL import Image

        from ecamp.data.images import content_box

        shard, offset, length = int(row[0]), int(row[1]), int(row[2])
        mm = self._shards.get(shard)
        if mm is None:
            path = _shard_path(self.folder, shard)
            try:
                with open(path, "rb") as f:
                    mm = self._shards[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as e:
                raise DataError(f"image cache shard {path}: {e}; rebuild the cache") from None
        h, w = self.shapes.get(key, (self.size, self.size))
        top, left, nh, nw = content_box(h, w, self.size, self.resize)
        with Image.open(io.BytesIO(mm[offset : offset + length])) as img:
            if scale <= 0.5 and self.format == "jpeg":
                img.draft("L", (math.ceil(nw * scale) + 1, math.ceil(nh * scale) + 1))
            content = np.asarray(img if img.mode == "L" else img.convert("L"))
        if content.shape != (nh, nw) and scale > 0.5:
            raise DataError(
                f"image cache {self.folder}: {key} decodes to {content.shape}, not {(nh, nw)}; "
                "the shard is damaged, rebuild the cache"
            )
        return content, (top, left)

    def _decode(self, key: str, shard: int, offset: int, length: int) -> np.ndarray:
        import numpy as np

        content, (top, left) = self._content(key, (shard, offset, length))
        nh, nw = content.shape
        if (nh, nw) == (self.size, self.size):
            return np.array(content)
        out = np.zeros((self.size, self.size), np.uint8)
        out[top : top + nh, left : left + nw] = content
        return out


# --------------------------------------------------------------------------- command line

HELP = "Build (or resume) the preprocessed image cache of a manifest or a downstream set."

DOWNSTREAM = ("phantom", "chestxray14", "chexpert", "rsna", "covidx", "siim")


def add_arguments(parser: Any) -> None:
    """Flags of the cache builder (an ``ecamp`` stage module)."""
    parser.add_argument(
        "source",
        help="a pre-training manifest (.csv/.jsonl/.parquet with id, image and report "
        "columns), a downstream manifest CSV (id and image columns, no report), or a "
        "downstream set by name: "
        + ", ".join(DOWNSTREAM)
        + " (with --data-root; caches the images of every split list of the set)",
    )
    parser.add_argument("output", help="cache folder (created; an existing one is resumed)")
    parser.add_argument(
        "--size",
        type=int,
        default=512,
        help="side of the cached squares (default 512).  1156 keeps every 448-px crop of "
        "scale >= 0.2 and aspect 3/4..4/3 at full resolution (the SR target; "
        "ecamp.data.images.cache_side_for)",
    )
    parser.add_argument(
        "--resize",
        choices=("pad", "squash"),
        default=None,
        help="pad: keep the aspect ratio with zero padding (default for pre-training "
        "manifests); squash: stretch to a square (downstream sets, always)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="npy",
        help="npy: one uint8 memory map, S*S bytes an image (default); jpeg / png: "
        "compressed shards decoded on the fly by the loader workers",
    )
    parser.add_argument(
        "--quality", type=int, default=90, help="JPEG quality of --format jpeg (default 90)"
    )
    parser.add_argument(
        "--image-root", default=None, help="folder relative image paths resolve against"
    )
    parser.add_argument(
        "--data-root", default=None, help="downstream set by name: the dataset's root folder"
    )
    parser.add_argument(
        "--task",
        action="append",
        choices=("cls", "seg", "det"),
        help="downstream: cache these tasks' images (repeatable; default every task of the "
        "set); seg also caches the masks",
    )
    parser.add_argument(
        "--labels-from",
        choices=("list", "official"),
        default="list",
        help="downstream set by name: targets from the release lists (default) or the "
        "dataset's files, as data.labels_from of `ecamp finetune`",
    )
    parser.add_argument("--workers", type=int, default=4, help="decoding threads (default 4)")
    parser.add_argument(
        "--retry-failed", action="store_true", help="try images that failed before again"
    )


def _run_downstream(args: Any) -> CacheReport:

    from ecamp.data.downstream_cache import build_set_cache, source_manifests

    if args.resize == "pad":
        raise UserError("downstream caches squash images (as fine-tuning does): drop --resize pad")
    if args.source in DOWNSTREAM:
        per_task = source_manifests(
            args.source, args.data_root or "", args.task or (), labels_from=args.labels_from
        )
    else:
        from ecamp.data.downstream import load_manifest

        per_task = {"seg" if "seg" in (args.task or ()) else "images": load_manifest(args.source)}
    report, masks = build_set_cache(
        per_task,
        args.output,
        size=args.size,
        num_workers=args.workers,
        fmt=args.format,
        quality=args.quality,
        retry_failed=args.retry_failed,
    )
    if "seg" in per_task:
        log.info("image cache %s: %d segmentation masks built", args.output, masks)
    return report


def run(args: Any) -> int:
    """Build the cache; exit status 1 when some images could not be read."""
    from ecamp.data.manifest import read_table, require_columns

    df = None
    if args.source not in DOWNSTREAM:
        df = read_table(args.source)
    # both kinds name their images "image"; only a pre-training manifest carries reports
    if df is None or "report" not in df.columns:
        report = _run_downstream(args)
    else:
        require_columns(df, ("id", "image"))
        report = build_cache(
            df,
            args.output,
            size=args.size,
            num_workers=args.workers,
            image_root=args.image_root,
            resize=args.resize or "pad",
            retry_failed=args.retry_failed,
            fmt=args.format,
            quality=args.quality,
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
