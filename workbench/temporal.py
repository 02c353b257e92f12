"""Temporal queries over a projection: what was playing at an instant, what changed in a
window, one playback's whole story, one user's timeline.

Every function takes a :class:`~workbench.replay.Replay`, an
:class:`ingestor.projection.Projection`, or a DuckDB connection to a projection file, and
returns a polars frame whose times are UTC-aware. Instants must be timezone-aware.

"At an instant" always means **event time** (``occurred_at``, and the playbacks'
``started_at``/``stopped_at``), never the wall clock, so a replay gives the same answer today
and next year (docs/architecture.md, invariant 6). :func:`changes_between` names its clock.

The projection answers from what it holds: a :class:`~workbench.replay.Replay` as of ``T``
knows nothing recorded (or, on the occurred clock, happened) after ``T``.

Example::

    >>> import asyncio, tempfile
    >>> from datetime import UTC, datetime
    >>> from pathlib import Path
    >>> from workbench.replay import replay, simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
    >>> nine = datetime(2026, 1, 5, 21, tzinfo=UTC)
    >>> active_at(r, nine).select("username", "title", "state_at").rows()
    [('dana', 'The Glass Summer', 'playing'), ('bruno', 'Letter of the Last', 'paused'), \
('bruno', 'Letter of the Last', 'paused')]
    >>> r.close(); tmp.cleanup()
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from workbench.db import ProjectionSource
from workbench.db import query as _query
from workbench.log import EventLog
from workbench.replay import CLOCKS, Clock, Replay, aware_utc, replay

# --------------------------------------------------------------------------- SQL

ACTIVE_AT_SQL = """
WITH active AS (
    SELECT * FROM playback_events
    WHERE started_at <= $instant AND (stopped_at IS NULL OR stopped_at > $instant)
),
lifecycle AS (
    SELECT correlation_key,
           arg_max(event_type, (occurred_at, seq)) AS state_event,
           max(occurred_at) AS state_event_at
    FROM media_events
    WHERE event_type <> 'summary'
      AND occurred_at <= $instant
      AND correlation_key IN (SELECT correlation_key FROM active)
    GROUP BY correlation_key
)
SELECT active.*,
       CASE WHEN lifecycle.state_event = 'pause' THEN 'paused' ELSE 'playing' END AS state_at,
       lifecycle.state_event,
       lifecycle.state_event_at
FROM active LEFT JOIN lifecycle USING (correlation_key)
ORDER BY active.started_at, active.correlation_key
"""

_PLAYBACK_HISTORY = """
SELECT e.seq, e.recorded_at, e.occurred_at, e.source, e.session_key, e.event_type,
       e.event_id, e.dedup_action, a.tier, a.reason, a.similarity_score, a.kept_event_id,
       a.status, e.position_ms, e.started_at, e.stopped_at
FROM media_events_detail e
LEFT JOIN dedupe_audit_log a ON a.seq = e.seq AND a.event_id = e.event_id
WHERE e.correlation_key = $key
UNION ALL
SELECT a.seq, a.recorded_at, a.occurred_at, a.source, a.session_key, a.event_type,
       a.event_id, a.action, a.tier, a.reason, a.similarity_score, a.kept_event_id,
       a.status, NULL, a.started_at, NULL
