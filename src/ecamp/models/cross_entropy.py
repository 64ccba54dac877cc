"""Weighted token cross-entropy over a large vocabulary in one buffer (the MLM loss).

``sum_i c_i * CE(logits_i, target_i)`` with its gradient ``c_i * (softmax_i - onehot_i)``
computed in the forward pass, in place in the one (N, V) buffer that holds the softmax.
``F.cross_entropy`` then ``backward`` touches four such buffers (the log-softmax it saves, the
zero-filled gradient of the NLL, the gradient of the log-softmax, plus the logits): with the
release's 30,000-word vocabulary and ~770 scored tokens each is 93 MB, and on a 2-core CPU
filling and passing over them was about 10% of a release-size fp32 pre-training step
(``benchmarks/pretrain_step.py --profile``).  Same loss and gradient up to float rounding;
the peak memory is lower (one buffer is kept for backward instead of the log-softmax, and
the others are never made).
"""

from __future__ import annotations

from typing import Any

import torch


class _WeightedCE(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: torch.Tensor, target: torch.Tensor, coef: torch.Tensor
    ) -> torch.Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        m = logits.amax(dim=1, keepdim=True)
        p = torch.sub(logits, m).exp_()
        s = p.sum(dim=1, keepdim=True)
        lse = m.squeeze(1) + s.squeeze(1).log()
        loss = (coef * (lse - logits[rows, target])).sum()
        # p becomes the gradient: coef * softmax, minus coef at the target
        p.mul_(coef.unsqueeze(1) / s)
        p.index_put_((rows, target), -coef, accumulate=True)
        ctx.save_for_backward(p)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        # the buffer is this graph's own and backward runs once: scale it in place
        return grad.mul_(grad_out), None, None


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, coef: torch.Tensor
) -> torch.Tensor:
    """``sum(coef * cross_entropy(logits, target, reduction="none"))`` for (N, V) fp32 logits.

    ``coef`` (N,) is not differentiated (loss weights / normaliser).  Without autograd (no
    grad mode or ``logits`` needs no gradient) this is plain ``F.cross_entropy``.
    """
    coef = coef.to(logits.dtype)
    if not (torch.is_grad_enabled() and logits.requires_grad):
        ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        return (ce * coef).sum()
    return _WeightedCE.apply(logits, target, coef.detach())
