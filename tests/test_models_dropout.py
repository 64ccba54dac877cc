"""The text side's dropout masks and attention (ecamp.models.dropout)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertEncoder

from ecamp.config import model_config
from ecamp.models.dropout import (
    Dropout,
    attention,
    dropout,
    keep_mask,
    quantised_p,
    replace_dropout,
)
from ecamp.models.fusion import MSCF
from ecamp.models.text_decoder import TextDecoder, bert_config, key_padding_mask

CPU = torch.device("cpu")


def test_keep_mask_rate_and_independence():
    torch.manual_seed(0)
    m = keep_mask((1000, 1001), 0.1, CPU)  # odd size: the last 64-bit draw is used in part
    assert m.dtype == torch.bool and m.shape == (1000, 1001)
    rate = 1 - m.float().mean().item()
    assert abs(rate - quantised_p(0.1)) < 3e-3  # ~5 sigma at n = 1e6
    # the four 16-bit slices of each draw are independent: neighbours do not co-occur
    f = m.flatten()[: 1000 * 1000].float().view(-1, 4)
    corr = torch.corrcoef(f.T)
    assert (corr - torch.eye(4)).abs().max() < 0.01
    # the global generator drives the masks (seeded runs and exact resume reproduce them)
    torch.manual_seed(0)
    assert torch.equal(keep_mask((1000, 1001), 0.1, CPU), m)


def test_quantised_probability():
    assert quantised_p(0.1) == 6554 / 65536
    assert quantised_p(0.0) == 0.0 and quantised_p(1.0) == 1.0


def test_dropout_values_and_expectation():
    torch.manual_seed(1)
    x = torch.full((400, 500), 2.0)
    y = dropout(x, 0.25)
    q = quantised_p(0.25)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 2.0 / (1 - q)))
    assert abs(y.mean().item() - 2.0) < 0.02  # inverted dropout keeps the expectation
    assert dropout(x, 0.25, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.count_nonzero(dropout(x, 1.0)) == 0
    assert dropout(x.bfloat16(), 0.1).dtype == torch.bfloat16
    # gradients flow through kept elements only, with the same scale
    xr = torch.ones(50, 60, requires_grad=True)
    torch.manual_seed(2)
    dropout(xr, 0.5).sum().backward()
    torch.manual_seed(2)
    ref = keep_mask((50, 60), 0.5, CPU).float() * 2.0
    assert torch.equal(xr.grad, ref)


def test_dropout_module_replaces_nn_dropout():
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.3), nn.Sequential(nn.Dropout(0.2)))
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    replace_dropout(net)
    kinds = [type(m) for m in net.modules()]
    assert nn.Dropout not in kinds and kinds.count(Dropout) == 2
    assert [m.p for m in net.modules() if isinstance(m, Dropout)] == [0.3, 0.2]
    assert net.state_dict().keys() == sd.keys()
    with pytest.raises(ValueError):
        Dropout(1.5)


def _qkv(seed=0, b=2, h=3, lq=5, lk=7, d=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=g) for n in (lq, lk, lk))


@pytest.mark.parametrize("masked", [False, True])
def test_attention_math_path_equals_sdpa(masked):
    q, k, v = _qkv()
    mask = None
    if masked:
        mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
        mask[0, ..., 4:] = False
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # a probability that rounds to 0 takes the math path with a mask that keeps everything
    out = attention(q, k, v, mask, dropout_p=1e-9)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(attention(q, k, v, mask), ref)  # no dropout: sdpa itself


def test_attention_dropout_hits_the_probabilities():
    q, k, v = _qkv(1)
    torch.manual_seed(3)
    out = attention(q, k, v, dropout_p=0.5, scale=0.3)
    torch.manual_seed(3)
    keep = keep_mask((2, 3, 5, 7), 0.5, CPU)
    probs = torch.softmax(q @ k.transpose(-2, -1) * 0.3, dim=-1) * keep * 2.0
    assert torch.allclose(out, probs @ v, atol=1e-5)


def test_text_side_uses_ecamp_attention_and_dropout():
    cfg = dataclasses.replace(model_config("tiny"), vocab_size=50, text_dropout=0.1)
    dec = TextDecoder(cfg)
    fusion = MSCF(dec.config)
    for m in (dec, fusion):
        assert not any(type(x) is nn.Dropout for x in m.modules())
        assert any(isinstance(x, Dropout) and x.p == 0.1 for x in m.modules())
    # eval: identical to transformers' own sdpa BERT with the same weights
    ref_cfg = bert_config(cfg)
    ref_cfg._attn_implementation = "sdpa"
    ref = BertEncoder(ref_cfg)
    ref.load_state_dict(dec.encoder.state_dict())
    dec.eval()
    ref.eval()
    h = torch.randn(2, 12, cfg.text_width)
    am = torch.ones(2, 12, dtype=torch.long)
    am[1, 9:] = 0
    km = key_padding_mask(am)
    want = ref(h, attention_mask=km).last_hidden_state
    assert torch.allclose(dec.encode(h, km), want, atol=1e-5)
    # train: dropout is on, and seeded runs repeat exactly
    dec.train()
    torch.manual_seed(0)
    a = dec.encode(h, km)
    torch.manual_seed(0)
    assert torch.equal(dec.encode(h, km), a)
    assert not torch.allclose(a, want, atol=1e-3)
