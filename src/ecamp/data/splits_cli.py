"""`ecamp splits`: sizes and overlaps of the downstream splits a fine-tuning run would use.

Prints one JSON object: the size of train / val / test and every pairwise overlap, by image
and (where the dataset has patient ids) by patient.  It works from the release lists shipped
with ecamp alone; ``--data-root`` adds what needs the dataset: the official training images
(the 100 % training set of ChestX-ray14, CheXpert and SIIM, and CheXpert's validation pool)
and the patient ids of COVIDx (its split files) and SIIM (DICOM headers).
``--mode paper`` (default) gives the leak-free splits ``ecamp finetune`` trains on;
``--mode release`` the authors' lists byte for byte, overlaps included
(see :mod:`ecamp.data.split_modes`).
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "sizes and train/val/test overlaps (images, patients) of a dataset's downstream splits"
DATASETS = ("chestxray14", "chexpert", "rsna", "covidx", "siim")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ecamp splits`."""
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="downstream set")
    parser.add_argument(
        "--task",
        choices=["cls", "seg", "det"],
        help="whose lists (RSNA has cls, seg and det; default: the dataset's first task)",
    )
    parser.add_argument(
        "--fraction",
        type=int,
        choices=[1, 10, 100],
        default=100,
        help="percent of the training labels, as the release's lists (default 100)",
    )
    parser.add_argument(
        "--mode",
        choices=["paper", "release"],
        default="paper",
        help="paper: leak-free (release test lists, train/val without test images or "
        "patients; CheXpert val drawn as the paper says); release: the lists byte for byte "
        "(default paper)",
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="the dataset's folder (official layout): adds the official training images and, "
        "for COVIDx and SIIM, patient ids",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of CheXpert's validation draw (default 0)"
    )
    parser.add_argument(
        "--test-split",
        default="test",
        help="release list used as test set (CheXpert also has test_600; default test)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `ecamp splits`."""
    from ecamp.data.split_modes import audit
    from ecamp.utils.logging import setup_logging

    setup_logging(None)
    result = audit(
        args.dataset,
        args.task,
        args.fraction,
        args.mode,
        root=args.data_root,
        seed=args.seed,
        test_split=args.test_split,
    )
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0
