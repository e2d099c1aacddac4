"""pytest fixtures for the deploy checks (see deploy/run-tests.sh)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import start_gateway  # noqa: E402


@pytest.fixture
def gateway_factory():
    """Starts real gateway processes; every one is stopped at teardown."""
    started = []

    def start(*args, **kwargs):
        gw = start_gateway(*args, **kwargs)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
