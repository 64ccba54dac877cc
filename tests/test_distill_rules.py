"""The rules backend on the paper's examples, hand-made phrasings and real IU X-ray reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from ecamp.distill.prompt import appendix_c_pairs
from ecamp.distill.rules import distill_text, distilled_text
from ecamp.distill.validate import parse_answer, status_of
from ecamp.text.entities import find_entities


def statuses(text: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in distill_text(text):
        out.setdefault(f.entity, set()).add(f.status)
    return out


def test_appendix_c_pair_1_negations_and_normal_structures():
    s = statuses(appendix_c_pairs()[0]["report"])
    for ent in ("consolidation", "effusion", "congestion", "pneumothorax"):
        assert s[ent] == {"negative"}, ent
    assert s["hilar"] == {"positive"} and s["contour"] == {"positive"}
    assert "There is no pneumothorax." in distilled_text(appendix_c_pairs()[0]["report"])


def test_appendix_c_pair_2_clear_of_and_no_evidence_of():
    pair = appendix_c_pairs()[1]
    s = statuses(pair["report"])
    assert s["opacity"] == {"negative"}  # "clear of airspace or interstitial opacity"
    assert s["effusion"] == {"negative"} and s["pneumothorax"] == {"negative"}
    assert s["tuberculosis"] == {"negative"}  # "no evidence of active or latent tb"
    text = distilled_text(pair["report"])
    assert "There is unremarkable cardiomediastinal silhouette." in text  # the paper's own sentence


def test_appendix_c_pair_3_uncertain_joined_with_or():
    s = statuses(appendix_c_pairs()[2]["report"])
    assert s["opacity"] == {"positive"} and s["effusion"] == {"positive"}
    assert s["atelectasis"] == {"uncertain"} and s["pneumonia"] == {"uncertain"}
    assert "There may be atelectasis or pneumonia." in distilled_text(
        appendix_c_pairs()[2]["report"]
    )


@pytest.mark.parametrize(
    ("text", "entity", "status"),
    [
        ("No pneumothorax.", "pneumothorax", "negative"),
        ("Mild cardiomegaly.", "cardiomegaly", "positive"),
        ("Pneumonia cannot be excluded.", "pneumonia", "uncertain"),
        ("Cannot exclude a small effusion.", "effusion", "uncertain"),
        ("Possible right lower lobe pneumonia.", "pneumonia", "uncertain"),
        ("There is no focal air space opacity to suggest a pneumonia.", "pneumonia", "negative"),
        ("Hyperexpanded lungs, suggestive of emphysema.", "emphysema", "uncertain"),
        ("Hyperexpansion suggesting underlying emphysema.", "emphysema", "uncertain"),
        ("No pneumothorax, possible small left effusion.", "effusion", "uncertain"),
        ("No pneumothorax, possible small left effusion.", "pneumothorax", "negative"),
        ("No interval change in the right lower lobe opacity.", "opacity", "positive"),
        ("The previously seen effusion has resolved.", "effusion", "negative"),
        ("Pneumothorax is not seen.", "pneumothorax", "negative"),
        (
            "Lungs are clear without consolidation, but there is mild atelectasis.",
            "atelectasis",
            "positive",
        ),
        (
            "Lungs are clear without consolidation, but there is mild atelectasis.",
            "consolidation",
            "negative",
        ),
        ("Small bilateral pleural effusions suspected.", "effusion", "uncertain"),
        ("Negative for pneumothorax or pleural effusion.", "effusion", "negative"),
    ],
)
def test_cue_scope(text, entity, status):
    assert statuses(text)[entity] == {status}


def test_severity_and_location_kept_in_the_fixed_forms():
    text = distilled_text(
        "Mild cardiomegaly. Possible pneumonia in the right lower lobe. No pneumothorax."
    )
    assert text == (
        "There is mild cardiomegaly. There may be pneumonia in the right lower lobe. There is no pneumothorax."
    )


def test_output_reparses_to_the_same_findings():
    report = (
        "Small left pleural effusion. Questionable nodule. No pneumothorax. Hyperinflated lungs."
    )
    findings = distill_text(report)
    ents = {m.entity for m in find_entities(report)}
    parsed = parse_answer(" ".join(dict.fromkeys(f.sentence for f in findings)), ents)
    assert parsed.ok, parsed.problem
    assert {(f.entity, f.status) for f in parsed.findings} == {
        (f.entity, f.status) for f in findings
    }


def test_empty_and_entity_free_reports():
    assert distill_text("") == [] and distill_text("   ") == []
    assert distill_text("The heart size is normal. Lungs are clear.") == []


@pytest.fixture(scope="module")
def iu_reports(test_data) -> pd.DataFrame:
    df = pd.read_csv(test_data("iu_xray/iu_xray_reports_dev.csv"))
    df["text"] = (df["findings"].fillna("") + " " + df["impression"].fillna("")).str.strip()
    return df


def test_real_reports_never_name_an_absent_entity_and_use_the_fixed_forms(iu_reports):
    for text in iu_reports["text"].head(400):
        mentioned = {m.entity for m in find_entities(text)}
        for f in distill_text(text):
            assert f.entity in mentioned
            assert {m.entity for m in find_entities(f.sentence)} <= mentioned, f.sentence
            assert status_of(f.sentence) == f.status, f.sentence


def test_real_reports_negated_sentences_come_out_negated(iu_reports):
    # every report sentence that starts with "No " and names entities: all of them negative
    checked = 0
    for text in iu_reports["text"].head(300):
        for sent in text.split(". "):
            plain = not any(w in sent for w in (",", " but ", " with ", "change"))
            if sent.startswith("No ") and plain:
                for ent, st in statuses(sent).items():
                    assert st == {"negative"}, (sent, ent, st)
                    checked += 1
    assert checked > 100


def test_quality_against_negbio_gold_does_not_regress(iu_reports):
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import distill_quality as q
    finally:
        sys.path.remove(str(bench))
    df = iu_reports[iu_reports["has_negbio_gold"] == 1].reset_index(drop=True)
    preds = [q.predict(t) for t in df["text"]]
    res = q.score(df, preds, uncertain_positive=False)
    # measured 0.922 (0.940 without the unannotated Hernia column); the target is 0.90
    assert res["micro"]["f1"] >= 0.90
    assert res["micro_without_hernia"]["f1"] >= 0.92
    assert res["per_finding"]["Pneumothorax"]["recall"] >= 0.7
