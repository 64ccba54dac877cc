"""One logger setup for every stage: console plus a log file in the output folder."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(
    output_dir: str | Path | None = None, level: int = logging.INFO, rank: int = 0
) -> None:
    """Log to stderr (rank 0 only) and, when given, to ``output_dir/log.txt``."""
    from ecamp.utils.secrets import SecretFilter

    root = logging.getLogger("ecamp")
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    if rank == 0:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        console.addFilter(SecretFilter())
        root.addHandler(console)
        if output_dir is not None:
            from ecamp.utils.io import ensure_dir

            ensure_dir(output_dir)
            fh = logging.FileHandler(Path(output_dir) / "log.txt", encoding="utf-8")
            fh.setFormatter(logging.Formatter(_FORMAT))
            fh.addFilter(SecretFilter())
            root.addHandler(fh)
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """A child of the ``ecamp`` logger."""
    return logging.getLogger(name if name.startswith("ecamp") else f"ecamp.{name}")
