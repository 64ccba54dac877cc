"""The 44 disease entities of the paper (Appendix B), their surface forms and a fast matcher.

One compiled, case-insensitive regex finds every entity mention in a report; it runs over
the ~227k MIMIC-CXR reports of the distillation step, so matching is a single ``finditer``.

Matching choices (documented, tested in ``tests/test_text_entities.py``):

* word-boundary safe: ``massive`` is not ``mass``, ``perihilar`` is not ``hilar``,
  ``hemidiaphragm`` is not ``diaphragm``; hyphens are boundaries (``well-aerated``).
* inflections and derived forms that radiologists write map to the canonical name:
  plurals (effusions, opacities, nodules, masses, fractures, granulomas, hernias ...),
  participles / adjectives (opacified, calcified, hyperinflated, aerated, thickened,
  collapsed, fractured, engorged, distended, dilated, obscured, emphysematous, fibrotic,
  nodular, atelectatic, infiltrative ...) and nouns of action (opacification, aeration,
  hyperinflation, herniation, infiltration, dilatation, obscuration).
* abbreviations and multi-word synonyms: ``tb`` -> tuberculosis, ``chf`` and
  "congestive heart failure" -> chf, ``copd`` and "chronic obstructive pulmonary/lung
  disease" -> copd (multi-word forms win over their first word: "congestive" alone is
  congestion).
* ``aortic`` -> aorta and ``hila`` / ``hilum`` -> hilar: the adjective / noun forms are
  how reports name these structures ("aortic knob", "both hila").
* ``hyperexpanded`` / ``hyperexpansion`` -> hyperinflate (synonyms in CXR reports).
* not matched: ``abnormal`` (an adjective on almost any finding, not the entity
  "abnormality"), ``vascular`` (it modifies congestion / engorgement, which are entities
  themselves), ``opaque``.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ecamp.errors import UserError
from ecamp.text.negation import NEGATION_PATTERN

if TYPE_CHECKING:  # numpy is imported where entity_words runs: the CLI parser stays light
    import numpy as np

# Appendix B, Table S1, read row by row (lower case).
ENTITIES: tuple[str, ...] = (
    "abnormality",
    "abscess",
    "aerate",
    "aorta",
    "atelectasis",
    "bronchiectasis",
    "calcification",
    "cardiomediastinal",
    "cardiomegaly",
    "catheter",
    "chf",
    "collapse",
    "congestion",
    "consolidation",
    "contour",
    "copd",
    "deformity",
    "dilation",
    "distention",
    "edema",
    "effusion",
    "embolism",
    "emphysema",
    "engorgement",
    "fibrosis",
    "fracture",
    "granuloma",
    "hernia",
    "hilar",
    "hyperinflate",
    "hemidiaphragm",
    "infiltrate",
    "mass",
    "nodule",
    "obscure",
    "opacity",
    "perihilar",
    "pneumonia",
    "pneumothorax",
    "sarcoidosis",
    "silhouette",
    "thickening",
    "tuberculosis",
    "vasculature",
)

# Surface forms per entity, written out (lower case; a space stands for any whitespace run).
_FORMS: dict[str, tuple[str, ...]] = {
    "abnormality": ("abnormality", "abnormalities"),
    "abscess": ("abscess", "abscesses"),
    "aerate": ("aerate", "aerates", "aerated", "aerating", "aeration"),
    "aorta": ("aorta", "aortas", "aortic"),
    "atelectasis": ("atelectasis", "atelectases", "atelectatic"),
    "bronchiectasis": ("bronchiectasis", "bronchiectases", "bronchiectatic"),
    "calcification": ("calcification", "calcifications", "calcified", "calcific"),
    "cardiomediastinal": ("cardiomediastinal",),
    # reports often say the heart is enlarged instead of naming cardiomegaly
    "cardiomegaly": (
        "cardiomegaly",
        "cardiac enlargement",
        "enlarged heart",
        "enlarged cardiac silhouette",
        "enlargement of the cardiac silhouette",
        "heart is enlarged",
        "heart size is enlarged",
        "heart is mildly enlarged",
        "heart is moderately enlarged",
        "heart is severely enlarged",
        "heart is markedly enlarged",
        "heart is slightly enlarged",
        "heart is borderline enlarged",
        "heart size is borderline enlarged",
        "heart size is mildly enlarged",
        "heart size is moderately enlarged",
        "heart size is borderline",
        "borderline heart size",
        "heart size is at the upper limits of normal",
        "heart enlargement",
        "enlargement of the heart",
        "heart is large",
        "heart is slightly large",
        "heart size enlarged",
        "heart size mildly enlarged",
        "heart size borderline enlarged",
        "heart is borderline in size",
    ),
    "catheter": ("catheter", "catheters"),
    "chf": ("chf", "congestive heart failure"),
    "collapse": ("collapse", "collapses", "collapsed", "collapsing"),
    "congestion": ("congestion", "congested", "congestive"),
    "consolidation": ("consolidation", "consolidations", "consolidated", "consolidative"),
    "contour": ("contour", "contours"),
    "copd": (
        "copd",
        "chronic obstructive pulmonary disease",
        "chronic obstructive lung disease",
    ),
    "deformity": ("deformity", "deformities", "deformed"),
    "dilation": ("dilation", "dilations", "dilatation", "dilatations", "dilated"),
    "distention": ("distention", "distension", "distended"),
    "edema": ("edema", "oedema", "edematous"),
    "effusion": ("effusion", "effusions"),
    "embolism": ("embolism", "embolisms", "embolus", "emboli"),
    "emphysema": ("emphysema", "emphysematous"),
    "engorgement": ("engorgement", "engorged"),
    "fibrosis": ("fibrosis", "fibrotic"),
    "fracture": ("fracture", "fractures", "fractured"),
    "granuloma": ("granuloma", "granulomas", "granulomata", "granulomatous"),
    "hernia": ("hernia", "hernias", "herniation"),
    "hilar": ("hilar", "hila", "hilum"),
    "hyperinflate": (
        "hyperinflate",
        "hyperinflated",
        "hyperinflation",
        "hyper-inflated",
        "hyper-inflation",
        "hyperexpanded",
        "hyperexpansion",
    ),
    "hemidiaphragm": ("hemidiaphragm", "hemidiaphragms", "hemidiaphragmatic"),
    "infiltrate": ("infiltrate", "infiltrates", "infiltration", "infiltrations", "infiltrative"),
    "mass": ("mass", "masses"),
    # "nodular" only describes an opacity's shape; labelers (NegBio) do not read it as a nodule
    "nodule": ("nodule", "nodules"),
    "obscure": ("obscure", "obscures", "obscured", "obscuring", "obscuration"),
    "opacity": ("opacity", "opacities", "opacification", "opacifications", "opacified"),
    "perihilar": ("perihilar",),
    "pneumonia": ("pneumonia", "pneumonias"),
    "pneumothorax": ("pneumothorax", "pneumothoraces"),
    "sarcoidosis": ("sarcoidosis", "sarcoid"),
    "silhouette": ("silhouette", "silhouettes", "silhouetting"),
    "thickening": ("thickening", "thickenings", "thickened"),
    "tuberculosis": ("tuberculosis", "tb"),
    "vasculature": ("vasculature",),
}

assert tuple(_FORMS) == ENTITIES  # one table, one order

# surface form (lower case, single spaces) -> canonical entity
SURFACE_TO_ENTITY: dict[str, str] = {f: e for e, forms in _FORMS.items() for f in forms}
_SPACE = re.compile(r"\s+")


def _trie_regex(words: list[str]) -> str:
    """One regex for a word list, factored by common prefixes (re does not do it itself,
    and trying ~150 alternatives at every word start is what makes naive matching slow)."""
    trie: dict[str, dict] = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, dict]) -> str:
        ends = "" in node
        alts = [
            (r"\s+" if ch == " " else re.escape(ch)) + emit(sub)
            for ch, sub in sorted(node.items())
            if ch
        ]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        # the trie is greedy (longest form first) because every branch is tried before the end
        return f"(?:{body})?" if ends else body

    return emit(trie)


def _build_pattern() -> re.Pattern[str]:
    # A form can only end where a word ends; the regex backtracks from a longer form
    # ("congestive heart failure") to a shorter one ("congestive") when the longer fails.
    return re.compile(rf"\b{_trie_regex(sorted(SURFACE_TO_ENTITY))}\b", re.IGNORECASE)


ENTITY_PATTERN: re.Pattern[str] = _build_pattern()


# The same matches as ENTITY_PATTERN on " " + lower-cased ASCII text, shifted by one: the
# leading \b becomes a consumed non-word character, a literal class that lets re skip
# from candidate to candidate in C (with no IGNORECASE either: ~2x faster).
_ENTITY_LOWER: re.Pattern[str] = re.compile(rf"\W({_trie_regex(sorted(SURFACE_TO_ENTITY))})\b")


@dataclass(frozen=True)
class EntityMention:
    """One entity mention: canonical name, character span, surface text and sentence."""

    entity: str
    start: int
    end: int
    surface: str
    sentence_index: int


# Words whose trailing period does not end a sentence.
_ABBREVIATIONS = frozenset(
    {"dr", "mr", "mrs", "ms", "st", "vs", "approx", "fig", "cf", "al", "etc"}
)
# Candidate sentence ends: terminal punctuation before
# whitespace/end, a period glued to a capitalised word ("apex.There"), a blank line, or a
# new line starting a numbered item.
_BOUNDARY = re.compile(
    r"(?=[.!?\n])(?:"  # cheap first-character test before the alternatives
    r"(?P<term>[.!?]+)(?=\s|$)"
    r"|(?P<glued>\.)(?<=[a-z]{2}\.)(?=[A-Z][a-z])"
    r"|(?P<blank>\n[ \t]*\n\s*)"
    r"|(?P<item>\n)(?=[ \t]*\d{1,2}[.)]\s))"
)


def _term_ends(text: str, start: int, word: str) -> bool:
    """Whether the terminal punctuation at ``start``, glued to ``word``, ends a sentence."""
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False
    if "." in word and word.replace(".", "").isalpha():  # e.g. i.e.
        return False
    if word.isdigit() and len(word) <= 2:
        # "1." at the start of a line is a list number, not a sentence
        word_start = start - len(word)
        line_start = text.rfind("\n", 0, word_start) + 1
        if not text[line_start:word_start].strip():
            return False
    return True


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the sentences of ``text``, in order.

    Spans exclude surrounding whitespace and include the terminal punctuation. A period
    ends a sentence unless it follows an abbreviation ("Dr.", "e.g."), an initial, or a
    list number at the start of a line ("1."), or sits inside a number ("1.5 cm").
    Blank lines and new lines that begin a numbered item also end a sentence; a single
    line wrap does not (MIMIC reports wrap mid-sentence). Empty text gives ``[]``.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    # one pass, inlined: this runs per sample in the text pipeline
    for m in _BOUNDARY.finditer(text):
        kind, s = m.lastgroup, m.start()
        if kind == "term":
            if s and not text[s - 1].isspace():
                # the word before the punctuation (a short window suffices: abbreviations
                # are short); a plain word ends the sentence, anything else is checked
                word = text[s - 12 if s > 12 else 0 : s].split()[-1].lstrip("([\"'").lower()
                plain = word.isalpha() and len(word) > 1 and word not in _ABBREVIATIONS
                if not plain and not _term_ends(text, s, word):
                    continue
            end = m.end()
        else:
            end = m.end() if kind == "glued" else s
        segment = text[start:end]
        stripped = segment.strip()
        if stripped:
            a = start + len(segment) - len(segment.lstrip())
            spans.append((a, a + len(stripped)))
        start = m.end()
    segment = text[start:]
    stripped = segment.strip()
    if stripped:
        a = start + len(segment) - len(segment.lstrip())
        spans.append((a, a + len(stripped)))
    return spans


def find_entities(text: str) -> list[EntityMention]:
    """All entity mentions in ``text``, sorted by start offset (see module doc for the forms)."""
    spans = entity_spans(text)
    if not spans:
        return []
    starts = [s for s, _ in split_sentences(text)]
    out = []
    for s, e in spans:
        surface = text[s:e]
        out.append(
            EntityMention(
                entity=SURFACE_TO_ENTITY[_SPACE.sub(" ", surface.lower())],
                start=s,
                end=e,
                surface=surface,
                sentence_index=max(bisect.bisect_right(starts, s) - 1, 0),
            )
        )
    return out


def entity_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of entity mentions only (no sentence split): the masking hot path."""
    if text.isascii():  # lower() keeps ASCII offsets, and agrees with IGNORECASE there
        return [(m.start(1) - 1, m.end(1) - 1) for m in _ENTITY_LOWER.finditer(" " + text.lower())]
    return [m.span() for m in ENTITY_PATTERN.finditer(text)]


