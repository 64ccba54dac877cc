"""`ecamp run`: the whole job in one resumable command.

    data -> distill -> attention -> pretrain -> finetune (every run x {pretrained, random}) -> report

* :mod:`ecamp.pipeline.engine` -- the generic resumable stage engine (stages, fingerprints,
  ``stage.json`` records, resume, ``torchrun`` ranks); it knows nothing of ECAMP.
* :mod:`ecamp.pipeline.ecamp_stages` -- ECAMP's stage list: the pipeline YAML and one small
  adapter per stage.
* :mod:`ecamp.pipeline.cli` -- the flags of ``ecamp run``.

Only light modules are imported here (each stage imports its heavy code when it runs), so
``ecamp --help`` stays fast.
"""

from __future__ import annotations

from ecamp.pipeline.cli import HELP, add_arguments, run
from ecamp.pipeline.ecamp_stages import (
    DEFAULT_PIPELINE,
    ENCODERS,
    SECTIONS,
    default_stages,
    embedded_pipeline_path,
    load_pipeline,
    results_table,
)
from ecamp.pipeline.engine import (
    FAILED,
    PIPELINE_VERSION,
    RECORD,
    STARTED,
    Stage,
    StageContext,
    StageOutcome,
    check_order,
    check_stages,
    collect_rows,
    file_stamp,
    fingerprints,
    is_done,
    plan,
    read_record,
    record_result,
    resolved_config,
    run_stages,
)

__all__ = [
    "DEFAULT_PIPELINE",
    "ENCODERS",
    "FAILED",
    "HELP",
    "PIPELINE_VERSION",
    "RECORD",
    "SECTIONS",
    "STARTED",
    "Stage",
    "StageContext",
    "StageOutcome",
    "add_arguments",
    "check_order",
    "check_stages",
    "collect_rows",
    "default_stages",
    "embedded_pipeline_path",
    "file_stamp",
    "fingerprints",
    "is_done",
    "load_pipeline",
    "plan",
    "read_record",
    "record_result",
    "resolved_config",
    "results_table",
    "run",
    "run_stages",
]
