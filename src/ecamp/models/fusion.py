"""Multi-scale context fusion, MSCF (SPEC.md section 5, paper section 3.4).

Before the text decoder's layers::

    h = LN(text + W_o SA(text))                       # self-attention over the text
    c = CA(h -> local vision tokens) + W_g global     # local and/or global vision context
    h = LN(h + W_c c)                                 # skipped when both paths are off
    out = LN(h + FFN(h))

``CA`` is a bare multi-head cross-attention (no output projection of its own: ``W_c``
projects the sum of both paths, as in the release).  Submodule names follow the
release's ``context_fusion_layer`` so its weights map one to one.  The global and
local paths can each be switched off (paper Table 4); a switched-off path has no
parameters at all.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput, BertSelfOutput

from ecamp.models.dropout import attention, replace_dropout


class MultiHeadAttention(nn.Module):
    """query/key/value projections + attention (:func:`ecamp.models.dropout.attention`)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, Lq, W) attends to context (B, Lk, W); key_mask (B, 1, 1, Lk) bool, True = attend."""
        b, lq, w = x.shape
        split = (b, -1, self.heads, w // self.heads)
        q = self.query(x).view(split).transpose(1, 2)
        k = self.key(context).view(split).transpose(1, 2)
        v = self.value(context).view(split).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        out = attention(q, k, v, key_mask, dropout_p=p)
        return out.transpose(1, 2).reshape(b, lq, w)

    def probabilities(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The attention weights of :meth:`forward` (no key mask): (B, heads, Lq, Lk), fp32."""
        b, lq, w = x.shape
        split = (b, -1, self.heads, w // self.heads)
        q = self.query(x).view(split).transpose(1, 2).float()
        k = self.key(context).view(split).transpose(1, 2).float()
        return torch.softmax(q @ k.transpose(-2, -1) * (w // self.heads) ** -0.5, dim=-1)


class SelfAttentionBlock(nn.Module):
    """BERT-style self-attention sub-layer: ``self`` (attention) + ``output`` (dense, residual LN)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = MultiHeadAttention(
            config.hidden_size, config.num_attention_heads, config.attention_probs_dropout_prob
        )
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, x, key_mask), x)


class MSCF(nn.Module):
    """Fuse local (cross-attention) and global (pooled, projected) vision context into text."""

    def __init__(self, config: BertConfig, use_global: bool = True, use_local: bool = True) -> None:
        super().__init__()
        self.use_global = use_global
        self.use_local = use_local
        w = config.hidden_size
        self.attention = SelfAttentionBlock(config)
        if use_local:
            self.cross_self_attention = MultiHeadAttention(
                w, config.num_attention_heads, config.attention_probs_dropout_prob
            )
        if use_global:
            self.gap_mlp = nn.Linear(w, w)
        if use_local or use_global:
            self.out_layer = BertSelfOutput(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)
        replace_dropout(self)

    def forward(
        self,
        text: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        local: torch.Tensor | None = None,
        global_feat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """text (B, L, W); local (B, N_vis, W) vision tokens; global_feat (B, W)."""
        h = self.attention(text, key_mask)
        context: torch.Tensor | None = None
        if self.use_local:
            if local is None:
                raise ValueError("MSCF has its local path on but got no local vision tokens")
            context = self.cross_self_attention(h, local)
        if self.use_global:
            if global_feat is None:
                raise ValueError("MSCF has its global path on but got no global vision feature")
            g = self.gap_mlp(global_feat).unsqueeze(1)
            context = g if context is None else context + g
        if context is not None:
            # a (B, 1, W) global-only context broadcasts over the text positions
            h = self.out_layer(context.expand_as(h), h)
        return self.output(self.intermediate(h), h)

    def local_attention(
        self, text: torch.Tensor, key_mask: torch.Tensor | None, local: torch.Tensor
    ) -> torch.Tensor:
        """The local path's cross-attention of every text token over the vision tokens:
        (B, heads, L, N_vis), rows sum to 1 (the paper's Figure 4 reads these)."""
        if not self.use_local:
            raise ValueError("MSCF has its local path off: there is no cross-attention to read")
        return self.cross_self_attention.probabilities(self.attention(text, key_mask), local)
