"""Quality of the `rules` distillation backend against the IU X-ray NegBio gold labels.

Scores the backend's positive findings (uncertain counted once as positive, once as
negative) against the 14 gold findings, per finding and micro-averaged, on a tuning part
and a held-out part of the reports (split by a fixed hash of the uid, so the rules were
never adjusted on the held-out part).  Prints one JSON object.

    python benchmarks/distill_quality.py [--csv PATH] [--split all|tune|heldout]

PATH defaults to $ECAMP_TEST_DATA/iu_xray/iu_xray_reports_dev.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from pathlib import Path

import pandas as pd

from ecamp.distill.rules import distill_text

# gold column -> entity (the mapping: Infiltration = infiltrate,
# Pleural_Thickening = thickening)
GOLD = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Effusion": "effusion",
    "Infiltration": "infiltrate",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Emphysema": "emphysema",
    "Fibrosis": "fibrosis",
    "Pleural_Thickening": "thickening",
    "Hernia": "hernia",
}
HELDOUT_MOD = 5  # crc32(uid) % 5 == 0 -> held out (20 %)


def split_of(uid: str) -> str:
    """'heldout' for a fixed fifth of the uids, else 'tune'."""
    return "heldout" if zlib.crc32(uid.encode()) % HELDOUT_MOD == 0 else "tune"


def predict(text: str) -> dict[str, set[str]]:
    """Entities per status (positive / uncertain / negative) of one report."""
    out: dict[str, set[str]] = {"positive": set(), "uncertain": set(), "negative": set()}
    for f in distill_text(text):
        # NegBio's Emphysema is the lung disease, not air in the soft tissues
        if f.entity == "emphysema" and "subcutaneous" in f.sentence:
            continue
        out[f.status].add(f.entity)
    return out


def prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(f, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "support": tp + fn,
    }


def score(rows: pd.DataFrame, preds: list[dict[str, set[str]]], uncertain_positive: bool) -> dict:
    per: dict[str, dict] = {}
    tot = [0, 0, 0]
    tot13 = [0, 0, 0]
    for name, ent in GOLD.items():
        gold = rows[f"gold_{name}"].to_numpy() == 1
        tp = fp = fn = 0
        for g, p in zip(gold, preds):
            pos = ent in p["positive"] or (uncertain_positive and ent in p["uncertain"])
            tp += int(g and pos)
            fp += int(pos and not g)
            fn += int(g and not pos)
        per[name] = prf(tp, fp, fn)
        for acc in (tot, tot13) if name != "Hernia" else (tot,):
            acc[0] += tp
            acc[1] += fp
            acc[2] += fn
    return {"micro": prf(*tot), "micro_without_hernia": prf(*tot13), "per_finding": per}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", help="IU X-ray reports CSV with gold_* columns")
    ap.add_argument(
        "--split",
        choices=["all", "tune", "heldout"],
        default=None,
        help="score one part only (default: all three)",
    )
    ap.add_argument(
        "--errors",
        type=int,
        default=0,
        metavar="N",
        help="print N misclassified reports per finding to stderr",
    )
    args = ap.parse_args(argv)
    path = args.csv or os.path.join(
        os.environ.get("ECAMP_TEST_DATA", ""), "iu_xray", "iu_xray_reports_dev.csv"
    )
    if not Path(path).is_file():
        print(f"no IU X-ray CSV at {path!r}: pass --csv or set ECAMP_TEST_DATA", file=sys.stderr)
        return 2
    df = pd.read_csv(path)
    df = df[df["has_negbio_gold"] == 1].reset_index(drop=True)
    text = (df["findings"].fillna("") + " " + df["impression"].fillna("")).str.strip()
    preds = [predict(t) for t in text]
    df["_split"] = [split_of(u) for u in df["uid"]]
    result: dict = {
        "file": str(path),
        "reports": len(df),
        "heldout_rule": f"crc32(uid) % {HELDOUT_MOD} == 0",
    }
    parts = [args.split] if args.split else ["all", "tune", "heldout"]
    for part in parts:
        idx = df.index if part == "all" else df.index[df["_split"] == part]
        rows = df.loc[idx]
        sub = [preds[i] for i in idx]
        result[part] = {
            "reports": len(rows),
            "uncertain_as_positive": score(rows, sub, True),
            "uncertain_as_negative": score(rows, sub, False),
        }
    if args.errors:
        for name, ent in GOLD.items():
            shown = 0
            for i in df.index[df["_split"] == "tune"]:
                g = df.at[i, f"gold_{name}"] == 1
                p = ent in preds[i]["positive"] or ent in preds[i]["uncertain"]
                if g != p and shown < args.errors:
                    shown += 1
                    kind = "FN" if g else "FP"
                    print(f"[{name} {kind}] {df.at[i, 'uid']}: {text[i]}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
