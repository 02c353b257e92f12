"""Jellyfin and Emby session reports in, playback transitions out: the per-session state machine.

Jellyfin and Emby never say "a playback started": their WebSocket pushes the full list of
sessions (``Sessions``), and the webhook plugin reports one session at a time. This module
turns those reports into :class:`~ingestor.events.MediaEvent` transitions. It is pure: no I/O,
no clock (every call is given ``now``), so the same reports always give the same events.

Rules, per session (keyed by server id and session ``Id``):

* the session gains a ``NowPlayingItem`` -> ``play`` (and ``pause`` right after it if the
  first report already shows it paused);
* ``PlayState.IsPaused`` false -> true -> ``pause``; true -> false -> ``resume``;
* the position advances while playing -> ``progress``, at most every ``progress_interval``
  seconds (``None`` turns progress off);
* the item changes (another ``NowPlayingItem.Id``, or another ``PlaySessionId``) -> ``stop``
  of the old playback and ``play`` of the new one;
* the session disappears from a full snapshot, or loses its ``NowPlayingItem`` -> ``stop``.

A report repeating the known state emits nothing: twenty identical pushes are one ``play``.

Identity of a playback (``session_key``): ``PlayState.PlaySessionId`` when the server sends
one, else ``<session Id>:<item Id>:<first seen, epoch ms>``. ``started_at`` is the time the
playback was first seen minus its position at that moment. Both are kept in
:class:`MachineState`, which the owner persists, so after a restart or a reconnect the same
playback keeps its key and start and is not reported again.

Event ids are :func:`~ingestor.events.make_event_id` of the source, the server, the
transition's type and session key, and for the steps that can repeat (pause, resume,
progress) its position and time in ms: the same sequence of reports gives the same ids.

A report of a playback that was closed a moment ago (within ``echo_window`` seconds) and has
not moved past the closing position is a late echo (a webhook delivered after the WebSocket
saw the stop, or a push that was in flight), not a new playback: it is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from ingestor.events import EventType, MediaEvent, make_event_id, percent_of

TICKS_PER_MS = 10_000
TICKS_PER_SECOND = 10_000_000
DEFAULT_PROGRESS_INTERVAL = 300.0
DEFAULT_ECHO_WINDOW = 30.0
STATE_VERSION = 1

# A reported position counts as "moved on" past a stop when it is this far beyond it.
_ECHO_SLACK_MS = 2_000

MEDIA_TYPES = {
    "Movie": "movie",
    "Episode": "episode",
    "Audio": "track",
    "AudioBook": "track",
    "MusicVideo": "clip",
    "Video": "clip",
    "Trailer": "clip",
    "TvChannel": "live",
    "LiveTvChannel": "live",
    "LiveTvProgram": "live",
    "Program": "live",
}
"""Jellyfin/Emby item ``Type`` -> the canonical media type (others are lower-cased)."""

PLAY_METHODS = {
    "DirectPlay": "direct play",
    "DirectStream": "direct stream",
    "Transcode": "transcode",
}
"""``PlayState.PlayMethod`` -> ``transcode_decision``."""


class UnreadableSession(ValueError):
    """A session entry that cannot be read (missing ids, wrong types): the reason says which."""


class PlaybackDetails(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """What a report says about the playback; field names are :class:`MediaEvent`'s."""

    user_id: str
    username: str = ""
    media_type: str
    title: str
    parent_title: str = ""
    grandparent_title: str = ""
    rating_key: str = ""
    year: int | None = None
    media_duration: int | None = None
    # the exact length (media_duration is whole seconds): completion is position / this
    media_duration_ms: int | None = None
    platform: str = ""
    player: str = ""
    product: str = ""
    product_version: str = ""
    device: str = ""
    machine_id: str = ""
    ip_address: str = ""
    transcode_decision: str = ""
    video_resolution: str = ""
    video_codec: str = ""
    audio_codec: str = ""
    audio_channels: int | None = None
    stream_bitrate: int | None = None


