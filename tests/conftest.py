"""Shared fixtures.

Tests that need the real sample data in ``../shared/data`` use the ``test_data``
fixture: it skips with a reason when ``ECAMP_TEST_DATA`` is unset (a user's machine)
and fails when it is set but the folder or a requested file is missing.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


@pytest.fixture(scope="session")
def test_data() -> Callable[[str], Path]:
    """Return a function mapping a path inside the sample-data folder to a checked Path."""
    root = os.environ.get("ECAMP_TEST_DATA")
    if not root:
        pytest.skip("ECAMP_TEST_DATA is not set: real sample data (../shared/data) not available")
    # absolute, so paths handed out stay valid from any folder (tests symlink to them, and a
    # relative link target resolves against the link's own folder)
    base = Path(root).resolve()
    if not base.is_dir():
        pytest.fail(f"ECAMP_TEST_DATA={root} is set but is not a folder")

    def get(rel: str) -> Path:
        p = base / rel
        if not p.exists():
            pytest.fail(f"ECAMP_TEST_DATA is set but {p} is missing")
        return p

    return get


@pytest.fixture(scope="session")
def shared_reference() -> Callable[[str], Path]:
    """Like :func:`test_data`, for ``shared/reference`` (beside the sample data ECAMP_TEST_DATA
    names): skip when ECAMP_TEST_DATA is unset, fail when it is set and the file is missing."""
    root = os.environ.get("ECAMP_TEST_DATA")
    if not root:
        pytest.skip("ECAMP_TEST_DATA is not set: shared/reference (beside it) not available")
    base = Path(root).resolve().parent / "reference"

    def get(rel: str) -> Path:
        p = base / rel
        if not p.exists():
            pytest.fail(f"ECAMP_TEST_DATA={root} is set but {p} is missing")
        return p

    return get