FROM dedupe_audit_log a
WHERE a.kept_correlation_key = $key AND a.action = 'drop'
"""
PLAYBACK_HISTORY_SQL: dict[Clock, str] = {
    "occurred": _PLAYBACK_HISTORY + "ORDER BY occurred_at, seq",
    "recorded": _PLAYBACK_HISTORY + "ORDER BY seq",
}

_STATE = """CASE
        WHEN count(*) FILTER (WHERE t <= ${at}) = 0 THEN 'absent'
        WHEN coalesce(bool_or(event_type IN ('stop', 'summary')) FILTER (WHERE t <= ${at}),
                      false) THEN 'stopped'
        WHEN arg_max(event_type, (occurred_at, seq))
                 FILTER (WHERE event_type <> 'summary' AND t <= ${at}) = 'pause' THEN 'paused'
        ELSE 'playing'
    END"""
_CHANGES_BETWEEN = """
WITH ev AS (
    SELECT correlation_key, seq, event_type, occurred_at, source, {t} AS t FROM media_events
),
dropped AS (
    SELECT kept_correlation_key AS correlation_key, count(*) AS dropped
    FROM dedupe_audit_log
    WHERE action = 'drop' AND kept_correlation_key <> '' AND {t} > $t1 AND {t} <= $t2
    GROUP BY kept_correlation_key
),
touched AS (
    SELECT correlation_key FROM ev WHERE t > $t1 AND t <= $t2
    UNION
    SELECT correlation_key FROM dropped
),
folded AS (
    SELECT correlation_key,
           {state_t1} AS state_t1,
           {state_t2} AS state_t2,
           count(*) FILTER (WHERE t > $t1 AND t <= $t2) AS events,
           list(event_type ORDER BY t, seq) FILTER (WHERE t > $t1 AND t <= $t2) AS event_types,
           list(DISTINCT source ORDER BY source) FILTER (WHERE t > $t1 AND t <= $t2)
               AS event_sources,
           min(seq) FILTER (WHERE t > $t1 AND t <= $t2) AS first_seq,
           max(seq) FILTER (WHERE t > $t1 AND t <= $t2) AS last_seq
    FROM ev
    WHERE correlation_key IN (SELECT correlation_key FROM touched)
    GROUP BY correlation_key
)
SELECT f.correlation_key, p.server_id, p.user_id, p.username, p.media_type, p.title,
       p.grandparent_title, p.started_at, p.stopped_at,
       f.state_t1, f.state_t2,
       f.state_t1 = 'absent' AS started,
       f.state_t1 <> 'stopped' AND f.state_t2 = 'stopped' AS stopped,
       f.events, coalesce(d.dropped, 0) AS dropped,
       coalesce(f.event_types, []) AS event_types,
       coalesce(f.event_sources, []) AS event_sources,
       f.first_seq, f.last_seq
