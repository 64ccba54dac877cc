"""Guidance store: windows, shard round-trip, fall-back to uniform, the pre-training protocol."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pandas as pd
import pytest

from ecamp.data.guidance import GuidanceStore, GuidanceWriter, best_window, entity_key
from ecamp.errors import UserError

META = {
    "version": 1,
    "size": 32,
    "window_grid": 14,
    "window_patches": 12,
    "pool": "entity",
    "mentions": "positive",
}


def test_best_window_finds_the_hot_spot_and_stays_inside():
    m = np.zeros((448, 448), np.float32)
    m[400:440, 5:40] = 1.0  # bottom-left corner
    assert tuple(best_window(m, 14, 12)) == (2, 0)
    rng = np.random.default_rng(0)
    w = best_window(rng.random((20, 448, 448)).astype(np.float32), 14, 12)
    assert w.shape == (20, 2) and w.min() >= 0 and w.max() <= 14 - 12
    assert tuple(best_window(m, 8, 8)) == (0, 0)  # window as large as the grid


def _write(folder, ids_with_maps, ids_without, shard_size=2):
    rng = np.random.default_rng(1)
    writer = GuidanceWriter(folder, META)
    maps = {k: rng.random((32, 32)).astype(np.float32) for k in ids_with_maps}
    ids = ids_with_maps + ids_without
    shards = [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]
    for s, chunk in enumerate(shards):
        rows, stored = [], {}
        for k in chunk:
            has = k in maps
            if has:
                stored[k] = maps[k]
                stored[entity_key(k, "effusion")] = maps[k] * 0.5
            r, c = best_window(maps[k], 14, 12) if has else (-1, -1)
            rows.append(
                {
                    "id": k,
                    "shard": s if has else -1,
                    "row": r,
                    "col": c,
                    "entities": "effusion" if has else "",
                    "sentence": "There is effusion." if has else "",
                }
            )
        writer.write_shard(s, stored, pd.DataFrame(rows))
        assert writer.done(s)
    writer.finish(len(shards))
    return maps


def test_round_trip_windows_and_fallback(tmp_path, caplog):
    maps = _write(tmp_path / "g", ["a", "b", "007"], ["c"])
    store = GuidanceStore(tmp_path / "g")
    for k, m in maps.items():
        got = store.map(k)
        assert got.dtype == np.float32 and got.shape == (32, 32)
        np.testing.assert_allclose(got, m, atol=1e-3)  # float16 storage
        np.testing.assert_allclose(store.map(k, "effusion"), m * 0.5, atol=1e-3)
        assert store.window(k) == tuple(best_window(m, 14, 12))
        assert store.entities(k) == ["effusion"] and store.sentence(k) == "There is effusion."
    assert store.map("b", "nodule") is None  # no per-entity map for an entity not mentioned
    assert store.ids_with_maps() == ["a", "b", "007"]
    # an image without an entity word: no map, not counted as missing
    assert store.get("c") is None and store.missing == 0 and store.no_entity == 1
    with caplog.at_level(logging.WARNING, logger="ecamp"):
        assert store.get("zzz") is None and store.window("yyy") is None
    assert store.missing == 2
    assert "uniform guidance" in caplog.text
    win = GuidanceStore(tmp_path / "g", kind="window")
    assert win.get("a") == store.window("a") and win.get("c") is None
    # opened shards do not travel into DataLoader workers
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_allclose(clone.map("007"), maps["007"], atol=1e-3)


def test_missing_shard_falls_back(tmp_path):
    _write(tmp_path / "g", ["a", "b", "c"], [])
    (tmp_path / "g" / "shards" / "shard_00001.safetensors").unlink()
    store = GuidanceStore(tmp_path / "g")
    assert store.map("a") is not None
    assert store.map("c") is None and store.missing == 1


def test_pretrain_dataset_reads_maps_and_falls_back_to_uniform(tmp_path):
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from ecamp.config import DataConfig
    from ecamp.data.pretrain import GuidanceStore as Protocol
    from ecamp.data.pretrain import PretrainDataset

    _write(tmp_path / "g", ["a"], [])
    store = GuidanceStore(tmp_path / "g")
    assert isinstance(store, Protocol)
    for k in ("a", "b"):
        Image.fromarray(np.full((40, 40), 100, np.uint8)).save(tmp_path / f"{k}.png")
    df = pd.DataFrame(
        {
            "id": ["a", "b"],
            "image": [str(tmp_path / "a.png"), str(tmp_path / "b.png")],
            "report": ["x", "y"],
        }
    )
    ds = PretrainDataset(df, DataConfig(augment="none"), hr_size=16, guidance=store)
    g_a, g_b = ds[(0, 1)]["guidance"], ds[(1, 1)]["guidance"]
    assert g_a.shape == g_b.shape == (1, 16, 16)
    # the stored map (the one _write drew), whole image (augment none) resized 32 -> 16
    written = torch.from_numpy(np.random.default_rng(1).random((32, 32)).astype(np.float32))
    want = F.interpolate(written[None, None], size=(16, 16), mode="bilinear", antialias=True)[0]
    assert torch.allclose(g_a, want, atol=2e-3), float((g_a - want).abs().max())
    assert bool((g_b == 1).all()) and store.missing == 1  # unknown id: uniform, counted


def test_unfinished_or_mismatched_export_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a finished guidance export"):
        GuidanceStore(tmp_path)
    _write(tmp_path / "g", ["a"], [])
    with pytest.raises(UserError, match="other settings"):
        GuidanceWriter(tmp_path / "g", {**META, "size": 64})
    with pytest.raises(UserError):
        GuidanceStore(tmp_path / "g", kind="box")


def test_a_zeroed_guidance_region_is_ignored_by_the_sr_loss(tmp_path):
    """End to end: stored map -> pre-training sample -> ECAMP's SR loss.  SR errors where the
    map is 0 do not change the loss; the same errors where it is positive do."""
    import dataclasses

    import torch
    from PIL import Image

    from ecamp.config import DataConfig, model_config
    from ecamp.data.pretrain import PretrainDataset
    from ecamp.models.ecamp import ECAMPModel

    the_map = np.ones((32, 32), np.float32)
    the_map[:, 16:] = 0.0  # nothing to look at in the right half
    writer = GuidanceWriter(tmp_path / "g", META)
    row = {"id": "a", "shard": 0, "row": 0, "col": 0, "entities": "", "sentence": ""}
    writer.write_shard(0, {"a": the_map}, pd.DataFrame([row]))
    writer.finish(1)
    g = np.random.default_rng(0).integers(0, 255, (40, 40)).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "a.png")
    df = pd.DataFrame({"id": ["a"], "image": [str(tmp_path / "a.png")], "report": ["x"]})
    cfg = dataclasses.replace(model_config("tiny"), use_mlm=False, sr_guidance="map")
    ds = PretrainDataset(
        df, DataConfig(augment="none"), hr_size=cfg.hr_size, guidance=GuidanceStore(tmp_path / "g")
    )
    sample = ds[(0, 1)]
    batch = {"image_hr": sample["image_hr"][None], "guidance": sample["guidance"][None]}
    assert batch["guidance"][..., -cfg.hr_size // 4 :].abs().max() == 0  # read as stored

    torch.manual_seed(0)
    model = ECAMPModel(cfg).eval()
    delta = torch.zeros(1, 1, cfg.hr_size, cfg.hr_size)

    def sr_with_errors() -> float:
        hook = model.super_res.register_forward_hook(lambda m, a, out: out + delta)
        torch.manual_seed(1)  # the same masked patches every time
        with torch.no_grad():
            loss = float(model(batch)["sr"])
        hook.remove()
        return loss

    base = sr_with_errors()
    delta[..., -cfg.hr_size // 4 :] = 5.0  # big errors inside the zeroed region
    assert sr_with_errors() == pytest.approx(base, rel=1e-6)
    delta.zero_()
    delta[..., : cfg.hr_size // 4] = 5.0  # the same errors where the map is 1
    assert sr_with_errors() > base + 1.0
