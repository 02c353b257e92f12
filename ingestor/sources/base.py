"""What every source adapter shares: health, backoff, a circuit breaker, persisted state.

An adapter only translates: upstream payload in, :class:`ingestor.events.MediaEvent`
(transitions, not snapshots) out, through the one :class:`ingestor.sink.Sink`. Polling and
WebSocket adapters implement :class:`Source` (``run`` until ``stop`` is set); webhook adapters
add routes to the one aiohttp application (:class:`WebhookSource`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ingestor.errors import IngestorError, InvalidEvent
from ingestor.events import MediaEvent, encode_event


def receipt_time() -> datetime:
    """Now, as an aware UTC datetime: the one clock adapters read for receipt times."""
    return datetime.now(UTC)


@dataclass
class SourceHealth:
    """Per source: last success, last error, events published, and a state that is not an
    error (such as a Tautulli whose Plex does not answer). Shown by ``status``."""

    name: str  # e.g. "tautulli:<server_id>" or "plex-webhook"
    kind: str  # plex_webhook | plex_poll | tautulli | jellyfin | emby | jellyfin_webhook | ...
    server_id: str = ""
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    events_published: int = 0
    # a condition of the source that is not an error, e.g. "no_live_activity" (None: none)
    state: str | None = None
    state_detail: str | None = None
    state_since: datetime | None = None

    def success(self, events: int = 0) -> None:
        self.last_success = receipt_time()
        self.events_published += events

    def failure(self, error: BaseException | str) -> None:
        self.last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.last_error_at = receipt_time()

    def set_state(self, state: str | None, detail: str | None = None) -> bool:
        """Enter ``state`` (None: leave the current one); True if it changed."""
        if state == self.state:
            return False
        self.state, self.state_detail = state, detail if state is not None else None
        self.state_since = receipt_time() if state is not None else None
        return True

    def as_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "name": self.name,
            "kind": self.kind,
            "server_id": self.server_id,
            "last_success": iso(self.last_success),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "events_published": self.events_published,
            "state": self.state,
            "state_detail": self.state_detail,
            "state_since": iso(self.state_since),
        }


class Source(Protocol):
    """A polling or WebSocket adapter."""

    health: SourceHealth

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; never raise for upstream trouble (record it in health)."""


class WebhookSource(Protocol):
    """An adapter that receives HTTP requests on the one aiohttp application."""

    health: SourceHealth

    def add_routes(self, app: web.Application) -> None: ...


class Backoff:
    """Exponential backoff with jitter: ``initial`` doubling up to ``maximum`` seconds."""

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 32.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._rng = rng or random.Random()
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return delay * (1 + self._rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._next = self.initial

    async def sleep(self, stop: asyncio.Event) -> bool:
        """Wait the next delay, or until ``stop``; True if stopped."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), self.next())
        return stop.is_set()


class CircuitOpen(IngestorError):
    """The upstream failed too often; calls are refused until the breaker half-opens."""


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive failures; after ``reset_timeout`` one
    trial call is let through (half-open): success closes it, failure opens it again."""

    def __init__(
        self,
        threshold: int = 5,
        reset_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_timeout:
            return "half-open"
        return "open"

    def check(self) -> None:
        """Raise :class:`CircuitOpen` if calls are refused now."""
        if self.state == "open":
            assert self._opened_at is not None
            left = self.reset_timeout - (self._clock() - self._opened_at)
            raise CircuitOpen(f"circuit open after {self._failures} failures; retry in {left:.0f}s")

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self.threshold or self._opened_at is not None:
            self._opened_at = self._clock()

    def trip(self) -> None:
        """Open now, as ``threshold`` failures would: the failure will not heal by itself."""
        self._failures += self.threshold
        self._opened_at = self._clock()


class StateFile:
    """A small JSON document persisted atomically (written to a temporary name, renamed), for
    adapter cursors and open sessions that must survive restarts."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path} is corrupt ({exc}); remove it to start over") from exc

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w") as out:
            json.dump(state, out, sort_keys=True, default=str)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)


MAX_EVENT_BYTES = 512 * 1024
"""The largest event (encoded) a source hands its sink. NATS refuses a message over its
``max_payload`` (1 MiB by default) whatever the retries, so an event that large can never be
stored: a webhook would answer 503 for it, and an adapter keeping it for a retry (the
Jellyfin outbox, a Tautulli history page) would be stuck behind it for good."""


class EventTooLarge(InvalidEvent):
    """An event over :data:`MAX_EVENT_BYTES` encoded, which NATS cannot store (a webhook
    answers 413 for it); ``size`` and ``limit`` are in bytes."""

    def __init__(self, event: MediaEvent, size: int) -> None:
        self.size = size
        self.limit = MAX_EVENT_BYTES
        super().__init__(
            f"a {event.event_type.value} event of {size:,} bytes encoded, over the limit of "
            f"{MAX_EVENT_BYTES:,} bytes (an upstream field is that large)"
        )


def check_event_size(event: MediaEvent) -> MediaEvent:
    """``event``, or :class:`EventTooLarge` when it is over :data:`MAX_EVENT_BYTES` encoded."""
    size = len(encode_event(event))
    if size > MAX_EVENT_BYTES:
        raise EventTooLarge(event, size)
    return event
