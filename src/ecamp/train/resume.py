"""Which checkpoint a run resumes from (``train.resume``), loaded and checked against the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecamp.errors import UserError
from ecamp.train import distributed as du
from ecamp.train.checkpoint import (
    CKPT_FORMAT,
    CheckpointDir,
    check_compatible,
    load_checkpoint,
    resolve_resume,
)
from ecamp.utils.logging import get_logger

# the resume messages keep the training loop's logger name, as before this module split off
log = get_logger("ecamp.train.loop")


def load_resume_state(
    resume: str,
    ckpts: CheckpointDir,
    config: dict[str, Any] | None,
    fingerprint: dict[str, list[int]],
    is_main: bool,
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``resume`` names and its state; None = a fresh run.

    A fresh run deletes the old step files of ``ckpts`` (rank 0).  A folder's damaged newest
    file gives way to the newest readable one and is set aside.  Collective: every rank calls.
    """
    path = resolve_resume(resume, ckpts)
    if path is None:
        stale = ckpts.step_files()
        if stale and is_main:
            # a fresh run must not have its new, lower-numbered files pruned in favour of these
            log.warning(
                "train.resume=%s: starting afresh; deleting %d old checkpoint(s) in %s",
                resume,
                len(stale),
                ckpts.root,
            )
            for p in [*stale, ckpts.root / "latest", ckpts.best_path]:
                p.unlink(missing_ok=True)
        du.barrier()
        return None
    value = (resume or "").strip()
    if value != "auto" and Path(value).is_file():
        state = load_checkpoint(path)  # the file named: no silent substitute
    else:
        folder = CheckpointDir(path.parent, ckpts.keep_last)
        found = folder.load_readable(path)
        assert found is not None  # path itself is a step file of that folder
        path, state, broken = found
        du.barrier()  # every rank has loaded before a damaged file is moved away
        if broken and is_main:
            folder.set_aside(broken)
    if state.get("format") != CKPT_FORMAT:
        raise UserError(
            f"{path} is not a training checkpoint of this version (format {state.get('format')!r})"
        )
    check_compatible(state, path, config, fingerprint)
    return path, state
