"""Table 4 ablations on the phantom world: one `ecamp run` per row and world seed, sharing the
base run's work, reported as mean ± standard error over the seeds.

For each world seed (``--seeds``, ``data.synthetic_seed``) a base run (the embedded default
pipeline, or ``--base DIR`` of one already finished, for a single seed) supplies the data,
distill and attention stages and the random-init downstream runs.  Each row of
``configs/ablations/*.yaml`` (``name`` + dotted pipeline ``overrides``) gets its own run folder
``OUTPUT/seed<S>/<row>`` holding a copy of every base stage folder; ``ecamp run`` then re-runs
only what the row's overrides change (pre-training and the pre-trained downstream runs) and
skips the rest by fingerprint, so a row identical to the base costs nothing and a rerun of this
script resumes.  Prints one JSON line per row and seed, one summary JSON line, and two markdown
tables of linear-probe AUC, fine-tune AUC, segmentation Dice (pooled and per image) and
detection mAP (MGCA and COCO-style):

* the scores: each row's pre-trained score, mean ± SE over the seeds (SE = std / sqrt(n),
  ddof 1; no ± with one seed), and the random-init baseline;
* the effects: each row minus the row before it (the first row: minus random init), paired
  by seed, mean ± SE; ``*`` marks an effect whose mean is more than 2 SE away from zero.

    python benchmarks/ablations.py --seeds 0,1,2 --output runs/ablations   # every row, 3 worlds
    python benchmarks/ablations.py --base runs/demo --output runs/abl       # reuse a finished run
    python benchmarks/ablations.py --seeds 0,1 --output /tmp/abl pretrain.train.epochs=2  # quick
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

from ecamp.eval.results import SeedSummary, format_mean_se, paired_deltas, run_rows, summarize

ROWS = Path(__file__).resolve().parents[1] / "configs" / "ablations"
COLUMNS = (
    (("linear_probe", "auc"), "LP AUC"),
    (("finetune", "auc"), "FT AUC"),
    (("segmentation", "dice"), "Seg Dice"),
    (("segmentation", "dice_per_image"), "Seg Dice/img"),
    (("detection", "map"), "Det mAP"),
    (("detection", "map_coco"), "Det mAP COCO"),
)
Scores = dict[tuple[str, str], float | None]


def ecamp_run(out: Path, overrides: list[str]) -> float:
    """`ecamp run --output out overrides...` in a child process; its wall seconds."""
    cmd = [sys.executable, "-c", "import sys; from ecamp.cli import main; sys.exit(main())"]
    cmd += ["run", "--output", str(out), *overrides]
    t0 = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
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


def read_results(run: Path, encoder: str = "pretrained") -> Scores:
    """{(task, metric): value} of one encoder from a finished run (every scalar test metric)."""
    return {(r["task"], r["metric"]): r["value"] for r in run_rows(run) if r["encoder"] == encoder}


def over_seeds(per_seed: dict[str, Scores]) -> dict[tuple[str, str], SeedSummary]:
    """Each column's summary over seeds of ``{seed: scores}``."""
    return {col: summarize({s: sc.get(col) for s, sc in per_seed.items()}) for col, _ in COLUMNS}


def effect(a: dict[str, Scores], b: dict[str, Scores]) -> dict[tuple[str, str], SeedSummary]:
    """Each column's paired difference ``a - b`` per seed, summarised over seeds."""
    out = {}
    for col, _ in COLUMNS:
        d = paired_deltas({s: a[s].get(col) for s in a}, {s: b[s].get(col) for s in a})
        out[col] = summarize(d)
    return out


def cell(s: SeedSummary, sign: bool) -> str:
    """``mean ± SE``; an effect (``sign``) gets ``*`` when its mean is more than 2 SE from zero."""
    star = sign and s.mean is not None and s.se is not None and abs(s.mean) > 2 * s.se
    return format_mean_se(s, digits=3, sign=sign) + (" *" if star else "")


