"""Wall time of `ecamp --help` and of every `ecamp STAGE --help` (fresh interpreters).

Prints one JSON line per command line (the median of ``--repeat`` runs) and a summary line
with the slowest.  The target (issue #12) is under 0.5 s each, torch never imported.

    python benchmarks/cli_help.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from ecamp.cli import COMMANDS


def time_line(words: list[str], repeat: int) -> float:
    """Median wall seconds of ``python -m ecamp.cli WORDS --help``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ecamp.cli", *words, "--help"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per command line (default: 3)")
    args = ap.parse_args()
    lines = [[]] + [name.split() for name, _ in COMMANDS]
    results = {}
    for words in lines:
        key = " ".join(["ecamp", *words, "--help"])
        results[key] = time_line(words, args.repeat)
        print(json.dumps({"command": key, "seconds": round(results[key], 3)}))
    worst = max(results, key=results.__getitem__)
    print(json.dumps({"slowest": worst, "seconds": round(results[worst], 3), "target": 0.5}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
