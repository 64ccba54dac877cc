"""Native-bf16 detection on CPUs, the once-only warning, and what auto / the benchmark pick."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecamp.train.precision import resolve_precision
from ecamp.utils import cpu
from ecamp.utils.cpu import Bf16Support, cpu_bf16_support, cpu_flags

ROOT = Path(__file__).resolve().parents[1]
EPYC_AVX2 = frozenset(["fpu", "sse2", "avx", "avx2", "fma", "f16c", "bmi2"])
EPYC_AVX512_BF16 = EPYC_AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}
SAPPHIRE_RAPIDS = EPYC_AVX2 | {"avx512f", "amx_tile", "amx_bf16"}


def test_cpu_flags_reads_x86_flags_and_arm_features(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert "bf16" in cpu_flags(arm)
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("flags", "capability", "env", "native"),
    [
        (EPYC_AVX512_BF16, "AVX512", {}, True),
        (SAPPHIRE_RAPIDS, "AVX512", {}, True),
        (EPYC_AVX2, "AVX2", {}, False),  # the machine
        (EPYC_AVX512_BF16 - {"avx512_bf16"}, "AVX512", {}, False),  # AVX-512 without BF16
        (EPYC_AVX512_BF16, "AVX2", {}, False),  # ATEN_CPU_CAPABILITY=avx2
        (EPYC_AVX512_BF16, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
        (EPYC_AVX512_BF16, "AVX512", {"DNNL_MAX_CPU_ISA": "avx512_core"}, False),
        (EPYC_AVX512_BF16, "AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
    ],
)
def test_bf16_support_needs_flags_kernels_and_onednn(flags, capability, env, native):
    got = cpu_bf16_support(flags, capability, env, machine="x86_64")
    assert got.native is native
    assert got.reason


def test_arm_bf16_feature_counts():
    assert cpu_bf16_support(frozenset({"asimd", "bf16"}), "DEFAULT", {}, "aarch64").native
    assert not cpu_bf16_support(frozenset({"asimd"}), "DEFAULT", {}, "aarch64").native


@pytest.fixture
def records(monkeypatch):
    """The warnings ecamp.utils.cpu logs, with its once-only flag reset."""
    monkeypatch.setattr(cpu, "_warned", False)
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    handler = Keep(logging.WARNING)
    cpu.log.addHandler(handler)
    yield got
    cpu.log.removeHandler(handler)


def _pretend(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(
        cpu, "cpu_bf16_support", lambda: Bf16Support(native, "mocked CPU for the test")
    )
    # keep the measurement cheap and deterministic
    monkeypatch.setattr(
        cpu, "matmul_gflops", lambda dtype, n=256, reps=3: 0.5 if dtype == torch.bfloat16 else 80.0
    )


def test_explicit_bf16_on_an_avx2_cpu_warns_once_with_the_reason(monkeypatch, records):
    _pretend(monkeypatch, native=False)
    dev = torch.device("cpu")
    assert resolve_precision("bf16", dev) == torch.bfloat16  # still honoured
    assert resolve_precision("bf16", dev) == torch.bfloat16
    assert len(records) == 1
    msg = records[0].getMessage()
    assert "train.precision=bf16" in msg and "mocked CPU for the test" in msg
    assert "160x slower" in msg


def test_no_warning_where_bf16_is_native(monkeypatch, records):
    _pretend(monkeypatch, native=True)
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    assert records == []


@pytest.mark.parametrize("native", [True, False])
def test_auto_never_picks_bf16_on_a_cpu(monkeypatch, records, native):
    _pretend(monkeypatch, native)
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert records == []


def _bench():
    spec = importlib.util.spec_from_file_location(
        "pretrain_step_bench", ROOT / "benchmarks" / "pretrain_step.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("native", [True, False])
def test_benchmark_skips_the_bf16_peak_it_cannot_use(monkeypatch, native):
    bench = _bench()
    monkeypatch.setattr(bench, "bf16_is_native", lambda device: native)
    sizes: list[tuple[torch.dtype, int]] = []
    monkeypatch.setattr(
        bench, "matmul_peak", lambda dtype, device, n=0, reps=6: sizes.append((dtype, n)) or 1.0
    )
    got = bench.peaks(torch.device("cpu"), use_bf16=False)
    assert (got["bf16_peak_gflops"] is None) is (not native)
    assert ((torch.bfloat16, 0) in sizes) is native
    # a bf16 step on an emulating CPU gets a small, quick peak instead of minutes of 2048^3
    sizes.clear()
    bench.peaks(torch.device("cpu"), use_bf16=True)
    assert (torch.bfloat16, 0 if native else 256) in sizes


_AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
_PROBE = (
    "import json, torch\n"
    "from ecamp.utils.cpu import cpu_has_native_bf16, matmul_gflops\n"
    "print(json.dumps({'native': cpu_has_native_bf16(), "
    "'bf16': matmul_gflops(torch.bfloat16, 512, 2)}))\n"
)


def _probe(extra_env: dict[str, str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **extra_env}
    for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if k not in extra_env:
            env.pop(k, None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not cpu.cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_avx2_emulation_is_detected_and_really_slow():
    """On a bf16 machine, the AVX2 environment is detected as such and bf16 matmuls crawl."""
    native = _probe({})
    avx2 = _probe(_AVX2_ENV)
    assert native["native"] and not avx2["native"]
    # measured 134 vs 1.2 GFLOP/s at 1024^2 (110x); 5x leaves room for a loaded machine
    assert native["bf16"] > 5 * avx2["bf16"], (native, avx2)
