"""`ecamp export`: the encoder of a pre-training checkpoint round-trips to timm form."""

from __future__ import annotations

import json

import pytest
import torch

from ecamp.cli import main
from ecamp.config import model_config
from ecamp.errors import UserError
from ecamp.models.checkpoints import load_encoder
from ecamp.models.ecamp import ECAMPModel
from ecamp.train.checkpoint import CKPT_FORMAT, CheckpointDir
from ecamp.train.export import export, infer_arch, resolve_encoder


@pytest.fixture()
def pretrain_run(tmp_path):
    """A run folder holding one ECAMP training checkpoint (as the loop writes it)."""
    torch.manual_seed(1)
    model = ECAMPModel(model_config("tiny"))
    state = {
        "format": CKPT_FORMAT,
        "model": model.state_dict(),
        "step": 7,
        "epoch": 1,
        "config": {"model": {"embed_dim": 64, "num_heads": 4}},
    }
    CheckpointDir(tmp_path / "run" / "checkpoints").save(state, 7)
    return tmp_path / "run", model


def test_export_cli_round_trips_pretrain_checkpoint(pretrain_run, tmp_path, capsys):
    run, model = pretrain_run
    assert main(["export", str(run), "--output", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    meta = json.loads((tmp_path / "out" / "encoder.json").read_text())
    assert meta["source_kind"] == "checkpoint" and meta["timm_kwargs"]["num_heads"] == 4
    enc = load_encoder(printed["encoder"]).eval()
    want = model.encoder.state_dict()
    got = enc.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(
            enc.forward_features(x), model.encoder.eval().forward_features(x), atol=1e-5
        )


def test_export_from_checkpoint_file_and_plain_state_dict(pretrain_run, tmp_path):
    run, model = pretrain_run
    ckpt = CheckpointDir(run / "checkpoints").latest()
    path = export(str(ckpt), tmp_path / "a", img_size=128)
    assert load_encoder(path).pos_embed.shape[1] == 1 + 16 * 16
    # a bare timm-named state dict (as an ImageNet MAE file): heads from width / 64
    torch.save({"model": model.encoder.state_dict()}, tmp_path / "mae.pth")
    res = resolve_encoder(str(tmp_path / "mae.pth"))
    assert res.kind == "state_dict" and torch.equal(res.encoder.cls_token, model.encoder.cls_token)
    assert infer_arch(model.encoder.state_dict(), 4)["depth"] == 2


def test_bad_sources_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_encoder(str(tmp_path / "missing.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither an exported encoder"):
        resolve_encoder(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="timm model name"):
        resolve_encoder("not_a_model_name_xyz")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read: it is a text file"):
        resolve_encoder(str(tmp_path / "junk.pt"))
