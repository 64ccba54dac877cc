"""The generic training loop: one ``Trainer`` for pre-training, GLoRIA and downstream heads.

It knows nothing of any model.  ``model(batch)`` returns a dict with a scalar ``loss`` and
optionally other scalar tensors (all logged).  The loop owns data order so a run can stop
anywhere and resume bit-exactly:

* epoch ``e`` visits a permutation drawn from ``(seed, e)``; the global batch ``j`` is
  positions ``[j*G, (j+1)*G)`` of it (``G`` = batch_size x world_size) and rank ``r`` takes
  the ``r``-th slice, so the global batch does not depend on the number of processes;
* every item reaches the dataset as ``(index, sample_seed)`` with the seed derived from
  ``(seed, epoch, position)``: augmentation is reproducible whatever the worker layout.
  Datasets that set ``accepts_seed = True`` get the tuple; others get the index, with the
  global Python/NumPy/torch RNGs seeded from the sample seed around the call;
* checkpoints store the position inside the epoch, every rank's RNG states, optimizer,
  scheduler and grad-scaler state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ecamp.config import TrainConfig, to_dict
from ecamp.errors import UserError
from ecamp.models.params import param_groups as default_param_groups
from ecamp.train import distributed as du
from ecamp.train.checkpoint import (
    CKPT_FORMAT,
    CheckpointDir,
    capture_rng,
    check_compatible,
    load_checkpoint,
    model_fingerprint,
    resolve_resume,
    restore_rng,
)
from ecamp.train.metrics_log import MetricsLogger, open_tensorboard
from ecamp.train.schedule import WarmupCosine, schedule_horizon
from ecamp.utils.allocator import apply_if_requested
from ecamp.utils.device import move_to_device
from ecamp.utils.io import atomic_write_text
from ecamp.utils.logging import get_logger
from ecamp.utils.secrets import mask_secrets

log = get_logger(__name__)

_MASK63 = np.uint64((1 << 63) - 1)

# --------------------------------------------------------------------------- seeds & sampling


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each element (vectorised; wraps modulo 2**64)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def derive_seeds(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """Per-item seeds in [0, 2**63) from (run seed, epoch, position in the epoch)."""
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    base = _splitmix64(base ^ np.uint64(epoch & 0xFFFFFFFF))
    with np.errstate(over="ignore"):
        mixed = _splitmix64(base ^ positions.astype(np.uint64))
    return mixed & _MASK63


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of epoch ``epoch`` (same on every rank)."""
    g = torch.Generator()
    g.manual_seed(int(derive_seeds(seed, epoch, np.array([n]))[0]))
    return torch.randperm(n, generator=g)


class ShardedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches of ``(index, sample_seed)`` for one epoch.

    ``set_epoch(e, start_batch)`` picks the epoch and the first micro-batch (resume).
    With ``drop_last`` the tail that does not fill a global batch is skipped; otherwise the
    order is padded (wrapping around) to a multiple of the world size and the last global
    batch is shorter, split equally among ranks.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"train.batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.seed, self.drop_last, self.shuffle = seed, drop_last, shuffle
        self.global_batch = batch_size * world_size
        if drop_last:
            self.num_batches = n // self.global_batch
            self.padded_len = self.num_batches * self.global_batch
        else:
            self.padded_len = math.ceil(n / world_size) * world_size
            self.num_batches = math.ceil(self.padded_len / self.global_batch)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = min(max(0, start_batch), self.num_batches)

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def epoch_items(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, sample seeds) of the whole global epoch ``epoch`` (every rank's share)."""
        if self.shuffle:
            order = epoch_permutation(self.n, self.seed, epoch)
        else:
            order = torch.arange(self.n)
        if self.padded_len > self.n:
            order = torch.cat([order, order[: self.padded_len - self.n]])
        return order[: self.padded_len].numpy(), derive_seeds(
            self.seed, epoch, np.arange(self.padded_len)
        )

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        idx, seeds = self.epoch_items(self.epoch)
        G, B = self.global_batch, self.batch_size
        for j in range(self.start_batch, self.num_batches):
            lo = j * G
            per_rank = B if lo + G <= self.padded_len else (self.padded_len - lo) // self.world_size
            a = lo + self.rank * per_rank
            b = a + per_rank
            yield list(zip(idx[a:b].tolist(), seeds[a:b].tolist()))


@contextlib.contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python/NumPy/torch global RNGs for one call, then put them back."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededIndexDataset(Dataset):
    """Adapts a dataset that takes plain int indices to ``(index, sample_seed)`` items."""

    accepts_seed = True

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with _seeded_global_rngs(seed):
            return self.dataset[index]


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run a block (evaluation) without moving the training RNG streams."""
    state = capture_rng()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            restore_rng(state)


# --------------------------------------------------------------------------- helpers


def batch_length(batch: Any) -> int | None:
    """Number of samples in a collated batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    values = (
        batch.values()
        if isinstance(batch, dict)
        else batch
        if isinstance(batch, (list, tuple))
        else ()
    )
    for v in values:
        n = batch_length(v)
        if n is not None:
            return n
    return None


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = full fp32) for ``train.precision`` on ``device``.

    ``auto`` never picks bf16 on a CPU; an explicit ``bf16`` on a CPU without bf16 instructions
    logs one warning with the measured slowdown (:mod:`ecamp.utils.cpu`).
    """
    p = (precision or "auto").lower()
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if p in ("fp32", "32", "float32"):
        return None
    if p in ("bf16", "bfloat16"):
        if device.type == "cpu":
            from ecamp.utils.cpu import warn_if_cpu_bf16_slow

            warn_if_cpu_bf16_slow(f"train.precision={precision}")
        return torch.bfloat16
    if p in ("fp16", "16", "float16"):
        if device.type != "cuda":
            raise UserError(
                f"train.precision=fp16 needs a CUDA device (training on {device}); use bf16 or fp32"
            )
        return torch.float16
    raise UserError(f"train.precision={precision!r}: choose auto, bf16, fp16 or fp32")


def build_optimizer(
    cfg: TrainConfig, groups: list[dict[str, Any]], device: torch.device
) -> torch.optim.Optimizer:
    """AdamW or SGD over ``groups``, fused (one kernel for all parameters) where torch has it."""
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if device.type in ("cpu", "cuda"):
        kwargs["fused"] = True
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, betas=(cfg.betas[0], cfg.betas[1]), **kwargs)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, **kwargs)
    raise UserError(f"train.optimizer={cfg.optimizer!r}: choose adamw or sgd")


def _config_dict(cfg: Any) -> dict[str, Any] | None:
    if cfg is None:
        return None
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return to_dict(cfg)
    if isinstance(cfg, dict):
        return to_dict(cfg)
    raise TypeError(f"config_to_save must be a dataclass or a dict, got {type(cfg).__name__}")


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Trains ``model`` on ``dataset`` as ``cfg`` says, writing into ``output_dir``.

    ``param_groups(model)`` may return custom AdamW groups (each may carry its own ``lr``,
    kept in proportion to the schedule). ``eval_fn(model, epoch)`` runs on rank 0 at each
    epoch end, with the training RNG streams left untouched; its metrics go to eval.csv and
    TensorBoard, and ``best_metric`` among them picks ``checkpoints/best.pt``.
    ``on_epoch_start(epoch)`` runs on rank 0 before each epoch's first batch (also a resumed one).
    Call :func:`ecamp.train.distributed.cleanup` once the stage is done with DDP.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        cfg: TrainConfig,
        output_dir: str | Path,
        collate_fn: Callable | None = None,
        param_groups: Callable[[nn.Module], list[dict]] | None = None,
        eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
        config_to_save: Any = None,
        best_metric: str | None = None,
        best_mode: str = "max",
        num_workers: int = 0,
        persistent_workers: bool = False,
        on_epoch_start: Callable[[int], None] | None = None,
    ) -> None:
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if cfg.accum_steps < 1:
            raise UserError(f"train.accum_steps must be >= 1, got {cfg.accum_steps}")
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.eval_fn = eval_fn
        self.on_epoch_start = on_epoch_start
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.config = _config_dict(config_to_save)
        self.dist = du.init_distributed(cfg.device)
        self.device = self.dist.device
        self.ckpts = CheckpointDir(self.output_dir / "checkpoints", cfg.keep_last)

        # rank-dependent streams: dropout / masking differ across ranks, as with one big batch
        seed = cfg.seed + self.dist.rank
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        torch.manual_seed(seed)

        # no page faults on re-allocated CPU gradients; process-wide, so only when the ecamp CLI
        # (or the caller) opted in (utils/allocator)
        apply_if_requested(self.device.type)
        self.model = model.to(self.device)
        self.fingerprint = model_fingerprint(self.model)
        groups = (
            param_groups(self.model)
            if param_groups
            else default_param_groups(self.model, cfg.weight_decay)
        )
        for g in groups:
            g.setdefault("lr", cfg.lr)
            g["base_lr"] = g["lr"]
        self._group_hparams = [{k: v for k, v in g.items() if k != "params"} for g in groups]
        self.optimizer = build_optimizer(cfg, groups, self.device)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )

        self.ddp: Any = None
        forward_model: nn.Module = self.model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(
                self.model, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters
            )
            forward_model = self.ddp
        self.forward_model: Callable = (
            torch.compile(forward_model) if cfg.compile else forward_model
        )

        ds: Any = (
            dataset if getattr(dataset, "accepts_seed", False) else SeededIndexDataset(dataset)
        )
        self.sampler = ShardedBatchSampler(
            len(ds),
            cfg.batch_size,
            self.dist.world_size,
            self.dist.rank,
            cfg.seed,
            drop_last=cfg.drop_last,
        )
        if self.sampler.num_batches == 0:
            raise UserError(
                f"the dataset has {len(ds)} samples, fewer than one global batch "
                f"({cfg.batch_size} x {self.dist.world_size} processes); lower train.batch_size "
                "or set train.drop_last=false"
            )
        loader_gen = torch.Generator()
        loader_gen.manual_seed(cfg.seed)
        self.loader = DataLoader(
            ds,
            batch_sampler=self.sampler,
            collate_fn=collate_fn,
            num_workers=num_workers,
            persistent_workers=persistent_workers and num_workers > 0,
            pin_memory=self.device.type == "cuda",
            generator=loader_gen,  # keeps DataLoader from drawing on the global torch RNG
        )

        self.micro_per_epoch = self.sampler.num_batches
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.accum_steps)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.stop_step = (
            min(self.total_steps, cfg.max_steps) if cfg.max_steps > 0 else self.total_steps
        )
        warmup = (
            cfg.warmup_steps
            if cfg.warmup_steps > 0
            else round(cfg.warmup_epochs * self.steps_per_epoch)
        )
        self.scheduler = WarmupCosine(
            self.optimizer, cfg.lr, cfg.min_lr, warmup, schedule_horizon(cfg, self.steps_per_epoch)
        )

        self.step = 0
        self.epoch = 0
        self.micro_in_epoch = 0
        self.best_value: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self._last_saved_step = -1

    # ----------------------------------------------------------------- resume

    def _resume(self) -> int | None:
        """Load the checkpoint ``cfg.resume`` names; returns its step (None = fresh run)."""
        path = resolve_resume(self.cfg.resume, self.ckpts)
        if path is None:
            stale = self.ckpts.step_files()
            if stale and self.dist.is_main:
                # a fresh run must not have its new, lower-numbered files pruned in favour of these
                log.warning(
                    "train.resume=%s: starting afresh; deleting %d old checkpoint(s) in %s",
                    self.cfg.resume,
                    len(stale),
                    self.ckpts.root,
                )
                for p in [*stale, self.ckpts.root / "latest", self.ckpts.best_path]:
                    p.unlink(missing_ok=True)
            du.barrier()
            return None
        value = (self.cfg.resume or "").strip()
        if value != "auto" and Path(value).is_file():
            state = load_checkpoint(path)  # the file named: no silent substitute
        else:
            folder = CheckpointDir(path.parent, self.cfg.keep_last)
            found = folder.load_readable(path)
            assert found is not None  # path itself is a step file of that folder
            path, state, broken = found
            du.barrier()  # every rank has loaded before a damaged file is moved away
            if broken and self.dist.is_main:
                folder.set_aside(broken)
        if state.get("format") != CKPT_FORMAT:
            raise UserError(
                f"{path} is not a training checkpoint of this version (format {state.get('format')!r})"
            )
        check_compatible(state, path, self.config, self.fingerprint)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(f"checkpoint {path} does not fit this model: {e}") from None
        saved_groups = state["optimizer"].get("param_groups") or [{}]
        if ("betas" in saved_groups[0]) != isinstance(self.optimizer, torch.optim.AdamW):
            raise UserError(
                f"checkpoint {path} was trained with another optimizer than "
                f"train.optimizer={self.cfg.optimizer}; use the same one or another --output"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        # hyper-parameters (lr, weight decay, betas) come from the current config
        for g, hp in zip(self.optimizer.param_groups, self._group_hparams):
            g.update(hp)
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        samples = int(state["samples_in_epoch"])
        if int(state["global_batch"]) == self.sampler.global_batch:
            self.micro_in_epoch = int(state["micro_in_epoch"])
        else:
            self.micro_in_epoch = samples // self.sampler.global_batch
            log.warning(
                "global batch changed (%s -> %s): resuming at sample %s of epoch %s, not bit-exact",
                state["global_batch"],
                self.sampler.global_batch,
                self.micro_in_epoch * self.sampler.global_batch,
                self.epoch,
            )
        if int(state.get("dataset_len", -1)) != self.sampler.n:
            log.warning(
                "dataset size changed (%s -> %s) since %s",
                state.get("dataset_len"),
                self.sampler.n,
                path,
            )
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            restore_rng(rngs[self.dist.rank])
        else:
            log.warning(
                "world size changed (%s -> %s): RNG streams reseeded",
                len(rngs),
                self.dist.world_size,
            )
            torch.manual_seed(self.cfg.seed + self.dist.rank + 7919 * self.step)
        best = state.get("best") or {}
        if best.get("metric") == self.best_metric:
            self.best_value = best.get("value")
        self.last_metrics = dict(state.get("metrics") or {})
        self._last_saved_step = self.step
        if self.dist.is_main:
            log.info(
                "resumed from %s: step %d, epoch %d, batch %d",
                path,
                self.step,
                self.epoch,
                self.micro_in_epoch,
            )
        return self.step

    # ----------------------------------------------------------------- checkpoints

    def _state(self) -> dict[str, Any] | None:
        """The full training state on rank 0 (None elsewhere); collective (RNG gather)."""
        rngs = du.all_gather_objects(capture_rng())
        if not self.dist.is_main:
            return None
        return {
            "format": CKPT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step,
            "epoch": self.epoch,
            "micro_in_epoch": self.micro_in_epoch,
            "samples_in_epoch": self.micro_in_epoch * self.sampler.global_batch,
            "global_batch": self.sampler.global_batch,
            "world_size": self.dist.world_size,
            "dataset_len": self.sampler.n,
            "rng": rngs,
            "config": mask_secrets(self.config),
            "train_config": to_dict(self.cfg),
            "fingerprint": self.fingerprint,
            "best": {"metric": self.best_metric, "value": self.best_value},
            "metrics": self.last_metrics,
        }

    def _save(self, also_best: bool = False) -> None:
        state = self._state()
        if state is not None:
            self.ckpts.save(state, self.step)
            if also_best:
                self.ckpts.save_best(state)
        self._last_saved_step = self.step
        du.barrier()

    # ----------------------------------------------------------------- evaluation

    def _evaluate(self) -> bool:
        """Run eval_fn on rank 0; returns whether this is the best state so far (all ranks)."""
        improved = False
        if self.eval_fn is not None and self.dist.is_main:
            was_training = self.model.training
            self.model.eval()
            with preserved_rng(self.device):
                metrics = {k: float(v) for k, v in self.eval_fn(self.model, self.epoch).items()}
            self.model.train(was_training)
            self.last_eval = metrics
            self.eval_log.log({"step": self.step, "epoch": self.epoch, **metrics})
            if any(math.isfinite(v) for v in metrics.values()):  # all-NaN: validation skipped
                log.info(
                    "epoch %d eval: %s",
                    self.epoch,
                    ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                )
            if self.best_metric:
                if self.best_metric not in metrics:
                    raise UserError(
                        f"best metric {self.best_metric!r} not among eval metrics {sorted(metrics)}"
                    )
                v = metrics[self.best_metric]
                b = self.best_value
                if math.isfinite(v) and (
                    b is None or (v > b if self.best_mode == "max" else v < b)
                ):
                    self.best_value = v
                    improved = True
        return bool(du.broadcast_object(improved))

    # ----------------------------------------------------------------- the loop

    def _save_config(self) -> None:
        if self.config is None or not self.dist.is_main:
            return
        atomic_write_text(
            self.output_dir / "config.yaml",
            yaml.safe_dump(mask_secrets(self.config), sort_keys=False),
        )

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or ``max_steps``; returns a summary (also train_summary.json)."""
        cfg = self.cfg
        main = self.dist.is_main
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        resumed = self._resume()
        # only now: a run refused (another model's checkpoints) leaves the run's config as it was
        self._save_config()
        tb = (
            open_tensorboard(self.output_dir / "tensorboard", resumed)
            if (main and cfg.tensorboard)
            else None
        )
        self.train_log = MetricsLogger(
            self.output_dir,
            "metrics.csv",
            tb_prefix="train",
            enabled=main,
            resume_step=resumed,
            tb_writer=tb,
        )
        self.eval_log = MetricsLogger(
            self.output_dir,
            "eval.csv",
            tb_prefix="eval",
            enabled=main,
            resume_step=resumed,
            tb_writer=tb,
        )
        if main:
            log.info(
                "training on %s x%d, precision %s: %d steps/epoch, %d total, stop at %d",
                self.device,
                self.dist.world_size,
                self.amp_dtype or "fp32",
                self.steps_per_epoch,
                self.total_steps,
                self.stop_step,
            )
        bar = None
        if main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.stop_step, initial=self.step, unit="step", dynamic_ncols=True)
        try:
            self._train(bar)
        finally:
            if bar is not None:
                bar.close()
            self.train_log.close()
            self.eval_log.close()
            if tb is not None:
                tb.close()
        if self._last_saved_step != self.step:
            self._save()
        summary = {
            "steps": self.step,
            "epochs": self.epoch,
            "micro_in_epoch": self.micro_in_epoch,
            "last": self.last_metrics,
            "last_eval": self.last_eval,
            "best_metric": self.best_metric,
            "best_value": self.best_value,
            "checkpoint": str(self.ckpts.latest()) if main else None,
            "best_checkpoint": str(self.ckpts.best_path)
            if main and self.ckpts.best_path.is_file()
            else None,
            "output_dir": str(self.output_dir),
            "metrics_csv": str(self.train_log.path),
        }
        if main:
            atomic_write_text(
                self.output_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n"
            )
        return summary

    def _train(self, bar: Any) -> None:
        cfg, accum, nb = self.cfg, self.cfg.accum_steps, self.micro_per_epoch
        autocast = torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )
        sums: dict[str, torch.Tensor] = {}
        n_micro = 0
        n_samples = 0
        t_last = time.perf_counter()
        lr = self.scheduler.apply(self.step)  # also right when resuming off a group boundary
        self.model.train()
        while self.epoch < cfg.epochs and self.step < self.stop_step:
            self.sampler.set_epoch(self.epoch, self.micro_in_epoch)
            if self.on_epoch_start is not None and self.dist.is_main:
                self.on_epoch_start(self.epoch)
            for batch in self.loader:
                group_start = (self.micro_in_epoch // accum) * accum
                group_size = min(accum, nb - group_start)
                last_micro = self.micro_in_epoch - group_start + 1 == group_size
                if self.micro_in_epoch == group_start:
                    lr = self.scheduler.apply(self.step)
                n_samples += batch_length(batch) or self.cfg.batch_size
                batch = move_to_device(batch, self.device)
                sync = (
                    contextlib.nullcontext()
                    if (self.ddp is None or last_micro)
                    else self.ddp.no_sync()
                )
                with sync:
                    with autocast:
                        out = self.forward_model(batch)
                    if not isinstance(out, dict) or "loss" not in out:
                        raise TypeError("model(batch) must return a dict with a scalar 'loss'")
                    self.scaler.scale(out["loss"].float() / group_size).backward()
                for k, v in out.items():
                    if isinstance(v, torch.Tensor) and v.numel() == 1:
                        v = v.detach().float().reshape(())
                        sums[k] = sums[k] + v if k in sums else v
                n_micro += 1
                self.micro_in_epoch += 1
                if not last_micro:
                    continue

                grad_norm = None
                if cfg.clip_grad > 0:
                    self.scaler.unscale_(self.optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if grad_norm is not None:
                    # weighted by micro-batches so _log's per-micro mean is a per-step mean
                    gn = grad_norm.detach().float() * group_size
                    sums["grad_norm"] = sums["grad_norm"] + gn if "grad_norm" in sums else gn
                if bar is not None:
                    bar.update(1)

                done = self.step >= self.stop_step
                ckpt_now = (
                    cfg.ckpt_every > 0
                    and self.step % cfg.ckpt_every == 0
                    and self.micro_in_epoch < nb
                )
                # closing the log interval at checkpoints keeps a resumed run's rows identical
                boundary = done or ckpt_now or self.micro_in_epoch == nb
                if self.step % max(1, cfg.log_every) == 0 or boundary:
                    self._log(sums, n_micro, n_samples, time.perf_counter() - t_last, lr, bar)
                    sums, n_micro, n_samples, t_last = {}, 0, 0, time.perf_counter()
                if done:
                    break
                if ckpt_now:
                    self._save()
            if self.micro_in_epoch < nb:
                break  # stopped by max_steps inside the epoch
            improved = self._evaluate()
            self.epoch += 1
            self.micro_in_epoch = 0
            self._save(also_best=improved)

    def _log(
        self,
        sums: dict[str, torch.Tensor],
        n_micro: int,
        n_samples: int,
        seconds: float,
        lr: float,
        bar: Any,
    ) -> None:
        """Average the interval's scalars over micro-batches and ranks; write on rank 0."""
        if n_micro == 0:
            return
        keys = sorted(sums)
        vec = torch.stack([sums[k].to(self.device) for k in keys]) / n_micro
        vec = du.all_reduce_mean(vec)
        values = dict(zip(keys, vec.tolist()))
        loss = values.get("loss", float("nan"))
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {self.step}; lower train.lr, raise train.warmup_*, "
                "set train.clip_grad, or use train.precision=fp32"
            )
        ips = n_samples * self.dist.world_size / max(seconds, 1e-9)
        self.last_metrics = {"loss": loss, **values, "lr": lr}
        if not self.dist.is_main:
            return
        row = {"step": self.step, "epoch": self.epoch, "lr": lr, "loss": loss}
        row.update({k: v for k, v in values.items() if k != "loss"})
        row["images_per_s"] = ips
        self.train_log.log(row)
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}", refresh=False)
        else:
            log.info(
                "step %d/%d epoch %d loss %.4f lr %.3e %.1f img/s",
                self.step,
                self.stop_step,
                self.epoch,
                loss,
                lr,
                ips,
            )
