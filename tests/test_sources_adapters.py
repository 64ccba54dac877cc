"""Dataset adapters on tiny fake trees with each dataset's official layout and file formats."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecamp.data import splits
from ecamp.data.downstream import get_source
from ecamp.data.sources.chestxray14 import CXR14_LABELS
from ecamp.data.sources.common import parse_fraction, rle_decode, rle_encode
from ecamp.errors import DataError, UserError


def write_png(path, size=(12, 10), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)


def write_dicom(path, size=(16, 12)):
    """A minimal valid DICOM file (MONOCHROME2, 12-bit) written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    arr = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) * 13 % 4096).astype(np.uint16)
    ds.set_pixel_data(arr, "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=True)


def first(task, dataset, split, n=2):
    return splits.read_split(task, dataset, split).iloc[:n]


# --------------------------------------------------------------------------- ChestX-ray14


@pytest.fixture
def cxr14_tree(tmp_path):
    rows = []
    for split in ("train_1", "val", "test"):
        for path in first("Classification", "ChestX-ray14", split)["path"]:
            rows.append((path.split("/")[-1], "Effusion|Mass"))
    rows += [(f"9999999{i}_000.png", "No Finding") for i in range(4)]
    df = pd.DataFrame(rows, columns=["Image Index", "Finding Labels"])
    df["Patient ID"] = range(len(df))
    df.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    for i, name in enumerate(df["Image Index"]):
        write_png(tmp_path / f"images_00{i % 2 + 1}" / "images" / name)
    return tmp_path


def test_chestxray14_release_and_random_splits(cxr14_tree):
    src = get_source("chestxray14", cxr14_tree)
    m = src.manifest("cls", fraction=1)
    assert list(m.columns) == ["id", "image", "split", *CXR14_LABELS]
    assert m["split"].value_counts().to_dict() == {"train": 2, "val": 2, "test": 2}
    listed = first("Classification", "ChestX-ray14", "train_1")
    row = m[m["id"] == listed["path"][0].split("/")[-1]].iloc[0]
    assert row[list(CXR14_LABELS)].tolist() == listed.iloc[0, 1:].astype(float).tolist()
    official = src.manifest("cls", fraction=1, labels_from="official")
    assert (
        official.loc[official["split"] == "train", ["Effusion", "Mass", "Hernia"]]
        .to_numpy()
        .tolist()
        == [[1, 1, 0]] * 2
    )
    full = src.manifest("cls", fraction=100)
    assert (full["split"] == "train").sum() == 6  # everything not in val / test
    r1 = src.manifest("cls", fraction=50, sampling="random", seed=3)
    r2 = src.manifest("cls", fraction=50, sampling="random", seed=3)
    assert r1.equals(r2) and (r1["split"] == "train").sum() == 3
    assert set(r1.loc[r1["split"] == "train", "id"]) <= set(
        full.loc[full["split"] == "train", "id"]
    )
    with pytest.raises(UserError):
        src.manifest("cls", fraction=5)
    with pytest.raises(DataError, match="not in"):
        get_source("chestxray14", cxr14_tree, missing="fail").manifest("cls", fraction=1)


def test_chestxray14_real_subset(test_data, tmp_path):
    (tmp_path / "images").symlink_to(test_data("nih_cxr14_subset/images"))
    (tmp_path / "Data_Entry_2017_v2020.csv.gz").symlink_to(
        test_data("label_tables/Data_Entry_2017_v2020.csv.gz")
    )
    src = get_source("chestxray14", tmp_path)
    assert src.manifest("cls", fraction=1)["split"].value_counts().to_dict() == {
        "test": 219,
        "val": 77,
        "train": 10,
    }
    m = src.manifest("cls", fraction=10)
    assert (m["split"] == "train").sum() == 86
    ref = pd.read_csv(test_data("nih_cxr14_subset/manifest.csv"), dtype=str).set_index(
        "nih_image_index"
    )
    ref = ref[ref["ecamp_cxr14_labels"].notna() & ~ref["ecamp_cxr14_labels"].str.contains(";")]
    listed = ref["ecamp_cxr14_labels"]
    both = pd.concat([m, src.manifest("cls", fraction=1)]).drop_duplicates("id")
    got = both.set_index("id")[list(CXR14_LABELS)].astype(int).astype(str).agg("".join, axis=1)
    assert len(listed) >= 380 and set(listed.index) <= set(got.index)
    assert (got.loc[listed.index] == listed).all()


# --------------------------------------------------------------------------- CheXpert


def _chexpert_tree(root, train_rows, valid_rows):
    cols = [
        "Path",
        "Sex",
        "Frontal/Lateral",
        "No Finding",
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Pleural Effusion",
    ]
    for name, rows in (("train.csv", train_rows), ("valid.csv", valid_rows)):
        pd.DataFrame(rows, columns=cols).to_csv(root / name, index=False)


def test_chexpert_uncertain_policies(tmp_path):
    tr = first("Classification", "CheXpert", "train_1")["path"].tolist()
    va = first("Classification", "CheXpert", "val")["path"].tolist()
    pre = "CheXpert-v1.0-small/"
    train_rows = [
        (pre + tr[0], "F", "Frontal", None, -1, -1, -1, -1, -1),
        (pre + tr[1], "M", "Frontal", 1, None, 0, 1, None, 0),
    ]
    valid_rows = [(pre + p, "F", "Frontal", 0, 1, 0, 0, 0, 1) for p in va]
    _chexpert_tree(tmp_path, train_rows, valid_rows)
    expect = {"release": [1, 0, 0, 1, 1], "ones": [1] * 5, "zeros": [0] * 5}
    for policy, row in expect.items():
        m = get_source("chexpert", tmp_path, uncertain=policy).manifest(
            "cls", fraction=1, labels_from="official"
        )
        got = m.set_index("id").loc[
            tr[0], ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
        ]
        assert got.tolist() == row, policy
        assert m.set_index("id").loc[tr[0], "image"] == str(tmp_path / tr[0])
    ign = get_source("chexpert", tmp_path, uncertain="ignore").manifest(
        "cls", fraction=100, split_mode="release"
    )
    assert (
        ign.set_index("id").loc[tr[0], "Atelectasis"]
        != ign.set_index("id").loc[tr[0], "Atelectasis"]
    )  # NaN
    assert ign.set_index("id").loc[tr[1], ["Atelectasis", "Consolidation"]].tolist() == [0.0, 1.0]
    assert sorted(ign["split"].unique()) == ["test", "train", "val"]  # release test = valid images
    # paper mode: val is drawn from the training images (up to 5,000: here both), not the test
    paper = get_source("chexpert", tmp_path).manifest("cls", fraction=100)
    assert sorted(paper.loc[paper["split"] == "val", "id"]) == sorted(tr)
    assert set(paper.loc[paper["split"] == "test", "id"]) == set(va)
    assert (
        get_source("chexpert", tmp_path).manifest("cls", test_split="test_600")["split"] == "test"
    ).sum() == 0
    with pytest.raises(UserError):
        get_source("chexpert", tmp_path, uncertain="maybe")


def test_chexpert_release_policy_reproduces_release_lists(test_data, tmp_path):
    table = pd.read_csv(test_data("label_tables/chexpert_train.csv.gz"))
    listed = splits.read_split("Classification", "CheXpert", "train_list_10".replace("_list", ""))
    rel = table["Path"].str.split("/", n=1).str[1]
    table[rel.isin(set(listed["path"]))].to_csv(tmp_path / "train.csv", index=False)
    table.iloc[:0].to_csv(tmp_path / "valid.csv", index=False)
    m = (
        get_source("chexpert", tmp_path)
        .manifest("cls", fraction=10, labels_from="official")
        .set_index("id")
    )
    want = listed.set_index("path").iloc[:, :5].to_numpy(dtype=float)
    got = m.loc[
        listed["path"],
        ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"],
    ].to_numpy()
    assert (got == want).all()


# --------------------------------------------------------------------------- RSNA


@pytest.fixture
def rsna_tree(tmp_path):
    rows = []
    for split in ("train_1", "val", "test"):
        for path, bbox in first("Detection", "RSNA", split, 3)[["image_path", "bbox"]].itertuples(
            index=False
        ):
            pid = path.split("/")[-1][:-4]
            boxes = [b for b in json.loads(bbox) if b[2] > b[0]]
            rows += [(pid, b[0], b[1], b[2] - b[0], b[3] - b[1], 1) for b in boxes] or [
                (pid, None, None, None, None, 0)
            ]
    rows.append(("extra-pid", 10.0, 20.0, 30.0, 40.0, 1))
    rows.append(("extra-pid", 50.0, 60.0, 5.0, 5.0, 1))
    pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        tmp_path / "stage_2_train_labels.csv", index=False
    )
    for pid in {r[0] for r in rows}:
        write_dicom(tmp_path / "stage_2_train_images" / f"{pid}.dcm")
    for path in first("Classification", "RSNA", "test")["path"]:
        write_dicom(tmp_path / "stage_2_test_images" / f"{path.split('/')[-1][:-4]}.dcm")
    return tmp_path


