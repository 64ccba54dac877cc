"""Table 4 ablations on the phantom world: one `ecamp run` per row, sharing the base run's work.

A base run (the embedded default pipeline, or ``--base DIR`` of one already finished) supplies
the data, distill and attention stages and the random-init downstream runs.  Each row of
``configs/ablations/*.yaml`` (``name`` + dotted pipeline ``overrides``) gets its own run folder
holding a copy of every base stage folder; ``ecamp run`` then re-runs only what the row's
overrides change (pre-training and the pre-trained downstream runs) and skips the rest by
fingerprint, so a row identical to the base costs nothing.  Prints one JSON line per row and a
markdown table of linear-probe AUC, fine-tune AUC, segmentation Dice and detection mAP (MGCA).

    python benchmarks/ablations.py --output runs/ablations            # base run + every row
    python benchmarks/ablations.py --base runs/demo --output runs/abl  # reuse a finished run
    python benchmarks/ablations.py --output /tmp/abl pretrain.train.epochs=2   # quick, any key
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROWS = Path(__file__).resolve().parents[1] / "configs" / "ablations"
COLUMNS = (("linear_probe", "LP AUC"), ("finetune", "FT AUC"))
COLUMNS += (("segmentation", "Seg Dice"), ("detection", "Det mAP"))


def ecamp_run(out: Path, overrides: list[str]) -> float:
    """`ecamp run --output out overrides...` in a child process; its wall seconds."""
    cmd = [sys.executable, "-c", "import sys; from ecamp.cli import main; sys.exit(main())"]
    cmd += ["run", "--output", str(out), *overrides]
    t0 = time.time()
    with open(out.parent / f"{out.name}.log", "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc:
        raise SystemExit(f"ecamp run failed for {out} (exit {rc}); see {out.parent / out.name}.log")
    return time.time() - t0


def seed_from_base(base: Path, row: Path) -> None:
    """Copy the base run's stage folders (not its report) into ``row``, paths rewritten."""
    row.mkdir(parents=True, exist_ok=True)
    for stage in base.rglob("stage.json"):
        src = stage.parent
        rel = src.relative_to(base)
        if rel.parts[0] == "report" or any(p.endswith(".previous") for p in rel.parts):
            continue
        dst = row / rel
        if (dst / "stage.json").is_file():
            continue  # already seeded (a resumed ablation)
        shutil.copytree(src, dst, dirs_exist_ok=True)
        # stage results hold absolute paths into the base run; the copies must point at themselves
        text = (dst / "stage.json").read_text()
        (dst / "stage.json").write_text(text.replace(str(base), str(row)))


def read_results(run: Path) -> dict[tuple[str, str], float | None]:
    """{(task, encoder): value} from a finished run's results.json."""
    rows = json.loads((run / "results.json").read_text())
    return {(r["task"], r["encoder"]): r["value"] for r in rows}


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--output", "-o", type=Path, default=Path("runs/ablations"), help="folder")
    ap.add_argument("--base", type=Path, help="a finished base run to reuse (default: run one)")
    ap.add_argument("--rows", type=Path, default=ROWS, help="folder of row YAMLs")
    ap.add_argument("--only", nargs="*", default=[], help="row file stems to run (default: all)")
    ap.add_argument("overrides", nargs="*", help="pipeline KEY=VALUE for the base and every row")
    args = ap.parse_args()

    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = args.base.resolve() if args.base else out / "base"
    if not args.base:
        secs = ecamp_run(base, list(args.overrides))
        print(json.dumps({"row": "base run", "seconds": round(secs, 1)}), flush=True)
    baseline = read_results(base)

    table = []
    for path in sorted(args.rows.glob("*.yaml")):
        if args.only and path.stem not in args.only:
            continue
        spec = yaml.safe_load(path.read_text()) or {}
        row_dir = out / path.stem
        seed_from_base(base, row_dir)
        keys = [f"{k}={json.dumps(v)}" for k, v in (spec.get("overrides") or {}).items()]
        secs = ecamp_run(row_dir, [*args.overrides, *keys, "report.enabled=false"])
        res = read_results(row_dir)
        line = {"row": spec.get("name", path.stem), "config": path.stem, "seconds": round(secs, 1)}
        line.update({task: res.get((task, "pretrained")) for task, _ in COLUMNS})
        print(json.dumps(line), flush=True)
        table.append(line)

    random = {"row": "random init (no pre-training)"}
    random.update({task: baseline.get((task, "random")) for task, _ in COLUMNS})
    print("\n| row | " + " | ".join(h for _, h in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for line in [*table, random]:
        print(f"| {line['row']} | " + " | ".join(fmt(line[t]) for t, _ in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
