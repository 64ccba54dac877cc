"""Throughput of the text pipeline: assembly + tokenisation + masking + weights.

    python benchmarks/text_pipeline.py --reports REPORTS.csv [--n 20000] [--batch 256] [--workers 2]

The CSV needs a ``report`` column (optional ``distilled``); an IU X-ray style CSV with
``findings`` / ``impression`` columns works too (the two are joined).  ``--workers`` runs
that many processes side by side, as DataLoader workers would.  Prints one JSON line:
``samples_per_s`` (wall clock, all workers, process start-up included),
``steady_samples_per_s`` (the workers' loop rates added up, start-up excluded) and ``cpu_us_per_sample`` (CPU time of the
workers, tokenizer threads included, per sample: what a busy shared machine cannot hide).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np
import pandas as pd


def load_reports(path: str) -> tuple[list[str], list[str | None]]:
    """Reports (and distilled reports when the CSV has them) from ``path``."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "report" in df.columns:
        reports = df["report"].tolist()
    elif {"findings", "impression"} <= set(df.columns):
        joined = df["findings"].str.strip() + " " + df["impression"].str.strip()
        reports = joined.str.strip().tolist()
    else:
        raise SystemExit(f"{path}: needs a 'report' column or 'findings' + 'impression' columns")
    if "distilled" in df.columns:
        distilled: list[str | None] = list(df["distilled"])
    else:
        # no distilled column: the report's last sentence stands in, so that the insertion
        # path runs at the configured probability
        distilled = [r.split(". ")[-1] for r in reports]
    return reports, distilled


def _work(job: tuple[str, int, int, str, int]) -> tuple[int, float, float]:
    path, n, batch, mode, seed = job
    from ecamp.config import TextConfig
    from ecamp.text.masking import TextBatcher

    reports, distilled = load_reports(path)
    batcher = TextBatcher(TextConfig(masking_mode=mode))
    rng = np.random.default_rng(seed)
    batcher(reports[:batch], distilled[:batch], rng)  # warm-up
    done, i, m = 0, seed * 997, len(reports)
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    while done < n:
        idx = [(i + j) % m for j in range(batch)]
        batcher([reports[k] for k in idx], [distilled[k] for k in idx], rng)
        i += batch
        done += batch
    return done, time.process_time() - cpu0, time.perf_counter() - wall0


def main() -> None:
    ap = argparse.ArgumentParser(description="text pipeline throughput (one JSON line)")
    ap.add_argument("--reports", required=True, help="CSV with report (+ distilled) columns")
    ap.add_argument("--n", type=int, default=20480, help="samples per worker (cycles the CSV)")
    ap.add_argument("--batch", type=int, default=256, help="batch size")
    ap.add_argument("--workers", type=int, default=1, help="processes side by side")
    ap.add_argument("--mode", default="paper", choices=["paper", "release"], help="masking mode")
    args = ap.parse_args()
    if args.workers > 1:
        os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core per worker process
    jobs = [(args.reports, args.n, args.batch, args.mode, s) for s in range(args.workers)]
    t0 = time.perf_counter()
    if args.workers == 1:
        results = [_work(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(_work, jobs)
    wall = time.perf_counter() - t0  # includes worker start-up: a conservative figure
    done = sum(r[0] for r in results)
    cpu = sum(r[1] for r in results)
    # the workers run side by side: their loop rates add up (start-up and imports excluded,
    # as a DataLoader worker pays them once per run)
    steady = sum(r[0] / r[2] for r in results)
    print(
        json.dumps(
            {
                "samples_per_s": round(done / wall, 1),
                "steady_samples_per_s": round(steady, 1),
                "cpu_us_per_sample": round(cpu / done * 1e6, 1),
                "n": done,
                "batch": args.batch,
                "workers": args.workers,
                "mode": args.mode,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
