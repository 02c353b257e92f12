"""Replay the event log into a fresh projection as of an instant, on either clock.

:func:`replay` reads an :class:`~workbench.log.EventLog` (archive segments, then the stream's
tail) and folds it with the ingestor's own write path: :func:`ingestor.pipeline.decode_messages`
then one :meth:`ingestor.pipeline.Pipeline.project` call over a new DuckDB file, exactly as
``ingestor replay`` does (ARCHITECTURE invariant 2). "As of T" names its clock (invariant 6):

* ``clock="recorded"``: what the system knew at ``T``, the messages the log had recorded by
  then (stream time ``recorded_at <= T``). The log is read in sequence order and reading stops
  at the first message recorded after ``T``: the replay is a prefix of the log, a state the
  live projection actually passed through.
* ``clock="occurred"``: what had happened by ``T``, the events whose ``occurred_at <= T``,
  whenever the log learned of them. The whole log is read and filtered by event time.

The result is a :class:`Replay`: a read-only view of the rebuilt projection with polars
helpers, usable by :mod:`workbench.temporal`.

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
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

import duckdb
import polars as pl

from ingestor.archive import archive_segments, write_segment
from ingestor.dedup import DedupIndex
from ingestor.events import MediaEvent, encode_event
from ingestor.gctune import tuned_gc
from ingestor.pipeline import Message, Pipeline, decode_messages
from ingestor.progress import Progress
from ingestor.projection import Projection
from ingestor.sources.simulator import SimulationConfig, simulate
from workbench.log import EventLog
from workbench.snapshots import Snapshots

logger = logging.getLogger(__name__)

Clock = Literal["recorded", "occurred"]
CLOCKS: tuple[Clock, ...] = ("recorded", "occurred")

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(messages_read, messages_in_log)`` after each batch read, and once
more as ``progress(n, n)`` when the replay is complete."""

DEFAULT_CHUNK = 250_000
"""Decoded events held in memory before they are projected. A log slice below this is
projected in one call; a larger one in slices of this size, which gives the same rows (the
fold is set-based and the dedup index sees every earlier event)."""

DEFAULT_SNAPSHOT_EVERY = 50_000
"""With a ``snapshot_dir``, events between two snapshots: a replay from the nearest one
projects at most this many (about 3 s on 2 cores), and each costs a copy of the projection
file (1M events: 20 copies of up to ~150 MB)."""

PROGRESS_MIN_MESSAGES = 20_000
"""``progress=True`` shows a bar (stderr) only for logs at least this long."""

SELECT_PLAYBACKS = "SELECT * FROM playback_events ORDER BY started_at, correlation_key"
SELECT_EVENTS = "SELECT * FROM media_events_detail ORDER BY seq"
SELECT_AUDIT = "SELECT * FROM dedupe_audit_log ORDER BY seq, audit_id"

DB_NAME = "replay.duckdb"


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
    """What a replay read and kept."""

    messages: int  # log messages read (recorded clock: up to the first one after ``until``)
    projected: int  # decoded events fed to the projection (after the clock's filter)
    rejected: int  # messages that are not a readable event, decision or alert
    seconds: float


