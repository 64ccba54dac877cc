"""GLoRIA's config (ecamp.models.gloria) and its size presets."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from ecamp.errors import UserError

GloriaPreset = Literal["tiny", "tiny_cnn", "paper"]


@dataclass
class GloriaConfig:
    """Sizes and loss settings of GLoRIA; ``preset`` fills the sizes (see GLORIA_PRESETS)."""

    preset: GloriaPreset = "paper"  # see GLORIA_PRESETS
    backbone: str = "vit"  # vit | any timm CNN name (resnet50 = the GLoRIA paper)
    img_size: int = 224
    in_chans: int = 3
    # ViT backbone
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_pool: Literal["mean", "token"] = (
        "mean"  # mean (of the patch tokens) | token (class token)
    )
    # CNN backbone: which feature stage gives the regions (resnet: index 3 = stride 16)
    cnn_local_stage: int = 3
    # text encoder (BERT)
    vocab_size: int = 30000  # 0: the tokenizer's size (data.tokenizer)
    max_text_len: int = 128
    text_width: int = 768
    text_depth: int = 12
    text_heads: int = 12
    text_ffn: int = 3072
    text_dropout: float = 0.1
    pad_token_id: int = 0
    text_pool: Literal["mean", "cls"] = (
        "mean"  # mean (of the word features) | cls (the [CLS] output)
    )
    # joint space and losses
    proj_dim: int = 768
    gamma1: float = 4.0  # attention (GLoRIA temp1)
    gamma2: float = 5.0  # word aggregation (GLoRIA temp2)
    gamma3: float = 10.0  # logit scale (GLoRIA temp3)
    attention: Literal["paper", "released"] = "paper"
    global_weight: float = 1.0
    local_weight: float = 1.0
    # pre-trained starting points, as GLoRIA starts (ecamp.models.gloria_init); "" = random
    image_init: str = ""  # timm checkpoint file of the image backbone (ImageNet)
    text_init: str = ""  # local Hugging Face BERT folder (save_pretrained), e.g. Bio_ClinicalBERT


# the text side and joint space of both tiny presets
_TINY_TEXT: dict[str, Any] = dict(
    max_text_len=64, text_width=64, text_depth=2, text_heads=4, text_ffn=128, proj_dim=64
)
GLORIA_PRESETS: dict[str, dict[str, Any]] = {
    # seconds on one CPU core: tests, the benchmark and the phantom-world demo
    "tiny": dict(img_size=96, patch_size=8, embed_dim=64, depth=2, num_heads=4, **_TINY_TEXT),
    # tiny text side + a small timm CNN whose stride-8 stage gives a 16 x 16 region grid at
    # 128 px: on the phantom world it localises within a few hundred CPU steps, where the
    # tiny ViT from scratch needs many more (benchmarks/attention_localization.py)
    "tiny_cnn": dict(
        backbone="mobilenetv3_small_100", img_size=128, cnn_local_stage=2, **_TINY_TEXT
    ),
    # ViT-B/16 + BERT-base, as the GLoRIA ViT baseline of the ECAMP paper
    "paper": dict(),
}


def gloria_config(preset: str = "paper", **overrides: Any) -> GloriaConfig:
    """A :class:`GloriaConfig` from a preset name plus field overrides."""
    if preset not in GLORIA_PRESETS:
        raise UserError(f"unknown GLoRIA preset {preset!r}; choose one of {sorted(GLORIA_PRESETS)}")
    return GloriaConfig(
        preset=typing.cast(GloriaPreset, preset), **{**GLORIA_PRESETS[preset], **overrides}
    )
