"""The phantom world: determinism, format, label/box/mask/report consistency, real signal."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecamp.data.manifest import load_pretrain_manifest
from ecamp.data.synthetic import LESION_CLASSES, make_phantom_world

N, SIZE = 300, 64


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    path = make_phantom_world(out, n=N, size=SIZE, seed=1)
    return out, pd.read_csv(path, dtype={"id": str})


def _png(folder, rel) -> np.ndarray:
    return np.asarray(Image.open(folder / rel))


def test_manifest_format(world):
    out, df = world
    clean = load_pretrain_manifest(out / "manifest.csv")  # fits the pre-training manifest
    assert len(clean) == N and set(clean["split"]) == {"train", "val", "test"}
    assert (clean["distilled"] != "").all()
    for c in LESION_CLASSES:
        assert 0.04 < df[f"label_{c}"].mean() < 0.35, c  # mostly negative, never absent
    assert (df.filter(like="label_").sum(axis=1) == 0).mean() > 0.3
    img = _png(out, df["image"][0])
    assert img.shape == (SIZE, SIZE) and img.dtype == np.uint8 and img.std() > 10


def test_deterministic_and_prefix_stable(world, tmp_path):
    out, df = world
    path = make_phantom_world(tmp_path, n=5, size=SIZE, seed=1)
    small = pd.read_csv(path, dtype={"id": str})
    pd.testing.assert_frame_equal(small, df.head(5))
    for rel in list(small["image"]) + list(small["mask_classes"]):
        np.testing.assert_array_equal(_png(tmp_path, rel), _png(out, rel))
    other = pd.read_csv(make_phantom_world(tmp_path / "s2", n=5, size=SIZE, seed=2))
    assert not other["report"].equals(small["report"])


def test_labels_boxes_masks_agree(world):
    out, df = world
    for row in df.itertuples():
        boxes = json.loads(row.boxes)
        classes = _png(out, row.mask_classes)
        union = _png(out, row.mask) > 0
        kinds = {b[4] for b in boxes}
        for k, c in enumerate(LESION_CLASSES):
            bit = (classes >> k) & 1
            assert getattr(row, f"label_{c}") == int(c in kinds) == int(bit.any()), (row.id, c)
        for x1, y1, x2, y2, kind in boxes:
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            bit = (classes[y1:y2, x1:x2] >> LESION_CLASSES.index(kind)) & 1
            assert bit.any() and bit[0].any() | bit[-1].any()  # the box is tight
        focal = (classes & ~np.uint8(1 << LESION_CLASSES.index("cardiomegaly"))) > 0
        np.testing.assert_array_equal(union, focal)
        inside = np.zeros_like(union)
        for x1, y1, x2, y2, _ in boxes:
            inside[y1:y2, x1:x2] = True
        assert not (union & ~inside).any()


def test_reports_agree_with_labels(world):
    _, df = world
    for row in df.itertuples():
        for c in LESION_CLASSES:
            positive = re.search(rf"There is (?!no )[^.]*\b{c}\b", row.distilled) is not None
            negative = f"There is no {c}." in row.distilled
            assert positive == bool(getattr(row, f"label_{c}")), (row.id, c, row.distilled)
            assert not (positive and negative)
    normal = df.filter(like="label_").sum(axis=1) == 0
    assert df.loc[normal, "report"].str.contains("No acute").all()
    eff = df["label_effusion"] == 1
    assert df.loc[eff, "report"].str.contains("pleural effusion").all()
    assert (
        not df.loc[~eff, "report"]
        .str.contains(r"(?:small|moderate|large) (?:right|left) pleural")
        .any()
    )


def test_lesions_change_intensity_inside_their_boxes(world):
    """Each focal class changes the pixels of its box versus the same box in negatives."""
    out, df = world
    imgs = np.stack([_png(out, p).astype(np.float32) / 255 for p in df["image"]])
    sign = {"opacity": 1, "nodule": 1, "effusion": 1, "atelectasis": 1, "pneumothorax": -1}
    for c, s in sign.items():
        neg = imgs[df[f"label_{c}"].to_numpy() == 0]
        diffs = []
        for i, row in enumerate(df.itertuples()):
            for x1, y1, x2, y2, kind in json.loads(row.boxes):
                if kind == c:
                    diffs.append(imgs[i, y1:y2, x1:x2].mean() - neg[:, y1:y2, x1:x2].mean())
        diffs = s * np.array(diffs)
        assert len(diffs) >= 10 and np.median(diffs) > 0.02 and (diffs > 0).mean() > 0.8, c


def test_linear_probe_on_pixels_beats_chance():
    """A logistic regression on 32x32 pixels finds effusion and cardiomegaly on held-out images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from ecamp.data.synthetic import make_phantom_image

    rows = [make_phantom_image(i, size=32, seed=3) for i in range(260)]
    x = np.stack([img.ravel() for img, _, _ in rows])
    train = np.arange(len(rows)) < 180
    for c in ("effusion", "cardiomegaly"):
        y = np.array([int(any(les.kind == c for les in lesions)) for _, lesions, _ in rows])
        model = LogisticRegression(C=0.1, max_iter=2000).fit(x[train], y[train])
        assert roc_auc_score(y[~train], model.predict_proba(x[~train])[:, 1]) > 0.85, c
