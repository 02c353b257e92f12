"""Test doubles of the world around our code (never of our own components): a clock the test
moves, and a sink that remembers what adapters handed the real DirectSink."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ingestor.events import MediaEvent
from ingestor.nats.publisher import PublishStats
from ingestor.sink import DirectSink

T0 = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)


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
