"""Leak-free (paper) and release splits, counted on the release lists shipped with ecamp."""

from __future__ import annotations

import json

import pytest

from ecamp.config import ConfigError, from_dict
from ecamp.data.split_modes import audit, overlaps, plan_splits, release_ids, tasks_of
from ecamp.errors import UserError

SETS = [(d, t) for d in ("chestxray14", "chexpert", "rsna", "covidx", "siim") for t in tasks_of(d)]


def test_release_mode_counts_the_shipped_leaks():
    che = audit("chexpert", fraction=1, mode="release")
    assert che["overlap_images"] == {"train&val": 0, "train&test": 0, "val&test": 234}
    assert che["overlap_patients"]["val&test"] == 200  # val_list is test_list
    s1 = audit("siim", fraction=1, mode="release")["overlap_images"]
    s10 = audit("siim", fraction=10, mode="release")["overlap_images"]
    assert s1 == {"train&val": 5, "train&test": 5, "val&test": 124}
    assert s10 == {"train&val": 55, "train&test": 49, "val&test": 124}
    assert audit("siim", fraction=10, mode="release")["sizes"] == {
        "train": 797,
        "val": 1898,
        "test": 1904,
    }
    for dataset, task in [("chestxray14", "cls"), ("covidx", "cls")] + [
        ("rsna", t) for t in ("cls", "seg", "det")
    ]:
        for fraction in (1, 10):
            got = audit(dataset, task, fraction, "release")["overlap_images"]
            assert set(got.values()) == {0}, (dataset, task, fraction, got)
    # ChestX-ray14's release split is patient-wise too
    assert set(audit("chestxray14", fraction=10, mode="release")["overlap_patients"].values()) == {
        0
    }


def test_release_mode_is_the_lists_as_shipped(caplog):
    for dataset, task in SETS:
        lists = release_ids(dataset, task)
        for fraction in (1, 10):
            plan = plan_splits(dataset, task, fraction, "release")
            assert plan.train == lists[f"train_{fraction}"]
            assert plan.val == lists["val"] and plan.test == lists["test"]
    with caplog.at_level("WARNING", logger="ecamp"):
        plan_splits("siim", "seg", 10, "release")
    assert "keeps 49 images in both train and test" in caplog.text


@pytest.mark.parametrize("dataset,task", SETS)
def test_paper_mode_has_no_overlap_and_keeps_the_test_list(dataset, task):
    lists = release_ids(dataset, task)
    for fraction in (1, 10, 100):
        res = audit(dataset, task, fraction)
        plan = plan_splits(dataset, task, fraction)
        assert plan.test == lists["test"]  # results stay comparable with the paper's
        assert all(v in (0, None) for v in res["overlap_images"].values()), res
        if res["overlap_patients"]:
            assert all(v in (0, None) for v in res["overlap_patients"].values()), res
        if fraction < 100:
            assert set(plan.train) <= set(lists[f"train_{fraction}"])
            assert res["sizes"]["train"] == len(plan.train) > 0


def test_paper_mode_sizes_on_the_shipped_lists():
    siim = audit("siim", fraction=10)
    assert siim["sizes"] == {"train": 797 - 104, "val": 1898 - 124, "test": 1904}
    assert audit("siim", fraction=1)["sizes"]["train"] == 80 - 10
    che = plan_splits("chexpert", "cls", 1, patient=lambda i: i.split("/")[1])
    assert len(che.val) == 5000 and not che.val_from_list
    patients = {i.split("/")[1] for i in che.val}
    assert not patients & {i.split("/")[1] for i in che.train + che.test}
    again = plan_splits("chexpert", "cls", 1, patient=lambda i: i.split("/")[1])
    other = plan_splits("chexpert", "cls", 1, patient=lambda i: i.split("/")[1], seed=1)
    assert che.val == again.val and che.val != other.val  # seeded
    # 10 %: the shipped lists leave fewer than 5,000 images outside train_10: said, not hidden
    ten = plan_splits("chexpert", "cls", 10, patient=lambda i: i.split("/")[1])
    assert 0 < len(ten.val) < 5000 and any("fewer than 5000" in n for n in ten.notes)


def test_chexpert_100_percent_trains_on_the_pool_minus_5000():
    """With the official training images (the paper's 223,414), val takes 5,000 of them and
    training the other 218,414, as the paper's split table says."""
    lists = release_ids("chexpert", "cls")
    known = list(dict.fromkeys(lists["train_1"] + lists["train_10"]))
    extra = [f"train/patient{90000 + k}/study1/view1_frontal.jpg" for k in range(223414)]
    pool = known + extra[: 223414 - len(known)]
    plan = plan_splits("chexpert", "cls", 100, pool=pool)  # no patient key: images are groups
    assert len(plan.val) == 5000 and len(plan.train) == 218414
    assert not set(plan.val) & set(plan.train) and not set(plan.val) & set(plan.test)
    # whole patients at a time: a patient of val never trains
    key = lambda i: i.split("/")[1]  # noqa: E731
    plan = plan_splits("chexpert", "cls", 100, pool=pool, patient=key)
    assert len(plan.val) == 5000
    assert not {key(i) for i in plan.val} & {key(i) for i in plan.train}


