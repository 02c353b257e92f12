"""The projection's read side: what the workbench, the notebooks and the benches rely on.

Everything a reader of a projection file needs is here, and only here: the tables and their
columns, the views over them, the as-of entry points (the projection as of an instant, on
either clock, without a replay) and DuckDB's memory cap. ``ingestor.projection`` re-exports
it; the modules behind it (``schema``, ``store``, ``asof``, ``fold``) are the write side's and
may change shape without notice. ``tests/unit/test_read_api.py`` fails if the workbench, a
notebook or a bench imports one of them.

>>> from ingestor.projection import PLAYBACK_TABLE, Projection, as_of_frame, resolve
>>> projection = Projection(":memory:")
>>> point = resolve(projection.con)  # now, on the recorded clock
>>> as_of_frame(projection.con, point, f"SELECT count(*) AS n FROM {PLAYBACK_TABLE}")["n"][0]
0
"""

from __future__ import annotations

import duckdb

from ingestor.projection.asof import (
    AS_OF_TABLES,
    CLOCKS,
    AsOfPoint,
    AsOfStats,
    Clock,
    as_of_frame,
    open_as_of,
    resolve,
    write_as_of,
)
from ingestor.projection.schema import (
    ALERT_COLUMNS,
    AUDIT_COLUMNS,
    CHECKPOINT_TABLE,
    DECISION_COLUMNS,
    DETAIL_VIEW,
    EVENT_COLUMNS,
    IDENTITY_LINK_COLUMNS,
    MEDIA_EVENT_COLUMNS,
    MOVE_COLUMNS,
    PERSON_VIEW,
    PLAYBACK_COLUMNS,
    TRACKING_COLUMNS,
)
from ingestor.projection.store import DUCKDB_MEMORY_LIMIT, PROJECTOR, Projection

EVENT_TABLE = "media_events"
"""Every accepted event: its tracking columns, its key fields and the whole event as JSON."""
EVENT_DETAIL_VIEW = "media_events_detail"
"""``media_events`` with every MediaEvent field as a typed column (a view)."""
PLAYBACK_TABLE = "playback_events"
"""One row per playback: its events folded (the statistics read this)."""
AUDIT_TABLE = "dedupe_audit_log"
"""Every dedup drop and link, with the status the latest user decision gave it."""
ALERT_TABLE = "detection_alerts"
"""One row per detection alert of the stream."""
MOVE_TABLE = "playback_moves"
"""Every change of an accepted event's playback after it was projected (restores)."""
DECISION_TABLE = "audit_decisions"
"""Every user verdict on an audit entry, applied or ignored, in stream order."""
IDENTITY_LINK_TABLE = "identity_links"
"""Every account an identity record named, applied or not, in stream order."""
PERSON_VIEW_NAME = "person_accounts"
"""The current person of every merged account (a view over ``identity_links``)."""

_COLUMNS: dict[str, list[tuple[str, str]]] = {
    EVENT_TABLE: [(name, duck) for name, duck, _ in MEDIA_EVENT_COLUMNS],
    EVENT_DETAIL_VIEW: [(name, duck) for name, duck, _ in TRACKING_COLUMNS + EVENT_COLUMNS],
    PLAYBACK_TABLE: PLAYBACK_COLUMNS,
    AUDIT_TABLE: [(name, duck) for name, duck, _ in AUDIT_COLUMNS],
    ALERT_TABLE: [(name, duck) for name, duck, _ in ALERT_COLUMNS],
    MOVE_TABLE: MOVE_COLUMNS,
    DECISION_TABLE: DECISION_COLUMNS,
    IDENTITY_LINK_TABLE: IDENTITY_LINK_COLUMNS,
    PERSON_VIEW_NAME: [
        ("person", "VARCHAR"),
        ("server_id", "VARCHAR"),
        ("user_id", "VARCHAR"),
        ("since_seq", "BIGINT"),
        ("since", "TIMESTAMPTZ"),
    ],
    CHECKPOINT_TABLE: [
        ("consumer", "VARCHAR"),
        ("last_seq", "BIGINT"),
        ("updated_at", "TIMESTAMPTZ"),
    ],
}

TABLES: tuple[str, ...] = tuple(_COLUMNS)
"""The tables and views a reader may query (their columns: :func:`columns`)."""


def columns(table: str) -> list[tuple[str, str]]:
    """``(name, DuckDB type)`` of each column of a projection table or view, in order, the
    types without their constraints (``NOT NULL``, compression).

    >>> columns("identity_links")[:3]
    [('seq', 'BIGINT'), ('recorded_at', 'TIMESTAMPTZ'), ('record_id', 'VARCHAR')]
    >>> columns("nope")
    Traceback (most recent call last):
    ...
    KeyError: "no projection table 'nope'"
    """
    try:
        pairs = _COLUMNS[table]
    except KeyError:
        raise KeyError(f"no projection table {table!r}") from None
    return [(name, _bare(duck)) for name, duck in pairs]


def empty_frame_sql(table: str) -> str:
    """A SELECT of no rows with ``table``'s columns and types: its shape where a projection
    file is older than the table.

    >>> duckdb.sql(empty_frame_sql("person_accounts")).columns
    ['person', 'server_id', 'user_id', 'since_seq', 'since']
    """
    return "SELECT " + ", ".join(f"NULL::{t} AS {n}" for n, t in columns(table)) + " WHERE false"


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create the projection's views (``media_events_detail``, ``person_accounts``) on
    ``con``, over whatever ``media_events`` and ``identity_links`` it names (copies of the
    tables in another database, for one).

    >>> con = duckdb.connect()
    >>> for table in ("media_events", "identity_links"):
    ...     _ = con.execute(f"CREATE TABLE {table} AS {empty_frame_sql(table)}")
    >>> create_views(con)
    >>> con.sql("SELECT count(*) FROM media_events_detail").fetchall()
    [(0,)]
    """
    con.execute(DETAIL_VIEW)
    con.execute(PERSON_VIEW)


def _bare(duck: str) -> str:
    return duck.split(" NOT NULL")[0].split(" USING ")[0]


__all__ = [
    "ALERT_TABLE",
    "AS_OF_TABLES",
    "AUDIT_TABLE",
    "CHECKPOINT_TABLE",
    "CLOCKS",
    "DECISION_TABLE",
    "DUCKDB_MEMORY_LIMIT",
    "EVENT_DETAIL_VIEW",
    "EVENT_TABLE",
    "IDENTITY_LINK_TABLE",
    "MOVE_TABLE",
    "PERSON_VIEW_NAME",
    "PLAYBACK_TABLE",
    "PROJECTOR",
    "TABLES",
    "AsOfPoint",
    "AsOfStats",
    "Clock",
    "Projection",
    "as_of_frame",
    "columns",
    "create_views",
    "empty_frame_sql",
    "open_as_of",
    "resolve",
    "write_as_of",
]
