"""Where source adapters send their events, by mode.

* event sourcing (default): :class:`StreamSink` publishes to ``MEDIA_EVENTS``; the router
  projects.
* legacy (``NATS_EVENT_SOURCING=false``): :class:`DirectSink` writes the projection itself,
  then publishes to NATS only as a notification. The stream is no longer the source of
  truth, and a replay may differ from the projection.
* NATS off (``NATS_ENABLED=false``): :class:`DirectSink` without a publisher; the projection
  is the only state.

With ``IP_ANONYMIZE`` every sink locates, then truncates, the events' addresses before
anything else sees them (:mod:`ingestor.anonymize`).

Both direct variants go through the same :class:`ingestor.pipeline.Pipeline` as the router,
so dedup and projection behave identically in every mode.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ingestor.anonymize import Anonymizer
from ingestor.events import MediaEvent, encode_event
from ingestor.nats.publisher import Publisher, PublishStats
from ingestor.pipeline import Message, Pipeline
from ingestor.projection import BatchResult

log = logging.getLogger(__name__)

DIRECT = "direct"


@dataclass
class SinkStats:
    published: PublishStats
    projected: list[BatchResult]


class Sink(Protocol):
    async def emit(self, events: Sequence[MediaEvent]) -> PublishStats: ...


class StreamSink:
    """Event sourcing: the stream is the source of truth."""

    def __init__(self, publisher: Publisher, anonymizer: Anonymizer | None = None) -> None:
        self.publisher = publisher
        self.anonymizer = anonymizer  # IP_ANONYMIZE: every source's events pass here

    async def emit(self, events: Sequence[MediaEvent]) -> PublishStats:
        if self.anonymizer is not None:
            events = self.anonymizer.apply(events)
        for event in events:
            event.validate()
        return await self.publisher.publish_many(events)


class DirectSink:
    """Legacy and NATS-off modes: project directly, in batches, with a local sequence."""

    def __init__(
        self,
        pipeline: Pipeline,
        publisher: Publisher | None = None,
        batch_size: int = 1000,
        on_batch: Callable[[BatchResult], None] | None = None,
        anonymizer: Anonymizer | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.anonymizer = anonymizer  # IP_ANONYMIZE: every source's events pass here
        self.publisher = publisher
        self.batch_size = batch_size
        # told of each committed chunk, as the router tells its on_batch (live feed, metrics)
        self.on_batch = on_batch
        self._lock = asyncio.Lock()

    async def emit(self, events: Sequence[MediaEvent]) -> PublishStats:
        stats = PublishStats()
        if self.anonymizer is not None:
            events = self.anonymizer.apply(events)
        async with self._lock:
            for start in range(0, len(events), self.batch_size):
                chunk = events[start : start + self.batch_size]
                result = await asyncio.to_thread(self._project, chunk)
                if self.on_batch is not None:
                    self.on_batch(result)
                stats.stored += result.accepted
                stats.duplicate += sum(result.dropped.values())
                if self.publisher is not None:
                    # notifications only: failures are logged, never retried into the projection
                    try:
                        await self.publisher.publish_many(chunk)
                    except Exception as exc:
                        log.warning("legacy notification publish failed: %s", exc)
        return stats

    def _project(self, chunk: Sequence[MediaEvent]) -> BatchResult:
        projection = self.pipeline.projection
        first = projection.checkpoint(DIRECT) + 1
        now = datetime.now(UTC)
        messages = [Message(first + i, now, encode_event(e)) for i, e in enumerate(chunk)]
        decoded = [(m, e.validate()) for m, e in zip(messages, chunk, strict=True)]
        return self.pipeline.project(decoded, messages[-1].seq, consumer=DIRECT)
