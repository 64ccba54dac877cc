"""Dropout and attention for the text side that stay cheap on CPUs (BERT dropout, SPEC.md section 3).

The release's text decoder and MSCF layer use dropout 0.1 on hidden states and on attention
probabilities.  On a CPU, torch builds each dropout mask from one 32-bit Mersenne-Twister draw
per element, and attention dropout forces ``scaled_dot_product_attention`` onto its unfused math
path anyway; at the release's size that is about 10% of a pre-training step
(``benchmarks/pretrain_step.py``).  Here a mask element takes 16 bits of a 64-bit draw (four
elements per draw): an element is dropped with probability ``p`` rounded to a multiple of
2**-16 (0.1 becomes 0.100006) and kept values are scaled by ``1 / (1 - that p)``, so the
expectation stays exact.  Masks come from torch's global generator, so seeding and the training
loop's RNG checkpointing cover them.

On CUDA torch's own dropout is fused (Philox inside the kernel, and inside flash attention), so
there these functions call it unchanged.  Without dropout (``eval()`` or ``p = 0``) attention is
always the fused ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # one mask element per 16 bits
_I16_MIN = torch.iinfo(torch.int16).min
_I64 = torch.iinfo(torch.int64)


def quantised_p(p: float) -> float:
    """The drop probability the masks really use: ``p`` rounded to a multiple of 2**-16."""
    return round(p * _LEVELS) / _LEVELS


def keep_mask(shape: Sequence[int], p: float, device: torch.device) -> torch.Tensor:
    """Bool tensor of ``shape``, each element False (dropped) with probability ``quantised_p(p)``.

    Four independent 16-bit integers are read from each uniform 64-bit draw.  (``randint``'s
    upper bound is exclusive, so one 64-bit pattern in 2**64 never occurs: no measurable bias.)
    """
    n = math.prod(shape)
    words = torch.randint(_I64.min, _I64.max, ((n + 3) // 4,), dtype=torch.int64, device=device)
    halves = words.view(torch.int16)[:n]
    return (halves >= _I16_MIN + round(p * _LEVELS)).view(tuple(shape))


def torch_fuses_dropout(device: torch.device) -> bool:
    """Whether torch's own dropout is a fused, cheap kernel on ``device`` (CUDA: Philox)."""
    return device.type == "cuda"


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout like ``F.dropout``, with :func:`keep_mask` masks off CUDA."""
    if not training or p == 0.0:
        return x
    if torch_fuses_dropout(x.device):
        return F.dropout(x, p, training=True)
    q = quantised_p(p)
    if q >= 1.0:
        return x * 0.0
    if q == 0.0:
        return x
    # the bool mask promotes to x's dtype and the Python scale keeps it (bf16 stays bf16)
    return x * keep_mask(x.shape, p, x.device) * (1.0 / (1.0 - q))


class Dropout(nn.Module):
    """Drop-in replacement of ``nn.Dropout`` that uses :func:`dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def replace_dropout(module: nn.Module) -> nn.Module:
    """Swap every ``nn.Dropout`` inside ``module`` for :class:`Dropout` (same ``p``); returns it.

    Dropout layers hold no weights, so state dicts are unchanged.
    """
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(parent, name, Dropout(child.p))
    return module


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Multi-head attention (B, H, Lq, D): ``softmax(q k^T * scale + mask)`` with dropout, @ ``v``.

    ``key_mask`` is bool (True = attend) or additive float, broadcastable to (B, H, Lq, Lk).
    Fused ``scaled_dot_product_attention`` whenever there is no dropout or the device fuses it;
    otherwise the math form (which is what sdpa itself runs on a CPU with dropout), with the
    probabilities in fp32 and a :func:`keep_mask` dropout.
    """
    if dropout_p == 0.0 or torch_fuses_dropout(q.device):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=dropout_p, scale=scale
        )
    s = scale if scale is not None else q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-2, -1)) * s
    if key_mask is not None:
        if key_mask.dtype == torch.bool:
            scores = scores.masked_fill(~key_mask, float("-inf"))
        else:
            scores = scores + key_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    return torch.matmul(dropout(probs, dropout_p).to(v.dtype), v)


def bert_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """:func:`attention` with the signature of a ``transformers`` attention function."""
    out = attention(query, key, value, attention_mask, dropout, scaling)
    return out.transpose(1, 2).contiguous(), None
