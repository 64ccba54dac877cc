"""A micro but real `ecamp run`: every ECAMP stage adapter (data, distill, attention, pretrain,
the eight downstream runs, report) on a 160-image phantom world, in seconds.

The fake-stage tests in test_pipeline_stages.py check the engine; this one checks that the real
adapters hand each other files that the next stage can read, that every stage writes its record,
and that a second run recomputes nothing and prints the same table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ecamp.cli import main

MICRO = [
    "data.synthetic_n=160",
    "attention.train.epochs=1",
    "pretrain.train.epochs=1",
    "finetune.data.fraction=100",
    "finetune.runs.detection.data.fraction=100",
    "finetune.train.batch_size=16",
    "finetune.runs.linear_probe.train.epochs=1",
    "finetune.runs.finetune.train.epochs=1",
    "finetune.runs.segmentation.train.epochs=1",
    "finetune.runs.detection.train.epochs=1",
    "report.images=2",
]
STAGES = (
    ["data", "distill", "attention", "pretrain"]
    + [
        f"finetune.{run}.{enc}"
        for run in ("linear_probe", "finetune", "segmentation", "detection")
        for enc in ("pretrained", "random")
    ]
    + ["report"]
)


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("micro") / "run"
    assert main(["run", "--output", str(out), *MICRO]) == 0
    return out, (out / "results.json").read_text()


def _stage_dir(run: Path, name: str) -> Path:
    return run.joinpath(*name.split("."))


def test_every_stage_adapter_ran_and_recorded_its_outputs(micro_run: tuple[Path, str]) -> None:
    run, _ = micro_run
    for name in STAGES:
        record = json.loads((_stage_dir(run, name) / "stage.json").read_text())
        assert record["stage"] == name
        if name.startswith("finetune."):  # only the pre-trained runs read the encoder
            want = {"data", "pretrain"} if name.endswith(".pretrained") else {"data"}
            assert set(record["inputs"]) == want
    # the files each stage hands on exist and are what the next stage read
    assert (run / "attention" / "gloria" / "gloria.safetensors").is_file()
    assert any((run / "attention" / "guidance").iterdir())
    assert (run / "pretrain" / "encoder" / "encoder.safetensors").is_file()
    html = (run / "report" / "report.html").read_text()
    assert "<img" in html and "linear_probe" in html


def test_results_cover_every_task_and_encoder(micro_run: tuple[Path, str]) -> None:
    _, text = micro_run
    rows = json.loads(text)
    got = {(r["task"], r["metric"], r["encoder"]) for r in rows}
    want = {
        (task, metric, enc)
        for task, metrics in {
            "linear_probe": ["auc"],
            "finetune": ["auc"],
            "segmentation": ["dice", "dice_global"],
            "detection": ["map", "map_coco"],
        }.items()
        for metric in metrics
        for enc in ("pretrained", "random")
    }
    assert got == want
    for r in rows:
        if r["task"] in ("linear_probe", "finetune", "segmentation"):
            assert r["value"] is not None and 0.0 <= r["value"] <= 1.0 and math.isfinite(r["value"])


def test_a_second_run_recomputes_nothing_and_prints_the_same_results(
    micro_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run, text = micro_run
    stamps = {n: (_stage_dir(run, n) / "stage.json").stat().st_mtime_ns for n in STAGES}
    capsys.readouterr()
    assert main(["run", "--output", str(run), *MICRO]) == 0
    printed = capsys.readouterr().out
    assert (run / "results.json").read_text() == text
    assert {n: (_stage_dir(run, n) / "stage.json").stat().st_mtime_ns for n in STAGES} == stamps
    assert "linear_probe" in printed and "delta" in printed
