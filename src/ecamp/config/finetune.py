"""`ecamp finetune`: the downstream stage's config (encoder + head, data, loop)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ecamp.config.loader import check_choices
from ecamp.config.train import TrainConfig
from ecamp.errors import UserError
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

Task = Literal["cls", "seg", "det"]
Dataset = Literal["phantom", "chestxray14", "chexpert", "rsna", "covidx", "siim"]
TASKS: tuple[str, ...] = typing.get_args(Task)
DATASETS: tuple[str, ...] = typing.get_args(Dataset)


def _finetune_train() -> TrainConfig:
    """Loop defaults for fine-tuning (MAE-style): AdamW (0.9, 0.999), short warm-up."""
    return TrainConfig(
        epochs=50,
        batch_size=64,
        lr=5e-4,
        min_lr=1e-6,
        weight_decay=0.05,
        betas=(0.9, 0.999),
        warmup_epochs=5.0,
        log_every=10,
        keep_last=1,
    )


@dataclass
class FinetuneModelConfig:
    """The encoder and its task head."""

    init: str = "random"  # exported encoder | pretrain/finetune ckpt or run folder | release ckpt | timm name | random
    img_size: int = 0  # input side; 0 = the size the encoder was trained at
    # architecture of a `random` encoder; filled from the checkpoint for every other init
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path: float = 0.1  # stochastic depth while fine-tuning
    linear_probe: bool = False  # frozen encoder: only the head learns
    dropout: float = 0.0  # before the classifier
    seg_decoder: Literal["conv", "upernet"] = (
        "conv"  # conv (release-like up-sampling stages) | upernet
    )
    # conv: the width of each x2 up-sampling stage, log2(patch size) of them; upernet: one
    # width; empty = the default (conv 256, 128, 64, 32 for patch 16; upernet 128)
    seg_channels: list[int] = field(default_factory=list)
    seg_prior: float = 0.01  # foreground probability the seg head starts at (its output bias)
    det_hidden: int = 256  # YOLO head width


@dataclass
class FinetuneDataConfig:
    """Which labelled set, which share of its training labels, and augmentation."""

    dataset: Dataset = "phantom"
    root: str = ""  # dataset root in its official layout (phantom: empty = generate in the output)
    manifest: str = ""  # a prepared downstream manifest CSV (columns as ecamp.data.sources.common)
    fraction: float = 100.0  # percent of the training labels (release lists for 1 / 10 / 100)
    sampling: Literal["release", "random"] = (
        "release"  # release (the authors' lists) | random (seeded subset)
    )
    # paper: leak-free splits (release test lists; train / val hold no test image or patient;
    # CheXpert val = 5,000 seeded training images); release: the lists byte for byte, leaks
    # included (ecamp.data.split_modes; `ecamp splits` prints sizes and overlaps)
    split_mode: Literal["paper", "release"] = "paper"
    split_seed: int = 0  # CheXpert's validation draw in paper mode
    labels_from: Literal["list", "official"] = (
        "list"  # list (release lists' targets) | official (the dataset's files)
    )
    source_args: dict[str, Any] = field(default_factory=dict)  # extra adapter arguments
    # cls (multi-label): train / score only these labels.  Phantom seg / det: the lesion classes
    # whose pixels / boxes are the target (seg default: effusion, pneumothorax; det: all focal)
    labels: list[str] = field(default_factory=list)
    synthetic_n: int = 256  # phantom world size
    synthetic_size: int = 128  # phantom image side
    synthetic_seed: int = 0
    crop_scale: tuple[float, float] = (0.8, 1.0)  # random resized crop while training
    flip_prob: float = 0.5
    max_boxes: int = 16
    mean: float = 0.4721
    std: float = 0.3037
    num_workers: int = 0
    # a downstream image cache (`ecamp cache DATASET DIR`): images squashed to its side, masks
    # and boxes aligned; empty = decode every file every epoch
    cache: str = ""
    # >0 without a cache: decode each file to the square a cache of this side holds (the
    # same tensors as reading that cache); 0 = full resolution.  With a cache: 0 or its side
    cache_size: int = 0


@dataclass
class FinetuneConfig:
    """`ecamp finetune`: everything one downstream run needs."""

    task: Task = "cls"
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: TrainConfig = field(default_factory=_finetune_train)
    layer_decay: float = 0.75  # lr of block i scaled by layer_decay ** (depth - i); 1 = off
    steps: int = 0  # >0: train this many optimizer steps (sets train.epochs and train.max_steps)
    eval_every: int = 1  # validate every N epochs (and after the last)
    eval_batch_size: int = 64
    det_conf_threshold: float = 0.05  # detections kept before scoring
    det_protocol: Literal["mgca", "coco"] = (
        "mgca"  # mgca | coco (see ecamp.eval.metrics.detection_map)
    )
    # segmentation headline / best-checkpoint Dice: per_image (mean over images, the release's
    # get_dice) | global (pooled over all pixels); results.json reports both
    seg_dice: Literal["per_image", "global"] = "per_image"
    # validation metric that picks checkpoints/best.pt; empty: the headline metric.  Any name
    # eval.csv has for the task (det: map, map_coco / map_mgca; seg: dice, dice_per_image,
    # dice_global).  With few labels the MGCA mAP scores a handful of confident val images and
    # can pick a near-untrained state; map_coco scores every image
    select_metric: str = ""
    output: str = ""


def check_config(cfg: FinetuneConfig) -> None:
    """Fail early, naming the key, on values the stage cannot use."""
    # task, data.dataset, model.seg_decoder, ...: Literal fields, checked by from_dict at load;
    # this covers a config built in code
    check_choices(cfg)
    if cfg.model.linear_probe and cfg.task != "cls":
        log.warning(
            "linear probe on %s: the encoder stays frozen, only the decoder learns", cfg.task
        )
    if cfg.eval_every < 1:
        raise UserError(f"eval_every must be >= 1, got {cfg.eval_every}")
