"""The run report: self-contained HTML with every figure, rendered by real headless Chromium."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ecamp.viz.curves import curve_columns, find_metric_files, read_metrics
from ecamp.viz.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROWS = [
    {"task": "linear_probe", "metric": "auc", "encoder": "pretrained", "value": 0.81},
    {"task": "linear_probe", "metric": "auc", "encoder": "random", "value": 0.62},
    {"task": "segmentation", "metric": "dice", "encoder": "pretrained", "value": 0.41},
    {"task": "segmentation", "metric": "dice", "encoder": "random", "value": 0.45},
    {"task": "detection", "metric": "map", "encoder": "random", "value": None},
]


def _fake_run(root: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A run folder with what the report reads: a phantom world, a tiny ECAMP checkpoint,
    metrics.csv files, a guidance export and finetune rows (seconds to build)."""
    import torch

    from ecamp.config import DataConfig, model_config, to_dict
    from ecamp.data.guidance import GuidanceWriter
    from ecamp.data.synthetic import make_phantom_world
    from ecamp.models.ecamp import ECAMPModel
    from ecamp.train.checkpoint import CheckpointDir

    run = root / "run"
    manifest = make_phantom_world(run / "data" / "phantom", n=6, size=128, seed=3)
    torch.manual_seed(0)
    mcfg = model_config("tiny")
    model = ECAMPModel(mcfg)
    pre = run / "pretrain"
    checkpoint = CheckpointDir(pre / "checkpoints").save(
        {
            "model": model.state_dict(),
            "config": {"model": to_dict(mcfg), "data": to_dict(DataConfig())},
        },
        step=3,
    )
    steps = np.arange(1, 21)
    pd.DataFrame(
        {
            "step": steps,
            "epoch": steps // 5,
            "lr": 1e-3,
            "loss": 12 - 0.3 * steps,
            "mim": 1 - 0.02 * steps,
            "mlm": 10 - 0.2 * steps,
        }
    ).to_csv(pre / "metrics.csv", index=False)
    # a stale backup: its curves must not appear
    (run / "pretrain.previous").mkdir()
    (run / "pretrain.previous" / "metrics.csv").write_text("step,loss\n1,5\n")

    df = pd.read_csv(manifest, dtype={"id": str})
    guidance = run / "attention" / "guidance"
    writer = GuidanceWriter(
        guidance,
        {
            "size": 128,
            "window_grid": 8,
            "window_patches": 4,
            "pool": "all",
            "mentions": "positive",
            "manifest": str(manifest),
        },
    )
    yy, xx = np.mgrid[0:128, 0:128]
    maps = {
        k: np.exp(-((xx - 30 - 10 * i) ** 2 + (yy - 60) ** 2) / 200.0).astype(np.float32)
        for i, k in enumerate(df["id"])
    }
    rows = pd.DataFrame(
        {
            "id": df["id"],
            "shard": 0,
            "row": 1,
            "col": 1,
            "entities": "opacity",
            "sentence": "There is opacity in the right lower lobe.",
        }
    )
    writer.write_shard(0, maps, rows)
    writer.finish(1)
    pd.DataFrame({"step": [1, 2], "ratio": [1.1, 1.6]}).to_csv(
        run / "attention" / "eval.csv", index=False
    )

    ft = run / "finetune" / "linear_probe" / "pretrained"
    ft.mkdir(parents=True)
    pd.DataFrame({"step": [5, 10], "loss": [0.7, 0.5]}).to_csv(ft / "metrics.csv", index=False)
    inputs = {
        "data": {"manifest": str(manifest), "image_root": str(manifest.parent)},
        "attention": {"guidance": str(guidance), "manifest": str(manifest)},
        "pretrain": {
            "checkpoints": str(pre / "checkpoints"),
            "checkpoint": str(checkpoint),
            "manifest": str(manifest),
            "image_root": "",
        },
        "finetune.linear_probe.pretrained": {"rows": ROWS[:1]},
        "finetune.linear_probe.random": {"rows": ROWS[1:2]},
        "finetune.segmentation.pretrained": {"rows": ROWS[2:3]},
        "finetune.segmentation.random": {"rows": ROWS[3:4]},
        "finetune.detection.random": {"rows": ROWS[4:]},
    }
    for name in ("data", "pretrain"):
        (run / name / "stage.json").write_text(
            json.dumps(
                {
                    "stage": name,
                    "fingerprint": "f" * 16,
                    "seconds": 1.5,
                    "config": {"train": {"epochs": 2}},
                }
            )
        )
    return run, inputs


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, inputs = _fake_run(tmp_path_factory.mktemp("report"))
    return build_report(
        run,
        run / "report",
        inputs,
        {"name": "test run <pipeline>", "pretrain": {"base": "x"}},
        n_images=3,
    )


