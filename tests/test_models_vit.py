"""MAE encoder / decoder / MIM loss."""

from __future__ import annotations

import pytest
import timm
import torch

from ecamp.config import model_config
from ecamp.models.vit import (
    MAEDecoder,
    MAEEncoder,
    mim_loss,
    patchify,
    pixel_mask,
    sincos_pos_embed,
    unpatchify,
)


@pytest.fixture(scope="module")
def cfg():
    return model_config("tiny")


def test_patchify_roundtrip_and_layout():
    imgs = torch.randn(2, 3, 32, 32)
    x = patchify(imgs, 8)
    assert x.shape == (2, 16, 8 * 8 * 3)
    assert torch.equal(unpatchify(x, 8, 3), imgs)
    # patch 1 is the top row, second column; first pixel's channels come last
    assert torch.equal(x[0, 1, :3], imgs[0, :, 0, 8])


def test_encoder_is_timm_vit_with_fixed_sincos(cfg):
    enc = MAEEncoder(cfg)
    ref = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
    )
    assert set(enc.state_dict()) == set(ref.state_dict())
    assert not enc.pos_embed.requires_grad
    grid = cfg.img_size // cfg.patch_size
    assert torch.equal(enc.pos_embed.data, sincos_pos_embed(cfg.embed_dim, grid))
    assert torch.all(enc.pos_embed[0, 0] == 0)  # cls position


def test_random_masking_keeps_the_right_tokens():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 16, 1).expand(-1, -1, 4)
    kept, mask, ids_restore = MAEEncoder.random_masking(x, 0.75)
    assert kept.shape == (2, 4, 4)
    assert mask.shape == (2, 16) and torch.all(mask.sum(1) == 12)
    for b in range(2):
        visible = torch.nonzero(mask[b] == 0).squeeze(1).float()
        assert torch.equal(kept[b, :, 0].sort().values, (visible + 16 * b).sort().values)
    # ids_restore undoes the shuffle
    noise = torch.rand(2, 16)
    _, mask2, restore = MAEEncoder.random_masking(x, 0.75, noise)
    shuffle = torch.argsort(noise, 1)
    assert torch.equal(torch.gather(shuffle, 1, restore), torch.arange(16).expand(2, -1))


def test_forward_masked_and_decoder_shapes(cfg):
    enc, dec = MAEEncoder(cfg), MAEDecoder(cfg)
    imgs = torch.randn(3, 3, cfg.img_size, cfg.img_size)
    latent, mask, ids_restore = enc.forward_masked(imgs, 0.75)
    n = (cfg.img_size // cfg.patch_size) ** 2
    assert latent.shape == (3, 1 + n // 4, cfg.embed_dim)
    assert mask.shape == (3, n) and ids_restore.shape == (3, n)
    pred = dec(latent, ids_restore)
    assert pred.shape == (3, n, cfg.patch_size**2 * 3)
    # with nothing masked the masked forward equals timm's forward_features
    enc.eval()
    full, _, _ = enc.forward_masked(imgs, 0.0, noise=torch.arange(n).float().expand(3, -1))
    assert torch.allclose(full, enc.forward_features(imgs), atol=1e-5)


@pytest.mark.parametrize("mode,norm_pix", [("masked", False), ("masked", True), ("release", False)])
def test_mim_loss_ignores_visible_patches(mode, norm_pix):
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    pred = torch.randn(2, 16, 192)
    base = mim_loss(pred, imgs, mask, 8, norm_pix, mode)
    changed = pred.clone()
    changed[:, 12:] += 5.0  # visible patches only
    assert torch.allclose(mim_loss(changed, imgs, mask, 8, norm_pix, mode), base)
    changed[:, 0] += 5.0  # a masked patch
    assert not torch.allclose(mim_loss(changed, imgs, mask, 8, norm_pix, mode), base)


def test_release_mim_loss_is_ratio_times_masked_mse():
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    pred = torch.randn(2, 16, 192)
    paper = mim_loss(pred, imgs, mask, 8, False, "masked")
    release = mim_loss(pred, imgs, mask, 8, True, "release")  # norm_pix ignored
    assert torch.allclose(release, 0.75 * paper)
    # and it equals the release's formula: MSE over whole images with visible pixels zeroed
    pm = pixel_mask(mask, 8)
    ref = torch.nn.functional.mse_loss(unpatchify(pred, 8) * pm, imgs * pm)
    assert torch.allclose(release, ref, atol=1e-6)