def entity_words(
    text: str, word_spans: np.ndarray, mentions: str = "positive"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Words of each entity mentioned in ``text``: ({entity: word indices}, entity sentences).

    ``word_spans`` (W, 2) holds each word's character span (as the GLoRIA collator gives
    them).  With ``mentions="positive"`` a mention is skipped when a negation cue
    (:data:`ecamp.text.negation.NEGATION_PATTERN`) precedes it in its sentence.  Mentions cut
    off by truncation have no words and are skipped.
    """
    import numpy as np

    if mentions not in ("positive", "all"):
        raise UserError(f"export.mentions={mentions!r}: use 'positive' or 'all'")
    found = find_entities(text)
    if not found:
        return {}, []
    sentences = split_sentences(text)
    out: dict[str, list[int]] = {}
    kept: list[int] = []
    for m in found:
        s0, _ = sentences[m.sentence_index] if m.sentence_index < len(sentences) else (0, len(text))
        if mentions == "positive" and NEGATION_PATTERN.search(text, s0, m.start):
            continue
        hit = np.flatnonzero((word_spans[:, 0] < m.end) & (word_spans[:, 1] > m.start))
        if hit.size:
            out.setdefault(m.entity, []).extend(hit.tolist())
            if m.sentence_index not in kept:
                kept.append(m.sentence_index)
    titles = [text[slice(*sentences[i])] for i in kept if i < len(sentences)]
    return {e: np.unique(np.asarray(w)) for e, w in out.items()}, titles
