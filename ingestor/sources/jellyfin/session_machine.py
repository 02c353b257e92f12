"""Jellyfin and Emby session reports in, playback transitions out: the per-session state machine.

Jellyfin and Emby never say "a playback started": their WebSocket pushes the full list of
sessions (``Sessions``), and the webhook plugin reports one session at a time. Both are read
into :class:`~ingestor.sources.jellyfin.mapping.Observation` s
(:mod:`ingestor.sources.jellyfin.mapping`); this module turns the observations into
:class:`~ingestor.events.MediaEvent` transitions. It is pure: no I/O, no clock (every call is
given ``now``), so the same reports always give the same events.

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

A report whose events could never be stored is refused as a whole: an event that is invalid
(:meth:`~ingestor.events.MediaEvent.validate`) or over
:data:`~ingestor.sources.base.MAX_EVENT_BYTES` encoded (:class:`EventTooLarge`, an upstream
field that large: NATS refuses the message), or details that would make the playback's stop
too large. :meth:`SessionMachine.report` and :meth:`SessionMachine.end` then raise
:class:`~ingestor.errors.InvalidEvent` with the session put back as it was, so a later report
of it works as if the refused one never came; :meth:`SessionMachine.snapshot` keeps such a
session as it was (as an unreadable one) and names it in ``refused``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import msgspec

from ingestor.errors import InvalidEvent
from ingestor.events import EventType, MediaEvent, make_event_id, percent_of
from ingestor.sources.base import check_event_size
from ingestor.sources.jellyfin.mapping import Observation, PlaybackDetails

DEFAULT_PROGRESS_INTERVAL = 300.0
DEFAULT_ECHO_WINDOW = 30.0
STATE_VERSION = 1

# A reported position counts as "moved on" past a stop when it is this far beyond it.
_ECHO_SLACK_MS = 2_000


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
        refused: dict[str, str] | None = None,
    ) -> list[MediaEvent]:
        """A full list of the server's sessions (a WebSocket ``Sessions`` push).

        ``playing`` holds the sessions that play something; every open playback of a session
        not in it is stopped, except sessions named in ``unknown`` (present but unreadable:
        their state is kept as it was). A session whose report is refused (its events could
        not be stored) is kept as it was too, and ``refused`` gets its id and the reason.
        """
        events: list[MediaEvent] = []
        seen: set[str] = set(unknown)
        for observation in playing:
            seen.add(observation.session_id)
            try:
                events += self.report(server_id, observation, now)
            except InvalidEvent as exc:
                if refused is not None:
                    refused[observation.session_id] = str(exc)
        sessions = self.state.open.get(server_id, {})
        for session_id in sorted(set(sessions) - seen):
            events += self._close(server_id, sessions[session_id], now, None, None)
        self._prune(server_id, now)
        return events

    def report(self, server_id: str, observation: Observation, now: datetime) -> list[MediaEvent]:
        """One session's current state (a webhook ``PlaybackStart``/``PlaybackProgress``, or
        one entry of a snapshot); other sessions are left alone.

        Raise :class:`~ingestor.errors.InvalidEvent` (:class:`EventTooLarge` for the size),
        the session as it was, when the report's events could not be stored.
        """
        self._prune(server_id, now)
        return self._refusable(self._report, server_id, observation, now)

    def end(self, server_id: str, observation: Observation, now: datetime) -> list[MediaEvent]:
        """A session reports its playback stopped (a webhook ``PlaybackStop``).

        A stop of a playback never seen (the ingestor started after it began) is reported
        alone; a stop of one already closed is an echo and emits nothing. Refused as
        :meth:`report` is.
        """
        self._prune(server_id, now)
        return self._refusable(self._end, server_id, observation, now)

    def check_report(self, server_id: str, observation: Observation, now: datetime) -> None:
        """Raise :class:`~ingestor.errors.InvalidEvent` (:class:`EventTooLarge` for the size)
        if the report alone, as the ``play`` of a new playback (its details and its raw
        text), could not be stored, whatever the state; the state is neither read nor
        changed. A webhook checks each notification so, and gets one answer for it whether
        or not the state makes it emit something."""
        playback = self._new_playback(observation, now)
        _check(
            self._event(
                server_id, playback, EventType.PLAY, now, observation.position_ms, observation.raw
            )
        )

    def _report(self, server_id: str, observation: Observation, now: datetime) -> list[MediaEvent]:
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

    def _end(self, server_id: str, observation: Observation, now: datetime) -> list[MediaEvent]:
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

    def _refusable(
        self,
        step: Callable[[str, Observation, datetime], list[MediaEvent]],
        server_id: str,
        seen: Observation,
        now: datetime,
    ) -> list[MediaEvent]:
        """The events of ``step`` (:meth:`_report` or :meth:`_end`), each checked; if one
        could not be stored, or the session's playback took details its stop could not
        carry, put the session back as it was (its open playback, and the closed list, which
        a step only appends to) and raise."""
        sessions = self.state.open.setdefault(server_id, {})
        session_id = seen.session_id
        before = sessions.get(session_id)
        saved = msgspec.structs.replace(before) if before is not None else None
        had_closed = server_id in self.state.closed
        closed_count = len(self.state.closed.get(server_id, ()))
        try:
            events = step(server_id, seen, now)
            for event in events:
                _check(event)
            playback = sessions.get(session_id)
            if (
                not events
                and playback is not None
                and saved is not None
                and playback.details is not saved.details
            ):  # new details and no event to check them: the stop must still fit
                _check(
                    self._event(
                        server_id, playback, EventType.STOP, now, playback.position_ms, None
                    )
                )
        except InvalidEvent:
            if saved is None:
                sessions.pop(session_id, None)
            else:
                sessions[session_id] = saved
            if had_closed:
                del self.state.closed[server_id][closed_count:]
            else:
                self.state.closed.pop(server_id, None)
            raise
        return events

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


def _check(event: MediaEvent) -> None:
    """Raise :class:`~ingestor.errors.InvalidEvent` unless ``event`` can be stored."""
    check_event_size(event.validate())


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
