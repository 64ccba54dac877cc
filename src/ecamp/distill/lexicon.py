"""The rules distiller's word lists, read once from the bundled ``resources/distill/lexicon.yaml``."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

_FILE = ("resources", "distill", "lexicon.yaml")


@dataclass(frozen=True)
class Lexicon:
    """What :mod:`ecamp.distill.rules` looks words up in (the YAML file says what each is)."""

    modifiers: frozenset[str]
    function_words: frozenset[str]
    weak_uncertainty: frozenset[str]
    always_location: frozenset[str]
    adjective_endings: tuple[str, ...]
    adjectival_surfaces: frozenset[str]
    adjectival_entities: frozenset[str]
    noun_forms: Mapping[str, str]


def _words(raw: dict[str, Any], key: str) -> list[str]:
    value = raw.get(key)
    # a bare YAML no / on / yes would arrive as a bool: every word must be a string
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise ValueError(f"{'/'.join(_FILE)}: {key} must be a list of quoted words")
    return value


@functools.cache
def lexicon() -> Lexicon:
    """The bundled lexicon (parsed on the first call only)."""
    text = resources.files("ecamp").joinpath(*_FILE).read_text("utf-8")
    raw = yaml.safe_load(text)
    nouns = raw.get("noun_forms")
    if not isinstance(nouns, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in nouns.items()
    ):
        raise ValueError(f"{'/'.join(_FILE)}: noun_forms must map words to words")
    return Lexicon(
        modifiers=frozenset(_words(raw, "modifiers")),
        function_words=frozenset(_words(raw, "function_words")),
        weak_uncertainty=frozenset(_words(raw, "weak_uncertainty")),
        always_location=frozenset(_words(raw, "always_location")),
        adjective_endings=tuple(_words(raw, "adjective_endings")),
        adjectival_surfaces=frozenset(_words(raw, "adjectival_surfaces")),
        adjectival_entities=frozenset(_words(raw, "adjectival_entities")),
        noun_forms=MappingProxyType(dict(nouns)),
    )
