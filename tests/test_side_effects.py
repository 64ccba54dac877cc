"""Process-wide side effects are opt-in: importing ecamp or building a Trainer from the library
changes neither transformers' attention registry nor glibc's malloc settings; the CLI and the
model that needs the attention function do, explicitly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ecamp import cli
from ecamp.config import TrainConfig
from ecamp.utils import allocator

REGISTRY_PROBE = r"""
from transformers import AttentionInterface
before = dict(AttentionInterface._global_mapping)
import ecamp.models.text_decoder as td
import ecamp.models.ecamp  # noqa: F401  (the model module that builds the decoder)
assert dict(AttentionInterface._global_mapping) == before, "import touched the registry"
assert td.ATTENTION not in AttentionInterface._global_mapping

# building the decoder registers the function, and its layers then run through it
import dataclasses, torch
from ecamp.config import model_config
calls = []
real = td.bert_attention
def counting(*a, **k):
    calls.append(1)
    return real(*a, **k)
td.bert_attention = counting
cfg = dataclasses.replace(model_config("tiny"), text_dropout=0.0, vocab_size=50)
dec = td.TextDecoder(cfg).eval()
assert AttentionInterface._global_mapping[td.ATTENTION] is counting
assert dec.config._attn_implementation == td.ATTENTION
with torch.no_grad():
    dec.encode(dec.embed(torch.randint(4, 50, (2, 7))), None)
assert len(calls) == cfg.text_depth, calls
n = len(AttentionInterface._global_mapping)
assert td.register_attention() == td.ATTENTION  # idempotent
td.TextDecoder(cfg)
assert len(AttentionInterface._global_mapping) == n
print("ok")
"""


def test_text_decoder_import_leaves_registry_alone_and_build_registers():
    out = subprocess.run(
        [sys.executable, "-c", REGISTRY_PROBE], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.lin(batch["x"]), batch["y"])}


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(3, generator=g), "y": torch.randn(1, generator=g)}


@pytest.fixture
def mallopt_calls(monkeypatch):
    """Record glibc mallopt calls instead of making them (the process keeps its settings)."""
    calls: list[tuple[int, int]] = []

    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda _name: _Libc(calls))
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator, "_requested", False)
    monkeypatch.setattr(sys, "platform", "linux")
    return calls


class _Mallopt:
    def __init__(self, calls: list[tuple[int, int]]) -> None:
        self.calls = calls

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


class _Libc:
    gnu_get_libc_version = object()

    def __init__(self, calls: list[tuple[int, int]]) -> None:
        self.mallopt = _Mallopt(calls)


def _train_cfg() -> TrainConfig:
    return TrainConfig(
        epochs=1,
        batch_size=4,
        max_steps=1,
        progress=False,
        tensorboard=False,
        device="cpu",
        warmup_epochs=0.0,
        warmup_steps=0,
    )


def _fit(out: Path) -> None:
    from ecamp.train.loop import Trainer

    Trainer(_Toy(), _Data(), _train_cfg(), out).fit()


def test_library_trainer_does_not_call_mallopt(tmp_path, mallopt_calls):
    _fit(tmp_path)
    assert mallopt_calls == []


def test_cli_training_stage_tunes_malloc_on_cpu(tmp_path, monkeypatch, mallopt_calls):
    import ecamp.train.finetune as stage

    def run(args: Any) -> int:  # the stage's work: a CPU Trainer
        _fit(tmp_path / "run")
        return 0

    monkeypatch.setattr(stage, "run", run)
    assert cli.main(["finetune"]) == 0
    assert (allocator.M_MMAP_THRESHOLD, 1 << 30) in mallopt_calls
    assert {p for p, _ in mallopt_calls} == {allocator.M_MMAP_THRESHOLD, allocator.M_TRIM_THRESHOLD}


def test_cli_non_training_stage_does_not_opt_in(monkeypatch, mallopt_calls):
    import ecamp.data.cache as stage

    monkeypatch.setattr(stage, "run", lambda args: 0)
    assert cli.main(["cache", "manifest.csv", "out"]) == 0
    assert allocator._requested is False
    assert not allocator.apply_if_requested("cpu") and mallopt_calls == []
