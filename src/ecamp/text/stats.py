"""Descriptor statistics of the paper's Appendix A, and the re-balance factor they suggest.

For every entity mention (:func:`ecamp.text.entities.find_entities`) the 1, 2, ..., ``max_words``
words just before it in the same sentence, after the previous mention (entity words are
never descriptors), are its descriptors ("no", "is no", "there is no").
Each distinct descriptor is counted and classed:

* ``negative``: it holds a negation cue (no, not, without, negative for, free of, ...);
* ``uncertain``: otherwise, a hedge (may, might, possible, likely, could, concerning, ...);
* ``positive``: everything else ("there is", "mild", "small").

The imbalance ratio compares the most frequent negative descriptor with the most frequent
non-negative one (positive or uncertain: the paper's "most positive descriptor" is the
hedge "there may be"), both among descriptors of ``max_words`` words (the paper's
"there is no" vs "there may be"); the suggested lambda is ``1 / ratio``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecamp.errors import DataError, UserError
from ecamp.text.entities import ENTITY_PATTERN, split_sentences
from ecamp.text.negation import NEGATION_WORDS

# the word-level set of the one negation lexicon (ecamp.text.negation)
NEGATION = NEGATION_WORDS
HEDGES = frozenset(
    {
        "may",
        "might",
        "possible",
        "possibly",
        "probable",
        "probably",
        "likely",
        "could",
        "suggest",
        "suggests",
        "suggestive",
        "concerning",
        "concern",
        "questionable",
        "suspicious",
        "suspected",
        "versus",
        "vs",
        "borderline",
    }
)
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def classify(descriptor: str) -> str:
    """``negative`` / ``uncertain`` / ``positive`` for a lower-case descriptor phrase."""
    words = descriptor.split()
    if any(w in NEGATION for w in words):
        return "negative"
    if any(w in HEDGES for w in words):
        return "uncertain"
    return "positive"


@dataclass
class DescriptorStats:
    """Descriptor counts over a corpus plus the imbalance summary."""

    max_words: int
    n_reports: int = 0
    n_mentions: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    def table(self) -> list[dict[str, Any]]:
        """Rows ``descriptor, words, count, class``, most frequent first."""
        return [
            {"descriptor": d, "words": len(d.split()), "count": c, "class": classify(d)}
            for d, c in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]

    def summary(self) -> dict[str, Any]:
        """Top negative / non-negative descriptor of ``max_words`` words, ratio and lambda."""
        longest = [r for r in self.table() if r["words"] == self.max_words]
        neg = next((r for r in longest if r["class"] == "negative"), None)
        pos = next((r for r in longest if r["class"] != "negative"), None)
        ratio = neg["count"] / pos["count"] if neg and pos else None
        by_class = Counter[str]()
        for r in longest:
            by_class[r["class"]] += r["count"]
        return {
            "n_reports": self.n_reports,
            "n_mentions": self.n_mentions,
            "n_descriptors": len(self.counts),
            "max_words": self.max_words,
            "top_negative": neg,
            "top_non_negative": pos,
            "imbalance_ratio": ratio,
            "suggested_lambda": (1.0 / ratio) if ratio else None,
            "mentions_by_class": dict(by_class),
        }


def descriptor_stats(reports: Iterable[str], max_words: int = 3) -> DescriptorStats:
    """Count the 1..``max_words``-word descriptors before every entity mention."""
    if max_words < 1:
        raise UserError(f"max_words must be at least 1, got {max_words}")
    stats = DescriptorStats(max_words=max_words)
    for text in reports:
        stats.n_reports += 1
        if not text:
            continue
        matches = list(ENTITY_PATTERN.finditer(text))
        if not matches:
            continue
        spans = split_sentences(text)
        starts = [s for s, _ in spans]
        j, prev_end = 0, 0
        for m in matches:
            stats.n_mentions += 1
            while j + 1 < len(starts) and starts[j + 1] <= m.start():
                j += 1
            # the window stops at the sentence start and at the previous mention
            left = min(max(starts[j], prev_end), m.start())
            prev_end = m.end()
            words = _WORD.findall(text[left : m.start()].lower())
            for n in range(1, min(max_words, len(words)) + 1):
                stats.counts[" ".join(words[-n:])] += 1
    return stats


def read_corpus(path: str | Path, column: str) -> list[str]:
    """Texts of ``column`` in a CSV or JSONL file; ``a,b`` joins several columns."""

    p = Path(path)
    if not p.is_file():
        raise UserError(f"corpus {p} not found")
    from ecamp.utils import tables

    if p.suffix.lower() == ".jsonl":
        df = tables.read_jsonl(p, what="corpus")
    elif p.suffix.lower() == ".json":
        df = tables.read_json(p, what="corpus")
    else:
        df = tables.read_csv(p, dtype=str, keep_default_na=False, what="corpus")
    cols = [c.strip() for c in column.split(",") if c.strip()]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(
            f"{p} has no column {missing}; its columns are {list(df.columns)} (use --column)"
        )
    parts = df[cols].fillna("").astype(str)
    return [" ".join(s for s in row if s.strip()).strip() for row in parts.itertuples(False)]


def write_outputs(stats: DescriptorStats, out_dir: str | Path, top: int = 30) -> dict[str, Path]:
    """Write ``descriptor_stats.csv``, ``descriptor_summary.json`` and a bar chart PNG."""
    import csv
    import io
    import json

    from ecamp.utils.io import atomic_write_bytes, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = stats.table()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["descriptor", "words", "count", "class"])
    writer.writeheader()
    writer.writerows(rows)
    paths = {
        "csv": atomic_write_text(out / "descriptor_stats.csv", buf.getvalue()),
        "json": atomic_write_text(
            out / "descriptor_summary.json", json.dumps(stats.summary(), indent=2) + "\n"
        ),
    }
    paths["png"] = atomic_write_bytes(out / "descriptor_stats.png", _bar_chart(rows[:top]))
    return paths


def _bar_chart(rows: list[dict[str, Any]]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"negative": "tab:red", "uncertain": "tab:orange", "positive": "tab:green"}
    fig, ax = plt.subplots(figsize=(8, 0.3 * max(len(rows), 4) + 1.2))
    labels = [r["descriptor"] for r in rows][::-1]
    counts = [r["count"] for r in rows][::-1]
    ax.barh(labels, counts, color=[colours[r["class"]] for r in rows][::-1])
    ax.set_xlabel("mentions preceded by the descriptor")
    ax.set_title("Descriptors before entity mentions (Appendix A)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
