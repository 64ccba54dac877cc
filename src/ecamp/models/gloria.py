"""GLoRIA: global + local image-text contrastive learning (Huang et al., ICCV 2021).

ECAMP re-trains GLoRIA on the distilled reports (SPEC.md section 4) only to read out its
word-to-region attention: the map an entity word ("effusion") puts over the image regions
guides the super-resolution loss of pre-training.

The model, top to bottom as in the paper:

* image encoder -> local region features ``v`` (B, M, P) and a global feature (B, P):
  a ViT (:class:`ecamp.models.vit.MAEEncoder`; patch tokens are the regions, the class token
  the global feature) or any timm CNN (``backbone="resnet50"``, the paper's choice: the
  stride-16 stage gives the regions, the pooled last stage the global feature);
* text encoder: BERT (``transformers.BertModel`` built from a config, random init) ->
  word features ``l`` (B, W, P) (word-pieces of one word summed, as GLoRIA does) and a
  sentence feature;
* global loss: symmetric InfoNCE over the cosine similarities of the global features;
* local loss: every word attends over the regions of an image,
  ``a_ij = softmax_j(gamma1 * s_ij)``; its attended context ``c_i = sum_j a_ij v_j`` is
  compared to the word, ``R_i = cos(c_i, l_i)``; the image-text score aggregates the words,
  ``Z = log sum_i exp(gamma2 * R_i)``; symmetric InfoNCE over ``gamma3 * Z``.

Temperatures (GLoRIA paper, section 4.1 / its released config ``temp1, temp2, temp3``):
``gamma1 = 4.0`` (attention), ``gamma2 = 5.0`` (word aggregation), ``gamma3 = 10.0``
(scale of the global and local logits).  The paper writes them as temperatures; the released
implementation multiplies similarities by them, and so do we (dividing a cosine by 10 would
make every softmax nearly uniform).  With ``attention="paper"`` the attention logits are
``gamma1`` x a cosine, so ``gamma1 = 4`` bounds them to +-4: a tiny model trained from scratch
on the phantom world keeps nearly flat maps (mean entropy 5.2 of at most 5.5 nats on a
16 x 16 grid); ``model.gamma1=10`` sharpens them (4.4 nats) and localises better
(benchmarks/attention_localization.py).  The default stays GLoRIA's 4.0.

Attention (``attention`` option): ``"paper"`` takes ``s_ij`` as the cosine of word i and
region j (features normalised first, so gamma1 acts on a bounded score); ``"released"``
reproduces the released code (inherited from AttnGAN's DAMSM): raw dot products, softmax over
the words for each region first, then ``softmax_j(gamma1 * .)`` over the regions.

Global features: GLoRIA starts from pre-trained encoders and takes the [CLS] / pooled
outputs; we never load hub weights, and from a random init the class tokens of all inputs
are nearly identical (cosines ~1, no contrastive gradient), so the defaults pool the means
of the patch tokens / scored tokens instead (``global_pool=token``, ``text_pool=cls`` give
GLoRIA's choice).

Every pair (text t, image v) of a batch is scored at once: the attention tensor is
(B_text, B_image, W, M), padded words are masked, no Python loop over samples or words.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecamp.config.gloria import GLORIA_PRESETS, GloriaConfig, gloria_config  # noqa: F401
from ecamp.errors import UserError

# --------------------------------------------------------------------------- encoders


class ImageEncoder(nn.Module):
    """Image -> (regions (B, M, P), global (B, P), grid (h, w)), both projected to P."""

    def __init__(self, cfg: GloriaConfig) -> None:
        super().__init__()
        self.kind = "vit" if cfg.backbone == "vit" else "cnn"
        self.global_pool = cfg.global_pool
        if self.kind == "vit":
            from ecamp.config import model_config
            from ecamp.models.vit import MAEEncoder

            vit_cfg = model_config(
                "paper",
                img_size=cfg.img_size,
                patch_size=cfg.patch_size,
                in_chans=cfg.in_chans,
                embed_dim=cfg.embed_dim,
                depth=cfg.depth,
                num_heads=cfg.num_heads,
            )
            self.backbone: nn.Module = MAEEncoder(vit_cfg)
            local_dim = global_dim = cfg.embed_dim
        else:
            import timm

            try:
                self.backbone = timm.create_model(
                    cfg.backbone,
                    pretrained=False,
                    features_only=True,
                    in_chans=cfg.in_chans,
                    out_indices=(cfg.cnn_local_stage, -1),
                )
            except (RuntimeError, ValueError) as e:
                raise UserError(f"model.backbone={cfg.backbone!r}: not a timm CNN ({e})") from None
            chans = self.backbone.feature_info.channels()  # type: ignore[union-attr,operator]
            local_dim, global_dim = chans[0], chans[-1]
        self.local_proj = nn.Linear(local_dim, cfg.proj_dim)
        self.global_proj = nn.Linear(global_dim, cfg.proj_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        if self.kind == "vit":
            tokens = self.backbone.forward_features(x)  # type: ignore[operator]  # (B, 1+N, D)
            patches = tokens[:, 1:]
            g = int(round(patches.shape[1] ** 0.5))
            pooled = tokens[:, 0] if self.global_pool == "token" else patches.mean(dim=1)
            return self.local_proj(patches), self.global_proj(pooled), (g, g)
        local, last = self.backbone(x)
        h, w = local.shape[-2:]
        regions = local.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return self.local_proj(regions), self.global_proj(last.mean(dim=(2, 3))), (h, w)


class TextEncoder(nn.Module):
    """BERT -> (words (B, W, P) summed over their word-pieces, sentence (B, P))."""

    def __init__(self, cfg: GloriaConfig) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        bert_cfg = BertConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.text_width,
            num_hidden_layers=cfg.text_depth,
            num_attention_heads=cfg.text_heads,
            intermediate_size=cfg.text_ffn,
            max_position_embeddings=cfg.max_text_len,
            hidden_dropout_prob=cfg.text_dropout,
            attention_probs_dropout_prob=cfg.text_dropout,
            pad_token_id=cfg.pad_token_id,
        )
        self.bert = BertModel(bert_cfg, add_pooling_layer=False)
        self.word_proj = nn.Linear(cfg.text_width, cfg.proj_dim)
        self.sent_proj = nn.Linear(cfg.text_width, cfg.proj_dim)
        self.pool = cfg.text_pool
        if self.pool not in ("mean", "cls"):
            raise UserError(f"model.text_pool={self.pool!r}: use 'mean' or 'cls'")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_index: torch.Tensor,
        n_words: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``word_index`` (B, L): the word of each token, -1 for tokens in no scored word."""
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        words = aggregate_words(h, word_index, n_words)
        if self.pool == "cls":
            sent = h[:, 0]
        else:  # mean over the scored tokens (all real tokens when a text has none)
            keep = (word_index >= 0) | (
                (word_index < 0).all(1, keepdim=True) & attention_mask.bool()
            )
            w = keep.to(h.dtype).unsqueeze(-1)
            sent = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        return self.word_proj(words), self.sent_proj(sent)


