"""Learning-rate schedule: linear warm-up, then half a cosine down to ``min_lr``.

Values are a pure function of the optimizer step, so resuming needs only the step.
Warm-up follows MAE: the lr of step ``s`` (0-based) is ``lr * s / warmup`` while
``s < warmup``.  The cosine runs to its horizon, ``train.schedule_epochs`` (default: the
run's own length); the release stops at 115-120 of 200 horizon epochs, so its last lr is
far from ``min_lr``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ecamp.errors import UserError


def cosine_lr(
    step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> float:
    """The lr used by optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * step / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_horizon(cfg: Any, steps_per_epoch: int) -> int:
    """Optimizer steps of the cosine horizon: ``schedule_epochs`` (or ``epochs`` when 0)
    epochs of ``steps_per_epoch``.  ``cfg`` is a :class:`ecamp.config.TrainConfig`."""
    horizon = float(cfg.schedule_epochs) or float(cfg.epochs)
    if horizon < cfg.epochs:
        raise UserError(
            f"train.schedule_epochs={cfg.schedule_epochs} is shorter than train.epochs="
            f"{cfg.epochs}: the lr would sit at min_lr for the last epochs (0 = epochs)"
        )
    return max(1, round(horizon * steps_per_epoch))


class WarmupCosine:
    """Sets every param group's lr before each optimizer step.

    A group's lr is ``group['base_lr'] * cosine_lr(step) / base_lr``, so groups with their
    own base lr (layer decay, a faster head) follow the same curve shape.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        min_lr: float,
        warmup_steps: int,
        total_steps: int,
    ) -> None:
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.min_lr = float(min_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(max(0, warmup_steps), self.total_steps))
        self.last_step = -1
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g.get("lr", self.base_lr))

    def lr_at(self, step: int) -> float:
        """The headline lr (``base_lr`` scale) at ``step``."""
        return cosine_lr(step, self.base_lr, self.min_lr, self.warmup_steps, self.total_steps)

    def apply(self, step: int) -> float:
        """Set the lrs for optimizer step ``step``; returns the headline lr."""
        lr = self.lr_at(step)
        scale = lr / self.base_lr if self.base_lr > 0 else 0.0
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * scale
        self.last_step = step
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "base_lr": self.base_lr,
            "min_lr": self.min_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the curve's shape comes from the current config; only the position is restored
        self.last_step = int(state.get("last_step", -1))


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: Any, steps_per_epoch: int
) -> WarmupCosine:
    """The run's :class:`WarmupCosine`: warm-up of ``warmup_steps`` (or ``warmup_epochs``
    epochs when 0) and the cosine to :func:`schedule_horizon`.  ``cfg`` is a
    :class:`ecamp.config.TrainConfig`."""
    warmup = (
        cfg.warmup_steps if cfg.warmup_steps > 0 else round(cfg.warmup_epochs * steps_per_epoch)
    )
    return WarmupCosine(
        optimizer, cfg.lr, cfg.min_lr, warmup, schedule_horizon(cfg, steps_per_epoch)
    )
