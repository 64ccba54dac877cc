"""Optimiser parameter groups: the one weight-decay rule, plain and with layer-wise lr decay.

No weight decay on biases, norms and other 1-D parameters, positional embeddings and special
tokens (``cls_token``, ``mask_token``, BERT's ``position_embeddings``), and on whatever the
model's timm-style ``no_weight_decay()`` names.  Pre-training, GLoRIA and the downstream heads
all use :func:`skips_weight_decay`, so a parameter decays or not the same way in every stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ecamp.errors import UserError

NO_DECAY_NAMES = ("pos_embed", "token", "position_embedding")


def model_no_decay_names(model: nn.Module) -> set[str]:
    """The full parameter names ``model.no_weight_decay()`` lists (timm's convention), if any."""
    named = getattr(model, "no_weight_decay", None)
    return set(named()) if callable(named) else set()


def skips_weight_decay(name: str, param: nn.Parameter, extra: Iterable[str] = ()) -> bool:
    """Whether ``param`` (called ``name`` in its model) is kept out of weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or name in set(extra) or any(k in leaf for k in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed, and not decayed by :func:`skips_weight_decay`."""
    skip = model_no_decay_names(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if skips_weight_decay(name, p, skip) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings, i+1 for block i, num_layers+1 for everything above the blocks."""
    if name.startswith("encoder."):
        rest = name[len("encoder.") :]
        if rest.startswith(("cls_token", "pos_embed", "patch_embed", "reg_token", "mask_token")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return num_layers + 1


def param_groups_lrd(
    model: nn.Module, lr: float, weight_decay: float = 0.05, layer_decay: float = 0.75
) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise lr decay (BEiT / MAE fine-tuning).

    ``model.encoder`` is the ViT; a parameter in block i gets ``lr * layer_decay ** (L + 1 - (i + 1))``
    (embeddings the smallest, the task head ``lr``).  Weight decay follows
    :func:`skips_weight_decay`.  Each group carries ``lr_scale`` too, for schedulers that rescale.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "blocks"):
        raise UserError("param_groups_lrd needs a model with a ViT `.encoder` (with .blocks)")
    num_layers = len(encoder.blocks)
    skip = model_no_decay_names(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = skips_weight_decay(name, p, skip)
        lid = _layer_id(name, num_layers)
        scale = layer_decay ** (num_layers + 1 - lid)
        g = groups.setdefault(
            (lid, no_decay),
            {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr": lr * scale,
                "lr_scale": scale,
            },
        )
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]
