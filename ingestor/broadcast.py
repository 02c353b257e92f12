"""The live feed's hub: every committed event and alert, fanned out to WebSocket subscribers.

The router calls :meth:`BroadcastHub.publish` on its own event loop after each committed
batch (ack after commit, so a subscriber never sees an event the projection might still lose).
Publishing must never slow ingestion, so it is synchronous and bounded: per event it does a
few set look-ups per subscriber, encodes the message once (only if someone wants it), and
appends it to each interested subscriber's queue. It never awaits a client. Each subscriber
has its own bounded queue drained by its own sender task (``ingestor/http.py``); a client
that falls more than ``queue_limit`` messages behind is dropped at once, its queue freed, and
its connection closed with code 1008 and a reason such as ``"too slow: 2001 messages
behind"``.

Messages are JSON text, in stream order per subscriber:

* ``{"kind": "event", "seq": 12, "recorded_at": "...Z", "action": "open", "event": {...}}``:
  an accepted event (``action`` is ``open``, ``fold`` or ``link``; dedup drops are not sent),
  ``event`` being the MediaEvent exactly as the stream holds it (current schema version);
* ``{"kind": "alert", "seq": 40, "recorded_at": "...Z", "alert": {...}}``: a detection alert.

:class:`EventMessage` and :class:`AlertMessage` decode them (the workbench's client uses them).

>>> from datetime import UTC, datetime
>>> from ingestor.dedup import Action, Decision
>>> from ingestor.events import EventType, MediaEvent, encode_event
>>> from ingestor.projection import Applied
>>> event = MediaEvent(event_id="e1", event_type=EventType.PLAY, source="plex",
...     occurred_at=datetime(2026, 1, 5, 20, tzinfo=UTC), server_id="s1", session_key="7",
...     user_id="42", username="ana", media_type="movie", title="Heat")
>>> at = datetime(2026, 1, 5, 20, 0, 1, tzinfo=UTC)
>>> applied = Applied(3, at, event, Decision(Action.OPEN, "k"), encode_event(event))
>>> text = encode_event_message(applied)
>>> message = decode_message(text)
>>> message.seq, message.action, message.event.title
(3, 'open', 'Heat')
>>> Filters.parse({"user": "ana,bob"}).accepts_event(event)
True
>>> Filters.parse({"event_type": "stop"}).accepts_event(event)
False
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from ingestor.dedup import Action
from ingestor.events import EventType, MediaEvent, decode_event
from ingestor.projection import AlertRow, Applied, BatchResult
from ingestor.records import Alert

log = logging.getLogger(__name__)

# Messages a subscriber may fall behind before it is dropped. A batch arrives all at once, so
# ``ingestor run`` allows at least two batches (``2 * NATS_BATCH_SIZE``) when that is more.
DEFAULT_QUEUE_LIMIT = 1000
CLOSE_TOO_SLOW = 1008  # policy violation: the client did not keep up
CLOSE_GOING_AWAY = 1001  # the ingestor is stopping
ALERT_KIND = "alert"
EVENT_TYPES: tuple[str, ...] = (*(t.value for t in EventType), ALERT_KIND)
"""What ``?event_type=`` accepts: the event types, and ``alert`` for alerts."""

_encoder = msgspec.json.Encoder()

DropFn = Callable[[int, str], None]
"""Called once when a subscription ends on the hub's side: (WebSocket close code, reason)."""


# ---------------------------------------------------------------------- messages


class EventMessage(msgspec.Struct, tag_field="kind", tag="event", kw_only=True):
    """An accepted event as the live feed carries it."""

    seq: int
    recorded_at: datetime
    action: str  # open | fold | link
    event: MediaEvent


class AlertMessage(msgspec.Struct, tag_field="kind", tag=ALERT_KIND, kw_only=True):
    """A detection alert as the live feed carries it."""

    seq: int
    recorded_at: datetime
    alert: Alert


class _RawEvent(msgspec.Struct, tag_field="kind", tag="event", kw_only=True):
    seq: int
    recorded_at: datetime
    action: str
    event: msgspec.Raw


Message = EventMessage | AlertMessage
_raw_decoder = msgspec.json.Decoder(_RawEvent | AlertMessage)


def encode_event_message(applied: Applied) -> str:
    """The feed's message for one accepted event; the event's JSON is embedded as stored."""
    return _encoder.encode(
        _RawEvent(
            seq=applied.seq,
            recorded_at=applied.recorded_at,
            action=applied.decision.action.value,
            event=msgspec.Raw(applied.data),
        )
    ).decode()


def encode_alert_message(row: AlertRow) -> str:
    """The feed's message for one alert."""
    return _encoder.encode(
        AlertMessage(seq=row.seq, recorded_at=row.recorded_at, alert=row.alert)
    ).decode()


def decode_message(text: str | bytes) -> Message:
    """Decode one feed message; the event goes through :func:`decode_event` (upcasters)."""
    raw = _raw_decoder.decode(text)
    if isinstance(raw, AlertMessage):
        return raw
    return EventMessage(
        seq=raw.seq,
        recorded_at=raw.recorded_at,
        action=raw.action,
        event=decode_event(bytes(raw.event)),
    )


# ---------------------------------------------------------------------- filters


def _values(query: Mapping[str, str], name: str) -> frozenset[str]:
    getall = getattr(query, "getall", None)
    raw: Iterable[str] = getall(name, []) if getall is not None else [query.get(name, "")]
    return frozenset(v.strip() for text in raw for v in text.split(",") if v.strip())


