"""Training checkpoints: atomic files, a ``latest`` pointer, pruning, compatibility checks.

Layout inside ``<output>/checkpoints``::

    step_00001200.pt   one file per saved optimizer step (the newest ``keep_last`` kept)
    latest             text file naming the newest step file
    best.pt            the state with the best eval metric so far

Every file holds only tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ecamp.errors import UserError
from ecamp.utils.io import atomic_write, atomic_write_text
from ecamp.utils.logging import get_logger

log = get_logger(__name__)

CKPT_FORMAT = "ecamp-train-v1"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a crash leaves the old file or none)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, with a clear error for a missing or broken file.

    The file goes through the one weights-only reader of :mod:`ecamp.models.checkpoints`;
    the whole state (model, optimizer, scheduler, RNG) comes back for a resume.
    """
    from ecamp.models.checkpoints import read_checkpoint

    p = Path(path)
    state = read_checkpoint(p)
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{p} is not an ecamp training checkpoint (no 'model' entry)")
    return state


class CheckpointDir:
    """The ``checkpoints`` folder of one run."""

    def __init__(self, root: str | Path, keep_last: int = 2) -> None:
        self.root = Path(root)
        self.keep_last = int(keep_last)

    def step_path(self, step: int) -> Path:
        return self.root / f"step_{step:08d}.pt"

    @property
    def best_path(self) -> Path:
        return self.root / "best.pt"

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Save the state of ``step``, point ``latest`` at it, prune old step files."""
        path = save_checkpoint(self.step_path(step), state)
        atomic_write_text(self.root / "latest", path.name + "\n")
        self._prune()
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        return save_checkpoint(self.best_path, state)

    def step_files(self) -> list[Path]:
        """Step checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _STEP_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest step checkpoint (``latest`` pointer first, else the highest step)."""
        from ecamp.models.checkpoints import latest_step_file

        return latest_step_file(self.root)

    def load_readable(
        self, first: Path | None = None
    ) -> tuple[Path, dict[str, Any], list[Path]] | None:
        """Load ``first`` (what ``latest`` names), else the newest step file that loads.

        Returns (path, state, the unreadable files passed over), or None when there is no
        step file at all.  A truncated newest file (a full disk, a copy cut short) thus
        costs the steps since the previous checkpoint, not the run; each file passed over
        is named in a warning.
        """
        files = self.step_files()
        candidates = ([first] if first is not None else []) + [
            p for p in reversed(files) if p != first
        ]
        broken: list[Path] = []
        for p in candidates:
            try:
                state = load_checkpoint(p)
            except UserError as e:
                log.warning("%s", e)
                broken.append(p)
                continue
            if broken:
                log.warning(
                    "checkpoint %s is unreadable; resuming from %s, the newest readable one",
                    ", ".join(str(b) for b in broken),
                    p,
                )
            return p, state, broken
        if broken:
            raise UserError(
                f"no readable checkpoint in {self.root}: {', '.join(b.name for b in broken)} "
                "are all damaged; delete them to start afresh, or restore a copy"
            )
        return None

    def set_aside(self, broken: list[Path]) -> None:
        """Rename unreadable step files to ``*.broken``: never resumed from nor kept over good ones."""
        for p in broken:
            with contextlib.suppress(FileNotFoundError):  # another process was first
                p.rename(p.with_name(p.name + ".broken"))

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for p in self.step_files()[: -self.keep_last]:
            p.unlink(missing_ok=True)


def resolve_resume(resume: str, ckpt_dir: CheckpointDir) -> Path | None:
    """``auto`` -> latest in ``ckpt_dir`` (or None); ``never`` -> None; else a file or run folder."""
    value = (resume or "never").strip()
    if value == "never":
        return None
    if value == "auto":
        return ckpt_dir.latest()
    p = Path(value)
    if p.is_dir():
        sub = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        found = CheckpointDir(sub).latest()
        if found is None:
            raise UserError(f"train.resume={value}: no step_*.pt checkpoint in {sub}")
        return found
    if not p.is_file():
        raise UserError(
            f"train.resume={value}: no such checkpoint file (use auto, never or a path)"
        )
    return p


# --------------------------------------------------------------------------- compatibility


def model_fingerprint(model: nn.Module) -> dict[str, list[int]]:
    """Name -> shape of every parameter and buffer: what must match to load a state dict."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _diff_dicts(a: Any, b: Any, prefix: str, one_sided: bool = True) -> list[str]:
    """Differences between nested dicts; keys present on one side only count if ``one_sided``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                if one_sided:
                    out.append(f"{key} (only in {'checkpoint' if k in a else 'current model'})")
            else:
                out.extend(_diff_dicts(a[k], b[k], key, one_sided))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [f"{prefix}: checkpoint {a!r} vs current {b!r}"]


def check_compatible(
    state: dict[str, Any],
    path: str | Path,
    config: dict[str, Any] | None,
    fingerprint: dict[str, list[int]],
) -> None:
    """Raise a UserError naming what differs when ``state`` came from another model."""
    saved_cfg = state.get("config")
    if (
        isinstance(saved_cfg, dict)
        and isinstance(config, dict)
        and "model" in saved_cfg
        and "model" in config
    ):
        # a key only one side knows is a field added or removed between code versions:
        # its default keeps the old behaviour, and the shape check below still guards loading
        diffs = _diff_dicts(saved_cfg["model"], config["model"], "model", one_sided=False)
        if diffs:
            raise UserError(
                f"checkpoint {path} was trained with a different model config: "
                + "; ".join(diffs[:8])
                + (f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else "")
                + ". Use another --output, train.resume=never, or the matching config."
            )
    saved_fp = state.get("fingerprint")
    if isinstance(saved_fp, dict):
        diffs = _diff_dicts({k: list(v) for k, v in saved_fp.items()}, fingerprint, "")
        if diffs:
            raise UserError(
                f"checkpoint {path} does not fit this model (parameter names/shapes differ): "
                + "; ".join(diffs[:8])
                + (f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else "")
                + ". Use another --output, train.resume=never, or the matching config."
            )


# --------------------------------------------------------------------------- RNG state


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + current accelerator) RNG states, weights_only-safe."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run a block (evaluation) without moving the training RNG streams."""
    state = capture_rng()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            restore_rng(state)