def table(lines: list[tuple[str, dict[tuple[str, str], SeedSummary]]], sign: bool) -> str:
    cols = [(c, h) for c, h in COLUMNS if any(st[c].n for _, st in lines)]  # drop empty columns
    out = ["| row | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, st in lines:
        out.append(f"| {name} | " + " | ".join(cell(st[c], sign) for c, _ in cols) + " |")
    return "\n".join(out)


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()] or [0]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers") from None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--output", "-o", type=Path, default=Path("runs/ablations"), help="folder")
    ap.add_argument(
        "--seeds", type=int_list, help="world seeds, e.g. 0,1,2 (default: 0, or --base's seed)"
    )
    ap.add_argument("--base", type=Path, help="a finished base run to reuse (one seed only)")
    ap.add_argument("--rows", type=Path, default=ROWS, help="folder of row YAMLs")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="STEMS",
        help="row file stems to run, comma-separated or repeated, e.g. 01_baseline,05_sr "
        "(default: all)",
    )
    ap.add_argument("overrides", nargs="*", help="pipeline KEY=VALUE for the base and every row")
    args = ap.parse_args()
    if args.seeds is None:  # a reused base run keeps its own world
        from ecamp.viz.report import seed_label

        label = seed_label(args.base) if args.base else "0"
        args.seeds = [int(label) if label.isdigit() else 0]
    if args.base and len(args.seeds) > 1:
        ap.error("--base is one finished run: give a single --seeds value with it")
    args.only = [x for o in args.only for x in o.split(",") if x]
    if any("=" not in o for o in args.overrides):
        ap.error(f"overrides must be KEY=VALUE, got {[o for o in args.overrides if '=' not in o]}")
    if any(o.split("=", 1)[0] == "data.synthetic_seed" for o in args.overrides):
        ap.error("data.synthetic_seed is set per run: use --seeds")
    specs = [
        (p, yaml.safe_load(p.read_text()) or {})
        for p in sorted(args.rows.glob("*.yaml"))
        if not args.only or p.stem in args.only
    ]
    if not specs:
        ap.error(f"no row YAMLs in {args.rows}" + (f" named {args.only}" if args.only else ""))

    out = args.output.resolve()
    seeds = [str(s) for s in args.seeds]
    random: dict[str, Scores] = {}
    rows: dict[str, dict[str, Scores]] = {p.stem: {} for p, _ in specs}
    for seed in seeds:
        world = [f"data.synthetic_seed={seed}", *args.overrides]
        base = args.base.resolve() if args.base else out / f"seed{seed}" / "base"
        if not args.base:
            secs = ecamp_run(base, world)
            print(
                json.dumps({"row": "base run", "seed": int(seed), "seconds": round(secs, 1)}),
                flush=True,
            )
        random[seed] = read_results(base, "random")
        for path, spec in specs:
            row_dir = out / f"seed{seed}" / path.stem
            seed_from_base(base, row_dir)
            keys = [f"{k}={json.dumps(v)}" for k, v in (spec.get("overrides") or {}).items()]
            secs = ecamp_run(row_dir, [*world, *keys, "report.enabled=false"])
            res = rows[path.stem][seed] = read_results(row_dir)
            line = {"row": spec.get("name", path.stem), "config": path.stem, "seed": int(seed)}
            line["seconds"] = round(secs, 1)
            line.update({f"{t}/{m}": res.get((t, m)) for (t, m), _ in COLUMNS})
            print(json.dumps(line), flush=True)

    names = {p.stem: str(spec.get("name", p.stem)) for p, spec in specs}
    scores = [(names[k], over_seeds(v)) for k, v in rows.items()]
    scores.append(("random init (no pre-training)", over_seeds(random)))
    effects, prev, prev_name = [], random, "random init"
    for k, v in rows.items():
        effects.append((f"{names[k]} vs {prev_name}", effect(v, prev)))
        prev, prev_name = v, names[k]
    summary = {
        "benchmark": "ablations",
        "seeds": args.seeds,
        "overrides": args.overrides,
        "scores": {n: {f"{t}/{m}": s.as_dict() for (t, m), s in st.items()} for n, st in scores},
        "effects": {n: {f"{t}/{m}": s.as_dict() for (t, m), s in st.items()} for n, st in effects},
    }
    print(json.dumps(summary), flush=True)
    n = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(seeds)})"
    print(f"\nScores of the pre-trained encoder, mean ± SE over {n}:\n")
    print(table(scores, sign=False))
    print(f"\nEffects, each row minus the one before it (paired by seed), mean ± SE over {n};")
    print("* = more than 2 SE from zero:\n")
    print(table(effects, sign=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