class Observation(msgspec.Struct, kw_only=True, frozen=True):
    """One session playing one item, as one report saw it."""

    session_id: str
    item_id: str
    play_session_id: str = ""
    position_ms: int | None = None
    paused: bool | None = False  # None: the report does not say (the known state stays)
    details: PlaybackDetails
    raw: str | None = None  # the upstream entry, for the events' raw_payload


class OpenPlayback(msgspec.Struct, kw_only=True):
    """A playback in progress: what the machine remembers between reports."""

    session_id: str
    item_id: str
    play_session_id: str = ""
    session_key: str
    started_at: datetime
    paused: bool = False
    position_ms: int | None = None
    reported_at: datetime  # the last play/pause/resume/progress emitted
    reported_position: int | None = None
    details: PlaybackDetails


class ClosedPlayback(msgspec.Struct, kw_only=True):
    """A playback stopped a moment ago, remembered to recognise late echoes of it."""

    session_id: str
    item_id: str
    play_session_id: str = ""
    session_key: str
    closed_at: datetime
    position_ms: int | None = None


class MachineState(msgspec.Struct, kw_only=True):
    """Everything the machine knows, per server id then session id; JSON-serialisable with
    :meth:`dump` / :meth:`load`."""

    version: int = STATE_VERSION
    open: dict[str, dict[str, OpenPlayback]] = msgspec.field(default_factory=dict)
    closed: dict[str, list[ClosedPlayback]] = msgspec.field(default_factory=dict)

    def dump(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> MachineState:
        """Read a dumped state; raise ValueError if it is not one."""
        try:
            return msgspec.convert(data, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"unreadable session state: {exc}") from None


class SessionMachine:
    """The state machine of every session of every server of one source (``jellyfin`` or
    ``emby``).

    >>> from datetime import UTC, datetime
    >>> machine = SessionMachine("jellyfin")
    >>> seen = Observation(
    ...     session_id="s1", item_id="i1", position_ms=0,
    ...     details=PlaybackDetails(user_id="u1", media_type="movie", title="Heat"),
    ... )
    >>> now = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
    >>> [e.event_type.value for e in machine.snapshot("srv", [seen], now)]
    ['play']
    >>> machine.snapshot("srv", [seen], now)
    []
    >>> [e.event_type.value for e in machine.snapshot("srv", [], now)]
    ['stop']
    """

    def __init__(
        self,
        source: str,
        *,
        progress_interval: float | None = DEFAULT_PROGRESS_INTERVAL,
        echo_window: float = DEFAULT_ECHO_WINDOW,
        state: MachineState | None = None,
    ) -> None:
        self.source = source
        self.progress_interval = progress_interval
        self.echo_window = echo_window
        self.state = state if state is not None else MachineState()

    # ------------------------------------------------------------------ inputs

    def snapshot(
        self,
        server_id: str,
        playing: Iterable[Observation],
        now: datetime,
        *,
        unknown: Collection[str] = (),
    ) -> list[MediaEvent]:
        """A full list of the server's sessions (a WebSocket ``Sessions`` push).

        ``playing`` holds the sessions that play something; every open playback of a session
        not in it is stopped, except sessions named in ``unknown`` (present but unreadable:
        their state is kept as it was).
        """
        events: list[MediaEvent] = []
        seen: set[str] = set(unknown)
        for observation in playing:
            seen.add(observation.session_id)
            events += self.report(server_id, observation, now)
        sessions = self.state.open.get(server_id, {})
        for session_id in sorted(set(sessions) - seen):
            events += self._close(server_id, sessions[session_id], now, None, None)
        self._prune(server_id, now)
        return events

    def report(self, server_id: str, observation: Observation, now: datetime) -> list[MediaEvent]:
        """One session's current state (a webhook ``PlaybackStart``/``PlaybackProgress``, or
        one entry of a snapshot); other sessions are left alone."""
        self._prune(server_id, now)
        sessions = self.state.open.setdefault(server_id, {})
        current = sessions.get(observation.session_id)
        events: list[MediaEvent] = []
        if current is not None and not _same_playback(current, observation):
            events += self._close(server_id, current, now, None, observation.raw)
            current = None
        if current is None:
            if self._is_echo(server_id, observation, now):
                return events
            return events + self._open(server_id, observation, now)
        return events + self._advance(server_id, current, observation, now)

    def end(self, server_id: str, observation: Observation, now: datetime) -> list[MediaEvent]:
        """A session reports its playback stopped (a webhook ``PlaybackStop``).

        A stop of a playback never seen (the ingestor started after it began) is reported
        alone; a stop of one already closed is an echo and emits nothing.
        """
        self._prune(server_id, now)
        sessions = self.state.open.setdefault(server_id, {})
        current = sessions.get(observation.session_id)
        if current is not None and _same_playback(current, observation):
            current.details = _merge(current.details, observation.details)
            return self._close(server_id, current, now, observation.position_ms, observation.raw)
        events: list[MediaEvent] = []
        if current is not None:  # the session moved on to another item meanwhile
            events += self._close(server_id, current, now, None, observation.raw)
        if self._closed_match(server_id, observation) is not None:
            return events
        playback = self._new_playback(observation, now)
        return events + self._close(
            server_id, playback, now, observation.position_ms, observation.raw, opened=False
        )

    # ------------------------------------------------------------------ queries

    def open_playbacks(self, server_id: str) -> dict[str, OpenPlayback]:
        """The open playbacks of ``server_id``, by session id (do not modify)."""
        return self.state.open.get(server_id, {})

    # ------------------------------------------------------------------ transitions

    def _open(self, server_id: str, seen: Observation, now: datetime) -> list[MediaEvent]:
        playback = self._new_playback(seen, now)
        self.state.open.setdefault(server_id, {})[seen.session_id] = playback
        events = [self._event(server_id, playback, EventType.PLAY, now, seen.position_ms, seen.raw)]
        if seen.paused:
            playback.paused = True
            events.append(
                self._event(server_id, playback, EventType.PAUSE, now, seen.position_ms, seen.raw)
            )
        return events

    def _new_playback(self, seen: Observation, now: datetime) -> OpenPlayback:
        started = now - timedelta(milliseconds=seen.position_ms or 0)
        started = started.replace(microsecond=started.microsecond // 1000 * 1000)
        # first-seen time, not the start: two playbacks of one item in one session can
        # reconstruct the same start (a stop, then the same item resumed), never the same
        # first sighting
        key = seen.play_session_id or f"{seen.session_id}:{seen.item_id}:{_epoch_ms(now)}"
        return OpenPlayback(
            session_id=seen.session_id,
            item_id=seen.item_id,
            play_session_id=seen.play_session_id,
            session_key=key,
            started_at=started,
            paused=False,
            position_ms=seen.position_ms,
            reported_at=now,
            reported_position=seen.position_ms,
            details=seen.details,
        )

    def _advance(
        self, server_id: str, playback: OpenPlayback, seen: Observation, now: datetime
    ) -> list[MediaEvent]:
        playback.details = _merge(playback.details, seen.details)
        if seen.position_ms is not None:
            playback.position_ms = seen.position_ms
        paused = playback.paused if seen.paused is None else seen.paused
        kind: EventType | None = None
        if paused and not playback.paused:
            kind = EventType.PAUSE
        elif playback.paused and not paused:
            kind = EventType.RESUME
        elif not paused and self._progress_due(playback, now):
            kind = EventType.PROGRESS
        if kind is None:
            return []
        playback.paused = paused
        playback.reported_at = now
        playback.reported_position = playback.position_ms
        return [self._event(server_id, playback, kind, now, playback.position_ms, seen.raw)]

    def _progress_due(self, playback: OpenPlayback, now: datetime) -> bool:
        if self.progress_interval is None or playback.position_ms is None:
            return False
        if (now - playback.reported_at).total_seconds() < self.progress_interval:
            return False
        return playback.reported_position is None or (
            playback.position_ms > playback.reported_position
        )

    def _close(
        self,
        server_id: str,
        playback: OpenPlayback,
        now: datetime,
        position_ms: int | None,
        raw: str | None,
        *,
        opened: bool = True,
    ) -> list[MediaEvent]:
        if position_ms is not None:
            playback.position_ms = position_ms
        if opened:
            self.state.open.get(server_id, {}).pop(playback.session_id, None)
        self.state.closed.setdefault(server_id, []).append(
            ClosedPlayback(
                session_id=playback.session_id,
                item_id=playback.item_id,
                play_session_id=playback.play_session_id,
                session_key=playback.session_key,
                closed_at=now,
                position_ms=playback.position_ms,
            )
        )
        return [self._event(server_id, playback, EventType.STOP, now, playback.position_ms, raw)]

    # ------------------------------------------------------------------ echoes

    def _closed_match(self, server_id: str, seen: Observation) -> ClosedPlayback | None:
        for closed in reversed(self.state.closed.get(server_id, [])):
            if closed.session_id != seen.session_id or closed.item_id != seen.item_id:
                continue
            if closed.play_session_id and seen.play_session_id:
                if closed.play_session_id == seen.play_session_id:
                    return closed
                continue
            return closed
        return None

    def _is_echo(self, server_id: str, seen: Observation, now: datetime) -> bool:
        closed = self._closed_match(server_id, seen)
        if closed is None:
            return False
        if closed.play_session_id and closed.play_session_id == seen.play_session_id:
            return True  # the server said it is the same playback: it is over
        if (now - closed.closed_at).total_seconds() > self.echo_window:
            return False
        if closed.position_ms is None or seen.position_ms is None:
            return True
        return seen.position_ms <= closed.position_ms + _ECHO_SLACK_MS

    def _prune(self, server_id: str, now: datetime) -> None:
        """Forget closed playbacks older than the echo window (and keep the list short)."""
        closed = self.state.closed.get(server_id)
        if not closed:
            return
        horizon = now - timedelta(seconds=max(self.echo_window, 3600.0))
        kept = [c for c in closed if c.closed_at >= horizon][-500:]
        if kept:
            self.state.closed[server_id] = kept
        else:
            del self.state.closed[server_id]

    # ------------------------------------------------------------------ events

    def _event(
        self,
        server_id: str,
        playback: OpenPlayback,
        kind: EventType,
        now: datetime,
        position_ms: int | None,
        raw: str | None,
    ) -> MediaEvent:
        if kind in (EventType.PLAY, EventType.STOP):
            identity: tuple[object, ...] = (kind.value, playback.session_key)
        else:
            identity = (kind.value, playback.session_key, position_ms, _epoch_ms(now))
        details = msgspec.structs.asdict(playback.details)
        duration_ms = details.pop("media_duration_ms")
        if duration_ms is None and details["media_duration"]:
            duration_ms = details["media_duration"] * 1000
        return MediaEvent(
            event_id=make_event_id(self.source, server_id, *identity),
            event_type=kind,
            occurred_at=now,
            source=self.source,
            server_id=server_id,
            session_key=playback.session_key,
            started_at=playback.started_at,
            stopped_at=now if kind is EventType.STOP else None,
            position_ms=position_ms,
            percent_complete=percent_of(position_ms, duration_ms),
            raw_payload=raw,
            **details,
        )


def _same_playback(playback: OpenPlayback, seen: Observation) -> bool:
    if playback.item_id != seen.item_id:
        return False
    if playback.play_session_id and seen.play_session_id:
        return playback.play_session_id == seen.play_session_id
    return True


def _merge(known: PlaybackDetails, new: PlaybackDetails) -> PlaybackDetails:
    """The newer details, keeping known values the newer report left empty."""
    changes = {
        name: value
        for name, value in msgspec.structs.asdict(new).items()
        if value not in ("", None) and value != getattr(known, name)
    }
    return msgspec.structs.replace(known, **changes) if changes else known


def _epoch_ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


# ---------------------------------------------------------------------------------------
# reading Jellyfin/Emby ``Sessions`` entries (SessionInfoDto)


def ticks_to_ms(ticks: object) -> int | None:
    """.NET ticks (100 ns) to whole milliseconds.

    >>> ticks_to_ms(6_000_000_000), ticks_to_ms(None)
    (600000, None)
    """
    if ticks is None:
        return None
    if isinstance(ticks, bool) or not isinstance(ticks, int | float):
        raise UnreadableSession(f"ticks must be a number, got {ticks!r}")
    if not -(2**63) <= ticks < 2**63:  # .NET ticks are an Int64; this also refuses NaN, inf
        raise UnreadableSession(f"ticks must be a 64-bit integer, got {ticks!r}")
    return max(0, int(ticks) // TICKS_PER_MS)


def media_type(item_type: str) -> str:
    """Jellyfin/Emby item ``Type`` -> canonical media type.

    >>> media_type("Episode"), media_type("Audio"), media_type("Book")
    ('episode', 'track', 'book')
    """
    return MEDIA_TYPES.get(item_type, item_type.lower() or "unknown")


def strip_port(endpoint: str) -> str:
    """The IP of a ``RemoteEndPoint`` (which may carry a port, brackets, or a v4-mapped v6).

    >>> strip_port("192.168.1.20:53211"), strip_port("[2001:db8::1]:443"), strip_port("::1")
    ('192.168.1.20', '2001:db8::1', '::1')
    >>> strip_port("::ffff:10.0.0.5")
    '10.0.0.5'
    """
    value = endpoint.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    if value.lower().startswith("::ffff:") and value.count(".") == 3:
        value = value[7:]
    return value


def resolution(height: object) -> str:
    """A video height -> Plex-style resolution label (``4k``, ``1080``, ``720``, ``sd``...)."""
    if not isinstance(height, int) or isinstance(height, bool) or height <= 0:
        return ""
    for floor, label in ((1800, "4k"), (1000, "1080"), (700, "720"), (560, "576"), (440, "480")):
        if height >= floor:
            return label
    return "sd"


def observe_session(entry: object) -> Observation | None:
    """Read one ``Sessions`` entry: an :class:`Observation` if it plays something, ``None``
    if it is idle. Raise :class:`UnreadableSession` naming what is wrong.

    Jellyfin item ids are 32-hex strings, Emby's numeric strings (or numbers): both become
    ``rating_key`` strings. Positions are ticks (100 ns), converted to ms.
    """
    if not isinstance(entry, dict):
        raise UnreadableSession(f"a session is a JSON {type(entry).__name__}, not an object")
    session_id = _id(entry.get("Id"))
    if not session_id:
        raise UnreadableSession("a session has no Id")
    item = entry.get("NowPlayingItem")
    if item is None:
        return None
    if not isinstance(item, dict):
        raise UnreadableSession(f"session {session_id}: NowPlayingItem is not an object")
    item_id = _id(item.get("Id"))
    if not item_id:
        raise UnreadableSession(f"session {session_id}: NowPlayingItem has no Id")
    user_id = _id(entry.get("UserId"))
    if not user_id:
        raise UnreadableSession(f"session {session_id}: a playing session without UserId")
    state = entry.get("PlayState") or {}
    if not isinstance(state, dict):
        raise UnreadableSession(f"session {session_id}: PlayState is not an object")
    try:
        position = ticks_to_ms(state.get("PositionTicks"))
        duration_ms = ticks_to_ms(item.get("RunTimeTicks"))
    except UnreadableSession as exc:
        raise UnreadableSession(f"session {session_id}: {exc}") from None
    video, audio = _streams(item.get("MediaStreams"))
    transcoding = entry.get("TranscodingInfo")
    transcoding = transcoding if isinstance(transcoding, dict) else {}
    bitrate = _int(transcoding.get("Bitrate")) or _int(video.get("BitRate"))
    item_type = _str(item.get("Type"))
    details = PlaybackDetails(
        user_id=user_id,
        username=_str(entry.get("UserName")),
        media_type=media_type(item_type),
        title=_str(item.get("Name")) or item_id,
        **_hierarchy(item, item_type),
        rating_key=item_id,
        year=_int(item.get("ProductionYear")),
        # no library: NowPlayingItem's ParentId is the item's folder (a season, a movie's
        # folder), not its library, and the Sessions frame names no collection; the events
        # leave library_id/library_name empty rather than guess
        media_duration=None if duration_ms is None else duration_ms // 1000,
        media_duration_ms=duration_ms,
        platform=_str(entry.get("Client")),
        player=_str(entry.get("DeviceName")),
        product=_str(entry.get("Client")),
        product_version=_str(entry.get("ApplicationVersion")),
        device=_str(entry.get("DeviceType")),
        machine_id=_str(entry.get("DeviceId")),
        ip_address=strip_port(_str(entry.get("RemoteEndPoint"))),
        transcode_decision=PLAY_METHODS.get(_str(state.get("PlayMethod")), ""),
        video_resolution=resolution(video.get("Height")),
        video_codec=_str(video.get("Codec")),
        audio_codec=_str(audio.get("Codec")),
        audio_channels=_int(audio.get("Channels")),
        stream_bitrate=bitrate // 1000 if bitrate else None,
    )
    return Observation(
        session_id=session_id,
        item_id=item_id,
        play_session_id=_str(state.get("PlaySessionId") or entry.get("PlaySessionId")),
        position_ms=position,
        paused=state.get("IsPaused") is True,
        details=details,
        raw=_raw(entry),
    )


def observe_sessions(entries: Sequence[object]) -> tuple[list[Observation], set[str], list[str]]:
    """Read a whole ``Sessions`` push: (playing sessions, ids of unreadable sessions,
    one problem line per unreadable session)."""
    playing: list[Observation] = []
    unknown: set[str] = set()
    problems: list[str] = []
    for entry in entries:
        try:
            seen = observe_session(entry)
        except UnreadableSession as exc:
            problems.append(str(exc))
            if isinstance(entry, dict) and _id(entry.get("Id")):
                unknown.add(_id(entry.get("Id")))
            continue
        if seen is not None:
            playing.append(seen)
    return playing, unknown, problems


def _hierarchy(item: dict[str, Any], item_type: str) -> dict[str, str]:
    if item_type == "Episode":
        return {
            "parent_title": _str(item.get("SeasonName")),
            "grandparent_title": _str(item.get("SeriesName")),
        }
    if item_type == "Audio":
        artists = item.get("Artists")
        first_artist = artists[0] if isinstance(artists, list) and artists else ""
        return {
            "parent_title": _str(item.get("Album")),
            "grandparent_title": _str(item.get("AlbumArtist")) or _str(first_artist),
        }
    return {}


def _streams(streams: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first video and the default (else first) audio stream of the playing source."""
    video: dict[str, Any] = {}
    audio: dict[str, Any] = {}
    if not isinstance(streams, list):
        return video, audio
    for stream in streams:
        if not isinstance(stream, dict):
            continue
        if stream.get("Type") == "Video" and not video:
            video = stream
        elif stream.get("Type") == "Audio" and (not audio or stream.get("IsDefault") is True):
            audio = stream
    return video, audio


def _raw(entry: dict[str, Any]) -> str:
    """The entry as received, without the client's device profile (``Capabilities``), which
    describes the app, not the playback, and can be tens of kilobytes."""
    trimmed = {k: v for k, v in entry.items() if k != "Capabilities"}
    return json.dumps(trimmed, separators=(",", ":"), ensure_ascii=False)


def _id(value: object) -> str:
    """An upstream id as a string (Emby sends numeric ids as numbers in places)."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return value.strip() if isinstance(value, str) else ""


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
