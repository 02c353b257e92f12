"""The DuckDB projection: one transaction per batch, checkpoint included.

:meth:`Projection.apply` writes a decided batch: accepted events into ``media_events``, drops
and links into ``dedupe_audit_log``, the touched playbacks refolded into ``playback_events``
(``fold.py``), and the last applied stream sequence into the checkpoint, all in one
transaction. Everything is set-based over Arrow tables; nothing is inserted row by row.

The ingestor (live, a few thousand events per batch), the replay command and the workbench
(a whole log slice at once) all call this same code.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn, overload

import duckdb
import msgspec
import polars as pl
import pyarrow as pa

from ingestor.dedup import (
    Action,
    BatchDecisions,
    BatchKeys,
    Decision,
    DedupIndex,
    PlaybackRef,
    Tier,
)
from ingestor.errors import IngestorError, TransientError
from ingestor.events import (
    CorrelationKey,
    MediaEvent,
    decode_event,
    make_event_id,
    step_of,
)
from ingestor.projection.fold import (
    DEFAULT_STALE_AFTER_S,
    FOLD_INPUT_COLUMNS,
    STATE_SCHEMA,
    fold_playbacks,
    fold_state,
    mark_stale,
    merge_states,
    playback_rows,
)
from ingestor.projection.guard import ReadersWriter
from ingestor.projection.schema import (
    ALERT_ARROW,
    ALERT_COLUMNS,
    AUDIT_ARROW,
    CHECKPOINT_TABLE,
    DDL,
    EVENT_COLUMNS,
    EVENT_DTYPES,
    MEDIA_EVENT_COLUMNS,
)
from ingestor.records import Account, Alert, AuditDecision, IdentityRecord

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PROJECTOR = "projector"
DUCKDB_MEMORY_LIMIT = "128MB"
DUCKDB_CHECKPOINT_THRESHOLD = "256MB"
FOLD_STATES_LIMIT = 50_000  # playbacks whose fold state stays in memory
PROJECTION_SCHEMA_VERSION = 5  # of the tables; a file written by a later version is refused
# what brings a file of the version before up to each version (the DDL makes new files whole)
MIGRATIONS: dict[int, list[str]] = {
    # percent_complete is the exact share, no longer a rounded whole number
    2: ["ALTER TABLE playback_events ALTER percent_complete TYPE DOUBLE"],
    # stale playbacks (fold.py): an open playback of an older file gets its stale_at when it
    # is next folded (``ingestor replay`` applies the rule to all)
    3: ["ALTER TABLE playback_events ADD COLUMN IF NOT EXISTS stale_at TIMESTAMPTZ"],
    # playbacks carry their library (schema.LIBRARY_COLUMNS, last in the table). A migrated
    # file's rows read NULL ("unknown"): their events were recorded without libraries, so
    # folding them again gives the same
    4: [
        "ALTER TABLE playback_events ADD COLUMN IF NOT EXISTS library_id VARCHAR",
        "ALTER TABLE playback_events ADD COLUMN IF NOT EXISTS library_name VARCHAR",
    ],
    # identity_links and the person_accounts view: the DDL (CREATE ... IF NOT EXISTS, CREATE
    # OR REPLACE VIEW) adds them to an older file too; the version tells an older ingestor
    # that this file holds identity records it would not keep up to date
    5: [],
}
SELECT_SCHEMA_VERSION = "SELECT value FROM projection_meta WHERE name = 'schema_version'"
SELECT_STALE_AFTER = "SELECT value FROM {meta} WHERE name = 'stale_after_seconds'"
WRITE_STALE_AFTER = "INSERT OR REPLACE INTO projection_meta VALUES ('stale_after_seconds', ?)"
SELECT_WATERMARK = "SELECT max(occurred_at) FROM media_events"
# open playbacks the watermark passed (stale_at is NULL once stopped: zone maps skip most)
SELECT_GONE_STALE = (
    "SELECT * FROM playback_events WHERE stale_at < $watermark AND state IN ('playing', 'paused')"
)

# DuckDB failures that a later attempt can get past: I/O (disk full, file unavailable),
# memory pressure, and write-write conflicts.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    duckdb.IOException,
    duckdb.OutOfMemoryException,
    duckdb.TransactionException,
)


@dataclass(slots=True)
class Applied:
    """One message as the projection sees it."""

    seq: int
    recorded_at: datetime
    event: MediaEvent
    decision: Decision
    data: bytes  # the event as current-version JSON (what the stream holds, upcast if older)


@dataclass(slots=True)
class AlertRow:
    """One alert record as the projection sees it."""

    seq: int
    recorded_at: datetime
    alert: Alert


@dataclass(slots=True)
class DecisionOutcome:
    """What a user's confirm or restore did (``applied`` False: ignored, ``detail`` says why)."""

    seq: int
    decision: AuditDecision
    applied: bool
    detail: str
    playbacks: list[str] = field(default_factory=list)  # the playbacks it refolded


@dataclass(slots=True)
class IdentityOutcome:
    """What an identity record did: the accounts it moved (``changed``) and those it left
    as they were, each with why (``ignored``)."""

    seq: int
    record: IdentityRecord
    changed: list[Account] = field(default_factory=list)
    ignored: list[tuple[Account | None, str]] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return bool(self.changed)


@dataclass
class BatchResult:
    last_seq: int
    accepted: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    linked: int = 0
    playbacks_touched: int = 0
    # what the batch committed, for the handlers that run after the commit (broadcast,
    # detection, metrics): every decided event (drops included), alerts, user decisions.
    # ``applied`` builds its Applied objects only when read (len() is free).
    applied: AppliedEvents = field(default_factory=lambda: AppliedEvents(), repr=False)
    alerts: list[AlertRow] = field(default_factory=list, repr=False)
    decisions: list[DecisionOutcome] = field(default_factory=list, repr=False)
    seconds: float = 0.0  # time spent writing (decide + commit), for metrics
    identities: list[IdentityOutcome] = field(default_factory=list, repr=False)
    erasures: int = 0  # erasure records applied: the router then compacts the file

    def merge(self, other: BatchResult) -> None:
        """Add ``other`` (a later part of the same batch) to this result."""
        self.last_seq = max(self.last_seq, other.last_seq)
        self.accepted += other.accepted
        for tier, n in other.dropped.items():
            self.dropped[tier] = self.dropped.get(tier, 0) + n
        self.linked += other.linked
        self.playbacks_touched += other.playbacks_touched
        self.applied.extend(other.applied)
        self.alerts.extend(other.alerts)
        self.decisions.extend(other.decisions)
        self.seconds += other.seconds
        self.identities.extend(other.identities)
        self.erasures += other.erasures


