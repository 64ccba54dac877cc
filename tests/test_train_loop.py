"""The generic Trainer on toy models: learning, accumulation, exact resume, logging, best.pt."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import Dataset

from ecamp.config import TrainConfig
from ecamp.errors import UserError
from ecamp.models.params import param_groups as default_param_groups
from ecamp.train.checkpoint import load_checkpoint
from ecamp.train.loop import Trainer


class NoisyRegression(Dataset):
    """y = x w; the input gets noise drawn from the per-item seed the loop passes in."""

    accepts_seed = True

    def __init__(self, n: int = 32, d: int = 4, noise: float = 0.1) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, d, generator=g)
        self.y = self.x @ torch.randn(d, 1, generator=g)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        i, seed = item
        g = torch.Generator().manual_seed(seed)
        x = self.x[i] + self.noise * torch.randn(self.x.shape[1], generator=g)
        return {"x": x, "y": self.y[i], "name": f"item{i}"}


class PlainNoisy(NoisyRegression):
    """Takes plain int indices and augments with the global torch RNG."""

    accepts_seed = False

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        return {"x": self.x[i] + self.noise * torch.randn(self.x.shape[1]), "y": self.y[i]}


class Toy(nn.Module):
    def __init__(self, d: int = 4, h: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Dropout(dropout), nn.Linear(h, 1))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "name" in batch:
            assert isinstance(batch["name"][0], str)
        pred = self.net(batch["x"])
        return {"loss": F.mse_loss(pred, batch["y"]), "mae": (pred - batch["y"]).abs().mean()}


def make_cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        epochs=3,
        batch_size=4,
        lr=3e-2,
        weight_decay=0.0,
        warmup_epochs=0.0,
        warmup_steps=0,
        progress=False,
        tensorboard=False,
        device="cpu",
        log_every=1,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def toy(seed: int = 0, **kw: Any) -> Toy:
    torch.manual_seed(seed)
    return Toy(**kw)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_loss_decreases_and_logs(tmp_path: Path) -> None:
    model = toy()
    summary = Trainer(
        model, NoisyRegression(), make_cfg(epochs=8), tmp_path, config_to_save={"model": {"h": 8}}
    ).fit()
    rows = read_csv(tmp_path / "metrics.csv")
    assert summary["steps"] == 8 * 8 == len(rows)
    assert list(rows[0])[:4] == ["step", "epoch", "lr", "loss"]
    assert {"mae", "images_per_s"} <= set(rows[0])
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.3 * first
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {"model": {"h": 8}}
    assert Path(summary["checkpoint"]).name == "step_00000064.pt"
    assert len(list((tmp_path / "checkpoints").glob("step_*.pt"))) == 2  # keep_last
    assert (tmp_path / "train_summary.json").is_file()


def test_accumulation_matches_large_batch(tmp_path: Path) -> None:
    big = toy()
    Trainer(big, NoisyRegression(), make_cfg(batch_size=8, max_steps=3), tmp_path / "a").fit()
    small = toy()
    Trainer(
        small, NoisyRegression(), make_cfg(batch_size=4, accum_steps=2, max_steps=3), tmp_path / "b"
    ).fit()
    assert not torch.equal(params(big)[0], params(toy())[0])  # it did train
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _resume_cfg(**kw: Any) -> TrainConfig:
    # 26 items / batch 3 = 8 micro-batches = 4 steps per epoch, warm-up then cosine, dropout
    return make_cfg(
        batch_size=3, accum_steps=2, epochs=3, warmup_steps=3, min_lr=1e-3, ckpt_every=3, **kw
    )


@pytest.mark.parametrize("log_every", [1, 2])
def test_kill_and_resume_is_exact(tmp_path: Path, log_every: int) -> None:
    ref = toy(dropout=0.3)
    cfg = _resume_cfg(max_steps=10, log_every=log_every)
    Trainer(ref, NoisyRegression(26), cfg, tmp_path / "ref").fit()

    run = tmp_path / "run"
    first = toy(dropout=0.3)
    s1 = Trainer(first, NoisyRegression(26), dataclasses.replace(cfg, max_steps=7), run).fit()
    assert s1["steps"] == 7 and s1["micro_in_epoch"] == 6  # stopped inside epoch 1
    # a checkpoint at step 6 (ckpt_every) and the final one at step 7: kill after the periodic
    (run / "checkpoints" / "step_00000007.pt").unlink()
    (run / "checkpoints" / "latest").unlink()
    # a fresh process would build a freshly initialised model: prove the checkpoint wins
    second = toy(seed=123, dropout=0.3)
    s2 = Trainer(second, NoisyRegression(26), cfg, run).fit()
    assert s2["steps"] == 10

    ref_rows, run_rows = read_csv(tmp_path / "ref" / "metrics.csv"), read_csv(run / "metrics.csv")
    if log_every == 1:
        assert [r["step"] for r in run_rows] == [str(s) for s in range(1, 11)]
    assert [r["loss"] for r in run_rows] == [r["loss"] for r in ref_rows]  # next-step loss included
    assert [r["lr"] for r in run_rows] == [r["lr"] for r in ref_rows]
    for a, b in zip(ref.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_resume_past_end_does_nothing(tmp_path: Path) -> None:
    Trainer(toy(), NoisyRegression(), make_cfg(max_steps=4), tmp_path).fit()
    m = toy(seed=5)
    summary = Trainer(m, NoisyRegression(), make_cfg(max_steps=4), tmp_path).fit()
    assert summary["steps"] == 4
    state = load_checkpoint(tmp_path / "checkpoints" / "step_00000004.pt")
    for k, v in m.state_dict().items():
        assert torch.equal(v, state["model"][k])


def test_plain_dataset_is_seeded_per_sample(tmp_path: Path) -> None:
    a, b = toy(), toy()
    Trainer(a, PlainNoisy(), make_cfg(max_steps=5), tmp_path / "a").fit()
    torch.manual_seed(999)  # the global RNG before training must not matter
    Trainer(b, PlainNoisy(), make_cfg(max_steps=5), tmp_path / "b").fit()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_mismatched_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    Trainer(
        toy(),
        NoisyRegression(),
        make_cfg(max_steps=1),
        tmp_path / "a",
        config_to_save={"model": {"h": 8}},
    ).fit()
    with pytest.raises(UserError, match=r"model\.h"):
        Trainer(
            toy(h=16),
            NoisyRegression(),
            make_cfg(),
            tmp_path / "a",
            config_to_save={"model": {"h": 16}},
        ).fit()
    # no saved config to compare: the parameter shapes name the mismatch
    Trainer(toy(), NoisyRegression(), make_cfg(max_steps=1), tmp_path / "b").fit()
    with pytest.raises(UserError, match=r"net\.0\.weight"):
        Trainer(toy(h=16), NoisyRegression(), make_cfg(), tmp_path / "b").fit()
    # resume=never starts afresh and clears the old run's checkpoints
    cfg = make_cfg(max_steps=1, resume="never")
    Trainer(toy(h=16), NoisyRegression(), cfg, tmp_path / "b").fit()
    assert [p.name for p in (tmp_path / "b" / "checkpoints").glob("step_*")] == ["step_00000001.pt"]
    with pytest.raises(UserError, match="no such checkpoint"):
        Trainer(
            toy(), NoisyRegression(), make_cfg(resume=str(tmp_path / "nope.pt")), tmp_path / "c"
        ).fit()


def test_eval_best_checkpoint_and_tensorboard(tmp_path: Path) -> None:
    scores = iter([0.5, 0.9, 0.7])

    def eval_fn(model: nn.Module, epoch: int) -> dict[str, float]:
        assert not model.training
        torch.rand(3)  # eval may draw random numbers without moving the training streams
        return {"auc": next(scores)}

    cfg = make_cfg(epochs=3, tensorboard=True, log_every=3)
    summary = Trainer(
        toy(), NoisyRegression(), cfg, tmp_path, eval_fn=eval_fn, best_metric="auc"
    ).fit()
    assert summary["best_value"] == 0.9
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == 16 and best["epoch"] == 2
    assert [r["auc"] for r in read_csv(tmp_path / "eval.csv")] == ["0.5", "0.9", "0.7"]
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_param_groups_skip_decay_on_1d_and_tokens() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.norm = nn.LayerNorm(3)
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 3))
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 3))

    m = M()
    groups = default_param_groups(m, 0.05)
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(m.lin.weight)}
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


class DtypeSpy(Toy):
    """Records, at each forward, whether autocast is on and the dtype a Linear computes in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        hidden = self.net[0](batch["x"])
        self.seen.append((torch.is_autocast_enabled("cpu"), hidden.dtype))
        return super().forward(batch)


