"""BERT-style text decoder with an MLM head (SPEC.md section 3).

Built from ``transformers``' BERT blocks, randomly initialised from :class:`ModelConfig`
(never from a hub).  Attention and dropout come from :mod:`ecamp.models.dropout`: fused
``sdpa`` attention, and dropout masks that are cheap on CPUs.  The MSCF fusion layer
(:mod:`ecamp.models.fusion`) runs between :meth:`TextDecoder.embed` and
:meth:`TextDecoder.encode`; :class:`~ecamp.models.ecamp.ECAMPModel` wires them.

The MLM loss projects to the vocabulary only at the positions that are scored
(label != -100 and weight != 0): with a 30k vocabulary that projection is the largest
single matmul of the text side, and the release computed it at every position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, BertConfig
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertPredictionHeadTransform,
)

from ecamp.config import ModelConfig
from ecamp.models.cross_entropy import weighted_cross_entropy
from ecamp.models.dropout import bert_attention, replace_dropout

IGNORE_INDEX = -100
ATTENTION = "ecamp"  # transformers' name for :func:`ecamp.models.dropout.bert_attention`


def register_attention() -> str:
    """Register :func:`~ecamp.models.dropout.bert_attention` in transformers' (process-wide)
    attention registry under :data:`ATTENTION`, and return that name.

    Called when a config that names it is built (:func:`bert_config`), never on import, so
    importing ecamp leaves transformers' registry alone.  Idempotent.
    """
    if AttentionInterface._global_mapping.get(ATTENTION) is not bert_attention:
        AttentionInterface.register(ATTENTION, bert_attention)
    return ATTENTION


def bert_config(cfg: ModelConfig) -> BertConfig:
    """The BERT configuration of the text decoder (release: 6 layers, 768 wide, 6 heads);
    registers its attention function (:func:`register_attention`)."""
    register_attention()
    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.text_width,
        num_hidden_layers=cfg.text_depth,
        num_attention_heads=cfg.text_heads,
        intermediate_size=cfg.text_ffn,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.text_dropout,
        attention_probs_dropout_prob=cfg.text_dropout,
        max_position_embeddings=cfg.max_text_len,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=cfg.pad_token_id,
        attn_implementation=ATTENTION,  # type: ignore[call-arg]
    )


class LMPrediction(nn.Module):
    """``transform`` (dense, GELU, LayerNorm) then ``decoder`` (to the vocabulary) + ``bias``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(h), self.decoder.weight, self.bias)


class MLMHead(nn.Module):
    """Named like BERT's ``cls`` head (``predictions.*``) so release weights map one to one."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = LMPrediction(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.predictions(h)


def key_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) 1/0 mask -> (B, 1, 1, L) bool for sdpa, or None when nothing is padded.

    The first token always stays visible so an all-padding row never yields NaNs.
    """
    if attention_mask is None:
        return None
    keep = attention_mask.bool()
    if bool(keep.all()):
        return None  # lets sdpa pick its fastest kernel
    keep = keep.clone()
    keep[:, 0] = True
    return keep[:, None, None, :]


class TextDecoder(nn.Module):
    """BERT embeddings + layers + MLM head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = bert_config(cfg)
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        self.mlm_head = MLMHead(self.config)
        replace_dropout(self)
        if cfg.text_tie_embeddings:
            self.mlm_head.predictions.decoder.weight = self.embeddings.word_embeddings.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token + position + type embeddings, LayerNorm, dropout: (B, L, W)."""
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"text of {input_ids.shape[1]} tokens is longer than max_text_len="
                f"{self.config.max_position_embeddings}"
            )
        return self.embeddings(input_ids=input_ids)

    def encode(self, h: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Run the BERT layers; ``key_mask`` from :func:`key_padding_mask`."""
        return self.encoder(h, attention_mask=key_mask).last_hidden_state

    def mlm_loss(
        self, h: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Weighted token cross-entropy, normalised by the number of labelled positions.

        Positions with label -100 are not scored.  ``weights`` (B, L) scale each token's
        loss (re-balance); with all weights 1 this is the usual masked-token mean.  When
        labels cover every position (the release's labels) the normaliser is B*L, which is
        exactly the release's ``mean`` over all positions.
        """
        flat_labels = labels.reshape(-1)
        labelled = flat_labels != IGNORE_INDEX
        if weights is None:
            flat_w = labelled.to(h.dtype if h.is_floating_point() else torch.float32)
        else:
            flat_w = weights.reshape(-1).float()
        idx = (labelled & (flat_w != 0)).nonzero().squeeze(1)
        n_labelled = labelled.sum().clamp_min(1)
        if idx.numel() == 0:
            return h.sum() * 0.0  # keeps the graph (and DDP) happy when nothing is scored
        logits = self.mlm_head(h.reshape(-1, h.shape[-1]).index_select(0, idx))
        coef = flat_w.index_select(0, idx) / n_labelled
        return weighted_cross_entropy(logits.float(), flat_labels.index_select(0, idx), coef)
