"""Shared test fixtures: where ../shared/data is, and skips that say why."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (Set5, Set14, weights, ...); the test is skipped when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (see README: tests that need real images skip)")
    return SHARED_DATA