def aggregate_words(tokens: torch.Tensor, word_index: torch.Tensor, n_words: int) -> torch.Tensor:
    """Sum token features into word features: (B, L, D), (B, L) -> (B, n_words, D).

    Tokens with index -1 (special tokens, padding, punctuation) go to a spare slot that is
    dropped, so one ``scatter_add`` handles the whole batch.
    """
    b, _, d = tokens.shape
    idx = torch.where(word_index < 0, torch.full_like(word_index, n_words), word_index)
    out = tokens.new_zeros(b, n_words + 1, d)
    out.scatter_add_(1, idx.unsqueeze(-1).expand(-1, -1, d), tokens)
    return out[:, :n_words]


# --------------------------------------------------------------------------- losses


def word_region_attention(
    words: torch.Tensor,
    regions: torch.Tensor,
    word_mask: torch.Tensor,
    gamma1: float,
    mode: str = "paper",
) -> torch.Tensor:
    """Attention of every word of every text over the regions of every image.

    words (Bt, W, P), regions (Bv, M, P), word_mask (Bt, W) bool -> (Bt, Bv, W, M), each
    row a distribution over the M regions (see the module doc for ``mode``).
    """
    if mode == "paper":
        s = torch.einsum("twp,vmp->tvwm", F.normalize(words, dim=-1), F.normalize(regions, dim=-1))
        return torch.softmax(gamma1 * s, dim=-1)
    if mode == "released":
        s = torch.einsum("twp,vmp->tvwm", words, regions)
        s = s.masked_fill(~word_mask[:, None, :, None], float("-inf"))
        p = torch.softmax(s, dim=2).nan_to_num(0.0)  # over the words, for each region
        return torch.softmax(gamma1 * p, dim=-1)
    raise UserError(f"model.attention={mode!r}: use 'paper' or 'released'")


