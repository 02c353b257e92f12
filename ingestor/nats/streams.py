"""The two streams, created or updated at start.

``MEDIA_EVENTS`` holds every media event (``playback.<source>.<media_type>``) and, in the
same total order, audit decisions (``audit.>``) and detection alerts (``alert.>``).
``MEDIA_EVENTS_DLQ`` holds dead letters under ``dlq.>``, a subject family no consumer of
``MEDIA_EVENTS`` can match.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)

STREAM = "MEDIA_EVENTS"
DLQ_STREAM = "MEDIA_EVENTS_DLQ"
MEDIA_SUBJECTS = "playback.>"
AUDIT_SUBJECTS = "audit.>"
ALERT_SUBJECTS = "alert.>"
STREAM_SUBJECTS = [MEDIA_SUBJECTS, AUDIT_SUBJECTS, ALERT_SUBJECTS]
DLQ_SUBJECT_PREFIX = "dlq.media_events"
DUPLICATE_WINDOW_S = 120.0
DLQ_MIN_RETENTION_DAYS = 30
_DAY = 86400.0


def media_events_config(retention_days: int) -> StreamConfig:
    return StreamConfig(
        name=STREAM,
        description="Playback events: the source of truth",
        subjects=STREAM_SUBJECTS,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=retention_days * _DAY,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
        num_replicas=1,
    )


def dlq_config(retention_days: int) -> StreamConfig:
    return StreamConfig(
        name=DLQ_STREAM,
        description="Dead letters of MEDIA_EVENTS, with their error",
        subjects=[f"{DLQ_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max(retention_days, DLQ_MIN_RETENTION_DAYS) * _DAY,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=1,
    )


async def ensure_streams(js: JetStreamContext, retention_days: int) -> None:
    """Create both streams, or bring an existing one's settings up to date."""
    for config in (media_events_config(retention_days), dlq_config(retention_days)):
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s", config.name)
        else:
            await js.update_stream(config)
            log.debug("stream %s is up to date", config.name)
