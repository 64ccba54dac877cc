"""Parse and check an LLM's distilled report before it is trusted.

Every answer becomes a list of (entity, status, sentence); an answer is rejected when it is
empty, off-format (a sentence outside the "There is (no) X." / "There may be X." forms, or
no sentence naming an entity), or names an entity the report does not mention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ecamp.distill.findings import Finding
from ecamp.text.entities import find_entities, split_sentences

_NEGATIVE = re.compile(r"^there\s+(?:is|are)\s+no\b", re.IGNORECASE)
_UNCERTAIN = re.compile(r"^there\s+(?:may|might|could)\s+be\b", re.IGNORECASE)
_POSITIVE = re.compile(r"^there\s+(?:is|are)\b", re.IGNORECASE)
# chatty wrappers small models add: "Distilled report:", "- ", "1. ", quotes
_PREFIX = re.compile(
    r"^\s*(?:distilled(?: report)?\s*:|answer\s*:|[-*\u2022]|\d{1,2}[.)])\s*", re.IGNORECASE
)
MAX_SENTENCES_PER_ENTITY = 4  # more than this is a looping answer


@dataclass
class Parsed:
    """The findings read from an answer and, when it is rejected, why."""

    findings: list[Finding] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def status_of(sentence: str) -> str | None:
    """positive / negative / uncertain from the sentence form, or None when off-format."""
    s = sentence.strip().strip("\"'")
    if _NEGATIVE.match(s):
        return "negative"
    if _UNCERTAIN.match(s):
        return "uncertain"
    if _POSITIVE.match(s):
        return "positive"
    return None


def parse_answer(answer: str | None, report_entities: list[str] | set[str]) -> Parsed:
    """Findings of ``answer``; ``problem`` names the first reason to reject it."""
    allowed = set(report_entities)
    text = (answer or "").strip()
    if not text:
        return Parsed(problem="empty answer")
    lines = [_PREFIX.sub("", ln).strip() for ln in text.splitlines()]
    text = " ".join(ln for ln in lines if ln)
    findings: list[Finding] = []
    seen_sentences: set[str] = set()
    n_sentences = 0
    for start, end in split_sentences(text):
        sentence = " ".join(text[start:end].split()).strip("\"'")
        if not sentence:
            continue
        n_sentences += 1
        status = status_of(sentence)
        if status is None:
            return Parsed(problem=f"off-format sentence: {sentence[:80]!r}")
        mentions = find_entities(sentence)
        if not mentions:
            continue  # e.g. "There are mediastinal changes." says nothing about an entity
        extra = sorted({m.entity for m in mentions} - allowed)
        if extra:
            return Parsed(problem=f"entity not in the report: {', '.join(extra)}")
        if not sentence.endswith((".", "!", "?")):
            sentence += "."
        if sentence in seen_sentences:
            continue  # a repeated sentence adds nothing (small models loop)
        seen_sentences.add(sentence)
        for ent in dict.fromkeys(m.entity for m in mentions):
            findings.append(Finding(ent, status, sentence))
    if not findings:
        return Parsed(problem="no sentence names an entity of the report")
    if n_sentences > MAX_SENTENCES_PER_ENTITY * max(len(allowed), 1) + 2:
        return Parsed(
            problem=f"looping answer ({n_sentences} sentences for {len(allowed)} entities)"
        )
    return Parsed(findings=findings)
