"""Images/s through decode + pre-training augmentation: full-size JPEG vs the image cache.

    python benchmarks/image_loader.py [--images 4] [--reps 3] [--hr 448] [--cache-size 512]
                                      [--width 2544] [--height 3056] [--threads 1]

Writes a few synthetic chest-like JPEGs of MIMIC-CXR-JPG size (2544 x 3056, quality 95) into
a temporary folder, then times, per image and single process:
  decode: ``load_image`` (full decode) + ``augment_pretrain`` (RandomResizedCrop to hr, flip,
          3 channels, normalise);
  cache:  ``ImageCache.get`` (memory-mapped uint8) + the same augmentation;
  build:  ``build_cache`` (reduced-scale JPEG decode + resize), once per image.
Prints one JSON line; the target is cache >= 20x decode.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ecamp.data.cache import ImageCache, build_cache
from ecamp.data.images import augment_pretrain, load_image
from ecamp.data.synthetic import make_phantom_image


def write_jpegs(folder: Path, n: int, width: int, height: int) -> pd.DataFrame:
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
        rows.append({"id": f"cxr{i}", "image": str(folder / name), "report": "x"})
    return pd.DataFrame(rows)


def per_second(fn, items: list, reps: int) -> float:
    fn(items[0])  # warm-up (imports, allocator)
    start = time.perf_counter()
    for _ in range(reps):
        for item in items:
            fn(item)
    return reps * len(items) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4, help="number of synthetic full-size JPEGs")
    ap.add_argument("--reps", type=int, default=3, help="passes over the images per timing")
    ap.add_argument("--hr", type=int, default=448, help="augmentation output size (SR target)")
    ap.add_argument("--cache-size", type=int, default=512, help="side of the cached square images")
    ap.add_argument("--width", type=int, default=2544, help="JPEG width in pixels")
    ap.add_argument("--height", type=int, default=3056, help="JPEG height in pixels")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        df = write_jpegs(folder, args.images, args.width, args.height)
        paths = df["image"].tolist()

        def decode(i: int) -> None:
            augment_pretrain(load_image(paths[i]), args.hr, seed=i)

        start = time.perf_counter()
        build_cache(df, folder / "cache", size=args.cache_size)
        build_rate = len(df) / (time.perf_counter() - start)
        cache = ImageCache(folder / "cache")

        def cached(i: int) -> None:
            augment_pretrain(cache.get(f"cxr{i}"), args.hr, seed=i)  # type: ignore[arg-type]

        items = list(range(len(df)))
        decode_rate = per_second(decode, items, args.reps)
        cache_rate = per_second(cached, items * 8, args.reps)
    print(
        json.dumps(
            {
                "benchmark": "image_loader",
                "image": f"{args.width}x{args.height} jpeg",
                "hr": args.hr,
                "cache_size": args.cache_size,
                "threads": args.threads,
                "decode_img_per_s": round(decode_rate, 2),
                "cache_img_per_s": round(cache_rate, 2),
                "speedup": round(cache_rate / decode_rate, 1),
                "build_img_per_s": round(build_rate, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
