"""The projection as of an instant, on either clock, from the event log.

:func:`replay` answers "what did the projection say as of ``T``?" for an
:class:`~workbench.log.EventLog` (archive segments, then the stream's tail). The log is first
projected in full by the ingestor's own write path (:func:`ingestor.rebuild.rebuild`, the same
one ``ingestor replay`` runs: docs/architecture.md, invariant 2), once per log: the projection
is kept for the log's lifetime and later calls only project what the log gained since. The
answer for ``T`` is then read from that projection with set-based queries
(:mod:`ingestor.projection.asof`), without replaying anything. "As of T" names its clock
(invariant 6):

* ``clock="recorded"``: what the system knew at ``T``, the messages the log had recorded by
  then (stream time ``recorded_at <= T``): a prefix of the log, a state the live projection
  actually passed through, exactly what a projection fed that prefix from scratch holds.
* ``clock="occurred"``: what had happened by ``T``, as known now: the events whose
  ``occurred_at <= T``, whenever the log learned of them, each in the playback today's dedup
  decisions put it in, and each playback folded from those of its events. (Bitemporally:
  valid time ``T``, as known at the log's end. A report that arrived after ``T`` about a
  viewing before ``T`` counts, and a link a later report made stands.)

The result is a :class:`Replay`: a read-only connection on which the projection's tables are
their state as of ``T``, with polars helpers, usable by :mod:`workbench.temporal`,
:mod:`workbench.stats` and :mod:`workbench.audit`.

Example (an offline log of a simulated feed; in a notebook, ``await replay(...)`` directly)::

    >>> import asyncio, tempfile
    >>> from datetime import UTC, datetime
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> log = simulated_log(Path(tmp.name))
    >>> with asyncio.run(replay(log, progress=False)) as everything:
    ...     everything.counts()["playbacks"]
    9
    >>> seven = datetime(2026, 1, 5, 19, tzinfo=UTC)
    >>> with asyncio.run(replay(log, seven, progress=False)) as early:
    ...     (early.clock, early.as_of.isoformat(), early.playbacks().height)
    ('recorded', '2026-01-05T19:00:00+00:00', 2)
    >>> tmp.cleanup()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import duckdb
import polars as pl

from ingestor.archive import archive_segments, write_segment
from ingestor.events import MediaEvent, encode_event
from ingestor.pipeline import Message
from ingestor.progress import Progress
from ingestor.projection import (
    CLOCKS,
    AsOfStats,
    Clock,
    Projection,
    open_as_of,
    resolve,
    write_as_of,
)
from ingestor.rebuild import DEFAULT_CHUNK, rebuild
from ingestor.simulation import SimulationConfig, simulate
from workbench.log import EventLog

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(messages_read, messages_to_read)`` while the log is projected, and
once more as ``progress(n, n)`` when the replay is complete."""

PROGRESS_MIN_MESSAGES = 20_000
"""``progress=True`` shows a bar (stderr) only when at least this many messages are to be
projected."""

SELECT_PLAYBACKS = "SELECT * FROM playback_events ORDER BY started_at, correlation_key"
SELECT_EVENTS = "SELECT * FROM media_events_detail ORDER BY seq"
SELECT_AUDIT = "SELECT * FROM dedupe_audit_log ORDER BY seq, audit_id"

DB_NAME = "projection.duckdb"


