"""`ecamp finetune`: downstream classification, segmentation and detection (SPEC.md section 7).

One stage for the paper's Tables 1-3: an encoder (``--init``: our export, a pre-training
checkpoint, the authors' release, a timm ViT name, or random) gets a task head from
:mod:`ecamp.models.heads` and trains on the generic loop (AMP, DDP, resume, logs).  The
validation metric picks ``checkpoints/best.pt`` (macro AUC for multi-label / binary
classification, accuracy for multi-class, Dice at 0.5 for segmentation (per image as the
release's ``get_dice`` by default, ``seg_dice=global`` pools the pixels), mAP over IoU
0.40..0.75 with the MGCA protocol for detection); that state is scored on the TEST split and
written to ``results.json``.

With no ``--config`` and no ``--dataset`` the embedded default runs: a tiny ViT on the
synthetic phantom world (``ecamp.data.synthetic``), seconds on a laptop CPU; its segmentation
targets the large lesions (effusion, pneumothorax; ``data.labels`` picks others from the world's
per-class mask).  The paper's recipes per dataset are in ``configs/paper/finetune_*.yaml``
(classification with the release's SGD settings: ``train.optimizer=sgd``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecamp.config import apply_overrides, from_dict, read_yaml
from ecamp.config.finetune import (  # noqa: F401  (moved there; old import path kept)
    DATASETS,
    TASKS,
    FinetuneConfig,
    FinetuneDataConfig,
    FinetuneModelConfig,
    _finetune_train,
    check_config,
)
from ecamp.errors import UserError
from ecamp.utils.cliargs import add_config_args
from ecamp.utils.logging import get_logger

HELP = "fine-tune / linear-probe an encoder on classification, segmentation or detection"

log = get_logger(__name__)

# moved to the data layer; the old import paths stay (resolved lazily: the CLI builds its
# parser from this module without importing pandas or torch)
_MOVED = {
    "select_labels": "ecamp.data.downstream",
    "PHANTOM_FOCAL": "ecamp.data.sources.phantom",
    "PHANTOM_SEG_DEFAULT": "ecamp.data.sources.phantom",
    "phantom_classes": "ecamp.data.sources.phantom",
    "phantom_manifest": "ecamp.data.sources.phantom",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def task_metric(task: str, multilabel: bool) -> str:
    """The headline metric of a task: auc | acc | dice | map."""
    if task == "cls":
        return "auc" if multilabel else "acc"
    return {"seg": "dice", "det": "map"}[task]


def selection_metric(cfg: FinetuneConfig, multilabel: bool) -> str:
    """The validation metric that picks ``best.pt``: ``select_metric``, else the headline one."""
    from ecamp.eval.tasks import scalar_metric_names

    headline = task_metric(cfg.task, multilabel)
    if not cfg.select_metric:
        return headline
    names = scalar_metric_names(cfg.task, headline, cfg.det_protocol)
    if cfg.select_metric not in names:
        raise UserError(
            f"select_metric={cfg.select_metric!r} is not a validation metric of task "
            f"{cfg.task!r} (det_protocol={cfg.det_protocol}); choose one of {names} or leave it "
            "empty for the headline metric"
        )
    return cfg.select_metric


# --------------------------------------------------------------------------- data


@dataclass
class TaskData:
    """The datasets of one run and what the head needs to know."""

    datasets: dict[str, Any]
    labels: list[str]
    label_columns: list[str]
    multilabel: bool

    @property
    def num_classes(self) -> int:
        return len(self.labels) if self.multilabel or len(self.labels) > 1 else 1


def build_manifest(cfg: FinetuneConfig, output_dir: Path) -> tuple[Any, list[str], list[str], bool]:
    """(manifest, class names, label columns, multilabel) for the configured dataset and task
    (:func:`ecamp.data.downstream.build_manifest`; a phantom world is drawn by rank 0 only)."""
    from ecamp.data.downstream import build_manifest as manifest_of
    from ecamp.train import distributed as du

    return manifest_of(
        cfg.task, cfg.data, cfg.train.seed, output_dir, main=du.is_main(), barrier=du.barrier
    )


def _open_cache(folder: str) -> Any:
    """The downstream cache ``data.cache`` names (opened once, shared by the splits)."""
    if not folder:
        return None
    from ecamp.data.downstream_cache import DownstreamCache

    cache = DownstreamCache(folder)
    log.info("images from the cache %s (%d px, %s)", folder, cache.size, cache.images.format)
    return cache


def build_data(cfg: FinetuneConfig, output_dir: Path, img_size: int) -> TaskData:
    """Train / val / test datasets at ``img_size``."""
    from ecamp.data.downstream import SOURCES, build_datasets, select_labels

    df, labels, columns, multilabel = build_manifest(cfg, output_dir)
    d = cfg.data
    if cfg.task == "cls":
        labels, columns = select_labels(labels, columns, list(d.labels), multilabel)
    elif d.labels and not SOURCES[d.dataset].picks_target_classes:
        raise UserError(
            f"data.labels selects lesion classes of the phantom world for {cfg.task}; "
            f"{d.dataset} {cfg.task} has one target, leave data.labels empty"
        )
    datasets = build_datasets(
        df,
        cfg.task,
        columns,
        multilabel=multilabel,
        size=img_size,
        mean=d.mean,
        std=d.std,
        crop_scale=tuple(d.crop_scale),
        flip_prob=d.flip_prob,
        max_boxes=d.max_boxes,
        cache=_open_cache(d.cache),
        prepare_size=d.cache_size,
    )
    if "train" not in datasets:
        raise UserError(f"{d.dataset}: the manifest has no training rows (split == 'train')")
    log.info(
        "%s %s: %s",
        d.dataset,
        cfg.task,
        ", ".join(f"{k} {len(v)}" for k, v in datasets.items()),
    )
    return TaskData(datasets, labels, columns, multilabel)


# --------------------------------------------------------------------------- model


def build_encoder(cfg: FinetuneConfig) -> Any:
    """The encoder ``model.init`` names, at ``model.img_size``; writes its architecture back
    into ``cfg.model`` so the saved config describes the trained network."""
    from ecamp.models.checkpoints import timm_kwargs
    from ecamp.models.factory import EncoderArch, create_encoder

    m = cfg.model
    arch = EncoderArch(
        img_size=m.img_size or 224,
        patch_size=m.patch_size,
        embed_dim=m.embed_dim,
        depth=m.depth,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
    )
    res = create_encoder(m.init, img_size=m.img_size or None, drop_path=m.drop_path, arch=arch)
    kw = timm_kwargs(res.encoder)
    m.img_size, m.patch_size, m.embed_dim = kw["img_size"], kw["patch_size"], kw["embed_dim"]
    m.depth, m.num_heads, m.mlp_ratio = kw["depth"], kw["num_heads"], float(kw["mlp_ratio"])
    log.info("encoder from %s (%s): %s", res.source, res.kind, kw)
    return res


def build_model(cfg: FinetuneConfig, encoder: Any, num_classes: int, multilabel: bool) -> Any:
    """The task model of ``cfg.task`` on ``encoder`` (through the models-level factory)."""
    from ecamp.models.factory import create_model

    return create_model(cfg, encoder=encoder, num_classes=num_classes, multilabel=multilabel)


# --------------------------------------------------------------------------- evaluation


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def evaluate(model: Any, dataset: Any, cfg: FinetuneConfig, data: TaskData) -> dict[str, Any]:
    """Score ``model`` on ``dataset``: the headline metric plus task extras."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from ecamp.data.sources.common import parse_boxes
    from ecamp.eval import metrics as M
    from ecamp.eval.tasks import EVALUATORS
    from ecamp.train.precision import resolve_precision
    from ecamp.utils.device import move_to_device

    device = next(model.parameters()).device
    amp = resolve_precision(cfg.train.precision, device)
    loader = DataLoader(
        dataset, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.data.num_workers
    )
    was_training = model.training
    model.eval()
    scores: list[np.ndarray] = []
    inter: list[np.ndarray] = []
    total: list[np.ndarray] = []
    preds: list[tuple[np.ndarray, np.ndarray]] = []
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None),
    ):
        for batch in loader:
            batch = move_to_device(batch, device)
            if cfg.task == "cls":
                scores.append(model.predict(batch).float().cpu().numpy())
            elif cfg.task == "seg":
                prob = model.predict(batch).float().cpu().numpy()
                i, t = M.dice_counts(prob, batch["mask"][:, 0].cpu().numpy())
                inter.append(i)
                total.append(t)
            else:
                for b, s in model.predict(batch, conf_threshold=cfg.det_conf_threshold):
                    preds.append((b.float().cpu().numpy(), s.float().cpu().numpy()))
    model.train(was_training)
    name = task_metric(cfg.task, data.multilabel)
    if cfg.task == "cls":
        return EVALUATORS["cls"](
            dataset.targets, np.concatenate(scores), data.labels, data.multilabel, name
        )
    if cfg.task == "seg":
        return EVALUATORS["seg"](np.concatenate(inter), np.concatenate(total), cfg.seg_dice, name)
    targets = [
        np.asarray(parse_boxes(str(s or "[]")), np.float32).reshape(-1, 4)
        for s in dataset.frame["boxes"]
    ]
    return EVALUATORS["det"](preds, targets, cfg.det_protocol, name)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


