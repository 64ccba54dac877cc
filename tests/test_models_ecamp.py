"""The composed ECAMP network: losses, ablation switches, overfitting one batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ecamp.config import model_config
from ecamp.errors import UserError
from ecamp.models.ecamp import ECAMPModel


def tiny(**kw):
    return dataclasses.replace(model_config("tiny"), text_dropout=0.0, vocab_size=64, **kw)


def make_batch(cfg, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = cfg.max_text_len
    ids = torch.randint(4, cfg.vocab_size, (n, L), generator=g)
    lab = ids.clone()
    lab[torch.rand(n, L, generator=g) < 0.4] = -100
    am = torch.ones(n, L, dtype=torch.long)
    am[1, L // 2 :] = 0
    lab[1, L // 2 :] = -100
    # smooth images so a tiny model can fit them in a few steps
    base = torch.rand(n, 3, 8, 8, generator=g)
    img = torch.nn.functional.interpolate(
        base, size=cfg.hr_size, mode="bilinear", align_corners=False
    )
    return {
        "image_hr": (img - 0.5) / 0.3,
        "input_ids": ids,
        "attention_mask": am,
        "mlm_labels": lab,
        "mlm_weights": torch.ones(n, L),
    }


def test_forward_returns_named_scalar_losses():
    cfg = tiny()
    model = ECAMPModel(cfg)
    out = model(make_batch(cfg))
    assert set(out) == {"loss", "mim", "mlm", "sr"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], out["mim"] + out["mlm"] + out["sr"])


def test_loss_weights():
    cfg = tiny(loss_weights=(2.0, 0.5, 0.0))
    out = ECAMPModel(cfg)(make_batch(cfg))
    assert torch.allclose(out["loss"], 2 * out["mim"] + 0.5 * out["mlm"])


def _param_names(cfg):
    return {n for n, _ in ECAMPModel(cfg).named_parameters()}


@pytest.mark.parametrize(
    "switch,losses,prefixes",
    [
        ({"use_mim": False}, {"mlm", "sr"}, set()),  # decoder stays: SR needs it
        ({"use_sr": False}, {"mim", "mlm"}, {"super_res."}),
        ({"use_mlm": False}, {"mim", "sr"}, {"text.", "fusion.", "vision_proj."}),
        (
            {"use_mlm": False, "use_sr": False},
            {"mim"},
            {"text.", "fusion.", "vision_proj.", "super_res."},
        ),
        ({"use_mim": False, "use_sr": False}, {"mlm"}, {"decoder.", "super_res."}),
        ({"fusion_global": False}, {"mim", "mlm", "sr"}, {"fusion.gap_mlp."}),
        ({"fusion_local": False}, {"mim", "mlm", "sr"}, {"fusion.cross_self_attention."}),
    ],
)
def test_each_switch_changes_only_its_part(switch, losses, prefixes):
    full_cfg, cfg = tiny(), tiny(**switch)
    out = ECAMPModel(cfg)(make_batch(cfg))
    assert set(out) == {"loss"} | losses
    removed = _param_names(full_cfg) - _param_names(cfg)
    assert all(n.startswith(tuple(prefixes)) for n in removed)
    for p in prefixes:
        assert any(n.startswith(p) for n in removed), p
    assert not (_param_names(cfg) - _param_names(full_cfg))


def test_fusion_switch_changes_only_mlm():
    batch = make_batch(tiny())
    outs = []
    for fg in (True, False):
        torch.manual_seed(0)
        model = ECAMPModel(tiny(fusion_global=fg))
        torch.manual_seed(1)
        outs.append(model(batch))
    assert torch.allclose(outs[0]["mim"], outs[1]["mim"])
    assert torch.allclose(outs[0]["sr"], outs[1]["sr"])
    assert not torch.allclose(outs[0]["mlm"], outs[1]["mlm"])


def test_sr_guidance_is_used():
    cfg = tiny()
    model = ECAMPModel(cfg)
    batch = make_batch(cfg)
    g = torch.zeros(2, 1, cfg.hr_size, cfg.hr_size)
    g[:, :, :16, :16] = 1
    torch.manual_seed(0)
    plain = model(batch)["sr"]
    torch.manual_seed(0)
    guided = model({**batch, "guidance": g})["sr"]
    assert not torch.allclose(plain, guided)
    wcfg = tiny(sr_guidance="window")
    wmodel = ECAMPModel(wcfg)
    torch.manual_seed(0)
    a = wmodel({**batch, "guidance_window": torch.tensor([[-1, -1], [-1, -1]])})["sr"]
    torch.manual_seed(0)
    b = wmodel(batch)["sr"]
    assert torch.allclose(a, b)  # -1 means no window = no guidance


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruct_values(norm_pix):
    """reconstruct() = the masked forward pass, with standardised predictions turned back into
    pixels (norm_pix_loss: each patch's mean and std from the input), and SR applied to it."""
    from ecamp.models.vit import mim_target, unpatchify

    cfg = tiny(norm_pix_loss=norm_pix)
    torch.manual_seed(1)
    model = ECAMPModel(cfg).eval()
    batch = make_batch(cfg)
    torch.manual_seed(7)
    with torch.no_grad():
        rec = model.reconstruct(batch)
    p = cfg.patch_size
    assert rec["pred_lr"].shape == (2, 3, cfg.img_size, cfg.img_size)
    assert rec["sr"].shape == (2, 3, cfg.hr_size, cfg.hr_size)
    # the same masking draw, by hand
    torch.manual_seed(7)
    with torch.no_grad():
        imgs = model.low_res(batch["image_hr"])
        latent, mask, ids_restore = model.encoder.forward_masked(imgs, cfg.mask_ratio)
        pred = model.decoder(latent, ids_restore).float()
    assert torch.equal(rec["input_lr"], imgs)
    if norm_pix:  # pixels = standardised prediction * patch std + patch mean (of the input)
        raw = mim_target(imgs, p, norm_pix=False)
        pred = pred * (raw.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + raw.mean(-1, keepdim=True)
    want = unpatchify(pred, p, cfg.in_chans)
    assert torch.allclose(rec["pred_lr"], want, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(rec["sr"], model.super_res(want), atol=1e-5)
    # the pixel mask: each patch all 1 (masked) or all 0, in the draw's patches
    m = rec["mask"][:, 0]
    patches = m.unfold(1, p, p).unfold(2, p, p).reshape(2, -1, p * p)
    assert torch.equal(patches.amin(-1), patches.amax(-1))
    assert torch.equal(patches[..., 0], mask.float())
    assert torch.allclose(rec["mask"].mean(), torch.tensor(cfg.mask_ratio))


def test_bad_config_and_batch():
    with pytest.raises(UserError):
        ECAMPModel(tiny(use_mim=False, use_mlm=False, use_sr=False))
    with pytest.raises(UserError):
        ECAMPModel(tiny(mim_loss="nope"))
    cfg = tiny()
    batch = make_batch(cfg)
    batch["image_hr"] = batch["image_hr"][:, :, :64, :64]
    with pytest.raises(UserError):
        ECAMPModel(cfg)(batch)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    cfg = tiny()
    model = ECAMPModel(cfg)
    batch = make_batch(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    hist = []
    for _ in range(40):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append({k: float(v.detach()) for k, v in out.items()})
    for k in ("mim", "mlm", "sr"):
        first = sum(h[k] for h in hist[:3]) / 3
        last = sum(h[k] for h in hist[-3:]) / 3
        assert last < 0.7 * first, (k, first, last)


# ------------------------------------------------------------------ norm_pix_loss with SR


def test_denormalize_inverts_the_norm_pix_target():
    from ecamp.models.ecamp import denormalize_patches
    from ecamp.models.vit import mim_target

    g = torch.Generator().manual_seed(3)
    imgs = torch.rand(2, 3, 16, 16, generator=g) * 2 - 0.5
    raw = mim_target(imgs, 8, norm_pix=False)
    normed = mim_target(imgs, 8, norm_pix=True)
    assert torch.allclose(denormalize_patches(normed, imgs, 8), raw, atol=1e-5)
    # a hand-built patch: values 0, 2 (mean 1, unbiased var 2) -> standardised +-1/sqrt(2)
    one = torch.zeros(1, 1, 2, 2)
    one[..., 0, 1] = one[..., 1, 0] = 2.0
    pred = torch.tensor([[[1.0, -1.0, -1.0, 1.0]]])  # 1 channel, one 2x2 patch
    var = torch.tensor(4.0 / 3.0)  # unbiased variance of (0, 2, 2, 0)
    want = pred * (var + 1e-6) ** 0.5 + 1.0
    assert torch.allclose(denormalize_patches(pred, one, 2), want)


@pytest.mark.parametrize("mim_loss,normalised", [("masked", True), ("release", False)])
def test_sr_head_gets_pixels_when_norm_pix_is_on(mim_loss, normalised):
    from ecamp.models.vit import mim_target, unpatchify

    torch.manual_seed(0)
    cfg = tiny(norm_pix_loss=True, mim_loss=mim_loss, use_mlm=False)
    model = ECAMPModel(cfg).eval()
    seen = {}
    model.super_res.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    preds = {}
    model.decoder.register_forward_hook(lambda m, a, o: preds.setdefault("p", o))
    batch = make_batch(cfg)
    model(batch)
    imgs = model.low_res(batch["image_hr"])
    raw = mim_target(imgs, cfg.patch_size, norm_pix=False)
    p = preds["p"]
    if normalised:
        std = (raw.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        want = p * std + raw.mean(dim=-1, keepdim=True)
    else:  # the release's loss ignores the flag: the SR head reads the raw prediction
        want = p
    assert torch.allclose(seen["x"], unpatchify(want, cfg.patch_size, cfg.in_chans), atol=1e-5)


def test_norm_pix_sr_reads_input_pixels_for_a_perfect_prediction():
    """A decoder that predicts the standardised target exactly gives the SR head the input's
    pixels; with an identity SR head the SR loss is the MSE of the plain up-sampling."""
    from ecamp.models.super_resolution import sr_loss
    from ecamp.models.vit import mim_target

    cfg = tiny(norm_pix_loss=True, use_mlm=False)
    model = ECAMPModel(cfg).eval()
    batch = make_batch(cfg)
    imgs = model.low_res(batch["image_hr"])
    perfect = mim_target(imgs, cfg.patch_size, norm_pix=True)
    with torch.no_grad():
        for conv in (model.super_res.conv1, model.super_res.conv2):
            conv.weight.zero_()
            conv.bias.zero_()
    got = model._sr(perfect, imgs, batch["image_hr"], {})
    up = torch.nn.functional.interpolate(
        imgs, size=cfg.hr_size, mode="bilinear", align_corners=False
    )
    assert torch.allclose(got, sr_loss(up, batch["image_hr"]), atol=1e-5)
    # the old behaviour (standardised patches straight into SR) is far off
    from ecamp.models.vit import unpatchify

    with torch.no_grad():
        wrong = sr_loss(model.super_res(unpatchify(perfect, cfg.patch_size, 3)), batch["image_hr"])
    assert float(wrong) > 2 * float(got)


def test_norm_pix_without_mim_is_refused():
    with pytest.raises(UserError, match="norm_pix_loss"):
        ECAMPModel(tiny(norm_pix_loss=True, use_mim=False))
