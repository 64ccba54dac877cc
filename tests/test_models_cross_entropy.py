"""The one-buffer weighted cross-entropy equals F.cross_entropy in value and gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ecamp.models.cross_entropy import weighted_cross_entropy


def _reference(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (F.cross_entropy(x, t, reduction="none") * c).sum()


def test_value_and_gradient_match_cross_entropy():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(9, 37, generator=g) * 4).double().requires_grad_()
    t = torch.randint(0, 37, (9,), generator=g)
    t[3] = t[2]  # a repeated target
    c = torch.rand(9, generator=g).double() / 9
    c[4] = 0.0  # a zero weight contributes nothing
    ours = weighted_cross_entropy(x, t, c)
    (gx,) = torch.autograd.grad(3.0 * ours, x)
    ref = _reference(x, t, c)
    (rx,) = torch.autograd.grad(3.0 * ref, x)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    assert torch.allclose(gx, rx, rtol=0, atol=1e-12)
    assert gx[4].abs().max() == 0


def test_large_logits_are_stable_and_no_grad_path_agrees():
    x = torch.tensor([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]], requires_grad=True)
    t = torch.tensor([0, 2])
    c = torch.tensor([0.5, 0.5])
    loss = weighted_cross_entropy(x, t, c)
    assert torch.isfinite(loss)
    assert abs(float(loss.detach()) - 0.5 * float(torch.log(torch.tensor(3.0)))) < 1e-5
    with torch.no_grad():
        assert torch.allclose(weighted_cross_entropy(x, t, c), loss.detach())
