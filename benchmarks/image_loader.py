"""Pre-training image loading: full-size decode vs the 512-px cache, and the high-resolution
SR-target cache (memmap vs compressed shards): size on disk and 448-px crops/s per core.

    python benchmarks/image_loader.py [--data ../shared/data] [--images 8] [--reps 3]
                                      [--hr 448] [--cache-size 512] [--quality 90]
                                      [--width 2544] [--height 3056] [--threads 1]

Images: with ``--data`` (default ``$ECAMP_TEST_DATA``) real ones: the full-size JPEG fixture
(2373 px, downsized only) and ChestX-ray14 PNGs (512 px, UP-SIZED to width x height with
bicubic, so smoother than a real radiograph: their compressed size is a lower bound), saved
as JPEG quality 95 like MIMIC-CXR-JPG; without it synthetic phantoms with film grain.
Timings are single process, ``--threads`` torch threads (per loader core):

  decode:    ``load_image`` (full decode) + ``augment_pretrain`` (crop to hr, flip, normalise)
  cache:     the same from a ``--cache-size`` memmap cache (the old paper recipe)
  hr_cache:  caches at the side ``cache_side_for(hr)`` (1156 for 448 px: no crop up-sampled)
             as npy memmap, jpeg shards (``--quality``) and png shards: bytes an image, GB for
             MIMIC-CXR's 377,110 images, crops/s through ``PretrainDataset`` (the loader's
             path: only the crop's region is read; jpeg decodes at 1/2 DCT scale when the
             crop keeps hr pixels) per wall second and per CPU second, and the jpeg/png
             error against the memmap (PSNR, dB)

Prints one JSON line.  Targets: cache >= 20x decode; hr_cache >= 200 crops/s per core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ecamp.config import DataConfig
from ecamp.data.cache import ImageCache, build_cache
from ecamp.data.images import augment_pretrain, cache_side_for, load_image
from ecamp.data.pretrain import PretrainDataset
from ecamp.data.synthetic import make_phantom_image

MIMIC_IMAGES = 377_110


def write_phantoms(folder: Path, n: int, width: int, height: int) -> pd.DataFrame:
    """``n`` phantom radiographs upscaled to width x height, with film-grain noise."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img, _, _ = make_phantom_image(i, size=512, seed=0)
        big = Image.fromarray(np.rint(img * 255).astype(np.uint8)).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        arr = np.asarray(big, np.float32) + rng.normal(0, 4, (height, width)).astype(np.float32)
        name = f"cxr{i}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / name, quality=95)
        rows.append(
            {"id": f"cxr{i}", "image": str(folder / name), "report": "x", "kind": "phantom"}
        )
    return pd.DataFrame(rows)


def write_real(folder: Path, data: Path, n: int, width: int, height: int) -> pd.DataFrame:
    """The full-size fixture JPEG as is, and ``n - 1`` ChestX-ray14 PNGs up-sized to MIMIC size."""
    rows = []
    full = data / "fixtures" / "covid-19-pneumonia-58-prior.jpg"
    Image.open(full).convert("L").save(folder / "real0.jpg", quality=95)
    rows.append({"id": "real0", "image": str(folder / "real0.jpg"), "kind": "full-size"})
    for i, png in enumerate(sorted((data / "nih_cxr14_subset" / "images").glob("*.png"))[: n - 1]):
        big = Image.open(png).convert("L").resize((width, height), Image.Resampling.BICUBIC)
        name = f"nih{i}.jpg"
        big.save(folder / name, quality=95)
        rows.append({"id": f"nih{i}", "image": str(folder / name), "kind": "up-sized"})
    return pd.DataFrame(rows).assign(report="x")


def per_second(fn, items: list, reps: int) -> float:
    return rates(fn, items, reps)[0]