def local_scores(
    words: torch.Tensor,
    regions: torch.Tensor,
    word_mask: torch.Tensor,
    gamma1: float,
    gamma2: float,
    mode: str = "paper",
) -> torch.Tensor:
    """GLoRIA's local image-text score Z for every (text, image) pair: (Bt, Bv).

    Texts without any scored word get a score of 0 (they carry no local signal).
    """
    attn = word_region_attention(words, regions, word_mask, gamma1, mode)
    context = torch.einsum("tvwm,vmp->tvwp", attn, regions)
    r = F.cosine_similarity(context, words[:, None], dim=-1, eps=1e-6)  # (Bt, Bv, W)
    r = (gamma2 * r).masked_fill(~word_mask[:, None, :], float("-inf"))
    z = torch.logsumexp(r, dim=-1)
    return torch.where(torch.isfinite(z), z, torch.zeros_like(z))


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of matching image i to text i and text i to image i, summed (GLoRIA)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)


def global_loss(img_g: torch.Tensor, txt_g: torch.Tensor, gamma3: float) -> torch.Tensor:
    """Symmetric InfoNCE over ``gamma3`` x cosine of the global features (images as rows)."""
    logits = gamma3 * F.normalize(img_g, dim=-1) @ F.normalize(txt_g, dim=-1).t()
    return symmetric_infonce(logits)


def local_loss(
    regions: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    gamma1: float,
    gamma2: float,
    gamma3: float,
    mode: str = "paper",
) -> torch.Tensor:
    """Symmetric InfoNCE over ``gamma3`` x the local scores (images as rows)."""
    z = local_scores(words, regions, word_mask, gamma1, gamma2, mode)  # (Bt, Bv)
    return symmetric_infonce(gamma3 * z.t())


# --------------------------------------------------------------------------- model


class GLoRIA(nn.Module):
    """``model(batch) -> {loss, global, local}``; ``attention_maps`` reads the local attention.

    The batch: ``image`` (B, C, S, S), ``input_ids`` / ``attention_mask`` / ``word_index``
    (B, L), ``word_mask`` (B, W) bool.
    """

    def __init__(self, cfg: GloriaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoder(cfg)
        self.text_encoder = TextEncoder(cfg)

    def no_weight_decay(self) -> set[str]:
        return {"image_encoder.backbone.cls_token", "image_encoder.backbone.pos_embed"}

    def encode(
        self, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(regions, image global, words, sentence, grid) of a batch."""
        regions, img_g, grid = self.image_encoder(batch["image"])
        words, sent = self.text_encoder(
            batch["input_ids"],
            batch["attention_mask"],
            batch["word_index"],
            batch["word_mask"].shape[1],
        )
        return regions, img_g, words, sent, grid

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        regions, img_g, words, sent, _ = self.encode(batch)
        lg = global_loss(img_g.float(), sent.float(), cfg.gamma3)
        ll = local_loss(
            regions.float(),
            words.float(),
            batch["word_mask"],
            cfg.gamma1,
            cfg.gamma2,
            cfg.gamma3,
            cfg.attention,
        )
        return {
            "loss": cfg.global_weight * lg + cfg.local_weight * ll,
            "global": lg.detach(),
            "local": ll.detach(),
        }

    @torch.no_grad()
    def attention_maps(self, batch: dict[str, Any]) -> torch.Tensor:
        """Each text's word attention over its own image: (B, W, h, w), rows sum to 1.

        Padded words get all-zero maps.
        """
        regions, _, words, _, (h, w) = self.encode(batch)
        mask = batch["word_mask"]
        if self.cfg.attention == "paper":
            s = torch.einsum(
                "bwp,bmp->bwm",
                F.normalize(words.float(), dim=-1),
                F.normalize(regions.float(), dim=-1),
            )
            attn = torch.softmax(self.cfg.gamma1 * s, dim=-1)
        else:
            s = torch.einsum("bwp,bmp->bwm", words.float(), regions.float())
            s = s.masked_fill(~mask[:, :, None], float("-inf"))
            p = torch.softmax(s, dim=1).nan_to_num(0.0)
            attn = torch.softmax(self.cfg.gamma1 * p, dim=-1)
        attn = attn * mask[:, :, None]
        return attn.reshape(attn.shape[0], attn.shape[1], h, w)
