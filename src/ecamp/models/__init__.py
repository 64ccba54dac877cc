"""ecamp.models: the networks, one factory (:func:`create_model` / :func:`create_encoder`) and
one weights-only checkpoint reader (:func:`read_state_dict`).

The names are resolved on first use, so ``import ecamp.models`` stays free of torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "create_model": "ecamp.models.factory",
    "create_encoder": "ecamp.models.factory",
    "read_state_dict": "ecamp.models.checkpoints",
    "read_checkpoint": "ecamp.models.checkpoints",
    "strip_prefixes": "ecamp.models.checkpoints",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ecamp.models' has no attribute {name!r}")
