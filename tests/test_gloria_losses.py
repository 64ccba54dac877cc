"""GLoRIA's losses and attention: minimal for aligned pairs, batched masking, both backbones."""

from __future__ import annotations

import itertools

import pytest
import torch

from ecamp.models.gloria import (
    GLoRIA,
    aggregate_words,
    global_loss,
    gloria_config,
    local_loss,
    local_scores,
    word_region_attention,
)

G1, G2, G3 = 4.0, 5.0, 10.0


def _constructed(b: int = 4, m: int = 6, p: int = 8):
    """Image t has its 'lesion' feature e_t in region t; text t says word e_t plus a filler."""
    eye = torch.eye(p)
    background = torch.zeros(p)
    background[-1] = 1.0
    regions = background.repeat(b, m, 1)
    for t in range(b):
        regions[t, t] = eye[t]
    words = torch.stack([torch.stack([eye[t], background, torch.zeros(p)]) for t in range(b)])
    mask = torch.tensor([[True, True, False]] * b)  # third word is padding
    return regions, words, mask


def test_global_loss_is_minimal_for_aligned_pairs():
    img = torch.eye(4, 6)
    losses = {
        perm: float(global_loss(img, img[list(perm)], G3))
        for perm in itertools.permutations(range(4))
    }
    best = min(losses, key=losses.get)
    assert best == (0, 1, 2, 3)
    assert losses[best] < 1e-3 < min(v for k, v in losses.items() if k != best)


@pytest.mark.parametrize("mode", ["paper", "released"])
def test_local_loss_is_minimal_for_aligned_pairs(mode):
    regions, words, mask = _constructed()
    losses = {}
    for perm in itertools.permutations(range(4)):
        idx = list(perm)
        losses[perm] = float(local_loss(regions, words[idx], mask[idx], G1, G2, G3, mode))
    best = min(losses, key=losses.get)
    assert best == (0, 1, 2, 3)
    assert losses[best] < min(v for k, v in losses.items() if k != best) - 1.0


def test_attention_finds_the_matching_region_and_rows_sum_to_one():
    regions, words, mask = _constructed()
    attn = word_region_attention(words, regions, mask, G1, "paper")  # (Bt, Bv, W, M)
    assert attn.shape == (4, 4, 3, 6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(4, 4, 3))
    for t in range(4):
        assert int(attn[t, t, 0].argmax()) == t  # word e_t looks at region t of image t


def test_padded_words_do_not_change_scores():
    regions, words, mask = _constructed()
    noisy = words.clone()
    noisy[:, 2] = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) * 5
    a = local_scores(words, regions, mask, G1, G2)
    b = local_scores(noisy, regions, mask, G1, G2)
    torch.testing.assert_close(a, b)
    none = local_scores(words, regions, torch.zeros_like(mask), G1, G2)
    assert torch.all(none == 0)  # texts without scored words carry no local signal


def test_aggregate_words_sums_pieces_and_drops_unscored_tokens():
    tokens = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2)
    index = torch.tensor([[-1, 0, 0, 1, -1, -1]])
    out = aggregate_words(tokens, index, 2)
    torch.testing.assert_close(out, torch.tensor([[[2.0 + 4.0, 3.0 + 5.0], [6.0, 7.0]]]))


def _batch(b: int, size: int, n_tokens: int = 7):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (b, n_tokens), generator=g)
    index = torch.tensor([[-1, 0, 1, 1, 2, -1, -1]]).repeat(b, 1)
    return {
        "image": torch.randn(b, 3, size, size, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "word_index": index,
        "word_mask": torch.ones(b, 3, dtype=torch.bool),
    }


@pytest.mark.parametrize("backbone", ["vit", "resnet50"])
def test_model_trains_and_maps_cover_the_region_grid(backbone):
    torch.manual_seed(0)
    cfg = gloria_config("tiny", backbone=backbone, img_size=64, vocab_size=128)
    model = GLoRIA(cfg)
    batch = _batch(3, 64)
    out = model(batch)
    assert set(out) == {"loss", "global", "local"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    first = next(p for n, p in model.image_encoder.backbone.named_parameters() if p.ndim == 4)
    for p in (
        first,  # the stem: gradients reach the whole image encoder
        model.image_encoder.local_proj.weight,
        model.image_encoder.global_proj.weight,
        model.text_encoder.bert.embeddings.word_embeddings.weight,
        model.text_encoder.word_proj.weight,
        model.text_encoder.sent_proj.weight,
    ):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    maps = model.attention_maps(batch)
    grid = 8 if backbone == "vit" else 4  # patch 8 / stride-16 stage at 64 px
    assert maps.shape == (3, 3, grid, grid)
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(3, 3))
