"""The optimizer of a training run, built from ``train.optimizer`` and parameter groups."""

from __future__ import annotations

from typing import Any

import torch

from ecamp.config import TrainConfig
from ecamp.errors import UserError


def build_optimizer(
    cfg: TrainConfig, groups: list[dict[str, Any]], device: torch.device
) -> torch.optim.Optimizer:
    """AdamW or SGD over ``groups``, fused (one kernel for all parameters) where torch has it."""
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if device.type in ("cpu", "cuda"):
        kwargs["fused"] = True
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, betas=(cfg.betas[0], cfg.betas[1]), **kwargs)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, **kwargs)
    raise UserError(f"train.optimizer={cfg.optimizer!r}: choose adamw or sgd")
