from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from ingestor.sources.base import Backoff, CircuitBreaker, CircuitOpen, SourceHealth, StateFile


def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(initial=1, maximum=8, jitter=0, rng=random.Random(1))
    assert [backoff.next() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    backoff.reset()
    assert backoff.next() == 1


def test_backoff_jitter_stays_within_its_band() -> None:
    backoff = Backoff(initial=10, maximum=10, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next() for _ in range(200)]
    assert min(delays) >= 8 and max(delays) <= 12 and len(set(delays)) > 100


async def test_backoff_sleep_returns_at_once_when_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(Backoff(initial=30).sleep(stop), 1) is True


def test_circuit_opens_after_the_threshold_and_half_opens_after_the_timeout() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, reset_timeout=60, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure()
        breaker.check()
    breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen, match="retry in 60s"):
        breaker.check()
    now[0] = 61
    assert breaker.state == "half-open"
    breaker.check()
    breaker.failure()  # the trial failed: open again, for a full timeout
    assert breaker.state == "open"
    now[0] = 122
    breaker.check()
    breaker.success()
    assert breaker.state == "closed"


def test_state_file_round_trips_and_names_a_corrupt_file(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "sources" / "x.json")
    assert state.load() == {}
    state.save({"cursor": 5120, "open": {"a": 1}})
    assert state.load() == {"cursor": 5120, "open": {"a": 1}}
    assert not list((tmp_path / "sources").glob("*.tmp"))
    state.path.write_text("{half")
    with pytest.raises(ValueError, match="corrupt"):
        state.load()


def test_health_records_success_and_failure() -> None:
    health = SourceHealth("tautulli:abc", "tautulli", "abc")
    health.success(events=3)
    health.failure(ConnectionRefusedError("refused"))
    snapshot = health.as_dict()
    assert snapshot["events_published"] == 3
    assert snapshot["last_error"] == "ConnectionRefusedError: refused"
    assert snapshot["last_success"] and snapshot["last_error_at"]


def test_health_has_a_state_that_is_not_an_error() -> None:
    health = SourceHealth("tautulli:abc", "tautulli", "abc")
    assert health.set_state("no_live_activity", "Plex does not answer") is True
    assert health.set_state("no_live_activity", "Plex does not answer") is False  # once
    snapshot = health.as_dict()
    assert (snapshot["state"], snapshot["state_detail"]) == (
        "no_live_activity",
        "Plex does not answer",
    )
    assert snapshot["state_since"] and snapshot["last_error"] is None
    assert health.set_state(None) is True
    assert (health.state, health.state_detail, health.state_since) == (None, None, None)
