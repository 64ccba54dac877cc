"""Shard caches and downstream caches: round trips, identical tensors decode vs cache, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ecamp.data.cache import ImageCache, build_cache
from ecamp.data.downstream import DownstreamDataset
from ecamp.data.downstream_cache import DownstreamCache, build_downstream_cache
from ecamp.data.images import load_image_resized
from ecamp.data.sources.common import rle_encode
from ecamp.errors import UserError


def _images(folder, n: int, start: int = 0) -> pd.DataFrame:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    rows = []
    for i in range(start, start + n):
        h, w = 70 + 9 * i, 90
        yy, xx = np.mgrid[:h, :w]
        arr = (127 + 60 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + rng.normal(0, 3, (h, w))).clip(
            0, 255
        )
        name = f"im{i}.png" if i % 2 else f"im{i}.jpg"
        Image.fromarray(arr.astype(np.uint8)).save(folder / name)
        rows.append({"id": f"id{i}", "image": str(folder / name), "report": "x"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("resize", ["pad", "squash"])
def test_png_shards_equal_the_memmap_and_jpeg_is_close(tmp_path, resize):
    df = _images(tmp_path / "img", 5)
    build_cache(df, tmp_path / "npy", size=48, resize=resize)
    build_cache(df, tmp_path / "png", size=48, resize=resize, fmt="png", chunk=2)
    build_cache(df, tmp_path / "jpg", size=48, resize=resize, fmt="jpeg", quality=95)
    npy, png, jpg = (ImageCache(tmp_path / n) for n in ("npy", "png", "jpg"))
    assert png.format == "png" and len(list((tmp_path / "png" / "shards").iterdir())) == 3
    for key in df["id"]:
        a = npy.get(key)
        assert a is not None and a.shape == (48, 48)
        np.testing.assert_array_equal(png.get(key), a)
        assert np.abs(jpg.get(key).astype(float) - a).mean() < 2.0  # type: ignore[union-attr]
        np.testing.assert_array_equal(
            a, load_image_resized(df.set_index("id").image[key], 48, resize)
        )
    if resize == "pad":  # padding is not stored, and comes back as zeros
        assert (png.get("id4")[:, :2] == 0).all()  # type: ignore[index]


def test_shard_cache_resumes_and_pickles(tmp_path):
    import pickle

    first = _images(tmp_path / "img", 3)
    build_cache(first, tmp_path / "c", size=32, fmt="jpeg")
    before = ImageCache(tmp_path / "c").get("id1")
    both = pd.concat([first, _images(tmp_path / "img", 2, start=3)], ignore_index=True)
    report = build_cache(both, tmp_path / "c", size=32, fmt="jpeg")
    assert (report.built, report.skipped) == (2, 3)
    cache = pickle.loads(pickle.dumps(ImageCache(tmp_path / "c")))
    assert len(cache) == 5 and np.array_equal(cache.get("id1"), before)
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert index["shards"] == 2 and index["orig_shapes"]["id4"] == [70 + 36, 90]
    with pytest.raises(UserError, match="format=jpeg"):
        build_cache(both, tmp_path / "c", size=32, fmt="npy")


def test_region_reads_equal_full_reads_and_reduced_jpeg_keeps_min_side(tmp_path):
    from ecamp.config import DataConfig
    from ecamp.data.images import augment_pretrain
    from ecamp.data.pretrain import PretrainDataset

    df = _images(tmp_path / "img", 4, start=6)  # 124..151 x 90: padded squares
    for fmt in ("npy", "png"):
        build_cache(df, tmp_path / fmt, size=64, fmt=fmt)
        cache = ImageCache(tmp_path / fmt)
        full = cache.get("id7")
        for box in ((0, 0, 64, 64), (3, 0, 40, 30), (10, 40, 50, 24), (0, 50, 20, 14)):
            region = cache.get_region("id7", *box, min_side=8)
            np.testing.assert_array_equal(
                region, full[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
            )  # type: ignore[index]
        # the pre-training dataset reads only the region, with the same tensors
        ds = PretrainDataset(df.assign(image=df["image"]), DataConfig(), hr_size=16, cache=cache)
        for seed in (1, 2, 3):
            expected, _ = augment_pretrain(full, 16, seed)  # type: ignore[arg-type]
            assert torch.equal(ds[(1, seed)]["image_hr"], expected)
    build_cache(df, tmp_path / "jpg", size=64, fmt="jpeg", quality=95)
    jpg = ImageCache(tmp_path / "jpg")
    small = jpg.get_region("id7", 0, 0, 64, 60, min_side=16)  # 1/2 or 1/4 scale decode suffices
    assert small is not None and min(small.shape) >= 16 and small.shape[0] < 64
    exact = jpg.get_region("id7", 0, 0, 64, 60)
    assert exact is not None and exact.shape == (64, 60)


# --------------------------------------------------------------------------- downstream


def _downstream(tmp_path, paths: list[str], shapes: list[tuple[int, int]]) -> pd.DataFrame:
    """A manifest over ``paths`` with cls labels, an RLE per image and boxes."""
    rng = np.random.default_rng(1)
    rows = []
    for i, (p, (h, w)) in enumerate(zip(paths, shapes)):
        mask = np.zeros((h, w), bool)
        if i % 3:  # some images have empty masks
            y, x = int(h * 0.3), int(w * 0.25)
            mask[y : y + h // 3, x : x + w // 4] = True
        boxes = [[w * 0.1, h * 0.2, w * 0.6, h * 0.7]] if i % 2 else []
        rows.append(
            {
                "id": f"r{i}",
                "image": p,
                "split": "train",
                "A": float(rng.random() > 0.5),
                "rle": "" if not mask.any() else rle_encode(mask),
                "boxes": json.dumps(boxes),
            }
        )
    return pd.DataFrame(rows)


def _assert_identical(m: pd.DataFrame, cache_dir, size: int, task: str, columns: list[str]) -> None:
    kw = dict(size=32, crop_scale=(0.5, 1.0), max_boxes=4)
    for train in (True, False):
        decode = DownstreamDataset(m, task, columns, train=train, prepare_size=size, **kw)
        cached = DownstreamDataset(m, task, columns, train=train, cache=cache_dir, **kw)
        for i in range(len(m)):
            for seed in (0, 11):
                a, b = decode[(i, seed)], cached[(i, seed)]
                assert a.keys() == b.keys()
                for k in a:
                    assert torch.equal(a[k], b[k]), (task, train, i, seed, k)


def test_decode_and_cache_give_identical_tensors(tmp_path):
    df = _images(tmp_path / "img", 6)
    shapes = [(70 + 9 * i, 90) for i in range(6)]
    m = _downstream(tmp_path, df["image"].tolist(), shapes)
    build_downstream_cache(m, tmp_path / "c", size=40, seg=True)
    _assert_identical(m, tmp_path / "c", 40, "cls", ["A"])
    _assert_identical(m, tmp_path / "c", 40, "seg", ["rle"])
    # masks dedupe: every empty mask shares one row
    assert len(json.loads((tmp_path / "c" / "masks.json").read_text())["rows"]) == 4 + 1
    by_boxes = m.drop(columns="rle")  # RSNA segmentation: the boxes filled
    build_downstream_cache(by_boxes, tmp_path / "c", size=40, seg=True)
    _assert_identical(by_boxes, tmp_path / "c", 40, "seg", ["boxes"])
    _assert_identical(m, tmp_path / "c", 40, "det", ["boxes"])
    # boxes still map back to original pixels through orig_size
    det = DownstreamDataset(m, "det", ["boxes"], size=32, cache=tmp_path / "c")
    item = det[1]
    h, w = item["orig_size"].tolist()
    back = item["boxes"][0] * torch.tensor([w / 32, h / 32, w / 32, h / 32])
    assert np.allclose(back.numpy(), json.loads(m.loc[1, "boxes"])[0], atol=1e-3)


def test_identical_tensors_on_real_files(tmp_path, test_data):
    """PNG (ChestX-ray14), DICOM (SIIM) and a full-size JPEG (drawn at reduced DCT scale)."""
    nih = sorted((test_data("nih_cxr14_subset") / "images").iterdir())[:2]
    files = [
        *nih,
        test_data("fixtures/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"),
        test_data("fixtures/covid-19-pneumonia-58-prior.jpg"),
    ]
    shapes = [(512, 512), (512, 512), (1024, 1024), (2373, 2373)]
    m = _downstream(tmp_path, [str(f) for f in files], shapes)
    build_downstream_cache(m, tmp_path / "c", size=256, seg=True, num_workers=2, fmt="png")
    assert DownstreamCache(tmp_path / "c").images.orig_shapes["r3"] == (2373, 2373)
    for task, cols in (("cls", ["A"]), ("seg", ["rle"]), ("det", ["boxes"])):
        _assert_identical(m, tmp_path / "c", 256, task, cols)


def test_a_cache_that_does_not_match_the_manifest_is_refused(tmp_path):
    df = _images(tmp_path / "img", 4)
    m = _downstream(tmp_path, df["image"].tolist(), [(70 + 9 * i, 90) for i in range(4)])
    build_downstream_cache(m.iloc[:2], tmp_path / "c", size=24)  # half the images, no masks
    with pytest.raises(UserError, match=r"does not match .*2 of 4 images are not in it"):
        DownstreamDataset(m, "cls", ["A"], cache=tmp_path / "c")
    build_downstream_cache(m, tmp_path / "c", size=24)
    DownstreamDataset(m, "cls", ["A"], cache=tmp_path / "c")  # now complete
    with pytest.raises(UserError, match="no segmentation masks"):
        DownstreamDataset(m, "seg", ["rle"], cache=tmp_path / "c")
    build_downstream_cache(m, tmp_path / "c", size=24, seg=True)
    changed = m.assign(rle=["", "", "1 5", ""])  # other targets than the cache's masks
    with pytest.raises(UserError, match="segmentation masks of 1 of 4 images"):
        DownstreamDataset(changed, "seg", ["rle"], cache=tmp_path / "c")
    with pytest.raises(UserError, match="cache_size=32"):
        DownstreamDataset(m, "cls", ["A"], cache=tmp_path / "c", prepare_size=32)
    build_cache(df, tmp_path / "pad", size=24)  # a pre-training (padded) cache
    with pytest.raises(UserError, match="padded"):
        DownstreamDataset(m, "cls", ["A"], cache=tmp_path / "pad")


def test_cache_stage_and_finetune_read_the_cache(tmp_path, capsys):
    """`ecamp cache phantom` then `ecamp finetune data.cache=DIR`: the run equals the
    decode run at data.cache_size, and a cache of another set fails with one clear line."""
    from ecamp.cli import main

    world = tmp_path / "world"
    opts = ["--task", "seg", "--data-root", str(world)]
    common = [
        "data.synthetic_n=40",
        "data.synthetic_size=64",
        "steps=2",
        "train.batch_size=8",
        "eval_batch_size=16",
        "train.progress=false",
        "train.tensorboard=false",
    ]

    def finetune(out: str, *extra: str) -> int:
        return main(["finetune", "--output", str(tmp_path / out), *opts, *common, *extra])

    assert finetune("decode", "data.cache_size=48") == 0
    cache = tmp_path / "cache"
    assert main(["cache", "phantom", str(cache), "--data-root", str(world), "--size", "48"]) == 0
    assert (cache / "masks.json").is_file()
    assert finetune("cached", f"data.cache={cache}") == 0
    a, b = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("decode", "cached"))
    assert a["metrics"] == b["metrics"] and a["value"] is not None
    capsys.readouterr()
    shutil.rmtree(cache)
    other = _images(tmp_path / "img", 2)
    build_downstream_cache(other, cache, size=48)
    assert (
        main(["finetune", "--output", str(tmp_path / "bad"), f"data.cache={cache}", *common]) == 2
    )
    err = capsys.readouterr().err
    assert "does not match" in err and "Traceback" not in err


def test_cache_stage_reads_a_downstream_manifest_file(tmp_path):
    from ecamp.cli import main
    from ecamp.data.downstream import save_manifest

    df = _images(tmp_path / "img", 3)
    m = _downstream(tmp_path, df["image"].tolist(), [(70 + 9 * i, 90) for i in range(3)])
    save_manifest(m, tmp_path / "m.csv")
    out = tmp_path / "c"
    args = ["cache", str(tmp_path / "m.csv"), str(out), "--size", "24", "--task", "seg"]
    assert main([*args, "--format", "png"]) == 0
    cache = DownstreamCache(out)
    assert cache.images.format == "png" and cache.images.resize == "squash"
    DownstreamDataset(m, "seg", ["rle"], cache=out)  # images and masks all there
    assert main(["cache", str(tmp_path / "m.csv"), str(tmp_path / "p"), "--resize", "pad"]) == 2
