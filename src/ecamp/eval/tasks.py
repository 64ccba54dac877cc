"""One scorer per downstream task: predictions gathered over a split -> its metrics.

Used by ``ecamp finetune`` (validation / test) and, where the computation is the same, by
``ecamp eval`` (prediction files).  numpy only; the model side stays in the stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ecamp.eval import metrics as M


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def dice_scores(inter: np.ndarray, total: np.ndarray) -> dict[str, float]:
    """``dice_<reduction>`` for every reduction of :data:`ecamp.eval.metrics.DICE_REDUCTIONS`."""
    return {f"dice_{r}": M.dice_from_counts(inter, total, r) for r in M.DICE_REDUCTIONS}


def evaluate_classification(
    y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str], multilabel: bool, metric: str
) -> dict[str, Any]:
    """Macro AUC over the labels with both classes (and per label) or multi-class accuracy."""
    if multilabel:
        per = M.label_aucs(y_true, y_score)
        with np.errstate(all="ignore"):
            value = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
        return {metric: value, "per_label": dict(zip(labels, (_finite(v) for v in per)))}
    return {metric: M.accuracy(y_true, y_score)}


def evaluate_segmentation(
    inter: np.ndarray, total: np.ndarray, reduction: str, metric: str
) -> dict[str, Any]:
    """Dice from per-image counts: the ``reduction`` one as ``metric``, plus every reduction."""
    both = dice_scores(inter, total)
    return {metric: both[f"dice_{reduction}"], **both}


def _other_protocol(protocol: str) -> str:
    return "coco" if protocol == "mgca" else "mgca"


def scalar_metric_names(task: str, metric: str, det_protocol: str = "mgca") -> list[str]:
    """The scalar metrics the task's scorer returns: ``metric`` (the headline) first."""
    if task == "seg":
        return [metric, *(f"dice_{r}" for r in M.DICE_REDUCTIONS)]  # as dice_scores names them
    if task == "det":
        return [metric, f"map_{_other_protocol(det_protocol)}"]
    return [metric]


def evaluate_detection(
    preds: list[tuple[np.ndarray, np.ndarray]],
    targets: list[np.ndarray],
    protocol: str,
    metric: str,
) -> dict[str, Any]:
    """mAP under ``protocol`` as ``metric``, and under the other protocol as ``map_<other>``."""
    other = _other_protocol(protocol)
    return {
        metric: M.detection_map(preds, targets, protocol=protocol),
        f"map_{other}": M.detection_map(preds, targets, protocol=other),
    }


# task -> its scorer (the stage gathers what each one takes)
EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "cls": evaluate_classification,
    "seg": evaluate_segmentation,
    "det": evaluate_detection,
}
