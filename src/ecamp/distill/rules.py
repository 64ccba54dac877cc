"""The offline, deterministic distillation backend: negation and uncertainty cues, no LLM.

For every entity mention the matcher (:mod:`ecamp.text.entities`) finds, decide its status
with NegEx-style cues whose scope is limited to the clause holding the mention and to a few
words around it, keep the severity / extent words in front of it and a nearby location, and
write the same sentence forms the LLM prompt asks for::

    "There is no pneumothorax."  "There may be atelectasis or pneumonia in the right lower
    lobe."  "There is mild cardiomegaly."

Only regular expressions over one sentence at a time, so a MIMIC-size corpus distils in
minutes on one core.  Entities are never added: every sentence names only mentions found in
the report (and the noun form of an adjectival mention: "hyperinflated" -> "hyperinflation").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ecamp.distill.findings import Finding
from ecamp.distill.lexicon import lexicon
from ecamp.text.entities import EntityMention, find_entities, split_sentences
from ecamp.text.negation import DISTILL_NEGATION_PATTERN

# Scope limits, in words between a cue and the mention (lists like "no consolidation,
# effusion, congestion or pneumothorax" need ~10; beyond that a cue rarely still applies).
PRE_NEG_WORDS = 14
PRE_UNC_WORDS = 10
POST_WORDS = 6
POST_FAR_WORDS = 10
LOCATION_WORDS = 6
MAX_MODIFIERS = 4

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")

# A clause ends at these (the matched text belongs to the next clause).
_CLAUSE_BREAK = re.compile(
    r"[;:]|\s-\s|\((?=\s*\d)"
    r"|\b(?:but|however|although|though|whereas|while|except|aside from|apart from|other than"
    r"|which|(?<!compatible )(?<!consistent )(?<!associated )with|otherwise|there (?:is|are|was|were|has been|have been)|now)\b"
)

# Uncertainty phrases that contain a negation word: found (and masked) before negation.
_PRE_UNC_COMPOUND = re.compile(
    r"\b(?:can ?not|can't|could not|difficult to|unable to|not possible to|hard to)"
    r"(?: be)?(?: entirely| completely| definitely| totally)?\s+(?:exclude|rule out)\b"
)
_POST_UNC_COMPOUND = re.compile(
    r"\b(?:is|are|was|were)?\s*(?:not|can ?not|can't|could not)(?: be)?"
    r"(?: entirely| completely| definitely| totally)?\s+(?:excluded|ruled out)\b"
)
# Negation words that do not negate the finding ("no change in the opacity").
_PSEUDO_NEG = re.compile(
    r"\b(?:no|not|without)\s+(?:(?:significant|interval|appreciable|substantial|"
    r"significantly|much|other|definite)\s+)*"
    r"(?:change|changed|increase|increased|decrease|decreased|worsening|worsened|"
    r"progression|improvement|improved|enlargement)\b"
    r"|\bnot only\b|\bgram[- ]negative\b|\bno longer (?:increased|enlarged)\b"
)
# negation cues before a mention: the base lexicon plus the distiller's extension
_PRE_NEG = DISTILL_NEGATION_PATTERN
_PRE_UNC = re.compile(
    r"\b(?:may|might|could|possible|possibly|suspect|suspected|suspicious for|"
    r"suspicion (?:for|of)|concern for|concerning for|question of|questionable|questioned|"
    r"equivocal|indeterminate|differential|consider|considered|considerations?|"
    r"worrisome for|possibility|uncertain|unclear|cannot exclude|question|to exclude|"
    r"exclude|evaluate for|evaluation for|assess for|rule out|r/o|correlate|correlation|"
    r"suggestive of|suggesting|suggests?)\b|\?"
)
_POST_NEG = re.compile(
    r"^[\s,]*(?:(?:is|are|was|were|has|have|has been|have been)\s+)?"
    r"(?:(?:not|no longer)\s+(?:be\s+)?(?:seen|identified|present|visualized|visible|"
    r"appreciated|demonstrated|evident|noted|detected|apparent|shown|re-demonstrated)|"
    r"(?:resolved|cleared|removed|absent|negative|excluded|ruled out|disappeared))\b"
)
# The same after a short list ("consolidation and effusion in the left base have cleared").
_POST_NEG_FAR = re.compile(
    r"\b(?:is|are|was|were|has|have)(?: been)?\s+(?:(?:not|no longer)\s+(?:well[- ])?"
    r"(?:seen|identified|visualized|visible|appreciated|demonstrated|evident|detected)|"
    r"(?:resolved|cleared|removed))\b"
)
_POST_UNC = re.compile(
    r"^[\s,]*(?:(?:is|are|was|were)\s+(?:(?:also|again|now)\s+)?"
    r"(?:possible|suspected|questioned|questionable|not excluded)|"
    r"(?:may|might|could) be present|suspected|\?)(?=\W|$)"
)
_NUMBER = re.compile(r"^\d+(?:\.\d+)?(?:cm|mm)?$")

# A descriptor after the entity ("the silhouette is normal"), moved in front of it.
_PREDICATE = re.compile(
    r"^[\s,]*(?:(?:is|are|appears?|remains?|seems?|was|were|again|also|now|otherwise|"
    r"grossly|overall|stably|likely|stable and)\s+){0,3}"
    r"(?P<adv>(?:mildly|moderately|markedly|severely|slightly|minimally|top|upper)[\s-]+)?"
    r"(?P<pred>within normal limits|normal|unremarkable|stable|unchanged|enlarged|prominent|"
    r"tortuous|calcified|ectatic|widened|intact|midline|mild|moderate|severe|small|large|"
    r"minimal|increased|decreased|improved|worsened|clear)\b"
    r"(?P<size>\s+in\s+(?:size|contour|caliber|configuration))?"
)
_PREDICATE_LATER = re.compile(
    r"\b(?:is|are|appears?|remains?)\s+(?:(?:mildly|slightly|grossly|otherwise)\s+)?"
    r"(?P<pred>normal|unremarkable|stable|enlarged|prominent|tortuous|within normal limits)\b"
    r"|\b(?P<wnl>within normal limits|normal in (?:size|contour|caliber|configuration))\b"
)

_LOCATION = re.compile(
    r"\b(?P<side>(?:right|left|bilateral|both)\s+)?(?P<level>(?:upper|middle|mid|lower)\s+)?"
    r"(?:lung\s+)?(?P<noun>lobes?|lungs?|bases?|apex|apices|hemithorax|hemithoraces|"
    r"(?:lung\s+)?zones?|lingula|midlung|lung fields?|costophrenic angles?|"
    r"hemidiaphragms?|chest wall|mediastinum|hilum)\b"
)

# the words after an adjectival mention where its head noun may be ("hyperinflated lungs")
_HEAD_WORDS = re.compile(r"(?:\s+[a-z]+){1,3}")


@dataclass
class _Chunk:
    """Adjacent mentions that name one thing ("cardiomediastinal silhouette")."""

    mentions: list[EntityMention]
    start: int  # sentence-local offsets
    end: int


def distill_text(text: str) -> list[Finding]:
    """The findings of one report (FINDINGS + IMPRESSION text), in reading order.

    Each finding's sentence uses one of the fixed forms; a sentence shared by several
    entities ("There may be atelectasis or pneumonia ...") appears once per entity.
    """
    if not text or not text.strip():
        return []
    mentions = find_entities(text)
    if not mentions:
        return []
    spans = split_sentences(text)
    by_sentence: dict[int, list[EntityMention]] = {}
    for m in mentions:
        by_sentence.setdefault(m.sentence_index, []).append(m)
    findings: list[Finding] = []
    seen: set[tuple[str, str, str]] = set()
    for idx, group in by_sentence.items():
        s_start, s_end = spans[idx] if idx < len(spans) else (0, len(text))
        for f in _distill_sentence(text[s_start:s_end], s_start, group):
            key = (f.entity, f.status, f.sentence)
            if key not in seen:
                seen.add(key)
                findings.append(f)
    return findings


def distilled_text(text: str) -> str:
    """Only the distilled sentences of ``text``, each once, space-joined."""
    return " ".join(dict.fromkeys(f.sentence for f in distill_text(text)))


def _distill_sentence(sentence: str, offset: int, mentions: list[EntityMention]) -> list[Finding]:
    low = sentence.lower()
    masked = _mask(low)
    clauses = _clauses(masked)
    chunks = _chunks(low, offset, mentions)
    rendered: list[tuple[_Chunk, str, str, str, int]] = []  # chunk, status, subject, loc, clause
    for ch in chunks:
        ci = _clause_of(clauses, ch.start)
        c_start, c_end = clauses[ci]
        status = _status(masked, c_start, c_end, ch)
        subject, plural = _subject(low, c_start, c_end, ch)
        loc = _location(low, c_start, c_end, ch, subject)
        rendered.append((ch, status, subject, loc + ("|p" if plural else ""), ci))
    return _sentences(low, rendered)


def _mask(low: str) -> str:
    """Mark compound uncertainty cues with '?' and blank pseudo-negations (offsets kept)."""

    def as_q(m: re.Match[str]) -> str:
        return "?" + " " * (len(m.group(0)) - 1)

    out = _PRE_UNC_COMPOUND.sub(as_q, low)
    out = _POST_UNC_COMPOUND.sub(lambda m: " " * (len(m.group(0)) - 1) + "?", out)
    return _PSEUDO_NEG.sub(lambda m: " " * len(m.group(0)), out)


def _clauses(masked: str) -> list[tuple[int, int]]:
    cuts = (
        [0] + [m.start() for m in _CLAUSE_BREAK.finditer(masked) if m.start() > 0] + [len(masked)]
    )
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a] or [(0, len(masked))]


def _clause_of(clauses: list[tuple[int, int]], pos: int) -> int:
    for i, (a, b) in enumerate(clauses):
        if a <= pos < b:
            return i
    return len(clauses) - 1


def _chunks(low: str, offset: int, mentions: list[EntityMention]) -> list[_Chunk]:
    modifiers = lexicon().modifiers
    chunks: list[_Chunk] = []
    for m in mentions:
        s, e = m.start - offset, m.end - offset
        # an adjectival mention joins the noun mention it modifies, across up to two
        # modifier words ("calcified granuloma", "calcified pulmonary nodules")
        gap = low[chunks[-1].end : s].replace("-", " ").split() if chunks else []
        joins = (
            chunks
            and _is_adjectival(chunks[-1].mentions[-1])
            and len(gap) <= 2
            and all(w in modifiers for w in gap)
        )
        if joins:
            chunks[-1].mentions.append(m)
            chunks[-1].end = e
        else:
            chunks.append(_Chunk([m], s, e))
    return chunks


def _n_words(text: str) -> int:
    return len(_WORD.findall(text))


def _status(masked: str, c_start: int, c_end: int, ch: _Chunk) -> str:
    """negative / uncertain / positive from the cues in scope around the chunk."""
    post = masked[ch.end : c_end]
    if _POST_UNC_COMPOUND_MASKED.match(post):
        return "uncertain"
    pre = masked[c_start : ch.start]
    neg_at = -1
    for m in _PRE_NEG.finditer(pre):
        if _n_words(pre[m.end() :]) <= PRE_NEG_WORDS:
            neg_at = max(neg_at, m.start())
    unc_at, unc_word = -1, ""
    for m in _PRE_UNC.finditer(pre):
        if _n_words(pre[m.end() :]) <= PRE_UNC_WORDS and m.start() >= unc_at:
            unc_at, unc_word = m.start(), m.group(0)
    if neg_at >= 0 and (unc_at < neg_at or unc_word in lexicon().weak_uncertainty):
        return "negative"
    if unc_at >= 0:
        return "uncertain"
    if _POST_NEG.match(post):
        return "negative"
    far = _POST_NEG_FAR.search(post)
    if far and _n_words(post[: far.start()]) <= POST_FAR_WORDS:
        return "negative"
    if _POST_UNC.match(post):
        return "uncertain"
    return "positive"


# after masking, a post compound cue is blanks then "?"
_POST_UNC_COMPOUND_MASKED = re.compile(r"^[\s,]*\?")


def _subject(low: str, c_start: int, c_end: int, ch: _Chunk) -> tuple[str, bool]:
    """Modifiers + the chunk's head words, and whether the head is plural."""
    lex = lexicon()
    head = " ".join(low[ch.start : ch.end].split())
    if _is_adjectival(ch.mentions[-1]):
        # the noun it modifies, after at most two more modifiers ("calcified right hilar
        # lymph"): else the entity's noun form ("the lungs are hyperinflated")
        words = _HEAD_WORDS.match(low, ch.end, c_end)
        tail = words.group(0).split() if words else []
        k = 0
        while k < len(tail) and k < 2 and tail[k] in lex.modifiers:
            k += 1
        noun = tail[k] if k < len(tail) else ""
        if noun and noun not in lex.function_words and noun not in lex.modifiers and len(noun) > 2:
            head = " ".join([head, *tail[: k + 1]])
        elif len(ch.mentions) == 1:
            ent = ch.mentions[0].entity
            head = lex.noun_forms.get(ent, ent)
    mods = _modifiers(low[c_start : ch.start])
    pred = _predicate(low[ch.end : c_end])
    if pred and pred not in mods:
        mods.insert(0, pred)
    last = head.split()[-1]
    plural = (
        last.endswith("s") and not last.endswith(("sis", "ss", "us", "xis", "ax"))
    ) or last == "hila"
    return " ".join([*mods, head]), plural


