"""PretrainDataset / PretrainCollator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ecamp.config import DataConfig
from ecamp.data.cache import ImageCache, build_cache
from ecamp.data.pretrain import GuidanceStore, PretrainCollator, PretrainDataset
from ecamp.errors import DataError


class FakeBatcher:
    """Stands in for ecamp.text.masking.TextBatcher: same call signature."""

    def __init__(self):
        self.calls = []

    def __call__(self, reports, distilled, rng):
        self.calls.append((list(reports), list(distilled)))
        ids = torch.as_tensor(rng.integers(4, 100, size=(len(reports), 6)))
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mlm_labels": ids.clone(),
            "mlm_weights": torch.ones(ids.shape),
        }


class MapStore:
    kind = "map"

    def get(self, key):
        if key == "id1":
            return None
        g = np.zeros((8, 8), np.float32)
        g[:, :4] = 1.0
        return g


class WindowStore:
    kind = "window"

    def get(self, key):
        return (3, 5) if key != "id1" else None


@pytest.fixture()
def manifest(tmp_path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        arr = (rng.random((48, 40)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"im{i}.png")
        rows.append(
            {
                "id": f"id{i}",
                "image": f"im{i}.png",
                "report": f"report {i}.",
                "distilled": "" if i % 2 else f"d{i}",
            }
        )
    df = pd.DataFrame(rows)
    df.attrs["root"] = str(tmp_path)
    return df


def test_sample_keys_and_seeded_reproducibility(manifest):
    ds = PretrainDataset(manifest, DataConfig(), hr_size=32)
    a, b, c = ds[(2, 7)], ds[(2, 7)], ds[(2, 8)]
    assert set(a) == {"image_hr", "report", "distilled", "id", "_seed"}
    assert a["image_hr"].shape == (3, 32, 32) and a["image_hr"].dtype == torch.float32
    assert torch.equal(a["image_hr"], b["image_hr"]) and not torch.equal(
        a["image_hr"], c["image_hr"]
    )
    assert (a["id"], a["report"], a["distilled"], a["_seed"]) == ("id2", "report 2.", "d2", 7)
    assert isinstance(ds[0]["_seed"], int)


def test_cache_and_decode_paths_agree(manifest, tmp_path):
    build_cache(manifest, tmp_path / "cache", size=48, resize="squash")
    direct = PretrainDataset(manifest, DataConfig(augment="none"), hr_size=48)
    cached = PretrainDataset(
        manifest, DataConfig(augment="none"), hr_size=48, cache=tmp_path / "cache"
    )
    assert isinstance(cached.cache, ImageCache)
    diff = (direct[(1, 0)]["image_hr"] - cached[(1, 0)]["image_hr"]).abs().mean()
    assert diff < 0.02  # uint8 quantisation + one extra bicubic pass


def test_bad_rows_skip_substitutes_and_counts(manifest, tmp_path):
    (tmp_path / "im2.png").write_bytes(b"not a png")
    (tmp_path / "im3.png").unlink()
    ds = PretrainDataset(manifest, DataConfig(bad_rows="skip"), hr_size=16)
    s = ds[(2, 1)]
    assert s["id"] == "id4"  # rows 2 and 3 are bad: the next valid one comes instead
    assert ds.substitutions == 2 and ds.bad_ids == {"id2", "id3"}
    assert len([ds[(i, 0)] for i in range(len(ds))]) == 6  # a whole epoch never crashes
    strict = PretrainDataset(manifest, DataConfig(bad_rows="fail"), hr_size=16)
    with pytest.raises(DataError, match="im2.png"):
        strict[(2, 1)]


def test_all_rows_bad_raises(manifest, tmp_path):
    for i in range(6):
        (tmp_path / f"im{i}.png").unlink()
    with pytest.raises(DataError, match="unreadable"):
        PretrainDataset(manifest, DataConfig(), hr_size=16)[(0, 0)]


def test_guidance_map_and_window(manifest):
    assert isinstance(MapStore(), GuidanceStore)
    ds = PretrainDataset(manifest, DataConfig(augment="none"), hr_size=16, guidance=MapStore())
    g = ds[(0, 0)]["guidance"]
    assert g.shape == (1, 16, 16) and g[0, :, :6].min() > 0.9 and g[0, :, 10:].max() < 0.1
    assert torch.equal(ds[(1, 0)]["guidance"], torch.ones(1, 16, 16))  # no map: uniform
    flipped = PretrainDataset(manifest, DataConfig(), hr_size=16, guidance=MapStore())
    maps = [flipped[(0, s)]["guidance"][0] for s in range(20)]
    sums = [m[:, :8].sum() - m[:, 8:].sum() for m in maps]
    assert min(sums) < 0 < max(sums)  # the map follows random flips
    win = PretrainDataset(manifest, DataConfig(), hr_size=16, guidance=WindowStore())
    assert win[(0, 0)]["guidance_window"].tolist() == [3, 5]
    assert win[(1, 0)]["guidance_window"].tolist() == [-1, -1]


def test_collator_stacks_and_seeds_text_rng(manifest):
    ds = PretrainDataset(manifest, DataConfig(), hr_size=16, guidance=MapStore())
    batcher = FakeBatcher()
    collate = PretrainCollator(batcher)
    samples = [ds[(i, 10 + i)] for i in range(4)]
    b1, b2 = collate(samples), collate(samples)
    assert b1["image_hr"].shape == (4, 3, 16, 16) and b1["guidance"].shape == (4, 1, 16, 16)
    assert b1["input_ids"].shape == (4, 6) and torch.equal(b1["input_ids"], b2["input_ids"])
    assert b1["id"] == ["id0", "id1", "id2", "id3"] and b1["_seed"].tolist() == [10, 11, 12, 13]
    assert batcher.calls[0] == (
        ["report 0.", "report 1.", "report 2.", "report 3."],
        ["d0", None, "d2", None],
    )
    other = collate([ds[(i, 20 + i)] for i in range(4)])
    assert not torch.equal(other["input_ids"], b1["input_ids"])


def test_collator_works_in_a_dataloader(manifest):
    ds = PretrainDataset(manifest, DataConfig(), hr_size=16)
    sampler = [(i, 100 + i) for i in range(len(ds))]  # (index, seed) pairs as the loop passes
    loader = torch.utils.data.DataLoader(
        ds, batch_size=3, sampler=sampler, collate_fn=PretrainCollator(FakeBatcher())
    )
    batches = list(loader)
    assert [b["image_hr"].shape[0] for b in batches] == [3, 3]
    again = list(loader)
    assert all(torch.equal(x["image_hr"], y["image_hr"]) for x, y in zip(batches, again))


def test_cached_dataset_in_worker_processes(manifest, tmp_path):
    build_cache(manifest, tmp_path / "cache", size=32)
    ds = PretrainDataset(manifest, DataConfig(), hr_size=16, cache=tmp_path / "cache")
    kwargs = dict(
        batch_size=2,
        sampler=[(i, 40 + i) for i in range(len(ds))],
        collate_fn=PretrainCollator(FakeBatcher()),
    )
    serial = list(torch.utils.data.DataLoader(ds, **kwargs))
    workers = list(torch.utils.data.DataLoader(ds, num_workers=2, **kwargs))
    assert all(torch.equal(a["image_hr"], b["image_hr"]) for a, b in zip(serial, workers))