SELECT_CHECKPOINT = f"SELECT last_seq FROM {CHECKPOINT_TABLE} WHERE consumer = ?"
UPDATE_CHECKPOINT = (
    f"UPDATE {CHECKPOINT_TABLE} SET last_seq = ?, updated_at = now() WHERE consumer = ?"
)
INSERT_CHECKPOINT = f"INSERT INTO {CHECKPOINT_TABLE} VALUES (?, ?, now())"
# Uniqueness of playback_events.correlation_key and dedupe_audit_log.audit_id holds by
# construction: a touched playback's row is deleted and re-inserted in the batch's
# transaction, and an audit id hashes the event and its stream sequence. A unique index would
# enforce the same thing at 2-3x the cost of every batch here (tests check the uniqueness).
DELETE_PLAYBACKS = "DELETE FROM playback_events WHERE correlation_key IN (SELECT unnest($keys))"
# first_seq prunes the row groups scanned: a row is re-inserted whenever its playback is
# touched, so the rows of playbacks opened since a sequence are all in later row groups
DELETE_PLAYBACKS_SINCE = (
    "DELETE FROM playback_events WHERE first_seq >= $since"
    " AND correlation_key IN (SELECT unnest($keys))"
)
SELECT_PRIOR_EVENTS = (
    "SELECT seq, correlation_key, payload FROM media_events"
    " WHERE seq >= $min_seq AND seq < $batch_seq AND correlation_key IN (SELECT unnest($keys))"
)
SELECT_HOT_PLAYBACKS = """
SELECT correlation_key, server_id, user_id, coalesce(nullif(rating_key, ''), title),
       machine_id, epoch(key_started_at), sources, first_seq, opening_event_id
FROM playback_events
WHERE key_started_at >= to_timestamp($since)
"""
SELECT_HOT_EVENTS = """
SELECT e.event_id, e.source, e.server_id, e.session_key, e.event_type, e.step, e.correlation_key
FROM media_events e
WHERE e.correlation_key IN (
    SELECT correlation_key FROM playback_events WHERE key_started_at >= to_timestamp($since)
)
"""
SELECT_AUDIT_ENTRY = (
    "SELECT tier, status, event_id, raw_payload, seq, recorded_at, kept_correlation_key"
    " FROM dedupe_audit_log WHERE audit_id = ?"
)
RESOLVE_AUDIT_ENTRY = (
    "UPDATE dedupe_audit_log SET status = ?, resolved_by = ?, resolved_at = ?,"
    " resolution_notes = ? WHERE audit_id = ?"
)
SELECT_EVENTS_OF = (
    "SELECT seq, correlation_key, payload FROM media_events"
    " WHERE correlation_key IN (SELECT unnest($keys))"
)
SELECT_PLAYBACKS_OF = """
SELECT correlation_key, server_id, user_id, coalesce(nullif(rating_key, ''), title),
       machine_id, epoch(key_started_at), sources, first_seq, opening_event_id
FROM playback_events WHERE correlation_key IN (SELECT unnest($keys))
"""
SELECT_EVENT_KEYS_OF = """
SELECT event_id, source, server_id, session_key, event_type, step, correlation_key
FROM media_events WHERE correlation_key IN (SELECT unnest($keys))
"""
INSERT_DECISION = "INSERT INTO audit_decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_MOVE = "INSERT INTO playback_moves VALUES (?, ?, ?, ?, ?, ?)"
RECORD_UNLINK_MOVES = """
INSERT INTO playback_moves
SELECT $seq, event_id, correlation_key, $new, dedup_action,
       CASE WHEN event_id = $event THEN 'open' ELSE dedup_action END
FROM media_events
WHERE correlation_key = $kept AND source = $source AND server_id = $server
  AND session_key = $session
"""
# alerts are deterministic: the same alert again (detection re-run, a replay) adds nothing
INSERT_ALERTS = """
INSERT INTO detection_alerts
SELECT * FROM (SELECT DISTINCT ON (alert_id) * FROM new_alerts ORDER BY alert_id, seq) n
WHERE n.alert_id NOT IN (SELECT alert_id FROM detection_alerts)
"""
SELECT_NEWEST_START = "SELECT epoch(max(key_started_at)) FROM playback_events"
SELECT_PERSON_OF = "SELECT person FROM person_accounts WHERE server_id = ? AND user_id = ?"
SELECT_ACCOUNTS_OF = (
    "SELECT server_id, user_id FROM person_accounts WHERE person = ? ORDER BY server_id, user_id"
)
INSERT_IDENTITY_LINK = "INSERT INTO identity_links VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
SELECT_COLD_EVENTS = """
SELECT e.event_id, e.source, e.server_id, e.session_key, e.event_type, e.step, e.correlation_key
FROM media_events e
WHERE e.event_id IN (SELECT event_id FROM cold_probe)
   OR (e.source, e.server_id, e.session_key) IN (
        SELECT (source, server_id, session_key) FROM cold_probe)
"""
SELECT_COLD_PLAYBACKS = """
SELECT p.correlation_key, p.server_id, p.user_id, coalesce(nullif(p.rating_key, ''), p.title),
       p.machine_id, epoch(p.key_started_at), p.sources, p.first_seq, p.opening_event_id
FROM playback_events p
JOIN cold_probe c
  ON p.server_id = c.server_id AND p.user_id = c.user_id
 AND coalesce(nullif(p.rating_key, ''), p.title) = c.item AND p.machine_id = c.machine_id
 AND abs(epoch(p.key_started_at) - c.start) <= $tolerance
UNION
SELECT p.correlation_key, p.server_id, p.user_id, coalesce(nullif(p.rating_key, ''), p.title),
       p.machine_id, epoch(p.key_started_at), p.sources, p.first_seq, p.opening_event_id
FROM playback_events p
WHERE p.correlation_key IN (
    SELECT e.correlation_key FROM media_events e
    WHERE (e.source, e.server_id, e.session_key) IN (
        SELECT (source, server_id, session_key) FROM cold_probe))
"""
_COLD_PROBE_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("source", pa.string()),
        ("server_id", pa.string()),
        ("session_key", pa.string()),
        ("user_id", pa.string()),
        ("item", pa.string()),
        ("machine_id", pa.string()),
        ("start", pa.float64()),
    ]
)


