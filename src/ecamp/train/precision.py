"""Mixed precision of a training run: the autocast dtype, its autocast block and grad scaler."""

from __future__ import annotations

import torch

from ecamp.errors import UserError


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = full fp32) for ``train.precision`` on ``device``.

    ``auto`` never picks bf16 on a CPU; an explicit ``bf16`` on a CPU without bf16 instructions
    logs one warning with the measured slowdown (:mod:`ecamp.utils.cpu`).
    """
    p = (precision or "auto").lower()
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if p in ("fp32", "32", "float32"):
        return None
    if p in ("bf16", "bfloat16"):
        if device.type == "cpu":
            from ecamp.utils.cpu import warn_if_cpu_bf16_slow

            warn_if_cpu_bf16_slow(f"train.precision={precision}")
        return torch.bfloat16
    if p in ("fp16", "16", "float16"):
        if device.type != "cuda":
            raise UserError(
                f"train.precision=fp16 needs a CUDA device (training on {device}); use bf16 or fp32"
            )
        return torch.float16
    raise UserError(f"train.precision={precision!r}: choose auto, bf16, fp16 or fp32")


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """The forward pass's autocast block for ``amp_dtype`` (disabled for fp32)."""
    return torch.autocast(
        device.type,
        dtype=amp_dtype or torch.float32,
        enabled=amp_dtype is not None,
    )


def grad_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
