"""`ecamp pretrain`: text, data and the whole pre-training run's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ecamp.config.model import ModelConfig
from ecamp.config.train import TrainConfig

# --------------------------------------------------------------------------- text


@dataclass
class TextConfig:
    """Text assembly, tokenisation and entity-centered masking (SPEC.md section 3)."""

    # "mimic" (bundled release WordPiece), "phantom" (bundled, for the synthetic world) or a
    # tokenizers JSON path
    tokenizer: str = "mimic"
    max_length: int = 256
    distill_prob: float = 0.8  # insert the distilled report with this probability
    use_distilled: bool = True  # Table 4: context distillation on/off
    descriptor_masking: bool = True  # Table 4: descriptor masking on/off
    descriptor_k: int = 2  # words before an entity that are descriptors
    entity_mask_prob: float = 0.75
    random_mask_prob_with_entity: float = 0.7
    random_mask_prob_no_entity: float = 0.75
    rebalance: bool = True  # Table 4: re-balance on/off
    rebalance_lambda: float = 0.05
    negative_templates: tuple[str, ...] = ("there is no evidence of", "there is no")
    masking_mode: Literal["paper", "release"] = (
        "paper"  # paper | release (reproduces the release's dead branch)
    )
    mlm_labels: Literal["masked", "all"] = (
        "masked"  # masked (-100 elsewhere, paper) | all (release)
    )
    assembly: Literal["paper", "release"] = (
        "paper"  # paper (insert at a sentence boundary, [CLS] .. [SEP]) | release
    )


# --------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    """Where pre-training data comes from and how images are prepared."""

    manifest: str = ""  # empty: the embedded synthetic phantom world
    image_root: str = ""  # relative image paths in the manifest resolve against this
    guidance: str = ""  # attention-map shards from `ecamp attention export`; empty = uniform
    cache: str = ""  # preprocessed image cache folder; empty = decode on the fly
    cache_size: int = 512  # side of the cached square images (ecamp.data.cache.build_cache)
    cache_resize: Literal["pad", "squash"] = "pad"  # pad (keep aspect, zero padding) | squash
    synthetic_n: int = 256  # size of the phantom world when no manifest is given
    synthetic_seed: int = 0
    augment: Literal["release", "none"] = "release"  # release | none
    crop_scale: tuple[float, float] = (0.2, 1.0)
    mean: float = 0.4721
    std: float = 0.3037
    num_workers: int = 0
    bad_rows: Literal["skip", "fail"] = "skip"  # skip (report and count) | fail


@dataclass
class PretrainConfig:
    """`ecamp pretrain`: everything one pre-training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init: str = ""  # ImageNet MAE / timm ViT checkpoint, or the authors' release checkpoint
    output: str = ""
