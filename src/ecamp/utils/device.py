"""The torch device a ``device`` setting names (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``),
and batches moved onto it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ecamp.errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK, else mps, else cpu; ``cuda`` -> cuda:LOCAL_RANK."""
    import torch

    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref == "cuda":
        pref = f"cuda:{local_rank}"
    try:
        device = torch.device(pref)
    except RuntimeError:
        raise UserError(
            f"train.device={pref!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"train.device={pref!r} but CUDA is not available here; use train.device=auto or cpu"
        )
    return device


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (inside dicts/lists/tuples/named tuples) to ``device``; everything else unchanged."""
    import torch

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return type(x)(*(move(v) for v in x))
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        return x

    return move(batch)
