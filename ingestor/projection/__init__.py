"""The DuckDB projection: schema, the set-based fold, the batch writer and its checkpoint."""

from ingestor.projection.store import PROJECTOR, Applied, BatchResult, Projection

__all__ = ["PROJECTOR", "Applied", "BatchResult", "Projection"]
