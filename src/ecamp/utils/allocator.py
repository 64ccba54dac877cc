"""Let glibc keep freed host memory, so that CPU training steps stop page-faulting.

glibc gives every block above its mmap threshold (128 KiB at start, raised on the fly up to
32 MiB) fresh pages from the kernel and hands them back on ``free``.  A training step frees
and re-allocates its gradients and activations, so each step faults in every page anew: about
250,000 minor page faults (1 GB) and 13% of a release-size CPU pre-training step
(``benchmarks/pretrain_step.py --malloc default`` shows it).  Raising the mmap and trim
thresholds makes glibc reuse freed blocks instead; the peak resident memory stays the same.
Some faults remain (about 12,000 a step): torch's blocks are 64-byte aligned, and when small
allocations take a freed block's alignment slack, the next block of that size no longer fits
and the heap grows instead.

Only CPU training gains from this (a GPU step allocates little host memory), and it is a no-op
where the C library is not glibc.  It changes the whole process, so it is opt-in: the ``ecamp``
command line asks for it for its training stages (:func:`request_keep_freed_memory`) and
:class:`ecamp.train.loop.Trainer` then applies it on a CPU (:func:`apply_if_requested`); a
library user who builds a Trainer keeps the C library's settings unless they ask the same.
"""

from __future__ import annotations

import ctypes
import sys

from ecamp.utils.logging import get_logger

log = get_logger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

_applied = False
_requested = False


def request_keep_freed_memory(requested: bool = True) -> None:
    """Opt this process in (or out): a CPU :class:`~ecamp.train.loop.Trainer` built after this
    calls :func:`keep_freed_memory`.  The ``ecamp`` CLI calls it for its training stages."""
    global _requested
    _requested = requested


def apply_if_requested(device_type: str) -> bool:
    """:func:`keep_freed_memory` when this process opted in and trains on ``device_type`` "cpu";
    True when the thresholds are in effect."""
    if not _requested or device_type != "cpu":
        return False
    return keep_freed_memory()


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 2**31 - 1) -> bool:
    """Raise glibc's mmap / trim thresholds for this process; True when glibc took them.

    Blocks up to ``mmap_threshold`` bytes come from the reusable heap; the heap gives memory
    back to the kernel only when more than ``trim_threshold`` bytes are free at its top.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has a no-op mallopt)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    if ok:
        _applied = True
        log.debug("glibc malloc keeps freed memory (mmap threshold %d B)", mmap_threshold)
    return ok
