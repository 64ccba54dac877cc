"""Corpus runs: inputs, sharding, cache and resume, outputs, merge, chat export, prompt, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ecamp.cli import main
from ecamp.distill.config import DistillConfig
from ecamp.distill.prompt import appendix_c_pairs, load_prompt
from ecamp.distill.run import (
    ResultCache,
    collect,
    distill_corpus,
    read_reports,
    shard,
    write_output,
)
from ecamp.distill.validate import parse_answer
from ecamp.errors import DataError, UserError

REPORTS = [
    ("s1", "No pneumothorax. Mild cardiomegaly.", "Possible pneumonia."),
    ("s2", "There is a small left pleural effusion.", ""),
    ("s3", "", ""),
    ("s4", "The heart is normal.", "No acute disease."),
]


def write_csv(path: Path) -> Path:
    pd.DataFrame(REPORTS, columns=["study_id", "findings", "impression"]).to_csv(path, index=False)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_read_csv_jsonl_and_mimic_folder(tmp_path):
    rs = read_reports(write_csv(tmp_path / "r.csv"))
    assert [r.id for r in rs] == ["s1", "s2", "s3", "s4"]
    assert rs[0].text == "No pneumothorax. Mild cardiomegaly. Possible pneumonia."
    jl = tmp_path / "r.jsonl"
    jl.write_text(
        "".join(json.dumps({"id": i, "findings": f, "impression": m}) + "\n" for i, f, m in REPORTS)
    )
    assert [r.text for r in read_reports(jl)] == [r.text for r in rs]
    study = tmp_path / "files" / "p10" / "p10000032"
    study.mkdir(parents=True)
    (study / "s50414267.txt").write_text(
        "FINAL REPORT\n INDICATION: cough.\n\n FINDINGS: No pleural effusion.\n\n IMPRESSION: No pneumonia.\n"
    )
    (mimic,) = read_reports(tmp_path / "files")
    assert mimic.id == "50414267" and "effusion" in mimic.text and "cough" not in mimic.text


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_reports(tmp_path / "missing.csv")
    p = write_csv(tmp_path / "r.csv")
    with pytest.raises(DataError, match="missing column"):
        read_reports(p, text_columns=("report",))
    dup = tmp_path / "dup.csv"
    pd.DataFrame([("a", "x", ""), ("a", "y", "")], columns=["id", "findings", "impression"]).to_csv(
        dup, index=False
    )
    with pytest.raises(DataError, match="more than once"):
        read_reports(dup)


def test_shards_partition_the_corpus(tmp_path):
    rs = read_reports(write_csv(tmp_path / "r.csv"))
    parts = [shard(rs, i, 3) for i in range(3)]
    ids = sorted(r.id for p in parts for r in p)
    assert ids == sorted(r.id for r in rs)


def test_cache_resume_and_torn_line(tmp_path):
    rs = read_reports(write_csv(tmp_path / "r.csv"))
    cache = tmp_path / "c.jsonl"
    s1 = distill_corpus(rs[:2], DistillConfig(), cache, progress=False)
    assert (s1.done, s1.cached) == (2, 0)
    with open(cache, "ab") as f:
        f.write(b'{"id": "s3", "distil')  # a record cut by a kill
    s2 = distill_corpus(rs, DistillConfig(), cache, progress=False)
    assert (s2.done, s2.cached, s2.empty) == (2, 2, 1)
    assert ResultCache(cache).torn_lines == 1
    recs = list(collect(rs, cache))
    assert [r["id"] for r in recs] == ["s1", "s2", "s3", "s4"]
    assert recs[2]["status"] == "empty"
    s3 = distill_corpus(rs, DistillConfig(), cache, progress=False)
    assert (s3.done, s3.cached) == (0, 4)


def test_outputs_jsonl_csv_parquet_carry_the_same_fields(tmp_path):
    rs = read_reports(write_csv(tmp_path / "r.csv"))
    cache = tmp_path / "c.jsonl"
    distill_corpus(rs, DistillConfig(), cache, progress=False)
    for ext in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"o.{ext}"
        assert write_output(collect(rs, cache), out) == 4
    jl = read_jsonl(tmp_path / "o.jsonl")
    assert set(jl[0]) >= {"id", "distilled", "findings", "backend", "status"}
    assert jl[0]["findings"][0] == {
        "entity": "pneumothorax",
        "status": "negative",
        "sentence": "There is no pneumothorax.",
    }
    for ext in ("csv", "parquet"):
        df = (
            pd.read_csv(tmp_path / "o.csv")
            if ext == "csv"
            else pd.read_parquet(tmp_path / "o.parquet")
        )
        assert list(df["id"]) == [r["id"] for r in jl]
        assert json.loads(df["findings"][0]) == jl[0]["findings"]


def test_cli_plain_form_merge_and_export(tmp_path, capsys):
    inp = write_csv(tmp_path / "r.csv")
    out = tmp_path / "d.jsonl"
    assert main(["distill", "--input", str(inp), "--output", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 4 and summary["backend"] == "rules"
    recs = read_jsonl(out)
    assert (
        recs[0]["distilled"]
        == "There is no pneumothorax. There is mild cardiomegaly. There may be pneumonia."
    )

    manifest = tmp_path / "m.csv"
    pd.DataFrame({"study_id": ["1", "s2", "2", "9"], "path": ["a", "b", "c", "d"]}).to_csv(
        manifest, index=False
    )
    assert (
        main(
            [
                "distill",
                "merge",
                "--manifest",
                str(manifest),
                "--distilled",
                str(out),
                "--output",
                str(tmp_path / "mm.csv"),
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out.strip())
    assert (stats["matched"], stats["missing"]) == (3, 1)
    merged = pd.read_csv(tmp_path / "mm.csv", keep_default_na=False)
    assert merged["distilled"][0].startswith("There is no pneumothorax.")
    assert merged["distilled"][1] == merged["distilled"][2] != ""  # two images of study 2
    assert merged["distilled"][3] == ""

    chats = tmp_path / "chat.jsonl"
    assert (
        main(
            [
                "distill",
                "export-chat",
                "--input",
                str(inp),
                "--distilled",
                str(out),
                "--output",
                str(chats),
            ]
        )
        == 0
    )
    lines = read_jsonl(chats)
    assert [c["id"] for c in lines] == ["s1", "s2"]  # s3 empty, s4 names no entity
    roles = [m["role"] for m in lines[0]["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert lines[0]["messages"][-1]["content"] == recs[0]["distilled"]


def test_cli_shard_names_and_bad_args(tmp_path, capsys):
    inp = write_csv(tmp_path / "r.csv")
    for i in range(2):
        assert (
            main(
                [
                    "distill",
                    "-i",
                    str(inp),
                    "-o",
                    str(tmp_path / "d.jsonl"),
                    "--shard",
                    f"{i}/2",
                    "--no-progress",
                ]
            )
            == 0
        )
    ids = [r["id"] for i in range(2) for r in read_jsonl(tmp_path / f"d.shard{i}of2.jsonl")]
    assert sorted(ids) == ["s1", "s2", "s3", "s4"]
    assert main(["distill", "-i", str(inp), "-o", str(tmp_path / "d.txt")]) == 2
    assert main(["distill", "-i", str(inp), "-o", str(tmp_path / "d.jsonl"), "--shard", "3/2"]) == 2
    assert "error" in capsys.readouterr().err


def test_prompt_is_one_shot_and_lists_the_report_entities(tmp_path):
    p = load_prompt()
    msgs = p.messages("Mild cardiomegaly. No pneumothorax.")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"].count("Report:") == 1  # ONE worked example
    assert appendix_c_pairs()[0]["distilled"] == msgs[2]["content"]
    assert msgs[-1]["content"].endswith("Entities: cardiomegaly, pneumothorax")
    own = tmp_path / "p.yaml"
    own.write_text(
        "system: S\nuser: 'R={report} E={entities}'\nexample: {report: No edema., answer: There is no edema.}\n"
    )
    mine = load_prompt(own).messages("No edema.")
    assert mine[-1]["content"] == "R=No edema. E=edema" and mine[0]["content"] == "S"
    assert load_prompt(own).fingerprint() != p.fingerprint()
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: S\n")
    with pytest.raises(UserError, match="must have keys"):
        load_prompt(bad)


def test_student_prompt_keeps_only_the_sentences_naming_an_entity(tmp_path):
    student = load_prompt("student")
    assert student.report == "entity_sentences"
    report = (
        "Heart size normal.  The XXXX are intact. No pneumothorax. Lungs are clear, mild edema."
    )
    user = student.messages(report)[-1]["content"]
    assert (
        user
        == "Report: No pneumothorax. Lungs are clear, mild edema.\nEntities: pneumothorax, edema"
    )
    # entities given by the caller decide which sentences stay
    assert "edema" not in student.messages(report, ["pneumothorax"])[-1]["content"].split("\n")[0]
    # nothing named: the whole report, whitespace folded
    assert student.messages("The XXXX are  intact.")[-1]["content"].startswith(
        "Report: The XXXX are intact.\n"
    )
    # the mode is part of the prompt's identity (cached answers are not mixed) ...
    full = tmp_path / "full.yaml"
    full.write_text(f"system: {student.system}\nuser: '{student.user}'\nreport: full\n")
    assert load_prompt(full).fingerprint() != student.fingerprint()
    assert load_prompt(full).messages(report)[-1]["content"].startswith("Report: Heart size")
    # ... and a mode that does not exist is refused by name
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: S\nuser: '{report}'\nreport: summary\n")
    with pytest.raises(UserError, match="report must be one of full, entity_sentences"):
        load_prompt(bad)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("Sure! Here is the summary of the report.", "off-format"),
        ("There is no pneumothorax. There is cardiomegaly.", "not in the report: cardiomegaly"),
        ("There are changes.", "no sentence names"),
        ("There is no pneumothorax. " * 30, "looping"),
    ],
)
def test_validation_rejects(answer, problem):
    parsed = parse_answer(answer, ["pneumothorax"])
    assert not parsed.ok and problem in (parsed.problem or "")


def test_validation_accepts_paper_answers_and_reads_status():
    for pair in appendix_c_pairs():
        from ecamp.distill.prompt import entity_list

        parsed = parse_answer(pair["distilled"], entity_list(pair["report"]))
        assert parsed.ok, parsed.problem
    parsed = parse_answer(
        "1. There may be atelectasis or pneumonia in the right lower lobe.\n- There is no effusion.",
        ["atelectasis", "pneumonia", "effusion"],
    )
    assert [(f.entity, f.status) for f in parsed.findings] == [
        ("atelectasis", "uncertain"),
        ("pneumonia", "uncertain"),
        ("effusion", "negative"),
    ]
