"""pytest fixtures for the deploy checks (see deploy/run-tests.sh)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import start_gateway, start_redis  # noqa: E402


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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a loopback port for the whole pytest run (no
    persistence), stopped at the end. Tests share it: each gateway's keys and
    channels carry its own node id, and the cluster view expires within the
    instance TTL (3s)."""
    redis = start_redis(tmp_path_factory.mktemp("redis"))
    yield redis.url
    redis.stop()
