"""The one-shot distillation prompt: a fixed instruction plus ONE worked example.

The default (``resources/distill/prompt.yaml``) uses the first report / distilled-report
pair of the paper's Appendix C as its example; a user prompt file with the same keys
(``system``, ``user`` with ``{report}`` and ``{entities}``, ``example.report``,
``example.answer``) replaces it.  ``student`` names the packaged short prompt for a
fine-tuned student (``resources/distill/student_prompt.yaml``): no example, so a prompt file
may leave ``example`` out.  ``report: entity_sentences`` puts only the report's sentences that
mention an entity into ``{report}`` (the student prompt does: a shorter sequence to train on
and to distil, and no sentence the answer could draw on is dropped); ``full`` (the default)
puts the whole report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ecamp.errors import UserError
from ecamp.text.entities import find_entities, split_sentences

REPORT_MODES = ("full", "entity_sentences")


@dataclass(frozen=True)
class Prompt:
    """Instruction, user template and the one worked example."""

    system: str
    user: str
    example_report: str
    example_answer: str
    report: str = "full"  # or "entity_sentences" (see the module doc)

    def messages(self, report: str, entities: list[str] | None = None) -> list[dict[str, str]]:
        """Chat messages for one report: system, example user/assistant (when the prompt has
        an example), then the report."""
        ents = entities if entities is not None else entity_list(report)
        shot = (
            [
                {
                    "role": "user",
                    "content": self._user(self.example_report, entity_list(self.example_report)),
                },
                {"role": "assistant", "content": self.example_answer},
            ]
            if self.example_report
            else []
        )
        return [
            {"role": "system", "content": self.system},
            *shot,
            {"role": "user", "content": self._user(report, ents)},
        ]

    def _user(self, report: str, entities: list[str]) -> str:
        text = " ".join(report.split())
        if self.report == "entity_sentences":
            text = entity_sentences(text, entities)
        return self.user.replace("{report}", text).replace("{entities}", ", ".join(entities))

    def fingerprint(self) -> str:
        """A short hash of the prompt: cached answers are reused only for the same prompt."""
        parts = [self.system, self.user, self.example_report, self.example_answer]
        if self.report != "full":  # "full" keeps the fingerprints of earlier caches
            parts.append(self.report)
        blob = json.dumps(parts)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entity_list(report: str) -> list[str]:
    """The distinct canonical entities mentioned in ``report``, in order of first mention."""
    return list(dict.fromkeys(m.entity for m in find_entities(report)))


def entity_sentences(text: str, entities: list[str]) -> str:
    """The sentences of ``text`` that mention one of ``entities``, in order, space-joined
    (the whole text when none does: the model still sees what it is asked about)."""
    wanted = set(entities)
    keep = sorted({m.sentence_index for m in find_entities(text) if m.entity in wanted})
    if not keep:
        return text
    spans = split_sentences(text)
    return " ".join(text[spans[i][0] : spans[i][1]] for i in keep)


def default_prompt_path() -> Path:
    """The packaged default prompt file."""
    return Path(str(resources.files("ecamp") / "resources" / "distill" / "prompt.yaml"))


def student_prompt_path() -> Path:
    """The packaged short prompt for fine-tuned students (no worked example)."""
    return Path(str(resources.files("ecamp") / "resources" / "distill" / "student_prompt.yaml"))


def appendix_c_pairs() -> list[dict[str, str]]:
    """The paper's three report / distilled-report pairs (Appendix C, Table S3)."""
    path = resources.files("ecamp") / "resources" / "distill" / "appendix_c.json"
    return json.loads(path.read_text(encoding="utf-8"))


def load_prompt(path: str | Path | None = None) -> Prompt:
    """Read a prompt file (YAML); ``None`` gives the packaged default, ``"student"`` the
    packaged short student prompt."""
    if path == "student":
        path = student_prompt_path()
    p = Path(path) if path else default_prompt_path()
    if not p.is_file():
        raise UserError(
            f"prompt file {p} does not exist; pass an existing YAML file to --prompt-file"
        )
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"prompt file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"prompt file {p} must hold a mapping with keys system and user")
    try:
        example = data.get("example") or {"report": "", "answer": ""}
        prompt = Prompt(
            system=str(data["system"]).strip(),
            user=str(data["user"]),
            example_report=str(example["report"]).strip(),
            example_answer=str(example["answer"]).strip(),
            report=str(data.get("report", "full")),
        )
    except (KeyError, TypeError) as e:
        raise UserError(
            f"prompt file {p} must have keys system, user and, for a one-shot prompt, "
            f"example.report and example.answer (missing {e})"
        ) from None
    if prompt.report not in REPORT_MODES:
        raise UserError(
            f"prompt file {p}: report must be one of {', '.join(REPORT_MODES)}, "
            f"got {prompt.report!r}"
        )
    if "{report}" not in prompt.user:
        raise UserError(f"prompt file {p}: the user template must contain {{report}}")
    return prompt
