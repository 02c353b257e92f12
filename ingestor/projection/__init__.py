"""The DuckDB projection: schema, the set-based fold, the batch writer and its checkpoint.

Readers (the workbench, the notebooks, the benches) import from here only: the read API
(:mod:`ingestor.projection.read`: tables, columns, views, the as-of entry points, the memory
cap) and :class:`Projection`. The write side's names (what a batch applied, its outcome)
are here for the ingestor's own modules.
"""

from ingestor.projection.read import (
    ALERT_TABLE,
    AS_OF_TABLES,
    AUDIT_TABLE,
    CHECKPOINT_TABLE,
    CLOCKS,
    DECISION_TABLE,
    DUCKDB_MEMORY_LIMIT,
    EVENT_DETAIL_VIEW,
    EVENT_TABLE,
    IDENTITY_LINK_TABLE,
    MOVE_TABLE,
    PERSON_VIEW_NAME,
    PLAYBACK_TABLE,
    PROJECTOR,
    TABLES,
    AsOfPoint,
    AsOfStats,
    Clock,
    Projection,
    as_of_frame,
    columns,
    create_views,
    empty_frame_sql,
    open_as_of,
    resolve,
    write_as_of,
)
from ingestor.projection.store import (
    AlertRow,
    Applied,
    BatchResult,
    DecisionOutcome,
    IdentityOutcome,
)

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
    "AlertRow",
    "Applied",
    "AsOfPoint",
    "AsOfStats",
    "BatchResult",
    "Clock",
    "DecisionOutcome",
    "IdentityOutcome",
    "Projection",
    "as_of_frame",
    "columns",
    "create_views",
    "empty_frame_sql",
    "open_as_of",
    "resolve",
    "write_as_of",
]
