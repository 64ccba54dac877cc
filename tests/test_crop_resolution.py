"""The SR target's real resolution: cache side arithmetic, up-sampled crop share, the warning."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecamp.config import DataConfig
from ecamp.data.cache import ImageCache, build_cache
from ecamp.data.images import (
    CropParams,
    augment_pretrain,
    cache_side_for,
    crop_source_pixels,
    min_crop_sides,
    sample_crop,
)
from ecamp.data.pretrain import PretrainDataset, drawn_seed, upsampled_fraction


class _EdgeRng:
    """A generator stub drawing the least scale and aspect ``u`` of its range: a corner."""

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self, shape=None):
        if shape is None:
            return 0.0
        out = np.zeros(shape)
        out[:, 1] = self.u  # (scale, ratio, top, left) per try
        return out


def test_release_crop_needs_a_1156_px_square():
    assert cache_side_for(448) == 1156
    # the narrowest crop: least scale, least aspect (3/4) -> round(S * sqrt(0.15))
    narrow = sample_crop(1156, 1156, _EdgeRng(0.0))  # type: ignore[arg-type]
    assert narrow.width == 448 and narrow.height == round(1156 * (0.2 / 0.75) ** 0.5)
    assert sample_crop(1155, 1155, _EdgeRng(0.0)).width == 447  # type: ignore[arg-type]
    # the flattest crop: least scale, largest aspect (4/3, approached from below)
    flat = sample_crop(1156, 1156, _EdgeRng(1 - 1e-12))  # type: ignore[arg-type]
    assert flat.height == 448
    assert min_crop_sides(1156, 1156) == (448, 448) and min_crop_sides(1155, 1155) == (447, 447)
    # with the aspect always 1 the "about 1,000 px" holds: 448 / sqrt(0.2)
    assert cache_side_for(448, ratio=(1.0, 1.0)) == 1001


@pytest.mark.parametrize(
    "hr, scale, ratio",
    [
        (448, (0.2, 1.0), (3 / 4, 4 / 3)),
        (224, (0.08, 1.0), (3 / 4, 4 / 3)),
        (128, (0.5, 1.0), (0.9, 1.2)),
    ],
)
def test_cache_side_is_the_least_that_works(hr, scale, ratio):
    side = cache_side_for(hr, scale, ratio)
    assert min(min_crop_sides(side, side, scale, ratio)) >= hr
    assert min(min_crop_sides(side - 1, side - 1, scale, ratio)) < hr
    rng = np.random.default_rng(0)
    drawn = [sample_crop(side, side, rng, scale, ratio) for _ in range(3000)]
    assert min(min(p.height, p.width) for p in drawn) >= hr


def test_crop_source_pixels_counts_real_pixels():
    p = CropParams(0, 0, 500, 460, False)
    # a cache that shrank the image keeps one real pixel per cache pixel
    assert crop_source_pixels(p, 1156, (3056, 2544), "pad") == (500, 460)
    # one that enlarged a 578-px image to 1156 keeps half
    assert crop_source_pixels(p, 1156, (578, 400), "pad") == (250, 230)
    assert crop_source_pixels(p, 1000, (500, 2000), "squash") == (250, 460)


def _world(folder, n: int, size: int) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    rows = []
    for i in range(n):
        Image.fromarray((rng.random((size, size - 10)) * 255).astype(np.uint8)).save(
            folder / f"im{i}.png"
        )
        rows.append({"id": f"id{i}", "image": f"im{i}.png", "report": f"report {i}."})
    df = pd.DataFrame(rows)
    df.attrs["root"] = str(folder)
    return df


def test_upsampled_fraction_of_small_and_sufficient_caches(tmp_path):
    hr = 64
    side = cache_side_for(hr)  # 164
    df = _world(tmp_path / "img", 12, 400)
    items = [(i % 12, s) for i, s in enumerate(range(1000, 1240))]
    fractions = {}
    for name, size, images in (("small", 64, df), ("enough", side, df)):
        build_cache(images, tmp_path / name, size=size)
        ds = PretrainDataset(images, DataConfig(), hr_size=hr, cache=tmp_path / name)
        fractions[name] = upsampled_fraction(ds, items, hr)
    assert fractions["enough"] == (0.0, 240)
    assert fractions["small"][0] > 0.95  # every crop below the full square is enlarged
    # a large cache of small files enlarges them itself: still up-sampled
    tiny = _world(tmp_path / "tiny", 12, 60)
    build_cache(tiny, tmp_path / "up", size=side)
    ds = PretrainDataset(tiny, DataConfig(), hr_size=hr, cache=tmp_path / "up")
    assert upsampled_fraction(ds, items, hr) == (1.0, 240)
    # without a cache the file's own size counts (headers only)
    direct = PretrainDataset(df, DataConfig(), hr_size=hr)
    assert upsampled_fraction(direct, items, hr) == (0.0, 240)


def test_fraction_follows_the_crops_the_dataset_draws(tmp_path):
    """The monitor's crops are the ones training draws (same seed path as the loop)."""
    from ecamp.train.sampling import SeededIndexDataset

    df = _world(tmp_path / "img", 4, 120)
    build_cache(df, tmp_path / "c", size=96)
    ds = PretrainDataset(df, DataConfig(), hr_size=64, cache=tmp_path / "c")
    for loop_seed in (3, 2**40 + 7):
        sample = SeededIndexDataset(ds)[(1, loop_seed)]
        assert sample["_seed"] == drawn_seed(loop_seed)
        _, params = augment_pretrain(ImageCache(tmp_path / "c").get("id1"), 64, sample["_seed"])
        src = ds.crop_source_pixels(1, sample["_seed"])
        assert src == (params.height, params.width)  # 120 px files in a 96 px cache: 1:1


