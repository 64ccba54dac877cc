"""Descriptor statistics (Appendix A) and `ecamp text stats`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecamp.cli import main
from ecamp.errors import DataError
from ecamp.text.stats import classify, descriptor_stats, read_corpus
from test_text_entities import APPENDIX_C


def test_classify() -> None:
    assert classify("there is no") == "negative"
    assert classify("no evidence of") == "negative"
    assert classify("there may be") == "uncertain"
    assert classify("concerning for") == "uncertain"
    assert classify("there is mild") == "positive"


def test_counts_on_appendix_c_distilled_reports() -> None:
    stats = descriptor_stats([d for _, d in APPENDIX_C], max_words=3)
    # "There is no pleural effusion": the 3 words before "effusion" are "is no pleural"
    assert stats.counts["there is no"] == 4 and stats.counts["is no pleural"] == 2
    assert stats.counts["there may be"] == 1
    assert stats.counts["no"] == 4
    # the window stops at the previous mention: "atelectasis or pneumonia" gives "or", not "atelectasis or"
    assert stats.counts["or"] == 1 and "atelectasis or" not in stats.counts
    assert stats.n_reports == 3 and stats.n_mentions == 15
    s = stats.summary()
    assert s["top_negative"]["descriptor"] == "there is no"
    assert s["imbalance_ratio"] == pytest.approx(4 / s["top_non_negative"]["count"])
    assert s["suggested_lambda"] == pytest.approx(1 / s["imbalance_ratio"])


def test_empty_corpus() -> None:
    s = descriptor_stats(["", "Lungs are clear."]).summary()
    assert s["n_mentions"] == 0 and s["imbalance_ratio"] is None and s["suggested_lambda"] is None


def test_cli_writes_table_summary_and_chart(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"report": d}) + "\n" for _, d in APPENDIX_C * 3))
    out = tmp_path / "out"
    assert main(["text", "stats", str(corpus), "--output", str(out)]) == 0
    summary = json.loads((out / "descriptor_summary.json").read_text())
    assert summary["n_reports"] == 9 and summary["top_negative"]["count"] == 12
    rows = (out / "descriptor_stats.csv").read_text().splitlines()
    assert rows[0] == "descriptor,words,count,class" and len(rows) > 5
    assert (out / "descriptor_stats.png").read_bytes()[:4] == b"\x89PNG"


def test_corpus_errors(tmp_path: Path) -> None:
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("findings,impression\nSmall effusion.,No change.\n")
    assert read_corpus(csv_path, "findings,impression") == ["Small effusion. No change."]
    with pytest.raises(DataError, match="no column"):
        read_corpus(csv_path, "report")
    assert main(["text", "stats", str(tmp_path / "missing.csv")]) == 2
