"""The command line of `ecamp attention` (train / export / show).

Kept apart from :mod:`ecamp.train.attention` so that building the parser (``ecamp --help``)
imports neither torch nor numpy: the work is imported when a sub-command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "GLoRIA entity attention maps for the super-resolution guidance (train / export / show)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ecamp.utils.cliargs import add_config_args

    sub = parser.add_subparsers(dest="attention_command", metavar="SUBCOMMAND")
    p = sub.add_parser(
        "train",
        help="train GLoRIA on (image, distilled report) pairs",
        description="Train GLoRIA on (image, distilled report) pairs of data.manifest (empty: a "
        "phantom world). Writes config.yaml, checkpoints/, metrics.csv and gloria.safetensors; "
        "rerunning resumes. Try: ecamp attention train -o runs/gloria model.preset=tiny train.max_steps=300",
    )
    add_config_args(p, default_output="runs/attention")
    p.set_defaults(func=_run_train)

    p = sub.add_parser(
        "export",
        help="write entity attention maps + windows for every image (SR guidance)",
        description="Run a trained GLoRIA over the manifest and write the guidance folder read by "
        "`ecamp pretrain data.guidance=DIR` (maps for model.sr_guidance=map, windows for window). "
        "Finished shards are kept when rerun.",
    )
    p.add_argument(
        "--model",
        "-m",
        required=True,
        metavar="DIR",
        help="output folder of `ecamp attention train`",
    )
    p.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)"
    )
    add_config_args(p, default_output="runs/guidance")
    p.set_defaults(func=_run_export)

    p = sub.add_parser(
        "show",
        help="overlay GLoRIA's attention maps on their images (PNG grid; the paper's "
        "Figure 4 is `ecamp pretrain show`)",
        description="Draw exported maps over their images, titled with the entity sentences; "
        "lesion boxes of the manifest (if any) in red.",
    )
    p.add_argument(
        "--guidance", "-g", required=True, metavar="DIR", help="folder of `ecamp attention export`"
    )
    p.add_argument(
        "--manifest",
        metavar="FILE",
        help="manifest of the images (default: the one the export used)",
    )
    p.add_argument(
        "--ids",
        nargs="+",
        metavar="ID",
        help="image ids to show (default: the first --n with a map)",
    )
    p.add_argument(
        "--n", type=int, default=8, help="number of images when --ids is not given (default: 8)"
    )
    p.add_argument("--cols", type=int, default=4, help="images per row (default: 4)")
    p.add_argument(
        "--output",
        "-o",
        default="attention.png",
        metavar="PNG",
        help="PNG to write (default: attention.png)",
    )
    p.set_defaults(func=_run_show)


def _run_train(args: argparse.Namespace) -> int:
    from ecamp.train.attention import MODEL_FILE, load_attention_config, train
    from ecamp.utils.logging import setup_logging

    cfg = load_attention_config(args.config, args.overrides)
    out = Path(args.output)
    setup_logging(out)
    summary = train(cfg, out)
    print(
        json.dumps(
            {
                "output": str(out),
                "model": str(out / MODEL_FILE),
                "last_eval": summary.get("last_eval", {}),
            }
        )
    )
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from ecamp.config import apply_overrides, read_yaml
    from ecamp.train.attention import (
        CONFIG_FILE,
        attention_config,
        export,
        load_manifest,
        load_trained,
        select_splits,
    )
    from ecamp.utils.logging import setup_logging

    folder = Path(args.model)
    base = read_yaml(args.config) if args.config else read_yaml(folder / CONFIG_FILE)
    cfg = attention_config(apply_overrides(base, list(args.overrides or [])))
    out = Path(args.output)
    setup_logging(out)
    model, cfg = load_trained(folder, cfg)
    df = select_splits(load_manifest(cfg, None), cfg.export.splits)
    export(model, cfg, df, out, device=args.device)
    print(json.dumps({"output": str(out), "images": len(df)}))
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from ecamp.viz.attention import show

    path = show(args.guidance, args.output, args.manifest, args.ids, args.n, args.cols)
    print(path)
    return 0
