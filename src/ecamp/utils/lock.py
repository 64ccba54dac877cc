"""An exclusive lock on an output file, so two runs never write (or pay for) it twice.

The lock is ``<output>.lock``, holding the owner's pid.  It is an OS file lock
(``fcntl.flock``), so it ends with its process, even after ``kill -9``: a lock file left
by a dead process is simply taken over.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ecamp.errors import UserError
from ecamp.utils.logging import get_logger

log = get_logger(__name__)


def lock_path(output: str | Path) -> Path:
    """The lock file of ``output``."""
    p = Path(output)
    return p.with_name(p.name + ".lock")


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 64).decode("ascii", "replace").strip() or "x")
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextmanager
def output_lock(output: str | Path, what: str = "ecamp") -> Iterator[Path]:
    """Hold the lock of ``output`` for the ``with`` block; a second holder gets a UserError."""
    import fcntl

    from ecamp.utils.io import ensure_dir

    path = lock_path(output)
    ensure_dir(path.parent)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            holder = f"pid {pid}" if pid is not None else "another process"
            raise UserError(
                f"{output} is being written by another {what} run ({holder}, lock {path}); "
                "wait for it to finish or stop it, or choose another --output"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed this file as we locked it: lock the new one
    try:
        old = _read_pid(fd)
        if old is not None and old != os.getpid():
            state = "no longer running" if not _alive(old) else "not holding it"
            log.warning("%s: taking over the lock left by pid %d (%s)", path, old, state)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield path
        finally:
            # unlink while still holding the lock: a waiting process then locks a fresh file
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)
