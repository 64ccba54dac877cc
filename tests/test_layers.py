"""The layers stay apart: the library (viz) imports no pipeline or training code, and the stage
engine imports nothing of ECAMP's stages.

Imports are checked in a fresh interpreter (this test process may have imported anything),
and by reading the source, so that an import inside a function counts too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ecamp"

PROBE = r"""
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m == "ecamp" or m.startswith("ecamp."))))
"""


def _imported_by(module: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _imports_in(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` in ``path`` names, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _under(names: set[str] | list[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in packages))


def test_importing_the_report_imports_no_pipeline_or_training_code() -> None:
    assert _under(_imported_by("ecamp.viz.report"), ("ecamp.pipeline", "ecamp.train")) == []


def test_the_report_reads_records_and_checkpoints_without_the_pipeline_or_trainer() -> None:
    # `show` (attention maps, MSCF figures) still comes from the training stages for now
    names = _imports_in(SRC / "viz" / "report.py")
    assert _under(names, ("ecamp.pipeline", "ecamp.train.checkpoint")) == []


@pytest.mark.parametrize("module", ["ecamp.pipeline.engine", "ecamp.pipeline"])
def test_the_engine_imports_nothing_of_ecamps_stages(module: str) -> None:
    stages = ("ecamp.train", "ecamp.models", "ecamp.data", "ecamp.distill", "ecamp.viz")
    assert _under(_imported_by(module), stages) == []
    if module == "ecamp.pipeline.engine":
        assert _under(_imports_in(SRC / "pipeline" / "engine.py"), stages) == []
