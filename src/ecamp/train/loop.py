"""The generic training loop: one ``Trainer`` for pre-training, GLoRIA and downstream heads.

It knows nothing of any model.  ``model(batch)`` returns a dict with a scalar ``loss`` and
optionally other scalar tensors (all logged).  The loop owns data order
(:mod:`ecamp.train.sampling`) so a run can stop anywhere and resume bit-exactly: checkpoints
store the position inside the epoch, every rank's RNG states, optimizer, scheduler and
grad-scaler state.  Its parts live next door: precision (autocast, grad scaler), optimizer,
schedule, progress (metrics.csv, eval.csv, TensorBoard, the bar), resume (which checkpoint),
checkpoint (files, RNG state) and distributed (DDP).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from ecamp.config import TrainConfig, to_dict
from ecamp.errors import UserError
from ecamp.models.params import param_groups as default_param_groups
from ecamp.train import distributed as du
from ecamp.train.checkpoint import (
    CKPT_FORMAT,
    CheckpointDir,
    capture_rng,
    model_fingerprint,
    preserved_rng,
    restore_rng,
)
from ecamp.train.optimizer import build_optimizer
from ecamp.train.precision import autocast, grad_scaler, resolve_precision
from ecamp.train.progress import TrainingProgress, batch_length
from ecamp.train.resume import load_resume_state
from ecamp.train.sampling import (
    SeededIndexDataset,
    ShardedBatchSampler,
    derive_seeds,
    training_loader,
)
from ecamp.train.schedule import build_schedule
from ecamp.utils.allocator import apply_if_requested
from ecamp.utils.device import move_to_device
from ecamp.utils.io import atomic_write_text
from ecamp.utils.logging import get_logger
from ecamp.utils.secrets import mask_secrets

# the names users import from here; their homes are the modules above
__all__ = [
    "SeededIndexDataset",
    "ShardedBatchSampler",
    "Trainer",
    "build_optimizer",
    "derive_seeds",
    "preserved_rng",
    "resolve_precision",
]

log = get_logger(__name__)


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
        self.scaler = grad_scaler(self.device, self.amp_dtype)

        self.ddp: Any = None
        forward_model: nn.Module = self.model
        if self.dist.distributed:
            self.ddp = du.wrap_ddp(self.model, self.device, cfg.find_unused_parameters)
            forward_model = self.ddp
        self.forward_model: Callable = (
            torch.compile(forward_model) if cfg.compile else forward_model
        )

        self.sampler, self.loader = training_loader(
            dataset,
            cfg,
            self.dist.world_size,
            self.dist.rank,
            self.device,
            collate_fn,
            num_workers,
            persistent_workers,
        )

        self.micro_per_epoch = self.sampler.num_batches
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.accum_steps)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.stop_step = (
            min(self.total_steps, cfg.max_steps) if cfg.max_steps > 0 else self.total_steps
        )
        self.scheduler = build_schedule(self.optimizer, cfg, self.steps_per_epoch)

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
        found = load_resume_state(
            self.cfg.resume, self.ckpts, self.config, self.fingerprint, self.dist.is_main
        )
        if found is None:
            return None
        path, state = found
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
            self.progress.log_eval(self.step, self.epoch, metrics)
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
        self.progress = TrainingProgress(self.output_dir, main, main and cfg.tensorboard, resumed)
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
        if main and cfg.progress:
            self.progress.show_bar(self.step, self.stop_step)
        try:
            self._train()
        finally:
            self.progress.close()
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
            "metrics_csv": str(self.progress.train_log.path),
        }
        if main:
            atomic_write_text(
                self.output_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n"
            )
        return summary

    def _train(self) -> None:
        cfg, accum, nb = self.cfg, self.cfg.accum_steps, self.micro_per_epoch
        amp = autocast(self.device, self.amp_dtype)
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
                    with amp:
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
                self.progress.step_done()

                done = self.step >= self.stop_step
                ckpt_now = (
                    cfg.ckpt_every > 0
                    and self.step % cfg.ckpt_every == 0
                    and self.micro_in_epoch < nb
                )
                # closing the log interval at checkpoints keeps a resumed run's rows identical
                boundary = done or ckpt_now or self.micro_in_epoch == nb
                if self.step % max(1, cfg.log_every) == 0 or boundary:
                    self._log(sums, n_micro, n_samples, time.perf_counter() - t_last, lr)
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
        self.progress.log_train(self.step, self.stop_step, self.epoch, lr, loss, values, ips)
