"""Checkpoint loading (ImageNet init, the authors' release) and timm export."""

from __future__ import annotations

import argparse
import ast
import dataclasses

import pytest
import timm
import torch

from ecamp.config import model_config
from ecamp.errors import UserError
from ecamp.models.checkpoints import (
    export_encoder,
    init_encoder,
    load_encoder,
    load_release_checkpoint,
    load_release_encoder,
    map_release_state_dict,
    read_state_dict,
    release_target,
)
from ecamp.models.ecamp import ECAMPModel
from ecamp.models.vit import MAEEncoder


@pytest.fixture(scope="module")
def release_keys(shared_reference) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of the authors' released checkpoint."""
    tsv = shared_reference("release_state_dict_keys.tsv")
    rows = []
    for line in tsv.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            rows.append((key, tuple(ast.literal_eval(shape))))
    return rows


def fake_release_state(rows) -> dict[str, torch.Tensor]:
    # one distinct constant per key: cheap at 183M values, and a mix-up shows as a wrong value
    sd = {k: torch.full(s, float(i)) for i, (k, s) in enumerate(rows)}
    # the release stores its prediction bias twice (one tied tensor)
    sd["bert_encoder.model.cls.predictions.decoder.bias"] = sd[
        "bert_encoder.model.cls.predictions.bias"
    ].clone()
    return sd


def test_every_release_key_has_a_rule(release_keys):
    rows = release_keys
    assert len(rows) == 350
    targets = {}
    for key, _ in rows:
        target, _rule = release_target(key)  # raises KeyError on a key without a rule
        targets[key] = target
    assert sum(t is None for t in targets.values()) == 2  # the unused BERT pooler


@pytest.fixture(scope="module")
def release_model_and_state(release_keys):
    rows = release_keys
    torch.manual_seed(0)
    return ECAMPModel(model_config("release")), fake_release_state(rows), rows


def test_release_checkpoint_fills_every_tensor(release_model_and_state):
    model, sd, rows = release_model_and_state
    report = load_release_checkpoint(model, sd)
    assert len(report.mapped) + len(report.dropped) + len(report.tied) == len(rows)
    own = model.state_dict()
    for src, dst in report.mapped.items():
        assert torch.equal(own[dst], sd[src]), (src, dst)
    assert report.mapped["bert_mlp.weight"] == "vision_proj.weight"
    assert report.mapped["blocks.11.attn.qkv.weight"] == "encoder.blocks.11.attn.qkv.weight"
    assert (
        report.mapped["bert_encoder.model.bert.context_fusion_layer.gap_mlp.weight"]
        == "fusion.gap_mlp.weight"
    )
    # its encoder alone, in a plain timm ViT, holds the model's encoder tensors
    vit_sd = load_release_encoder(sd).state_dict()
    enc_sd = model.encoder.state_dict()
    assert set(vit_sd) == set(enc_sd)
    assert all(torch.equal(vit_sd[k], enc_sd[k]) for k in enc_sd)


def test_release_mapping_fails_loudly(release_model_and_state):
    model, sd, _ = release_model_and_state
    own = model.state_dict()
    with pytest.raises(UserError, match="no place"):
        map_release_state_dict({**sd, "extra.weight": torch.zeros(1)}, own)
    with pytest.raises(UserError, match="shape"):
        map_release_state_dict({**sd, "norm.weight": torch.zeros(5)}, own)
    missing = dict(sd)
    del missing["decoder_pred.bias"]
    with pytest.raises(UserError, match="decoder.decoder_pred.bias"):
        map_release_state_dict(missing, own)
    untied = {**sd, "bert_encoder.model.cls.predictions.decoder.bias": torch.zeros(30000)}
    with pytest.raises(UserError, match="tied"):
        map_release_state_dict(untied, own)
    with pytest.raises(UserError):  # a paper-preset model (8 layers) cannot hold it
        map_release_state_dict(sd, {k: v for k, v in own.items() if ".blocks.11." not in k})


def test_export_loads_in_timm_with_same_features(tmp_path):
    cfg = model_config("tiny")
    model = ECAMPModel(cfg).eval()
    path = export_encoder(model, tmp_path, extra={"mean": 0.4721})
    assert path.name == "encoder.safetensors" and (tmp_path / "encoder.json").is_file()
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    vit = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=0,
        checkpoint_path=str(path),
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
    ).eval()
    again = load_encoder(tmp_path).eval()
    with torch.no_grad():
        ref = model.encoder.forward_features(x)
        assert torch.allclose(vit.forward_features(x), ref, atol=1e-6)
        assert torch.allclose(again.forward_features(x), ref, atol=1e-6)


