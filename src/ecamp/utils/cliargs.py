"""The conventions every `ecamp <stage>` command shares."""

from __future__ import annotations

import argparse


def add_config_args(parser: argparse.ArgumentParser, default_output: str | None = None) -> None:
    """``--config FILE``, ``--output DIR`` and trailing ``key.path=value`` overrides."""
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config file (any subset of the fields)"
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        default=default_output,
        help="output folder: resolved config, log, checkpoints and results land here"
        + (f" (default: {default_output})" if default_output else ""),
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, applied after --config, e.g. train.lr=3e-4 model.preset=tiny "
        "(may stand before, between or after the options)",
    )
    parser.set_defaults(override_dest="overrides")  # see ecamp.cli.parse_args
