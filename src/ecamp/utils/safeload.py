"""Loading tensor files safely, with errors that say what the file is and what to do.

torch's own messages for a foreign pickle end with the advice to retry with
``weights_only=False``, which would run whatever code the file holds; these helpers never
pass that on.  ecamp loads ``.pt`` files with ``weights_only=True`` only.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path
from typing import Any

from ecamp.errors import UserError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REPLACE = "re-download or re-export it, or pick another file"


def _what_is(p: Path) -> str:
    """A plain description of a file that torch cannot read."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"cannot be opened ({e.strerror})"
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(b"PK"):
        return f"is a damaged or truncated PyTorch zip checkpoint ({size} bytes)"
    if head[:1] == b"\x80":
        return f"is a damaged or truncated legacy PyTorch checkpoint ({size} bytes)"
    if head.startswith(b"\x93NUMPY"):
        return "is a NumPy .npy array, not a PyTorch checkpoint"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"is a text file ({size} bytes), not a PyTorch checkpoint"
    return f"is not a PyTorch checkpoint ({size} bytes of unknown content)"


def torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, or a UserError saying why not.

    An ``argparse.Namespace`` (MAE-style training scripts store their arguments beside the
    weights) is allowed; any other Python object in the pickle is refused.
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        m = _GLOBAL.search(text)
        if m:
            name = f" ({m.group(1)})"
            raise UserError(
                f"{what} {p} cannot be read: it stores Python objects besides tensors{name}, which ecamp does not "
                "unpickle: loading them could run code from the file. Save its weights alone "
                "(a state dict of tensors, or a .safetensors file) and pass that file"
            ) from None
        raise UserError(f"{what} {p} cannot be read: it {_what_is(p)}; {_REPLACE}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise UserError(
            f"{what} {p} cannot be read: it {_what_is(p)} ({type(e).__name__}); {_REPLACE}"
        ) from None
    except Exception as e:  # torch raises a wide family of types on foreign bytes
        raise UserError(
            f"{what} {p} cannot be read: it {_what_is(p)} ({type(e).__name__}); {_REPLACE}"
        ) from None


def safetensors_load(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file, or a UserError naming the damage."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist")
    try:
        return load_file(str(p))
    except Exception as e:  # SafetensorError (header / length mismatch) and OSError
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"{what} {p} cannot be read: not a valid .safetensors file ({first}); it may be truncated or "
            f"another format under this name: {_REPLACE}"
        ) from None