def test_paper_mode_drops_images_of_shared_patients():
    lists = release_ids("covidx", "cls")
    shared = {lists["test"][0], lists["val"][0], lists["train_1"][0], lists["train_1"][1]}
    plan = plan_splits("covidx", "cls", 1, patient=lambda i: "same" if i in shared else i)
    assert plan.val == lists["val"][1:]
    assert plan.train == lists["train_1"][2:]
    assert overlaps({"a": ["x", "y"], "b": ["y", "z"], "c": None}) == {
        "a&b": 1,
        "a&c": None,
        "b&c": None,
    }
    with pytest.raises(UserError, match="mode"):
        plan_splits("covidx", "cls", 1, "leaky")
    with pytest.raises(UserError, match="fraction"):
        plan_splits("covidx", "cls", 5)


def test_splits_command_prints_one_json_object(capsys):
    from ecamp.cli import main

    assert main(["splits", "--dataset", "siim", "--fraction", "10"]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert set(paper["overlap_images"].values()) == {0} and paper["mode"] == "paper"
    assert main(["splits", "--dataset", "chexpert", "--fraction", "1", "--mode", "release"]) == 0
    assert json.loads(capsys.readouterr().out)["overlap_images"]["val&test"] == 234


def test_finetune_split_mode_is_checked_at_load():
    from ecamp.train.finetune import FinetuneConfig

    assert from_dict(FinetuneConfig, {}).data.split_mode == "paper"
    assert from_dict(FinetuneConfig, {"data": {"split_mode": "release"}}).data.split_mode == (
        "release"
    )
    with pytest.raises(ConfigError, match="split_mode"):
        from_dict(FinetuneConfig, {"data": {"split_mode": "leaky"}})
    with pytest.raises(ConfigError, match="seg_dice"):
        from_dict(FinetuneConfig, {"seg_dice": "mean"})


def test_data_root_adds_the_training_pool_and_patients(test_data, tmp_path):
    """ChestX-ray14 at 100 %: the official images minus val and test, from a real subset."""
    (tmp_path / "images").symlink_to(test_data("nih_cxr14_subset/images"))
    (tmp_path / "Data_Entry_2017_v2020.csv.gz").symlink_to(
        test_data("label_tables/Data_Entry_2017_v2020.csv.gz")
    )
    res = audit("chestxray14", fraction=100, root=tmp_path)
    assert res["training_pool"] == "dataset's official training images"
    assert res["sizes"]["train"] > 0 and set(res["overlap_patients"].values()) == {0}


def test_covidx_patients_from_its_split_files(tmp_path):
    """A patient with an image in test and one in val: paper mode takes the val one out."""
    from PIL import Image

    from ecamp.data.downstream import get_source

    lists = release_ids("covidx", "cls")
    picks = {"train_1": lists["train_1"][:2], "val": lists["val"][:2], "test": lists["test"][:2]}
    lines: dict[str, list[str]] = {"train": [], "test": []}
    names = {0: "normal", 1: "pneumonia", 2: "COVID-19"}
    for split, ids in picks.items():
        for k, image_id in enumerate(ids):
            folder, fname = image_id.split("/", 1)
            patient = "shared" if (split, k) in {("val", 0), ("test", 0)} else f"{split}{k}"
            lines[folder].append(f"{patient} {fname} {names[0]} src")
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.new("L", (8, 8)).save(tmp_path / folder / fname)
    for folder, rows in lines.items():
        (tmp_path / f"{folder}_COVIDx9A.txt").write_text("\n".join(rows) + "\n")
    res = audit("covidx", fraction=1, mode="release", root=tmp_path)
    assert res["overlap_patients"]["val&test"] == 1 and res["overlap_images"]["val&test"] == 0
    assert set(audit("covidx", fraction=1, root=tmp_path)["overlap_patients"].values()) == {0}
    m = get_source("covidx", tmp_path).manifest("cls", fraction=1)
    assert m.loc[m["split"] == "val", "id"].tolist() == [picks["val"][1]]
    kept = get_source("covidx", tmp_path).manifest("cls", fraction=1, split_mode="release")
    assert sorted(kept.loc[kept["split"] == "val", "id"]) == sorted(picks["val"])
