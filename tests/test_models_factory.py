"""The models-level factory and the one weights-only checkpoint reader."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
import torch
from safetensors.torch import save_file

from ecamp.config import apply_overrides, from_dict, model_config, read_yaml
from ecamp.errors import UserError
from ecamp.models import create_encoder, create_model, read_state_dict, strip_prefixes
from ecamp.models.checkpoints import export_encoder, read_checkpoint
from ecamp.models.ecamp import ECAMPModel
from ecamp.models.gloria import GLoRIA, gloria_config
from ecamp.models.heads import ClassificationModel, DetectionModel, SegmentationModel
from ecamp.models.vit import MAEEncoder
from ecamp.train.checkpoint import CKPT_FORMAT, CheckpointDir, load_checkpoint
from ecamp.train.finetune import FinetuneConfig, embedded_config_path


def _task_cfg(task: str) -> FinetuneConfig:
    data = read_yaml(embedded_config_path("cls"))
    apply_overrides(data, [f"task={task}"])
    return from_dict(FinetuneConfig, data)


# --------------------------------------------------------------------------- create_model


def test_create_model_builds_the_configured_class():
    assert type(create_model(model_config("tiny"))) is ECAMPModel
    gcfg = gloria_config("tiny", vocab_size=50)
    assert type(create_model(gcfg)) is GLoRIA
    enc = create_encoder("random", arch=None, img_size=64).encoder
    for task, cls in (
        ("cls", ClassificationModel),
        ("seg", SegmentationModel),
        ("det", DetectionModel),
    ):
        cfg = _task_cfg(task)
        cfg.model.img_size = 64
        model = create_model(cfg, encoder=enc, num_classes=3, multilabel=True)
        assert type(model) is cls, task


def test_create_model_refuses_unknown_config_and_missing_encoder():
    with pytest.raises(UserError, match="no model for"):
        create_model(object())
    with pytest.raises(UserError, match="needs an encoder"):
        create_model(_task_cfg("cls"))


def test_create_model_is_the_stage_builders():
    """Same seed, same weights as building the class directly (no extra RNG draws)."""
    cfg = model_config("tiny")
    torch.manual_seed(5)
    a = create_model(cfg).state_dict()
    torch.manual_seed(5)
    b = ECAMPModel(cfg).state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- create_encoder


def test_create_encoder_round_trips_an_exported_encoder(tmp_path):
    torch.manual_seed(3)
    enc = MAEEncoder(model_config("tiny"))
    export_encoder(enc, tmp_path / "enc")
    for source in (tmp_path / "enc", tmp_path / "enc" / "encoder.safetensors"):
        res = create_encoder(str(source))
        assert res.kind == "exported"
        got, want = res.encoder.state_dict(), enc.state_dict()
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), k


def test_create_encoder_random_and_empty_are_the_same():
    torch.manual_seed(0)
    a = create_encoder("random").encoder.state_dict()
    torch.manual_seed(0)
    b = create_encoder("").encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_create_encoder_from_training_checkpoint(tmp_path):
    torch.manual_seed(1)
    model = ECAMPModel(model_config("tiny"))
    state = {"format": CKPT_FORMAT, "model": model.state_dict(), "step": 3}
    CheckpointDir(tmp_path / "run" / "checkpoints").save(state, 3)
    res = create_encoder(str(tmp_path / "run"))
    assert res.kind == "checkpoint" and res.details["step"] == 3
    want = model.encoder.state_dict()
    got = res.encoder.state_dict()
    for k in want:
        assert torch.equal(got[k], want[k]), k


# --------------------------------------------------------------------------- the reader


@pytest.fixture()
def tensors():
    torch.manual_seed(2)
    return {"a.weight": torch.randn(3, 4), "b.bias": torch.randn(5)}


def _same(x, y):
    assert set(x) == set(y)
    for k in x:
        assert torch.equal(x[k], y[k]), k


def test_reader_gives_the_same_state_from_every_format(tmp_path, tensors):
    save_file(tensors, tmp_path / "w.safetensors")
    torch.save(tensors, tmp_path / "w.pt")
    torch.save({"model": tensors, "epoch": 1}, tmp_path / "w.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in tensors.items()}}, tmp_path / "w.bin")
    compiled = {"module._orig_mod." + k: v for k, v in tensors.items()}
    torch.save({"model": compiled}, tmp_path / "ddp_compiled.pt")
    for name in ("w.safetensors", "w.pt", "w.pth", "w.bin", "ddp_compiled.pt"):
        _same(read_state_dict(tmp_path / name), tensors)


def test_reader_reads_a_training_checkpoint_folder(tmp_path, tensors):
    state = {"format": CKPT_FORMAT, "model": tensors, "step": 4, "optimizer": {"lr": 0.1}}
    ckpts = CheckpointDir(tmp_path / "run" / "checkpoints")
    ckpts.save(state, 4)
    for source in (tmp_path / "run", tmp_path / "run" / "checkpoints", ckpts.step_path(4)):
        _same(read_state_dict(source), tensors)
    # the resume reader goes through the same file reader and keeps the rest of the state
    full = load_checkpoint(ckpts.step_path(4))
    assert full["optimizer"] == {"lr": 0.1} and full["step"] == 4
    assert read_checkpoint(ckpts.step_path(4))["step"] == 4


def test_reader_refuses_pickled_objects_and_non_state_dicts(tmp_path):
    torch.save({"model": {"w": torch.ones(1)}, "path": PurePosixPath("x")}, tmp_path / "obj.pt")
    with pytest.raises(UserError, match="stores Python objects"):
        read_state_dict(tmp_path / "obj.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds no state dict"):
        read_state_dict(tmp_path / "list.pt")
    with pytest.raises(UserError, match="neither an exported encoder"):
        read_state_dict(tmp_path)


def test_strip_prefixes():
    sd = {"module.x": 1, "_orig_mod.y": 2, "module._orig_mod.z": 3, "w": 4}
    assert strip_prefixes(sd) == {"x": 1, "y": 2, "z": 3, "w": 4}
