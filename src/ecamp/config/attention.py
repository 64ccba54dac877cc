"""`ecamp attention`: the GLoRIA stage's config (model, data, training, export)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ecamp.config.gloria import GLORIA_PRESETS, GloriaConfig
from ecamp.config.loader import apply_overrides, from_dict, read_yaml
from ecamp.config.train import TrainConfig
from ecamp.errors import UserError


@dataclass
class AttentionDataConfig:
    """Where the (image, text) pairs come from and how images are prepared."""

    manifest: str = ""  # empty: a phantom world generated into <output>/phantom
    image_root: str = ""
    cache: str = ""  # an image cache folder (ecamp.data.cache); empty = decode files
    splits: tuple[str, ...] = ("train",)  # rows trained on (old names such as validate work)
    text: Literal["distilled", "report"] = (
        "distilled"  # distilled (see module doc for the fall-backs) | report
    )
    tokenizer: str = "mimic"  # mimic | phantom (bundled) | a tokenizers JSON path
    resize: Literal["squash", "pad"] = "squash"  # squash | pad (aspect kept, zero padding)
    # crop (random resized crop, never flipped: reports say left/right) | none
    augment: Literal["crop", "none"] = "crop"
    crop_scale: tuple[float, float] = (0.8, 1.0)
    mean: float = 0.4721
    std: float = 0.3037
    synthetic_n: int = 512
    synthetic_seed: int = 0
    num_workers: int = 0
    bad_rows: Literal["skip", "fail"] = "skip"  # skip | fail


@dataclass
class ExportConfig:
    """What ``ecamp attention export`` writes (see ecamp.data.guidance)."""

    size: int = 448  # side of the stored maps (the SR target resolution)
    window_grid: int = 14  # patch grid of the pre-training encoder (224 / 16)
    window_patches: int = 12  # release: a 12 x 12-patch window
    mentions: Literal["positive", "all"] = "positive"  # positive (skip negated mentions) | all
    pool: Literal["all", "entity"] = "all"  # all (one map per image) | entity (also one per entity)
    shard_size: int = 1024
    batch_size: int = 64
    splits: tuple[str, ...] = ("train", "val", "test")


# the GLoRIA paper's optimisation (Adam, lr 5e-5, weight decay 1e-6, batch 48, 50 epochs)
TRAIN_DEFAULTS: dict[str, Any] = dict(
    epochs=50,
    batch_size=48,
    lr=5e-5,
    weight_decay=1e-6,
    betas=(0.9, 0.999),
    warmup_epochs=1.0,
    clip_grad=1.0,
)


@dataclass
class AttentionConfig:
    """`ecamp attention`: model, data, training and export settings."""

    model: GloriaConfig = field(default_factory=GloriaConfig)
    data: AttentionDataConfig = field(default_factory=AttentionDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**TRAIN_DEFAULTS))
    export: ExportConfig = field(default_factory=ExportConfig)


def attention_config(data: dict[str, Any] | None = None) -> AttentionConfig:
    """Build an :class:`AttentionConfig` from a partial dict.

    ``model.preset`` fills the model sizes (explicit keys win) and the GLoRIA training
    defaults fill what ``train`` leaves out.
    """
    data = dict(data or {})
    model = dict(data.get("model") or {})
    preset = model.get("preset", "paper")
    if preset not in GLORIA_PRESETS:
        raise UserError(
            f"model.preset: unknown GLoRIA preset {preset!r}; choose one of {sorted(GLORIA_PRESETS)}"
        )
    data["model"] = {**GLORIA_PRESETS[preset], **model}
    data["train"] = {**TRAIN_DEFAULTS, **dict(data.get("train") or {})}
    return from_dict(AttentionConfig, data)


def load_attention_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> AttentionConfig:
    """Defaults <- YAML file <- dotted overrides."""
    data = read_yaml(path) if path else {}
    apply_overrides(data, list(overrides or []))
    return attention_config(data)
