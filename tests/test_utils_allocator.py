"""glibc keeps freed memory after keep_freed_memory(): re-allocating does not page-fault."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from ecamp.config import TrainConfig
from ecamp.train.loop import build_optimizer
from ecamp.utils.allocator import keep_freed_memory


def _faults_per_reallocation(n_bytes: int, rounds: int = 6) -> list[int]:
    """Minor page faults of each round of allocating, touching and freeing n_bytes."""
    faults = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.empty(n_bytes // 4)
        t.fill_(1.0)
        del t
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"
)
def test_reallocated_blocks_do_not_page_fault():
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc")
    # 64 MiB is above glibc's largest default mmap threshold (32 MiB): without the tuning
    # every round maps fresh pages (16,384 faults a round).  With it, a round may still have
    # to grow the heap once (where earlier tests left it fragmented), then blocks are reused.
    faults = _faults_per_reallocation(64 << 20)
    assert sorted(faults)[len(faults) // 2] < 1000, faults
    assert keep_freed_memory()  # idempotent


def test_optimizer_is_fused_on_cpu():
    p = torch.nn.Parameter(torch.randn(4))
    for name in ("adamw", "sgd"):
        opt = build_optimizer(TrainConfig(optimizer=name), [{"params": [p]}], torch.device("cpu"))
        assert opt.defaults["fused"] is True