# --------------------------------------------------------------------------- the stage


def _apply_steps(cfg: FinetuneConfig, n_train: int) -> None:
    """``steps`` > 0: epochs that cover that many optimizer steps, stopping exactly there."""
    from ecamp.train import distributed as du

    if cfg.steps <= 0:
        return
    t = cfg.train
    global_batch = t.batch_size * max(1, du.world_size())
    micro = n_train // global_batch if t.drop_last else math.ceil(n_train / global_batch)
    per_epoch = max(1, math.ceil(max(1, micro) / t.accum_steps))
    t.epochs = math.ceil(cfg.steps / per_epoch)
    t.max_steps = cfg.steps


def finetune(cfg: FinetuneConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run one downstream job into ``output_dir``; returns the results (also results.json)."""
    import torch

    from ecamp.models.heads import param_groups_lrd
    from ecamp.train import distributed as du
    from ecamp.train.checkpoint import load_checkpoint
    from ecamp.train.loop import Trainer
    from ecamp.utils.io import atomic_write_text

    check_config(cfg)
    out = Path(output_dir)
    du.init_distributed(cfg.train.device)
    torch.manual_seed(cfg.train.seed)  # the same random head / encoder init on every rank and run
    resolved = build_encoder(cfg)
    data = build_data(cfg, out, cfg.model.img_size)
    model = build_model(cfg, resolved.encoder, data.num_classes, data.multilabel)
    _apply_steps(cfg, len(data.datasets["train"]))
    metric = task_metric(cfg.task, data.multilabel)
    select = selection_metric(cfg, data.multilabel)
    val = data.datasets.get("val")
    last_epoch = cfg.train.epochs - 1

    def eval_fn(m: Any, epoch: int) -> dict[str, float]:
        if (epoch + 1) % cfg.eval_every and epoch != last_epoch:
            return {metric: float("nan"), select: float("nan")}  # skipped: never "best"
        return _scalars(evaluate(m, val, cfg, data))

    if val is None:
        log.warning("no validation split: the last state is the one tested")
    trainer = Trainer(
        model,
        data.datasets["train"],
        cfg.train,
        out,
        param_groups=lambda m: param_groups_lrd(
            m, cfg.train.lr, cfg.train.weight_decay, cfg.layer_decay
        ),
        eval_fn=eval_fn if val is not None else None,
        config_to_save=cfg,
        best_metric=select if val is not None else None,
        best_mode="max",
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
    )
    summary = trainer.fit()
    results: dict[str, Any] = {}
    if du.is_main():
        chosen = summary.get("best_checkpoint") or summary.get("checkpoint")
        if chosen:
            trainer.model.load_state_dict(load_checkpoint(chosen)["model"])
        split = "test" if "test" in data.datasets else "val"
        if split != "test":
            log.warning("no test split: scoring the validation split")
        scored = evaluate(trainer.model, data.datasets[split], cfg, data)
        generated = _generated(cfg.data.dataset)  # no release lists: a random share, own splits
        results = {
            "task": cfg.task,
            "dataset": cfg.data.dataset,
            "metric": metric,
            **({"dice_reduction": cfg.seg_dice} if cfg.task == "seg" else {}),
            "value": _finite(scored[metric]),
            "split": split,
            "metrics": {k: (_finite(v) if isinstance(v, float) else v) for k, v in scored.items()},
            "val_best": _finite(summary.get("best_value")),
            "val_best_metric": select,
            "init": cfg.model.init,
            "init_kind": resolved.kind,
            "linear_probe": cfg.model.linear_probe,
            "fraction": cfg.data.fraction,
            "sampling": "random" if generated else cfg.data.sampling,
            "split_mode": None if generated else cfg.data.split_mode,
            "n_train": len(data.datasets["train"]),
            "n_test": len(data.datasets[split]),
            "labels": data.labels,
            "steps": summary["steps"],
            "checkpoint": chosen,
            "output_dir": str(out),
        }
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
        log.info("%s %s %s on %s: %s", cfg.data.dataset, cfg.task, metric, split, results["value"])
    du.cleanup()
    return results


# --------------------------------------------------------------------------- command


def embedded_config_path(task: str) -> Path:
    """The packaged default config of ``task`` (``ecamp/resources/configs/finetune_<task>.yaml``)."""
    from ecamp.config.embedded import embedded_config

    return embedded_config(f"finetune_{task}.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ecamp finetune`."""
    add_config_args(parser)
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="cls (classification), seg (segmentation) or det (detection); same as task=...; "
        "without --config it also picks the embedded default (default: cls)",
    )
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        help="labelled set (data.dataset); phantom = the synthetic world (default)",
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="the dataset's root folder in its official layout (data.root)",
    )
    parser.add_argument(
        "--init",
        metavar="PATH|NAME",
        help="encoder: an exported encoder folder/file, an ecamp run folder or checkpoint .pt, "
        "the authors' release checkpoint, a timm ViT name (fetched by timm when online), "
        "or 'random' (model.init)",
    )
    parser.add_argument(
        "--linear-probe",
        action="store_true",
        help="freeze the encoder and train only the head (model.linear_probe=true)",
    )
    parser.add_argument(
        "--fraction",
        type=float,
        metavar="PCT",
        help="percent of the training labels: 1, 10, 100 use the release lists; "
        "other values need data.sampling=random (data.fraction)",
    )


