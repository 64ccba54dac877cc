"""The launcher's global rank of this process, read without torch."""

from __future__ import annotations

from ecamp.utils.env import launch_rank


def env_rank() -> int:
    """``RANK`` as ``torchrun`` sets it (0 when unset), e.g. to pick the process that logs."""
    return launch_rank()
