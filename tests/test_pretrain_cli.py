"""`ecamp pretrain` as a user runs it: embedded default, outputs, resume, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ecamp.cli import main

FAST = [
    "data.synthetic_n=24",
    "train.batch_size=4",
    "train.progress=false",
    "train.tensorboard=false",
]


def test_embedded_default_trains_exports_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["pretrain", "--output", str(out), "train.max_steps=2", *FAST]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 2
    last = results["last"]
    for key in ("loss", "mim", "mlm", "sr"):
        assert torch.isfinite(torch.tensor(last[key])) and last[key] > 0, (key, last)
    # the total is the three named losses with the embedded default's weights (1, 1, 1)
    assert last["loss"] == pytest.approx(last["mim"] + last["mlm"] + last["sr"], rel=1e-4)
    assert (out / "config.yaml").is_file() and (out / "phantom" / "manifest.csv").is_file()

    from ecamp.models.checkpoints import load_encoder

    enc = load_encoder(out / "encoder")
    feats = enc.forward_features(torch.zeros(1, 3, 64, 64))
    assert feats.shape == (1, 1 + 64, 64)

    # a second run with a larger budget resumes at step 2 instead of starting over
    assert main(["pretrain", "--output", str(out), "train.max_steps=3", *FAST]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["steps"] == 3
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == sorted(set(steps)), "resumed run repeated or skipped logged steps"


def test_loss_weights_reach_the_logged_total(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["pretrain", "--output", str(out), "train.max_steps=1", *FAST]
    assert main([*argv, "model.loss_weights=[0.5,2.0,3.0]"]) == 0
    last = json.loads((out / "results.json").read_text())["last"]
    want = 0.5 * last["mim"] + 2.0 * last["mlm"] + 3.0 * last["sr"]
    assert last["loss"] == pytest.approx(want, rel=1e-4), last
    assert last["loss"] != pytest.approx(last["mim"] + last["mlm"] + last["sr"], rel=1e-2)


def test_bad_config_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "--output", str(tmp_path), "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "train.lrr" in err and "Traceback" not in err


def test_text_longer_than_the_decoder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pretrain", "--output", str(tmp_path), "text.max_length=128", *FAST]) == 2
    assert "max_text_len" in capsys.readouterr().err


def test_compiled_training_matches_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile=true trains the same model: with aten's random draws, the same losses."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    common = [*FAST, "train.max_steps=2", "train.precision=fp32"]
    last = {}
    for mode in ("false", "true"):
        out = tmp_path / f"compile_{mode}"
        assert main(["pretrain", "--output", str(out), f"train.compile={mode}", *common]) == 0
        last[mode] = json.loads((out / "results.json").read_text())["last"]
    torch._dynamo.reset()
    for key in ("loss", "mim", "mlm", "sr"):
        assert last["true"][key] == pytest.approx(last["false"][key], rel=1e-3), key


def test_initial_weights_follow_the_seed_not_what_ran_before(tmp_path: Path) -> None:
    """A pipeline stage skipped on resume must not change the next stage's initial weights."""
    runs = []
    for i in range(2):
        torch.rand(1000 + i)  # whatever ran before in this process
        out = tmp_path / f"run{i}"
        assert main(["pretrain", "--output", str(out), "train.max_steps=1", *FAST]) == 0
        runs.append(json.loads((out / "results.json").read_text())["last"])
    assert runs[0] == runs[1]


def test_init_from_an_mae_file_writes_its_report(tmp_path: Path) -> None:
    from ecamp.config import model_config
    from test_models_checkpoints import mae_checkpoint

    ckpt = tmp_path / "mae.pth"
    sd = mae_checkpoint(model_config("tiny"), depth=3, decoder=True, seed=1)
    torch.save({"model": sd}, ckpt)
    out = tmp_path / "run"
    assert (
        main(["pretrain", "--init", str(ckpt), "--output", str(out), "train.max_steps=1", *FAST])
        == 0
    )
    report = json.loads((out / "init_report.json").read_text())
    assert report["mapped"]["blocks.1.mlp.fc2.weight"] == "encoder.blocks.1.mlp.fc2.weight"
    assert set(report["ignored"]) == {k for k in sd if k.startswith("blocks.2.")}
    assert any(k.startswith("text.") for k in report["missing"])


@pytest.mark.parametrize(
    "config", ["configs/paper/pretrain_mimic.yaml", "configs/release/pretrain_mimic_release.yaml"]
)
def test_recipes_without_the_mae_file_stop_and_say_where_it_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str
) -> None:
    root = Path(__file__).resolve().parents[1]
    cfg = str(root / config)
    missing = str(tmp_path / "mae_pretrain_vit_base.pth")
    assert main(["pretrain", "-c", cfg, "--output", str(tmp_path / "r"), f"init={missing}"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "facebookresearch/mae" in err and "init: none" in err
    assert "mae_pretrain_vit_base.pth" in (root / config).read_text()


def test_init_none_is_random(tmp_path: Path) -> None:
    from ecamp.config import PretrainConfig
    from ecamp.train.pretrain import check_init

    assert check_init(PretrainConfig(init="none")) == ""
    assert check_init(PretrainConfig(init="")) == ""
