"""What the workbench's query functions read: a replay, a projection, or a DuckDB connection to
one; and the one way they run SQL on it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import polars as pl

from ingestor.projection import Projection
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


def query(source: ProjectionSource, sql: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run ``sql`` on a fresh cursor of ``source`` whose session time zone is UTC (the
    caller's own connection keeps its settings), as a polars frame."""
    cursor = connection_of(source).cursor()
    try:
        cursor.execute("SET TimeZone = 'UTC'")
        relation = cursor.sql(sql, params=params or {})
        if relation is None:
            raise ValueError(f"not a query that returns rows: {sql!r}")
        return relation.pl()
    finally:
        cursor.close()


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


__all__ = ["ProjectionSource", "choices", "connection_of", "query"]