def resolve_config(args: argparse.Namespace) -> FinetuneConfig:
    """Embedded default of the task (or --config), then the flags, then dotted overrides."""
    task = args.task or "cls"
    data: dict[str, Any] = read_yaml(args.config or embedded_config_path(task))
    overrides = list(args.overrides or [])
    flags = []
    if args.task:
        flags.append(f"task={args.task}")
    if args.dataset:
        flags.append(f"data.dataset={args.dataset}")
    if args.data_root:
        flags.append(f"data.root={json.dumps(args.data_root)}")
    if args.init:
        flags.append(f"model.init={json.dumps(args.init)}")
    if args.linear_probe:
        flags.append("model.linear_probe=true")
    if args.fraction is not None:
        flags.append(f"data.fraction={args.fraction}")
    apply_overrides(data, flags + overrides)
    cfg = from_dict(FinetuneConfig, data)
    if not args.config and not _generated(cfg.data.dataset):
        log.warning(
            "no --config: the embedded quick recipe (tiny-size knobs) runs on %s; the paper's "
            "recipes are configs/paper/finetune_%s_*.yaml",
            cfg.data.dataset,
            cfg.data.dataset,
        )
    return cfg


def _generated(dataset: str) -> bool:
    """Whether ``dataset`` is drawn by ecamp rather than read from official files."""
    from ecamp.data.downstream import SOURCES

    return SOURCES[dataset].generated


def _default_output(cfg: FinetuneConfig) -> Path:
    return Path("runs") / time.strftime(f"finetune-{cfg.data.dataset}-{cfg.task}-%Y%m%d-%H%M%S")


def run(args: argparse.Namespace) -> int:
    """Entry point of `ecamp finetune`."""
    from ecamp.utils.env import launch_rank
    from ecamp.utils.logging import setup_logging

    rank = launch_rank()
    cfg = resolve_config(args)
    out = Path(args.output or cfg.output or _default_output(cfg))
    cfg.output = str(out)
    setup_logging(out, rank=rank)
    log.info("fine-tuning %s on %s into %s", cfg.task, cfg.data.dataset, out)
    results = finetune(cfg, out)
    if rank == 0:
        keys = ("task", "dataset", "metric", "value", "split", "checkpoint")
        print(json.dumps({k: results.get(k) for k in keys}))
    return 0


__all__ = [
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneModelConfig",
    "build_data",
    "build_encoder",
    "build_model",
    "evaluate",
    "finetune",
    "task_metric",
]
