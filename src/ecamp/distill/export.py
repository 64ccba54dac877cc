"""Teacher prompt / answer pairs as chat-format JSONL, to fine-tune a student LLM.

The paper distilled 10k reports with ChatGPT and fine-tuned Vicuna-7B on those pairs to
distil the rest; this writes such pairs as ``{"id", "messages": [{"role", "content"}...]}``
lines, the format standard fine-tuning tools (TRL SFTTrainer, axolotl, OpenAI fine-tuning)
read.
"""

from __future__ import annotations

import json
from pathlib import Path

from ecamp.distill.merge import read_table
from ecamp.distill.prompt import Prompt, entity_list
from ecamp.distill.run import Report
from ecamp.utils.io import atomic_write


def export_chat(
    reports: list[Report],
    distilled: str | Path,
    prompt: Prompt,
    output: str | Path,
    include_example: bool = True,
    statuses: tuple[str, ...] = ("ok",),
    backends: tuple[str, ...] | None = None,
) -> int:
    """Write one chat per report whose distilled text is accepted; returns the count.

    Only records with a status in ``statuses`` (default: answers that passed validation)
    and, when given, a backend in ``backends`` are exported; reports without an entity are
    skipped (nothing to learn).
    """
    df = read_table(distilled)
    by_id = {
        str(i): (d, s, b)
        for i, d, s, b in zip(df["id"], df["distilled"], df["status"], df["backend"])
    }
    lines: list[str] = []
    for r in reports:
        hit = by_id.get(r.id)
        if hit is None:
            continue
        text, status, backend = hit
        if status not in statuses or not text or (backends and backend not in backends):
            continue
        entities = entity_list(r.text)
        if not entities:
            continue
        messages = prompt.messages(r.text, entities)
        if not include_example:
            messages = [messages[0], messages[-1]]
        messages.append({"role": "assistant", "content": str(text)})
        lines.append(json.dumps({"id": r.id, "messages": messages}, ensure_ascii=False))

    def write(tmp: str) -> None:
        Path(tmp).write_text("".join(x + "\n" for x in lines), encoding="utf-8")

    atomic_write(output, write)
    return len(lines)
