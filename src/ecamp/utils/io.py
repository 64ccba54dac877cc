"""Atomic file writes: a crash never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ecamp.errors import UserError


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any threads
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def ensure_dir(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents), or say which part of the path is in the way."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(
            (p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), folder
        )
        raise UserError(
            f"cannot create the folder {folder}: {blocker} is a file, not a folder; "
            "choose another output path or move that file"
        ) from None
    except PermissionError:
        raise UserError(
            f"cannot create the folder {folder}: permission denied; choose another output path"
        ) from None
    return folder


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file sits in the destination folder so the final rename is atomic on
    POSIX file systems; on failure it is removed and ``path`` is left untouched.
    """
    path = Path(path)
    ensure_dir(path.parent)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; give a file name")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the permissions a plain open() would have
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
