"""Text decoder MLM loss and the MSCF fusion layer."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ecamp.config import model_config
from ecamp.models.fusion import MSCF
from ecamp.models.text_decoder import TextDecoder, bert_config, key_padding_mask


@pytest.fixture(scope="module")
def cfg():
    return dataclasses.replace(model_config("tiny"), text_dropout=0.0, vocab_size=50)


def _labels(n=2, L=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 50, (n, L), generator=g)
    lab = ids.clone()
    lab[torch.rand(n, L, generator=g) < 0.5] = -100
    return ids, lab, torch.rand(n, L, generator=g) + 0.5


def test_mlm_loss_matches_full_projection_reference(cfg):
    dec = TextDecoder(cfg).eval()
    ids, lab, w = _labels()
    h = torch.randn(2, 12, cfg.text_width)
    ce = F.cross_entropy(
        dec.mlm_head(h).reshape(-1, 50), lab.reshape(-1), reduction="none", ignore_index=-100
    )
    ref = (ce * w.reshape(-1)).sum() / (lab != -100).sum()
    assert torch.allclose(dec.mlm_loss(h, lab, w), ref, atol=1e-5)
    # unscored positions do not matter
    h2 = h.clone()
    h2[lab == -100] = torch.randn_like(h2[lab == -100])
    assert torch.allclose(dec.mlm_loss(h2, lab, w), dec.mlm_loss(h, lab, w))
    # release labels (every position) = the release's mean over all positions
    ce_all = F.cross_entropy(dec.mlm_head(h).reshape(-1, 50), ids.reshape(-1), reduction="none")
    assert torch.allclose(dec.mlm_loss(h, ids, w), (ce_all * w.reshape(-1)).mean(), atol=1e-5)
    # nothing scored -> zero, still differentiable
    none = dec.mlm_loss(h.requires_grad_(), torch.full_like(lab, -100), w)
    assert none == 0 and none.requires_grad


def test_padding_does_not_leak_into_real_tokens(cfg):
    dec = TextDecoder(cfg).eval()
    ids, _, _ = _labels()
    am = torch.ones_like(ids)
    am[:, 8:] = 0
    out1 = dec.encode(dec.embed(ids), key_padding_mask(am))
    ids2 = ids.clone()
    ids2[:, 8:] = 7
    out2 = dec.encode(dec.embed(ids2), key_padding_mask(am))
    assert torch.allclose(out1[:, :8], out2[:, :8], atol=1e-5)
    assert key_padding_mask(torch.ones_like(ids)) is None


def test_tied_embeddings_option():
    tied = TextDecoder(dataclasses.replace(model_config("tiny"), text_tie_embeddings=True))
    assert tied.mlm_head.predictions.decoder.weight is tied.embeddings.word_embeddings.weight
    untied = TextDecoder(model_config("tiny"))
    assert (
        untied.mlm_head.predictions.decoder.weight is not untied.embeddings.word_embeddings.weight
    )


@pytest.mark.parametrize(
    "use_global,use_local", [(True, True), (True, False), (False, True), (False, False)]
)
def test_fusion_paths_switch(cfg, use_global, use_local):
    torch.manual_seed(0)
    f = MSCF(bert_config(cfg), use_global, use_local).eval()
    names = {n.split(".")[0] for n, _ in f.named_parameters()}
    assert ("gap_mlp" in names) == use_global
    assert ("cross_self_attention" in names) == use_local
    assert ("out_layer" in names) == (use_global or use_local)
    text = torch.randn(2, 6, cfg.text_width)
    local, glob = torch.randn(2, 5, cfg.text_width), torch.randn(2, cfg.text_width)
    out = f(text, None, local if use_local else None, glob if use_global else None)
    assert out.shape == text.shape
    # the output depends on a vision input exactly when its path is on
    if use_local:
        assert not torch.allclose(f(text, None, local + 1, glob if use_global else None), out)
    if use_global:
        assert not torch.allclose(f(text, None, local if use_local else None, glob + 1), out)
