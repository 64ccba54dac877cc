"""`ecamp export`: any encoder checkpoint -> the timm-compatible safetensors + JSON form.

Which sources are accepted (random, exported encoders, run folders and training checkpoints,
the authors' release, timm state dicts and model names) and how each becomes a timm
``VisionTransformer`` is :func:`ecamp.models.factory.create_encoder` (``resolve_encoder``
here), the one place `ecamp finetune --init` uses too; this module is the command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# the encoder sources live in the models-level factory; re-exported for old import paths
from ecamp.models.factory import EncoderArch, ResolvedEncoder, infer_arch, resolve_encoder

__all__ = ["EncoderArch", "ResolvedEncoder", "export", "infer_arch", "resolve_encoder"]

HELP = "export the ViT encoder of a checkpoint as timm-loadable safetensors + JSON"


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ecamp export`."""
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="what to export: an ecamp run folder (its checkpoints/latest), a training "
        "checkpoint .pt (pretrain or finetune), the authors' release checkpoint, or any "
        "timm-named ViT state dict",
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        help="folder for encoder.safetensors + encoder.json "
        "(default: <SOURCE folder>/encoder for a run folder, else <file stem>_encoder beside it)",
    )
    parser.add_argument(
        "--img-size",
        type=int,
        metavar="N",
        help="export at this input size (position embedding resampled); "
        "default: the size the checkpoint was trained at",
    )


def export(source: str, output: str | Path, img_size: int | None = None) -> Path:
    """Export the encoder of ``source`` into ``output``; returns the safetensors path."""
    from ecamp.models.checkpoints import export_encoder

    res = resolve_encoder(source, img_size=img_size)
    extra = {"source": res.source, "source_kind": res.kind, **res.details}
    return export_encoder(res.encoder, output, extra=json.loads(json.dumps(extra, default=str)))


def default_output(source: str) -> Path:
    """Where `ecamp export SOURCE` writes when no --output is given."""
    p = Path(source).expanduser()
    return p / "encoder" if p.is_dir() else p.with_name(p.stem + "_encoder")


def run(args: argparse.Namespace) -> int:
    """Entry point of `ecamp export`."""
    from ecamp.errors import UserError

    p = Path(args.source).expanduser()
    if not p.exists():
        raise UserError(f"{p} does not exist (give a run folder or a checkpoint file)")
    out = Path(args.output) if args.output else default_output(args.source)
    path = export(args.source, out, img_size=args.img_size)
    print(json.dumps({"encoder": str(path), "config": str(path.parent / "encoder.json")}))
    return 0
