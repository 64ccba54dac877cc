"""What the launcher (``torchrun``) tells a process through its environment, read without torch."""

from __future__ import annotations

import os

from ecamp.errors import UserError


def launch_rank() -> int:
    """This process's global rank as ``torchrun`` sets it (``RANK``; 0 when unset).

    Read before any process group exists (and without importing torch), e.g. to decide which
    process writes the shared files of a pipeline stage.
    """
    raw = os.environ.get("RANK", "0")
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable RANK={raw!r} is not an integer") from None