def test_rsna_detection_boxes_and_classes(rsna_tree):
    src = get_source("rsna", rsna_tree)
    det = src.manifest("det", fraction=1, labels_from="official").set_index("id")
    assert det["split"].value_counts().to_dict() == {"train": 3, "val": 3, "test": 3}
    listed = first("Detection", "RSNA", "test", 3)
    for path, bbox in listed[["image_path", "bbox"]].itertuples(index=False):
        want = [b for b in json.loads(bbox) if b[2] > b[0]]
        assert json.loads(det.loc[path.split("/")[-1][:-4], "boxes"]) == want
        assert det.loc[path.split("/")[-1][:-4], "image"].endswith(".dcm")
    table = src.table("det").set_index("id")
    assert json.loads(table.loc["extra-pid", "boxes"]) == [[10, 20, 40, 60], [50, 60, 55, 65]]
    full = src.manifest("det", fraction=100, labels_from="official")
    assert "extra-pid" not in set(full["id"])  # the release's full train list decides
    cls = src.manifest("cls", fraction=100)
    assert cls.loc[cls["split"] == "test", "Pneumonia"].notna().all()  # labels from the list
    assert (cls["split"] == "test").sum() == 2  # stage-2 test DICOMs found
    assert src.label_columns("seg") == ["boxes"]


