"""`ecamp evaluate` on each documented prediction-file format."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ecamp.errors import DataError
from ecamp.eval import cli


def _run(tmp_path, *argv: str) -> dict:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "result.json"
    args = parser.parse_args([*argv, "--output", str(out)])
    assert cli.run(args) == 0
    return json.loads(out.read_text())


def test_cls_macro_auc_and_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(40)]
    y = rng.integers(0, 2, (40, 2)).astype(float)
    y[:, 1] = 1.0  # one class only: skipped and reported
    s = rng.random((40, 2))
    pd.DataFrame({"id": ids, "A": y[:, 0], "B": y[:, 1]}).to_csv(tmp_path / "t.csv", index=False)
    # predictions in another row order, with an extra image
    pd.DataFrame(
        {"id": ids[::-1] + ["extra"], "A": list(s[::-1, 0]) + [0.5], "B": list(s[::-1, 1]) + [0.5]}
    ).to_csv(tmp_path / "p.csv", index=False)
    res = _run(
        tmp_path,
        "--task",
        "cls",
        "--predictions",
        str(tmp_path / "p.csv"),
        "--targets",
        str(tmp_path / "t.csv"),
    )
    assert res["macro_auc"] == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))
    assert res["skipped_labels"] == ["B"] and res["per_label_auc"]["B"] is None

    labels = rng.integers(0, 3, 40)
    pd.DataFrame({"id": ids, "label": labels}).to_csv(tmp_path / "tc.csv", index=False)
    scores = rng.random((40, 3))
    pd.DataFrame(
        {"id": ids, "normal": scores[:, 0], "pneumonia": scores[:, 1], "covid": scores[:, 2]}
    ).to_csv(tmp_path / "pc.csv", index=False)
    res = _run(
        tmp_path,
        "--task",
        "cls",
        "--predictions",
        str(tmp_path / "pc.csv"),
        "--targets",
        str(tmp_path / "tc.csv"),
    )
    assert res["metric"] == "accuracy"
    assert res["accuracy"] == pytest.approx(float((scores.argmax(1) == labels).mean()))


def test_cls_missing_prediction_is_a_data_error(tmp_path):
    pd.DataFrame({"id": ["a", "b"], "A": [0, 1]}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"id": ["a"], "A": [0.2]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match="no prediction"):
        _run(
            tmp_path,
            "--task",
            "cls",
            "--predictions",
            str(tmp_path / "p.csv"),
            "--targets",
            str(tmp_path / "t.csv"),
        )


def test_seg_npz_with_different_image_sizes(tmp_path):
    t1 = np.zeros((4, 4))
    t1[:2, :2] = 1
    p1 = np.zeros((4, 4))
    p1[:2, :] = 0.8
    t2 = np.zeros((3, 5))
    p2 = np.zeros((3, 5))
    np.savez(tmp_path / "p.npz", a=p1, b=p2)
    np.savez(tmp_path / "t.npz", a=t1, b=t2)
    res = _run(
        tmp_path,
        "--task",
        "seg",
        "--predictions",
        str(tmp_path / "p.npz"),
        "--targets",
        str(tmp_path / "t.npz"),
    )
    # per image (the release's protocol) by default; b: empty truth, empty prediction -> 1
    assert res["dice"] == pytest.approx((8 / 12 + 1) / 2) and res["reduction"] == "per_image"
    assert res["dice_per_image"] == pytest.approx((8 / 12 + 1) / 2)
    assert res["dice_global"] == pytest.approx(8 / 12)
    pooled = _run(
        tmp_path,
        "--task",
        "seg",
        "--dice",
        "global",
        "--predictions",
        str(tmp_path / "p.npz"),
        "--targets",
        str(tmp_path / "t.npz"),
    )
    assert pooled["dice"] == pytest.approx(8 / 12) and pooled["reduction"] == "global"


def test_det_json(tmp_path):
    pred = {
        "a": {"boxes": [[0, 0, 10, 10]], "scores": [0.9]},
        "b": {"boxes": [[0, 0, 10, 10]], "scores": [0.9]},
        "c": {"boxes": [], "scores": []},
    }
    tgt = {"a": [[0, 0, 10, 10]], "b": [], "c": {"boxes": [[5, 5, 20, 20]]}}
    (tmp_path / "p.json").write_text(json.dumps(pred))
    (tmp_path / "t.json").write_text(json.dumps(tgt))
    args = [
        "--task",
        "det",
        "--predictions",
        str(tmp_path / "p.json"),
        "--targets",
        str(tmp_path / "t.json"),
    ]
    assert _run(tmp_path, *args)["map"] == pytest.approx(1.0)  # mgca: only image a counts
    # COCO keeps all three images: 2 ground-truth boxes (a hit on a at IoU 1 at every
    # threshold, c missed), 2 detections (a: TP, b: FP).  101-point interpolated AP:
    # TP ranked first -> precision 1 up to recall 0.5 -> 51 of the 101 recall points
    pred["b"]["scores"] = [0.8]
    (tmp_path / "p.json").write_text(json.dumps(pred))
    assert _run(tmp_path, *args, "--protocol", "coco")["map"] == pytest.approx(51 / 101)
    # FP ranked first -> precision 1/2 at recall 0.5 -> half of that
    pred["b"]["scores"] = [0.95]
    (tmp_path / "p.json").write_text(json.dumps(pred))
    assert _run(tmp_path, *args, "--protocol", "coco")["map"] == pytest.approx(0.5 * 51 / 101)
