"""The record every distillation backend produces: findings plus the distilled text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUSES = ("positive", "negative", "uncertain")


@dataclass(frozen=True)
class Finding:
    """One entity's diagnosis: canonical entity, status and the sentence that states it."""

    entity: str
    status: str  # one of STATUSES
    sentence: str

    def to_dict(self) -> dict[str, str]:
        return {"entity": self.entity, "status": self.status, "sentence": self.sentence}


@dataclass
class Distillation:
    """A distilled report: its findings, how it was produced and why (for fall-backs)."""

    findings: list[Finding] = field(default_factory=list)
    backend: str = "rules"
    status: str = "ok"  # ok | fallback | empty | failed
    reason: str | None = None
    completed: int = 0  # entities the first answer left out and a second question supplied

    @property
    def distilled(self) -> str:
        """The sentences, each once, in order (entities sharing a sentence share it)."""
        seen: dict[str, None] = {}
        for f in self.findings:
            seen.setdefault(f.sentence, None)
        return " ".join(seen)

    def to_record(self, report_id: str) -> dict[str, Any]:
        """The output object of one report (the JSONL line of ``ecamp distill``)."""
        return {
            "id": report_id,
            "distilled": self.distilled,
            "findings": [f.to_dict() for f in self.findings],
            "backend": self.backend,
            "status": self.status,
            "reason": self.reason,
        }
