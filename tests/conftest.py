"""Shared pytest fixtures: the repo root on sys.path, and ../shared (real data) when present."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ../shared sits beside the checkout on the developers' machines and in CI; a user's clone lacks it.
SHARED = Path(os.environ.get("NANO_D1_SHARED", ROOT.parent / "shared"))


@pytest.fixture
def shared():
    """Path of ../shared; skips the test (with the reason) when the folder is absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"real data folder {SHARED}/data is absent (set NANO_D1_SHARED to point at it)")
    return SHARED
