"""Plex without Plex Pass: poll ``GET {PLEX_URL}/status/sessions`` and emit transitions.

Webhooks need Plex Pass; the sessions list does not. Every ``interval`` (default 10 s) the
poller asks the server (header ``X-Plex-Token``, ``Accept: application/json``) for its current
sessions (``MediaContainer.Metadata[]``, each an item with ``sessionKey``, ``User``,
``Player``, ``Session`` and maybe ``TranscodeSession``) and turns the *changes* into the same
lifecycle events the webhook adapter emits (source ``plex_poll``):

* a (``sessionKey``, ``ratingKey``) not seen before: ``play`` (and ``pause`` at once if it is
  first seen paused). Plex exposes no start time, so the poll that first saw it is the start,
  as Tautulli does;
* ``Player.state`` playing -> paused: ``pause``; paused -> playing: ``resume``; ``buffering`` is
  neither and changes nothing;
* ``viewOffset`` reaching 90 % of ``duration``: ``scrobble``, once (Plex's own watched mark);
* a session missing from the list, or its ``sessionKey`` now playing another item: ``stop`` at
  that poll (and a ``play`` for the new item).

``session_key`` = ``"{sessionKey}/{ratingKey}/{first seen, epoch ms}"``: Plex reuses small
session keys, the start makes the playback unique. ``event_id = make_event_id("plex_poll",
machineIdentifier, type, session_key, poll epoch ms)``. An unchanged snapshot yields nothing,
however often it is polled.

State (``StateFile``): the server id, the open sessions with their start and last-seen entry,
and the events of the last poll until the sink took them. The state is saved before emitting
(write-ahead), so a crash or a sink failure re-emits exactly those events with the same ids
(the dedup drops any that did get through), and a restart neither re-opens nor loses a
session that was open.

Failures never stop the poller. The shared client and policy (:mod:`ingestor.sources.http`)
say them: a rejected token (401/403) is ``PLEX_TOKEN rejected``, unreachable or 5xx servers
and unreadable answers are tried again at later polls, spaced by
:class:`~ingestor.sources.base.Backoff`, and a :class:`~ingestor.sources.base.CircuitBreaker`
stops calling a dead server until it half-opens (one poll is one attempt of the policy). A
session entry that cannot be read is skipped with an error in health; while any entry is
unreadable no session is closed (the unreadable one may be one of them).

The server owner appears as ``User.id`` "1"; it is mapped to ``owner_id`` (``PLEX_OWNER_ID``,
or :meth:`PlexSessionsPoller.set_owner_id`), as in the webhook adapter. What an entry says
becomes event fields in :mod:`ingestor.sources.plex.mapping`
(:func:`~ingestor.sources.plex.mapping.session_event`, the mapping the webhook uses for the
same objects); this module decides which transitions happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from ingestor.errors import IngestorError, InvalidEvent
from ingestor.events import EventType, MediaEvent, decode_event, encode_event
from ingestor.sink import Sink
from ingestor.sources.base import (
    Backoff,
    CircuitBreaker,
    CircuitOpen,
    SourceHealth,
    StateFile,
    receipt_time,
)
from ingestor.sources.http import RetryPolicy, UpstreamBadResponse, UpstreamClient, UpstreamError
from ingestor.sources.plex.mapping import (
    PlexPayloadError,
    PlexSession,
    SessionsSnapshot,
    decode_session,
    read_identity,
    read_sessions,
    scrobbled,
    session_event,
)
from ingestor.sources.plex.owner import OwnerMap

log = logging.getLogger(__name__)

SESSIONS_PATH = "/status/sessions"
IDENTITY_PATH = "/identity"
DEFAULT_INTERVAL = 10.0
SCROBBLE_FRACTION = 0.9
STATE_VERSION = 1

SessionId = tuple[str, str]
"""A live session as PMS names it: (sessionKey, ratingKey)."""


class SinkUnavailable(IngestorError):
    """The sink did not take a poll's events; they are kept for the next poll (not an
    upstream failure: the circuit does not count it)."""


# ---------------------------------------------------------------------------------------
# open sessions and the diff of one snapshot against them


@dataclass(frozen=True)
class Tracked:
    """An open playback: its event session key, start, state, and last entry seen (JSON)."""

    session_key: str
    started_at: datetime
    paused: bool
    scrobbled: bool
    entry: str


@dataclass(frozen=True)
class Change:
    event_type: EventType
    tracked: Tracked
    session: PlexSession


def diff(
    open_sessions: dict[SessionId, Tracked], snapshot: SessionsSnapshot, now: datetime
) -> tuple[dict[SessionId, Tracked], list[Change]]:
    """The transitions from ``open_sessions`` to ``snapshot`` seen at ``now``, and the new
    open sessions. Pure: the same inputs give the same answer."""
    seen = {session.key for session, _ in snapshot.sessions}
    changes: list[Change] = []
    result: dict[SessionId, Tracked] = {}
    for key, tracked in open_sessions.items():
        if key in seen:
            continue
        if snapshot.complete:
            changes.append(Change(EventType.STOP, tracked, decode_session(tracked.entry)))
        else:
            result[key] = tracked
    start_ms = int(now.timestamp() * 1000)
    handled: set[SessionId] = set()
    for session, raw in snapshot.sessions:
        key = session.key
        if key in handled:  # the same session listed twice: the first entry counts
            continue
        handled.add(key)
        state = session.player.state
        tracked = open_sessions.get(key)
        if tracked is None:
            tracked = Tracked(f"{key[0]}/{key[1]}/{start_ms}", now, False, False, raw)
            changes.append(Change(EventType.PLAY, tracked, session))
        tracked = replace(tracked, entry=raw)
        if state == "paused" and not tracked.paused:
            tracked = replace(tracked, paused=True)
            changes.append(Change(EventType.PAUSE, tracked, session))
        elif state == "playing" and tracked.paused:
            tracked = replace(tracked, paused=False)
            changes.append(Change(EventType.RESUME, tracked, session))
        if not tracked.scrobbled and scrobbled(session, SCROBBLE_FRACTION):
            tracked = replace(tracked, scrobbled=True)
            changes.append(Change(EventType.SCROBBLE, tracked, session))
        result[key] = tracked
    return result, changes


# ---------------------------------------------------------------------------------------
# the poller


@dataclass
class PollStats:
    polls: int = 0  # answered polls
    failures: int = 0
    refused: int = 0  # polls skipped while the circuit was open
    events: int = 0


class PlexSessionsPoller:
    """Poll one Plex Media Server's sessions (a :class:`~ingestor.sources.base.Source`).

    ``url`` is ``PLEX_URL`` (``http://host:32400``), ``token`` ``PLEX_TOKEN``,
    ``state_path`` e.g. ``$DATA_DIR/sources/plex-poll.json``. ``http`` may be a shared
    ``aiohttp.ClientSession`` (else one is opened per :meth:`run`); ``clock`` gives poll
    times (tests pass a controllable one).
    """

    def __init__(
        self,
        sink: Sink,
        *,
        url: str,
        token: str,
        state_path: Path,
        interval: float = DEFAULT_INTERVAL,
        owner_id: str | None = None,
        name: str = "plex-poll",
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        breaker: CircuitBreaker | None = None,
        http: aiohttp.ClientSession | None = None,
        clock: Callable[[], datetime] = receipt_time,
    ) -> None:
        self.sink = sink
        self.url = url.rstrip("/")
        self.interval = interval
        self.owner = OwnerMap(owner_id, "plex poll")
        self.timeout = timeout
        self.backoff = backoff or Backoff(initial=min(1.0, interval), maximum=max(60.0, interval))
        self.breaker = breaker or CircuitBreaker(threshold=5, reset_timeout=60.0)
        self.clock = clock
        self.health = SourceHealth(name=name, kind="plex_poll")
        self.stats = PollStats()
        self.server_id: str | None = None
        self._headers = {"X-Plex-Token": token, "Accept": "application/json"}
        self._http = http
        self._state = StateFile(state_path)
        state = self._state.load()
        self._state_server: str | None = state.get("server_id")
        self._open: dict[SessionId, Tracked] = _load_sessions(state)
        self._pending: list[MediaEvent] = [
            decode_event(text.encode()) for text in state.get("pending", [])
        ]
        self.policy = RetryPolicy(self.breaker)  # one poll is one attempt
        self._client: UpstreamClient | None = None
        self._breaker_was_open = False
        self._last_failure = "Plex failing"

    def set_owner_id(self, owner_id: str | int) -> None:
        """Map ``User.id`` "1" (the server owner) to ``owner_id`` from now on."""
        self.owner.learn(owner_id)

    @property
    def open_sessions(self) -> int:
        return len(self._open)

    # -- the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; upstream trouble is recorded, never raised."""
        http = self._http or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout)
        )
        try:
            while not stop.is_set():
                delay = await self._cycle(http)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            if self._http is None:
                await http.close()

    async def _cycle(self, http: aiohttp.ClientSession) -> float:
        """One poll, with its failure handling; returns the delay before the next."""
        try:
            await self.policy.call(lambda: self.poll_once(http))
        except CircuitOpen as exc:
            self.stats.refused += 1
            self.health.failure(f"{self._last_failure} ({exc})")
            if not self._breaker_was_open:
                self._breaker_was_open = True
                log.error("plex poll %s: %s; not calling it until then", self.url, exc)
            return self.interval
        except (UpstreamError, SinkUnavailable) as exc:  # the policy counted upstream ones
            self.stats.failures += 1
            self._last_failure = str(exc)
            self.health.failure(self._last_failure)
            delay = self.backoff.next()
            log.error("plex poll %s: %s (next try in %.1fs)", self.url, exc, delay)
            return delay
        except Exception as exc:  # a bug or the disk: recorded, never the end of the loop
            self.stats.failures += 1
            self._last_failure = f"{type(exc).__name__}: {exc}"
            self.health.failure(self._last_failure)
            log.exception("plex poll %s failed unexpectedly", self.url)
            return self.backoff.next()
        self.backoff.reset()
        if self._breaker_was_open:
            self._breaker_was_open = False
            log.info("plex poll %s: answering again", self.url)
        return self.interval

    async def poll_once(self, http: aiohttp.ClientSession) -> int:
        """Emit what an earlier poll left, poll once, emit its transitions; returns the
        number of events the sink took. Raises an
        :class:`~ingestor.sources.http.UpstreamError` or :class:`SinkUnavailable`."""
        emitted = await self._flush()
        if self.server_id is None:
            self.server_id = await self._identity(http)
            if self._state_server not in (None, self.server_id):
                log.warning(
                    "plex poll %s: the server is now %s, not %s; forgetting %d open sessions",
                    self.url,
                    self.server_id,
                    self._state_server,
                    len(self._open),
                )
                self._open = {}
            self._state_server = self.server_id
            self.health.server_id = self.server_id
        body = await self._upstream(http).get(SESSIONS_PATH)
        now = self.clock()
        try:
            snapshot = read_sessions(body)
        except PlexPayloadError as exc:
            raise UpstreamBadResponse(
                f"{SESSIONS_PATH} answered something unreadable: {exc}"
            ) from None
        open_sessions, changes = diff(self._open, snapshot, now)
        try:
            events = [self._event(change, now) for change in changes]
        except InvalidEvent as exc:
            raise UpstreamBadResponse(f"{SESSIONS_PATH}: {exc}") from None
        for event in events:
            self.owner.check(event.user_id)
        self._open = open_sessions
        self._pending.extend(events)
        self._save()  # written ahead: a crash re-emits these events with the same ids
        emitted += await self._flush()
        self.stats.polls += 1
        self.health.success(emitted)
        if not snapshot.complete:
            problem = "; ".join(snapshot.unreadable)
            self.health.failure(f"{SESSIONS_PATH}: unreadable session skipped: {problem}")
            log.error("plex poll %s: unreadable session skipped: %s", self.url, problem)
        return emitted

    async def _flush(self) -> int:
        if not self._pending:
            return 0
        events = list(self._pending)
        try:
            await self.sink.emit(events)
        except Exception as exc:
            raise SinkUnavailable(
                f"sink failed ({type(exc).__name__}: {exc}); {len(events)} event(s) kept "
                "for the next poll"
            ) from exc
        self._pending = []
        self._save()
        self.stats.events += len(events)
        return len(events)

    async def _identity(self, http: aiohttp.ClientSession) -> str:
        body = await self._upstream(http).get(IDENTITY_PATH)
        try:
            return read_identity(body)
        except PlexPayloadError as exc:
            raise UpstreamBadResponse(f"{IDENTITY_PATH} {exc}") from None

    def _upstream(self, http: aiohttp.ClientSession) -> UpstreamClient:
        """The shared client over ``http`` (one per session)."""
        if self._client is None or self._client.session is not http:
            self._client = UpstreamClient(
                self.url, http, name="Plex", credentials="PLEX_TOKEN", headers=self._headers
            )
        return self._client

    def _save(self) -> None:
        self._state.save(
            {
                "version": STATE_VERSION,
                "server_id": self._state_server,
                "sessions": [
                    {
                        "plex_session_key": key[0],
                        "rating_key": key[1],
                        "session_key": t.session_key,
                        "started_at": t.started_at.isoformat(),
                        "paused": t.paused,
                        "scrobbled": t.scrobbled,
                        "entry": t.entry,
                    }
                    for key, t in self._open.items()
                ],
                "pending": [encode_event(e).decode() for e in self._pending],
            }
        )

    # -- mapping

    def _event(self, change: Change, now: datetime) -> MediaEvent:
        assert self.server_id is not None
        return session_event(
            change.session,
            change.event_type,
            server_id=self.server_id,
            session_key=change.tracked.session_key,
            started_at=change.tracked.started_at,
            polled_at=now,
            raw=change.tracked.entry,
            owner_id=self.owner.owner_id,
        )


def _load_sessions(state: dict[str, Any]) -> dict[SessionId, Tracked]:
    return {
        (row["plex_session_key"], row["rating_key"]): Tracked(
            session_key=row["session_key"],
            started_at=datetime.fromisoformat(row["started_at"]),
            paused=bool(row["paused"]),
            scrobbled=bool(row["scrobbled"]),
            entry=row["entry"],
        )
        for row in state.get("sessions", [])
    }
