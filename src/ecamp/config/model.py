"""The ECAMP network's config and its size presets."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from ecamp.config.loader import ConfigError

Preset = Literal["tiny", "paper", "release"]


@dataclass
class ModelConfig:
    """The ECAMP network (SPEC.md sections 2-5).  ``preset`` fills the sizes."""

    preset: Preset = "paper"  # see PRESETS
    # image side
    img_size: int = 224  # encoder input (low resolution)
    hr_size: int = 448  # super-resolution target
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 8
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    decoder_embed_dim: int = 512
    decoder_depth: int = 4
    decoder_num_heads: int = 16
    norm_pix_loss: bool = False
    # text side
    vocab_size: int = 30000  # 0: the tokenizer's size (text.tokenizer)
    max_text_len: int = 256
    text_width: int = 768
    text_depth: int = 6
    text_heads: int = 6
    text_ffn: int = 1536
    pad_token_id: int = 0
    text_dropout: float = 0.1  # BERT hidden/attention dropout (release: 0.1)
    text_tie_embeddings: bool = False  # tie MLM decoder to word embeddings (release: untied)
    # objectives and ablation switches (Table 4)
    use_mim: bool = True
    use_mlm: bool = True
    use_sr: bool = True
    fusion_global: bool = True
    fusion_local: bool = True
    # release-compatibility switches (SPEC.md section 9); defaults follow the paper
    mim_loss: Literal["masked", "release"] = (
        "masked"  # masked (paper/MAE) | release (mean over all pixels, unmasked zeroed)
    )
    sr_guidance: Literal["map", "window"] = (
        "map"  # map (paper Eq. 5) | window (release: 12x12-patch window)
    )
    sr_window_patches: int = 12  # window side in low-resolution patches
    sr_window_norm: Literal["window", "image"] = (
        "window"  # window (mean inside it) | image (release: mean over image)
    )
    sr_final_relu: bool = False  # release ends the SR head with a ReLU
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mim, mlm, sr
    drop_path: float = 0.0


PRESETS: dict[str, dict[str, Any]] = {
    # seconds on one CPU core: what tests and the embedded default use
    "tiny": dict(
        img_size=64,
        hr_size=128,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
        decoder_embed_dim=48,
        decoder_depth=1,
        decoder_num_heads=4,
        text_width=64,
        text_depth=2,
        text_heads=4,
        text_ffn=128,
        max_text_len=64,
        sr_window_patches=4,
    ),
    # the paper: ViT-B/16 with 8 layers
    "paper": dict(depth=8),
    # the authors' release: ViT-B/16 with 12 layers and the release's loss choices
    "release": dict(
        depth=12,
        mim_loss="release",
        sr_guidance="window",
        sr_window_norm="image",
        sr_final_relu=True,
    ),
}


def model_config(preset: str = "paper", **overrides: Any) -> ModelConfig:
    """Build a :class:`ModelConfig` from a preset name plus field overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **overrides}
    return ModelConfig(preset=typing.cast(Preset, preset), **values)
