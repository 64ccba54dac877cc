"""The ECAMP pre-training network: one forward, named losses (SPEC.md sections 2-5).

``ECAMPModel(cfg)(batch) -> {"loss", "mim", "mlm", "sr"}``.  Every ablation of the
paper's Table 4 that concerns the network is a :class:`ModelConfig` switch:

- ``use_mim`` / ``use_mlm`` / ``use_sr``: each objective on or off.  A disabled objective
  is absent from the output and builds no modules (the MAE decoder exists while MIM or SR
  needs it; the text side only with MLM).
- ``fusion_global`` / ``fusion_local``: the two MSCF paths.
- ``norm_pix_loss`` (MAE's per-patch standardised MIM target, ``mim_loss="masked"`` only):
  the decoder then predicts standardised patches, so before the SR head they are
  de-normalised with the mean and variance of the input's own patches
  (:func:`denormalize_patches`) and SR still compares pixels with pixels.  The release's
  ``run.sh`` passes ``--norm_pix_loss`` but its ``forward_loss`` never reads the flag: with
  ``mim_loss="release"`` ecamp ignores it the same way (MIM and SR on raw pixels).
- MAE alone: ``use_mlm=False, use_sr=False``.  MRM-style: ``use_sr=False,
  fusion_local=False`` with random text masking (``text.descriptor_masking=False``).

Batch (dict of tensors):
``image_hr`` (B, C, hr, hr) normalised; the low-resolution encoder input is made here by
bicubic (anti-aliased) down-sampling.  ``input_ids``, ``attention_mask``, ``mlm_labels``
(-100 = not scored), ``mlm_weights`` (B, L).  Optional SR guidance: ``guidance``
(B, 1, hr, hr) float map, or ``guidance_window`` (B, 2) long (top-left patch row, col
on the low-resolution patch grid; -1 = none).  The release's CSV calls the first of these
``column`` and the second ``row`` (it slices ``mask[i, column:column+12, row:row+12]``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecamp.config import ModelConfig
from ecamp.errors import UserError
from ecamp.models.fusion import MSCF
from ecamp.models.super_resolution import SuperResolution, sr_loss
from ecamp.models.text_decoder import TextDecoder, key_padding_mask
from ecamp.models.vit import (
    MAEDecoder,
    MAEEncoder,
    _init_mae,
    mim_loss,
    mim_target,
    pixel_mask,
    unpatchify,
)

_CHOICES = {
    "mim_loss": ("masked", "release"),
    "sr_guidance": ("map", "window"),
    "sr_window_norm": ("window", "image"),
}


def check_model_config(cfg: ModelConfig) -> None:
    """Raise :class:`UserError` for a configuration the network cannot be built from."""
    for name, allowed in _CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise UserError(f"model.{name}={getattr(cfg, name)!r}; choose one of {list(allowed)}")
    if not (cfg.use_mim or cfg.use_mlm or cfg.use_sr):
        raise UserError("model.use_mim, use_mlm and use_sr are all false: nothing to train")
    if cfg.img_size % cfg.patch_size:
        raise UserError(
            f"model.img_size={cfg.img_size} is not a multiple of patch_size={cfg.patch_size}"
        )
    if cfg.use_sr and cfg.hr_size % cfg.img_size:
        raise UserError(f"model.hr_size={cfg.hr_size} is not a multiple of img_size={cfg.img_size}")
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise UserError(f"model.mask_ratio={cfg.mask_ratio} must be in [0, 1)")
    if cfg.norm_pix_loss and not cfg.use_mim:
        raise UserError(
            "model.norm_pix_loss=true changes only the MIM target, but use_mim=false: "
            "set norm_pix_loss=false"
        )
    if len(cfg.loss_weights) != 3:
        raise UserError("model.loss_weights needs three numbers: mim, mlm, sr")


def predicts_normalized(cfg: ModelConfig) -> bool:
    """Does the decoder predict per-patch standardised pixels (MAE's ``norm_pix_loss``)?

    Only with ``mim_loss="masked"``: the release's loss (``mim_loss="release"``) ignores
    the flag, as the release's ``forward_loss`` does.
    """
    return cfg.norm_pix_loss and cfg.mim_loss == "masked"


def denormalize_patches(pred: torch.Tensor, imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Standardised patch predictions (B, N, p*p*C) -> pixels, with each patch of ``imgs``'s
    own mean and variance (the inverse of :func:`mim_target` with ``norm_pix``)."""
    raw = mim_target(imgs, patch_size, norm_pix=False)
    mean = raw.mean(dim=-1, keepdim=True)
    std = (raw.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
    return pred * std.to(pred.dtype) + mean.to(pred.dtype)


class ECAMPModel(nn.Module):
    """MAE encoder/decoder + SR head + MSCF-fused BERT MLM, built from one :class:`ModelConfig`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_model_config(cfg)
        self.cfg = cfg
        self.encoder = MAEEncoder(cfg)
        self.decoder = MAEDecoder(cfg) if (cfg.use_mim or cfg.use_sr) else None
        self.super_res = (
            SuperResolution(cfg.hr_size, cfg.in_chans, cfg.sr_final_relu) if cfg.use_sr else None
        )
        self.text: TextDecoder | None = None
        self.fusion: MSCF | None = None
        self.vision_proj: nn.Linear | None = None
        if cfg.use_mlm:
            self.text = TextDecoder(cfg)
            self.fusion = MSCF(self.text.config, cfg.fusion_global, cfg.fusion_local)
            if cfg.fusion_global or cfg.fusion_local:
                self.vision_proj = nn.Linear(cfg.embed_dim, cfg.text_width)
            # the release initialises every linear of the network the MAE way
            for m in (self.fusion, self.vision_proj, self.text.encoder, self.text.mlm_head):
                if m is not None:
                    m.apply(_init_mae)
            self.text.embeddings.apply(_init_embeddings)

    # ------------------------------------------------------------------ pieces

    def low_res(self, image_hr: torch.Tensor) -> torch.Tensor:
        """Bicubic, anti-aliased down-sampling of the high-resolution image to ``img_size``."""
        s = self.cfg.img_size
        if image_hr.shape[-1] == s and image_hr.shape[-2] == s:
            return image_hr
        with torch.no_grad():
            return F.interpolate(
                image_hr, size=(s, s), mode="bicubic", align_corners=False, antialias=True
            )

    def _check_batch(self, batch: dict[str, Any], need_text: bool = True) -> torch.Tensor:
        if "image_hr" not in batch:
            raise UserError("pre-training batch has no 'image_hr'")
        img = batch["image_hr"]
        if img.ndim != 4 or img.shape[1] != self.cfg.in_chans:
            raise UserError(
                f"image_hr must be (B, {self.cfg.in_chans}, H, W), got {tuple(img.shape)}"
            )
        if self.cfg.use_sr and img.shape[-1] != self.cfg.hr_size:
            raise UserError(f"image_hr is {img.shape[-1]} px but model.hr_size={self.cfg.hr_size}")
        if need_text and self.cfg.use_mlm:
            missing = [k for k in ("input_ids", "mlm_labels") if k not in batch]
            if missing:
                raise UserError(f"pre-training batch lacks {missing} needed by the MLM objective")
        return img

    def _mlm(self, latent: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        assert self.text is not None and self.fusion is not None
        mask = batch.get("attention_mask")
        key_mask = key_padding_mask(mask)
        h = self.text.embed(batch["input_ids"])
        local = global_feat = None
        if self.vision_proj is not None:
            local = self.vision_proj(latent[:, 1:])  # visible patch tokens, cls dropped
            global_feat = local.mean(dim=1) if self.cfg.fusion_global else None
        h = self.fusion(h, key_mask, local if self.cfg.fusion_local else None, global_feat)
        h = self.text.encode(h, key_mask)
        return self.text.mlm_loss(h, batch["mlm_labels"], batch.get("mlm_weights"))

    def _sr(
        self,
        pred: torch.Tensor,
        imgs: torch.Tensor,
        image_hr: torch.Tensor,
        batch: dict[str, Any],
    ) -> torch.Tensor:
        assert self.super_res is not None
        cfg = self.cfg
        if predicts_normalized(cfg):
            # the SR target is raw pixels: give the SR head pixels too.  The statistics come
            # from the low-resolution input (no gradient), so SR learns structure and detail
            pred = denormalize_patches(pred, imgs, cfg.patch_size)
        sr = self.super_res(unpatchify(pred, cfg.patch_size, cfg.in_chans))
        return sr_loss(
            sr,
            image_hr,
            mode=cfg.sr_guidance,
            guidance=batch.get("guidance"),
            window=batch.get("guidance_window"),
            patch_px=cfg.patch_size * cfg.hr_size // cfg.img_size,
            window_patches=cfg.sr_window_patches,
            window_norm=cfg.sr_window_norm,
        )

    # ------------------------------------------------------------------ forward

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One pre-training forward: ``{"loss", "mim"?, "mlm"?, "sr"?}`` scalar tensors."""
        cfg = self.cfg
        image_hr = self._check_batch(batch)
        imgs = self.low_res(image_hr)
        latent, mask, ids_restore = self.encoder.forward_masked(imgs, cfg.mask_ratio)
        out: dict[str, torch.Tensor] = {}
        if self.decoder is not None:
            pred = self.decoder(latent, ids_restore)
            if cfg.use_mim:
                out["mim"] = mim_loss(
                    pred, imgs, mask, cfg.patch_size, cfg.norm_pix_loss, cfg.mim_loss
                )
            if cfg.use_sr:
                out["sr"] = self._sr(pred, imgs, image_hr, batch)
        if cfg.use_mlm:
            out["mlm"] = self._mlm(latent, batch)
        weights = dict(zip(("mim", "mlm", "sr"), cfg.loss_weights))
        loss = sum(weights[k] * v for k, v in out.items())
        assert isinstance(loss, torch.Tensor)
        return {"loss": loss, **out}

    @torch.no_grad()
    def mscf_attention(
        self, imgs: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """MSCF's cross-attention of each text token over the image patches (paper Fig. 4).

        imgs (B, C, img, img) at the encoder's resolution, every patch visible (no masking);
        -> (B, L, g, g) with g = img / patch, the mean over heads; each row sums to 1.
        """
        if self.text is None or self.fusion is None or not self.cfg.fusion_local:
            raise UserError(
                "this model has no MSCF local path (use_mlm or fusion_local is off): "
                "there is no text-to-image attention to show"
            )
        assert self.vision_proj is not None
        b, n = imgs.shape[0], (imgs.shape[-1] // self.cfg.patch_size) ** 2
        in_order = torch.arange(n, device=imgs.device, dtype=torch.float32).expand(b, n)
        latent, _, _ = self.encoder.forward_masked(imgs, 0.0, noise=in_order)
        local = self.vision_proj(latent[:, 1:])  # every patch, raster order
        h = self.text.embed(input_ids)
        probs = self.fusion.local_attention(h, key_padding_mask(attention_mask), local)
        g = int(round(n**0.5))
        return probs.mean(dim=1).reshape(b, -1, g, g)

    @torch.no_grad()
    def reconstruct(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """Images for visualisation: low-res input, its reconstruction, SR output, pixel mask.

        ``pred_lr`` holds the decoder's prediction at every patch (de-normalised per patch
        when the decoder predicts standardised patches); ``mask`` is (B, 1, img, img),
        1 = masked.
        """
        if self.decoder is None:
            raise UserError("this model has no image decoder (use_mim and use_sr are off)")
        cfg = self.cfg
        image_hr = self._check_batch(batch, need_text=False)
        imgs = self.low_res(image_hr)
        latent, mask, ids_restore = self.encoder.forward_masked(imgs, cfg.mask_ratio)
        pred = self.decoder(latent, ids_restore).float()
        if predicts_normalized(cfg):
            pred = denormalize_patches(pred, imgs, cfg.patch_size)
        pred_lr = unpatchify(pred, cfg.patch_size, cfg.in_chans)
        sr = self.super_res(pred_lr) if self.super_res is not None else None
        return {
            "input_lr": imgs,
            "pred_lr": pred_lr,
            "sr": sr,
            "mask": pixel_mask(mask, cfg.patch_size),
        }


def _init_embeddings(module: nn.Module) -> None:
    """BERT's embedding initialisation: N(0, 0.02), zero padding row, unit LayerNorm."""
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
