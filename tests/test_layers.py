"""The layers stay apart: the library (text, data, models, eval, viz, utils, config) imports no
stage, pipeline or CLI code, and the stage engine imports nothing of ECAMP's stages.

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


LIBRARY = ("text", "data", "models", "eval", "viz", "utils", "config")
STAGES = ("ecamp.train", "ecamp.pipeline", "ecamp.cli", "ecamp.distill")
# the offline rules distiller is pure text code (no model; its lexicon is a bundled file): the
# phantom world and the GLoRIA pairs use its answers as the library's default distilled text
LIBRARY_MAY_USE = {"ecamp.distill.rules"}


@pytest.mark.parametrize(
    "path", sorted(p for pkg in LIBRARY for p in (SRC / pkg).rglob("*.py")), ids=str
)
def test_the_library_imports_no_stage_pipeline_or_cli_code(path: Path) -> None:
    names = _imports_in(path) - LIBRARY_MAY_USE
    assert _under(names, STAGES) == [], f"{path.relative_to(SRC)} imports a stage module"


@pytest.mark.parametrize("module", ["ecamp.viz.report", "ecamp.viz.mscf", "ecamp.data.gloria"])
def test_importing_library_modules_loads_no_stage_code(module: str) -> None:
    assert _under(_imported_by(module), ("ecamp.pipeline", "ecamp.train", "ecamp.cli")) == []


@pytest.mark.parametrize("module", ["ecamp.pipeline.engine", "ecamp.pipeline"])
def test_the_engine_imports_nothing_of_ecamps_stages(module: str) -> None:
    stages = ("ecamp.train", "ecamp.models", "ecamp.data", "ecamp.distill", "ecamp.viz")
    assert _under(_imported_by(module), stages) == []
    if module == "ecamp.pipeline.engine":
        assert _under(_imports_in(SRC / "pipeline" / "engine.py"), stages) == []