@dataclass(frozen=True, slots=True)
class Filters:
    """What one subscriber wants. An empty set means "any"; several values mean "any of".

    ``users`` matches an event's ``user_id`` or ``username``. ``event_types`` holds event
    types and/or ``alert``: with it set, alerts come only if ``alert`` is listed.
    """

    servers: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        """From ``?server=&user=&event_type=`` (comma separated, or repeated).

        Raises ValueError naming the accepted values for an unknown event type.
        """
        event_types = _values(query, "event_type")
        unknown = sorted(event_types - set(EVENT_TYPES))
        if unknown:
            raise ValueError(
                f"unknown event_type {', '.join(unknown)}: expected any of {', '.join(EVENT_TYPES)}"
            )
        return cls(_values(query, "server"), _values(query, "user"), event_types)

    def _who(self, server_id: str, user_id: str, username: str) -> bool:
        if self.servers and server_id not in self.servers:
            return False
        return not self.users or user_id in self.users or username in self.users

    def accepts_event(self, event: MediaEvent) -> bool:
        if self.event_types and event.event_type.value not in self.event_types:
            return False
        return self._who(event.server_id, event.user_id, event.username)

    def accepts_alert(self, alert: Alert) -> bool:
        if self.event_types and ALERT_KIND not in self.event_types:
            return False
        return self._who(alert.server_id, alert.user_id, alert.username)


# ---------------------------------------------------------------------- subscriptions


class Subscription:
    """One subscriber's bounded queue. The hub offers; the subscriber's sender takes."""

    def __init__(self, filters: Filters, limit: int, on_drop: DropFn) -> None:
        self.filters = filters
        self.limit = limit
        self.sent = 0
        self.closed: tuple[int, str] | None = None  # (close code, reason) once ended
        self._queue: deque[str] = deque()
        self._on_drop = on_drop
        self._wake = asyncio.Event()

    @property
    def behind(self) -> int:
        """Messages waiting to be sent."""
        return len(self._queue)

    def offer(self, message: str) -> bool:
        """Queue ``message``; past the limit, end the subscription instead (False)."""
        if self.closed is not None:
            return False
        if len(self._queue) >= self.limit:
            self.end(CLOSE_TOO_SLOW, f"too slow: {len(self._queue) + 1} messages behind")
            return False
        self._queue.append(message)
        self._wake.set()
        return True

    def end(self, code: int, reason: str) -> None:
        """End the subscription once: free the queue, wake the sender, tell the connection."""
        if self.closed is not None:
            return
        self.closed = (code, reason)
        self._queue.clear()
        self._wake.set()
        self._on_drop(code, reason)

    async def next(self) -> str | None:
        """The next message in order, waiting for one; None once the subscription ended."""
        while not self._queue:
            if self.closed is not None:
                return None
            self._wake.clear()
            await self._wake.wait()
        if self.closed is not None:
            return None
        self.sent += 1
        return self._queue.popleft()


class BroadcastHub:
    """Fan committed batches out to subscribers without ever waiting for one."""

    def __init__(self, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        self.queue_limit = queue_limit
        self._subs: list[Subscription] = []
        self.connected_total = 0
        self.dropped_slow = 0
        self.events = 0
        self.alerts = 0
        self.messages_queued = 0
        self.last_drop: str | None = None

    @property
    def clients(self) -> int:
        return len(self._subs)

    def subscribe(self, filters: Filters, on_drop: DropFn) -> Subscription:
        sub = Subscription(filters, self.queue_limit, on_drop)
        self._subs.append(sub)
        self.connected_total += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "ingestor stopping") -> None:
        """End every subscription (the connections close with ``code`` and ``reason``)."""
        subs, self._subs = self._subs, []
        for sub in subs:
            sub.end(code, reason)

    def publish(self, result: BatchResult) -> None:
        """Offer a committed batch's accepted events and alerts, in stream order.

        Synchronous and cheap: nothing here waits for a client. With no subscriber it
        costs one check per batch.
        """
        self.events += result.accepted
        self.alerts += len(result.alerts)
        if not self._subs:
            return  # the batch's Applied objects are built only for a subscriber
        accepted = [a for a in result.applied if a.decision.action is not Action.DROP]
        subs = list(self._subs)
        items: Iterable[Applied | AlertRow] = heapq.merge(
            accepted, result.alerts, key=lambda item: item.seq
        )
        queued = 0
        for item in items:
            text: str | None = None
            if isinstance(item, Applied):
                for sub in subs:
                    if sub.closed is None and sub.filters.accepts_event(item.event):
                        if text is None:
                            text = encode_event_message(item)
                        queued += sub.offer(text)
            else:
                for sub in subs:
                    if sub.closed is None and sub.filters.accepts_alert(item.alert):
                        if text is None:
                            text = encode_alert_message(item)
                        queued += sub.offer(text)
        self.messages_queued += queued
        slow = [sub for sub in subs if sub.closed is not None]
        for sub in slow:
            self.unsubscribe(sub)
            if sub.closed and sub.closed[0] == CLOSE_TOO_SLOW:
                self.dropped_slow += 1
                self.last_drop = sub.closed[1]
                log.warning("broadcast client dropped: %s", sub.closed[1])

    def stats(self) -> dict[str, Any]:
        """For ``/status`` and ``/metrics``."""
        return {
            "clients": self.clients,
            "connected_total": self.connected_total,
            "dropped_slow": self.dropped_slow,
            "last_drop": self.last_drop,
            "events": self.events,
            "alerts": self.alerts,
            "messages_queued": self.messages_queued,
            "queue_limit": self.queue_limit,
            "behind": [sub.behind for sub in self._subs],
        }
