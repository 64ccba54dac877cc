"""The embedded default pipeline (`ecamp run`) over several phantom-world seeds and thread counts.

Each (seed, threads) pair is one `ecamp run` in its own child process (OMP / MKL / OpenBLAS
threads and torch's intra-op threads set to the count) in its own folder
``OUTPUT/seed<S>_t<T>``, with ``data.synthetic_seed=<S>`` and the extra overrides.  A run
whose ``bench.json`` records the same overrides is reused when `ecamp run` (always called: it
checks every stage's fingerprint in seconds) runs none of its stages again; a change to ecamp's
defaults re-runs the stages it touches, and an interrupted run resumes where `ecamp run`
stopped.  Then, per thread count, every task and metric (linear-probe and fine-tune AUC,
segmentation Dice and per-image Dice, detection mAP and COCO-style mAP) gets each seed's delta
(pre-trained minus random init), the mean delta, its standard error (std / sqrt(n), ddof 1) and whether the mean exceeds twice the SE; an
effect is *robust* when it does and every seed's delta is positive.  Prints one JSON line, then
the tables, the wall time of each run and the CPU kind; writes ``OUTPUT/summary.json`` and a
seeds report per thread count, ``OUTPUT/report_t<T>/report.html`` (deltas with error bars).

    python benchmarks/embedded_seeds.py --seeds 0,1,2 --threads 1,2 --output runs/seeds
    # a quick look at a small budget (any pipeline key passes through):
    python benchmarks/embedded_seeds.py --seeds 0,1 --threads 1 --output /tmp/seeds \\
        data.synthetic_n=256 pretrain.train.epochs=1 attention.train.epochs=1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ecamp.eval.results import SeedSummary, format_mean_se, robust_sentence, run_rows, seed_deltas
from ecamp.utils.io import atomic_write_text

RECORD = "bench.json"
FLAGS = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "avx2", "fma")


def cpu_kind() -> dict[str, Any]:
    """CPU model name, logical CPU count and the SIMD flags that change float reductions."""
    info: dict[str, Any] = {"model": platform.processor() or platform.machine()}
    info["cpus"] = os.cpu_count()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            info["model"] = value.strip()
        elif key.strip() == "flags":
            have = set(value.split())
            info["flags"] = [f for f in FLAGS if f in have]
            break
    return info


def int_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (argparse type)."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one value")
    return out


def _stages_ran(run_dir: Path) -> bool:
    """Whether the last `ecamp run` in ``run_dir`` ran any stage (its ``pipeline.json``)."""
    try:
        stages = json.loads((run_dir / "pipeline.json").read_text()).get("stages", [])
    except (OSError, ValueError):
        return True
    return any(s.get("status") == "ran" for s in stages)


def run_one(
    run_dir: Path, seed: int, threads: int, overrides: list[str], pipeline: str | None
) -> dict[str, Any]:
    """One `ecamp run` (a finished one only re-checks its stages); its bench record.

    `ecamp run` is always called: it skips every stage whose fingerprint still matches, so a
    run is reused only when nothing ran again.  Trusting a finished record alone kept stale
    results after a change to ecamp's embedded defaults, which no override records.
    """
    keys = [f"data.synthetic_seed={seed}", *overrides]
    rec_path = run_dir / RECORD
    old = json.loads(rec_path.read_text()) if rec_path.is_file() else None
    if old and (old.get("overrides") != keys or old.get("pipeline") != pipeline):
        old = None
    resumed = any(run_dir.rglob("stage.json")) if run_dir.is_dir() else False
    code = (
        "import sys, torch; torch.set_num_threads(int(sys.argv.pop(1))); "
        "from ecamp.cli import main; sys.exit(main())"
    )
    cmd = [sys.executable, "-c", code, str(threads), "run", "--output", str(run_dir)]
    cmd += [pipeline] if pipeline else []
    cmd += keys
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"ecamp run failed for {run_dir} (exit {rc}); see {log}; rerun to resume")
    if old and not _stages_ran(run_dir):
        return {**old, "reused": True}  # its wall time is the one that produced the results
    rec = {
        "seed": seed,
        "threads": threads,
        "overrides": keys,
        "pipeline": pipeline,
        "seconds": round(seconds, 1),
        "resumed": resumed,  # True: the wall time covers only what was left to do
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(rec_path, json.dumps(rec, indent=1) + "\n")
    return {**rec, "reused": False}


def delta_table(stats: dict[tuple[str, str], SeedSummary], seeds: list[str]) -> str:
    """Markdown: per task and metric, each seed's delta, the mean ± SE, > 2 SE, robust."""
    head = "| task | metric | " + " | ".join(f"seed {s}" for s in seeds)
    lines = [head + " | mean ± SE | > 2 SE | robust |", "|---|---|" + "---|" * (len(seeds) + 3)]
    for (task, metric), s in stats.items():
        cells = [f"{s.values[x]:+.4f}" if x in s.values else "n/a" for x in seeds]
        flags = ["yes" if s.above_2se else "no", "yes" if s.robust else "no"]
        lines.append(
            f"| {task} | {metric} | " + " | ".join([*cells, format_mean_se(s), *flags]) + " |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="world seeds (default 0,1,2)")
    ap.add_argument("--threads", type=int_list, default=[1, 2], help="thread counts (default 1,2)")
    ap.add_argument("--output", "-o", type=Path, default=Path("runs/seeds"), help="folder")
    ap.add_argument("--pipeline", help="a pipeline YAML (default: the embedded default)")
    ap.add_argument("--no-report", action="store_true", help="skip the seeds reports (HTML)")
    ap.add_argument("overrides", nargs="*", help="pipeline KEY=VALUE for every run")
    args = ap.parse_args()
    if any(o.split("=", 1)[0] == "data.synthetic_seed" for o in args.overrides):
        ap.error("data.synthetic_seed is set per run: use --seeds")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        ap.error(f"overrides must be KEY=VALUE, got {bad}")

    out = args.output.resolve()
    runs = []
    for threads in args.threads:
        for seed in args.seeds:
            rec = run_one(
                out / f"seed{seed}_t{threads}", seed, threads, args.overrides, args.pipeline
            )
            runs.append(rec)
            print(
                f"seed {seed} threads {threads}: {rec['seconds']} s"
                + (" (reused)" if rec["reused"] else ""),
                file=sys.stderr,
                flush=True,
            )

    seeds = [str(s) for s in args.seeds]
    summary: dict[str, Any] = {
        "benchmark": "embedded_seeds",
        "cpu": cpu_kind(),
        "seeds": args.seeds,
        "threads": args.threads,
        "overrides": args.overrides,
        "runs": [
            {k: r[k] for k in ("seed", "threads", "seconds", "resumed", "reused")} for r in runs
        ],
        "deltas": {},
        "robust": {},
    }
    tables = []
    for threads in args.threads:
        dirs = {s: out / f"seed{s}_t{threads}" for s in seeds}
        stats = seed_deltas({s: run_rows(d) for s, d in dirs.items()})
        summary["deltas"][str(threads)] = {f"{t}/{m}": v.as_dict() for (t, m), v in stats.items()}
        summary["robust"][str(threads)] = robust_sentence(stats)
        tables.append((threads, stats))
        if not args.no_report:
            from ecamp.viz.report import build_seeds_report

            build_seeds_report(
                dirs, out / f"report_t{threads}", title=f"ecamp run over seeds ({threads} threads)"
            )
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)

    for threads, stats in tables:
        print(f"\n### {threads} thread(s): delta = pre-trained - random init\n")
        print(delta_table(stats, seeds))
        print(f"\n{summary['robust'][str(threads)]}")
    print("\n| seed | threads | wall s | note |\n|---|---|---|---|")
    for r in runs:
        note = "reused" if r["reused"] else ("resumed" if r["resumed"] else "")
        print(f"| {r['seed']} | {r['threads']} | {r['seconds']:.1f} | {note} |")
    cpu = summary["cpu"]
    print(
        f"\nCPU: {cpu.get('model')} ({cpu.get('cpus')} logical CPUs; flags: "
        f"{' '.join(cpu.get('flags', [])) or 'unknown'})"
    )
    if not args.no_report:
        for threads in args.threads:
            print(f"report: {out / f'report_t{threads}' / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