class AppliedEvents(Sequence[Applied]):
    """A batch's decided events as :class:`Applied`, built from its columns when first read
    (a post-commit handler that only counts them, or is idle, builds none)."""

    def __init__(self) -> None:
        self._parts: list[tuple[pl.DataFrame, BatchDecisions] | list[Applied]] = []
        self._length = 0
        self._items: list[Applied] | None = None

    def add(self, frame: pl.DataFrame, decisions: BatchDecisions) -> None:
        self._parts.append((frame.select("seq", "recorded_at", "payload"), decisions))
        self._length += frame.height
        self._items = None

    def extend(self, other: Sequence[Applied]) -> None:
        if isinstance(other, AppliedEvents):
            self._parts.extend(other._parts)
            self._length += other._length
        else:
            self._parts.append(list(other))
            self._length += len(other)
        self._items = None

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Applied: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Applied]: ...
    def __getitem__(self, index: int | slice) -> Applied | Sequence[Applied]:
        return self._materialized()[index]

    def __iter__(self) -> Iterator[Applied]:
        return iter(self._materialized())

    def _materialized(self) -> list[Applied]:
        if self._items is None:
            items: list[Applied] = []
            for part in self._parts:
                if isinstance(part, list):
                    items.extend(part)
                    continue
                frame, decisions = part
                micros = frame["recorded_at"].dt.epoch("us").to_list()
                payloads = frame["payload"].to_list()
                for i, (seq, at, payload) in enumerate(
                    zip(frame["seq"].to_list(), micros, payloads, strict=True)
                ):
                    data = payload.encode()
                    recorded = _EPOCH + timedelta(microseconds=at)
                    items.append(
                        Applied(seq, recorded, decode_event(data), decisions.decision(i), data)
                    )
            self._items = items
        return self._items


class FoldStates:
    """The fold states (:data:`~ingestor.projection.fold.STATE_SCHEMA`) of the playbacks the
    projection touched last, in memory: what a playback's next row is merged from.

    Updated only after a commit, so it never holds an uncommitted state; a state missing
    here (evicted, or never seen since the process started) is folded again from the
    stored events. At most ``limit`` states are kept, the most recently touched.
    """

    def __init__(self, limit: int = FOLD_STATES_LIMIT) -> None:
        self.limit = limit
        self.frame = pl.DataFrame(schema=STATE_SCHEMA)

    def get(self, keys: list[str]) -> pl.DataFrame:
        return self.frame.filter(pl.col("correlation_key").is_in(keys))

    def put(self, states: pl.DataFrame) -> None:
        kept = self.frame.filter(
            ~pl.col("correlation_key").is_in(states["correlation_key"].implode())
        )
        frame = pl.concat([kept, states], how="vertical")
        if frame.height > self.limit * 5 // 4:
            frame = frame.sort("last_seq").tail(self.limit)
        self.frame = frame.rechunk() if frame.n_chunks() > 64 else frame

    def clear(self) -> None:
        self.frame = self.frame.clear()


