"""The paper's downstream metrics as plain functions on numpy arrays.

- :func:`macro_auc` (ChestX-ray14, CheXpert, RSNA classification), :func:`label_aucs` per label;
- :func:`accuracy` (COVIDx);
- :func:`dice` (SIIM, RSNA segmentation): per image as the release scores it (its default), or
  pooled over all pixels (``reduction="global"``);
- :func:`detection_map` (RSNA detection; mAP over IoU 0.40..0.75, the MGCA protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from ecamp.errors import UserError
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

MGCA_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.40 + 0.05 * i, 2) for i in range(8))
# Dice reductions: per_image is the release's (Fine-tuning/Segmentation/train.py, get_dice),
# global pools every pixel of every image (what a single large mask dominates)
DICE_REDUCTIONS: tuple[str, ...] = ("per_image", "global")


def label_aucs(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """ROC AUC of each label column; NaN where a label has one class only.

    ``y_true`` (N,K) in {0,1}; NaN entries (an ignored, e.g. uncertain, label) leave that
    sample out of that label's AUC.  1-D inputs count as one label.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim == 1:
        y_true, y_score = y_true[:, None], y_score[:, None]
    if y_true.shape != y_score.shape:
        raise UserError(f"labels {y_true.shape} and scores {y_score.shape} differ in shape")
    out = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):  # K is small (<= 14); sklearn does the per-label work
        keep = ~np.isnan(y_true[:, k])
        t = y_true[keep, k]
        if t.size and np.unique(t).size == 2:
            out[k] = roc_auc_score(t, y_score[keep, k])
    return out


def macro_auc(
    y_true: np.ndarray, y_score: np.ndarray, label_names: Sequence[str] | None = None
) -> float:
    """Mean ROC AUC over labels; labels with a single class are skipped and logged.

    Use :func:`label_aucs` to see which labels were skipped (they are NaN there).
    Returns NaN when no label has both classes.
    """
    aucs = label_aucs(y_true, y_score)
    skipped = np.flatnonzero(np.isnan(aucs))
    if skipped.size:
        names = [label_names[int(i)] if label_names else str(i) for i in skipped]
        log.warning("macro_auc: skipped labels with one class only: %s", ", ".join(names))
    return float(np.nanmean(aucs)) if skipped.size < aucs.size else float("nan")


