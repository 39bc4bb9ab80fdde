"""Fixtures of the benchmark suites."""

from __future__ import annotations

import pytest


@pytest.fixture
def measuring(request) -> bool:
    """Whether pytest-benchmark measures in this run: ``--benchmark-enable`` given over pyproject's
    ``--benchmark-disable`` (pytest-benchmark keeps both options; its own rule is this one)."""
    c = request.config
    return bool(c.getoption("benchmark_enable", default=False) or not c.getoption("benchmark_disable", default=True))
