"""Issue 14: the faults found when ecamp was used carelessly, each reproduced, each fixed.

Data loss and leaks (merge blanking a manifest, a run's config rewritten by a failing
command, an inline API key stored in plain text, inverted boxes scored silently), unclear
errors (each must name the file, the row / line / image and what to do, in one line), and
concurrency / recovery (a lock on the `ecamp distill` output, resume past a truncated
checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import ecamp
from ecamp.cli import build_parser, main
from ecamp.errors import DataError, UserError

SRC = str(Path(ecamp.__file__).resolve().parents[1])  # the ecamp under test, for subprocesses


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- 1. merge


def _manifest(path: Path) -> None:
    pd.DataFrame(
        {
            "study_id": ["1", "2", "3"],
            "report": ["a", "b", "c"],
            "distilled": ["kept one", "kept two", ""],
        }
    ).to_csv(path, index=False)


def test_merge_refuses_when_no_id_matches_and_leaves_the_manifest(tmp_path, capsys) -> None:
    m, d = tmp_path / "m.csv", tmp_path / "d.jsonl"
    _manifest(m)
    before = m.read_bytes()
    d.write_text(json.dumps({"id": "99", "distilled": "other study"}) + "\n")
    assert main(["distill", "merge", "--manifest", str(m), "--distilled", str(d)]) == 2
    err = _err(capsys)
    assert "matches" in err and "--id-column" in err and "nothing written" in err
    assert m.read_bytes() == before


def test_merge_never_replaces_existing_text_without_overwrite(tmp_path, capsys) -> None:
    m, d = tmp_path / "m.csv", tmp_path / "d.jsonl"
    _manifest(m)
    rows = [("1", "new one"), ("2", ""), ("3", "new three")]  # 2: no text now
    d.write_text("".join(json.dumps({"id": i, "distilled": t}) + "\n" for i, t in rows))
    assert main(["distill", "merge", "--manifest", str(m), "--distilled", str(d)]) == 0
    got = pd.read_csv(m, dtype=str, keep_default_na=False)["distilled"].tolist()
    assert got == ["kept one", "kept two", "new three"]
    assert "--overwrite" in _err(capsys)
    # explicitly asked: new text replaces old; a row without new text still keeps its own
    assert (
        main(["distill", "merge", "--manifest", str(m), "--distilled", str(d), "--overwrite"]) == 0
    )
    got = pd.read_csv(m, dtype=str, keep_default_na=False)["distilled"].tolist()
    assert got == ["new one", "kept two", "new three"]


# --------------------------------------------------------------------------- 2. config.yaml


class Regression(Dataset):
    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i]}


class Toy(nn.Module):
    def __init__(self, h: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, h), nn.Tanh(), nn.Linear(h, 1))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.net(batch["x"]), batch["y"])}


def _train(out: Path, h: int = 8, **kw: Any) -> dict[str, Any]:
    from ecamp.config import TrainConfig
    from ecamp.train.loop import Trainer

    base: dict[str, Any] = dict(
        epochs=1,
        batch_size=4,
        lr=1e-2,
        warmup_epochs=0.0,
        progress=False,
        tensorboard=False,
        device="cpu",
        log_every=1,
        ckpt_every=1,
    )
    cfg = TrainConfig(**{**base, **kw})
    return Trainer(Toy(h), Regression(), cfg, out, config_to_save={"model": {"h": h}}).fit()


def test_a_refused_resume_leaves_the_runs_config_as_it_was(tmp_path: Path) -> None:
    _train(tmp_path, h=8, max_steps=1)
    before = (tmp_path / "config.yaml").read_bytes()
    with pytest.raises(UserError, match="different model config"):
        _train(tmp_path, h=16, max_steps=2)
    assert (tmp_path / "config.yaml").read_bytes() == before


def test_export_only_reads_the_runs_own_config(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    fast = ["data.synthetic_n=8", "train.batch_size=4", "train.progress=false"]
    fast += ["train.tensorboard=false", "train.max_steps=1", "model.depth=1"]  # not the default
    assert main(["pretrain", "--output", str(run), *fast]) == 0
    import shutil

    shutil.rmtree(run / "encoder")
    shutil.rmtree(run / "phantom")
    config, metrics = (run / "config.yaml").read_bytes(), (run / "metrics.csv").read_bytes()
    capsys.readouterr()
    assert main(["pretrain", "--output", str(run), "--export-only"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 1
    assert not (run / "phantom").exists(), "export-only generated data"
    assert (run / "config.yaml").read_bytes() == config
    assert (run / "metrics.csv").read_bytes() == metrics
    from ecamp.models.checkpoints import load_encoder

    assert len(load_encoder(run / "encoder").blocks) == 1  # the run's model, not the default's
    # a folder that is no pre-training run: one clear line
    assert main(["pretrain", "--output", str(tmp_path / "nothing"), "--export-only"]) == 2
    assert "config.yaml" in _err(capsys)


# --------------------------------------------------------------------------- 3. secrets


def test_an_inline_api_key_reaches_no_file(tmp_path: Path) -> None:
    key = "sk-careless-0123456789abcdef"
    run = tmp_path / "R"
    argv = [sys.executable, "-m", "ecamp.cli", "run", "--output", str(run)]
    argv += [f"distill.api_key={key}", "attention.enabled=false", "pretrain.enabled=false"]
    argv += ["finetune.enabled=false", "data.synthetic_n=12"]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}
    )
    assert proc.returncode == 0, proc.stderr
    assert key not in proc.stdout + proc.stderr
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "pipeline.yaml" for p in files) and len(files) > 5
    for p in files:
        assert key.encode() not in p.read_bytes(), f"{p} holds the API key"
    assert "'***'" in (run / "pipeline.yaml").read_text()


def test_secrets_are_masked_in_configs_and_log_lines(tmp_path: Path) -> None:
    from ecamp.config import save_config
    from ecamp.utils.logging import get_logger, setup_logging
    from ecamp.utils.secrets import register_secrets_in

    cfg = {"distill": {"api_key": "sk-cfg-secret-value", "api_key_env": "OPENAI_API_KEY"}}
    cfg["extra"] = {"hf_token": "hf_tok_value_1234", "max_tokens": 384}
    save_config(cfg, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert "sk-cfg-secret" not in text and "hf_tok_value" not in text
    assert "OPENAI_API_KEY" in text and "384" in text  # names and ordinary fields stay
    register_secrets_in(cfg)
    setup_logging(tmp_path)
    get_logger("test").warning("request with key %s failed", "sk-cfg-secret-value")
    for h in logging.getLogger("ecamp").handlers:
        h.flush()
    log = (tmp_path / "log.txt").read_text()
    assert "request with key *** failed" in log and "sk-cfg-secret" not in log


# --------------------------------------------------------------------------- 4. det boxes


def _evaluate(tmp_path: Path, task: str, pred: Any, tgt: Any, ext: str) -> None:
    from ecamp.eval.cli import evaluate_cls, evaluate_det, evaluate_seg

    p, t = tmp_path / f"p{ext}", tmp_path / f"t{ext}"
    for path, obj in ((p, pred), (t, tgt)):
        if ext == ".json":
            path.write_text(json.dumps(obj))
        elif ext == ".csv":
            obj.to_csv(path, index=False)
        else:
            np.savez(path, **obj)
    {"cls": evaluate_cls, "seg": evaluate_seg, "det": evaluate_det}[task](p, t)


def test_det_rejects_inverted_boxes_naming_image_and_box(tmp_path: Path) -> None:
    tgt = {"scan-7": [[0, 0, 10, 10]]}
    with pytest.raises(DataError, match=r"'scan-7'.*\[10, 0, 5, 10\].*x2 < x1"):
        _evaluate(
            tmp_path, "det", {"scan-7": {"boxes": [[10, 0, 5, 10]], "scores": [0.9]}}, tgt, ".json"
        )
    with pytest.raises(DataError, match=r"'scan-7'.*target box 0 \[0, 9, 10, 3\]"):
        _evaluate(
            tmp_path,
            "det",
            {"scan-7": {"boxes": [[0, 0, 1, 1]], "scores": [0.9]}},
            {"scan-7": [[0, 9, 10, 3]]},
            ".json",
        )
    from ecamp.eval.metrics import detection_map

    with pytest.raises(UserError, match="x2 < x1"):
        detection_map([(np.array([[5.0, 0, 1, 1]]), np.array([0.9]))], [np.zeros((1, 4))])


# --------------------------------------------------------------------------- unclear errors


def test_nan_and_inf_cls_scores_name_the_file_and_row(tmp_path: Path) -> None:
    ids = ["a", "b", "c", "d"]
    tgt = pd.DataFrame({"id": ids, "A": [1, 0, 1, 0]})
    for bad in (np.nan, np.inf):
        pred = pd.DataFrame({"id": ids, "A": [0.9, bad, 0.2, 0.1]})
        with pytest.raises(DataError, match=r"p\.csv: row of id 'b', column 'A'.*not a finite"):
            _evaluate(tmp_path, "cls", pred, tgt, ".csv")
    labels = pd.DataFrame({"id": ids, "label": [0, 1, 1, 0]})
    pred = pd.DataFrame({"id": ids, "x": [0.9, 0.1, 0.2, 0.3], "y": [0.1, 0.9, np.inf, 0.3]})
    with pytest.raises(DataError, match=r"row of id 'c', column 'y'"):
        _evaluate(tmp_path, "cls", pred, labels, ".csv")


def test_nan_pixels_in_seg_predictions_are_an_error(tmp_path: Path) -> None:
    p = np.full((4, 4), 0.9)
    p[1, 2] = np.nan
    with pytest.raises(DataError, match=r"p\.npz: image 'img3': 1 pixel\(s\) are NaN"):
        _evaluate(tmp_path, "seg", {"img3": p}, {"img3": np.ones((4, 4))}, ".npz")


def test_malformed_boxes_and_counts_name_the_image_id(tmp_path: Path) -> None:
    tgt = {"x1": [[0, 0, 5, 5]]}
    with pytest.raises(DataError, match=r"'x1'.*box 1 \[1, 2\] is not \[x1, y1, x2, y2\]"):
        _evaluate(
            tmp_path,
            "det",
            {"x1": {"boxes": [[0, 0, 1, 1], [1, 2]], "scores": [1, 1]}},
            tgt,
            ".json",
        )
    with pytest.raises(DataError, match=r"'x1': 1 boxes but 2 scores"):
        _evaluate(
            tmp_path, "det", {"x1": {"boxes": [[0, 0, 1, 1]], "scores": [0.9, 0.8]}}, tgt, ".json"
        )
    from ecamp.eval.metrics import detection_map

    with pytest.raises(UserError, match="image 'scan-9': 1 boxes but 2 scores"):
        detection_map([(np.zeros((1, 4)), np.ones(2))], [np.zeros((0, 4))], ids=["scan-9"])


class Arbitrary:
    """A Python object in a pickle: loading it could run code, so it is refused."""


def test_init_with_a_broken_file_says_what_it_is(tmp_path: Path) -> None:
    from ecamp.models.checkpoints import read_state_dict

    garbage = tmp_path / "garbage.pt"
    garbage.write_text("definitely not weights\n")
    corrupt = tmp_path / "enc.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
    pickled = tmp_path / "objects.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "obj": Arbitrary()}, pickled)
    cases = [
        (garbage, "is a text file"),
        (corrupt, "not a valid .safetensors file"),
        (pickled, r"Python objects besides tensors \(test_careless_use.Arbitrary\)"),
    ]
    for path, expected in cases:
        with pytest.raises(UserError, match=expected) as e:
            read_state_dict(path)
        msg = str(e.value)
        assert str(path) in msg and "trusted=True" not in msg and "weights_only" not in msg
    from ecamp.train.export import resolve_encoder

    with pytest.raises(UserError, match="is a text file") as e:
        resolve_encoder(str(garbage))  # `ecamp finetune --init`
    assert "weights_only" not in str(e.value)


def test_non_utf8_csv_and_bad_jsonl_name_the_line(tmp_path: Path) -> None:
    from ecamp.data.manifest import read_table
    from ecamp.distill.run import read_reports

    csv = tmp_path / "m.csv"
    csv.write_bytes(b"id,image,report\n1,a.png,fine\n2,b.png,fine\n3,c.png,caf\xe9 au lait\n")
    with pytest.raises(DataError, match=r"m\.csv: line 4 is not UTF-8.*column 12"):
        read_table(csv)
    jl = tmp_path / "r.jsonl"
    jl.write_text('{"id": "1", "findings": "a", "impression": "b"}\n\n{"id": "2", findings}\n')
    with pytest.raises(DataError, match=r"r\.jsonl: line 3 is not valid JSON"):
        read_reports(jl)
    with pytest.raises(DataError, match=r"line 1 holds a JSON list"):
        jl.write_text("[1, 2]\n")
        read_table(jl)


def test_an_output_under_a_regular_file_is_one_clear_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    p, t = tmp_path / "p.json", tmp_path / "t.json"
    p.write_text(json.dumps({"a": {"boxes": [], "scores": []}}))
    t.write_text(json.dumps({"a": []}))
    argv = ["evaluate", "--task", "det", "--predictions", str(p), "--targets", str(t)]
    assert main([*argv, "--output", str(blocker / "sub" / "r.json")]) == 2
    err = _err(capsys)
    assert f"{blocker} is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    assert main(["pretrain", "--output", str(blocker / "run"), "train.max_steps=1"]) == 2
    assert f"{blocker} is a file" in _err(capsys)


class _Refuse401(BaseHTTPRequestHandler):
    def log_message(self, *a: Any) -> None:
        pass

    def _refuse(self) -> None:
        body = json.dumps({"error": {"message": "bad key", "type": "invalid_request_error"}})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _refuse


@pytest.fixture
def refusing_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Refuse401)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _reports(tmp_path: Path) -> Path:
    path = tmp_path / "reports.csv"
    pd.DataFrame(
        {
            "study_id": ["1", "2"],
            "findings": ["Small left effusion.", "No pneumothorax."],
            "impression": ["", ""],
        }
    ).to_csv(path, index=False)
    return path


def test_a_refused_key_names_its_source_and_leaves_no_empty_output(
    tmp_path: Path, refusing_server: str, monkeypatch, capsys
) -> None:
    out = tmp_path / "d.jsonl"
    base = ["distill", "--input", str(_reports(tmp_path)), "--output", str(out), "--backend"]
    base += ["openai", "--base-url", refusing_server, "--model", "m", "--no-progress"]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-env-0000")
    assert main(base) == 2
    err = _err(capsys)
    assert "environment variable $OPENAI_API_KEY" in err and "sk-from-the-env" not in err
    assert not out.exists(), "a failed run left an empty output file"
    cfg = tmp_path / "distill.yaml"
    cfg.write_text("api_key: sk-from-the-config-1111\n")
    assert main([*base, "--config", str(cfg)]) == 2
    err = _err(capsys)
    assert "the api_key setting" in err and "remove it to use $OPENAI_API_KEY" in err
    assert "sk-from-the-config" not in err and not out.exists()


def test_overrides_may_stand_before_between_and_after_options(capsys) -> None:
    from ecamp.cli import parse_args

    args = parse_args(
        build_parser(), ["pretrain", "a=b", "--output", "D", "c=d", "--preset", "tiny", "e=f"]
    )
    assert args.overrides == ["a=b", "c=d", "e=f"] and args.output == "D"
    args = parse_args(build_parser(), ["run", "p.yaml", "--output", "D", "x.y=1"])
    assert args.items == ["p.yaml", "x.y=1"]
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["pretrain", "--output", "D", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main(["pretrain", "a=b", "--output", "D", "c=d"]) == 2  # reaches the config check
    err = _err(capsys)
    assert "unknown config key(s) a, c" in err


# --------------------------------------------------------------------------- concurrency


HOLDER = textwrap.dedent(
    """
    import sys, time
    from ecamp.utils.lock import output_lock
    with output_lock(sys.argv[1], "ecamp distill"):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_second_distill_on_one_output_stops_naming_the_holder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "d.jsonl"
    env = {**os.environ, "PYTHONPATH": SRC}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        argv = [
            "distill",
            "--input",
            str(_reports(tmp_path)),
            "--output",
            str(out),
            "--no-progress",
        ]
        assert main(argv) == 2
        err = _err(capsys)
        assert f"pid {holder.pid}" in err and "another ecamp distill run" in err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock (and pid) are taken over
    lock = tmp_path / "d.jsonl.lock"
    assert lock.read_text().strip() == str(holder.pid)
    assert main(argv) == 0
    assert len(out.read_text().splitlines()) == 2 and not lock.exists()


def test_resume_passes_over_a_truncated_latest_checkpoint(tmp_path: Path, caplog) -> None:
    _train(tmp_path, max_steps=2, keep_last=3)
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000002.pt"
    step2 = ckpts / "step_00000002.pt"
    step2.write_bytes(step2.read_bytes()[:300])  # a copy cut short / a full disk
    with caplog.at_level(logging.WARNING, logger="ecamp"):
        logging.getLogger("ecamp").propagate = True
        try:
            summary = _train(tmp_path, max_steps=3, keep_last=3)
        finally:
            logging.getLogger("ecamp").propagate = False
    assert summary["steps"] == 3
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "step_00000002.pt is unreadable" in warned and "step_00000001.pt" in warned
    assert (ckpts / "step_00000002.pt.broken").is_file()  # kept for a look, never resumed
    from ecamp.train.checkpoint import load_checkpoint

    assert load_checkpoint(ckpts / "step_00000003.pt")["step"] == 3