FROM folded f
JOIN playback_events p USING (correlation_key)
LEFT JOIN dropped d USING (correlation_key)
ORDER BY p.started_at, f.correlation_key
"""
CHANGES_BETWEEN_SQL: dict[Clock, str] = {
    clock: _CHANGES_BETWEEN.format(
        t=column,
        state_t1=_STATE.replace("${at}", "$t1"),
        state_t2=_STATE.replace("${at}", "$t2"),
    )
    for clock, column in (("recorded", "recorded_at"), ("occurred", "occurred_at"))
}

USER_TIMELINE_SQL = """
WITH theirs AS (
    SELECT * FROM playback_events
    WHERE user_id = $user_id
      AND ($server_id IS NULL OR server_id = $server_id)
      AND ($end IS NULL OR started_at <= $end)
      AND ($start IS NULL OR stopped_at IS NULL OR stopped_at > $start)
),
steps AS (
    SELECT correlation_key,
           list({
               'seq': seq, 'occurred_at': occurred_at, 'recorded_at': recorded_at,
               'source': source, 'event_type': event_type, 'position_ms': position_ms,
               'dedup_action': dedup_action
           } ORDER BY occurred_at, seq) AS events
    FROM media_events_detail
    WHERE correlation_key IN (SELECT correlation_key FROM theirs)
    GROUP BY correlation_key
)
SELECT theirs.*, steps.events
FROM theirs LEFT JOIN steps USING (correlation_key)
ORDER BY theirs.started_at, theirs.correlation_key
"""

# --------------------------------------------------------------------------- helpers


def _clock(clock: str) -> Clock:
    if clock not in CLOCKS:
        raise ValueError(f"clock must be 'recorded' or 'occurred', got {clock!r}")
    return clock  # type: ignore[return-value]


# --------------------------------------------------------------------------- queries


def active_at(projection: ProjectionSource, instant: datetime | str) -> pl.DataFrame:
    """The playbacks active at ``instant`` (event time): ``started_at <= instant`` and not
    stopped by then (``stopped_at`` null or after ``instant``: a playback stopped at ``t`` is
    not active at ``t``).

    Columns: every ``playback_events`` column (``state`` is the playback's state as the
    projection knows it now), then ``state_at`` (``"playing"`` or ``"paused"`` at the
    instant), ``state_event`` and ``state_event_at`` (the last lifecycle event at or before
    the instant, which sets ``state_at``). ``state_at`` follows the fold's rule on the events
    that had happened by the instant: paused when the latest lifecycle event (by event time,
    then sequence; summaries are not lifecycle events) is a ``pause``, otherwise playing. A
    playback reported only by a summary has no lifecycle events: ``"playing"``.

    >>> import asyncio, tempfile
    >>> from datetime import UTC, datetime
    >>> from pathlib import Path
    >>> from workbench.replay import replay, simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
    >>> at = datetime(2026, 1, 5, 22, 20, tzinfo=UTC)
    >>> active_at(r, at).select("title", "state_at", "state_event").rows()
    [('The Bitter Horizon', 'playing', 'resume'), ('Pilot', 'paused', 'pause')]
    >>> r.close(); tmp.cleanup()
    """
    return _query(projection, ACTIVE_AT_SQL, {"instant": aware_utc(instant, "instant")})


def playback_history(
    projection: ProjectionSource, correlation_key: str, *, clock: Clock = "occurred"
) -> pl.DataFrame:
    """Everything the log said about one playback, from every source, in order.

    One row per report: the accepted events of the playback (``dedup_action`` ``open``,
    ``fold`` or ``link``) and the reports dropped as repeats of it (``drop``, from
    ``dedupe_audit_log``). Columns: ``seq``, ``recorded_at``, ``occurred_at``, ``source``,
    ``session_key``, ``event_type``, ``event_id``, ``dedup_action``, then the audit row's
    ``tier``, ``reason``, ``similarity_score``, ``kept_event_id``, ``status`` (null for events
    that were neither dropped nor linked), and ``position_ms``, ``started_at``, ``stopped_at``.

    ``clock="occurred"`` orders by event time (then sequence); ``"recorded"`` by stream
    sequence, the order the dedup decided in. An unknown key gives an empty frame.

    >>> import asyncio, tempfile
    >>> from pathlib import Path
    >>> from workbench.replay import replay, simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
    >>> key = r.playbacks().filter(title="The Bitter Horizon")["correlation_key"].item()
    >>> playback_history(r, key).select("source", "event_type", "dedup_action").rows()
    [('plex', 'play', 'open'), ('plex', 'pause', 'fold'), ('plex', 'resume', 'fold'), \
('plex', 'scrobble', 'fold'), ('plex', 'stop', 'fold'), ('tautulli', 'summary', 'link')]
    >>> r.close(); tmp.cleanup()
    """
    sql = PLAYBACK_HISTORY_SQL[_clock(clock)]
    return _query(projection, sql, {"key": correlation_key})


def changes_between(
    projection: ProjectionSource,
    t1: datetime | str,
    t2: datetime | str,
    *,
    clock: Clock = "recorded",
) -> pl.DataFrame:
    """What changed between two instants: one row per playback touched in ``(t1, t2]``.

    A playback is touched when one of its reports falls in the window on ``clock``: on the
    ``"recorded"`` clock (default), reports the log *recorded* in the window (what the system
    learned then, late reports included); on ``"occurred"``, reports of transitions that
    *happened* in the window. Dropped repeats count as reports (column ``dropped``).

    ``state_t1`` and ``state_t2`` are the playback's state at each instant from its events
    with a clock time at or before it, by the fold's rule: ``"absent"`` (none yet),
    ``"stopped"`` (a stop or a summary), ``"paused"`` (latest lifecycle event a pause), or
    ``"playing"``. On the recorded clock this is exactly the state a
    :func:`~workbench.replay.replay` as of that instant shows, since such a replay is the
    prefix of the log recorded by then. On the occurred clock, events are grouped into
    playbacks as ``projection`` groups them.

    ``started``: the playback was absent at ``t1`` (its first report is in the window);
    ``stopped``: it was not stopped at ``t1`` and is at ``t2``. Also ``events`` (accepted
    reports in the window), ``event_types`` and ``event_sources`` (in clock order),
    ``first_seq``/``last_seq`` of those, and the playback's identity and final times.

    ``projection`` must hold the log up to ``t2`` at least (a Replay as of an earlier
    instant is refused); ``t1`` must be before ``t2``.

    >>> import asyncio, tempfile
    >>> from datetime import UTC, datetime
    >>> from pathlib import Path
    >>> from workbench.replay import replay, simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
    >>> t1, t2 = (datetime(2026, 1, 5, h, m, tzinfo=UTC) for h, m in ((21, 0), (21, 40)))
    >>> changes = changes_between(r, t1, t2)
    >>> changes.select("title", "state_t1", "state_t2", "started", "stopped").rows()
    [('The Glass Summer', 'playing', 'stopped', False, True), \
('Letter of the Last', 'paused', 'playing', False, False), \
('Letter of the Last', 'paused', 'stopped', False, True), \
('The Bitter Horizon', 'absent', 'playing', True, False)]
    >>> r.close(); tmp.cleanup()
    """
    chosen = _clock(clock)
    start, end = aware_utc(t1, "t1"), aware_utc(t2, "t2")
    if start >= end:
        raise ValueError(f"t1 must be before t2, got t1={start} and t2={end}")
    if isinstance(projection, Replay) and projection.as_of and projection.as_of < end:
        raise ValueError(
            f"the replay is as of {projection.as_of.isoformat()} ({projection.clock} clock), "
            f"before t2={end.isoformat()}: replay to t2 or later"
        )
    return _query(projection, CHANGES_BETWEEN_SQL[chosen], {"t1": start, "t2": end})


async def changes_in_log(
    log: EventLog,
    t1: datetime | str,
    t2: datetime | str,
    *,
    clock: Clock = "recorded",
    tolerance: float = 10.0,
) -> pl.DataFrame:
    """:func:`changes_between` straight from the event log: replays ``log`` as of ``t2`` on
    ``clock`` (a temporary projection, removed afterwards) and reports the window's changes.

    >>> import asyncio, tempfile
    >>> from pathlib import Path
    >>> from workbench.replay import simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> log = simulated_log(Path(tmp.name))
    >>> window = ("2026-01-05T22:50:00+00:00", "2026-01-05T23:00:00+00:00")
    >>> changes = asyncio.run(changes_in_log(log, *window))
    >>> changes.select("title", "state_t2", "event_types").rows()
    [('The Bitter Horizon', 'stopped', ['scrobble', 'stop', 'summary'])]
    >>> tmp.cleanup()
    """
    with await replay(log, t2, clock, progress=False, tolerance=tolerance) as as_of_t2:
        return changes_between(as_of_t2, t1, t2, clock=clock)


def user_timeline(
    projection: ProjectionSource,
    user_id: str,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    *,
    server_id: str | None = None,
) -> pl.DataFrame:
    """One user's playbacks in time order (by ``started_at``), each with its events.

    ``start``/``end`` keep the playbacks that were active at some moment of the window:
    started at or before ``end`` and not stopped by ``start`` (a playback stopped exactly at
    ``start`` is left out, as :func:`active_at` leaves it out). ``server_id`` narrows to one
    server (user ids are per server). Columns: every ``playback_events`` column and
    ``events``, a list of structs (``seq``, ``occurred_at``, ``recorded_at``, ``source``,
    ``event_type``, ``position_ms``, ``dedup_action``) in event-time order.

    >>> import asyncio, tempfile
    >>> from pathlib import Path
    >>> from workbench.replay import replay, simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
    >>> timeline = user_timeline(r, "29466577")
    >>> [(row["title"], len(row["events"])) for row in timeline.iter_rows(named=True)]
    [('The Glass Summer', 5), ('The Glass Summer', 6), ('The Bitter Horizon', 6), \
('The Lost River', 1)]
    >>> r.close(); tmp.cleanup()
    """
    params = {
        "user_id": str(user_id),
        "server_id": server_id,
        "start": aware_utc(start, "start") if start is not None else None,
        "end": aware_utc(end, "end") if end is not None else None,
    }
    return _query(projection, USER_TIMELINE_SQL, params)


__all__ = [
    "ACTIVE_AT_SQL",
    "CHANGES_BETWEEN_SQL",
    "PLAYBACK_HISTORY_SQL",
    "USER_TIMELINE_SQL",
    "ProjectionSource",
    "active_at",
    "changes_between",
    "changes_in_log",
    "playback_history",
    "user_timeline",
]
