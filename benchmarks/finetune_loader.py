"""Downstream (fine-tuning) items/s: decoding every file every epoch vs the downstream cache.

    python benchmarks/finetune_loader.py [--data ../shared/data] [--images 6] [--reps 2]
                                         [--size 224] [--cache-size 512] [--threads 1]

Real files from ``--data`` (default ``$ECAMP_TEST_DATA``), one kind per dataset format:

  png:   ChestX-ray14 PNGs (the sample is 512 px; UP-SIZED to the official 1024 px)
  dicom: the SIIM-ACR DICOM (1024 px, JPEG baseline transfer syntax), with an RLE mask (seg)
  jpeg:  the full-size JPEG fixture (2373 px), standing in for CheXpert / MIMIC JPEGs

For each: training items (random resized crop to ``--size``, flip, normalise; seg: the mask
with it; det: boxes) from ``DownstreamDataset`` single process, ``--threads`` torch threads:
``decode`` (the default full-resolution path), ``decode_prepared`` (decode then squash to the
cache side: the same tensors as the cache) and ``cache`` (``ecamp cache``, npy).  Prints one
JSON line with images/s, the cache speed-up over ``decode`` (target >= 20x) and whether the
prepared-decode and cache tensors are identical for the same seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ecamp.data.downstream import DownstreamDataset
from ecamp.data.downstream_cache import build_downstream_cache
from ecamp.data.sources.common import rle_encode

SIIM = "fixtures/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
JPEG = "fixtures/covid-19-pneumonia-58-prior.jpg"


def files(folder: Path, data: Path, n: int) -> dict[str, tuple[str, list[str], tuple[int, int]]]:
    """kind -> (task, n file paths, original (H, W)); copies so every row is its own file."""
    out = {}
    pngs = sorted((data / "nih_cxr14_subset" / "images").glob("*.png"))[:n]
    names = []
    for i, p in enumerate(pngs):
        name = folder / f"cxr14_{i}.png"
        Image.open(p).convert("L").resize((1024, 1024), Image.Resampling.BICUBIC).save(name)
        names.append(str(name))
    out["png"] = ("det", names, (1024, 1024))
    for kind, src, task, shape in (
        ("dicom", SIIM, "seg", (1024, 1024)),
        ("jpeg", JPEG, "cls", (2373, 2373)),
    ):
        names = []
        for i in range(n):
            name = folder / f"{kind}_{i}{Path(src).suffix}"
            shutil.copyfile(data / src, name)
            names.append(str(name))
        out[kind] = (task, names, shape)
    return out


def manifest(paths: list[str], shape: tuple[int, int], prefix: str) -> pd.DataFrame:
    h, w = shape
    mask = np.zeros(shape, bool)
    mask[h // 4 : h // 2, w // 5 : w // 2] = True
    return pd.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(len(paths))],
            "image": paths,
            "split": "train",
            "A": 1.0,
            "rle": rle_encode(mask),
            "boxes": json.dumps([[w * 0.1, h * 0.2, w * 0.5, h * 0.6]]),
        }
    )


def rate(ds: DownstreamDataset, reps: int) -> float:
    ds[(0, 0)]  # warm-up
    items = [(i, 100 * r + i) for r in range(reps) for i in range(len(ds))]
    start = time.perf_counter()
    for item in items:
        ds[item]
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("ECAMP_TEST_DATA", ""), help="sample data")
    ap.add_argument("--images", type=int, default=6, help="files per kind")
    ap.add_argument("--reps", type=int, default=2, help="passes over the files per timing")
    ap.add_argument("--size", type=int, default=224, help="model input side")
    ap.add_argument("--cache-size", type=int, default=512, help="side of the cached squares")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    if not args.data:
        raise SystemExit("give --data (the shared sample-data folder) or set ECAMP_TEST_DATA")
    torch.set_num_threads(args.threads)
    result: dict = {"benchmark": "finetune_loader", "size": args.size, "threads": args.threads}
    result["cache_size"] = args.cache_size
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind, (task, paths, shape) in files(folder, Path(args.data), args.images).items():
            m = manifest(paths, shape, kind)
            columns = {"cls": ["A"], "seg": ["rle"], "det": ["boxes"]}[task]
            cache = folder / f"cache_{kind}"
            start = time.perf_counter()
            build_downstream_cache(m, cache, size=args.cache_size, seg=task == "seg")
            built = len(m) / (time.perf_counter() - start)
            kw = dict(size=args.size, train=True)
            decode = DownstreamDataset(m, task, columns, **kw)
            prepared = DownstreamDataset(m, task, columns, prepare_size=args.cache_size, **kw)
            cached = DownstreamDataset(m, task, columns, cache=cache, **kw)
            identical = all(
                torch.equal(prepared[(i, s)][k], cached[(i, s)][k])
                for i in range(len(m))
                for s in (1, 2)
                for k in prepared[(i, s)]
            )
            d, p, c = (
                rate(decode, args.reps),
                rate(prepared, args.reps),
                rate(cached, 4 * args.reps),
            )
            result[kind] = {
                "task": task,
                "source": f"{shape[1]}x{shape[0]}",
                "decode_img_per_s": round(d, 1),
                "decode_prepared_img_per_s": round(p, 1),
                "cache_img_per_s": round(c, 1),
                "speedup": round(c / d, 1),
                "identical": identical,
                "build_img_per_s": round(built, 1),
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
