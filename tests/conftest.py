"""Shared fixtures: a real nats-server with JetStream on a free loopback port, settings for a
temporary data directory, and small helpers for waiting on conditions with a deadline."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingestor.config import Settings
from ingestor.nats.server import EmbeddedServer
from tests.support import free_port  # tests import it from here too


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A real nats-server -js, its store in the test's temporary directory."""
    server = EmbeddedServer("127.0.0.1", free_port(), tmp_path / "nats-store")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_env(data_dir: Path, nats_url: str, **extra: str) -> dict[str, str]:
    env = {
        "DATA_DIR": str(data_dir),
        "NATS_URL": nats_url,
        "NATS_FLUSH_INTERVAL": "100ms",
        "HTTP_PORT": str(free_port()),
        "LOG_LEVEL": "info",
        # alerts add messages to the stream after the feed; tests that count messages or
        # wait for the checkpoint to reach the feed's last sequence run without detection
        # (the detector's own tests, the metrics and the container tests turn it on)
        "DETECTION_ENABLED": "false",
    }
    env.update(extra)
    return env


@pytest.fixture
def env(tmp_path: Path, nats_server: EmbeddedServer) -> dict[str, str]:
    """Environment for an ingestor using the test's nats-server (no embedded server)."""
    return make_env(tmp_path / "data", nats_server.url, NATS_EMBEDDED="false")


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    """The current environment plus ``extra``, for running the ingestor as a process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "DUCKDB_"))}
    full.update(extra)
    return full


INGESTOR = [sys.executable, "-m", "ingestor.cli"]


def wait_until(
    condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
