"""MIMIC-CXR-JPG + reports folder layout -> pre-training manifest (on a tiny fake tree)."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
from PIL import Image

from ecamp.data.manifest import validate_pretrain
from ecamp.data.sources.mimic_cxr import FRONTAL_VIEWS, build_mimic_manifest, study_dir

# MIMIC reports wrap lines and leave blank lines holding one space
REPORT = (
    "                                 FINAL REPORT\n"
    " EXAMINATION:  CHEST (PA AND LAT)\n\n"
    " INDICATION:  ___F with cough\n\n"
    " FINDINGS:\n \n"
    " There is a small right pleural effusion.  No pneumothorax.  The heart size is\n"
    " normal.\n \n"
    " IMPRESSION:\n \n"
    " Small right effusion.\n"
)

# (subject, study, dicom, split, view)
ROWS = [
    ("10000032", "50414267", "d1", "train", "PA"),
    ("10000032", "50414267", "d2", "train", "LATERAL"),
    ("10000032", "53189527", "d3", "validate", "AP"),
    ("11000011", "51111111", "d4", "test", "PA"),  # report without any text: dropped
    ("12000022", "52222222", "d5", "train", "PA"),  # JPEG missing: dropped
]


def _tree(tmp_path):
    jpg, rep = tmp_path / "mimic-cxr-jpg", tmp_path / "mimic-cxr-reports"
    for subject, study, dicom, _, _ in ROWS:
        d = jpg / study_dir(subject, study)
        d.mkdir(parents=True, exist_ok=True)
        if dicom != "d5":
            Image.fromarray(np.zeros((30, 20), np.uint8)).save(d / f"{dicom}.jpg")
        r = rep / f"{study_dir(subject, study)}.txt"
        r.parent.mkdir(parents=True, exist_ok=True)
        r.write_text(
            "   \n"
            if study == "51111111"
            else REPORT.replace("small right", f"small right {study}")
        )
    split = pd.DataFrame(
        [(d, st, su, sp) for su, st, d, sp, _ in ROWS],
        columns=["dicom_id", "study_id", "subject_id", "split"],
    )
    meta = pd.DataFrame([(r[2], r[4]) for r in ROWS], columns=["dicom_id", "ViewPosition"])
    split_path = jpg / "mimic-cxr-2.0.0-split.csv.gz"
    with gzip.open(split_path, "wt") as f:
        split.to_csv(f, index=False)
    meta.to_csv(jpg / "mimic-cxr-2.0.0-metadata.csv", index=False)
    return jpg, rep, split_path, jpg / "mimic-cxr-2.0.0-metadata.csv"


def test_study_dir_layout():
    assert study_dir("10000032", "50414267") == "files/p10/p10000032/s50414267"
    assert study_dir(10000032, 50414267) == "files/p10/p10000032/s50414267"


def test_manifest_from_fake_tree(tmp_path):
    jpg, rep, split, meta = _tree(tmp_path)
    # every view by default, as the paper (all 377,110 images)
    assert build_mimic_manifest(jpg, rep, split, meta)["id"].tolist() == ["d1", "d2", "d3"]
    df = build_mimic_manifest(jpg, rep, split, meta, views=FRONTAL_VIEWS)
    assert df["id"].tolist() == ["d1", "d3"]  # lateral, empty report and missing JPEG dropped
    assert df["image"][0] == "files/p10/p10000032/s50414267/d1.jpg"
    assert df["split"].tolist() == ["train", "val"]
    assert df["study_id"].tolist() == ["50414267", "53189527"]
    report = df["report"][0]
    assert report.startswith("There is a small right 50414267 pleural effusion. No pneumothorax.")
    assert (
        report.endswith("Small right effusion.")
        and "INDICATION" not in report
        and "cough" not in report
    )
    assert "\n" not in report
    clean = validate_pretrain(df)
    assert (jpg / clean["image"][1]).is_file() and df.attrs["root"] == str(jpg.resolve())


def test_all_views_without_metadata(tmp_path):
    jpg, rep, split, _ = _tree(tmp_path)
    df = build_mimic_manifest(jpg, rep, split, views=None, check_images=False)
    assert df["id"].tolist() == ["d1", "d2", "d3", "d5"]
    assert "view" not in df.columns


def test_command_line_stage(tmp_path):
    import argparse

    from ecamp.data.manifest import load_pretrain_manifest
    from ecamp.data.sources import mimic_cxr as stage

    jpg, rep, split, meta = _tree(tmp_path)
    parser = argparse.ArgumentParser()
    stage.add_arguments(parser)
    out = tmp_path / "mimic.parquet"
    argv = [
        "--jpg-root",
        str(jpg),
        "--reports-root",
        str(rep),
        "--split",
        str(split),
        "--metadata",
        str(meta),
    ]
    assert stage.run(parser.parse_args([*argv, "-o", str(out)])) == 0
    assert load_pretrain_manifest(out)["id"].tolist() == ["d1", "d2", "d3"]
    assert stage.run(parser.parse_args([*argv, "--views", "PA,AP", "-o", str(out)])) == 0
    assert load_pretrain_manifest(out)["id"].tolist() == ["d1", "d3"]
