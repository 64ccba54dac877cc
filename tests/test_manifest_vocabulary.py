"""One manifest vocabulary (image column ``image``, splits train / val / test) for pre-training
and downstream manifests; the older spellings (``path``, ``validate`` ...) still load."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ecamp.data import manifest as M
from ecamp.data.downstream import DownstreamDataset, build_datasets, load_manifest, save_manifest

SRC = Path(__file__).resolve().parents[1] / "src" / "ecamp"


def _pretrain(image: str = "image", val: str = "val") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["001", "002", "003", "004"],
            image: ["a.png", "b.png", "c.png", "d.png"],
            "report": ["No effusion.", "Small opacity.", "Normal.", "Normal."],
            "study_id": ["10", "10", "11", "12"],
            "split": ["train", val, "test", val],
        }
    )


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    paths = []
    for i in range(4):
        arr = (np.arange(30 * 40).reshape(30, 40) * (i + 1) % 256).astype(np.uint8)
        p = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    return paths


def _downstream(images: list[str], image: str = "image", val: str = "val") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            image: images,
            "split": ["train", val, "test", val],
            "A": [1.0, 0.0, np.nan, 1.0],
            "boxes": ["[[1.0, 2.0, 20.0, 25.0]]", "[]", "[]", "[[0.0, 0.0, 5.0, 5.0]]"],
        }
    )


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl.gz", "m.parquet"])
@pytest.mark.parametrize("val", ["validate", "valid", "Validation", " dev "])
@pytest.mark.parametrize("image", ["image", "path"])
def test_an_old_pretraining_manifest_loads_like_the_new(tmp_path, name, val, image):
    new = M.load_pretrain_manifest(M.write_table(_pretrain(), tmp_path / "new" / name))
    old = M.load_pretrain_manifest(M.write_table(_pretrain(image, val), tmp_path / "old" / name))
    assert list(old.columns) == list(new.columns) and "path" not in old.columns
    pd.testing.assert_frame_equal(old, new)
    assert new["split"].tolist() == ["train", "val", "test", "val"]


def test_a_pretraining_frame_built_in_code_is_read_in_the_vocabulary():
    old = _pretrain("path", "validate")
    pd.testing.assert_frame_equal(M.validate_pretrain(old), M.validate_pretrain(_pretrain()))
    assert "path" in old.columns and old["split"][1] == "validate"  # the caller's frame is kept


@pytest.mark.parametrize("val", ["validate", "validation", "dev", "val"])
@pytest.mark.parametrize("image", ["image", "path"])
def test_an_old_downstream_manifest_loads_like_the_new(tmp_path, images, val, image):
    _downstream(images).to_csv(tmp_path / "new.csv", index=False)
    _downstream(images, image, val).to_csv(tmp_path / "old.csv", index=False)  # an old writer
    new, old = load_manifest(tmp_path / "new.csv"), load_manifest(tmp_path / "old.csv")
    pd.testing.assert_frame_equal(old, new)
    a = build_datasets(_downstream(images, image, val), "det", ["boxes"], size=16)
    b = build_datasets(new, "det", ["boxes"], size=16)
    assert set(a) == set(b) == {"train", "val", "test"}
    for split in a:
        for i in range(len(a[split])):
            x, y = a[split][(i, 7)], b[split][(i, 7)]
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_downstream_writers_write_the_new_vocabulary(tmp_path, images):
    save_manifest(_downstream(images, "path", "validate"), tmp_path / "m.csv")
    raw = pd.read_csv(tmp_path / "m.csv")  # as written, not normalised by a reader
    assert "image" in raw.columns and "path" not in raw.columns
    assert set(raw["split"]) == {"train", "val", "test"}
    ds = DownstreamDataset(_downstream(images, "path"), "cls", ["A"], size=16)
    assert ds.frame["image"].tolist() == images


def test_the_phantom_world_writes_the_new_vocabulary(tmp_path):
    from ecamp.data.sources.phantom import phantom_manifest
    from ecamp.data.synthetic import make_phantom_world

    csv = make_phantom_world(tmp_path / "world", n=30, size=32, seed=1)
    raw = pd.read_csv(csv)
    assert "image" in raw.columns and "path" not in raw.columns
    assert set(raw["split"]) == set(M.SPLITS)
    for task in ("cls", "det", "seg"):
        df, _ = phantom_manifest(csv, task)
        assert list(df.columns[:3]) == ["id", "image", "split"]
        assert set(df["split"]) == set(M.SPLITS)
    # a world drawn before the vocabulary was one (splits "validate") reads the same
    new = {t: phantom_manifest(csv, t)[0] for t in ("cls", "det", "seg")}
    raw.assign(split=raw["split"].replace({"val": "validate"})).to_csv(csv, index=False)
    for task, df in new.items():
        pd.testing.assert_frame_equal(phantom_manifest(csv, task)[0], df)


def test_normalize_manifest_renames_only_what_is_old():
    df = pd.DataFrame({"id": ["a", "b", "c"], "split": ["train", np.nan, "Dev"]})
    df.attrs["root"] = "/x"
    out = M.normalize_manifest(df)
    assert out["split"].tolist()[0::2] == ["train", "val"] and pd.isna(out["split"][1])
    assert out.attrs == {"root": "/x"} and df["split"][2] == "Dev"
    new = _pretrain()
    assert M.normalize_manifest(new) is new  # nothing to do: no copy
    both = new.assign(path=["p"] * 4)  # an image column wins: "path" stays an extra column
    assert list(M.normalize_manifest(both).columns) == list(both.columns)
    assert M.split_name(" VALIDATE ") == "val" and M.split_name("holdout") == "holdout"
    with pytest.raises(ValueError):
        M.normalize_split("holdout")


def test_select_splits_and_configs_read_old_split_names():
    from ecamp.config.attention import AttentionConfig
    from ecamp.data.gloria import select_splits

    df = M.validate_pretrain(_pretrain())
    assert select_splits(df, ("validate",))["id"].tolist() == ["002", "004"]
    assert select_splits(df, ("train", "val"))["id"].tolist() == ["001", "002", "004"]
    assert AttentionConfig().export.splits == M.SPLITS


def test_rebase_paths_writes_an_old_manifest_in_the_new_vocabulary(tmp_path):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    out = run / "m.csv"
    _pretrain("path", "validate").to_csv(out, index=False)
    M.rebase_paths(out, run / "data", run)
    raw = pd.read_csv(out)
    assert "path" not in raw.columns and raw["image"][0] == "data/a.png"
    assert set(raw["split"]) == {"train", "val", "test"}


def test_the_cache_stage_reads_an_old_downstream_manifest_file(tmp_path, images):
    from ecamp.cli import main
    from ecamp.data.downstream_cache import DownstreamCache

    _downstream(images, "path", "validate").to_csv(tmp_path / "m.csv", index=False)
    assert main(["cache", str(tmp_path / "m.csv"), str(tmp_path / "c"), "--size", "16"]) == 0
    cache = DownstreamCache(tmp_path / "c")  # squashed, as downstream caches are
    assert cache.images.resize == "squash" and all(i in cache.images for i in "abcd")


def _constants(path: Path) -> set[str]:
    nodes = ast.walk(ast.parse(path.read_text(encoding="utf-8")))
    return {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}


# "path" strings that are no manifest column: the pipeline's file fingerprints, and the column
# of the release's classification split lists (their entries, not a manifest)
OTHER_PATHS = {"pipeline/engine.py", "data/splits.py"}


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_only_the_manifest_module_spells_the_old_vocabulary(path: Path):
    rel = str(path.relative_to(SRC))
    if rel == "data/manifest.py":
        return
    old = set(M.SPLIT_ALIASES) | (set() if rel in OTHER_PATHS else set(M.COLUMN_ALIASES))
    assert not _constants(path) & old, f"{rel} spells an old manifest name; use ecamp.data.manifest"