def test_init_encoder_from_imagenet_style_checkpoints(tmp_path):
    cfg = model_config("tiny")
    src = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=10,
        img_size=32,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
    )
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd["decoder_embed.weight"] = torch.zeros(3, 3)
    # MAE-style files keep their argparse arguments beside the weights
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-4, data="x")}, tmp_path / "mae.pth")
    enc = MAEEncoder(cfg)
    pos_before = enc.pos_embed.detach().clone()
    report = init_encoder(enc, tmp_path / "mae.pth")
    assert torch.equal(enc.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert torch.equal(enc.pos_embed, pos_before)  # fixed sin-cos kept by default
    assert set(report.unexpected) == {"head.weight", "head.bias", "decoder_embed.weight"}
    assert report.skipped == ["pos_embed"] and not report.missing
    # the 4x4 grid is resampled to the encoder's 8x8 grid on request
    from safetensors.torch import save_file

    save_file({k[7:]: v.contiguous() for k, v in sd.items()}, str(tmp_path / "vit.safetensors"))
    report = init_encoder(enc, tmp_path / "vit.safetensors", load_pos_embed=True)
    assert report.resized == ["pos_embed"] and enc.pos_embed.shape == pos_before.shape
    big = dataclasses.replace(cfg, embed_dim=96, num_heads=4)
    with pytest.raises(UserError, match="shape"):
        init_encoder(MAEEncoder(big), tmp_path / "vit.safetensors")


def test_read_state_dict_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_state_dict(tmp_path / "none.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read: it is a text file"):
        read_state_dict(tmp_path / "bad.pth")
    torch.save({"epoch": 1}, tmp_path / "nostate.pth")
    with pytest.raises(UserError, match="no state dict"):
        read_state_dict(tmp_path / "nostate.pth")


# --------------------------------------------------------------------------- ImageNet MAE layout


def mae_checkpoint(cfg, depth: int, decoder: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the official MAE layout (timm-style names, facebookresearch/mae
    models_mae.py), random values: encoder of ``depth`` blocks, optionally the decoder."""
    from timm.models.vision_transformer import Block

    torch.manual_seed(seed)
    enc = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=0,
        global_pool="",
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=depth,
        num_heads=cfg.num_heads,
    )
    sd = {k: torch.randn_like(v) for k, v in enc.state_dict().items()}
    if decoder:
        d, n = cfg.decoder_embed_dim, (cfg.img_size // cfg.patch_size) ** 2
        sd["mask_token"] = torch.randn(1, 1, d)
        sd["decoder_embed.weight"] = torch.randn(d, cfg.embed_dim)
        sd["decoder_embed.bias"] = torch.randn(d)
        sd["decoder_pos_embed"] = torch.randn(1, n + 1, d)
        for i in range(cfg.decoder_depth):
            blk = Block(d, cfg.decoder_num_heads, qkv_bias=True)
            sd.update(
                {
                    f"decoder_blocks.{i}.{k}": torch.randn_like(v)
                    for k, v in blk.state_dict().items()
                }
            )
        sd["decoder_norm.weight"] = torch.randn(d)
        sd["decoder_norm.bias"] = torch.randn(d)
        sd["decoder_pred.weight"] = torch.randn(cfg.patch_size**2 * cfg.in_chans, d)
        sd["decoder_pred.bias"] = torch.randn(cfg.patch_size**2 * cfg.in_chans)
    return sd


@pytest.mark.parametrize("decoder", [True, False])
def test_init_from_mae_reports_every_key(tmp_path, decoder):
    from ecamp.models.checkpoints import init_from_mae

    cfg = dataclasses.replace(model_config("tiny"), vocab_size=64)
    sd = mae_checkpoint(cfg, depth=cfg.depth + 1, decoder=decoder)  # ViT-B 12 -> paper's 8
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": sd, "args": argparse.Namespace(model="mae_vit_base")}, path)
    model = ECAMPModel(cfg)
    report = init_from_mae(model, path)
    own = model.state_dict()
    # every checkpoint key is either mapped or ignored, every model key mapped-to or missing
    assert set(report.mapped) | set(report.ignored) == set(sd)
    assert not set(report.mapped) & set(report.ignored)
    assert set(report.mapped.values()) | set(report.missing) == set(own)
    extra = f"blocks.{cfg.depth}."
    assert {k for k in report.ignored} == {k for k in sd if k.startswith(extra)}
    assert all(f"block {cfg.depth}" in why for why in report.ignored.values())
    for k, target in report.mapped.items():
        assert torch.equal(own[target], sd[k]), k
    assert report.mapped["blocks.0.attn.qkv.weight"] == "encoder.blocks.0.attn.qkv.weight"
    parts = {k.split(".", 1)[0] for k in report.missing}
    if decoder:
        assert report.mapped["mask_token"] == "decoder.mask_token"
        assert report.mapped["decoder_pred.weight"] == "decoder.decoder_pred.weight"
        assert parts == {"text", "fusion", "vision_proj", "super_res"}
    else:
        assert parts == {"text", "fusion", "vision_proj", "super_res", "decoder"}
        assert not any(v.startswith("decoder.") for v in report.mapped.values())
    assert len(report.lines()) == 1 + len(sd) + len(report.missing)
    assert report.to_dict()["missing"] == report.missing


def test_init_from_mae_refuses_what_does_not_fit(tmp_path):
    from ecamp.models.checkpoints import init_from_mae

    cfg = dataclasses.replace(model_config("tiny"), vocab_size=64)
    wide = dataclasses.replace(cfg, embed_dim=96)
    with pytest.raises(UserError, match="shape mismatch"):
        init_from_mae(ECAMPModel(cfg), mae_checkpoint(wide, depth=2, decoder=False))
    with pytest.raises(UserError, match="facebookresearch/mae"):
        init_from_mae(ECAMPModel(cfg), {"fc.weight": torch.zeros(2, 2)})
    # a fixed sin-cos table for another grid is ignored, not an error
    small = dataclasses.replace(cfg, img_size=32)
    report = init_from_mae(ECAMPModel(cfg), mae_checkpoint(small, depth=2, decoder=True))
    assert (
        "sin-cos" in report.ignored["pos_embed"]
        and "sin-cos" in report.ignored["decoder_pos_embed"]
    )