def aware_utc(value: datetime | str, name: str = "until") -> datetime:
    """``value`` (a datetime, or ISO 8601 text as notebook parameters give it) in UTC. A
    naive value is refused: its instant is ambiguous.

    >>> from datetime import timedelta, timezone
    >>> aware_utc(datetime(2026, 1, 5, 21, tzinfo=timezone(timedelta(hours=1)))).isoformat()
    '2026-01-05T20:00:00+00:00'
    >>> aware_utc("2026-01-05T21:00:00Z").isoformat()
    '2026-01-05T21:00:00+00:00'
    >>> aware_utc(datetime(2026, 1, 5, 21))
    Traceback (most recent call last):
    ...
    ValueError: until must be timezone-aware (e.g. datetime(2026, 1, 5, 21, tzinfo=UTC) or \
'2026-01-05T21:00:00+00:00'); got the naive 2026-01-05 21:00:00
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{name} must be an ISO 8601 time with a zone, such as "
                f"'2026-01-05T21:00:00+00:00'; got {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(
            f"{name} must be timezone-aware (e.g. datetime(2026, 1, 5, 21, tzinfo=UTC) or "
            f"'2026-01-05T21:00:00+00:00'); got the naive {value}"
        )
    return value.astimezone(UTC)


@dataclass(frozen=True)
class ReplayStats:
    """What answering took."""

    messages: int  # log messages projected by this call (0: the projection was current)
    projected: int  # of those, the events, decisions and alerts fed to the projection
    rejected: int  # of those, messages that are not a readable event, decision or alert
    seconds: float  # the whole call
    playbacks_refolded: int = 0  # playbacks the instant cuts through, folded again
    as_of_seconds: float = 0.0  # answering from the projection (no projecting)


class Replay:
    """The projection as of an instant: read-only, queried with SQL.

    Made by :func:`replay` and :meth:`workbench.Workbench.as_of`; close it (or use it as a
    context manager) to release what it holds.

    Attributes: ``as_of`` (the instant, UTC, or ``None`` for now), ``clock`` (``"recorded"``
    or ``"occurred"``), ``last_seq`` (the log sequence the state is as of: on the recorded
    clock the last one recorded by ``as_of`` that the projection holds a row for; on the
    occurred clock the projection's checkpoint), ``con`` (the DuckDB connection), ``path``
    (the DuckDB file when one was written for it, else None), ``stats``.
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        as_of: datetime | None,
        clock: Clock,
        last_seq: int,
        stats: ReplayStats,
        path: Path | None = None,
        keep: object = None,
    ) -> None:
        self._con = con
        self.as_of = as_of
        self.clock: Clock = clock
        self.last_seq = last_seq
        self.stats = stats
        self.path = path
        self._keep = keep  # what the connection reads from: kept open while this is
        self._finalizer = weakref.finalize(self, _release, con)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The read-only DuckDB connection (time zone UTC)."""
        self._check_open()
        return self._con

    @property
    def projection(self) -> Projection:
        """The state as a :class:`ingestor.projection.Projection` view (for its readers)."""
        return Projection.over(self.con)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        """Run a read-only query with bound parameters; the result as a polars frame.

        >>> import asyncio, tempfile
        >>> from pathlib import Path
        >>> tmp = tempfile.TemporaryDirectory()
        >>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
        >>> r.sql("SELECT count(*) AS n FROM media_events WHERE source = $s", {"s": "jellyfin"})
        shape: (1, 1)
        ┌─────┐
        │ n   │
        │ --- │
        │ i64 │
        ╞═════╡
        │ 22  │
        └─────┘
        >>> r.close(); tmp.cleanup()
        """
        con = self.con
        statements = con.extract_statements(query)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise ValueError("a Replay is read-only: send exactly one SELECT statement")
        relation = con.sql(query, params=params)
        if relation is None:
            raise ValueError(f"not a query that returns rows: {query!r}")
        return relation.pl()

    def playbacks(self) -> pl.DataFrame:
        """``playback_events``: one row per playback, by start.

        >>> import asyncio, tempfile
        >>> from pathlib import Path
        >>> tmp = tempfile.TemporaryDirectory()
        >>> with asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False)) as r:
        ...     r.playbacks().select("source", "sources", "state").row(0)
        ('plex', ['plex', 'tautulli'], 'stopped')
        >>> tmp.cleanup()
        """
        return self.sql(SELECT_PLAYBACKS)

    def events(self) -> pl.DataFrame:
        """Every accepted event (``media_events_detail``: all fields typed), by sequence."""
        return self.sql(SELECT_EVENTS)

    def audit(self) -> pl.DataFrame:
        """``dedupe_audit_log``: every drop and link, by sequence."""
        return self.sql(SELECT_AUDIT)

    def counts(self) -> dict[str, int]:
        """Row counts: accepted events, playbacks, drops per tier, links."""
        return self.projection.counts()

    def close(self) -> None:
        """Release the connection. Closing twice is harmless."""
        self._finalizer()
        self._keep = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        as_of = self.as_of.isoformat() if self.as_of is not None else None
        state = "closed" if self.closed else str(self.path or "as-of view")
        return f"Replay(as_of={as_of!r}, clock={self.clock!r}, last_seq={self.last_seq}, {state})"

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("this Replay is closed")


def _release(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):
        con.close()


def answer_as_of(
    con: duckdb.DuckDBPyConnection,
    until: datetime | None,
    clock: Clock,
    *,
    keep: object = None,
    rebuilt: ReplayStats | None = None,
    started: float | None = None,
) -> Replay:
    """A :class:`Replay` of the projection ``con`` holds, as of ``until`` on ``clock``
    (blocking: call it off the event loop). ``keep`` is held while the Replay is open."""
    began = time.perf_counter()
    point = resolve(con, until, clock)
    cursor, answered = open_as_of(con, point)
    return Replay(
        cursor,
        as_of=until,
        clock=clock,
        last_seq=point.known_seq,
        stats=_stats(rebuilt, answered, started if started is not None else began),
        keep=keep,
    )


def _stats(rebuilt: ReplayStats | None, answered: AsOfStats, started: float) -> ReplayStats:
    base = rebuilt or ReplayStats(0, 0, 0, 0.0)
    return ReplayStats(
        base.messages,
        base.projected,
        base.rejected,
        time.perf_counter() - started,
        answered.playbacks_refolded,
        answered.seconds,
    )


# --------------------------------------------------------------------------- the log's projection


class _Rebuilt:
    """The projection of one log, kept in a temporary directory while the log lives."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.directory = Path(tempfile.mkdtemp(prefix="workbench-replay-"))
        self.projection = Projection(self.directory / DB_NAME)
        self.lock: asyncio.Lock | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._finalizer = weakref.finalize(self, _discard, self.projection.con, str(self.directory))

    def guard(self) -> asyncio.Lock:
        """One refresh at a time (a lock of the running loop: doctests start several)."""
        loop = asyncio.get_running_loop()
        if self.lock is None or self.loop is not loop:
            self.lock, self.loop = asyncio.Lock(), loop
        return self.lock


