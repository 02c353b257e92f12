"""The DuckDB projection: schema, the set-based fold, the batch writer and its checkpoint.

Readers (the workbench, the notebooks, the benches) import from here only: the read API
(:mod:`ingestor.projection.read`: tables, columns, views, the as-of entry points, the memory
cap) and :class:`Projection`. The write side's names (what a batch applied, its outcome)
are here for the ingestor's own modules.
"""

from ingestor.projection import read
from ingestor.projection.read import *  # noqa: F403 (the read API, as read.__all__ names it)
from ingestor.projection.store import (
    AlertRow,
    Applied,
    BatchResult,
    DecisionOutcome,
    IdentityOutcome,
)

__all__ = [
    *read.__all__,
    "AlertRow",
    "Applied",
    "BatchResult",
    "DecisionOutcome",
    "IdentityOutcome",
]
