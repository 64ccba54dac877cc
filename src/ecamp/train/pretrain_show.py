"""`ecamp pretrain show RUN`: the paper's Figure 4 -- MSCF attention after pre-training.

The figure and its numbers are :func:`ecamp.viz.mscf.show` (the box measure in
:mod:`ecamp.eval.localization`); this module is the command line.
"""

from __future__ import annotations

import argparse
import json

from ecamp.viz.mscf import JSON_NAME, PNG_NAME, show

HELP = "draw MSCF's text-to-image attention of a pre-trained run (the paper's Figure 4)"

__all__ = ["HELP", "add_arguments", "run", "show"]


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ecamp pretrain show`."""
    parser.add_argument("run", metavar="RUN", help="output folder of `ecamp pretrain`")
    parser.add_argument(
        "--n", type=int, default=8, help="(image, entity sentence) panels to draw (default: 8)"
    )
    parser.add_argument(
        "--eval-images",
        type=int,
        default=64,
        metavar="N",
        help="images (test/val splits first) whose maps are scored against their lesion "
        "boxes (default: 64)",
    )
    parser.add_argument("--cols", type=int, default=4, help="panels per row (default: 4)")
    parser.add_argument(
        "--manifest",
        metavar="FILE",
        help="manifest of the images (default: the run's data.manifest, or its phantom world)",
    )
    parser.add_argument(
        "--image-root",
        metavar="DIR",
        help="folder the manifest's relative image paths resolve against (default: the "
        "--manifest's folder; without --manifest, the run's data.image_root)",
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        help=f"folder for {PNG_NAME} and {JSON_NAME} (default: RUN)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)"
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `ecamp pretrain show`."""
    res = show(
        args.run,
        args.output,
        args.n,
        args.eval_images,
        args.cols,
        args.manifest,
        args.device,
        image_root=args.image_root,
    )
    print(
        json.dumps(
            {k: res[k] for k in ("figure", "images", "n", "mass_in_box", "uniform", "ratio")}
        )
    )
    return 0