def _discard(con: duckdb.DuckDBPyConnection, directory: str) -> None:
    with contextlib.suppress(duckdb.Error):
        con.close()
    shutil.rmtree(directory, ignore_errors=True)


_REBUILT: weakref.WeakKeyDictionary[EventLog, dict[float, _Rebuilt]] = weakref.WeakKeyDictionary()
_REFRESHING: set[asyncio.Task[ReplayStats]] = set()  # refreshes running, kept referenced


async def projection_of(
    log: EventLog,
    *,
    tolerance: float = 10.0,
    progress: bool | ProgressCallback = True,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[_Rebuilt, ReplayStats]:
    """The full projection of ``log``, brought up to the log's end (only what the log gained
    since the last call is projected), and what bringing it there took."""
    kept = _REBUILT.setdefault(log, {})
    rebuilt = kept.get(tolerance)
    if rebuilt is None:
        rebuilt = kept[tolerance] = await asyncio.to_thread(_Rebuilt, tolerance)

    async def refresh() -> ReplayStats:
        async with rebuilt.guard():
            report = _Reporter(progress)
            done = await rebuild(
                log, rebuilt.projection, tolerance=tolerance, chunk=chunk, progress=report
            )
            report.finish(done.messages)
        return ReplayStats(done.messages, done.projected, done.rejected, done.seconds)

    # a caller that gives up (a superseded slider move, a timeout) leaves the refresh to
    # finish: cut off between a chunk's commit and the lock's release, the next refresh
    # would apply that chunk twice
    task = asyncio.ensure_future(refresh())
    _REFRESHING.add(task)
    task.add_done_callback(_REFRESHING.discard)
    return rebuilt, await asyncio.shield(task)


async def log_as_of(
    log: EventLog,
    until: datetime | None,
    clock: Clock,
    *,
    tolerance: float = 10.0,
    progress: bool | ProgressCallback = False,
    chunk: int = DEFAULT_CHUNK,
) -> Replay:
    """The log's own projection (:func:`projection_of`) as of ``until`` on ``clock``."""
    started = time.perf_counter()
    rebuilt, done = await projection_of(log, tolerance=tolerance, progress=progress, chunk=chunk)
    return await asyncio.to_thread(
        answer_as_of,
        rebuilt.projection.con,
        until,
        clock,
        keep=rebuilt,
        rebuilt=done,
        started=started,
    )


async def replay(
    log: EventLog,
    until: datetime | str | None = None,
    clock: Clock = "recorded",
    *,
    path: Path | None = None,
    progress: bool | ProgressCallback = True,
    tolerance: float = 10.0,
    chunk: int = DEFAULT_CHUNK,
) -> Replay:
    """The projection of ``log`` as of ``until`` (inclusive) on ``clock``.

    ``until=None`` is the whole log as it is when the call starts. ``until`` must be
    timezone-aware (a datetime, or ISO 8601 text with a zone). ``tolerance`` is the dedup
    link tolerance in seconds (the ingestor's ``DEDUP_TOLERANCE``). ``progress``: True shows a
    bar on stderr while a long log is projected, False nothing, or a callable (see
    :data:`ProgressCallback`). ``chunk``: messages projected at once (bounds memory).

    The first call for a log projects all of it (about 100,000 events a second); later calls
    project only what the log gained, then answer from the projection in well under a
    second whatever the instant. ``path``: also write the state as of ``until`` to a new
    DuckDB file there (it must not exist), a projection file of its own that stays after
    the Replay is closed.

    Audit decisions (``audit.>``), alerts (``alert.>``) and identity records
    (``identity.>``) are projected where the log has them, as the router does. Messages
    that cannot be read (undecodable payloads) are skipped as the router skips them, and
    counted in ``stats.rejected``.

    >>> import asyncio, tempfile
    >>> from datetime import UTC, datetime
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> log = simulated_log(Path(tmp.name))
    >>> evening = datetime(2026, 1, 5, 22, 57, tzinfo=UTC)
    >>> known = asyncio.run(replay(log, evening, "recorded", progress=False))
    >>> happened = asyncio.run(replay(log, evening, "occurred", progress=False))
    >>> known.last_seq, happened.last_seq  # what was recorded then; what is known now
    (39, 55)
    >>> known.stats.messages, happened.stats.messages  # the log was projected once
    (55, 0)
    >>> known.close(); happened.close(); tmp.cleanup()
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be 'recorded' or 'occurred', got {clock!r}")
    cut = aware_utc(until) if until is not None else None
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 seconds, got {tolerance}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if path is not None and Path(path).exists():
        raise FileExistsError(
            f"{path} exists; a replay writes a new file (remove it or pick another path)"
        )
    answer = await log_as_of(log, cut, clock, tolerance=tolerance, progress=progress, chunk=chunk)
    if path is None:
        return answer
    try:
        await asyncio.to_thread(write_as_of, answer.con, Path(path))
    finally:
        answer.close()
    projection = await asyncio.to_thread(Projection, Path(path), read_only=True)
    return Replay(
        projection.con,
        as_of=cut,
        clock=clock,
        last_seq=answer.last_seq,
        stats=answer.stats,
        path=Path(path),
    )


class _Reporter:
    def __init__(self, progress: bool | ProgressCallback) -> None:
        self.progress = progress
        self.callback: ProgressCallback | None = progress if callable(progress) else None
        self.bar: Progress | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.callback is not None:
            self.callback(done, total)
        elif self.progress and self.bar is None and total >= PROGRESS_MIN_MESSAGES:
            self.bar = Progress("projecting the event log", total=total)
        if self.bar is not None:
            self.bar.update(done)

    def finish(self, done: int) -> None:
        if self.callback is not None:
            self.callback(done, done)
        if self.bar is not None:
            self.bar.total = done
            self.bar.update(done)
            self.bar.close()


# --------------------------------------------------------------------------- a demo log


def archive_events(
    archive_dir: Path,
    events: Iterable[MediaEvent],
    *,
    segment_messages: int = 1000,
    segment_bytes: int | None = None,
    received: Sequence[datetime] | None = None,
) -> int:
    """Write ``events`` to ``archive_dir`` as a live ingestor would have archived them, and
    return how many: archive segments, in publish order, one message per event, sequences
    from 1. Each message's ``recorded_at`` is when its delivery was ``received`` (the
    simulator's :attr:`~ingestor.simulation.Simulation.received`), never before the message
    published ahead of it; without ``received``, the latest ``occurred_at`` published so far.
    A segment is sealed at ``segment_messages`` messages, or before its events' bytes (data
    and subject) would pass ``segment_bytes``. ``archive_dir`` must hold no segment.

    >>> import tempfile
    >>> from ingestor.simulation import SimulationConfig, simulate
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     feed = simulate(SimulationConfig(users=2, days=1)).events
    ...     n = archive_events(Path(tmp), feed, segment_messages=20)
    ...     n, len(archive_segments(Path(tmp)))
    (55, 3)
    """
    archive_dir.mkdir(parents=True, exist_ok=True)
    if archive_segments(archive_dir):
        raise ValueError(f"{archive_dir} already holds archive segments")
    segment: list[Message] = []
    size = seq = 0
    recorded = datetime.min.replace(tzinfo=UTC)
    for seq, event in enumerate(events, start=1):
        at = received[seq - 1] if received is not None else event.occurred_at
        recorded = max(recorded, at)
        data, subject = encode_event(event), event.subject
        grown = size + len(data) + len(subject)
        full = len(segment) >= segment_messages or (segment_bytes and grown > segment_bytes)
        if segment and full:
            write_segment(archive_dir, segment)
            segment, grown = [], len(data) + len(subject)
        segment.append(Message(seq, recorded, data, subject))
        size = grown
    if segment:
        write_segment(archive_dir, segment)
    return seq


def simulated_log(
    archive_dir: Path,
    config: SimulationConfig | None = None,
    *,
    segment_messages: int = 1000,
) -> EventLog:
    """An offline :class:`EventLog` of a simulated feed (for examples, demos and tests).

    The simulator's feed (default: 2 users over 1 day) is written to ``archive_dir`` as
    archive segments, in publish order, one message per event. Each message's
    ``recorded_at`` is when the simulator's ingestor received it (webhooks and Jellyfin
    pushes when they happen; a Tautulli row, which happened at its stop, at the pass that
    read it, up to 5 minutes later; a row read again when it is re-sent). ``archive_dir``
    must hold no segment (:func:`archive_events` writes them).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     log = simulated_log(Path(tmp))
    ...     asyncio.run(log.last_seq())
    55
    """
    sim = simulate(config or SimulationConfig(users=2, days=1))
    archive_events(
        archive_dir, sim.events, segment_messages=segment_messages, received=sim.received
    )
    return EventLog(archive_dir)


__all__ = [
    "CLOCKS",
    "Clock",
    "ProgressCallback",
    "Replay",
    "ReplayStats",
    "answer_as_of",
    "archive_events",
    "aware_utc",
    "log_as_of",
    "projection_of",
    "replay",
    "simulated_log",
]
