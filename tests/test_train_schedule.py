"""Learning-rate schedule and the loop's resumable, world-size-independent sampling."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ecamp.errors import UserError
from ecamp.train.precision import resolve_precision
from ecamp.train.sampling import ShardedBatchSampler, derive_seeds
from ecamp.train.schedule import WarmupCosine, cosine_lr


def test_cosine_lr_key_steps() -> None:
    base, lo, warm, total = 1.0, 0.1, 10, 110
    assert cosine_lr(0, base, lo, warm, total) == 0.0
    assert cosine_lr(5, base, lo, warm, total) == pytest.approx(0.5)
    assert cosine_lr(10, base, lo, warm, total) == pytest.approx(1.0)
    assert cosine_lr(60, base, lo, warm, total) == pytest.approx((1.0 + 0.1) / 2)
    assert cosine_lr(110, base, lo, warm, total) == pytest.approx(0.1)
    assert cosine_lr(500, base, lo, warm, total) == pytest.approx(0.1)
    # monotone decay after warm-up
    vals = [cosine_lr(s, base, lo, warm, total) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    # no warm-up starts at the peak
    assert cosine_lr(0, base, 0.0, 0, 100) == pytest.approx(1.0)


def test_scheduler_keeps_group_ratios() -> None:
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1e-3}, {"params": [p2], "lr": 1e-4}], lr=1e-3)
    sched = WarmupCosine(opt, base_lr=1e-3, min_lr=0.0, warmup_steps=4, total_steps=20)
    assert sched.apply(2) == pytest.approx(5e-4)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-5)
    # warm-up longer than the run is clamped
    assert WarmupCosine(opt, 1e-3, 0.0, 50, 20).warmup_steps == 20


def _epoch_items(
    n: int, batch: int, world: int, epoch: int, start: int = 0
) -> list[list[list[tuple[int, int]]]]:
    per_rank = []
    for r in range(world):
        s = ShardedBatchSampler(n, batch, world_size=world, rank=r, seed=3)
        s.set_epoch(epoch, start)
        per_rank.append(list(s))
    return per_rank


def test_global_batch_independent_of_world_size() -> None:
    one = _epoch_items(50, 8, 1, epoch=2)[0]
    two = _epoch_items(50, 4, 2, epoch=2)
    assert len(one) == len(two[0]) == len(two[1]) == 50 // 8
    for j, b in enumerate(one):
        assert b == two[0][j] + two[1][j]  # same indices and same per-item seeds
    idx = [i for b in one for i, _ in b]
    assert len(set(idx)) == len(idx)  # no repeats inside an epoch


def test_epochs_differ_and_resume_position() -> None:
    e0 = _epoch_items(40, 5, 1, epoch=0)[0]
    e1 = _epoch_items(40, 5, 1, epoch=1)[0]
    assert e0 != e1
    assert _epoch_items(40, 5, 1, epoch=1, start=3)[0] == e1[3:]
    s = ShardedBatchSampler(40, 5)
    s.set_epoch(0, 3)
    assert len(s) == 5


def test_no_drop_last_covers_every_sample() -> None:
    per_rank = []
    for r in range(2):
        s = ShardedBatchSampler(11, 4, world_size=2, rank=r, seed=0, drop_last=False)
        s.set_epoch(0)
        per_rank.append(list(s))
    assert len(per_rank[0]) == len(per_rank[1]) == 2
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]]  # ranks stay in step
    seen = {i for rank in per_rank for b in rank for i, _ in b}
    assert seen == set(range(11))


def _grouped(n: int, batch: int, world: int, epoch: int, lengths, start: int = 0, drop=True):
    per_rank = []
    for r in range(world):
        s = ShardedBatchSampler(
            n, batch, world_size=world, rank=r, seed=5, drop_last=drop, lengths=lengths
        )
        s.set_epoch(epoch, start)
        per_rank.append(list(s))
    return per_rank


def test_group_by_length_cuts_padding_and_keeps_the_contract() -> None:
    rng = np.random.default_rng(0)
    n, batch = 803, 8
    lengths = rng.integers(20, 450, n)
    one = _grouped(n, batch, 1, 0, lengths, drop=False)[0]
    idx = [i for b in one for i, _ in b]
    assert sorted(idx) == list(range(n))  # every item once (no drop_last)

    def padded(batches) -> float:
        return sum(len(b) * lengths[[i for i, _ in b]].max() for b in batches) / lengths.sum()

    plain = ShardedBatchSampler(n, batch, seed=5, drop_last=False)
    assert padded(one) < 1.05 < 1.3 < padded(list(plain))  # random batches: ~1.5x the tokens
    # the order is a function of (seed, epoch): same again, another epoch differs
    assert one == _grouped(n, batch, 1, 0, lengths, drop=False)[0]
    assert one != _grouped(n, batch, 1, 1, lengths, drop=False)[0]
    # batches are shuffled, not served longest first
    maxima = [lengths[[i for i, _ in b]].max() for b in one[:-1]]
    assert maxima != sorted(maxima, reverse=True)
    # the global batch does not depend on the number of processes; resume starts mid-epoch
    two = _grouped(n - 3, batch // 2, 2, 3, lengths[: n - 3])
    ref = _grouped(n - 3, batch, 1, 3, lengths[: n - 3])[0]
    assert [a + b for a, b in zip(*two)] == ref
    assert _grouped(n - 3, batch, 1, 3, lengths[: n - 3], start=7)[0] == ref[7:]


def test_group_by_length_needs_lengths(tmp_path) -> None:
    from ecamp.config import TrainConfig
    from ecamp.train.sampling import training_loader

    cfg = TrainConfig(batch_size=2, group_by_length=True)
    with pytest.raises(UserError, match="group_by_length"):
        training_loader(list(range(10)), cfg, 1, 0, torch.device("cpu"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lengths"):
        ShardedBatchSampler(10, 2, lengths=np.ones(9))


def test_derive_seeds_spread() -> None:
    s = derive_seeds(0, 0, np.arange(10000))
    assert len(np.unique(s)) == 10000
    assert (s < 2**63).all()
    assert not np.array_equal(s, derive_seeds(0, 1, np.arange(10000)))
    assert not np.array_equal(s, derive_seeds(1, 0, np.arange(10000)))


def test_precision_resolution_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("fp32", cpu) is None
    with pytest.raises(UserError, match="fp16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(UserError, match="choose"):
        resolve_precision("half-ish", cpu)
    assert math.isfinite(cosine_lr(3, 1.0, 0.0, 0, 0))


def _release_lr(epoch: float, lr: float, warmup: float, horizon: float) -> float:
    """The release's util/lr_sched.py, written out: linear warm-up, cosine to max_epoch."""
    if epoch < warmup:
        return lr * epoch / warmup
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (horizon - warmup)))


