"""Does this CPU compute bf16 natively?  (``train.precision`` and the benchmarks ask.)

bf16 autocast pays on a CPU only when its matmuls run on bf16 instructions: AVX512-BF16 or AMX
on x86, the BF16 extension on Arm.  Without them torch and oneDNN convert in software: on a
2-core AVX2-only AMD EPYC a 2048x2048 bf16 matmul ran at 0.26 GFLOP/s against 89 in fp32, so
``train.precision=bf16`` made training hundreds of times slower without a word.

Three things must agree for bf16 to be native: the CPU's flags (``/proc/cpuinfo``), the kernel
set torch dispatches to (``torch.backends.cpu.get_cpu_capability()``, which
``ATEN_CPU_CAPABILITY`` can lower) and the instruction set oneDNN may use (``ONEDNN_MAX_CPU_ISA``
or ``DNNL_MAX_CPU_ISA`` can cap it).  Setting ``ATEN_CPU_CAPABILITY=avx2`` and
``ONEDNN_MAX_CPU_ISA=AVX2`` therefore makes an AVX512-BF16 machine behave, and be detected, as
an AVX2-only one.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ecamp.utils.logging import get_logger

log = get_logger(__name__)

X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FLAGS = ("bf16",)
# torch kernel sets below AVX-512 never use the bf16 instructions
_SLOW_CAPABILITIES = ("DEFAULT", "NO AVX", "AVX", "AVX2")
# oneDNN ISA caps that still include AVX512-BF16 (its ``dnnl_cpu_isa_t`` names, upper case)
_ONEDNN_BF16_ISAS = ("ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX")
_ONEDNN_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@dataclass(frozen=True)
class Bf16Support:
    """Whether bf16 is native on this CPU, and the evidence in words."""

    native: bool
    reason: str


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags (x86 ``flags``, Arm ``Features``); empty when unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_bf16_support(
    flags: frozenset[str] | None = None,
    capability: str | None = None,
    env: Mapping[str, str] | None = None,
    machine: str | None = None,
) -> Bf16Support:
    """Decide from the CPU flags, torch's CPU capability and the oneDNN ISA cap.

    Every argument defaults to this process's value; tests pass their own.
    """
    flags = cpu_flags() if flags is None else flags
    capability = (
        torch.backends.cpu.get_cpu_capability() if capability is None else capability
    ).upper()
    env = os.environ if env is None else env
    machine = (platform.machine() if machine is None else machine).lower()
    arm = machine.startswith(("aarch64", "arm"))
    wanted = ARM_BF16_FLAGS if arm else X86_BF16_FLAGS
    found = [f for f in wanted if f in flags]
    if not found:
        return Bf16Support(False, f"the CPU flags have none of {', '.join(wanted)}")
    if not arm and capability in _SLOW_CAPABILITIES:
        return Bf16Support(
            False,
            f"the CPU has {found[0]} but torch runs its {capability} kernels "
            "(ATEN_CPU_CAPABILITY), which have no bf16 instructions",
        )
    for name in _ONEDNN_ENV:
        isa = env.get(name, "").strip().upper()
        if isa and not arm and isa not in _ONEDNN_BF16_ISAS:
            return Bf16Support(
                False, f"the CPU has {found[0]} but {name}={isa} keeps oneDNN below AVX512-BF16"
            )
    return Bf16Support(True, f"the CPU has {found[0]} and torch runs its {capability} kernels")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether bf16 matmuls run on bf16 instructions in this process (cached)."""
    return cpu_bf16_support().native


def matmul_gflops(dtype: torch.dtype, n: int = 256, reps: int = 3) -> float:
    """GFLOP/s of an ``n x n`` CPU matmul in ``dtype`` on one thread, best of ``reps``.

    One thread measures the instructions, not thread wake-ups: on a busy 2-core machine an
    OpenMP pair spent more time waiting for each other than computing a 256x256 product.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return 2 * n**3 / max(best, 1e-9) / 1e9


_warned = False


def warn_if_cpu_bf16_slow(what: str = "train.precision=bf16") -> bool:
    """Warn once per process that bf16 on this CPU is emulated, with a measured slowdown.

    Returns True when it warned now.  A 256x256 matmul in both dtypes (tens of milliseconds
    without bf16 instructions) gives the figure.
    """
    global _warned
    if _warned:
        return False
    support = cpu_bf16_support()
    if support.native:
        return False
    _warned = True
    bf16, fp32 = matmul_gflops(torch.bfloat16), matmul_gflops(torch.float32)
    log.warning(
        "%s on a CPU without native bf16 (%s): a 256x256 matmul (one thread) runs at %.2f GFLOP/s "
        "in bf16 against %.1f in fp32 (%.0fx slower); use precision auto or fp32",
        what,
        support.reason,
        bf16,
        fp32,
        fp32 / max(bf16, 1e-9),
    )
    return True
