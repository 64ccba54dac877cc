"""MAE image side of ECAMP: the ViT encoder, the masked-patch decoder and the MIM loss.

Reads top to bottom like the method (SPEC.md section 2): patchify, random masking,
encoder over the visible patches, decoder over all patches, loss on the masked ones.
The encoder *is* a timm ``VisionTransformer`` (same parameter names as timm and as the
authors' release), so its weights load into ``timm.create_model("vit_base_patch16_224")``
and downstream code calls the unchanged ``forward_features``.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ecamp.config import ModelConfig


class _LN(nn.LayerNorm):
    """LayerNorm with the ViT/MAE epsilon (1e-6)."""

    def __init__(self, dim: int, **kwargs) -> None:
        kwargs.setdefault("eps", 1e-6)
        super().__init__(dim, **kwargs)


# --------------------------------------------------------------------------- helpers


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, laid out as in MAE: (1, [1+] grid*grid, dim).

    The first half of the channels encodes the column (x) coordinate, the second half the
    row (y) coordinate, so ImageNet MAE checkpoints see the embedding they were trained with.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
        angles = pos.flatten().double()[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb.unsqueeze(0)


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order, pixels (p, q, c)."""
    b, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W) for a square grid; inverse of :func:`patchify`."""
    b, n, _ = x.shape
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"{n} patches do not form a square grid")
    x = x.reshape(b, g, g, p, p, c)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, g * p, g * p)


def _init_mae(module: nn.Module) -> None:
    """MAE / release initialisation: xavier-uniform linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- encoder


class MAEEncoder(VisionTransformer):
    """timm ViT with fixed sin-cos positions and MAE random masking (``forward_masked``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            num_classes=0,
            global_pool="token",
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=True,
            class_token=True,
            drop_path_rate=cfg.drop_path,
            norm_layer=_LN,
            weight_init="skip",
        )
        grid = cfg.img_size // cfg.patch_size
        assert self.pos_embed is not None and self.cls_token is not None
        self.pos_embed.requires_grad_(False)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed(cfg.embed_dim, grid))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE initialisation (patch embedding as a linear layer, cls token N(0, 0.02))."""
        self.apply(_init_mae)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    @staticmethod
    def random_masking(
        x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random ``1 - mask_ratio`` of the tokens of each sample (argsort of noise).

        Returns the kept tokens (B, N_vis, D), the mask (B, N; 1 = masked) and the indices
        that restore the original order.
        """
        b, n, d = x.shape
        n_keep = int(n * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)  # small noise = kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :n_keep]
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device, dtype=x.dtype)
        mask[:, :n_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return kept, mask, ids_restore

    def forward_masked(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode only the visible patches: (latent (B, 1+N_vis, D), mask (B, N), ids_restore)."""
        pos, cls_token = self.pos_embed, self.cls_token
        assert pos is not None and cls_token is not None
        x = self.patch_embed(imgs) + pos[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (cls_token + pos[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = self.norm_pre(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore


# --------------------------------------------------------------------------- decoder


class MAEDecoder(nn.Module):
    """Light transformer that predicts the pixels of every patch from the visible latents."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.decoder_embed_dim
        grid = cfg.img_size // cfg.patch_size
        self.decoder_embed = nn.Linear(cfg.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(dim, grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(dim, cfg.decoder_num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=_LN)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = _LN(dim)
        self.decoder_pred = nn.Linear(dim, cfg.patch_size**2 * cfg.in_chans)
        self.apply(_init_mae)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1+N_vis, D), ids_restore (B, N) -> per-patch pixels (B, N, p*p*C)."""
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        n_masked = n + 1 - x.shape[1]
        patches = torch.cat([x[:, 1:], self.mask_token.expand(b, n_masked, -1)], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


# --------------------------------------------------------------------------- loss


def mim_target(imgs: torch.Tensor, p: int, norm_pix: bool) -> torch.Tensor:
    """Per-patch pixel targets; with ``norm_pix`` each patch is standardised (MAE)."""
    target = patchify(imgs.float(), p)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return target


def mim_loss(
    pred: torch.Tensor,
    imgs: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    norm_pix: bool = False,
    mode: str = "masked",
) -> torch.Tensor:
    """Pixel MSE of the masked patches.

    ``masked`` (paper / MAE): mean over the masked patches' pixels, optional ``norm_pix``.
    ``release``: the authors' variant -- mean over *all* pixels with the visible ones zeroed
    (so ``mask_ratio`` times the masked-patch MSE) and ``norm_pix`` ignored.
    """
    mask = mask.float()
    if mode == "release":
        err = (pred.float() - patchify(imgs.float(), patch_size)) ** 2
        return (err * mask.unsqueeze(-1)).sum() / err.numel()
    if mode != "masked":
        raise ValueError(f"unknown mim_loss mode {mode!r}; use 'masked' or 'release'")
    target = mim_target(imgs, patch_size, norm_pix)
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def pixel_mask(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, N) patch mask -> (B, 1, H, W) pixel mask of the low-resolution image."""
    b, n = mask.shape
    g = int(round(n**0.5))
    m = mask.reshape(b, 1, g, g)
    return m.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


__all__ = [
    "MAEDecoder",
    "MAEEncoder",
    "mim_loss",
    "mim_target",
    "patchify",
    "pixel_mask",
    "sincos_pos_embed",
    "unpatchify",
]