def test_pretrain_logs_the_share_and_warns_on_a_small_cache(tmp_path, capsys):
    from ecamp.cli import main
    from ecamp.data.synthetic import make_phantom_world

    world = make_phantom_world(tmp_path / "world", n=16, size=96, seed=0)
    build_cache(pd.read_csv(world), tmp_path / "c", size=48, image_root=world.parent)
    common = [
        f"data.manifest={world}",
        "train.max_steps=1",
        "train.batch_size=4",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    cache = f"data.cache={tmp_path / 'c'}"
    assert main(["pretrain", "--output", str(tmp_path / "run"), cache, *common]) == 0
    err = capsys.readouterr().err.splitlines()  # the stage's log handler writes to stderr
    assert any("epoch 0: 100.0% of the 128-px SR crops are up-sampled" in m for m in err)
    warned = [m for m in err if m.startswith("WARNING") and "enlarged to 128" in m]
    assert warned and f"--size {cache_side_for(128)}" in warned[0]
    share = json.loads((tmp_path / "run" / "results.json").read_text())["upsampled_crops"]
    assert share == {"0": 1.0}


def test_warning_only_above_five_percent(tmp_path, monkeypatch):
    from ecamp.config import PretrainConfig
    from ecamp.train import pretrain as stage
    from ecamp.train.sampling import ShardedBatchSampler

    said: list[tuple[str, str]] = []

    class Log:
        def info(self, msg, *a):
            said.append(("info", msg % a))

        def warning(self, msg, *a):
            said.append(("warning", msg % a))

    monkeypatch.setattr(stage, "log", Log())
    cfg = PretrainConfig()
    cfg.model.hr_size = 64
    df = _world(tmp_path / "img", 8, 400)
    for size, warns in ((cache_side_for(64), False), (64, True)):
        said.clear()
        build_cache(df, tmp_path / f"c{size}", size=size)
        ds = PretrainDataset(df, cfg.data, hr_size=64, cache=tmp_path / f"c{size}")
        hook = stage.upsampled_crop_monitor(ds, ShardedBatchSampler(len(ds), 2), cfg)
        hook(0)
        hook(1)
        assert set(hook.history) == {0, 1}
        assert (min(hook.history.values()) > 0.05) is warns
        assert [k for k, _ in said].count("warning") == (1 if warns else 0)  # once a run
        assert sum("SR crops are up-sampled" in m for k, m in said if k == "info") == 2