def test_report_is_self_contained_with_every_section(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert "<title>test run &lt;pipeline&gt;</title>" in text  # config text is escaped
    for section in (
        "Downstream results",
        "Training curves",
        "GLoRIA attention overlays",
        "MSCF attention after pre-training (the paper's Figure 4)",
        "reconstruction",
        "Resolved configs",
    ):
        assert section in text
    assert "not drawn" not in text, re.findall(r'class="note">([^<]*)', text)
    # every image inline; nothing fetched from disk or network
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(?!data:)', text)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # the table marks the winner and the loser against the baseline
    assert "+0.1900" in text and "-0.0400" in text
    figures = sorted(p.name for p in (report.parent / "figures").glob("*.png"))
    assert {
        "results.png",
        "reconstructions.png",
        "attention.png",
        "mscf_attention.png",
        "curves_pretrain_metrics.png",
    } <= set(figures)
    assert not any("previous" in f for f in figures)
    mscf = json.loads((report.parent / "figures" / "mscf_attention.json").read_text())
    assert mscf["n"] > 0 and f"ratio {mscf['ratio']:.2f}" in text
    assert "curves_finetune_linear_probe_pretrained_metrics.png" in figures
    assert (
        "<details><summary>finetune: 1 curve files</summary>" in text
    )  # sub-stage curves fold away


def test_reconstruction_figure_shows_four_columns(report: Path) -> None:
    from PIL import Image

    img = Image.open(report.parent / "figures" / "reconstructions.png")
    w, h = img.size
    # the figure is 2.4 in per panel wide and 2.5 in per image (+0.3) high at 100 dpi:
    # exactly 4 panels (original, masked, reconstruction, SR) x the 3 images asked for
    assert (w, h) == (4 * 240, 3 * 250 + 30)
    # not a blank canvas: the panels hold images, not only white
    gray = np.asarray(img.convert("L"), dtype=np.float64)
    for c in range(4):
        column = gray[30:, c * 240 + 40 : (c + 1) * 240 - 40]
        assert column.std() > 10, f"panel column {c} is blank"
    assert np.asarray(img.convert("L")).std() > 10  # not a blank canvas


def test_metric_files_and_curve_columns(tmp_path: Path) -> None:
    (tmp_path / "a.previous").mkdir()
    (tmp_path / "a.previous" / "metrics.csv").write_text("step,loss\n1,2\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.csv").write_text(
        "step,epoch,lr,loss,sr\n2,0,0.1,3.0,nan\n1,0,0.1,4.0,nan\n2,0,0.1,2.5,nan\n"
    )
    files = find_metric_files(tmp_path)
    assert files == [tmp_path / "b" / "metrics.csv"]
    df = read_metrics(files[0])
    assert df["step"].tolist() == [1, 2] and df["loss"].tolist() == [
        4.0,
        2.5,
    ]  # the later row of step 2 wins
    assert curve_columns(df) == ["loss"]  # bookkeeping and all-NaN columns get no panel


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)"
)
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    # a probe script appended to a copy: reports how many images the browser decoded
    probe = tmp_path / "probe.html"
    probe.write_text(
        report.read_text(encoding="utf-8").replace(
            "</body>",
            "<script>window.onload=()=>{const i=[...document.images];document.body.insertAdjacentHTML('beforeend',"
            "'<p id=probe>decoded '+i.filter(x=>x.complete&&x.naturalWidth>0).length+' of '+i.length+'</p>')}</script></body>",
        ),
        encoding="utf-8",
    )
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r"decoded (\d+) of (\d+)", dom.stdout)
    assert found, dom.stderr[-2000:]
    assert int(found.group(2)) >= 5 and found.group(1) == found.group(2)

    shot = report.parent / "screenshot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2000, 1200)
    assert (pixels < 200).mean() > 0.02  # text and figures, not an empty page


