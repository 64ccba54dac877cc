"""FINDINGS / IMPRESSION extraction from MIMIC-CXR free-text reports.

MIMIC-CXR reports are plain text with section headings in capitals followed by a colon at
the start of a line ("FINDINGS:", "IMPRESSION:", "COMPARISON:" ...), lines wrapped at ~70
characters.  ECAMP uses the FINDINGS and IMPRESSION sections (SPEC.md section 1).
"""

from __future__ import annotations

import re

# A heading: capitals (and spaces, '/', '&', '(', ')', '-') then a colon, at a line start.
_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z /&()\-]{1,40}?)[ \t]*:", re.MULTILINE)
_SPACE = re.compile(r"\s+")
_FINDINGS = ("FINDINGS", "FINDING", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION")
_IMPRESSION = ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "FINDINGS AND IMPRESSION")
# Sections that never hold the radiologist's reading; skipped by the last-section fallback.
_NOT_READING = frozenset(
    {
        "INDICATION",
        "HISTORY",
        "CLINICAL HISTORY",
        "COMPARISON",
        "COMPARISONS",
        "TECHNIQUE",
        "EXAMINATION",
        "EXAM",
        "REASON FOR EXAMINATION",
        "REASON FOR EXAM",
        "NOTIFICATION",
        "RECOMMENDATION",
        "RECOMMENDATIONS",
        "PROCEDURE",
        "CLINICAL INFORMATION",
    }
)


def _squash(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def parse_sections(text: str) -> list[tuple[str, str]]:
    """``(HEADING, body)`` pairs in order; text before the first heading has heading ``""``.

    Bodies have their whitespace runs (line wraps) collapsed to single spaces; empty
    bodies are kept so a present-but-empty section is visible.
    """
    out: list[tuple[str, str]] = []
    matches = list(_HEADING.finditer(text or ""))
    head = text[: matches[0].start()] if matches else (text or "")
    if head.strip():
        out.append(("", _squash(head)))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out.append((_squash(m.group(1)), _squash(text[m.end() : end])))
    return out


def findings_impression(text: str) -> tuple[str, str]:
    """The FINDINGS and IMPRESSION bodies ("" when absent; repeated sections are joined)."""
    sections = parse_sections(text)
    findings = " ".join(b for h, b in sections if h in _FINDINGS and b)
    impression = " ".join(b for h, b in sections if h in _IMPRESSION and h not in _FINDINGS and b)
    return findings, impression


def report_text(text: str) -> str:
    """The text ECAMP reads from one report: FINDINGS then IMPRESSION.

    Fallbacks when both are missing or empty: the last section that is not clinical
    context (INDICATION, COMPARISON, TECHNIQUE ...), else the text before any heading
    ("FINAL REPORT" lines dropped), else "".
    """
    findings, impression = findings_impression(text)
    if findings or impression:
        return " ".join(p for p in (findings, impression) if p)
    sections = parse_sections(text)
    for heading, body in reversed(sections):
        if heading and heading not in _NOT_READING and body:
            return body
    for heading, body in sections:
        if not heading:
            return _squash(re.sub(r"\bFINAL REPORT\b", " ", body))
    return ""
