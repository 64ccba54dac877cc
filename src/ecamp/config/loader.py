"""The config loader: dict / YAML -> dataclass, dotted overrides, YAML out.

A YAML file gives any subset of a config's fields; command-line overrides
(``train.lr=3e-4``) come last.  Unknown keys, wrongly typed values and mode strings
outside a field's ``Literal`` choices fail with a message naming the key, so a typo
in a config fails when it loads instead of silently falling back to a default (or
failing hours later, after training).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ecamp.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the config's schema."""


# --------------------------------------------------------------------------- machinery


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value in args:
            return value
        # YAML reads `precision: 16` as a number; a str field would have taken it as "16"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in args:
            return str(value)
        # `BF16` or `Rules`: the checks these Literals replaced compared lower-cased strings
        if isinstance(value, str):
            folded = [a for a in args if isinstance(a, str) and a.lower() == value.strip().lower()]
            if len(folded) == 1:
                return folded[0]
        raise ConfigError(
            f"{key}: {value!r} is not a valid choice; choose one of {', '.join(map(str, args))}"
        )
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly partial) dict, checking names and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys here: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    # a model preset fills the sizes first, explicit keys win
    from ecamp.config.model import PRESETS, ModelConfig

    if cls is ModelConfig and "preset" in data:
        preset = data["preset"]
        if preset not in PRESETS:
            raise ConfigError(
                f"{prefix}preset: unknown model preset {preset!r}; choose one of {sorted(PRESETS)}"
            )
        kwargs.update(PRESETS[preset])
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    return cls(**kwargs)


def check_choices(cfg: Any, prefix: str = "") -> None:
    """Check every ``Literal`` field of a config built in code (``from_dict`` checks at load).

    Raises the same :class:`ConfigError` a YAML file with that value would get.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints[f.name]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_choices(value, prefix + f.name + ".")
        elif typing.get_origin(tp) is typing.Literal:
            _coerce(value, tp, prefix + f.name)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra`` recursively (new dict; mappings merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Defaults <- YAML file <- dotted overrides, checked against ``cls``."""
    data = read_yaml(path) if path else {}
    apply_overrides(data, list(overrides or []))
    return from_dict(cls, data)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), secrets masked."""
    from ecamp.utils.io import atomic_write_text
    from ecamp.utils.secrets import mask_secrets

    atomic_write_text(Path(path), yaml.safe_dump(mask_secrets(to_dict(cfg)), sort_keys=False))
