"""Secrets (API keys, tokens, passwords) never reach a file ecamp writes.

Two layers: :func:`mask_secrets` blanks the values of secret-named keys in any config
dict before it is dumped (``config.yaml``, ``pipeline.yaml``, ``stage.json``, summaries,
the report), and :class:`SecretFilter` replaces every secret value seen so far
(:func:`register_secret`) in log lines, whatever message carries them.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
# api_key, openai_api_key, hf_token, password, client_secret ...; not api_key_env (a variable
# *name*), max_tokens or pad_token_id
_SECRET_NAME = re.compile(
    r"(^|[_\-.])(api[_\-]?key|apikey|access[_\-]?key|secret([_\-]?key)?|private[_\-]?key|"
    r"token|auth[_\-]?token|password|passwd|authorization|credentials?)$",
    re.IGNORECASE,
)
_MIN_LEN = 4  # shorter values ("none", "") would mask ordinary words
_known: set[str] = set()
_lock = threading.Lock()


def is_secret_key(name: object) -> bool:
    """Whether a config key names a secret value."""
    return isinstance(name, str) and bool(_SECRET_NAME.search(name))


def register_secret(value: object) -> None:
    """Remember ``value`` so that log lines containing it are masked."""
    if isinstance(value, str) and len(value) >= _MIN_LEN and value.lower() != "none":
        with _lock:
            _known.add(value)


def register_secrets_in(obj: Any) -> None:
    """Register the value of every secret-named key found anywhere inside ``obj``."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_secret_key(k):
                register_secret(v)
            else:
                register_secrets_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            register_secrets_in(v)


def mask_secrets(obj: Any, redact: bool = True) -> Any:
    """A copy of ``obj`` whose secret-named keys hold ``***`` (when set), at any depth.

    ``redact``: also mask registered secret values inside other strings (off for hashing,
    which must not depend on what this process has seen).
    """
    if isinstance(obj, dict):
        return {
            k: (MASK if is_secret_key(k) and v not in (None, "") else mask_secrets(v, redact))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [mask_secrets(v, redact) for v in obj]
    if isinstance(obj, tuple):
        return tuple(mask_secrets(v, redact) for v in obj)
    if isinstance(obj, str) and redact:
        return redact_text(obj)
    return obj


def redact_text(text: str) -> str:
    """``text`` with every registered secret value replaced by ``***``."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for s in known:
        if s in text:
            text = text.replace(s, MASK)
    return text


class SecretFilter(logging.Filter):
    """A handler filter that masks registered secrets in the formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _known:
            try:
                message = record.getMessage()
            except Exception:  # a malformed record: let the handler report it as usual
                return True
            masked = redact_text(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True
