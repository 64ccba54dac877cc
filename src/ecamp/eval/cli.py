"""`ecamp evaluate`: score prediction files from any model with the paper's metrics.

File formats (predictions and targets are matched by image id; every target id needs a
prediction):

cls  predictions CSV: ``id`` + one score column per label / class (probabilities or logits).
     targets CSV: ``id`` + the same label columns with 1/0 (blank = ignored) for multi-label
     sets (metric: macro AUC, per-label AUC reported), or ``id,label`` with the class index
     (metric: accuracy over the arg-max of the score columns, in column order).
     A downstream manifest (``ecamp.data.downstream.save_manifest``) is a valid targets file.
seg  NPZ files whose keys are image ids: predictions hold (H,W) foreground probabilities,
     targets (H,W) binary masks of the same size.  Metric: Dice of ``prob > --threshold``,
     ``--dice per_image`` (default; the release's get_dice: mean over images, an empty truth
     scores 1 if the prediction is empty too, else 0) or ``--dice global`` (pooled pixels);
     both are reported.
det  JSON: predictions ``{"<id>": {"boxes": [[x1,y1,x2,y2], ...], "scores": [...]}}``,
     targets ``{"<id>": [[x1,y1,x2,y2], ...]}`` (or ``{"<id>": {"boxes": [...]}}``), pixels.
     Metric: mAP over IoU 0.40..0.75 (``--protocol mgca`` as MGCA / the release, or ``coco``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "score prediction files (cls CSV / seg NPZ / det JSON) with AUC, accuracy, Dice or mAP"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task", required=True, choices=["cls", "seg", "det"], help="which kind of predictions"
    )
    parser.add_argument(
        "--predictions", required=True, metavar="FILE", help="prediction file (see formats below)"
    )
    parser.add_argument(
        "--targets", required=True, metavar="FILE", help="ground-truth file (see formats below)"
    )
    parser.add_argument(
        "--output", "-o", metavar="FILE", help="write the results JSON here (always printed too)"
    )
    parser.add_argument(
        "--metric",
        choices=["auto", "auc", "accuracy"],
        default="auto",
        help="cls metric: auto picks accuracy when targets have one 'label' column, else macro AUC",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="seg: probability threshold (default 0.5)"
    )
    parser.add_argument(
        "--dice",
        choices=["per_image", "global"],
        default="per_image",
        help="seg: headline Dice, per_image (the release's, mean over images) or global "
        "(pooled over all pixels); both are reported (default per_image)",
    )
    parser.add_argument(
        "--protocol",
        choices=["mgca", "coco"],
        default="mgca",
        help="det: mgca (confidence 0.5 + NMS 0.5; images without boxes or detections left out) or coco",
    )
    parser.epilog = __doc__.split("\n\n", 1)[1] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _read_csv(path: Path):
    import pandas as pd

    from ecamp.errors import DataError

    try:
        df = pd.read_csv(path, dtype={"id": str})
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as CSV ({e})") from e
    if "id" not in df.columns:
        raise DataError(f"{path}: needs an 'id' column; found {list(df.columns)}")
    if df["id"].duplicated().any():
        raise DataError(f"{path}: id {df['id'][df['id'].duplicated()].iloc[0]!r} appears twice")
    return df.set_index("id")


def _missing(targets, predictions, pred_path: Path) -> None:
    from ecamp.errors import DataError

    absent = [i for i in targets if i not in predictions]
    if absent:
        raise DataError(
            f"{pred_path}: no prediction for {len(absent)} target id(s), e.g. {absent[0]!r}"
        )


def evaluate_cls(pred_path: Path, target_path: Path, metric: str = "auto") -> dict:
    """Macro AUC (multi-label targets) or accuracy (a ``label`` class-index column)."""
    import numpy as np

    from ecamp.errors import DataError
    from ecamp.eval.metrics import accuracy, label_aucs, macro_auc

    pred, tgt = _read_csv(pred_path), _read_csv(target_path)
    _missing(tgt.index, set(pred.index), pred_path)
    pred = pred.loc[tgt.index]
    if metric == "auto":
        metric = "accuracy" if "label" in tgt.columns and "label" not in pred.columns else "auc"
    if metric == "accuracy":
        scores = pred.select_dtypes("number").to_numpy(dtype=float)
        return {
            "task": "cls",
            "metric": "accuracy",
            "n": len(tgt),
            "accuracy": accuracy(tgt["label"].to_numpy(), scores),
        }
    cols = [c for c in pred.columns if c in tgt.columns]
    if not cols:
        raise DataError(f"{pred_path} and {target_path} share no label column")
    y_true, y_score = tgt[cols].to_numpy(dtype=float), pred[cols].to_numpy(dtype=float)
    per = label_aucs(y_true, y_score)
    return {
        "task": "cls",
        "metric": "macro_auc",
        "n": len(tgt),
        "macro_auc": macro_auc(y_true, y_score, cols),
        "per_label_auc": {c: (None if np.isnan(a) else float(a)) for c, a in zip(cols, per)},
        "skipped_labels": [c for c, a in zip(cols, per) if np.isnan(a)],
    }


def evaluate_seg(
    pred_path: Path, target_path: Path, threshold: float = 0.5, reduction: str = "per_image"
) -> dict:
    """Dice over the images of the targets file: ``dice`` is the ``reduction`` one (per_image
    or global); ``dice_per_image`` and ``dice_global`` are both reported."""
    import numpy as np

    from ecamp.errors import DataError
    from ecamp.eval.metrics import DICE_REDUCTIONS, dice_counts, dice_from_counts

    try:
        pred, tgt = np.load(pred_path), np.load(target_path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read NPZ ({e})") from e
    _missing(list(tgt.files), set(pred.files), pred_path)
    inter, total = np.zeros(len(tgt.files)), np.zeros(len(tgt.files))
    for i, key in enumerate(tgt.files):  # one image at a time: sizes may differ
        try:
            a, b = dice_counts(pred[key], tgt[key], threshold)
        except Exception as e:
            raise DataError(f"image {key!r}: {e}") from e
        inter[i], total[i] = a.sum(), b.sum()
    both = {f"dice_{r}": dice_from_counts(inter, total, r) for r in DICE_REDUCTIONS}
    return {
        "task": "seg",
        "metric": "dice",
        "reduction": reduction,
        "n": len(tgt.files),
        "threshold": threshold,
        "dice": both[f"dice_{reduction}"],
        **both,
    }


def evaluate_det(pred_path: Path, target_path: Path, protocol: str = "mgca") -> dict:
    """mAP over IoU 0.40..0.75 with the chosen protocol."""
    from ecamp.errors import DataError
    from ecamp.eval.metrics import MGCA_IOU_THRESHOLDS, detection_map

    try:
        pred = json.loads(pred_path.read_text())
        tgt = json.loads(target_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read detection JSON ({e})") from e
    if not isinstance(pred, dict) or not isinstance(tgt, dict):
        raise DataError("detection files must be JSON objects keyed by image id")
    _missing(list(tgt), set(pred), pred_path)
    preds, gts = [], []
    for key, t in tgt.items():
        p = pred[key]
        if not isinstance(p, dict) or "boxes" not in p or "scores" not in p:
            raise DataError(f"{pred_path}: entry {key!r} needs 'boxes' and 'scores'")
        preds.append((p["boxes"], p["scores"]))
        gts.append(t["boxes"] if isinstance(t, dict) else t)
    value = detection_map(preds, gts, protocol=protocol)
    return {
        "task": "det",
        "metric": "map",
        "protocol": protocol,
        "iou_thresholds": list(MGCA_IOU_THRESHOLDS),
        "n": len(tgt),
        "map": value,
    }


def _json_safe(value):
    """NaN (a metric that cannot be computed) becomes null: NaN is not JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def run(args: argparse.Namespace) -> int:
    from ecamp.errors import UserError
    from ecamp.utils.io import atomic_write_text

    pred_path, target_path = Path(args.predictions), Path(args.targets)
    for p in (pred_path, target_path):
        if not p.is_file():
            raise UserError(f"{p} does not exist")
    if args.task == "cls":
        result = evaluate_cls(pred_path, target_path, args.metric)
    elif args.task == "seg":
        result = evaluate_seg(pred_path, target_path, args.threshold, args.dice)
    else:
        result = evaluate_det(pred_path, target_path, args.protocol)
    text = json.dumps(_json_safe(result), indent=2) + "\n"
    if args.output:
        atomic_write_text(args.output, text)
    sys.stdout.write(text)
    return 0
