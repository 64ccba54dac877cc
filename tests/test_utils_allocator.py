"""glibc keeps freed memory after keep_freed_memory(): re-allocating does not page-fault."""

from __future__ import annotations

import ctypes
import resource
import sys

import pytest
import torch

from ecamp.config import TrainConfig
from ecamp.train.optimizer import build_optimizer
from ecamp.utils.allocator import keep_freed_memory


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_ssize_t]
    return libc


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"
)
def test_large_blocks_come_from_the_heap_and_are_reused():
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc")
    libc = _libc()
    # 64 MiB is above glibc's largest default mmap threshold (32 MiB): untuned, it is a fresh
    # mmap far above the heap's break, and freeing it unmaps it (16,384 faults a round)
    n = 64 << 20
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    assert p < libc.sbrk(0), "the block was mmapped, not taken from the heap"
    libc.free(p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    q = libc.malloc(n)
    ctypes.memset(q, 2, n)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(q)
    assert faults < 1000, faults
    assert keep_freed_memory()  # idempotent


def test_optimizer_is_fused_on_cpu():
    p = torch.nn.Parameter(torch.randn(4))
    for name in ("adamw", "sgd"):
        opt = build_optimizer(TrainConfig(optimizer=name), [{"params": [p]}], torch.device("cpu"))
        assert opt.defaults["fused"] is True
