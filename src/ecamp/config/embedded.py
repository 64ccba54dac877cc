"""Configs shipped inside the package (``ecamp/resources/configs``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def embedded_config(name: str) -> Path:
    """Path of the packaged config file ``name`` (e.g. ``finetune_cls.yaml``)."""
    return Path(str(resources.files("ecamp") / "resources" / "configs" / name))
