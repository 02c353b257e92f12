"""The EventLog (archive segments, then the stream's tail), for notebooks.

It lives in :mod:`ingestor.eventlog` because ``ingestor replay`` reads the same log; this
module is its name on the workbench side.
"""

from ingestor.eventlog import (
    EVENT_SCHEMA,
    FRAME_SCHEMA,
    EventLog,
    LogBounds,
    LogGapError,
    messages_frame,
)

__all__ = [
    "EVENT_SCHEMA",
    "FRAME_SCHEMA",
    "EventLog",
    "LogBounds",
    "LogGapError",
    "messages_frame",
]