def _is_adjectival(m: EntityMention) -> bool:
    """Whether a mention is an adjective ("hyperinflated"), which needs a head noun."""
    lex = lexicon()
    if m.entity in lex.adjectival_entities:
        return True
    s = m.surface.lower()
    return s.endswith(lex.adjective_endings) or s in lex.adjectival_surfaces


def _modifiers(pre: str) -> list[str]:
    modifiers = lexicon().modifiers
    words = pre.replace(",", " , ").split()
    mods: list[str] = []
    for w in reversed(words):
        if len(mods) >= MAX_MODIFIERS or not (w in modifiers or _NUMBER.match(w)):
            break
        mods.append(w)
    mods.reverse()
    # a dangling "right"/"left"/"upper" etc. alone is location, kept by _location instead
    return mods


def _predicate(post: str) -> str:
    m = _PREDICATE.match(post)
    if m:
        pred = "normal" if m.group("pred") == "within normal limits" else m.group("pred")
        adv = (m.group("adv") or "").strip()
        return f"{adv}-{pred}" if adv in ("top", "upper") else (f"{adv} {pred}" if adv else pred)
    m2 = _PREDICATE_LATER.search(post)
    if m2 and _n_words(post[: m2.start()]) <= 6:
        pred = m2.group("pred") or "normal"
        return "normal" if pred == "within normal limits" else pred
    return ""


