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

Failures never stop the poller: a rejected token (401/403) is reported as ``PLEX_TOKEN
rejected``, unreachable or 5xx servers and unreadable answers are retried with
:class:`~ingestor.sources.base.Backoff`, and a :class:`~ingestor.sources.base.CircuitBreaker`
stops calling a dead server until it half-opens. A session entry that cannot be read is
skipped with an error in health; while any entry is unreadable no session is closed (the
unreadable one may be one of them).

The server owner appears as ``User.id`` "1"; it is mapped to ``owner_id`` (``PLEX_OWNER_ID``,
or :meth:`PlexSessionsPoller.set_owner_id`), as in the webhook adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from ingestor.errors import InvalidEvent
from ingestor.events import (
    EventType,
    MediaEvent,
    decode_event,
    encode_event,
    make_event_id,
    percent_of,
)
from ingestor.sink import Sink
from ingestor.sources.base import (
    Backoff,
    CircuitBreaker,
    CircuitOpen,
    SourceHealth,
    StateFile,
    receipt_time,
)
from ingestor.sources.plex.owner import OwnerMap

log = logging.getLogger(__name__)

SOURCE = "plex_poll"
SESSIONS_PATH = "/status/sessions"
IDENTITY_PATH = "/identity"
DEFAULT_INTERVAL = 10.0
SCROBBLE_FRACTION = 0.9
STATE_VERSION = 1


# ---------------------------------------------------------------------------------------
# the answers, as PMS sends them (JSON); values PMS sends as "1"/"0" or numbers-as-text are
# accepted in either form


class _IdentityContainer(msgspec.Struct, rename="camel"):
    machine_identifier: str


class _IdentityDoc(msgspec.Struct):
    container: _IdentityContainer = msgspec.field(name="MediaContainer")


class _SessionsContainer(msgspec.Struct):
    size: int = 0
    metadata: list[msgspec.Raw] = msgspec.field(name="Metadata", default_factory=list)


class _SessionsDoc(msgspec.Struct):
    container: _SessionsContainer = msgspec.field(name="MediaContainer")


Number = int | str | None
Flag = bool | int | str | None


class PlexUser(msgspec.Struct, rename="camel"):
    id: int | str
    title: str = ""
    thumb: str = ""


class PlexPlayerInfo(msgspec.Struct, rename="camel"):
    machine_identifier: str = ""
    title: str = ""
    platform: str = ""
    platform_version: str = ""
    product: str = ""
    version: str = ""
    device: str = ""
    address: str = ""
    state: str = ""
    local: Flag = None
    relayed: Flag = None
    secure: Flag = None


class PlexSessionInfo(msgspec.Struct, rename="camel"):
    id: str = ""
    bandwidth: Number = None
    location: str = ""


class PlexTranscodeSession(msgspec.Struct, rename="camel"):
    video_decision: str = ""
    audio_decision: str = ""


class PlexMedia(msgspec.Struct, rename="camel"):
    video_resolution: str = ""
    video_codec: str = ""
    audio_codec: str = ""
    audio_channels: Number = None
    bitrate: Number = None
    selected: Flag = None


class PlexSession(msgspec.Struct, rename="camel"):
    """One entry of ``/status/sessions``: a library item plus who plays it where."""

    session_key: int | str
    rating_key: int | str
    type: str
    title: str
    user: PlexUser = msgspec.field(name="User")
    player: PlexPlayerInfo = msgspec.field(name="Player")
    session: PlexSessionInfo | None = msgspec.field(name="Session", default=None)
    transcode_session: PlexTranscodeSession | None = msgspec.field(
        name="TranscodeSession", default=None
    )
    media: list[PlexMedia] = msgspec.field(name="Media", default_factory=list)
    parent_title: str = ""
    grandparent_title: str = ""
    year: Number = None
    duration: Number = None  # ms
    view_offset: Number = None  # ms
    guid: str = ""
    library_section_id: Number = msgspec.field(name="librarySectionID", default=None)
    library_section_title: str = ""

    @property
    def key(self) -> SessionId:
        return (str(self.session_key), str(self.rating_key))


