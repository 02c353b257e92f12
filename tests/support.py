"""Test doubles of the world around our code (never of our own components): a clock the test
moves, and a sink that remembers what adapters handed the real DirectSink; and a free port."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl

from ingestor.events import MediaEvent
from ingestor.nats.publisher import PublishStats
from ingestor.projection.fold import FOLD_INPUT_COLUMNS, fold_playbacks
from ingestor.projection.store import parse_events
from ingestor.sink import DirectSink

T0 = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)


def free_port() -> int:
    """A free TCP port on the loopback interface (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManualClock:
    """Receipt and poll times the test sets (wall-clock free, so durations are exact)."""

    def __init__(self, origin: datetime = T0) -> None:
        self.origin = origin
        self.now = origin

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        """Move to ``origin`` + ``seconds``."""
        self.now = self.origin + timedelta(seconds=seconds)


class RecordingSink:
    """The real DirectSink, remembering what each adapter handed it."""

    def __init__(self, inner: DirectSink) -> None:
        self.inner = inner
        self.events: list[MediaEvent] = []

    async def emit(self, events: Sequence[MediaEvent]) -> PublishStats:
        stats = await self.inner.emit(events)
        self.events.extend(events)
        return stats

    @property
    def kinds(self) -> list[str]:
        return [e.event_type.value for e in self.events]

    def of_type(self, event_type: str) -> list[MediaEvent]:
        return [e for e in self.events if e.event_type == event_type]


def occurred_slice(con: duckdb.DuckDBPyConnection, until: datetime) -> dict[str, pl.DataFrame]:
    """A from-scratch projection's rows restricted to what happened by ``until``: events and
    audit entries by their event time, each playback folded from its events by then."""
    at = {"until": until}
    events = con.sql(
        "SELECT * FROM media_events WHERE occurred_at <= $until ORDER BY seq", params=at
    )
    frame = events.pl()
    if frame.height:
        parsed = parse_events(frame["payload"]).with_columns(frame["seq"], frame["correlation_key"])
        playbacks = fold_playbacks(parsed.select(FOLD_INPUT_COLUMNS))
    else:
        playbacks = con.sql("SELECT * FROM playback_events WHERE false").pl()
    con.register("_expected_playbacks", playbacks.to_arrow())
    expected_playbacks = con.sql(
        "SELECT * FROM playback_events WHERE false UNION ALL "
        "SELECT * FROM _expected_playbacks ORDER BY correlation_key"
    ).pl()
    con.unregister("_expected_playbacks")
    return {
        "media_events": frame,
        "playback_events": expected_playbacks,
        "dedupe_audit_log": con.sql(
            "SELECT * FROM dedupe_audit_log WHERE occurred_at <= $until ORDER BY audit_id",
            params=at,
        ).pl(),
        "detection_alerts": con.sql(
            "SELECT * FROM detection_alerts WHERE occurred_at <= $until ORDER BY alert_id",
            params=at,
        ).pl(),
    }
