"""The generic training loop's config (every stage that trains uses it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# what ecamp.train.precision.resolve_precision accepts: auto | bf16 | fp16 | fp32 and their aliases
Precision = Literal["auto", "bf16", "bfloat16", "fp16", "16", "float16", "fp32", "32", "float32"]


@dataclass
class TrainConfig:
    """The generic training loop (used by every stage that trains)."""

    epochs: int = 115
    max_steps: int = 0  # >0 stops after this many optimizer steps
    batch_size: int = 256  # per process
    accum_steps: int = 1
    lr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    optimizer: Literal["adamw", "sgd"] = "adamw"  # adamw (betas above) | sgd (momentum below)
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 40.0
    # cosine horizon in epochs: the lr reaches min_lr there.  0 = ``epochs``; the release
    # trains 115-120 epochs on a 200-epoch horizon (util/lr_sched.py, --max_epoch 200)
    schedule_epochs: float = 0.0
    warmup_steps: int = 0  # >0 overrides warmup_epochs
    clip_grad: float = 0.0  # 0 disables clipping
    precision: Precision = "auto"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 0  # optimizer steps between checkpoints; 0 = each epoch end only
    keep_last: int = 2
    resume: str = "auto"  # auto (latest in output dir) | never | a checkpoint path
    progress: bool = True
    tensorboard: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    compile: bool = False
    drop_last: bool = True  # skip the epoch's tail that does not fill a global batch
    # batch items of similar length together (datasets with item lengths: the student's
    # pairs); with random batches half of a student batch was padding
    group_by_length: bool = False
    find_unused_parameters: bool = False  # DDP: set when a config leaves some parameters unused
