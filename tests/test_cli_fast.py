"""`ecamp --help` and every `ecamp STAGE --help` build their parsers without heavy imports.

Each check runs in a fresh interpreter (this test process has long imported torch), runs the
command line's help through :func:`ecamp.cli.main` and reports which heavy packages got
imported.  No timing is asserted (the figures depend on the machine's load); the time is
printed for the record (``pytest -s``), and ``benchmarks/cli_help.py`` times the real commands.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ecamp.cli import COMMANDS

HEAVY = ("torch", "numpy", "pandas", "transformers", "timm", "PIL", "scipy", "sklearn")

PROBE = r"""
import argparse, contextlib, io, json, sys, time
t0 = time.perf_counter()
from ecamp import cli
argv = json.loads(sys.argv[1])
if not argv:
    parser = cli.build_parser()
    # every stage of COMMANDS got its sub-parser (none silently skipped)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [n for n, _ in cli.COMMANDS if " " not in n and n not in sub.choices]
    assert not missing, missing
text = io.StringIO()
with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
    try:
        cli.main(argv + ["--help"])
    except SystemExit as e:
        assert e.code == 0, (e.code, text.getvalue())
assert "usage: ecamp" in text.getvalue(), text.getvalue()
elapsed = time.perf_counter() - t0
heavy = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps({"heavy": heavy, "seconds": elapsed}))
"""


def _probe(argv: list[str], prelude: str = "") -> dict:
    code = f"HEAVY = {HEAVY!r}\n{prelude}\n{PROBE}"
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# every stage, plus the sub-commands of the stages made of sub-commands
LINES = [name.split() for name, _ in COMMANDS] + [
    ["attention", "train"],
    ["attention", "export"],
    ["attention", "show"],
]


def test_top_level_help_imports_nothing_heavy():
    r = _probe([])
    print(f"\necamp --help (in-process): {r['seconds']:.3f} s")
    assert r["heavy"] == [], f"`ecamp --help` imported {r['heavy']}"


@pytest.mark.parametrize("argv", LINES, ids=lambda a: "_".join(a))
def test_stage_help_imports_nothing_heavy(argv):
    r = _probe(argv)
    print(f"\necamp {' '.join(argv)} --help (in-process): {r['seconds']:.3f} s")
    assert r["heavy"] == [], f"`ecamp {' '.join(argv)} --help` imported {r['heavy']}"


def test_probe_sees_heavy_imports():
    """The probe can fail: a stage module that imports torch at the top is reported."""
    r = _probe(["attention"], prelude="import ecamp.train.attention")
    assert "torch" in r["heavy"]
