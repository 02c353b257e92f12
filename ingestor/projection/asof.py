"""The projection as of an instant, read from the projection itself: no replay.

The log and ``media_events`` are append-only and sequenced, and dedup decisions are causal
(a decision sees only earlier sequences), so the projection as of a point is a function of
the rows the projection already holds (the idea of Datomic's ``as-of`` database value, and
of XTDB's bitemporal queries). A point has two coordinates:

* **known** (``known_seq``, the recorded clock): what the log had recorded by then. Rows with
  ``seq <= known_seq``; each event in the playback it was assigned to at that sequence (a
  user's restore at sequence R moves events from R on: ``playback_moves`` keeps each move,
  so the assignment before R is read back, and an event restored at R is absent before it);
  each audit entry with the status its latest decision up to ``known_seq`` gave it
  (``audit_decisions``); each account with the person its latest identity record up to
  ``known_seq`` gave it (``identity_links``, read through ``person_accounts``).
* **valid** (``valid_until``, the occurred clock): what had happened by then. Of the events
  known, those with ``occurred_at <= valid_until``, folded into their playbacks *under the
  decisions known at ``known_seq``* (bitemporal "valid time T, as known at K"). With
  ``clock="occurred"`` the known coordinate is the projection's checkpoint: "what happened
  by T, as known now". A report that arrived later than T but is about something that
  happened before T counts; a playback that a later report linked to another source keeps
  that link even when the linking report happened after T. Identity records follow the
  same rule as decisions: the accounts are merged as known at ``known_seq``, whenever the
  merge was decided (a person's plays before T count as that person's).

Only the playbacks that the point cuts through are folded again (those with events on both
sides of it, or moved by a later decision, or stale now but not yet at the point): every
other playback's row is the stored one. Stale playbacks (``fold.py``) are judged by the
watermark as of the point, the newest event time of the events known there.
The rest are views with a filter. So an answer costs a scan of the key columns, not a replay.

:func:`open_as_of` returns a new cursor of the connection on which the projection's table
names (``media_events``, ``media_events_detail``, ``playback_events``,
``dedupe_audit_log``, ``detection_alerts``, ``playback_moves``, ``audit_decisions``,
``identity_links``, ``person_accounts``, ``projection_checkpoint``) name the state as of the
point (temporary views and tables that
shadow the stored ones on that cursor only). Every statistic and temporal query reads it as
it reads the projection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl

from ingestor.projection.fold import FOLD_INPUT_COLUMNS, fold_playbacks
from ingestor.projection.schema import (
    CHECKPOINT_TABLE,
    DECISION_COLUMNS,
    IDENTITY_LINK_COLUMNS,
    MOVE_COLUMNS,
    PLAYBACK_COLUMNS,
    TEMP_DETAIL_VIEW,
    TEMP_PERSON_VIEW,
)

Clock = Literal["recorded", "occurred"]
CLOCKS: tuple[Clock, ...] = ("recorded", "occurred")


@dataclass(frozen=True)
class AsOfPoint:
    """A point of the projection's history: what was known by ``known_seq`` and, on the
    occurred clock, what of it had happened by ``valid_until``."""

    clock: Clock
    until: datetime | None  # the instant asked for (UTC), None for "now"
    known_seq: int
    valid_until: datetime | None


@dataclass(frozen=True)
class AsOfStats:
    """What answering took: playbacks kept as stored, and folded again."""

    playbacks_kept: int
    playbacks_refolded: int
    events_refolded: int
    seconds: float


# -------------------------------------------------------------------------- SQL

# The newest sequence recorded by an instant, over every table that stores one
# ({src}: the projection's catalog and schema, quoted; never user input)
_RECORDED_SEQ = """
SELECT max(seq) FROM (
    SELECT max(seq) AS seq FROM {src}.media_events WHERE recorded_at <= $until
    UNION ALL SELECT max(seq) FROM {src}.dedupe_audit_log WHERE recorded_at <= $until
    UNION ALL SELECT max(seq) FROM {src}.detection_alerts WHERE recorded_at <= $until
    UNION ALL SELECT max(seq) FROM {decisions} WHERE recorded_at <= $until
)
"""
_NEWEST_RECORDED = """
SELECT max(newest) FROM (
    SELECT max(recorded_at) AS newest FROM {src}.media_events
    UNION ALL SELECT max(recorded_at) FROM {src}.dedupe_audit_log
    UNION ALL SELECT max(recorded_at) FROM {src}.detection_alerts
    UNION ALL SELECT max(recorded_at) FROM {decisions}
)
"""
_CHECKPOINT = "SELECT max(last_seq) FROM {src}." + CHECKPOINT_TABLE + " WHERE consumer = $consumer"

# The literals below are an int() and a timestamp the code formats itself: a view cannot
# take bound parameters, and neither value comes from text a user typed.

# each event's first move after the point: its playback and action as of the point (a
# first move from no playback: the event was restored later, so it is absent)
_LATER_MOVES = """
SELECT event_id, arg_min({{'key': from_key, 'action': from_action}}, seq) AS was
FROM {moves} WHERE seq > {known} GROUP BY event_id
"""
_EVENTS_VIEW = """
CREATE OR REPLACE TEMP VIEW media_events AS
SELECT e.* REPLACE (
    CASE WHEN m.event_id IS NULL THEN e.correlation_key ELSE m.was.key END AS correlation_key,
    CASE WHEN m.event_id IS NULL THEN e.dedup_action ELSE m.was.action END AS dedup_action
)
FROM {src}.media_events e
LEFT JOIN ({later}) m ON m.event_id = e.event_id
WHERE e.seq <= {known} AND (m.event_id IS NULL OR m.was.key IS NOT NULL){valid}
"""
# an entry's status as of the point: its latest applied decision by then. An entry resolved
# by a file older than audit_decisions has no decision rows: its stored status stands.
_AUDIT_VIEW = """
CREATE OR REPLACE TEMP VIEW dedupe_audit_log AS
SELECT a.* REPLACE (
    CASE WHEN d.audit_id IS NULL THEN a.status
         ELSE coalesce(d.last.status, 'auto_dedupe') END AS status,
    CASE WHEN d.audit_id IS NULL THEN a.resolved_by ELSE d.last.decided_by END AS resolved_by,
    CASE WHEN d.audit_id IS NULL THEN a.resolved_at ELSE d.last.decided_at END AS resolved_at,
    CASE WHEN d.audit_id IS NULL THEN a.resolution_notes ELSE d.last.notes END
        AS resolution_notes
)
FROM {src}.dedupe_audit_log a
LEFT JOIN (
    SELECT audit_id,
           arg_max({{'status': status, 'decided_by': decided_by, 'decided_at': decided_at,
                    'notes': notes}}, seq) FILTER (WHERE seq <= {known}) AS last
    FROM {decisions} WHERE applied GROUP BY audit_id
) d ON d.audit_id = a.audit_id
WHERE a.seq <= {known}{valid_a}
"""
_ALERTS_VIEW = """
CREATE OR REPLACE TEMP VIEW detection_alerts AS
SELECT * FROM {src}.detection_alerts WHERE seq <= {known}{valid}
"""
_SEQ_VIEW = "CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {table} WHERE seq <= {known}"
# the playbacks the point may cut through: events on both sides of it, or moved after it
# (keys only: on the occurred clock early in the log this is most playbacks)
_CANDIDATES = """
CREATE OR REPLACE TEMP TABLE _as_of_candidates AS
SELECT correlation_key FROM {src}.playback_events
WHERE first_seq <= {known} AND (last_seq > {known}{valid_cut})
UNION SELECT from_key FROM {moves} WHERE seq > {known} AND from_key IS NOT NULL
UNION SELECT to_key FROM {moves} WHERE seq > {known}{stale}
"""
# stale now, not yet at the point (a file older than tables version 3 has no stale_at)
_STALE_CANDIDATES = """
UNION SELECT correlation_key FROM {src}.playback_events
WHERE state = 'stale' AND first_seq <= {known} AND stale_at >= {watermark}"""
# the watermark as of the point: the newest event time of the events known there
_WATERMARK = "SELECT max(occurred_at) FROM media_events"
# the events as of the point of those that have any: the playbacks to fold again (key
# columns only; the payloads are read below by sequence, which reads only those rows)
_REFOLD_EVENTS = """
CREATE OR REPLACE TEMP TABLE _as_of_refold AS
SELECT seq, correlation_key FROM media_events
WHERE correlation_key IN (SELECT correlation_key FROM _as_of_candidates)
"""
_REFOLD_INPUT = """
SELECT r.seq, r.correlation_key, e.payload
FROM _as_of_refold r JOIN {src}.media_events e ON e.seq = r.seq
WHERE e.seq BETWEEN {low} AND {high}
ORDER BY r.seq
"""
# every other playback's row is the stored one: a view, nothing copied
_PLAYBACKS_VIEW = """
CREATE OR REPLACE TEMP VIEW playback_events AS
SELECT * FROM {src}.playback_events
WHERE last_seq <= {known}{valid_kept}
  AND correlation_key NOT IN (SELECT correlation_key FROM _as_of_candidates)