def test_schedule_horizon_matches_the_release_at_the_last_epoch(tmp_path) -> None:
    """The release recipe scaled down 10x: 12 epochs, 4 warm-up, a 20-epoch horizon."""
    import csv

    from torch import nn

    from ecamp.config import TrainConfig
    from ecamp.train.loop import Trainer

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int) -> dict:
            return {"x": torch.full((2,), float(i))}

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Linear(2, 1)

        def forward(self, batch: dict) -> dict:
            return {"loss": self.w(batch["x"]).pow(2).mean()}

    lr = 1.5e-4
    cfg = TrainConfig(
        epochs=12,
        schedule_epochs=20,
        warmup_epochs=4,
        batch_size=4,
        lr=lr,
        weight_decay=0.0,
        progress=False,
        tensorboard=False,
        device="cpu",
        log_every=1,
    )
    trainer = Trainer(Net(), Data(), cfg, tmp_path)
    trainer.fit()
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    spe = 4  # 16 items / batch 4
    assert len(rows) == 12 * spe
    lrs = [float(r["lr"]) for r in rows]
    for s in (0, 2 * spe, 11 * spe, 12 * spe - 1):  # warm-up, mid, first and last of the last epoch
        assert lrs[s] == pytest.approx(_release_lr(s / spe, lr, 4, 20), rel=1e-6)
    # the last lr: about half the peak, where the run's own horizon would give ~0
    assert lrs[-1] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * (47 / 4 - 4) / 16)))
    assert lrs[-1] > 0.5 * lr
    plain = Trainer(Net(), Data(), dataclasses.replace(cfg, schedule_epochs=0), tmp_path / "b")
    assert plain.scheduler.lr_at(12 * spe - 1) < 0.01 * lr
    with pytest.raises(UserError, match="schedule_epochs"):
        Trainer(Net(), Data(), dataclasses.replace(cfg, schedule_epochs=6), tmp_path / "c")


def test_release_recipe_schedule_last_epoch() -> None:
    """configs/release: 120 epochs (run.sh) on a 200-epoch horizon (main_pretrain.py
    --max_epoch 200): the lr of the last epoch's first step is 7.65e-5, half the peak at the end."""
    from pathlib import Path

    from ecamp.config import PretrainConfig, load_config
    from ecamp.train.schedule import schedule_horizon

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(PretrainConfig, root / "configs/release/pretrain_mimic_release.yaml").train
    assert (cfg.epochs, cfg.schedule_epochs, cfg.warmup_epochs) == (120, 200, 40)
    spe = 46  # any steps/epoch: the curve is per epoch
    total = schedule_horizon(cfg, spe)
    at = cosine_lr(119 * spe, cfg.lr, cfg.min_lr, round(cfg.warmup_epochs * spe), total)
    assert (
        at == pytest.approx(_release_lr(119, cfg.lr, 40, 200)) == pytest.approx(7.647e-5, rel=1e-3)
    )
    end = cosine_lr(120 * spe, cfg.lr, cfg.min_lr, round(cfg.warmup_epochs * spe), total)
    assert end == pytest.approx(cfg.lr / 2)
