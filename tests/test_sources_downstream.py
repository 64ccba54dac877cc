"""The downstream torch Dataset: resizing, normalisation, targets, seeded augmentation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ecamp.data.downstream import DownstreamDataset, build_datasets, load_manifest, save_manifest
from ecamp.data.sources.common import rle_encode
from ecamp.errors import UserError


@pytest.fixture
def images(tmp_path):
    """Two gradient PNGs of 40x30 (W x H)."""
    paths = []
    for i in range(2):
        arr = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
        p = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    return paths


def test_classification_items(images):
    m = pd.DataFrame(
        {"id": ["a", "b"], "image": images, "split": "train", "A": [1.0, np.nan], "B": [0.0, 1.0]}
    )
    ds = DownstreamDataset(m, "cls", ["A", "B"], size=32)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["orig_size"].tolist() == [30, 40]
    # normalised with the release's mean/std: the gradient's ends map to (0 - m)/s and (1 - m)/s
    assert item["image"].min().item() == pytest.approx((0 - 0.4721) / 0.3037, abs=0.05)
    assert item["image"].max().item() == pytest.approx((1 - 0.4721) / 0.3037, abs=0.05)
    assert item["label"].tolist() == [1.0, 0.0]
    assert torch.isnan(ds[1]["label"][0])
    mc = pd.DataFrame({"id": ["a"], "image": images[:1], "split": "test", "label": [2]})
    assert (
        DownstreamDataset(mc, "cls", ["label"], multilabel=False, size=16)[0]["label"].item() == 2
    )
    with pytest.raises(UserError):
        DownstreamDataset(m, "cls", ["C"])


def test_training_augmentation_is_a_function_of_the_seed(images):
    m = pd.DataFrame({"id": ["a"], "image": images[:1], "split": "train", "A": [1.0]})
    ds = DownstreamDataset(m, "cls", ["A"], size=32, train=True, crop_scale=(0.3, 0.6))
    a, b, c = ds[(0, 5)]["image"], ds[(0, 5)]["image"], ds[(0, 6)]["image"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ds.accepts_seed


def test_detection_boxes_scaled_and_mapped_back(images):
    boxes = [[4.0, 3.0, 20.0, 15.0], [30.0, 20.0, 38.0, 28.0]]
    m = pd.DataFrame(
        {"id": ["a", "b"], "image": images, "split": "val", "boxes": [json.dumps(boxes), "[]"]}
    )
    ds = DownstreamDataset(m, "det", ["boxes"], size=20, max_boxes=4)
    item = ds[0]
    assert item["num_boxes"].item() == 2 and item["boxes"].shape == (4, 4)
    h, w = item["orig_size"].tolist()
    scaled = item["boxes"][:2] * torch.tensor([w / 20, h / 20, w / 20, h / 20])
    assert np.allclose(scaled.numpy(), boxes, atol=1e-4)
    assert ds[1]["num_boxes"].item() == 0
    # flips and crops move boxes with the image
    aug = DownstreamDataset(
        m, "det", ["boxes"], size=20, train=True, flip_prob=1.0, crop_scale=(1.0, 1.0)
    )
    b = aug[(0, 0)]["boxes"][:2]
    assert (b[:, 2] > b[:, 0]).all() and (b >= 0).all() and (b <= 20).all()


def test_segmentation_masks_from_rle_and_boxes(images):
    mask = np.zeros((30, 40), bool)
    mask[10:20, 5:25] = True
    m = pd.DataFrame(
        {"id": ["a", "b"], "image": images, "split": "test", "rle": [rle_encode(mask), ""]}
    )
    ds = DownstreamDataset(m, "seg", ["rle"], size=20)
    got = ds[0]["mask"]
    assert got.shape == (1, 20, 20)
    # rows 10..20 of 30 -> 6.7..13.3 of 20, columns 5..25 of 40 -> 2.5..12.5 of 20
    assert got[0, 7:13, 3:12].all() and got.sum() == got[0, 6:14, 2:13].sum()
    assert ds[1]["mask"].sum() == 0
    mb = pd.DataFrame(
        {"id": ["a"], "image": images[:1], "split": "test", "boxes": [json.dumps([[0, 0, 20, 15]])]}
    )
    got = DownstreamDataset(mb, "seg", ["boxes"], size=20)[0]["mask"][0]
    assert got[:10, :10].all() and not got[10:, :].any() and not got[:, 10:].any()


def test_build_datasets_and_manifest_roundtrip(images, tmp_path):
    m = pd.DataFrame(
        {
            "id": ["a", "b"],
            "image": images,
            "split": ["train", "test"],
            "boxes": ["[[1.0, 2.0, 3.0, 4.0]]", "[]"],
        }
    )
    sets = build_datasets(m, "det", ["boxes"], size=16)
    assert set(sets) == {"train", "test"} and sets["train"].train and not sets["test"].train
    save_manifest(m, tmp_path / "m.csv")
    back = load_manifest(tmp_path / "m.csv")
    assert back.equals(m)
    loader = torch.utils.data.DataLoader(sets["test"], batch_size=1)
    assert next(iter(loader))["boxes"].shape == (1, 16, 4)


def test_real_siim_dicom_with_challenge_rle(test_data):
    """A real SIIM DICOM (1024x1024, JPEG-compressed) through the dataset, masks from real RLE rows."""
    from ecamp.data.sources.common import rle_decode

    dcm = test_data("fixtures/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
    table = pd.read_csv(test_data("label_tables/siim-pneumothorax-train-rle.csv.gz"))
    table.columns = [c.strip() for c in table.columns]
    assert table.set_index("ImageId").loc[dcm.stem, "EncodedPixels"].strip() == "-1"
    positive = table[table["EncodedPixels"].str.strip() != "-1"]["EncodedPixels"].iloc[0]
    m = pd.DataFrame(
        {"id": ["neg", "pos"], "image": [str(dcm)] * 2, "split": "test", "rle": ["", positive]}
    )
    ds = DownstreamDataset(m, "seg", ["rle"], size=64)
    neg, pos = ds[0], ds[1]
    assert neg["orig_size"].tolist() == [1024, 1024] and neg["mask"].sum() == 0
    assert neg["image"].shape == (3, 64, 64) and torch.isfinite(neg["image"]).all()
    full = rle_decode(positive, 1024, 1024)
    assert pos["mask"].mean().item() == pytest.approx(full.mean(), rel=0.25, abs=2e-4)
