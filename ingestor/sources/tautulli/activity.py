"""Live sessions from Tautulli's ``get_activity``, turned into play/pause/resume/stop.

``get_activity`` has no start time. A session's start is Tautulli's own ``started`` for it,
read from ``get_history&include_activity=1`` (the in-progress row with the same
``session_key``). That is exactly the ``started`` of the history row Tautulli writes when the
session ends, so the transitions and the final summary meet within the dedup tolerance
whatever the poll interval. A new session whose start Tautulli does not list yet is held back
to the next poll (if it ends first, only its summary is recorded). Transitions are emitted
under the source ``tautulli_activity`` with ``session_key``
``"<session_key>:<rating_key>:<started>"`` (Plex reuses session keys), so the summary (source
``tautulli``) *links* to the playback they opened instead of opening a second one; the dedup
links reports of different sources only. Open sessions (state, playhead, last seen) are kept
in the sync's state file: an unchanged session is never reported twice, across restarts too.
A session missing from ``get_activity`` stopped: its stop time is the history row's
``stopped`` when Tautulli already wrote it, else the detection time (or the last time it was
seen, after a long gap such as a restart). ``buffering`` is neither playing nor paused.

**Plex unreachable.** Tautulli still answers ``get_activity``, with success and ``data: {}``
(no ``sessions``): no live activity is known. That is a state of the source
(``health.state`` ``no_live_activity``, in ``/status``), not an error: one warning when it
begins, one info when it ends; open sessions are left as they are until activity is known
again.

What a session's entry says becomes event fields in :mod:`ingestor.sources.tautulli.mapping`
(:func:`~ingestor.sources.tautulli.mapping.live_fields`,
:func:`~ingestor.sources.tautulli.mapping.activity_event`); this module decides which
transitions happened.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from ingestor.errors import InvalidEvent
from ingestor.events import EventType, MediaEvent
from ingestor.sink import Sink
from ingestor.sources.base import SourceHealth, receipt_time
from ingestor.sources.http import UpstreamBadResponse
from ingestor.sources.tautulli.client import TautulliClient, history_page
from ingestor.sources.tautulli.cursor import PassResult
from ingestor.sources.tautulli.mapping import (
    activity_event,
    as_id,
    as_int,
    as_text,
    is_in_progress,
    live_fields,
    live_percent,
    live_session_key,
)

log = logging.getLogger(__name__)

NO_LIVE_ACTIVITY = "no_live_activity"  # health state: get_activity knows no sessions


class OpenSession(msgspec.Struct):
    """A live session the activity poll reported a play for and no stop yet."""

    key: str  # Tautulli's live identity, "<session_key>:<rating_key>"
    session: str  # our session_key, "<session_key>:<rating_key>:<started>"
    started: int  # Tautulli's ``started`` (epoch seconds)
    state: str  # playing | paused
    last_seen: float  # epoch seconds
    fields: dict[str, Any]  # the MediaEvent fields every transition of it carries
    view_offset: int | None = None
    percent: float | None = None


class LiveActivity:
    """The open live sessions of every server of one Tautulli, and the poll that moves them.

    ``open`` (server id -> live key -> :class:`OpenSession`) is persisted by the owner
    (:class:`~ingestor.sources.tautulli.sync.TautulliSync`) after each poll.
    """

    def __init__(
        self, url: str, sink: Sink, health: SourceHealth, *, activity_interval: float
    ) -> None:
        self.url = url
        self.sink = sink
        self.health = health
        self.activity_interval = activity_interval
        self.open: dict[str, dict[str, OpenSession]] = {}
        self._rejected: set[str] = set()  # sessions whose play was invalid, said once

    def load(self, stored: Mapping[str, Any]) -> None:
        for server, sessions in stored.items():
            self.open[server] = {
                key: msgspec.convert(value, OpenSession) for key, value in sessions.items()
            }

    def dump(self) -> dict[str, Any]:
        return {
            s: {k: msgspec.to_builtins(v) for k, v in sessions.items()}
            for s, sessions in self.open.items()
        }

    async def poll(self, api: TautulliClient, server_id: str) -> PassResult | None:
        """One ``get_activity`` poll: the transitions since the last one, stored through the
        sink; ``None`` when Tautulli knows no live activity (its Plex does not answer)."""
        data = await api.call("get_activity")
        if isinstance(data, dict) and not data:
            self._unknown()
            return None
        sessions = data.get("sessions") if isinstance(data, dict) else None
        if not isinstance(sessions, list):
            raise UpstreamBadResponse(f"Tautulli at {self.url}: get_activity has no sessions")
        if self.health.set_state(None):
            log.info(
                "Tautulli at %s knows its live activity again",
                self.url,
                extra={"source": self.health.name},
            )
        now = receipt_time()
        live: dict[str, dict[str, Any]] = {}
        for session in sessions:
            key = live_session_key(session)
            if key is not None:
                live[key] = session
        known = self.open.get(server_id, {})
        opened: dict[str, OpenSession] = {}
        events: list[MediaEvent] = []
        for key, session in known.items():
            if key not in live:
                events.append(await self._stop_event(api, server_id, session, now))
        new = [live[key] for key in live if key not in known]
        starts = await self._starts(api, new) if new else {}
        for key, raw in live.items():
            previous = known.get(key)
            if previous is None:
                started = starts.get(key)
                if started is None:
                    log.info("Tautulli %s: start of live session %s not known yet", self.url, key)
                    continue
                session = _open_session(key, raw, started, now)
                try:
                    first = [_transition(EventType.PLAY, server_id, session, raw, at=None)]
                    if as_text(raw.get("state")) == "paused":
                        session.state = "paused"
                        first.append(_transition(EventType.PAUSE, server_id, session, raw, at=now))
                except InvalidEvent as exc:
                    if session.session not in self._rejected:
                        self._rejected.add(session.session)
                        log.error("Tautulli %s: live session skipped: %s", self.url, exc)
                        self.health.failure(str(exc))
                    continue
                events += first
                opened[key] = session
                continue
            session = msgspec.structs.replace(
                previous,
                view_offset=as_int(raw.get("view_offset")),
                percent=live_percent(raw),
                last_seen=now.timestamp(),
            )
            state = as_text(raw.get("state"))
            if state == "paused" and previous.state == "playing":
                session.state = "paused"
                events.append(_transition(EventType.PAUSE, server_id, session, raw, at=now))
            elif state == "playing" and previous.state == "paused":
                session.state = "playing"
                events.append(_transition(EventType.RESUME, server_id, session, raw, at=now))
            opened[key] = session
        result = PassResult(rows=len(live), events=len(events))
        if events:
            stats = await self.sink.emit(events)
            result.stored, result.duplicate = stats.stored, stats.duplicate
        self.open[server_id] = opened
        return result

    def _unknown(self) -> None:
        """``get_activity`` answered success with ``data: {}``: Tautulli cannot reach Plex
        (``plexpy/webserve.py`` ``get_activity`` when ``get_current_activity`` got nothing).
        Open sessions stay open: whether they went on is not known."""
        detail = (
            "Tautulli answers get_activity without sessions: its Plex server does not answer, "
            "so live sessions are not followed (history still syncs)"
        )
        if self.health.set_state(NO_LIVE_ACTIVITY, detail):
            log.warning(
                "Tautulli at %s: %s",
                self.url,
                detail,
                extra={"source": self.health.name, "state": NO_LIVE_ACTIVITY},
            )
        self.health.success(0)

    async def _starts(self, api: TautulliClient, sessions: list[dict[str, Any]]) -> dict[str, int]:
        """Tautulli's ``started`` of new live sessions, from its in-progress history rows."""
        starts: dict[str, int] = {}
        asked: set[tuple[str, str]] = set()
        for session in sessions:
            query = (as_id(session.get("user_id")), as_id(session.get("rating_key")))
            if query in asked:
                continue
            asked.add(query)
            rows = await self._history_rows(api, *query, include_activity=True)
            for row in rows:
                if not is_in_progress(row):
                    continue
                key = f"{as_id(row.get('session_key'))}:{as_id(row.get('rating_key'))}"
                started = as_int(row.get("started"))
                if started:
                    starts[key] = started
        return starts

    async def _history_rows(
        self, api: TautulliClient, user_id: str, rating_key: str, *, include_activity: bool
    ) -> list[dict[str, Any]]:
        data = await api.call(
            "get_history",
            grouping=0,
            include_activity=1 if include_activity else 0,
            user_id=user_id or None,
            rating_key=rating_key or None,
            order_column="started",
            order_dir="desc",
            start=0,
            length=25,
        )
        rows, _ = history_page(data, self.url)
        return [row for row in rows if isinstance(row, dict)]

    async def _stop_event(
        self, api: TautulliClient, server_id: str, session: OpenSession, now: datetime
    ) -> MediaEvent:
        """The stop of a session gone from ``get_activity``, timed by its history row."""
        stopped: datetime | None = None
        raw: dict[str, Any] | None = None
        try:
            rows = await self._history_rows(
                api,
                session.fields.get("user_id", ""),
                session.fields.get("rating_key", ""),
                include_activity=False,
            )
        except UpstreamBadResponse as exc:
            log.warning("cannot time the stop of %s: %s", session.session, exc)
            rows = []
        for row in rows:
            if not is_in_progress(row) and as_int(row.get("started")) == session.started:
                stop_s = as_int(row.get("stopped"))
                if stop_s:
                    stopped, raw = datetime.fromtimestamp(stop_s, UTC), row
                    break
        if stopped is None:
            gap = now.timestamp() - session.last_seen
            if gap <= 2 * self.activity_interval + 5:
                stopped = now
            else:
                stopped = datetime.fromtimestamp(session.last_seen, UTC)
        return _transition(EventType.STOP, server_id, session, raw, at=stopped)


def _open_session(key: str, raw: Mapping[str, Any], started: int, now: datetime) -> OpenSession:
    fields = live_fields(raw)
    session_key = key.split(":", 1)[0]
    return OpenSession(
        key=key,
        session=f"{session_key}:{as_id(raw.get('rating_key'))}:{started}",
        started=started,
        state="playing",
        last_seen=now.timestamp(),
        fields=fields,
        view_offset=as_int(raw.get("view_offset")),
        percent=live_percent(raw),
    )


def _transition(
    kind: EventType,
    server_id: str,
    session: OpenSession,
    raw: Mapping[str, Any] | None,
    *,
    at: datetime | None,
) -> MediaEvent:
    return activity_event(
        kind,
        server_id,
        session_key=session.session,
        started=session.started,
        fields=session.fields,
        view_offset=session.view_offset,
        percent=session.percent,
        raw=raw,
        at=at,
    )


__all__ = ["NO_LIVE_ACTIVITY", "LiveActivity", "OpenSession"]
