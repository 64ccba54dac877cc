"""`ecamp pretrain`: ECAMP pre-training (SPEC.md sections 2-6) on the generic training loop.

With no ``--config`` the embedded default runs: a tiny ECAMP on the synthetic phantom world,
which finishes in about a minute on a laptop CPU.  A config with an empty ``data.manifest``
keeps its model and recipe but trains on the phantom world too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ecamp.config import PretrainConfig, apply_overrides, from_dict, read_yaml
from ecamp.config.embedded import embedded_config
from ecamp.errors import UserError
from ecamp.utils.cliargs import add_config_args
from ecamp.utils.env import launch_rank
from ecamp.utils.logging import get_logger

HELP = "pre-train ECAMP: masked image + entity-centered language modelling, guided SR, MSCF"
DEFAULT_CONFIG = "pretrain_default.yaml"

log = get_logger(__name__)


def embedded_config_path(name: str = DEFAULT_CONFIG) -> Path:
    """Path of a config shipped inside the package (``ecamp/resources/configs``)."""
    return embedded_config(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ecamp pretrain`."""
    parser.epilog = (
        "ecamp pretrain show RUN --n 8: draw the MSCF text-to-image attention of a finished "
        "run (the paper's Figure 4); see `ecamp pretrain show --help`."
    )
    add_config_args(parser)
    parser.add_argument(
        "--preset",
        choices=["tiny", "paper", "release"],
        help="model preset (same as the override model.preset=NAME); "
        "default: tiny for the embedded default, else the config's",
    )
    parser.add_argument(
        "--init",
        metavar="CKPT",
        help="initialise from the ImageNet MAE checkpoint (mae_pretrain_vit_base.pth: encoder, and "
        "decoder when the file has one; every key's fate goes to init_report.json) or from the "
        "authors' released ECAMP checkpoint (every part; needs --preset release); "
        "'none' = random weights (same as the config key init)",
    )
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="skip training: export the encoder of the latest readable checkpoint in --output "
        "RUN, built from RUN/config.yaml (nothing else in RUN changes)",
    )


def resolve_config(args: argparse.Namespace) -> PretrainConfig:
    """Embedded default or --config, then --preset/--init, then dotted overrides."""
    data: dict[str, Any] = read_yaml(args.config or embedded_config_path())
    overrides = list(args.overrides or [])
    if args.preset:
        overrides.insert(0, f"model.preset={args.preset}")
    if args.init:
        overrides.insert(0, f"init={args.init}")
    apply_overrides(data, overrides)
    cfg = from_dict(PretrainConfig, data)
    return cfg


def _default_output() -> Path:
    return Path("runs") / time.strftime("pretrain-%Y%m%d-%H%M%S")


def build_dataset(cfg: PretrainConfig, output_dir: Path) -> Any:
    """The pre-training dataset: the manifest's train split, or the phantom world."""
    from ecamp.data.manifest import load_pretrain_manifest
    from ecamp.data.pretrain import PretrainDataset
    from ecamp.train import distributed as du

    manifest_path = cfg.data.manifest
    if not manifest_path:
        from ecamp.data.sources.phantom import ensure_world

        log.info("no data.manifest given: the phantom world stands in")
        manifest_path = str(
            ensure_world(
                output_dir / "phantom",
                n=cfg.data.synthetic_n,
                size=max(256, cfg.model.hr_size),
                seed=cfg.data.synthetic_seed,
                main=du.is_main(),
                barrier=du.barrier,
            )
        )
    df = load_pretrain_manifest(manifest_path, bad_rows=cfg.data.bad_rows)
    if "split" in df.columns:
        train = df[df["split"] == "train"]
        if len(train) == 0:
            raise UserError(f"{manifest_path}: no row has split == 'train'")
        train.attrs.update(df.attrs)
        df = train
    guidance = None
    if cfg.data.guidance:
        from ecamp.data.guidance import GuidanceStore

        guidance = GuidanceStore(cfg.data.guidance, kind=cfg.model.sr_guidance)
    return PretrainDataset(
        df, cfg.data, hr_size=cfg.model.hr_size, cache=cfg.data.cache or None, guidance=guidance
    )


NO_INIT = "none"


