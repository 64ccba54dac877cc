"""ecamp's one negation lexicon: the cues that mark an entity mention as negated.

Three readers use it, each with the reach its job needs (kept exactly as they were when the
lists lived in their own modules, so no output changes):

* :data:`NEGATION_CUES`, the base set of phrases written before a finding ("no
  pneumothorax", "free of effusion", "resolved atelectasis").  GLoRIA's entity words
  (:func:`ecamp.text.entities.entity_words`) skip a mention when one of these precedes it in
  its sentence, anywhere, in any case (:data:`NEGATION_PATTERN`).
* :data:`DISTILL_NEGATION_CUES`, the base set plus :data:`DISTILL_EXTRA_CUES` ("clear of",
  "ruled out", "neither", "nor", ...).  The rules distiller (:mod:`ecamp.distill.rules`)
  reads these on lower-cased text and limits their scope to the mention's clause and a few
  words, which is what makes the wider set safe there (:data:`DISTILL_NEGATION_PATTERN`).
* :data:`NEGATION_WORDS`, single words: a descriptor phrase of the corpus statistics
  (:mod:`ecamp.text.stats`) is negative when it holds one of them.  This word set is the
  statistics' own: the first words of the base phrases except "resolved", plus "absent",
  "none", "nor" and "neither".

No cue is a word-boundary prefix of another ("no" vs "not": the next character is a letter),
so the order of the alternatives in a pattern does not change what it matches.
"""

from __future__ import annotations

import re

NEGATION_CUES: tuple[str, ...] = (
    "no",
    "not",
    "without",
    "negative for",
    "free of",
    "absence of",
    "resolved",
)

DISTILL_EXTRA_CUES: tuple[str, ...] = (
    "clear of",
    "absent",
    "resolution of",
    "removal of",
    "rather than",
    "ruled out",
    "neither",
    "nor",
    "never",
    "interval removal of",
    "disappearance of",
)

DISTILL_NEGATION_CUES: tuple[str, ...] = NEGATION_CUES + DISTILL_EXTRA_CUES

NEGATION_WORDS: frozenset[str] = frozenset(
    {"no", "not", "without", "negative", "free", "absent", "absence", "none", "nor", "neither"}
)


def cue_pattern(cues: tuple[str, ...], flags: int = 0) -> re.Pattern[str]:
    """One regex matching any of ``cues`` as whole words (multi-word cues: single spaces)."""
    return re.compile(r"\b(?:" + "|".join(re.escape(c) for c in cues) + r")\b", flags)


NEGATION_PATTERN = cue_pattern(NEGATION_CUES, re.IGNORECASE)
DISTILL_NEGATION_PATTERN = cue_pattern(DISTILL_NEGATION_CUES)

__all__ = [
    "DISTILL_EXTRA_CUES",
    "DISTILL_NEGATION_CUES",
    "DISTILL_NEGATION_PATTERN",
    "NEGATION_CUES",
    "NEGATION_PATTERN",
    "NEGATION_WORDS",
    "cue_pattern",
]
