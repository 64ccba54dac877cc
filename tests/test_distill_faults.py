"""The openai backend against a small fake OpenAI-compatible server on 127.0.0.1.

Timeouts, 429 then 200, garbage and hallucinating answers, a server that dies mid-run,
and a distil run killed with SIGKILL then resumed (no report lost, none duplicated).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from ecamp.distill.backends import OpenAIBackend
from ecamp.distill.config import DistillConfig
from ecamp.distill.prompt import load_prompt
from ecamp.distill.rules import distilled_text
from ecamp.distill.run import Report, collect, distill_corpus
from ecamp.errors import UserError

REPORT = re.compile(r"Report: (.*)\nEntities:", re.S)


class FakeLLM:
    """A scripted chat-completions server; ``script`` maps request number -> behaviour."""

    def __init__(self, mode: str = "ok", delay: float = 0.0, fail_first: int = 0) -> None:
        self.mode, self.delay, self.fail_first = mode, delay, fail_first
        self.requests = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_GET(self):
                self._json(
                    200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
                )

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests += 1
                    n = fake.requests
                fake.handle(self, n, body)

            def _json(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, h, n: int, body: dict) -> None:
        last = body["messages"][-1]["content"]
        m = REPORT.search(last) or REPORT.search(body["messages"][-3]["content"])
        answer = distilled_text(m.group(1)) if m else ""
        if n <= self.fail_first:
            if self.mode == "429":
                return h._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
            if self.mode == "401":
                return h._json(401, {"error": {"message": "bad key"}})
            if self.mode == "500":
                return h._json(500, {"error": {"message": "boom"}})
            if self.mode == "timeout":
                time.sleep(1.5)  # longer than the client's timeout
        if self.mode == "garbage":
            answer = "Sure! As an AI model I think the patient is fine :)"
        elif self.mode == "hallucinate":
            answer = answer + " There is cardiomegaly."
        elif self.mode == "garbage_once" and n == 1:
            answer = "lorem ipsum"
        elif self.mode == "omit" and "," in last.rsplit("Entities:", 1)[-1]:
            answer = answer.split(". ")[0].rstrip(".") + "."  # stops after one sentence
        time.sleep(self.delay)
        h._json(
            200,
            {
                "id": f"c{n}",
                "object": "chat.completion",
                "created": 0,
                "model": "fake-model",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": answer},
                    }
                ],
            },
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    servers: list[FakeLLM] = []

    def make(**kw) -> FakeLLM:
        s = FakeLLM(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        with contextlib.suppress(OSError):
            s.stop()


def cfg_for(url: str, **kw) -> DistillConfig:
    base = {
        "backend": "openai",
        "base_url": url,
        "timeout_s": 0.5,
        "max_retries": 3,
        "backoff_s": 0.01,
        "concurrency": 2,
    }
    base.update(kw)
    return DistillConfig(**base)


REPORTS = [
    Report("a", "No pneumothorax. Mild cardiomegaly."),
    Report(
        "b",
        "Right lower lobe opacity with an associated effusion could represent atelectasis or pneumonia.",
    ),
    Report("c", "Small left pleural effusion. No edema."),
    Report("d", "The heart is normal."),
]


def run(cfg: DistillConfig, tmp_path: Path, reports=REPORTS, cache="c.jsonl"):
    backend = OpenAIBackend(cfg)
    try:
        s = distill_corpus(reports, cfg, tmp_path / cache, backend, load_prompt(), progress=False)
    finally:
        backend.close()
    return s, {r["id"]: r for r in collect(reports, tmp_path / cache)}


def test_valid_answers_are_accepted_and_model_comes_from_the_server(fake, tmp_path):
    srv = fake()
    s, recs = run(cfg_for(srv.url), tmp_path)
    assert (s.done, s.fallbacks, s.failures) == (4, 0, 0)
    assert recs["a"]["status"] == "ok" and recs["a"]["backend"] == "openai"
    assert {(f["entity"], f["status"]) for f in recs["b"]["findings"]} >= {
        ("atelectasis", "uncertain"),
        ("pneumonia", "uncertain"),
    }
    assert recs["d"]["findings"] == [] and srv.requests == 3  # no entity -> no request


def test_429_then_200_and_500_then_200_are_retried(fake, tmp_path):
    for mode in ("429", "500"):
        srv = fake(mode=mode, fail_first=2)
        s, recs = run(cfg_for(srv.url, concurrency=1), tmp_path, cache=f"{mode}.jsonl")
        assert (s.done, s.failures, s.fallbacks) == (4, 0, 0), mode
        assert srv.requests == 3 + 2


def test_refused_key_stops_the_run_without_retrying(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-printed")
    srv = fake(mode="401", fail_first=100)
    with pytest.raises(UserError, match="refused the API key") as err:
        run(cfg_for(srv.url, concurrency=1), tmp_path, reports=REPORTS[:1])
    assert "sk-never-printed" not in str(err.value) and srv.requests == 1


def test_llamacpp_backend_needs_an_existing_gguf(tmp_path):
    from ecamp.distill.backends import make_backend

    with pytest.raises(UserError, match="--gguf"):
        make_backend(DistillConfig(backend="llamacpp"))
    with pytest.raises(UserError, match="does not exist"):
        make_backend(DistillConfig(backend="llamacpp", gguf=str(tmp_path / "none.gguf")))


def test_timeout_is_retried(fake, tmp_path):
    srv = fake(mode="timeout", fail_first=1)
    s, recs = run(cfg_for(srv.url, concurrency=1), tmp_path)
    assert (s.done, s.failures) == (4, 0) and recs["a"]["status"] == "ok"


def test_garbage_and_hallucinated_answers_fall_back_to_rules_with_reason(fake, tmp_path):
    for mode, reason in (
        ("garbage", "off-format"),
        ("hallucinate", "not in the report: cardiomegaly"),
    ):
        srv = fake(mode=mode)
        s, recs = run(cfg_for(srv.url), tmp_path, reports=REPORTS[2:3], cache=f"{mode}.jsonl")
        rec = recs["c"]
        assert s.fallbacks == 1 and rec["status"] == "fallback" and rec["backend"] == "rules"
        assert reason in rec["reason"]
        assert rec["distilled"] == distilled_text(REPORTS[2].text)
        assert srv.requests == 2  # asked once more, then replaced


def test_one_bad_answer_is_retried_once(fake, tmp_path):
    srv = fake(mode="garbage_once")
    s, recs = run(cfg_for(srv.url, concurrency=1), tmp_path, reports=REPORTS[:1])
    assert recs["a"]["status"] == "ok" and srv.requests == 2


def test_omitted_entities_are_asked_for_once_more(fake, tmp_path):
    report = REPORTS[2]  # effusion, edema
    srv = fake(mode="omit")
    s, recs = run(cfg_for(srv.url, concurrency=1), tmp_path, reports=[report])
    rec = recs["c"]
    assert srv.requests == 2 and s.completed == 1 and rec["status"] == "ok"
    assert {f["entity"]: f["status"] for f in rec["findings"]} == {
        "effusion": "positive",
        "edema": "negative",
    }
    assert rec["reason"] == "asked again for omitted entities: edema"
    assert rec["distilled"] == distilled_text(report.text)
    # switched off: the short answer stands, one request
    srv = fake(mode="omit")
    s, recs = run(
        cfg_for(srv.url, concurrency=1, complete_omitted=False), tmp_path, [report], "off.jsonl"
    )
    assert srv.requests == 1 and s.completed == 0
    assert [f["entity"] for f in recs["c"]["findings"]] == ["effusion"]


class BatchedOmitting:
    """A batched in-process backend (as transformers is) whose first answers stop early."""

    name, model_id, batch_size, max_concurrency = "fake-batched", "fake", 8, 1

    def __init__(self) -> None:
        self.calls: list[int] = []

    def chat_batch(self, chats: list[list[dict[str, str]]]) -> list[str]:
        self.calls.append(len(chats))
        out = []
        for messages in chats:
            last = messages[-1]["content"]
            answer = distilled_text(REPORT.search(last).group(1))
            if len(self.calls) == 1:
                answer = answer.split(". ")[0].rstrip(".") + "."
            out.append(answer)
        return out


def test_batched_backend_asks_for_the_omitted_entities_in_one_more_batch(tmp_path):
    backend = BatchedOmitting()
    cfg = DistillConfig(backend="transformers", model="fake")
    s = distill_corpus(REPORTS, cfg, tmp_path / "b.jsonl", backend, load_prompt(), progress=False)
    recs = {r["id"]: r for r in collect(REPORTS, tmp_path / "b.jsonl")}
    # a and c name two entities, b four; d none (not asked)
    assert backend.calls == [3, 3] and s.completed == 3 and s.fallbacks == 0
    for r in REPORTS[:3]:
        assert recs[r.id]["distilled"] == distilled_text(r.text), r.id


def test_server_dying_mid_run_stops_cleanly_and_a_rerun_finishes(fake, tmp_path):
    srv = fake(delay=0.05)
    many = [Report(f"r{i}", f"No pneumothorax. Mild cardiomegaly. Case {i}.") for i in range(40)]
    cfg = cfg_for(srv.url, concurrency=2, max_retries=1, max_consecutive_failures=3)
    killer = threading.Timer(0.4, srv.stop)
    killer.start()
    with pytest.raises(UserError, match="server looks down"):
        run(cfg, tmp_path, reports=many)
    killer.join()
    done_before = len(list(collect(many, tmp_path / "c.jsonl")))
    assert 0 < done_before < 40
    srv2 = fake()
    s, recs = run(cfg_for(srv2.url), tmp_path, reports=many)
    assert s.cached == done_before and s.done == 40 - done_before
    assert sorted(recs) == sorted(r.id for r in many)


def test_sigkill_then_resume_loses_and_duplicates_nothing(fake, tmp_path):
    srv = fake(delay=0.03)
    ids = [f"{i:03d}" for i in range(60)]
    inp = tmp_path / "in.csv"
    pd.DataFrame(
        {
            "id": ids,
            "findings": [f"No pneumothorax. Small effusion {i}." for i in ids],
            "impression": "",
        }
    ).to_csv(inp, index=False)
    out = tmp_path / "out.jsonl"
    cache = tmp_path / "out.jsonl.cache.jsonl"
    cmd = [sys.executable, "-m", "ecamp.distill.cli", "--input", str(inp), "--output", str(out),
           "--backend", "openai", "--base-url", srv.url, "--concurrency", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENAI_API_KEY": "sk-test-secret"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cache.exists() and cache.read_bytes().count(b"\n") >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = cache.read_bytes().count(b"\n")
    assert 10 <= before < 60
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["cached"] >= before - 1 and summary["cached"] + summary["done"] == 60
    got = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert got == ids  # every report once, in input order
    assert "sk-test-secret" not in done.stderr + done.stdout
    assert "sk-test-secret" not in (tmp_path / "out.jsonl.summary.json").read_text()
