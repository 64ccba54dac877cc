"""The downstream metrics against scikit-learn, torchmetrics and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from ecamp.errors import UserError
from ecamp.eval.metrics import (
    MGCA_IOU_THRESHOLDS,
    accuracy,
    detection_map,
    dice,
    filter_detections,
    label_aucs,
    macro_auc,
)


def test_macro_auc_matches_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(200, 5))
    s = rng.random((200, 5)) + 0.3 * y
    expected = np.mean([roc_auc_score(y[:, k], s[:, k]) for k in range(5)])
    assert macro_auc(y, s) == pytest.approx(expected, abs=1e-12)
    assert roc_auc_score(y, s, average="macro") == pytest.approx(macro_auc(y, s))


def test_macro_auc_skips_single_class_labels_and_ignores_nan(caplog):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(50, 3)).astype(float)
    y[:, 1] = 0  # one class only
    y[:10, 2] = np.nan  # ignored entries
    s = rng.random((50, 3))
    per = label_aucs(y, s)
    assert np.isnan(per[1])
    assert per[2] == pytest.approx(roc_auc_score(y[10:, 2], s[10:, 2]))
    with caplog.at_level("WARNING"):
        value = macro_auc(y, s, ["a", "b", "c"])
    assert value == pytest.approx((per[0] + per[2]) / 2)
    assert "b" in caplog.text
    assert np.isnan(macro_auc(np.zeros((4, 2)), np.ones((4, 2))))


def test_accuracy_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, size=100)
    s = rng.random((100, 3))
    assert accuracy(y, s) == pytest.approx(accuracy_score(y, s.argmax(1)))
    assert accuracy(y, s.argmax(1)) == pytest.approx(accuracy_score(y, s.argmax(1)))
    with pytest.raises(UserError):
        accuracy(y[:5], s)


def test_dice_global_and_per_image_by_hand():
    target = np.zeros((3, 4, 4))
    prob = np.zeros((3, 4, 4))
    target[0, :2, :2] = 1  # 4 px
    prob[0, :2, :] = 0.9  # 8 px, 4 overlap -> dice 8/12
    prob[1, 0, 0] = 0.7  # false positive on an empty target -> dice 0
    # image 2: both empty -> 1 per image, nothing in global
    assert dice(prob, target, reduction="global") == pytest.approx(2 * 4 / (8 + 4 + 1))
    assert dice(prob, target) == pytest.approx((8 / 12 + 0 + 1) / 3)  # per image: the default
    assert dice(prob, target, reduction="per_image") == pytest.approx((8 / 12 + 0 + 1) / 3)
    assert dice(np.zeros((2, 3, 3)), np.zeros((2, 3, 3))) == 1.0
    assert dice(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), reduction="global") == 1.0
    with pytest.raises(UserError):
        dice(prob, target, reduction="mean")


def test_dice_per_image_is_the_release_protocol_by_hand():
    """get_dice of the release: p = prob > 0.5 (strict), t = truth > 0.5; empty truth scores
    1 if the prediction is empty else 0; other images 2|P and T| / (|P| + |T|); mean."""
    target = np.zeros((4, 2, 2))
    prob = np.zeros((4, 2, 2))
    target[0] = 1  # 4 px truth, prediction of exactly 0.5 everywhere: not foreground -> 0
    prob[0] = 0.5
    target[1, 0] = 1  # 2 px truth, 1 px predicted inside: 2*1 / (1+2) = 2/3
    prob[1, 0, 0] = 0.51
    prob[2, 1, 1] = 0.9  # empty truth, a 1-px prediction -> 0
    # image 3: empty truth, empty prediction -> 1
    assert dice(prob, target) == pytest.approx((0 + 2 / 3 + 0 + 1) / 4)
    # pooled: 2 * 1 / (|P| = 2, |T| = 6)
    assert dice(prob, target, reduction="global") == pytest.approx(2 / 8)
    # SIIM-like: mostly empty truths that a model leaves empty dominate the per-image mean
    t = np.zeros((10, 2, 2))
    t[0] = 1
    p = np.zeros((10, 2, 2))
    p[0, 0] = 0.9
    assert dice(p, t) == pytest.approx((2 * 2 / 6 + 9) / 10)
    assert dice(p, t, reduction="global") == pytest.approx(4 / 6)
    # the truth is thresholded at 0.5 too (soft masks)
    assert dice(np.full((1, 2, 2), 0.9), np.full((1, 2, 2), 0.4)) == 0.0


def test_dice_matches_an_independent_f1_computation():
    """Dice of binary masks is the F1 score of their pixels: sklearn's, with zero_division=1
    for an image whose truth and prediction are both empty."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    prob = rng.random((40, 8, 8)) ** 3  # sparse predictions, some images all below 0.5
    target = (rng.random((40, 8, 8)) < 0.15) & (rng.random((40, 1, 1)) < 0.4)  # 60% empty
    prob[rng.random(40) < 0.3] = 0.0  # some empty predictions, on empty and non-empty truths
    pred = prob > 0.5
    per = [f1_score(t.ravel(), p.ravel(), zero_division=1.0) for t, p in zip(target, pred)]
    assert (target.reshape(40, -1).sum(1) == 0).sum() >= 10  # the empty-truth case is exercised
    assert dice(prob, target) == pytest.approx(float(np.mean(per)))
    pooled = f1_score(target.ravel(), pred.ravel(), zero_division=1.0)
    assert dice(prob, target, reduction="global") == pytest.approx(pooled)