def test_rsna_real_label_table(test_data, tmp_path):
    (tmp_path / "stage_2_train_labels.csv.zip").symlink_to(
        test_data("label_tables/kaggle_stage_2_train_labels.csv.zip")
    )
    listed = first("Detection", "RSNA", "test", 20)
    for path in listed["image_path"]:
        (tmp_path / "stage_2_train_images").mkdir(exist_ok=True)
        (tmp_path / "stage_2_train_images" / f"{path.split('/')[-1][:-4]}.dcm").touch()
    table = get_source("rsna", tmp_path).table("det").set_index("id")
    for path, bbox in listed[["image_path", "bbox"]].itertuples(index=False):
        want = [b for b in json.loads(bbox) if b[2] > b[0]]
        assert json.loads(table.loc[path.split("/")[-1][:-4], "boxes"]) == want


# --------------------------------------------------------------------------- COVIDx


def test_covidx_split_files(tmp_path):
    lines = {"train": [], "test": []}
    names = {0: "normal", 1: "pneumonia", 2: "COVID-19"}
    for split in ("train_1", "val", "test"):
        for path, label in first("Classification", "COVIDx", split, 3).itertuples(index=False):
            folder, fname = path.split("/", 1)
            # patient ids unique across both files: a shared one would leave paper-mode splits
            lines[folder].append(f"{folder}{len(lines[folder])} {fname} {names[label]} src")
            write_png(tmp_path / folder / fname)
    lines["train"].append("px extra.png Pneumonia rsna")
    write_png(tmp_path / "train" / "extra.png")
    (tmp_path / "train_COVIDx9A.txt").write_text("\n".join(lines["train"]) + "\n")
    (tmp_path / "test_COVIDx9A.txt").write_text("\n".join(lines["test"]) + "\n")
    src = get_source("covidx", tmp_path)
    m = src.manifest("cls", fraction=1, labels_from="official")
    assert list(m.columns) == ["id", "image", "split", "label"]
    listed = pd.concat(
        [first("Classification", "COVIDx", s, 3) for s in ("train_1", "val", "test")]
    )
    assert m.set_index("id").loc[listed["path"], "label"].tolist() == listed["label_0"].tolist()
    full = src.manifest("cls", fraction=100, labels_from="official").set_index("id")
    assert "train/extra.png" not in full.index  # the release's full train list decides
    rnd = src.manifest("cls", fraction=100, sampling="random", labels_from="official").set_index(
        "id"
    )
    assert "train/extra.png" not in rnd.index
    (tmp_path / "train_COVIDx9A.txt").write_text("p0 extra.png maybe src\n")
    with pytest.raises(DataError, match="maybe"):
        src.manifest("cls")


# --------------------------------------------------------------------------- SIIM


