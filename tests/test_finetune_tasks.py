"""`ecamp finetune` end to end on a small phantom world with a tiny ViT: each task beats chance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecamp.config import apply_overrides, from_dict, read_yaml
from ecamp.data.downstream import select_labels
from ecamp.data.sources.phantom import phantom_manifest
from ecamp.errors import UserError
from ecamp.train.finetune import FinetuneConfig, embedded_config_path, finetune

QUICK = [
    "data.synthetic_size=64",
    "data.synthetic_n=200",
    "data.crop_scale=[1,1]",
    "data.flip_prob=0",
    "train.lr=3e-3",
    "eval_every=5",
]


def quick_config(task: str, *overrides: str) -> FinetuneConfig:
    data = read_yaml(embedded_config_path(task))
    apply_overrides(data, [*QUICK, *overrides])
    return from_dict(FinetuneConfig, data)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from ecamp.data.synthetic import make_phantom_world

    root = tmp_path_factory.mktemp("phantom")
    make_phantom_world(root, n=200, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def seg_world(tmp_path_factory) -> Path:
    """Drawn at 128 px, twice the model input, and larger: few images hold the seg lesions."""
    from ecamp.data.synthetic import make_phantom_world

    root = tmp_path_factory.mktemp("phantom_seg")
    make_phantom_world(root, n=400, size=128, seed=0)
    return root


def test_phantom_manifest_per_task(world):
    from PIL import Image

    from ecamp.data.sources.common import rle_decode
    from ecamp.data.synthetic import LESION_CLASSES

    cls, labels = phantom_manifest(world / "manifest.csv", "cls")
    assert set(cls["split"]) == {"train", "val", "test"} and "cardiomegaly" in labels
    assert cls[labels].isin([0.0, 1.0]).all().all()
    det, classes = phantom_manifest(world / "manifest.csv", "det")
    assert "cardiomegaly" not in classes
    boxes = [json.loads(b) for b in det["boxes"]]
    assert all(len(b) == 4 for bs in boxes for b in bs) and any(boxes)
    nodules, _ = phantom_manifest(world / "manifest.csv", "det", ["nodule"])
    n_nodules = sum(len(json.loads(b)) for b in nodules["boxes"])
    assert 0 < n_nodules < sum(map(len, boxes))
    seg, classes = phantom_manifest(world / "manifest.csv", "seg")
    assert classes == ["effusion", "pneumothorax"]
    assert (seg["rle"] != "").any() and (seg["rle"] == "").any()
    # a selected class's mask is exactly its bit of the per-class mask
    ptx, _ = phantom_manifest(world / "manifest.csv", "seg", ["pneumothorax"])
    raw = pd.read_csv(world / "manifest.csv")
    bit = 1 << LESION_CLASSES.index("pneumothorax")
    for rle, name in zip(ptx["rle"][:40], raw["mask_classes"][:40]):
        want = (np.asarray(Image.open(world / name)) & bit) > 0
        got = rle_decode(rle, 64, 64) if rle else np.zeros((64, 64), bool)
        assert np.array_equal(got, want), name
    # the embedded pipeline's segmentation classes (the paper's SIIM and RSNA targets): the union
    pair, classes = phantom_manifest(world / "manifest.csv", "seg", ["pneumothorax", "opacity"])
    assert classes == ["pneumothorax", "opacity"]
    bits = (1 << LESION_CLASSES.index("pneumothorax")) | (1 << LESION_CLASSES.index("opacity"))
    for rle, name in zip(pair["rle"][:60], raw["mask_classes"][:60]):
        want = (np.asarray(Image.open(world / name)) & bits) > 0
        got = rle_decode(rle, 64, 64) if rle else np.zeros((64, 64), bool)
        assert np.array_equal(got, want), name
    assert (pair["rle"] != "").sum() > (ptx["rle"] != "").sum()  # opacity adds lesion images
    with pytest.raises(UserError, match="heart"):
        phantom_manifest(world / "manifest.csv", "seg", ["heart"])


def test_classification_beats_chance(world, tmp_path):
    cfg = quick_config(
        "cls", f"data.root={world}", "train.epochs=20", "data.labels=[cardiomegaly,effusion]"
    )
    res = finetune(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"] == "cls" and saved["metric"] == "auc" and saved["split"] == "test"
    assert saved["init"] == "random" and saved["fraction"] == 100
    # the current world at 1 thread: AUC 0.74 (cardiomegaly 0.82, effusion 0.67); chance is 0.5
    assert res["value"] > 0.68, res["metrics"]
    assert min(res["metrics"]["per_label"].values()) > 0.6, res["metrics"]
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


def test_segmentation_beats_trivial_masks(seg_world, tmp_path):
    from ecamp.data.downstream import build_datasets

    cfg = quick_config("seg", f"data.root={seg_world}", "eval_every=2")
    res = finetune(cfg, tmp_path)
    assert res["metric"] == "dice" and res["labels"] == ["effusion", "pneumothorax"]
    df, _ = phantom_manifest(seg_world / "manifest.csv", "seg")
    test = build_datasets(df, "seg", ["rle"], size=64)["test"]
    masks = np.stack([test[i]["mask"][0].numpy() > 0.5 for i in range(len(test))])
    fg = float(masks.mean())
    all_foreground = 2 * fg / (1 + fg)  # global Dice of predicting lesion everywhere
    # per-image Dice of predicting nothing: 1 on each lesion-free image, 0 on the others
    # (its global Dice is 0)
    empty = float((masks.reshape(len(masks), -1).sum(1) == 0).mean())
    dice, per_image = res["metrics"]["dice_global"], res["metrics"]["dice_per_image"]
    assert dice > max(0.3, 10 * all_foreground), (res["metrics"], all_foreground)
    assert per_image > empty, (res["metrics"], empty)
    # the release's per-image Dice is the headline and the best-checkpoint metric
    assert res["dice_reduction"] == "per_image" and res["value"] == pytest.approx(per_image)
    evals = pd.read_csv(tmp_path / "eval.csv")
    assert {"dice", "dice_per_image", "dice_global"} <= set(evals.columns)
    assert np.allclose(evals["dice"].dropna(), evals["dice_per_image"].dropna())
    assert res["val_best"] == pytest.approx(evals["dice_per_image"].max())


def test_detection_finds_lesions(world, tmp_path):
    cfg = quick_config(
        "det",
        f"data.root={world}",
        "train.epochs=20",
        "model.det_hidden=64",
        "select_metric=map_coco",
    )
    res = finetune(cfg, tmp_path)
    # 10 epochs do not reach the MGCA protocol's 0.5 confidence; the COCO protocol scores all
    # (the larger lesions of the current world needed 20 epochs here, 10 gave COCO mAP 0.021)
    assert res["metric"] == "map" and res["metrics"]["map_coco"] > 0.05, res["metrics"]
    # best.pt was picked by the validation map_coco, while the headline stays the MGCA mAP
    evals = pd.read_csv(tmp_path / "eval.csv")
    assert res["val_best_metric"] == "map_coco"
    assert res["val_best"] == pytest.approx(evals["map_coco"].max())


def test_selection_metric_defaults_to_the_headline_and_refuses_other_names():
    from ecamp.train.finetune import selection_metric

    assert selection_metric(quick_config("det"), False) == "map"
    assert selection_metric(quick_config("det", "select_metric=map_coco"), False) == "map_coco"
    assert selection_metric(quick_config("seg", "select_metric=dice_global"), False) == (
        "dice_global"
    )
    with pytest.raises(UserError, match=r"select_metric='map_coco'.*'seg'.*dice_global"):
        selection_metric(quick_config("seg", "select_metric=map_coco"), False)
    with pytest.raises(UserError, match="map_mgca"):
        selection_metric(quick_config("det", "det_protocol=coco", "select_metric=map_coco"), False)


def test_bad_config_is_named():
    with pytest.raises(UserError, match="task"):
        finetune(quick_config("cls", "task=segment"), "unused")
    with pytest.raises(UserError, match="nonsense"):
        select_labels(["a", "b"], ["a", "b"], ["nonsense"], True)
    assert select_labels(["a", "b"], ["a", "b"], ["b"], True) == (["b"], ["b"])