UNION ALL
SELECT * FROM _as_of_refolded
"""
_CHECKPOINT_TABLE = (
    f"CREATE OR REPLACE TEMP TABLE {CHECKPOINT_TABLE} AS "
    "SELECT 'projector' AS consumer, {known}::BIGINT AS last_seq, now() AS updated_at"
)
_REFOLDED_TABLE = (
    "CREATE OR REPLACE TEMP TABLE _as_of_refolded AS "
    "SELECT * FROM {src}.playback_events WHERE false"
)
_PLAYBACK_NAMES = [name for name, _ in PLAYBACK_COLUMNS]


def _empty(columns: list[tuple[str, str]]) -> str:
    """A typed empty relation standing for a table an older projection file lacks."""
    cols = ", ".join(f"NULL::{duck.replace(' NOT NULL', '')} AS {name}" for name, duck in columns)
    return f"(SELECT {cols} WHERE false)"


def _timestamp(value: datetime) -> str:
    return f"TIMESTAMPTZ '{value.astimezone(UTC).isoformat()}'"


class _Source:
    """The stored projection's tables, catalog-qualified, on one connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        catalog = con.execute("SELECT current_database()").fetchall()[0][0]
        self.src = '"' + str(catalog).replace('"', '""') + '".main'
        present = {
            row[0]
            for row in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ? "
                "AND schema_name = 'main'",
                [catalog],
            ).fetchall()
        }
        self.moves = f"{self.src}.playback_moves" if "playback_moves" in present else None
        self.decisions = f"{self.src}.audit_decisions" if "audit_decisions" in present else None
        self.stale = bool(
            con.execute(
                "SELECT 1 FROM duckdb_columns() WHERE database_name = ? AND schema_name = 'main'"
                " AND table_name = 'playback_events' AND column_name = 'stale_at'",
                [catalog],
            ).fetchall()
        )
        self.identities = f"{self.src}.identity_links" if "identity_links" in present else None

    @property
    def moves_table(self) -> str:
        return self.moves or _empty(MOVE_COLUMNS)

    @property
    def decisions_table(self) -> str:
        return self.decisions or _empty(DECISION_COLUMNS)

    @property
    def identities_table(self) -> str:
        return self.identities or _empty(IDENTITY_LINK_COLUMNS)


