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
    from ecamp.errors import DataError
    from ecamp.utils.tables import read_csv

    df = read_csv(path, dtype={"id": str}, what="predictions/targets")
    if "id" not in df.columns:
        raise DataError(f"{path}: needs an 'id' column; found {list(df.columns)}")
    blank = df["id"].isna() | (df["id"].astype(str).str.strip() == "")
    if blank.any():
        raise DataError(f"{path}: row {int(blank.to_numpy().argmax()) + 1} has no id")
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


def _cell_error(path: Path, df, bad, cols: list[str], problem: str):
    """A DataError naming the first bad cell of ``bad`` (a boolean (N,K) array) by row and id."""
    import numpy as np

    from ecamp.errors import DataError

    r, c = (int(x[0]) for x in np.nonzero(bad))
    value = df[cols[c]].iloc[r]
    value = value.item() if isinstance(value, np.generic) else value
    return DataError(
        f"{path}: row of id {df.index[r]!r}, column {cols[c]!r}: {value!r} {problem} "
        f"({int(bad.sum())} such cell(s)); fix the file"
    )


def _scores(path: Path, df, cols: list[str]):
    """The (N,K) float scores of ``cols``: every cell a finite number."""
    import numpy as np
    import pandas as pd

    values = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise _cell_error(path, df, bad, cols, "is not a finite score (NaN, inf or text)")
    return values


def _score_columns(df) -> list[str]:
    """Numeric columns, and text columns that mostly hold numbers (a few cells broken)."""
    import pandas as pd

    out = []
    for c in df.columns:
        col = df[c]
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        mostly = col.dtype == object and pd.to_numeric(col, errors="coerce").notna().mean() >= 0.5
        if numeric or mostly:
            out.append(c)
    return out