def _box(x1, y1, x2, y2):
    return np.array([[x1, y1, x2, y2]], dtype=np.float32)


def test_detection_map_hand_computed_ranking():
    # image A: one TP (0.9); image B: an FP (0.8) ranked above its TP (0.7).
    preds = [
        (_box(0, 0, 10, 10), np.array([0.9])),
        (np.concatenate([_box(50, 50, 60, 60), _box(0, 0, 10, 11)]), np.array([0.8, 0.7])),
    ]
    targets = [_box(0, 0, 10, 10), _box(0, 0, 10, 10)]
    # PR points: (r .5, p 1), (r .5, p .5), (r 1, p 2/3): 101-point interpolation
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert detection_map(preds, targets, protocol="coco") == pytest.approx(expected, abs=1e-6)
    assert detection_map(preds, targets, protocol="mgca") == pytest.approx(expected, abs=1e-6)


def test_detection_map_averages_over_iou_thresholds():
    # IoU = 62/100 passes thresholds 0.40 .. 0.60 (5 of 8)
    preds = [(_box(0, 0, 10, 6.2), np.array([0.9]))]
    targets = [_box(0, 0, 10, 10)]
    assert detection_map(preds, targets) == pytest.approx(5 / 8, abs=1e-6)
    assert MGCA_IOU_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)


def test_detection_map_protocols_differ_on_empty_images_and_low_scores():
    perfect = (_box(0, 0, 10, 10), np.array([0.9]))
    fp_no_gt = (_box(0, 0, 10, 10), np.array([0.95]))
    low = (_box(0, 0, 10, 10), np.array([0.3]))
    targets = [_box(0, 0, 10, 10), np.zeros((0, 4)), _box(0, 0, 10, 10)]
    preds = [perfect, fp_no_gt, low]
    # mgca: the no-GT image and the image whose only detection is below 0.5 are left out
    assert detection_map(preds, targets, protocol="mgca") == pytest.approx(1.0)
    # coco: FP at 0.95 ranks first, then TP 0.9, then TP 0.3 -> (r .5, p .5), (r 1, p 2/3)
    coco = detection_map(preds, targets, protocol="coco")
    assert coco == pytest.approx(101 * (2 / 3) / 101, abs=1e-6)
    assert np.isnan(detection_map([low], [_box(0, 0, 10, 10)], protocol="mgca"))


def test_detection_map_matches_torchmetrics_on_random_boxes():
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    rng = np.random.default_rng(3)
    preds, targets, tm_p, tm_t = [], [], [], []
    for _ in range(6):
        g = rng.integers(1, 3)
        xy = rng.random((g, 2)) * 80
        gt = np.concatenate([xy, xy + 10 + rng.random((g, 2)) * 20], 1).astype(np.float32)
        m = 4
        jit = gt[rng.integers(0, g, m)] + rng.normal(0, 4, (m, 4)).astype(np.float32)
        jit[:, 2:] = np.maximum(jit[:, 2:], jit[:, :2] + 1)
        sc = rng.random(m).astype(np.float32)
        preds.append((jit, sc))
        targets.append(gt)
        tm_p.append(
            {
                "boxes": torch.from_numpy(jit),
                "scores": torch.from_numpy(sc),
                "labels": torch.zeros(m, dtype=torch.long),
            }
        )
        tm_t.append({"boxes": torch.from_numpy(gt), "labels": torch.zeros(g, dtype=torch.long)})
    metric = MeanAveragePrecision(iou_thresholds=list(MGCA_IOU_THRESHOLDS))
    metric.update(tm_p, tm_t)
    assert detection_map(preds, targets, protocol="coco") == pytest.approx(
        float(metric.compute()["map"]), abs=1e-6
    )


def test_filter_detections_threshold_and_nms():
    boxes = np.array(
        [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32
    )
    scores = np.array([0.9, 0.8, 0.6, 0.4], np.float32)
    b, s = filter_detections(boxes, scores)
    assert s.tolist() == pytest.approx([0.9, 0.6])
    assert b.tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]]


def test_detection_map_rejects_bad_shapes():
    with pytest.raises(UserError):
        detection_map([(np.zeros((2, 3)), np.zeros(2))], [np.zeros((0, 4))])
    with pytest.raises(UserError):
        detection_map([(np.zeros((1, 4)), np.zeros(1))], [])
