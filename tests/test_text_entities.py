"""Entity list, surface forms, sentence splitting (ecamp.text.entities)."""

from __future__ import annotations

import csv

import pytest

from ecamp.text.entities import ENTITIES, SURFACE_TO_ENTITY, find_entities, split_sentences

# Appendix C of the paper: (original report, distilled report)
APPENDIX_C = [
    (
        "There is no focal consolidation, pleural effusion, vascular congestion or pneumothorax. "
        "The cardiac hilar and mediastinal contours within normal limits.",
        "There is no consolidation. There is no pleural effusion. There is no vascular congestion. "
        "There is no pneumothorax. There is normal cardiac hilar. There are mediastinal contours.",
    ),
    (
        "The lungs are clear of airspace or interstitial opacity. The cardiomediastinal silhouette "
        "is unremarkable. No pleural effusion or pneumothorax. No acute or aggressive osseus "
        "changes. No evidence of active or latent tb.",
        "There is no opacity. There is unremarkable cardiomediastinal silhouette. There is no "
        "pleural effusion. There is no pneumothorax.",
    ),
    (
        "Right lower lobe opacity with an associated effusion could represent atelectasis or pneumonia.",
        "There is opacity. There may be atelectasis or pneumonia in the right lower lobe. "
        "There is an associated effusion.",
    ),
]


def names(text: str) -> list[str]:
    return [m.entity for m in find_entities(text)]


def test_entity_list_is_appendix_b_in_order() -> None:
    assert len(ENTITIES) == 44 == len(set(ENTITIES))
    assert ENTITIES[:4] == ("abnormality", "abscess", "aerate", "aorta")
    assert ENTITIES[-4:] == ("silhouette", "thickening", "tuberculosis", "vasculature")
    assert ENTITIES[15] == "copd" and ENTITIES[10] == "chf"
    assert all(e == e.lower() for e in ENTITIES)
    assert set(SURFACE_TO_ENTITY.values()) == set(ENTITIES)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Small bilateral effusions.", ["effusion"]),
        ("Patchy opacities and opacification, opacified lung.", ["opacity"] * 3),
        ("Lungs are hyperinflated; hyperinflation.", ["hyperinflate"] * 2),
        ("Well-aerated lungs, poor aeration.", ["aerate", "aerate"]),
        ("History of TB and COPD, CHF.", ["tuberculosis", "copd", "chf"]),
        (
            "Nodules, masses, fractures, calcifications.",
            ["nodule", "mass", "fracture", "calcification"],
        ),
        ("Calcified granulomas; hiatal hernias.", ["calcification", "granuloma", "hernia"]),
        ("Bibasilar infiltrates, thickened fissure.", ["infiltrate", "thickening"]),
        ("Tortuous aortic knob.", ["aorta"]),
        ("PNEUMOTHORAX. Pneumothoraces.", ["pneumothorax", "pneumothorax"]),
        ("Mild pulmonary edema and vascular engorgement.", ["edema", "engorgement"]),
    ],
)
def test_inflected_forms(text: str, expected: list[str]) -> None:
    assert names(text) == expected


def test_word_boundaries() -> None:
    assert names("A massive hiatal hernia.") == ["hernia"]
    assert names("Perihilar haziness.") == ["perihilar"]
    assert names("Elevated left hemidiaphragm.") == ["hemidiaphragm"]
    assert names("Abnormal diaphragm, tubular, massively") == []


def test_multi_word_forms_win_over_their_first_word() -> None:
    ms = find_entities(
        "Congestive heart failure; congestive changes. Chronic obstructive pulmonary disease."
    )
    assert [(m.entity, m.surface) for m in ms] == [
        ("chf", "Congestive heart failure"),
        ("congestion", "congestive"),
        ("copd", "Chronic obstructive pulmonary disease"),
    ]


def test_mentions_carry_spans_and_sentence_index() -> None:
    text = "Heart is normal. No pleural effusions.\n\nMild cardiomegaly."
    ms = find_entities(text)
    assert [(m.entity, m.sentence_index) for m in ms] == [("effusion", 1), ("cardiomegaly", 2)]
    for m in ms:
        assert text[m.start : m.end] == m.surface
    assert find_entities("") == [] and find_entities("   ") == []


def test_appendix_c_pairs() -> None:
    assert names(APPENDIX_C[0][1]) == [
        "consolidation", "effusion", "congestion", "pneumothorax", "hilar", "contour",
    ]  # fmt: skip
    assert names(APPENDIX_C[1][0]) == [
        "opacity", "cardiomediastinal", "silhouette", "effusion", "pneumothorax", "tuberculosis",
    ]  # fmt: skip
    assert names(APPENDIX_C[2][0]) == ["opacity", "effusion", "atelectasis", "pneumonia"]
    assert names(APPENDIX_C[2][1]) == ["opacity", "atelectasis", "pneumonia", "effusion"]


def sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text)]


def test_split_sentences_handles_abbreviations_decimals_lists_newlines() -> None:
    assert sentences("Seen by Dr. Smith. A 1.5 cm nodule, e.g. here.") == [
        "Seen by Dr. Smith.",
        "A 1.5 cm nodule, e.g. here.",
    ]
    assert sentences("1. Small effusion.\n2. No pneumothorax") == [
        "1. Small effusion.",
        "2. No pneumothorax",
    ]
    assert sentences("IMPRESSION:\n1. Effusion\n2. Edema") == [
        "IMPRESSION:",
        "1. Effusion",
        "2. Edema",
    ]
    assert sentences("lung apex.There is\nmild edema.\n\nNo change") == [
        "lung apex.",
        "There is\nmild edema.",
        "No change",
    ]
    assert sentences("Effusion? Yes! Done") == ["Effusion?", "Yes!", "Done"]
    assert sentences("") == [] and sentences(" \n ") == []


def test_real_reports(test_data) -> None:  # type: ignore[no-untyped-def]
    path = test_data("iu_xray/iu_xray_reports_dev.csv")
    with open(path, newline="", encoding="utf-8") as f:
        texts = [f"{r['findings']} {r['impression']}" for r in csv.DictReader(f)]
    assert len(texts) > 2000
    counts: dict[str, int] = {}
    for t in texts:
        spans = split_sentences(t)
        for m in find_entities(t):
            assert t[m.start : m.end] == m.surface
            s, e = spans[m.sentence_index]
            assert s <= m.start < e
            counts[m.entity] = counts.get(m.entity, 0) + 1
    top = sorted(counts, key=lambda k: -counts[k])[:5]
    assert "effusion" in top and "pneumothorax" in top
    assert sum(counts.values()) > 5000


def test_heart_enlargement_phrases_are_cardiomegaly() -> None:
    for text in (
        "The heart is mildly enlarged.",
        "Stable cardiac enlargement.",
        "Borderline heart size.",
    ):
        assert [m.entity for m in find_entities(text)] == ["cardiomegaly"], text
    assert find_entities("The heart is not enlarged.") == []


def test_nodular_describes_an_opacity_not_a_nodule() -> None:
    assert [m.entity for m in find_entities("Nodular opacity in the right midlung.")] == ["opacity"]
