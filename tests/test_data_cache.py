"""Preprocessed image cache: round trip, resume, growth, failures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecamp.data.cache import ImageCache, build_cache
from ecamp.data.images import load_image_resized
from ecamp.errors import UserError


def _images(folder, n: int, start: int = 0) -> pd.DataFrame:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    rows = []
    for i in range(start, start + n):
        h, w = 60 + 7 * i, 80
        arr = (rng.random((h, w)) * 255).astype(np.uint8)
        name = f"im{i}.png" if i % 2 else f"im{i}.jpg"
        Image.fromarray(arr).save(folder / name)
        rows.append({"id": f"id{i}", "image": name, "report": "x"})
    return pd.DataFrame(rows)


def test_round_trip_equals_direct_load_and_resize(tmp_path):
    df = _images(tmp_path / "img", 5)
    report = build_cache(
        df, tmp_path / "cache", size=32, num_workers=2, image_root=tmp_path / "img"
    )
    assert (report.built, report.skipped, report.failed) == (5, 0, 0)
    cache = ImageCache(tmp_path / "cache")
    assert len(cache) == 5 and cache.size == 32
    for i, (key, name) in enumerate(zip(df["id"], df["image"])):
        np.testing.assert_array_equal(
            cache.get(key), load_image_resized(tmp_path / "img" / name, 32)
        )
        h, w = cache.shapes[key]  # decoded size (JPEGs: at reduced DCT scale), aspect kept
        assert abs(h / w - (60 + 7 * i) / 80) < 0.05
    assert cache.get("unknown") is None


def test_resume_skips_existing_and_grows(tmp_path):
    first = _images(tmp_path / "img", 3)
    build_cache(first, tmp_path / "c", size=16, image_root=tmp_path / "img")
    before = ImageCache(tmp_path / "c").get("id1")
    both = pd.concat([first, _images(tmp_path / "img", 4, start=3)], ignore_index=True)
    report = build_cache(both, tmp_path / "c", size=16, image_root=tmp_path / "img", chunk=2)
    assert (report.built, report.skipped) == (4, 3)
    cache = ImageCache(tmp_path / "c")
    assert len(cache) == 7 and np.load(tmp_path / "c" / "images.npy", mmap_mode="r").shape[0] == 7
    np.testing.assert_array_equal(cache.get("id1"), before)
    np.testing.assert_array_equal(
        cache.get("id6"), load_image_resized(tmp_path / "img" / "im6.jpg", 16)
    )


def test_corrupt_and_missing_images_are_counted_not_fatal(tmp_path):
    df = _images(tmp_path / "img", 3)
    (tmp_path / "img" / "im1.png").write_bytes(b"broken")
    df.loc[2, "image"] = "gone.png"
    report = build_cache(df, tmp_path / "c", size=16, image_root=tmp_path / "img")
    assert (report.built, report.failed) == (1, 2)
    assert "im1.png" in report.failures["id1"] and "gone.png" in report.failures["id2"]
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert set(index["failed"]) == {"id1", "id2"} and set(index["rows"]) == {"id0"}
    again = build_cache(df, tmp_path / "c", size=16, image_root=tmp_path / "img")
    assert (again.built, again.skipped, again.failed) == (
        0,
        3,
        0,
    )  # failures not retried by default


def test_size_mismatch_refused(tmp_path):
    df = _images(tmp_path / "img", 1)
    build_cache(df, tmp_path / "c", size=16, image_root=tmp_path / "img")
    with pytest.raises(UserError, match="size=16"):
        build_cache(df, tmp_path / "c", size=32, image_root=tmp_path / "img")
    with pytest.raises(UserError, match="not an image cache"):
        ImageCache(tmp_path / "img")


def test_command_line_stage(tmp_path):
    import argparse

    from ecamp.data import cache as stage
    from ecamp.data.manifest import write_table

    df = _images(tmp_path / "img", 2)
    df.loc[1, "image"] = "missing.png"
    write_table(df, tmp_path / "img" / "m.csv")
    parser = argparse.ArgumentParser()
    stage.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "img" / "m.csv"), str(tmp_path / "c"), "--size", "16"])
    assert stage.run(args) == 1  # one image unreadable: non-zero exit, the rest cached
    assert "id0" in ImageCache(tmp_path / "c")
