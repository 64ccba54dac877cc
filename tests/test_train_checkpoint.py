"""Checkpoint files: atomic writes, pruning, the latest pointer, RNG round trips, checks."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ecamp.errors import UserError
from ecamp.train.checkpoint import (
    CheckpointDir,
    capture_rng,
    check_compatible,
    load_checkpoint,
    model_fingerprint,
    resolve_resume,
    restore_rng,
    save_checkpoint,
)


def test_failed_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpts = CheckpointDir(tmp_path, keep_last=2)
    ckpts.save({"model": {"w": torch.ones(2)}}, step=1)
    real_save = torch.save

    def crash(obj: object, f: str) -> None:
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpts.save({"model": {"w": torch.zeros(2)}}, step=2)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "step_00000001.pt", {"model": {}})
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001.pt"]
    assert ckpts.latest() == tmp_path / "step_00000001.pt"
    assert torch.equal(load_checkpoint(tmp_path / "step_00000001.pt")["model"]["w"], torch.ones(2))


def test_keep_last_and_latest(tmp_path: Path) -> None:
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    assert ckpts.latest() is None and resolve_resume("auto", ckpts) is None
    for step in (5, 10, 15):
        ckpts.save({"model": {}, "step": step}, step)
    ckpts.save_best({"model": {}, "step": 10})
    names = sorted(p.name for p in ckpts.root.iterdir())
    assert names == ["best.pt", "latest", "step_00000010.pt", "step_00000015.pt"]
    assert resolve_resume("auto", ckpts) == ckpts.step_path(15)
    assert resolve_resume("never", ckpts) is None
    assert resolve_resume(str(tmp_path), ckpts) == ckpts.step_path(15)  # a run folder
    (ckpts.root / "latest").write_text("step_00000099.pt\n")  # dangling pointer
    assert ckpts.latest() == ckpts.step_path(15)


def test_unreadable_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "step_00000001.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_compatibility_names_the_difference() -> None:
    small, big = nn.Linear(2, 3), nn.Linear(2, 4)
    state = {"config": {"model": {"width": 3, "depth": 2}}, "fingerprint": model_fingerprint(small)}
    check_compatible(
        state,
        "x.pt",
        {"model": {"width": 3, "depth": 2}, "train": {"lr": 1}},
        model_fingerprint(small),
    )
    # a model field added since the checkpoint was written is not a mismatch
    check_compatible(
        state, "x.pt", {"model": {"width": 3, "depth": 2, "new": 0}}, model_fingerprint(small)
    )
    with pytest.raises(UserError, match=r"model\.width: checkpoint 3 vs current 4"):
        check_compatible(state, "x.pt", {"model": {"width": 4, "depth": 2}}, model_fingerprint(big))
    with pytest.raises(UserError, match=r"weight: checkpoint \[3, 2\] vs current \[4, 2\]"):
        check_compatible(state, "x.pt", None, model_fingerprint(big))


def test_rng_round_trip_survives_weights_only_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "c.pt", {"model": {}, "rng": capture_rng()})
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1))
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), np.random.randn(), torch.rand(1))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