def test_bf16_autocast_on_cpu(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DtypeSpy()
    summary = Trainer(
        model, NoisyRegression(), make_cfg(precision="bf16", max_steps=3, clip_grad=1.0), tmp_path
    ).fit()
    assert summary["steps"] == 3
    # every training forward ran under CPU autocast: the matmuls compute in bfloat16 ...
    assert model.seen[:3] == [(True, torch.bfloat16)] * 3
    # ... while the master weights (and so the optimiser) stay float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert 0 < summary["last"]["grad_norm"] < float("inf")


def test_dataset_smaller_than_batch_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="fewer than one global batch"):
        Trainer(toy(), NoisyRegression(3), make_cfg(batch_size=4), tmp_path)
    cfg = dataclasses.replace(make_cfg(batch_size=4, max_steps=1), drop_last=False)
    assert Trainer(toy(), NoisyRegression(3), cfg, tmp_path).fit()["steps"] == 1


def test_worker_processes_give_the_same_run(tmp_path: Path) -> None:
    a, b = toy(), toy()
    Trainer(a, PlainNoisy(), make_cfg(max_steps=4), tmp_path / "a").fit()
    Trainer(b, PlainNoisy(), make_cfg(max_steps=4), tmp_path / "b", num_workers=2).fit()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_the_loop_still_exports_the_names_users_import_from_it():
    """The loop's helpers moved to their own modules; ``ecamp.train.loop`` still names them."""
    from ecamp.train import loop, optimizer, precision, sampling
    from ecamp.train.checkpoint import preserved_rng

    assert loop.ShardedBatchSampler is sampling.ShardedBatchSampler
    assert loop.SeededIndexDataset is sampling.SeededIndexDataset
    assert loop.derive_seeds is sampling.derive_seeds
    assert loop.resolve_precision is precision.resolve_precision
    assert loop.build_optimizer is optimizer.build_optimizer
    assert loop.preserved_rng is preserved_rng
    assert set(loop.__all__) <= set(dir(loop))