class Replay:
    """A projection rebuilt from the log as of an instant: read-only, queried with SQL.

    Made by :func:`replay`; close it (or use it as a context manager) to release the DuckDB
    file, and to delete it when the replay made a temporary one.

    Attributes: ``as_of`` (the ``until`` instant, UTC, or ``None`` for the whole log),
    ``clock`` (``"recorded"`` or ``"occurred"``), ``last_seq`` (the last stream sequence the
    replay read: its checkpoint; on the recorded clock, the last message recorded by
    ``as_of``), ``path`` (the DuckDB file), ``projection`` (an
    :class:`ingestor.projection.Projection` opened read-only), ``stats``.
    """

    def __init__(
        self,
        path: Path,
        *,
        as_of: datetime | None,
        clock: Clock,
        last_seq: int,
        stats: ReplayStats,
        temporary_dir: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.as_of = as_of
        self.clock: Clock = clock
        self.last_seq = last_seq
        self.stats = stats
        self.projection = Projection(self.path, read_only=True)
        self._finalizer = weakref.finalize(
            self, _release, self.projection.con, str(temporary_dir) if temporary_dir else None
        )

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The read-only DuckDB connection (time zone UTC)."""
        return self.projection.con

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
        │ 23  │
        └─────┘
        >>> r.close(); tmp.cleanup()
        """
        self._check_open()
        relation = self.con.sql(query, params=params)
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
        self._check_open()
        return self.projection.counts()

    def close(self) -> None:
        """Close the DuckDB file (and delete it if the replay made it in a temporary
        directory). Closing twice is harmless."""
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        as_of = self.as_of.isoformat() if self.as_of is not None else None
        state = "closed" if self.closed else str(self.path)
        return f"Replay(as_of={as_of!r}, clock={self.clock!r}, last_seq={self.last_seq}, {state})"

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("this Replay is closed")


def _release(con: duckdb.DuckDBPyConnection, temporary_dir: str | None) -> None:
    with contextlib.suppress(duckdb.Error):
        con.close()
    if temporary_dir is not None:
        shutil.rmtree(temporary_dir, ignore_errors=True)


async def replay(
    log: EventLog,
    until: datetime | str | None = None,
    clock: Clock = "recorded",
    *,
    path: Path | None = None,
    progress: bool | ProgressCallback = True,
    tolerance: float = 10.0,
    chunk: int = DEFAULT_CHUNK,
    snapshot_dir: Path | None = None,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
) -> Replay:
    """Rebuild the projection from ``log`` as of ``until`` (inclusive) on ``clock``.

    ``until=None`` replays the whole log as it is when the call starts. ``until`` must be
    timezone-aware (a datetime, or ISO 8601 text with a zone). ``path`` is where the DuckDB
    file is written (it must not exist); by default a temporary file, deleted when the
    :class:`Replay` is closed. ``tolerance`` is the dedup link tolerance in seconds (the
    ingestor's ``DEDUP_TOLERANCE``). ``progress``: True shows a bar on stderr for long logs,
    False nothing, or a callable (see :data:`ProgressCallback`). ``chunk``: see
    :data:`DEFAULT_CHUNK`.

    ``snapshot_dir`` (recorded clock only) keeps copies of the projection as of sequences
    the replay passed (every ``snapshot_every`` events), and starts a later replay from the
    newest copy that the log had recorded by ``until``: only the messages after it are
    projected, the way a restarted ingestor resumes from its checkpoint (ARCHITECTURE
    invariant 1). A copy is used only if the log still holds the very message it ends at
    (its hash is checked), so a copy of another log is never used. See
    :mod:`workbench.snapshots`.

    Audit decisions (``audit.>``) and alerts (``alert.>``) are projected where the log has
    them, as the router does. Messages that cannot be read (undecodable payloads) are skipped
    as the router skips them, and counted in ``stats.rejected``.

    >>> import asyncio, tempfile
    >>> from datetime import UTC, datetime
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> log = simulated_log(Path(tmp.name))
    >>> evening = datetime(2026, 1, 5, 22, 57, tzinfo=UTC)
    >>> known = asyncio.run(replay(log, evening, "recorded", progress=False))
    >>> happened = asyncio.run(replay(log, evening, "occurred", progress=False))
    >>> known.stats.projected, happened.stats.projected
    (37, 38)
    >>> known.close(); happened.close(); tmp.cleanup()
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be 'recorded' or 'occurred', got {clock!r}")
    cut = aware_utc(until) if until is not None else None
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 seconds, got {tolerance}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    temporary_dir: Path | None = None
    if path is None:
        temporary_dir = Path(tempfile.mkdtemp(prefix="replay-"))
        target = temporary_dir / DB_NAME
    else:
        target = Path(path)
        if target.exists():
            raise FileExistsError(
                f"{target} exists; a replay writes a new file (remove it or pick another path)"
            )
    try:
        with tuned_gc():  # a third of a large replay went to collections otherwise
            if snapshot_dir is not None and clock == "recorded":
                chunk = min(chunk, snapshot_every)  # a snapshot is taken after a projection
            last_seq, stats = await _build(
                log, target, cut, clock, progress, tolerance, chunk, snapshot_dir
            )
    except BaseException:
        # a half-built projection is not the log as of anything: leave nothing behind
        if temporary_dir is not None:
            shutil.rmtree(temporary_dir, ignore_errors=True)
        else:
            for leftover in (target, target.with_name(target.name + ".wal")):
                leftover.unlink(missing_ok=True)
        raise
    try:
        return await asyncio.to_thread(
            Replay,
            target,
            as_of=cut,
            clock=clock,
            last_seq=last_seq,
            stats=stats,
            temporary_dir=temporary_dir,
        )
    except BaseException:
        if temporary_dir is not None:
            shutil.rmtree(temporary_dir, ignore_errors=True)
        raise


async def _build(
    log: EventLog,
    target: Path,
    until: datetime | None,
    clock: Clock,
    progress: bool | ProgressCallback,
    tolerance: float,
    chunk: int,
    snapshot_dir: Path | None = None,
) -> tuple[int, ReplayStats]:
    """Read, decode, filter and project; the projection file is closed when this returns."""
    started = asyncio.get_running_loop().time()
    snapshots = Snapshots(snapshot_dir, tolerance) if snapshot_dir and clock == "recorded" else None
    bounds = await log.bounds()
    stop_seq = bounds.last_seq
    if bounds.first_seq > 1:
        logger.warning(
            "the log starts at sequence %d: earlier messages aged out of the stream and are "
            "not in the archive, so the replay lacks them (point the EventLog at ARCHIVE_DIR)",
            bounds.first_seq,
        )
    total = stop_seq - bounds.first_seq + 1 if stop_seq else 0
    report = _Reporter(progress, total)
    start_seq = 1
    if snapshots is not None:
        start_seq = await snapshots.restore(log, target, until) + 1
    projection = await asyncio.to_thread(Projection, target)
    read = projected = rejected = 0
    last_seq = start_seq - 1
    try:
        # from a snapshot the dedup index is loaded from it, as a restarted ingestor does
        index = DedupIndex(tolerance=tolerance)
        pipeline = Pipeline(projection, index, load_index=start_seq > 1)
        pending: list[tuple[Message, MediaEvent]] = []
        if stop_seq >= start_seq:
            async with contextlib.aclosing(log.messages(start_seq, stop_seq)) as batches:
                async for batch in batches:
                    done = False
                    if clock == "recorded" and until is not None:
                        keep = _recorded_prefix(batch, until)
                        done = keep < len(batch)
                        batch = batch[:keep]
                    decoded, bad = decode_messages(batch)
                    rejected += len(bad)
                    if clock == "occurred" and until is not None:
                        decoded = [(m, e) for m, e in decoded if e.occurred_at <= until]
                    pending.extend(decoded)
                    if batch:
                        last_seq = batch[-1].seq
                        read += len(batch)
                    report(read, total)
                    if len(pending) >= chunk:
                        await asyncio.to_thread(pipeline.project, pending, last_seq)
                        projected += len(pending)
                        pending = []
                        ends = batch[-1] if batch and batch[-1].seq == last_seq else None
                        if snapshots is not None and ends is not None:
                            await snapshots.save(projection, target, ends)
                    if done:
                        break
        await asyncio.to_thread(pipeline.project, pending, last_seq)
        projected += len(pending)
        report(read, read, final=True)
    finally:
        await asyncio.to_thread(projection.close)
    elapsed = asyncio.get_running_loop().time() - started
    logger.info(
        "replayed %d messages (%d events, %d rejected) up to seq %d in %.2fs",
        *(read, projected, rejected, last_seq, elapsed),
    )
    return last_seq, ReplayStats(read, projected, rejected, elapsed)


def _recorded_prefix(batch: Sequence[Message], until: datetime) -> int:
    """How many leading messages of ``batch`` the log had recorded by ``until``."""
    for index, message in enumerate(batch):
        if message.recorded_at > until:
            return index
    return len(batch)


class _Reporter:
    def __init__(self, progress: bool | ProgressCallback, total: int) -> None:
        self.callback: ProgressCallback | None = None
        self.bar: Progress | None = None
        if callable(progress):
            self.callback = progress
        elif progress and total >= PROGRESS_MIN_MESSAGES:
            self.bar = Progress("replaying the event log", total=total)

    def __call__(self, done: int, total: int, *, final: bool = False) -> None:
        if self.callback is not None:
            self.callback(done, total)
        if self.bar is not None:
            if final:
                self.bar.total = total
                self.bar.update(done)
                self.bar.close()
            else:
                self.bar.update(done)


# --------------------------------------------------------------------------- a demo log


def simulated_log(
    archive_dir: Path,
    config: SimulationConfig | None = None,
    *,
    segment_messages: int = 1000,
) -> EventLog:
    """An offline :class:`EventLog` of a simulated feed (for examples, demos and tests).

    The simulator's feed (default: 2 users over 1 day) is written to ``archive_dir`` as
    archive segments, in publish order, one message per event. Each message's
    ``recorded_at`` is the latest ``occurred_at`` published so far: the moment a live
    ingestor would have stored it (exact for webhooks and Tautulli rows; a re-delivery is
    recorded when it is re-sent, after the original). ``archive_dir`` must hold no segment.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     log = simulated_log(Path(tmp))
    ...     asyncio.run(log.last_seq())
    56
    """
    archive_dir.mkdir(parents=True, exist_ok=True)
    if archive_segments(archive_dir):
        raise ValueError(f"{archive_dir} already holds archive segments")
    sim = simulate(config or SimulationConfig(users=2, days=1))
    messages: list[Message] = []
    recorded = datetime.min.replace(tzinfo=UTC)
    for seq, event in enumerate(sim.events, start=1):
        recorded = max(recorded, event.occurred_at)
        messages.append(Message(seq, recorded, encode_event(event), event.subject))
    for start in range(0, len(messages), segment_messages):
        write_segment(archive_dir, messages[start : start + segment_messages])
    return EventLog(archive_dir)


__all__ = [
    "CLOCKS",
    "Clock",
    "ProgressCallback",
    "Replay",
    "ReplayStats",
    "aware_utc",
    "replay",
    "simulated_log",
]
