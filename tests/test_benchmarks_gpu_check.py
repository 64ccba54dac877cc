"""The GPU check's batch search stops at the first out-of-memory and keeps the last fit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _gpu_check():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("gpu_check_bench", BENCH / "gpu_check.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def test_batch_search_recovers_from_out_of_memory():
    gc = _gpu_check()
    best, tries, built = gc.search_batch("tiny", torch.device("cpu"), "fp32", 1, 8, 2)
    assert best == 2
    assert tries == [
        {"batch": 1, "fits": True},
        {"batch": 2, "fits": True},
        {"batch": 4, "fits": False},
    ]
    # the model is still usable after the failed try (no half-applied step left behind)
    assert all(p.grad is None for p in built[1].parameters())


def test_out_of_memory_is_recognised_and_other_errors_are_not():
    gc = _gpu_check()
    assert gc.is_oom(torch.OutOfMemoryError("x"))
    assert gc.is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not gc.is_oom(RuntimeError("shape mismatch"))