def accuracy(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Fraction of samples whose arg-max score (``y_score`` (N,C)) is the true class (N,).

    A 1-D ``y_score`` is read as predicted class indices.
    """
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_score = np.asarray(y_score)
    pred = y_score.argmax(axis=1) if y_score.ndim == 2 else y_score.astype(np.int64).ravel()
    if pred.shape != y_true.shape:
        raise UserError(f"{y_true.shape[0]} labels but {pred.shape[0]} predictions")
    return float((pred == y_true).mean()) if y_true.size else float("nan")


def dice_counts(
    prob: np.ndarray, target: np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Per image |P and T| and |P| + |T| (two (N,) arrays), P = ``prob > threshold``.

    Strictly above the threshold and truth above 0.5, as the release's ``get_dice``.
    """
    p = np.asarray(prob) > threshold
    t = np.asarray(target) > 0.5
    if p.shape != t.shape:
        raise UserError(f"prediction {p.shape} and target {t.shape} masks differ in shape")
    if p.ndim == 2:
        p, t = p[None], t[None]
    inter = np.logical_and(p, t).reshape(len(p), -1).sum(1).astype(np.float64)
    total = (p.reshape(len(p), -1).sum(1) + t.reshape(len(t), -1).sum(1)).astype(np.float64)
    return inter, total


def dice_from_counts(inter: np.ndarray, total: np.ndarray, reduction: str = "per_image") -> float:
    """Dice from :func:`dice_counts` (lets images of different sizes be pooled).

    ``per_image``: the mean over images of 2|P and T| / (|P| + |T|), an image with an empty
    truth scoring 1 when its prediction is empty too and 0 otherwise (the release's
    ``get_dice``); ``global``: 2 sum|P and T| / sum(|P| + |T|) over all images (1.0 when all
    are empty).
    """
    if reduction == "global":
        return float(2 * inter.sum() / total.sum()) if total.sum() > 0 else 1.0
    if reduction == "per_image":
        per = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
        return float(per.mean()) if per.size else float("nan")
    raise UserError(f"dice reduction must be one of {DICE_REDUCTIONS}, not {reduction!r}")


def dice(
    prob: np.ndarray, target: np.ndarray, threshold: float = 0.5, reduction: str = "per_image"
) -> float:
    """Dice of ``prob > threshold`` against binary ``target`` (both (N,H,W)).

    ``per_image`` (default, the release's protocol): the mean of per-image Dice; an image with
    an empty target scores 1 if its prediction is empty, else 0.  ``global``: 2|P and T| /
    (|P| + |T|) pooled over all pixels of all images (1.0 when both are empty).
    """
    return dice_from_counts(*dice_counts(prob, target, threshold), reduction=reduction)


def _as_boxes(a: np.ndarray | Sequence, name: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float32)
    except (ValueError, TypeError):
        raise UserError(
            f"{name}: boxes must be (M,4) x1,y1,x2,y2 numbers, got {a!r}"[:300]
        ) from None
    if arr.size == 0:
        return np.zeros((0, 4), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise UserError(f"{name}: boxes must be (M,4) x1,y1,x2,y2, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise UserError(f"{name}: a box has a NaN or infinite coordinate")
    inverted = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if inverted.any():
        j = int(np.argmax(inverted))
        raise UserError(
            f"{name}: box {j} {arr[j].tolist()} has x2 < x1 or y2 < y1; boxes are x1,y1,x2,y2"
        )
    return arr


def filter_detections(
    boxes: np.ndarray, scores: np.ndarray, conf: float = 0.5, iou: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Keep detections with score >= ``conf``, then non-maximum suppression at ``iou``."""
    import torch
    from torchvision.ops import nms

    keep = scores >= conf
    b, s = torch.as_tensor(boxes[keep]), torch.as_tensor(scores[keep])
    idx = nms(b, s, iou).numpy() if len(s) else np.zeros(0, np.int64)
    return boxes[keep][idx], scores[keep][idx]


def detection_map(
    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    targets: Sequence[np.ndarray],
    iou_thresholds: Sequence[float] = MGCA_IOU_THRESHOLDS,
    protocol: str = "mgca",
    conf_threshold: float = 0.5,
    nms_iou: float = 0.5,
    ids: Sequence[str] | None = None,
) -> float:
    """Single-class COCO-style AP averaged over ``iou_thresholds``.

    ``predictions``: per image ``(boxes (M,4) x1y1x2y2, scores (M,))``; ``targets``: per image
    ground-truth boxes (G,4).  Matching, 101-point interpolation and the 100-detections cap are
    torchmetrics' ``MeanAveragePrecision`` (pycocotools backend).

    ``protocol="mgca"`` scores as MGCA and the ECAMP release do: detections below
    ``conf_threshold`` are dropped and NMS at ``nms_iou`` applied, then images without any
    ground-truth box and images with no detection left are left out.
    ``protocol="coco"`` keeps every image and every detection as given.
    Returns NaN when no image is left to score.  ``ids`` name the images in error messages.
    """
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    if len(predictions) != len(targets):
        raise UserError(f"{len(predictions)} predicted images but {len(targets)} target images")
    if protocol not in ("mgca", "coco"):
        raise UserError(f"protocol must be 'mgca' or 'coco', not {protocol!r}")
    preds, gts = [], []
    for i, ((pb, ps), tb) in enumerate(zip(predictions, targets)):
        image = f"image {ids[i]!r}" if ids is not None else f"image {i}"
        pb = _as_boxes(pb, f"{image} predictions")
        try:
            ps = np.asarray(ps, dtype=np.float32).reshape(-1)
        except (ValueError, TypeError):
            raise UserError(f"{image}: scores must be numbers, got {ps!r}"[:300]) from None
        tb = _as_boxes(tb, f"{image} targets")
        if len(ps) != len(pb):
            raise UserError(f"{image}: {len(pb)} boxes but {len(ps)} scores")
        if not np.isfinite(ps).all():
            raise UserError(f"{image}: a score is NaN or infinite")
        if protocol == "mgca":
            pb, ps = filter_detections(pb, ps, conf_threshold, nms_iou)
            if len(tb) == 0 or len(pb) == 0:
                continue
        preds.append(
            {
                "boxes": torch.from_numpy(pb),
                "scores": torch.from_numpy(ps),
                "labels": torch.zeros(len(ps), dtype=torch.long),
            }
        )
        gts.append(
            {"boxes": torch.from_numpy(tb), "labels": torch.zeros(len(tb), dtype=torch.long)}
        )
    if not preds:
        return float("nan")
    metric = MeanAveragePrecision(
        box_format="xyxy", iou_thresholds=[float(t) for t in iou_thresholds], backend="pycocotools"
    )
    metric.update(preds, gts)
    value = float(metric.compute()["map"])
    # pycocotools reports -1 when no ground truth exists at all
    return float("nan") if value < 0 else value