def rates(fn, items: list, reps: int) -> tuple[float, float]:
    """Calls per wall second and per CPU second of this process (the latter is what one
    loader core gives when other processes share the machine)."""
    fn(items[0])  # warm-up (imports, allocator, page cache)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(reps):
        for item in items:
            fn(item)
    n = reps * len(items)
    return n / (time.perf_counter() - start), n / max(time.process_time() - cpu, 1e-9)


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        default=os.environ.get("ECAMP_TEST_DATA", ""),
        help="the shared sample-data folder (real images); empty: synthetic phantoms",
    )
    ap.add_argument("--images", type=int, default=8, help="number of full-size source images")
    ap.add_argument("--reps", type=int, default=3, help="passes over the images per timing")
    ap.add_argument("--hr", type=int, default=448, help="augmentation output size (SR target)")
    ap.add_argument("--cache-size", type=int, default=512, help="side of the low-res cache")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the jpeg shards")
    ap.add_argument("--width", type=int, default=2544, help="full-size width in pixels")
    ap.add_argument("--height", type=int, default=3056, help="full-size height in pixels")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    side = cache_side_for(args.hr)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.data:
            df = write_real(folder, Path(args.data), args.images, args.width, args.height)
        else:
            df = write_phantoms(folder, args.images, args.width, args.height)
        paths = df["image"].tolist()
        ids = df["id"].tolist()
        items = list(range(len(df)))

        def decode(i: int) -> None:
            augment_pretrain(load_image(paths[i]), args.hr, seed=i)

        start = time.perf_counter()
        build_cache(df, folder / "cache", size=args.cache_size)
        build_rate = len(df) / (time.perf_counter() - start)
        low = ImageCache(folder / "cache")
        decode_rate = per_second(decode, items, args.reps)
        low_rate = per_second(
            lambda i: augment_pretrain(low.get(ids[i]), args.hr, seed=i),  # type: ignore[arg-type]
            items * 8,
            args.reps,
        )

        hr: dict[str, dict] = {}
        reference: dict[str, np.ndarray] = {}
        for fmt, pattern in (
            ("npy", "images.npy"),
            ("jpeg", "shards/*.bin"),
            ("png", "shards/*.bin"),
        ):
            where = folder / f"hr_{fmt}"
            start = time.perf_counter()
            build_cache(df, where, size=side, fmt=fmt, quality=args.quality)
            built = len(df) / (time.perf_counter() - start)
            cache = ImageCache(where)
            per_image = folder_bytes(where, pattern) / len(df)
            # the loader's own path: PretrainDataset reads the crop's region from the cache
            ds = PretrainDataset(df, DataConfig(), hr_size=args.hr, cache=cache)
            pairs = [(i, 1000 * r + i) for r in range(6) for i in items]  # fresh crops
            wall, cpu = rates(ds.__getitem__, pairs, args.reps)
            row = {
                "bytes_per_image": round(per_image),
                "mimic_gb": round(per_image * MIMIC_IMAGES / 1e9, 1),
                "crops_per_s": round(wall, 1),
                "crops_per_cpu_s": round(cpu, 1),
                "build_img_per_s": round(built, 2),
            }
            if fmt == "npy":
                reference = {k: cache.get(k) for k in ids}  # type: ignore[misc]
            else:
                errors = [psnr(cache.get(k), reference[k]) for k in ids]  # type: ignore[arg-type]
                row["psnr_db"] = round(float(np.mean(errors)), 1)
                kinds = {}
                for kind, part in df.groupby("kind"):
                    sizes = [cache.rows[k][2] for k in part["id"]]
                    kinds[str(kind)] = round(float(np.mean(sizes)))
                row["bytes_per_image_by_source"] = kinds
            hr[fmt] = row
    print(
        json.dumps(
            {
                "benchmark": "image_loader",
                "images": f"{len(df)} ({', '.join(sorted(set(df['kind'])))}) at {args.width}x{args.height}",
                "hr": args.hr,
                "threads": args.threads,
                "decode_img_per_s": round(decode_rate, 2),
                "cache_size": args.cache_size,
                "cache_img_per_s": round(low_rate, 2),
                "speedup": round(low_rate / decode_rate, 1),
                "build_img_per_s": round(build_rate, 2),
                "hr_cache_side": side,
                "hr_cache": hr,
            }
        )
    )


if __name__ == "__main__":
    main()
