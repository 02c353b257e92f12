"""The DuckDB projection: schema, the set-based fold, the batch writer and its checkpoint."""

from ingestor.projection.store import (
    PROJECTOR,
    AlertRow,
    Applied,
    BatchResult,
    DecisionOutcome,
    IdentityOutcome,
    Projection,
    ProjectionError,
)

__all__ = [
    "PROJECTOR",
    "AlertRow",
    "Applied",
    "BatchResult",
    "DecisionOutcome",
    "IdentityOutcome",
    "Projection",
    "ProjectionError",
]