# --------------------------------------------------------------------------- over seeds

# (pre-trained, random) of each seed: linear probe wins on every seed, segmentation flips
SEED_VALUES = {0: ((0.70, 0.60), (0.45, 0.40)), 1: ((0.72, 0.60), (0.38, 0.40))}
SEED_VALUES[2] = ((0.69, 0.58), (0.44, 0.41))


def _seed_runs(root: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Three finished `ecamp run` folders (seconds): the real runner and CLI with fake stages
    whose values depend on data.synthetic_seed, as the phantom world's do."""
    from ecamp.cli import main
    from ecamp.pipeline import Stage
    from ecamp.pipeline import cli as pipeline_cli

    def fake_stages(cfg: dict[str, Any]) -> list[Stage]:
        (lp, seg) = SEED_VALUES[int(cfg["data"]["synthetic_seed"])]

        def stage(task: str, metric: str, enc: str, v: float) -> Stage:
            row = {"task": task, "metric": metric, "encoder": enc, "value": v}
            return Stage(f"finetune.{task}.{enc}", lambda ctx: {"rows": [row]})

        return [
            stage("linear_probe", "auc", "pretrained", lp[0]),
            stage("linear_probe", "auc", "random", lp[1]),
            stage("segmentation", "dice", "pretrained", seg[0]),
            stage("segmentation", "dice", "random", seg[1]),
        ]

    monkeypatch.setattr(pipeline_cli, "default_stages", fake_stages)
    runs = []
    for seed in SEED_VALUES:
        out = root / f"seed{seed}"
        assert main(["run", "--output", str(out), f"data.synthetic_seed={seed}"]) == 0
        runs.append(out)
    return runs


def test_seeds_report_shows_deltas_error_bars_and_which_effects_are_robust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecamp.cli import main

    runs = _seed_runs(tmp_path, monkeypatch)
    capsys.readouterr()
    out = tmp_path / "seeds_report"
    assert main(["report", "--runs", *map(str, runs), "--output", str(out)]) == 0
    sentence = (
        "Over 3 seeds, pre-training beats random init robustly (mean delta > 2 SE and every "
        "seed positive) on linear_probe auc; not on segmentation dice."
    )
    assert sentence in capsys.readouterr().out
    text = (out / "report.html").read_text(encoding="utf-8")
    assert html.escape(sentence) in text
    for seed in SEED_VALUES:
        assert f"<th>seed {seed}</th>" in text  # columns labelled by the runs' world seeds
    # linear probe: deltas 0.10, 0.12, 0.11 -> 0.1100 ± 0.0058; segmentation 0.05, -0.02, 0.03
    assert "+0.1000" in text and "+0.1200" in text and "+0.1100 ± 0.0058" in text
    assert "-0.0200" in text and "+0.0200 ± 0.0208" in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert not re.search(r'(href|src)="(?!data:)', text)  # self-contained
    summary = json.loads((out / "summary.json").read_text())
    assert summary["deltas"]["linear_probe/auc"]["robust"] is True
    assert summary["deltas"]["segmentation/dice"]["robust"] is False
    from PIL import Image

    img = np.asarray(Image.open(out / "figures" / "seeds.png").convert("L"))
    assert img.std() > 10  # bars and error bars, not a blank canvas


def test_seeds_report_of_one_seed_says_the_spread_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ecamp.viz.report import build_seeds_report

    runs = _seed_runs(tmp_path, monkeypatch)
    path = build_seeds_report({"0": runs[0]}, tmp_path / "one")
    assert "Only 1 seed was run" in path.read_text(encoding="utf-8")