def evaluate_cls(pred_path: Path, target_path: Path, metric: str = "auto") -> dict:
    """Macro AUC (multi-label targets) or accuracy (a ``label`` class-index column)."""
    import numpy as np
    import pandas as pd

    from ecamp.errors import DataError
    from ecamp.eval.metrics import accuracy, label_aucs, macro_auc

    pred, tgt = _read_csv(pred_path), _read_csv(target_path)
    _missing(tgt.index, set(pred.index), pred_path)
    pred = pred.loc[tgt.index]
    if metric == "auto":
        metric = "accuracy" if "label" in tgt.columns and "label" not in pred.columns else "auc"
    if metric == "accuracy":
        if "label" not in tgt.columns:
            raise DataError(f"{target_path}: accuracy needs a 'label' column (the class index)")
        cols = [c for c in _score_columns(pred) if c != "label"]
        if not cols:
            raise DataError(f"{pred_path}: no score column (one per class) besides 'id'")
        scores = _scores(pred_path, pred, cols)
        labels = pd.to_numeric(tgt["label"], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~(np.isfinite(labels) & (labels == np.round(labels)))
        bad |= ~bad & ((labels < 0) | (labels >= len(cols)))
        if bad.any():
            raise _cell_error(
                target_path,
                tgt,
                bad[:, None],
                ["label"],
                f"is not a class index 0..{len(cols) - 1} (one per score column of {pred_path})",
            )
        return {
            "task": "cls",
            "metric": "accuracy",
            "n": len(tgt),
            "accuracy": accuracy(labels.astype(np.int64), scores),
        }
    cols = [c for c in pred.columns if c in tgt.columns]
    if not cols:
        raise DataError(f"{pred_path} and {target_path} share no label column")
    raw = tgt[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    blank = (
        tgt[cols].isna().to_numpy()
        | (tgt[cols].astype(str).apply(lambda c: c.str.strip()) == "").to_numpy()
    )
    bad = ~blank & ~np.isin(raw, (0.0, 1.0))
    if bad.any():
        raise _cell_error(target_path, tgt, bad, cols, "is not a label 1, 0 or blank (ignored)")
    y_true = np.where(blank, np.nan, raw)
    y_score = _scores(pred_path, pred, cols)
    per = label_aucs(y_true, y_score)
    return {
        "task": "cls",
        "metric": "macro_auc",
        "n": len(tgt),
        "macro_auc": macro_auc(y_true, y_score, cols),
        "per_label_auc": {c: (None if np.isnan(a) else float(a)) for c, a in zip(cols, per)},
        "skipped_labels": [c for c, a in zip(cols, per) if np.isnan(a)],
    }


def _load_npz(path: Path):
    import numpy as np

    from ecamp.errors import DataError

    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # not a zip, truncated, a pickle: numpy raises many types
        raise DataError(
            f"{path}: cannot read as NPZ ({type(e).__name__}: {e}); write it with numpy.savez"
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an NPZ archive keyed by image id")
    return data


def _mask(data, path: Path, key: str, what: str):
    """Image ``key`` of an NPZ as a real-valued (H,W) array with finite values."""
    import numpy as np

    from ecamp.errors import DataError

    try:
        arr = np.asarray(data[key])
    except Exception as e:  # a damaged member, an object array (pickles are refused)
        raise DataError(f"{path}: image {key!r} cannot be read ({type(e).__name__}: {e})") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: image {key!r} holds {arr.dtype} values, not numbers")
    if arr.ndim not in (2, 3):
        raise DataError(f"{path}: image {key!r} has shape {arr.shape}; {what} must be (H, W)")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(
                f"{path}: image {key!r}: {int(bad.sum())} pixel(s) are NaN or inf (first at "
                f"{pos}); {what} must be finite (check the model's output)"
            )
    return arr


def evaluate_seg(
    pred_path: Path, target_path: Path, threshold: float = 0.5, reduction: str = "per_image"
) -> dict:
    """Dice over the images of the targets file: ``dice`` is the ``reduction`` one (per_image
    or global); ``dice_per_image`` and ``dice_global`` are both reported."""
    import numpy as np

    from ecamp.errors import DataError, UserError
    from ecamp.eval.metrics import dice_counts
    from ecamp.eval.tasks import dice_scores

    with _load_npz(pred_path) as pred, _load_npz(target_path) as tgt:
        _missing(list(tgt.files), set(pred.files), pred_path)
        inter, total = np.zeros(len(tgt.files)), np.zeros(len(tgt.files))
        for i, key in enumerate(tgt.files):  # one image at a time: sizes may differ
            p = _mask(pred, pred_path, key, "probabilities")
            t = _mask(tgt, target_path, key, "masks")
            try:
                a, b = dice_counts(p, t, threshold)
            except UserError as e:
                raise DataError(f"image {key!r}: {e}") from None
            inter[i], total[i] = a.sum(), b.sum()
        n = len(tgt.files)
    both = dice_scores(inter, total)
    return {
        "task": "seg",
        "metric": "dice",
        "reduction": reduction,
        "n": n,
        "threshold": threshold,
        "dice": both[f"dice_{reduction}"],
        **both,
    }


def _read_json(path: Path):
    from ecamp.errors import DataError

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({type(e).__name__})") from None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _boxes(value, path: Path, key: str, what: str):
    """``[[x1, y1, x2, y2], ...]`` as an (M,4) float32 array; a bad box is named."""
    import math

    import numpy as np

    from ecamp.errors import DataError

    where = f"{path}: image {key!r}"
    if not isinstance(value, list):
        raise DataError(
            f"{where}: {what} must be a list of [x1, y1, x2, y2] boxes, got {value!r}"[:400]
        )
    for j, b in enumerate(value):
        if not (isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b)):
            raise DataError(
                f"{where}: {what} box {j} {b!r} is not [x1, y1, x2, y2] (four numbers)"[:400]
            )
        x1, y1, x2, y2 = (float(v) for v in b)
        if not all(math.isfinite(v) and abs(v) < 1e30 for v in (x1, y1, x2, y2)):
            raise DataError(f"{where}: {what} box {j} {b!r} has a non-finite coordinate")
        if x2 < x1 or y2 < y1:
            raise DataError(
                f"{where}: {what} box {j} {b!r} has x2 < x1 or y2 < y1; boxes are "
                "[x1, y1, x2, y2] corners (convert [x, y, w, h] boxes first)"
            )
    return np.asarray(value, dtype=np.float32).reshape(-1, 4)


def _det_scores(value, n_boxes: int, path: Path, key: str):
    import math

    import numpy as np

    from ecamp.errors import DataError

    where = f"{path}: image {key!r}"
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise DataError(f"{where}: scores must be a list of numbers, got {value!r}"[:400])
    bad = [j for j, v in enumerate(value) if not math.isfinite(float(v))]
    if bad:
        raise DataError(f"{where}: score {bad[0]} is {value[bad[0]]!r}, not a finite number")
    if len(value) != n_boxes:
        raise DataError(f"{where}: {n_boxes} boxes but {len(value)} scores; give one per box")
    return np.asarray(value, dtype=np.float32)


def evaluate_det(pred_path: Path, target_path: Path, protocol: str = "mgca") -> dict:
    """mAP over IoU 0.40..0.75 with the chosen protocol."""
    from ecamp.errors import DataError
    from ecamp.eval.metrics import MGCA_IOU_THRESHOLDS, detection_map

    pred, tgt = _read_json(pred_path), _read_json(target_path)
    for obj, p in ((pred, pred_path), (tgt, target_path)):
        if not isinstance(obj, dict):
            raise DataError(f"{p}: detection files must be JSON objects keyed by image id")
    _missing(list(tgt), set(pred), pred_path)
    preds, gts = [], []
    for key, t in tgt.items():
        p = pred[key]
        if not isinstance(p, dict) or "boxes" not in p or "scores" not in p:
            raise DataError(f"{pred_path}: entry {key!r} needs 'boxes' and 'scores'")
        boxes = _boxes(p["boxes"], pred_path, key, "predicted")
        preds.append((boxes, _det_scores(p["scores"], len(boxes), pred_path, key)))
        if isinstance(t, dict):
            if "boxes" not in t:
                raise DataError(f"{target_path}: entry {key!r} needs 'boxes'")
            t = t["boxes"]
        gts.append(_boxes(t, target_path, key, "target"))
    value = detection_map(preds, gts, protocol=protocol, ids=list(tgt))
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
