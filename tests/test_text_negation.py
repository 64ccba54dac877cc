"""The one negation lexicon (ecamp.text.negation) and its three readers."""

from __future__ import annotations

import re

import pytest

from ecamp.text.negation import (
    DISTILL_NEGATION_CUES,
    DISTILL_NEGATION_PATTERN,
    NEGATION_CUES,
    NEGATION_PATTERN,
    NEGATION_WORDS,
)


def test_base_cues_are_part_of_the_distiller_set():
    assert set(NEGATION_CUES) < set(DISTILL_NEGATION_CUES)
    assert len(set(DISTILL_NEGATION_CUES)) == len(DISTILL_NEGATION_CUES)


def test_no_cue_is_a_word_prefix_of_another():
    """So the alternatives' order in a pattern cannot change a match's span."""
    for a in DISTILL_NEGATION_CUES:
        for b in DISTILL_NEGATION_CUES:
            assert a == b or not b.startswith(a + " "), (a, b)


@pytest.mark.parametrize(
    "text, spans",
    [
        ("There is no pneumothorax.", [(9, 11)]),
        ("Not seen. NO effusion", [(0, 3), (10, 12)]),
        ("Negative for fracture, free of fluid", [(0, 12), (23, 30)]),
        ("resolved atelectasis; absence of mass", [(0, 8), (22, 32)]),
        ("nothing, none, normal, nor, clear of", []),  # words only the distiller reads
    ],
)
def test_attention_pattern(text, spans):
    assert [m.span() for m in NEGATION_PATTERN.finditer(text)] == spans


def test_distiller_pattern_reads_lower_case_and_the_extension():
    low = "clear of fluid, neither nor never; interval removal of the tube, ruled out"
    got = [m.group(0) for m in DISTILL_NEGATION_PATTERN.finditer(low)]
    assert got == ["clear of", "neither", "nor", "never", "interval removal of", "ruled out"]
    assert DISTILL_NEGATION_PATTERN.flags & re.IGNORECASE == 0
    assert DISTILL_NEGATION_PATTERN.search("No effusion") is None  # the distiller lowers first


def test_stats_word_set():
    from ecamp.text.stats import NEGATION, classify

    assert NEGATION is NEGATION_WORDS
    assert classify("there is no") == classify("none") == "negative"
    assert classify("resolved") == "positive"  # a phrase cue, not one of the words