def check_init(cfg: PretrainConfig) -> str:
    """The checkpoint ``cfg.init`` names, or "" for random weights (``init: none`` or empty).

    A named file that does not exist stops the run before any work, saying where the
    ImageNet MAE file of the paper and release recipes comes from.
    """
    from ecamp.models.checkpoints import MAE_SOURCE

    init = cfg.init.strip()
    if not init or init.lower() == NO_INIT:
        return ""
    if not Path(init).is_file():
        raise UserError(
            f"init: {init} does not exist.  The paper and release recipes start from {MAE_SOURCE}. "
            f"Download it to {init} (or point init / --init at it), or write `init: none` to "
            "pre-train from random weights."
        )
    return init


def build_model(cfg: PretrainConfig, report_dir: Path | None = None) -> Any:
    """The ECAMP model, initialised from ``cfg.init`` when it names a file.

    An MAE checkpoint's load report (every key mapped, ignored or missing) is logged and,
    with ``report_dir``, written to ``init_report.json`` there.
    """
    from ecamp.models.checkpoints import init_from_mae, load_release_checkpoint, read_state_dict
    from ecamp.models.factory import create_model
    from ecamp.utils.io import atomic_write_text

    model = create_model(cfg.model)
    init = check_init(cfg)
    if not init:
        log.info("random initialisation (init: %s)", cfg.init or '""')
        return model
    sd = read_state_dict(init)
    if any(k.startswith("bert_encoder.") for k in sd):
        if cfg.model.preset != "release":
            raise UserError(f"{init} is the authors' release checkpoint: use --preset release")
        log.info("loaded release checkpoint %s: %s", init, load_release_checkpoint(model, sd))
        return model
    report = init_from_mae(model, sd, name=init)
    log.info("initialised from %s", "\n".join(report.lines()))
    if report_dir is not None:
        atomic_write_text(
            Path(report_dir) / "init_report.json", json.dumps(report.to_dict(), indent=2) + "\n"
        )
    return model


def check_text_fits(cfg: PretrainConfig) -> None:
    """The text pipeline's sequences must fit the text decoder's positions."""
    if cfg.text.max_length > cfg.model.max_text_len:
        raise UserError(
            f"text.max_length={cfg.text.max_length} exceeds model.max_text_len={cfg.model.max_text_len}"
        )


UPSAMPLED_WARN = 0.05  # share of enlarged SR crops above which `ecamp pretrain` warns


def upsampled_crop_monitor(dataset: Any, sampler: Any, cfg: PretrainConfig) -> Any:
    """An ``on_epoch_start`` hook: log the share of the epoch's crops that are up-sampled to
    become the ``hr_size`` SR target, warn above :data:`UPSAMPLED_WARN`.  Records each epoch's
    share in the returned function's ``history``."""
    from ecamp.data.images import cache_side_for
    from ecamp.data.pretrain import upsampled_fraction

    hr = cfg.model.hr_size
    history: dict[int, float] = {}
    warned: list[int] = []

    def hook(epoch: int) -> None:
        idx, seeds = sampler.epoch_items(epoch)
        frac, n = upsampled_fraction(dataset, list(zip(idx.tolist(), seeds.tolist())), hr)
        history[epoch] = frac
        note = "" if n >= len(idx) else f", estimated from {n} of {len(idx)}"
        log.info(
            "epoch %d: %.1f%% of the %d-px SR crops are up-sampled%s", epoch, 100 * frac, hr, note
        )
        if frac > UPSAMPLED_WARN and not warned:
            warned.append(epoch)  # once a run: later epochs only log their share
            side = cache_side_for(hr, (cfg.data.crop_scale[0], cfg.data.crop_scale[1]))
            log.warning(
                "%.1f%% of epoch %d's SR targets are crops of fewer than %d real pixels, "
                "enlarged to %d: the SR loss then learns interpolation.  Build the image cache "
                "at a side of at least %d (`ecamp cache MANIFEST DIR --size %d --format jpeg`) "
                "from images at least that large, or raise data.crop_scale",
                100 * frac,
                epoch,
                hr,
                hr,
                side,
                side,
            )

    hook.history = history  # type: ignore[attr-defined]
    return hook


