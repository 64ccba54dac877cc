"""Two CPU processes (gloo DDP) train exactly like one process on the same global batch."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ecamp.config import TrainConfig
from ecamp.train import distributed as du
from ecamp.train.checkpoint import load_checkpoint
from ecamp.train.loop import Trainer
from helpers import set_ddp_env


class Regression(Dataset):
    accepts_seed = True

    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        i, seed = item
        noise = torch.randn(4, generator=torch.Generator().manual_seed(seed))
        return {"x": self.x[i] + 0.1 * noise, "y": self.y[i]}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.net(batch["x"]), batch["y"])}


def _cfg(batch_size: int, accum: int) -> TrainConfig:
    return TrainConfig(
        epochs=1,
        max_steps=2,
        batch_size=batch_size,
        accum_steps=accum,
        lr=1e-2,
        warmup_epochs=0.0,
        progress=False,
        tensorboard=False,
        device="cpu",
        log_every=1,
    )


def _worker(rank: int, world: int, port: int, out: str) -> None:
    set_ddp_env(rank, world, port)
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different inits: DDP must broadcast rank 0's
    try:
        Trainer(Net(), Regression(), _cfg(batch_size=2, accum=2), out).fit()
        assert du.world_size() == world
        assert du.all_reduce_mean(float(rank)) == pytest.approx((world - 1) / 2)
    finally:
        du.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    torch.manual_seed(0)
    single = Net()
    Trainer(single, Regression(), _cfg(batch_size=4, accum=2), tmp_path / "one").fit()

    state = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "step_00000002.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    for k, v in single.state_dict().items():
        torch.testing.assert_close(state["model"][k], v, rtol=1e-5, atol=1e-6)
    rows: Any = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 steps, written by rank 0 only