# -------------------------------------------------------------------------- points


def resolve(
    con: duckdb.DuckDBPyConnection,
    until: datetime | None = None,
    clock: Clock = "recorded",
    *,
    consumer: str = "projector",
) -> AsOfPoint:
    """The point ``until`` names on ``clock`` in the projection ``con`` holds.

    Recorded clock: the newest sequence the projection holds a row for that the stream had
    recorded by ``until`` (the whole projection, to its checkpoint, when nothing was
    recorded after ``until``). Occurred clock: the checkpoint (as known now), and
    ``valid_until = until``. ``until=None``: the projection as it is.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be 'recorded' or 'occurred', got {clock!r}")
    source = _Source(con)
    checkpoint = con.execute(_CHECKPOINT.format(src=source.src), {"consumer": consumer}).fetchall()[
        0
    ][0]
    checkpoint = int(checkpoint or 0)
    if until is None:
        return AsOfPoint(clock, None, checkpoint, None)
    until = until.astimezone(UTC)
    if clock == "occurred":
        return AsOfPoint(clock, until, checkpoint, until)
    recorded = (
        f"(SELECT seq, recorded_at FROM {source.decisions_table}"
        f" UNION ALL SELECT seq, recorded_at FROM {source.identities_table})"
    )
    newest = con.execute(_NEWEST_RECORDED.format(src=source.src, decisions=recorded)).fetchall()[0][
        0
    ]
    if newest is None or newest <= until:
        return AsOfPoint(clock, until, checkpoint, None)
    known = con.execute(
        _RECORDED_SEQ.format(src=source.src, decisions=recorded), {"until": until}
    ).fetchall()[0][0]
    return AsOfPoint(clock, until, int(known or 0), None)


def open_as_of(
    con: duckdb.DuckDBPyConnection, point: AsOfPoint
) -> tuple[duckdb.DuckDBPyConnection, AsOfStats]:
    """A new cursor of ``con`` whose projection tables are the state as of ``point``.

    The cursor's temporary views and tables shadow the stored tables for it alone; other
    cursors of ``con`` are unaffected. Close the cursor when done.
    """
    started = time.perf_counter()
    source = _Source(con)
    src, known = source.src, int(point.known_seq)
    moves, decisions = source.moves_table, source.decisions_table
    valid = valid_a = valid_alert = valid_cut = valid_kept = ""
    if point.valid_until is not None:
        at = _timestamp(point.valid_until)
        valid = f" AND e.occurred_at <= {at}"
        valid_a = f" AND a.occurred_at <= {at}"
        valid_alert = f" AND occurred_at <= {at}"
        valid_cut = f" OR last_event_at > {at}"
        valid_kept = f" AND last_event_at <= {at}"
    cursor = con.cursor()
    try:
        cursor.execute("SET TimeZone = 'UTC'")
        later = _LATER_MOVES.format(moves=moves, known=known)
        cursor.execute(_EVENTS_VIEW.format(src=src, later=later, known=known, valid=valid))
        cursor.execute(TEMP_DETAIL_VIEW)
        cursor.execute(
            _AUDIT_VIEW.format(src=src, decisions=decisions, known=known, valid_a=valid_a)
        )
        cursor.execute(_ALERTS_VIEW.format(src=src, known=known, valid=valid_alert))
        cursor.execute(_SEQ_VIEW.format(name="playback_moves", table=moves, known=known))
        cursor.execute(_SEQ_VIEW.format(name="audit_decisions", table=decisions, known=known))
        identities = source.identities_table
        cursor.execute(_SEQ_VIEW.format(name="identity_links", table=identities, known=known))
        cursor.execute(TEMP_PERSON_VIEW)
        watermark = cursor.execute(_WATERMARK).fetchall()[0][0]
        stale = ""
        if source.stale and watermark is not None:
            stale = _STALE_CANDIDATES.format(src=src, known=known, watermark=_timestamp(watermark))
        cursor.execute(
            _CANDIDATES.format(src=src, moves=moves, known=known, valid_cut=valid_cut, stale=stale)
        )
        refolded, events = _refold(cursor, src, watermark)
        cursor.execute(_PLAYBACKS_VIEW.format(src=src, known=known, valid_kept=valid_kept))
        kept = cursor.execute("SELECT count(*) FROM playback_events").fetchall()[0][0] - refolded
        cursor.execute(_CHECKPOINT_TABLE.format(known=known))
    except BaseException:
        cursor.close()
        raise
    return cursor, AsOfStats(int(kept), refolded, events, time.perf_counter() - started)


def _refold(
    cursor: duckdb.DuckDBPyConnection, src: str, watermark: datetime | None
) -> tuple[int, int]:
    """Fold the cut-through playbacks from their events as of the point (views above) into
    ``_as_of_refolded``, stale ones marked as of ``watermark``; a playback with no event as
    of the point has no row."""
    # the write path's own decoding and rule
    from ingestor.projection.store import parse_events, stored_stale_after

    cursor.execute(_REFOLD_EVENTS)
    cursor.execute(_REFOLDED_TABLE.format(src=src))
    (low, high) = cursor.execute("SELECT min(seq), max(seq) FROM _as_of_refold").fetchall()[0]
    if low is None:
        return 0, 0
    rows = cursor.sql(_REFOLD_INPUT.format(src=src, low=int(low), high=int(high))).pl()
    frame = parse_events(rows["payload"]).with_columns(rows["seq"], rows["correlation_key"])
    folded = fold_playbacks(
        frame.select(FOLD_INPUT_COLUMNS),
        watermark=watermark,
        stale_after=stored_stale_after(cursor, f"{src}.projection_meta"),
    )
    cursor.register("_as_of_folded", folded.to_arrow())
    # a file of an older tables version read without migrating (read-only) lacks the later
    # columns (stale_at, library_id, library_name): fill the ones it has
    stored = {d[0] for d in cursor.execute("SELECT * FROM _as_of_refolded LIMIT 0").description}
    try:
        names = ", ".join(name for name in _PLAYBACK_NAMES if name in stored)
        cursor.execute(f"INSERT INTO _as_of_refolded ({names}) SELECT {names} FROM _as_of_folded")
    finally:
        cursor.unregister("_as_of_folded")
    return folded.height, rows.height


def as_of_frame(con: duckdb.DuckDBPyConnection, point: AsOfPoint, sql: str) -> pl.DataFrame:
    """One query over the projection as of ``point`` (a convenience over :func:`open_as_of`)."""
    cursor, _ = open_as_of(con, point)
    try:
        return cursor.sql(sql).pl()
    finally:
        cursor.close()


def write_as_of(cursor: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Write the projection tables as an as-of ``cursor`` names them to a new projection
    file at ``path`` (a projection of its own: open it with ``Projection``)."""
    from ingestor.projection.store import Projection

    Projection(path).close()  # the schema, empty
    quoted = str(path).replace("'", "''")  # ATTACH takes no bound parameter
    cursor.execute(f"ATTACH '{quoted}' AS as_of_out")
    try:
        for table in AS_OF_TABLES:
            cursor.execute(f"DELETE FROM as_of_out.main.{table}")
            cursor.execute(f"INSERT INTO as_of_out.main.{table} SELECT * FROM {table}")
    finally:
        cursor.execute("DETACH as_of_out")


AS_OF_TABLES = (
    "media_events",
    "playback_events",
    "dedupe_audit_log",
    "detection_alerts",
    "playback_moves",
    "audit_decisions",
    "identity_links",
    CHECKPOINT_TABLE,
)
"""The tables :func:`open_as_of` shadows (plus the ``media_events_detail`` and
``person_accounts`` views)."""


__all__ = [
    "AS_OF_TABLES",
    "CLOCKS",
    "AsOfPoint",
    "AsOfStats",
    "Clock",
    "as_of_frame",
    "open_as_of",
    "resolve",
    "write_as_of",
]