def _location(low: str, c_start: int, c_end: int, ch: _Chunk, subject: str) -> str:
    """The nearest location phrase in the clause, as "in the ..." (or "")."""
    always_location = lexicon().always_location
    best: tuple[int, str] | None = None
    for m in _LOCATION.finditer(low, c_start, c_end):
        if m.start() < ch.end and m.end() > ch.start:
            continue  # overlaps the entity itself ("left hemidiaphragm")
        noun = m.group("noun")
        if not (m.group("side") or m.group("level") or noun in always_location):
            continue
        gap = low[m.end() : ch.start] if m.end() <= ch.start else low[ch.end : m.start()]
        dist = _n_words(gap)
        if dist > LOCATION_WORDS:
            continue
        phrase = " ".join(m.group(0).split())
        if phrase in subject:
            continue
        if best is None or dist < best[0]:
            best = (dist, phrase)
    if best is None:
        return ""
    phrase = best[1]
    return f" in {phrase}" if phrase.startswith("both ") else f" in the {phrase}"


def _sentences(low: str, rendered: list[tuple[_Chunk, str, str, str, int]]) -> list[Finding]:
    """Render chunks; uncertain chunks joined by "or"/"versus" share one sentence."""
    out: list[Finding] = []
    i = 0
    while i < len(rendered):
        ch, status, subject, loc_p, ci = rendered[i]
        group = [rendered[i]]
        if status == "uncertain":
            j = i + 1
            while j < len(rendered):
                nch, nstatus, _, _, nci = rendered[j]
                between = low[group[-1][0].end : nch.start]
                if nstatus != "uncertain" or nci != ci or not _OR_JOIN.fullmatch(between):
                    break
                group.append(rendered[j])
                j += 1
        i += len(group)
        locs = [g[3].removesuffix("|p") for g in group]
        loc = next((x for x in reversed(locs) if x), "")
        plural = group[-1][3].endswith("|p") if len(group) == 1 else False
        subject = " or ".join(g[2] for g in group)
        sentence = _render(status, subject, loc, plural)
        for g in group:
            for m in g[0].mentions:
                out.append(Finding(m.entity, status, sentence))
    return out


_OR_JOIN = re.compile(r"\s*(?:,\s*)?(?:or|versus|vs\.?|and/or|/|,)\s*")


def _render(status: str, subject: str, loc: str, plural: bool) -> str:
    be = "are" if plural else "is"
    if status == "negative":
        text = f"There {be} no {subject}{loc}."
    elif status == "uncertain":
        text = f"There may be {subject}{loc}."
    else:
        text = f"There {be} {subject}{loc}."
    return text
