"""Encoder init for `ecamp finetune`: exported encoders load exactly; linear probe freezes."""

from __future__ import annotations

import torch

from ecamp.config import apply_overrides, from_dict, model_config, read_yaml
from ecamp.models.checkpoints import export_encoder
from ecamp.models.vit import MAEEncoder
from ecamp.train.finetune import (
    FinetuneConfig,
    build_encoder,
    build_model,
    embedded_config_path,
    finetune,
)


def _cfg(*overrides: str) -> FinetuneConfig:
    data = read_yaml(embedded_config_path("cls"))
    apply_overrides(data, list(overrides))
    return from_dict(FinetuneConfig, data)


def test_init_from_exported_encoder_gives_same_weights(tmp_path):
    torch.manual_seed(3)
    enc = MAEEncoder(model_config("tiny"))
    export_encoder(enc, tmp_path / "enc")
    cfg = _cfg(f"model.init={tmp_path / 'enc'}", "model.depth=7")  # architecture from the export
    res = build_encoder(cfg)
    assert res.kind == "exported" and cfg.model.depth == 2 and cfg.model.img_size == 64
    got, want = res.encoder.state_dict(), enc.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # the file itself works too, and a larger input resamples the position embedding
    cfg = _cfg(f"model.init={tmp_path / 'enc' / 'encoder.safetensors'}", "model.img_size=96")
    res = build_encoder(cfg)
    assert res.encoder.pos_embed.shape[1] == 1 + 12 * 12
    assert torch.equal(res.encoder.blocks[1].mlp.fc2.weight, enc.blocks[1].mlp.fc2.weight)


def test_random_init_uses_configured_architecture():
    cfg = _cfg()
    res = build_encoder(cfg)
    assert res.kind == "random" and len(res.encoder.blocks) == 2 and res.encoder.embed_dim == 64
    model = build_model(cfg, res.encoder, 6, True)
    out = model({"image": torch.randn(2, 3, 64, 64), "label": torch.ones(2, 6)})
    assert out["logits"].shape == (2, 6)


def test_linear_probe_leaves_encoder_unchanged(tmp_path, monkeypatch):
    import ecamp.train.finetune as ft

    initial: dict[str, torch.Tensor] = {}

    def recording_build_model(*args, **kwargs):  # keeps the weights training starts from
        model = build_model(*args, **kwargs)
        initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(ft, "build_model", recording_build_model)
    torch.manual_seed(4)
    enc = MAEEncoder(model_config("tiny"))
    export_encoder(enc, tmp_path / "enc")
    cfg = _cfg(
        f"model.init={tmp_path / 'enc'}",
        "model.linear_probe=true",
        "data.synthetic_n=96",
        "data.synthetic_size=64",
        "train.epochs=2",
        "train.batch_size=16",
        "train.optimizer=sgd",
        "train.momentum=0.8",
        "train.lr=3e-2",
    )
    res = finetune(cfg, tmp_path / "run")
    assert res["linear_probe"] and res["init_kind"] == "exported"
    saved = torch.load(res["checkpoint"], map_location="cpu", weights_only=True)
    state = saved["model"]
    for k, v in enc.state_dict().items():
        assert torch.equal(state["encoder." + k], v), k
    # the configured optimizer ran: SGD with momentum, no Adam moments
    groups = saved["optimizer"]["param_groups"]
    assert all(g["momentum"] == 0.8 and "betas" not in g for g in groups)
    assert all("momentum_buffer" in s for s in saved["optimizer"]["state"].values())
    # ... while the head did learn: every head weight moved from where training started
    assert res["steps"] > 0
    head = [k for k in state if not k.startswith("encoder.")]
    assert head and set(state) == set(initial)
    for k in head:
        if state[k].is_floating_point():
            assert not torch.equal(state[k], initial[k]), f"head weight {k} did not change"
    for k in state:
        if k.startswith("encoder."):
            assert torch.equal(state[k], initial[k]), k
