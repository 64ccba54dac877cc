"""`ecamp run`: the whole job in one resumable command (the flags; the work is in the engine)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ecamp.errors import UserError
from ecamp.pipeline.ecamp_stages import default_stages, load_pipeline, results_table
from ecamp.pipeline.engine import collect_rows, plan, run_stages
from ecamp.utils.env import launch_rank
from ecamp.utils.logging import get_logger

HELP = "run the whole pipeline (distill -> attention -> pretrain -> finetune -> report), resumable"

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ecamp run`."""
    parser.add_argument(
        "items",
        nargs="*",
        metavar="[PIPELINE.yaml] [KEY=VALUE ...]",
        help="a pipeline YAML (default: the embedded phantom-world pipeline) and dotted overrides of "
        "its sections, e.g. pretrain.train.epochs=2 finetune.runs.detection.enabled=false",
    )
    parser.set_defaults(override_dest="items")  # overrides may follow options (ecamp.cli)
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="the pipeline YAML (same as the positional file)"
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        help="run directory; rerun with the same DIR to resume (default: runs/<timestamp>)",
    )
    parser.add_argument(
        "--from",
        dest="from_stage",
        metavar="STAGE",
        help="re-run STAGE and every later stage even when up to date (earlier stages as usual)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="STAGE",
        help="run only STAGE (repeatable; a prefix such as 'finetune' selects all its runs); "
        "its inputs must be done already",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the stages and whether each would run, then exit"
    )


def _split_items(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    files = [x for x in args.items if "=" not in x]
    overrides = [x for x in args.items if "=" in x]
    if len(files) + bool(args.config) > 1:
        raise UserError(
            f"give one pipeline file, got {files + ([args.config] if args.config else [])}"
        )
    return (args.config or (files[0] if files else None)), overrides


def run(args: argparse.Namespace) -> int:
    """Entry point of `ecamp run`."""
    from ecamp.config import save_config
    from ecamp.utils.io import atomic_write_text
    from ecamp.utils.logging import setup_logging

    path, overrides = _split_items(args)
    cfg = load_pipeline(path, overrides)
    run_dir = Path(args.output or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    stages = default_stages(cfg)
    if args.list:
        for name, state in plan(stages, run_dir):
            print(f"{name:<36} {state}")
        return 0
    rank = launch_rank()
    setup_logging(run_dir, rank=rank)
    log.info("run directory %s (rerun with --output %s to resume)", run_dir, run_dir)
    if rank == 0:
        save_config(cfg, run_dir / "pipeline.yaml")
    t0 = time.perf_counter()
    outcomes = run_stages(stages, run_dir, args.from_stage, args.only, cfg, rank)
    if rank != 0:
        return 0
    rows = collect_rows(stages, run_dir)
    atomic_write_text(run_dir / "results.json", json.dumps(rows, indent=1) + "\n")
    summary = {
        "seconds": round(time.perf_counter() - t0, 1),
        "stages": [o.__dict__ for o in outcomes],
    }
    atomic_write_text(run_dir / "pipeline.json", json.dumps(summary, indent=1) + "\n")
    for o in outcomes:
        print(f"{o.name:<36} {o.status:<12} {o.seconds:8.1f} s  {o.reason}")
    print()
    print(results_table(rows))
    report = run_dir / "report" / "report.html"
    if report.is_file():
        print(f"\nreport: {report}")
    print(f"results: {run_dir / 'results.json'}")
    return 0
