"""What the workbench's query functions read: a replay, a projection, or a DuckDB connection to
one; and the one way they run SQL on it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from ingestor.projection import PLAYBACK_TABLE, Projection
from ingestor.projection import columns as table_columns
from workbench.replay import Replay

ProjectionSource = Replay | Projection | duckdb.DuckDBPyConnection
"""A :class:`~workbench.replay.Replay`, an :class:`ingestor.projection.Projection`, or a DuckDB
connection to a projection (such as :meth:`workbench.api.Workbench.snapshot` returns)."""


def connection_of(source: ProjectionSource) -> duckdb.DuckDBPyConnection:
    """The DuckDB connection behind ``source``; TypeError for anything else."""
    if isinstance(source, Replay):
        if source.closed:
            raise ValueError("this Replay is closed")
        return source.con
    if isinstance(source, Projection):
        return source.con
    if isinstance(source, duckdb.DuckDBPyConnection):
        return source
    kind = type(source).__name__
    raise TypeError(f"expected a Replay, a Projection or a DuckDB connection, got {kind}")


def example_projection(columns: str, *rows: Sequence[object]) -> Projection:
    """A projection in memory whose ``playback_events`` holds ``rows``: one tuple a row, of
    the ``columns`` named (comma-separated; every other column is NULL; times as ISO 8601
    text). The data of the statistics' examples, and of quick experiments.

    >>> db = example_projection(
    ...     "correlation_key, platform, started_at",
    ...     ("a", "Roku", "2026-01-05 20:00Z"),
    ...     ("b", None, "2026-01-05 21:30Z"),
    ... )
    >>> db.con.sql("SELECT platform, hour(started_at) FROM playback_events").fetchall()
    [('Roku', 20), (None, 21)]
    >>> example_projection("correlation_key, weather", ("a", "rain"))
    Traceback (most recent call last):
    ...
    ValueError: playback_events has no column 'weather'
    """
    names = [name.strip() for name in columns.split(",")]
    known = {name for name, _ in table_columns(PLAYBACK_TABLE)}
    for name in names:
        if name not in known:
            raise ValueError(f"{PLAYBACK_TABLE} has no column {name!r}")
    db = Projection(":memory:")
    if rows:
        marks = ", ".join("?" for _ in names)
        insert = f"INSERT INTO {PLAYBACK_TABLE} ({', '.join(names)}) VALUES ({marks})"
        db.con.executemany(insert, [list(row) for row in rows])
    return db


def query(source: ProjectionSource, sql: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run ``sql`` on ``source``'s connection with the session time zone UTC (the caller's
    own setting is put back afterwards), as a polars frame.

    The connection itself, not a new cursor of it: an as-of connection
    (:meth:`workbench.Workbench.as_of`) names the state as of its instant with temporary
    views that only that connection sees.
    """
    con = connection_of(source)
    (zone,) = con.execute("SELECT current_setting('TimeZone')").fetchall()[0]
    if zone != "UTC":
        con.execute("SET TimeZone = 'UTC'")
    try:
        relation = con.sql(sql, params=params or {})
        if relation is None:
            raise ValueError(f"not a query that returns rows: {sql!r}")
        return relation.pl()
    finally:
        if zone != "UTC":
            quoted = str(zone).replace("'", "''")  # SET takes no bound parameter
            con.execute(f"SET TimeZone = '{quoted}'")


def choices(
    name: str, value: str | Sequence[str] | None, allowed: Sequence[str]
) -> list[str] | None:
    """A filter argument of one value or several as a list (None: no filter), checked
    against ``allowed``."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"{name} must be among {tuple(allowed)}, got {unknown}")
    return values


def scope(
    source: ProjectionSource,
    *,
    since: datetime | None = None,
    before: datetime | None = None,
    servers: str | Sequence[str] | None = None,
    user: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """The playbacks that started in ``[since, before)`` on ``servers`` (ids, or their first
    characters) by ``user`` (a ``user_id`` or a ``username``), as the ``playback_events``
    table of a new in-memory database: every statistic then runs on that scope unchanged.

    >>> from datetime import UTC, datetime
    >>> from ingestor.projection import Projection
    >>> db = Projection(":memory:")
    >>> _ = db.con.execute(
    ...     "INSERT INTO playback_events (correlation_key, server_id, username, started_at) "
    ...     "VALUES ('a', 'srv1', 'ana', '2026-01-05 20:00Z'), ('b', 'srv2', 'ana', "
    ...     "'2026-01-06 20:00Z'), ('c', 'srv1', 'bo', '2026-01-05 21:00Z')"
    ... )
    >>> s = scope(db, before=datetime(2026, 1, 6, tzinfo=UTC), user="ana")
    >>> s.sql("SELECT correlation_key FROM playback_events").fetchall()
    [('a',)]
    """
    frame = query(source, "SELECT * FROM playback_events")
    if since is not None:
        frame = frame.filter(pl.col("started_at") >= since)
    if before is not None:
        frame = frame.filter(pl.col("started_at") < before)
    if servers:
        wanted = [servers] if isinstance(servers, str) else list(servers)
        frame = frame.filter(
            pl.any_horizontal(pl.col("server_id").str.starts_with(str(s)) for s in wanted)
        )
    if user is not None:
        frame = frame.filter((pl.col("username") == str(user)) | (pl.col("user_id") == str(user)))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("scoped_rows", frame.to_arrow())
    con.execute("CREATE TABLE playback_events AS SELECT * FROM scoped_rows")
    con.unregister("scoped_rows")
    return con


def show(frame: pl.DataFrame) -> None:
    """Print a small frame as aligned plain text, numbers right-aligned: output that stays the
    same from run to run (nbval compares it), unlike a frame's HTML.

    >>> show(pl.DataFrame({"user": ["ana", "bo"], "plays": [12, 3]}))
      user  plays
      ana      12
      bo        3
    """
    numeric = [dtype.is_numeric() for dtype in frame.dtypes]
    rows = [list(frame.columns)] + [
        ["" if value is None else str(value) for value in row] for row in frame.rows()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(frame.width)]
    for row in rows:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        print("  " + "  ".join(cells).rstrip())


def title_of(row: dict[str, Any]) -> str:
    """A show's episode as "Show: Episode", anything else by its title.

    >>> title_of({"grandparent_title": "Severance", "title": "Hello, Ms. Cobel"})
    'Severance: Hello, Ms. Cobel'
    """
    show_name = row.get("grandparent_title")
    return f"{show_name}: {row['title']}" if show_name else str(row["title"])


__all__ = [
    "ProjectionSource",
    "choices",
    "connection_of",
    "example_projection",
    "query",
    "scope",
    "show",
    "title_of",
]