def pretrain(cfg: PretrainConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run one pre-training job into ``output_dir``; returns the summary (also results.json)."""
    import torch

    from ecamp.data.pretrain import PretrainCollator
    from ecamp.models.checkpoints import export_encoder
    from ecamp.text.masking import TextBatcher
    from ecamp.text.tokenizer import fit_vocab_size
    from ecamp.train import distributed as du
    from ecamp.train.loop import Trainer
    from ecamp.utils.io import atomic_write_text

    out = Path(output_dir)
    check_init(cfg)  # a missing MAE file stops the run before any work
    du.init_distributed(cfg.train.device)  # before the rank-0-only phantom world is written
    dataset = build_dataset(cfg, out)
    batcher = TextBatcher(cfg.text)
    cfg.model.vocab_size = fit_vocab_size(
        cfg.model.vocab_size, batcher.tokenizer, cfg.text.tokenizer
    )
    check_text_fits(cfg)
    # the initial weights follow train.seed, whatever ran before in this process (pipeline
    # stages, a skipped stage on resume) and on every rank
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, out if du.is_main() else None)
    trainer = Trainer(
        model,
        dataset,
        cfg.train,
        out,
        collate_fn=PretrainCollator(batcher),
        config_to_save=cfg,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
    )
    monitor = upsampled_crop_monitor(dataset, trainer.sampler, cfg)
    trainer.on_epoch_start = monitor
    summary = trainer.fit()
    summary["upsampled_crops"] = {str(k): round(v, 4) for k, v in monitor.history.items()}
    summary["skipped_images"] = sorted(getattr(dataset, "bad_ids", set()))
    if du.is_main():
        enc = export_encoder(trainer.model, out / "encoder", extra={"source": "ecamp pretrain"})
        summary["encoder"] = str(enc)
        atomic_write_text(out / "results.json", json.dumps(summary, indent=2, default=str) + "\n")
    du.cleanup()
    return summary


def export_only(run_dir: str | Path) -> dict[str, Any]:
    """Export the encoder of the newest readable checkpoint of a pre-training run folder.

    The model is built from the run's own ``config.yaml`` (the one it trained with); no data
    is read or generated and the config is not rewritten.
    """
    from ecamp.config import to_dict
    from ecamp.models.checkpoints import export_encoder
    from ecamp.models.factory import create_model
    from ecamp.train.checkpoint import CheckpointDir, check_compatible, model_fingerprint

    out = Path(run_dir)
    cfg_path = out / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(
            f"--export-only: {cfg_path} does not exist; --output must be the folder of an "
            "`ecamp pretrain` run (it holds config.yaml and checkpoints/)"
        )
    cfg = from_dict(PretrainConfig, read_yaml(cfg_path))
    ckpts = CheckpointDir(out / "checkpoints")
    found = ckpts.load_readable(ckpts.latest())
    if found is None:
        raise UserError(
            f"--export-only: no checkpoint in {ckpts.root} (step_*.pt); train first, "
            f"e.g. ecamp pretrain --output {out}"
        )
    path, state, _ = found
    model = create_model(cfg.model)
    check_compatible(state, path, to_dict(cfg), model_fingerprint(model))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not fit the model of {cfg_path}: {e}") from None
    extra = {"source": "ecamp pretrain --export-only", "checkpoint": str(path)}
    enc = export_encoder(model, out / "encoder", extra={**extra, "step": state.get("step")})
    log.info("exported the encoder of %s (step %s) to %s", path, state.get("step"), enc)
    return {"encoder": str(enc), "checkpoint": str(path), "step": state.get("step")}


def run(args: argparse.Namespace) -> int:
    """Entry point of `ecamp pretrain`."""
    from ecamp.utils.logging import setup_logging

    if args.export_only:
        given = [
            name
            for name, v in (
                ("--config", args.config),
                ("--preset", args.preset),
                ("--init", args.init),
                ("overrides", args.overrides),
            )
            if v
        ]
        if not args.output or given:
            raise UserError(
                "--export-only takes only --output RUN: the model comes from RUN/config.yaml"
                + (f" (drop {', '.join(given)})" if given else "")
            )
        setup_logging()
        print(json.dumps(export_only(args.output)))
        return 0
    rank = launch_rank()
    cfg = resolve_config(args)
    out = Path(args.output or cfg.output or _default_output())
    cfg.output = str(out)
    setup_logging(out, rank=rank)
    log.info("pre-training into %s (model preset %s)", out, cfg.model.preset)
    summary = pretrain(cfg, out)
    if rank == 0:
        print(
            json.dumps(
                {k: summary[k] for k in summary if k in ("steps", "epochs", "last", "encoder")},
                default=str,
            )
        )
    return 0