class Projection:
    """The DuckDB file the ingestor projects into. Not thread-safe: one writer at a time;
    readers in other threads take a cursor through :meth:`reading`."""

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        fault: Callable[[Sequence[Applied]], None] | None = None,
        stale_after: float | None = None,
    ) -> None:
        """Open (or create) the projection at ``path``. ``stale_after``: seconds after which
        a playback with no report counts as stopped (``STALE_AFTER``); stored with the
        projection so that its readers apply the same rule (None: the stored one, else 30
        minutes)."""
        self.path = Path(path)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = _connect(self.path, read_only=read_only)
        # readers' cursors against the swap of ``con`` after an erasure (compact)
        self._guard = ReadersWriter()
        # ``fault`` is a seam for failure tests: called with the batch inside each
        # transaction before the writes, it may raise (the database is unavailable) or stall.
        self.fault = fault
        self._watermark: datetime | None = None
        self._stale_after = stale_after
        self._writable = not read_only
        if not read_only:
            try:
                self._create_or_migrate()
                if stale_after is not None:
                    self.con.execute(WRITE_STALE_AFTER, [str(float(stale_after))])
            except BaseException:
                self.con.close()
                raise
            self._compact_if_erased()  # killed before it compacted after an erasure

    def _create_or_migrate(self) -> None:
        """Create the tables of a new file, or bring an older file's up to this version.

        Raises :class:`~ingestor.errors.IngestorError` for a file written by a later version.
        """
        con = self.con
        fresh = not con.execute(
            "SELECT 1 FROM duckdb_tables() WHERE table_name = 'playback_events'"
        ).fetchall()
        for statement in DDL:
            con.execute(statement)
        rows = con.execute(SELECT_SCHEMA_VERSION).fetchall()
        # a file without a version is older than versions: the first
        version = PROJECTION_SCHEMA_VERSION if fresh else int(rows[0][0]) if rows else 1
        if version > PROJECTION_SCHEMA_VERSION:
            raise IngestorError(
                f"{self.path} was written by a later version of the ingestor (tables version "
                f"{version}, this one knows up to {PROJECTION_SCHEMA_VERSION}): upgrade it, or "
                "rebuild the projection with `ingestor replay --output NEW_FILE`"
            )
        con.begin()
        for step in range(version + 1, PROJECTION_SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                con.execute(statement)
            log.info("projection %s migrated to tables version %d", self.path, step)
        con.execute(
            "INSERT OR REPLACE INTO projection_meta VALUES ('schema_version', ?)",
            [str(PROJECTION_SCHEMA_VERSION)],
        )
        con.commit()

    @classmethod
    def over(cls, con: duckdb.DuckDBPyConnection) -> Projection:
        """A view over an existing connection or cursor (for concurrent readers)."""
        view = cls.__new__(cls)
        view.path = Path("")
        view.con = con
        view._guard = ReadersWriter()
        view.fault = None
        view._watermark = None
        view._stale_after = None
        view._writable = False
        return view

    @property
    def stale_after(self) -> float:
        """Seconds without a report after which an open playback counts as stopped."""
        if self._stale_after is None:
            self._stale_after = stored_stale_after(self.con)
        return self._stale_after

    def watermark(self) -> datetime | None:
        """The newest event time the projection holds (the clock of the stale rule)."""
        if self._watermark is None:
            self._watermark = self.con.execute(SELECT_WATERMARK).fetchall()[0][0]
        return self._watermark

    def close(self) -> None:
        with self._guard.writing():  # after the reads in flight
            if self._writable and self._compact_if_erased(reopen=False):
                return
            self.con.close()

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of the projection (its own connection to the database: MVCC lets it read,
        or write a scratch table, beside the writer's transaction), closed after the block.

        Every reader in another thread than the writer's takes its cursor here, when it
        reads, and keeps nothing of it after the block: after an erasure the running
        ingestor swaps the connection (:meth:`compact`), which waits for the cursors in
        flight, and cursors asked for meanwhile wait for the swap.
        """
        with self._guard.reading():
            cursor = self.con.cursor()
            try:
                yield cursor
            finally:
                cursor.close()

    def compact(self) -> bool:
        """Rewrite the file now if an erasure left deleted rows' bytes in it, while readers
        read (the writer, the router, calls it after committing an erasure record, and takes
        no batch meanwhile). True if the file was rewritten.

        The live rows are copied into a new file while :meth:`reading` cursors read on;
        then, once the reads in flight are done (new ones wait), the connection is closed,
        the new file renamed over the old one and the connection reopened. Killed at any
        point, the file is the old one, still marked, or the new one: the next open
        compacts again if needed (ingestor/erasure.py).
        """
        from ingestor.erasure import compact_due, copy_live_rows, swap_in

        if not self._writable or str(self.path) in ("", ":memory:") or not compact_due(self.con):
            return False
        started = time.perf_counter()
        fresh = copy_live_rows(self.con, self.path)
        if fresh is None:
            return False
        copied = time.perf_counter()
        with self._guard.writing():
            swapping = time.perf_counter()
            self.con.close()
            try:
                swap_in(fresh, self.path)
            finally:
                self.con = _connect(self.path)
        done = time.perf_counter()
        log.info(
            "compacted %s after an erasure in %.2f s (%.1f MB; copy %.2f s while readers "
            "read, %.3f s waiting for the reads in flight, swap %.3f s): no erased row's "
            "bytes are left in it",
            self.path,
            done - started,
            self.path.stat().st_size / 1e6,
            copied - started,
            swapping - copied,
            done - swapping,
        )
        return True

    def _compact_if_erased(self, *, reopen: bool = True) -> bool:
        """Rewrite the file if an erasure left deleted rows' bytes in it (ingestor.erasure);
        True if it tried (the connection is then closed, or reopened with ``reopen``)."""
        from ingestor.erasure import compact_database, compact_due

        if str(self.path) in ("", ":memory:") or not compact_due(self.con):
            return False
        compact_database(self.con, self.path)
        if reopen:
            self.con = _connect(self.path)
        return True

    # ------------------------------------------------------------------ reads

    def checkpoint(self, consumer: str = PROJECTOR) -> int:
        row = self.con.execute(SELECT_CHECKPOINT, [consumer]).fetchall()
        return int(row[0][0]) if row else 0

    def snapshot_query(self, sql: str, consumer: str = PROJECTOR) -> tuple[pa.Table, int]:
        """Run one read-only SELECT on a new cursor, in one transaction, and return its rows
        with the checkpoint they are consistent as of (DuckDB's MVCC gives the transaction a
        snapshot, so concurrent batches neither block it nor show through).

        Raises ValueError when ``sql`` is not exactly one SELECT, or DuckDB refuses it.
        """
        with self.reading() as cursor:
            try:
                statements = cursor.extract_statements(sql)
                if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                    raise ValueError("send exactly one SELECT statement")
                cursor.begin()
                try:
                    rows = cursor.execute(SELECT_CHECKPOINT, [consumer]).fetchall()
                    table = cursor.sql(sql).to_arrow_table()
                finally:
                    cursor.rollback()
                return table, int(rows[0][0]) if rows else 0
            except duckdb.Error as exc:
                raise ValueError(str(exc).splitlines()[0]) from None

    def counts(self) -> dict[str, int]:
        """Row counts that the demo and ``status`` report."""
        rows = self.con.execute(
            """
            SELECT
                (SELECT count(*) FROM media_events),
                (SELECT count(*) FROM playback_events),
                (SELECT count(*) FROM dedupe_audit_log WHERE tier = 'event_id'),
                (SELECT count(*) FROM dedupe_audit_log WHERE tier = 'session_key'),
                (SELECT count(*) FROM dedupe_audit_log WHERE tier = 'correlation')
            """
        ).fetchall()[0]
        keys = ("accepted", "playbacks", "dropped_event_id", "dropped_session_key", "linked")
        return dict(zip(keys, (int(v) for v in rows), strict=True))

    # ------------------------------------------------------------------ dedup index

    def load_index(self, index: DedupIndex) -> None:
        """Rebuild the hot part of the dedup index from committed rows."""
        newest = self.con.execute(SELECT_NEWEST_START).fetchall()[0][0]
        if newest is None:
            return
        since = float(newest) - index.hot_window - index.tolerance - 60
        for row in self.con.execute(SELECT_HOT_PLAYBACKS, {"since": since}).fetchall():
            index.remember_playback(_playback_ref(row))
        self._remember_events(
            index, self.con.execute(SELECT_HOT_EVENTS, {"since": since}).fetchall()
        )
        index.commit()
        log.info(
            "dedup index rebuilt: %d playbacks, %d events",
            len(index.playbacks),
            len(index.event_ids),
        )

    def load_cold(self, keys: BatchKeys, index: DedupIndex) -> None:
        """Load the committed keys that a batch's cold events (older than the hot window)
        may meet."""
        cold = index.cold_rows(keys)
        if not cold:
            return
        probe = pa.table(
            {
                "event_id": [keys.event_id[i] for i in cold],
                "source": [keys.source[i] for i in cold],
                "server_id": [keys.server_id[i] for i in cold],
                "session_key": [keys.session_key[i] for i in cold],
                "user_id": [keys.user_id[i] for i in cold],
                "item": [keys.item[i] for i in cold],
                "machine_id": [keys.machine_id[i] for i in cold],
                "start": [keys.start[i] for i in cold],
            },
            schema=_COLD_PROBE_SCHEMA,
        )
        self.con.register("cold_probe", probe)
        try:
            playbacks = self.con.execute(
                SELECT_COLD_PLAYBACKS, {"tolerance": index.tolerance}
            ).fetchall()
            events_rows = self.con.execute(SELECT_COLD_EVENTS).fetchall()
        finally:
            self.con.unregister("cold_probe")
        for row in playbacks:
            index.remember_playback(_playback_ref(row))
        self._remember_events(index, events_rows)
        log.debug("loaded cold keys for %d events", len(cold))

    @staticmethod
    def _remember_events(index: DedupIndex, rows: list[tuple]) -> None:
        for event_id, source, server_id, session_key, event_type, step, key in rows:
            index.remember_event(
                event_id, ((source, server_id, session_key), event_type, step), key
            )

    # ------------------------------------------------------------------ writes

    def apply_batch(
        self,
        events: pl.DataFrame,
        decisions: BatchDecisions,
        last_seq: int,
        consumer: str = PROJECTOR,
        alerts: Sequence[AlertRow] = (),
    ) -> BatchResult:
        """Write one decided batch (its events as :data:`ingestor.batch.FRAME_COLUMNS`, in
        stream order, and their decisions), its alerts and the checkpoint ``last_seq`` in one
        transaction.

        A touched playback's new row is merged from its fold state (kept in memory for
        recently touched playbacks, :class:`FoldStates`) and the batch's events; only a
        playback without a known state, or with an event arriving before the last known one
        of its source session, is folded again from its stored events.

        Raises :class:`TransientError` for failures a retry can get past; the transaction
        is rolled back and nothing of the batch is visible.
        """
        frame = events.with_columns(
            correlation_key=pl.Series(decisions.playback_key, dtype=pl.String),
            dedup_action=pl.Series(decisions.action, dtype=pl.String),
            _first_seq=pl.Series(decisions.first_seq, dtype=pl.Int64),
        )
        applied = AppliedEvents()
        applied.add(frame, decisions)
        result = BatchResult(last_seq=last_seq, applied=applied, alerts=list(alerts))
        for decision in decisions.audited.values():
            if decision.action is Action.DROP:
                tier = str(decision.tier)
                result.dropped[tier] = result.dropped.get(tier, 0) + 1
            else:
                result.linked += 1
        accepted = frame.filter(pl.col("dedup_action") != Action.DROP.value)
        result.accepted = accepted.height
        batch_seq = accepted["seq"][0] if accepted.height else last_seq + 1
        # playbacks opened before this batch: their new rows merge their stored state
        prior = (
            accepted.filter(pl.col("_first_seq") < batch_seq)
            .group_by("correlation_key")
            .agg(pl.col("_first_seq").min())
        )
        states = self._fold_states()
        con = self.con
        folded: pl.DataFrame | None = None
        try:
            con.begin()
            if self.fault is not None:
                self.fault(applied)
            if accepted.height:
                rows = accepted.select(_MEDIA_EVENTS_ORDER).to_arrow()
                con.from_arrow(rows).insert_into("media_events")
                folded = self._fold(accepted, prior, states, batch_seq)
                result.playbacks_touched = folded.height
                if prior.height:
                    self._delete_playbacks(prior)
                watermark = _later(self.watermark(), accepted["occurred_at"].max())
                rows = mark_stale(playback_rows(folded, self.stale_after), watermark)
                con.from_arrow(rows.to_arrow()).insert_into("playback_events")
                self._sweep_stale(watermark)
            if decisions.audited:
                con.from_arrow(audit_rows(frame, decisions)).insert_into("dedupe_audit_log")
            if alerts:
                con.register("new_alerts", alert_table(alerts))
                try:
                    con.execute(INSERT_ALERTS)
                finally:
                    con.unregister("new_alerts")
            self._checkpoint(last_seq, consumer)
            con.commit()
        except BaseException as exc:
            self._abort(exc)
        if folded is not None:
            states.put(folded)
            self._watermark = watermark
        return result

    def _sweep_stale(self, watermark: datetime | None) -> None:
        """Mark the playbacks that ``watermark`` made stale and no event of the batch touched
        (the batch's own rows were marked as they were folded)."""
        if watermark is None:
            return
        gone = self.con.sql(SELECT_GONE_STALE, params={"watermark": watermark}).pl()
        if gone.is_empty():
            return
        self.con.execute(DELETE_PLAYBACKS, {"keys": gone["correlation_key"].to_list()})
        marked = mark_stale(gone, watermark)
        self.con.from_arrow(marked.to_arrow()).insert_into("playback_events")
        log.debug("%d playbacks went stale as of %s", gone.height, watermark)

    def _fold_states(self) -> FoldStates:
        states = getattr(self, "_states", None)
        if states is None:
            states = self._states = FoldStates()
        return states

    def forget_fold_states(self) -> None:
        """Forget the in-memory fold states (after anything but :meth:`apply_batch` rewrote
        playback rows, such as a user's restore): they are folded from the table again."""
        self._fold_states().clear()

    def _fold(
        self, accepted: pl.DataFrame, prior: pl.DataFrame, states: FoldStates, batch_seq: int
    ) -> pl.DataFrame:
        """The fold states of the playbacks the batch touches."""
        new = fold_state(accepted)
        if not prior.height:
            return new
        key = pl.col("correlation_key")
        prior_keys = prior["correlation_key"].to_list()
        known = states.get(prior_keys)
        known_keys = known["correlation_key"].to_list()
        refold = sorted(set(prior_keys) - set(known_keys))
        parts = [new.filter(~key.is_in(prior_keys))]  # opened by this batch
        if known_keys:
            merged, unmergeable = merge_states(known, new.filter(key.is_in(known_keys)))
            if unmergeable:
                refold += unmergeable
                merged = merged.filter(~key.is_in(unmergeable))
            parts.append(merged)
        if refold:
            parts.append(self._refold_states(accepted, prior, refold, batch_seq))
        return pl.concat(parts, how="vertical")

    def _refold_states(
        self, accepted: pl.DataFrame, prior: pl.DataFrame, keys: list[str], batch_seq: int
    ) -> pl.DataFrame:
        """Fold states from all the events of ``keys``: the stored ones, read back, and the
        batch's."""
        wanted = prior.filter(pl.col("correlation_key").is_in(keys))
        bounds = {"min_seq": int(wanted["_first_seq"].min()), "batch_seq": batch_seq}
        params = {"keys": keys, **bounds}
        earlier = self.con.sql(SELECT_PRIOR_EVENTS, params=params).pl()
        parsed = parse_events(earlier["payload"]).with_columns(
            earlier["seq"], earlier["correlation_key"]
        )
        ours = accepted.filter(pl.col("correlation_key").is_in(keys))
        events = pl.concat(
            [parsed.select(FOLD_INPUT_COLUMNS), ours.select(FOLD_INPUT_COLUMNS)],
            how="vertical_relaxed",
        )
        log.debug("folded %d playbacks again from %d stored events", len(keys), earlier.height)
        return fold_state(events)

    def _delete_playbacks(self, prior: pl.DataFrame) -> None:
        keys = prior["correlation_key"].to_list()
        since = int(prior["_first_seq"].min())
        (deleted,) = self.con.execute(
            DELETE_PLAYBACKS_SINCE, {"keys": keys, "since": since}
        ).fetchall()[0]
        if deleted != len(keys):  # a row whose first_seq moved: look for it everywhere
            self.con.execute(DELETE_PLAYBACKS, {"keys": keys})

    def apply_decision(
        self,
        seq: int,
        decision: AuditDecision,
        index: DedupIndex,
        consumer: str = PROJECTOR,
        recorded_at: datetime | None = None,
    ) -> DecisionOutcome:
        """Apply a user's confirm or restore (stream sequence ``seq``, stored by the stream at
        ``recorded_at``) and checkpoint ``seq``, in one transaction; then bring the dedup
        index in line with the refolded playbacks.

        A decision that cannot apply (unknown entry, an exact duplicate to restore, an entry
        already restored) changes nothing but the checkpoint and says why: the log keeps it,
        and a replay ignores it the same way. Either way it is recorded in
        ``audit_decisions``, and the events it moved in ``playback_moves``, so the
        projection as of an earlier sequence can still be read (``asof.py``).
        """
        con = self.con
        reload: tuple[list[tuple], list[tuple]] | None = None
        try:
            con.begin()
            self._watermark = None  # an undrop may hold the newest event time: read it again
            outcome = self._decide(seq, decision)
            con.execute(
                INSERT_DECISION,
                [
                    seq,
                    recorded_at,
                    decision.audit_id,
                    decision.action,
                    outcome.applied,
                    outcome.detail if outcome.applied else None,
                    outcome.detail,
                    decision.decided_by,
                    decision.occurred_at,
                    decision.notes,
                ],
            )
            reload = self._index_rows(outcome.playbacks) if outcome.playbacks else None
            self._sweep_stale(self.watermark())
            self._checkpoint(seq, consumer)
            con.commit()
        except BaseException as exc:
            self._watermark = None
            self._abort(exc)
        if reload is not None:
            for key in outcome.playbacks:
                index.forget_playback(key)
            playbacks, events = reload
            for row in playbacks:
                index.remember_playback(_playback_ref(row))
            self._remember_events(index, events)
            index.commit()
        if not outcome.applied:
            what = (decision.action, decision.audit_id, outcome.detail)
            log.warning("%s of audit entry %s ignored: %s", *what)
        return outcome

    def apply_identity(
        self,
        seq: int,
        record: IdentityRecord,
        consumer: str = PROJECTOR,
        recorded_at: datetime | None = None,
    ) -> IdentityOutcome:
        """Apply a merge or unmerge (stream sequence ``seq``) and checkpoint ``seq``, in one
        transaction: one ``identity_links`` row per account it names (an unmerge without
        accounts: per account the person has now), applied or not, so the mapping as of any
        sequence can be read back. Nothing else changes: statistics join the mapping when
        they read (``workbench.stats``), so no playback row is rewritten.

        A merge moves each account to ``record.person`` (from any other person); an account
        already that person's is left as it is. An unmerge takes each account from
        ``record.person``; one that is not that person's is left as it is, with why.
        """
        con = self.con
        outcome = IdentityOutcome(seq, record)
        try:
            con.begin()
            rows = []
            accounts: list[Account] = sorted(set(record.accounts))
            if record.action == "unmerge" and not accounts:
                found = con.execute(SELECT_ACCOUNTS_OF, [record.person]).fetchall()
                accounts = [Account(server_id, user_id) for server_id, user_id in found]
                if not accounts:
                    outcome.ignored.append((None, f"{record.person} has no accounts"))
                    rows.append((None, False, f"{record.person} has no accounts"))
            for account in accounts:
                current = con.execute(
                    SELECT_PERSON_OF, [account.server_id, account.user_id]
                ).fetchall()
                owner = current[0][0] if current else None
                applied, detail = _identity_effect(record, owner)
                if applied:
                    outcome.changed.append(account)
                else:
                    outcome.ignored.append((account, detail))
                rows.append((account, applied, detail))
            for account, applied, detail in rows:
                con.execute(
                    INSERT_IDENTITY_LINK,
                    [
                        seq,
                        recorded_at,
                        record.record_id,
                        record.action,
                        record.person,
                        account.server_id if account else None,
                        account.user_id if account else None,
                        applied,
                        detail,
                        record.decided_by,
                        record.occurred_at,
                        record.notes,
                    ],
                )
            self._checkpoint(seq, consumer)
            con.commit()
        except BaseException as exc:
            self._abort(exc)
        for account, why in outcome.ignored:
            who = f"{account.server_id}/{account.user_id}" if account else "-"
            what = (record.action, record.person, who, why)
            log.info("identity %s of %s: %s left as it was (%s)", *what)
        return outcome

    def _decide(self, seq: int, decision: AuditDecision) -> DecisionOutcome:
        con = self.con
        rows = con.execute(SELECT_AUDIT_ENTRY, [decision.audit_id]).fetchall()
        if not rows:
            return DecisionOutcome(seq, decision, False, "no such audit entry")
        tier, status, event_id, raw, entry_seq, recorded_at, kept_key = rows[0]
        if status == "user_restored":
            return DecisionOutcome(seq, decision, False, "the entry was already restored")
        touched: list[str] = []
        if decision.action == "restore":
            if tier == Tier.EVENT_ID:
                detail = "an exact duplicate cannot be restored: the same event is projected"
                return DecisionOutcome(seq, decision, False, detail)
            if tier == Tier.CORRELATION:
                touched = self._unlink(seq, event_id, kept_key)
            else:
                touched = self._undrop(seq, raw, entry_seq, recorded_at, kept_key)
            if not touched:
                return DecisionOutcome(seq, decision, False, "its event is already projected")
            self._refold(touched)
        status = "user_confirmed" if decision.action == "confirm" else "user_restored"
        con.execute(
            RESOLVE_AUDIT_ENTRY,
            [status, decision.decided_by, decision.occurred_at, decision.notes, decision.audit_id],
        )
        return DecisionOutcome(seq, decision, True, status, touched)

    def _unlink(self, seq: int, event_id: str, kept_key: str) -> list[str]:
        """Move the linked source session's events out of ``kept_key`` into a playback of
        their own, keyed by the linked report (as if it had opened one); each move is
        recorded in ``playback_moves`` at the decision's sequence ``seq``."""
        rows = self.con.execute(
            "SELECT source, server_id, session_key, payload FROM media_events"
            " WHERE event_id = ? AND correlation_key = ?",
            [event_id, kept_key],
        ).fetchall()
        if not rows:
            return []
        source, server_id, session_key, payload = rows[0]
        new_key = decode_event(payload.encode()).correlation.encode()
        params = {
            "new": new_key,
            "event": event_id,
            "kept": kept_key,
            "source": source,
            "server": server_id,
            "session": session_key,
        }
        self.con.execute(RECORD_UNLINK_MOVES, {"seq": seq, **params})
        self.con.execute(
            """
            UPDATE media_events
            SET correlation_key = $new,
                dedup_action = CASE WHEN event_id = $event THEN 'open' ELSE dedup_action END
            WHERE correlation_key = $kept AND source = $source AND server_id = $server
              AND session_key = $session
            """,
            params,
        )
        return [kept_key, new_key]

    def _undrop(
        self, decision_seq: int, raw: str | None, seq: int, recorded_at: datetime, kept_key: str
    ) -> list[str]:
        """Put a dropped re-report back into its playback, at its own stream sequence; the
        move (from no playback) is recorded at the decision's sequence."""
        if not raw:
            return []
        event = decode_event(raw.encode())
        if self.con.execute(
            "SELECT 1 FROM media_events WHERE event_id = ?", [event.event_id]
        ).fetchall():
            return []
        if not kept_key:  # dropped while its playback was unknown to the index
            found = self.con.execute(
                "SELECT correlation_key FROM media_events WHERE source = ? AND server_id = ?"
                " AND session_key = ? ORDER BY seq LIMIT 1",
                [event.source, event.server_id, event.session_key],
            ).fetchall()
            kept_key = found[0][0] if found else event.correlation.encode()
        restored = Applied(seq, recorded_at, event, Decision(Action.FOLD, kept_key), raw.encode())
        frame = media_events_frame([restored]).with_columns(
            pl.lit("restored").alias("dedup_action")
        )
        self.con.from_arrow(frame.select(_MEDIA_EVENTS_ORDER).to_arrow()).insert_into(
            "media_events"
        )
        self.con.execute(
            INSERT_MOVE, [decision_seq, event.event_id, None, kept_key, None, "restored"]
        )
        return [kept_key]

    def _refold(self, keys: list[str]) -> None:
        """Recompute the rows of ``keys`` from all their events."""
        rows = self.con.sql(SELECT_EVENTS_OF, params={"keys": keys}).pl()
        self.con.execute(DELETE_PLAYBACKS, {"keys": keys})
        if rows.height == 0:
            return
        frame = parse_events(rows["payload"]).with_columns(rows["seq"], rows["correlation_key"])
        folded = fold_playbacks(
            frame.select(FOLD_INPUT_COLUMNS),
            watermark=self.watermark(),
            stale_after=self.stale_after,
        )
        self.con.from_arrow(folded.to_arrow()).insert_into("playback_events")

    def _index_rows(self, keys: list[str]) -> tuple[list[tuple], list[tuple]]:
        """The dedup index's rows for ``keys``, read inside the decision's transaction."""
        params = {"keys": keys}
        playbacks = self.con.execute(SELECT_PLAYBACKS_OF, params).fetchall()
        events = self.con.execute(SELECT_EVENT_KEYS_OF, params).fetchall()
        return playbacks, events

    def _checkpoint(self, last_seq: int, consumer: str) -> None:
        (changed,) = self.con.execute(UPDATE_CHECKPOINT, [last_seq, consumer]).fetchall()[0]
        if not changed:
            self.con.execute(INSERT_CHECKPOINT, [consumer, last_seq])

    def _abort(self, exc: BaseException) -> NoReturn:
        try:
            self.con.rollback()
        except duckdb.Error:
            pass
        if isinstance(exc, TRANSIENT_DB_ERRORS):
            raise TransientError(f"database unavailable: {exc}") from exc
        raise exc


def _identity_effect(record: IdentityRecord, owner: str | None) -> tuple[bool, str]:
    """Whether ``record`` changes an account that ``owner`` (None: nobody) has, and what
    the ``identity_links`` row says about it."""
    if record.action == "merge":
        if owner == record.person:
            return False, f"already {record.person}'s"
        return True, "merged" if owner is None else f"moved from {owner}"
    if owner == record.person:
        return True, "unmerged"
    if owner is None:
        return False, "not merged into anyone"
    return False, f"{owner}'s, not {record.person}'s"


# ---------------------------------------------------------------------- Arrow builders


_EVENT_TYPES = {name: duck for name, duck, _ in EVENT_COLUMNS}
_FOLD_FIELDS = [c for c in FOLD_INPUT_COLUMNS if c in _EVENT_TYPES]
_TIMES = [name for name in _FOLD_FIELDS if _EVENT_TYPES[name] == "TIMESTAMPTZ"]
# timestamps are read as text and parsed in one vectorised pass (faster than the JSON reader's)
_JSON_SCHEMA = {
    name: pl.String() if _EVENT_TYPES[name] == "TIMESTAMPTZ" else EVENT_DTYPES[name]
    for name in _FOLD_FIELDS
}
_MEDIA_EVENTS_ORDER = [name for name, _, _ in MEDIA_EVENT_COLUMNS]


def parse_events(payloads: list[bytes] | pl.Series) -> pl.DataFrame:
    """The fold's fields of many events, parsed from their JSON in one pass."""
    if isinstance(payloads, pl.Series):
        blob = "\n".join(payloads.to_list()).encode()
    else:
        blob = b"\n".join(payloads)
    frame = pl.read_ndjson(io.BytesIO(blob), schema=_JSON_SCHEMA)
    return frame.with_columns(
        pl.col(name).str.strptime(pl.Datetime("us", "UTC"), format="%+") for name in _TIMES
    )


def media_events_frame(items: Sequence[Applied]) -> pl.DataFrame:
    """A batch's events with its tracking columns: the fold's input and, selected, the
    ``media_events`` rows."""
    payloads = [a.data for a in items]
    return parse_events(payloads).with_columns(
        pl.Series("seq", [a.seq for a in items], pl.Int64),
        pl.Series(
            "recorded_at", [int(a.recorded_at.timestamp() * 1e6) for a in items], pl.Int64
        ).cast(pl.Datetime("us", "UTC")),
        pl.Series("correlation_key", [a.decision.playback_key for a in items], pl.String),
        pl.Series("dedup_action", [a.decision.action.value for a in items], pl.String),
        pl.Series("step", [step_of(a.event) for a in items], pl.Int64),
        pl.Series("payload", [p.decode() for p in payloads], pl.String),
    )


def audit_rows(frame: pl.DataFrame, decisions: BatchDecisions) -> pa.Table:
    """``dedupe_audit_log`` rows of a batch's drops and links (``frame`` as in
    :meth:`Projection.apply_batch`, its rows aligned with ``decisions``)."""
    rows = sorted(decisions.audited)
    audited = [decisions.audited[i] for i in rows]
    picked = frame[rows]
    tiers = [str(d.tier) for d in audited]
    audit_ids = [
        make_event_id("audit", tier, event_id, seq)
        for tier, event_id, seq in zip(
            tiers, picked["event_id"].to_list(), picked["seq"].to_list(), strict=True
        )
    ]
    table = picked.with_columns(
        audit_id=pl.Series(audit_ids, dtype=pl.String),
        tier=pl.Series(tiers, dtype=pl.String),
        action=pl.Series([d.action.value for d in audited], dtype=pl.String),
        reason=pl.Series([d.reason for d in audited], dtype=pl.String),
        status=pl.lit("auto_dedupe"),
        kept_event_id=pl.Series([d.kept_event_id for d in audited], dtype=pl.String),
        kept_source=pl.Series([d.kept_source for d in audited], dtype=pl.String),
        kept_correlation_key=pl.Series([d.playback_key for d in audited], dtype=pl.String),
        similarity_score=pl.Series([d.similarity for d in audited], dtype=pl.Float64),
        raw_payload=pl.col("payload"),
        resolved_by=pl.lit(None, pl.String),
        resolved_at=pl.lit(None, pl.Datetime("us", "UTC")),
        resolution_notes=pl.lit(None, pl.String),
    )
    return table.select(AUDIT_ARROW.names).to_arrow().cast(AUDIT_ARROW)


def alert_table(rows: Sequence[AlertRow]) -> pa.Table:
    columns: dict[str, list] = {name: [] for name, _, _ in ALERT_COLUMNS}
    for row in rows:
        a = row.alert
        values = {
            "alert_id": a.alert_id,
            "seq": row.seq,
            "recorded_at": row.recorded_at,
            "rule": a.rule,
            "severity": a.severity,
            "occurred_at": a.occurred_at,
            "user_id": a.user_id,
            "username": a.username,
            "server_id": a.server_id,
            "message": a.message,
            "event_ids": list(a.event_ids),
            "details": _json.encode(a.details).decode(),
        }
        for name, column in columns.items():
            column.append(values[name])
    return pa.table(columns, schema=ALERT_ARROW)


def _playback_ref(row: tuple) -> PlaybackRef:
    key, server_id, user_id, item, machine_id, start, sources, first_seq, opening = row
    return PlaybackRef(
        key=key,
        cross=(server_id, user_id, item, machine_id),
        start=float(start),
        sources=set(sources or ()),
        first_seq=int(first_seq),
        opening_event_id=opening,
    )


def _connect(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the projection's file, set up as every user of it expects."""
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        con.execute("SET TimeZone = 'UTC'")  # timestamps come back as UTC, not local
        # DuckDB caches up to 80 % of the machine's memory by default; the ingestor is one
        # service among others, so its buffer pool is capped (DuckDB spills beyond it).
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        # Each checkpoint rewrites the row groups that changed since the last one; the
        # recent playback rows change in almost every batch, so checkpointing every 16 MB of
        # WAL (the default) rewrote them over and over: commits grew from 10 to 80 ms as the
        # file grew. A larger WAL between checkpoints keeps commits flat (measured: 27-82 ->
        # 10-20 ms per 1,000-event batch at 100-170k events); recovery replays at most this
        # much WAL.
        con.execute(f"SET checkpoint_threshold = '{DUCKDB_CHECKPOINT_THRESHOLD}'")
    except BaseException:
        con.close()
        raise
    return con


def stored_stale_after(con: duckdb.DuckDBPyConnection, meta: str = "projection_meta") -> float:
    """The ``STALE_AFTER`` a projection was written with (seconds; 30 minutes if unsaid);
    ``meta`` names its ``projection_meta`` table (catalog-qualified when not the default)."""
    try:
        rows = con.execute(SELECT_STALE_AFTER.format(meta=meta)).fetchall()
    except duckdb.CatalogException:  # no projection_meta: an empty or foreign file
        rows = []
    return float(rows[0][0]) if rows else DEFAULT_STALE_AFTER_S


def _later(known: datetime | None, new: datetime | None) -> datetime | None:
    if known is None or new is None:
        return known or new
    return max(known, new)


def now_utc() -> datetime:
    return datetime.now(UTC)


__all__ = [
    "PROJECTOR",
    "AlertRow",
    "Applied",
    "AppliedEvents",
    "BatchResult",
    "CorrelationKey",
    "DecisionOutcome",
    "FoldStates",
    "IdentityOutcome",
    "Projection",
    "alert_table",
    "audit_rows",
    "media_events_frame",
    "stored_stale_after",
]
