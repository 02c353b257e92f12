"""The one publisher every source uses: MediaEvent in, JetStream's verdict out.

Each message carries ``Nats-Msg-Id`` = ``event_id``, so JetStream itself answers "duplicate"
for an exact repeat inside its duplicate window (a first line of dedup; the router's tiers are
the real one). Publishing is pipelined: up to ``max_in_flight`` messages wait for their acks at
once, and each event's outcome (stored at sequence N, or duplicate) is reported.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from nats.aio.client import Client
from nats.errors import ConnectionReconnectingError, NoRespondersError, TimeoutError
from nats.js.api import PubAck
from nats.js.errors import APIError

from ingestor.events import MediaEvent, encode_event
from ingestor.nats.streams import STREAM

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
_CHUNK = 512
_RETRYABLE = (TimeoutError, asyncio.TimeoutError, NoRespondersError, ConnectionReconnectingError)
# A clustered stream answers a message id it is still replicating with this error (409), where
# a single server says "duplicate": publish again after a moment and it says "duplicate" too.
DUPLICATE_IN_PROCESS = 10158


class PublishOutcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class PublishResult:
    event_id: str
    outcome: PublishOutcome
    seq: int


@dataclass
class PublishStats:
    stored: int = 0
    duplicate: int = 0

    @property
    def total(self) -> int:
        return self.stored + self.duplicate

    def add(self, result: PublishResult) -> None:
        if result.outcome is PublishOutcome.STORED:
            self.stored += 1
        else:
            self.duplicate += 1


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    subject: str
    data: bytes
    msg_id: str

    @classmethod
    def of(cls, event: MediaEvent) -> OutgoingMessage:
        return cls(event.subject, encode_event(event), event.event_id)


class Publisher:
    """Publish to ``MEDIA_EVENTS`` with bounded in-flight acks and retry on transient failure."""

    def __init__(
        self,
        nc: Client,
        *,
        max_in_flight: int = 2048,
        ack_timeout: float = 10.0,
        max_attempts: int = 8,
    ) -> None:
        self._js = nc.jetstream(timeout=ack_timeout, publish_async_max_pending=max_in_flight)
        self._max_in_flight = max_in_flight
        self._ack_timeout = ack_timeout
        self._max_attempts = max_attempts

    async def publish(self, event: MediaEvent) -> PublishResult:
        """Publish one event and wait until JetStream stored it (or called it a duplicate)."""
        event.validate()
        return await self._publish_one(OutgoingMessage.of(event))

    async def publish_many(
        self,
        events: Iterable[MediaEvent] | Iterable[OutgoingMessage],
        on_result: Callable[[PublishResult], None] | None = None,
    ) -> PublishStats:
        """Publish a sequence pipelined, preserving order; report each outcome in order."""
        stats = PublishStats()
        async for result in self.iter_publish(events):
            stats.add(result)
            if on_result is not None:
                on_result(result)
        return stats

    async def iter_publish(
        self, events: Iterable[MediaEvent] | Iterable[OutgoingMessage]
    ) -> AsyncIterator[PublishResult]:
        """Publish in order, yielding each outcome in order.

        Messages go out in chunks without yielding to the event loop in between, so the
        client writes a chunk to the socket at once; acks are awaited a chunk at a time once
        ``max_in_flight`` messages are unacknowledged. A message whose id is still in flight
        (an exact repeat in the same feed) waits for that one's ack first: a cluster answers a
        repeat it is still replicating with an error instead of "duplicate", which nats-py's
        asynchronous publish never hands to its future.
        """
        window: deque[tuple[OutgoingMessage, asyncio.Future[PubAck]]] = deque()
        try:
            async for result in self._pipeline(events, window):
                yield result
        finally:  # given up (an error, the caller stopped): no ack is waited for any more
            for _, future in window:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: the caller publishes again or gives up
                else:
                    future.cancel()

    async def _pipeline(
        self,
        events: Iterable[MediaEvent] | Iterable[OutgoingMessage],
        window: deque[tuple[OutgoingMessage, asyncio.Future[PubAck]]],
    ) -> AsyncIterator[PublishResult]:
        in_flight: dict[str, int] = {}
        chunk = max(1, min(_CHUNK, self._max_in_flight // 2))
        for item in events:
            message = item if isinstance(item, OutgoingMessage) else OutgoingMessage.of(item)
            while message.msg_id in in_flight:
                settled, future = window.popleft()
                _leave(in_flight, settled.msg_id)
                yield await self._settle(settled, future)
            in_flight[message.msg_id] = in_flight.get(message.msg_id, 0) + 1
            future = await self._js.publish_async(
                message.subject, message.data, headers={MSG_ID: message.msg_id}
            )
            window.append((message, future))
            if len(window) >= self._max_in_flight:
                for _ in range(chunk):
                    settled, future = window.popleft()
                    _leave(in_flight, settled.msg_id)
                    yield await self._settle(settled, future)
        while window:
            yield await self._settle(*window.popleft())

    async def _settle(
        self, message: OutgoingMessage, future: asyncio.Future[PubAck]
    ) -> PublishResult:
        try:
            ack = await asyncio.wait_for(future, self._ack_timeout)
        except _RETRYABLE as exc:
            log.warning("publish of %s not acknowledged (%s); retrying", message.msg_id, exc)
            return await self._publish_one(message)
        return _result(message, ack)

    async def _publish_one(self, message: OutgoingMessage) -> PublishResult:
        delay = 0.1
        for attempt in range(1, self._max_attempts + 1):
            try:
                ack = await self._js.publish(
                    message.subject,
                    message.data,
                    timeout=self._ack_timeout,
                    stream=STREAM,
                    headers={MSG_ID: message.msg_id},
                )
                return _result(message, ack)
            except (*_RETRYABLE, APIError) as exc:
                if (
                    isinstance(exc, APIError)
                    and (exc.code or 0) < 500
                    and exc.err_code != DUPLICATE_IN_PROCESS
                ):
                    raise
                if attempt == self._max_attempts:
                    raise
                log.warning("publish of %s failed (%s), attempt %d", message.msg_id, exc, attempt)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")


def _leave(in_flight: dict[str, int], msg_id: str) -> None:
    left = in_flight[msg_id] - 1
    if left:
        in_flight[msg_id] = left
    else:
        del in_flight[msg_id]


def _result(message: OutgoingMessage, ack: PubAck) -> PublishResult:
    outcome = PublishOutcome.DUPLICATE if ack.duplicate else PublishOutcome.STORED
    return PublishResult(message.msg_id, outcome, ack.seq)