def test_siim_rle_rows_and_layout(tmp_path):
    rows = []
    for split in ("train_1", "val", "test"):
        lst = splits.read_split("Segmentation", "SIIM", split)
        multi = lst[lst["ImageId"].duplicated(keep=False)]["ImageId"].iloc[:1].tolist()
        ids = multi + lst["ImageId"].drop_duplicates().iloc[:2].tolist()
        rows.append(lst[lst["ImageId"].isin(ids)])
    rle = pd.concat(rows).drop_duplicates().rename(columns={"EncodedPixels": " EncodedPixels"})
    rle.to_csv(tmp_path / "train-rle.csv", index=False)
    for i, image_id in enumerate(rle["ImageId"].unique()):
        write_dicom(
            tmp_path / "dicom-images-train" / f"study{i}" / f"series{i}" / f"{image_id}.dcm"
        )
    m = get_source("siim", tmp_path).manifest("seg", fraction=1)
    assert list(m.columns) == ["id", "image", "split", "rle"]
    both = rle.groupby("ImageId")[" EncodedPixels"].agg(
        lambda s: "|".join(x.strip() for x in s if x.strip() != "-1")
    )
    assert m.set_index("id")["rle"].to_dict() == both.loc[m["id"]].to_dict()
    some = m[m["rle"].str.contains("|", regex=False)]
    assert len(some)  # multi-region images joined
    mask = rle_decode(some["rle"].iloc[0], 1024, 1024)
    parts = [rle_decode(p, 1024, 1024) for p in some["rle"].iloc[0].split("|")]
    assert (mask == np.logical_or.reduce(parts)).all()


# --------------------------------------------------------------------------- RLE


def test_rle_column_major_relative_offsets():
    # 4x3 image (H=3, W=4), column-major pixel order; runs: pixels 1-2, then 2 later -> 5
    mask = rle_decode("1 2 2 1", height=3, width=4)
    flat = np.zeros(12, bool)
    flat[[1, 2, 5]] = True
    assert (mask == flat.reshape(4, 3).T).all()
    assert mask[1, 0] and mask[2, 0] and mask[2, 1]
    assert rle_encode(mask) == "1 2 2 1"
    assert not rle_decode("-1", 3, 4).any() and rle_encode(np.zeros((3, 4))) == "-1"
    with pytest.raises(DataError):
        rle_decode("10 5", 3, 4)


def test_rle_roundtrip_on_real_siim_rows(test_data):
    df = pd.read_csv(test_data("label_tables/siim-pneumothorax-train-rle.csv.gz"))
    df.columns = [c.strip() for c in df.columns]
    single = df[~df["ImageId"].duplicated(keep=False)]
    pos = single[single["EncodedPixels"].str.strip() != "-1"].iloc[:20]
    for rle in pos["EncodedPixels"]:
        mask = rle_decode(rle, 1024, 1024)
        assert 0 < mask.sum() < 1024 * 1024 / 4
        assert rle_encode(mask) == rle.strip()


def test_parse_fraction():
    assert parse_fraction("10") == (10.0, "release")
    assert parse_fraction(1) == (1.0, "release")
    assert parse_fraction("random:2.5") == (2.5, "random")
    with pytest.raises(UserError):
        parse_fraction("some:10")
    with pytest.raises(UserError):
        parse_fraction("ten")


def test_release_split_lists_ship_with_provenance():
    from importlib import resources

    notice = resources.files("ecamp").joinpath("resources", "splits", "PROVENANCE.md").read_text()
    assert "ToniChopp/ECAMP" in notice and "MIT License" in notice and "David Wang" in notice
    cxr = splits.read_split("Classification", "ChestX-ray14", "train_1")
    assert cxr.shape == (785, 15) and set(cxr.iloc[:, 1:].stack()) <= {0, 1}
    assert splits.available("Classification", "CheXpert") == [
        "train_1",
        "train_10",
        "val",
        "test",
        "test_600",
    ]
    assert set(splits.read_split("Classification", "COVIDx", "test")["label_0"]) == {0, 1, 2}
    det = splits.read_text("Detection", "RSNA", "test")
    assert det == splits.read_text("Segmentation", "RSNA", "test") and det.startswith(
        "image_path,bbox\n"
    )
    assert splits.read_split("Segmentation", "SIIM", "train") is None
    with pytest.raises(UserError):
        splits.read_split("Classification", "MIMIC", "val")


def test_the_sources_say_what_finetune_special_cases():
    """Fine-tuning asks the source, not its name: only the phantom world is drawn by ecamp
    (no release lists) and lets data.labels pick the classes seg / det target."""
    from ecamp.data.downstream import SOURCES

    assert {n for n, c in SOURCES.items() if c.generated} == {"phantom"}
    assert {n for n, c in SOURCES.items() if c.picks_target_classes} == {"phantom"}