_identity_decoder = msgspec.json.Decoder(_IdentityDoc)
_sessions_decoder = msgspec.json.Decoder(_SessionsDoc)
_session_decoder = msgspec.json.Decoder(PlexSession)

SessionId = tuple[str, str]
"""A live session as PMS names it: (sessionKey, ratingKey)."""


# ---------------------------------------------------------------------------------------
# failures, classified


class PollFailure(Exception):
    """One poll failed; ``upstream`` failures count towards the circuit breaker."""

    upstream = True


class PlexTokenRejected(PollFailure):
    pass


class PlexUnavailable(PollFailure):
    pass


class PlexMalformed(PollFailure):
    pass


class SinkUnavailable(PollFailure):
    upstream = False


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


@dataclass
class Snapshot:
    """The readable entries of one answer, and whether every entry was readable."""

    sessions: list[tuple[PlexSession, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unreadable


def diff(
    open_sessions: dict[SessionId, Tracked], snapshot: Snapshot, now: datetime
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
            changes.append(Change(EventType.STOP, tracked, _decode_entry(tracked.entry)))
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
        offset, duration = _int(session.view_offset), _int(session.duration)
        if (
            not tracked.scrobbled
            and offset is not None
            and duration
            and offset >= SCROBBLE_FRACTION * duration
        ):
            tracked = replace(tracked, scrobbled=True)
            changes.append(Change(EventType.SCROBBLE, tracked, session))
        result[key] = tracked
    return result, changes


def parse_sessions(body: bytes) -> Snapshot:
    """Read one ``/status/sessions`` answer; raise :class:`PlexMalformed` if it is not one."""
    try:
        doc = _sessions_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PlexMalformed(f"{SESSIONS_PATH} answered something unreadable: {exc}") from None
    snapshot = Snapshot()
    for i, raw in enumerate(doc.container.metadata):
        text = bytes(raw).decode("utf-8", errors="replace")
        try:
            session = _decode_entry(text)
        except PlexMalformed as exc:
            snapshot.unreadable.append(f"Metadata[{i}]: {exc}")
            continue
        if session.guid.startswith("library://"):
            continue  # theme music played while browsing, not a playback (as Tautulli)
        snapshot.sessions.append((session, text))
    return snapshot


def _decode_entry(text: str) -> PlexSession:
    try:
        session = _session_decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PlexMalformed(str(exc)) from None
    for name, value in (
        ("sessionKey", str(session.session_key)),
        ("ratingKey", str(session.rating_key)),
        ("type", session.type),
        ("title", session.title),
        ("User.id", str(session.user.id)),
    ):
        if not value.strip():
            raise PlexMalformed(f"{name} is empty")
    return session


def _int(value: Number) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value.strip())
    except ValueError:
        return None


def _flag(value: Flag) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true")


def transcode_decision(session: PlexSession) -> str:
    """Tautulli's rule: ``transcode`` if video or audio is transcoded, else ``copy`` if either
    is copied, else ``direct play`` (also when there is no TranscodeSession)."""
    ts = session.transcode_session
    if ts is None:
        return "direct play"
    decisions = {ts.video_decision, ts.audio_decision}
    if "transcode" in decisions:
        return "transcode"
    if "copy" in decisions:
        return "copy"
    return "direct play"


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
            self.breaker.check()
        except CircuitOpen as exc:
            self.stats.refused += 1
            self.health.failure(f"{self._last_failure} ({exc})")
            if not self._breaker_was_open:
                self._breaker_was_open = True
                log.error("plex poll %s: %s; not calling it until then", self.url, exc)
            return self.interval
        try:
            await self.poll_once(http)
        except PollFailure as exc:
            self.stats.failures += 1
            if exc.upstream:
                self.breaker.failure()
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
        self.breaker.success()
        self.backoff.reset()
        if self._breaker_was_open:
            self._breaker_was_open = False
            log.info("plex poll %s: answering again", self.url)
        return self.interval

    async def poll_once(self, http: aiohttp.ClientSession) -> int:
        """Emit what an earlier poll left, poll once, emit its transitions; returns the
        number of events the sink took. Raises :class:`PollFailure`."""
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
        body = await self._get(http, SESSIONS_PATH)
        now = self.clock()
        snapshot = parse_sessions(body)
        open_sessions, changes = diff(self._open, snapshot, now)
        try:
            events = [self._event(change, now) for change in changes]
        except InvalidEvent as exc:
            raise PlexMalformed(f"{SESSIONS_PATH}: {exc}") from None
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
        body = await self._get(http, IDENTITY_PATH)
        try:
            server = _identity_decoder.decode(body).container.machine_identifier
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise PlexMalformed(f"{IDENTITY_PATH} answered something unreadable: {exc}") from None
        if not server.strip():
            raise PlexMalformed(f"{IDENTITY_PATH} gave an empty machineIdentifier")
        return server

    async def _get(self, http: aiohttp.ClientSession, path: str) -> bytes:
        url = self.url + path
        try:
            async with http.get(url, headers=self._headers) as response:
                if response.status in (401, 403):
                    raise PlexTokenRejected(
                        f"PLEX_TOKEN rejected by {self.url} (HTTP {response.status} on {path}); "
                        "check PLEX_TOKEN"
                    )
                if response.status != 200:
                    raise PlexUnavailable(f"{url} answered HTTP {response.status}")
                return await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PlexUnavailable(
                f"cannot reach Plex at {self.url}: {type(exc).__name__}: {exc}"
            ) from None

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
        session, tracked, player = change.session, change.tracked, change.session.player
        info = session.session or PlexSessionInfo()
        media = next((m for m in session.media if _flag(m.selected)), None) or (
            session.media[0] if session.media else PlexMedia()
        )
        duration = _int(session.duration)
        local = _flag(player.local)
        location = info.location or ("" if local is None else ("lan" if local else "wan"))
        event = MediaEvent(
            event_id=make_event_id(
                SOURCE,
                self.server_id,
                str(change.event_type),
                tracked.session_key,
                int(now.timestamp() * 1000),
            ),
            event_type=change.event_type,
            occurred_at=now,
            source=SOURCE,
            server_id=self.server_id,
            session_key=tracked.session_key,
            user_id=self.owner.user_id(session.user.id),
            username=session.user.title,
            user_thumb=session.user.thumb,
            media_type=session.type,
            title=session.title,
            parent_title=session.parent_title,
            grandparent_title=session.grandparent_title,
            rating_key=str(session.rating_key),
            year=_int(session.year),
            media_duration=round(duration / 1000) if duration is not None else None,
            library_id=""
            if session.library_section_id is None
            else str(session.library_section_id),
            library_name=session.library_section_title,
            started_at=tracked.started_at,
            stopped_at=now if change.event_type is EventType.STOP else None,
            position_ms=_int(session.view_offset),
            percent_complete=percent_of(_int(session.view_offset), duration),
            platform=player.platform,
            platform_version=player.platform_version,
            player=player.title,
            product=player.product,
            product_version=player.version,
            device=player.device,
            machine_id=player.machine_identifier,
            ip_address=player.address,
            location_type=location,
            transcode_decision=transcode_decision(session),
            video_resolution=media.video_resolution,
            video_codec=media.video_codec,
            audio_codec=media.audio_codec,
            audio_channels=_int(media.audio_channels),
            stream_bitrate=_int(media.bitrate),
            bandwidth=_int(info.bandwidth),
            secure=_flag(player.secure),
            local=local,
            relayed=_flag(player.relayed),
            raw_payload=tracked.entry,
        )
        return event.validate()


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
