"""The two streams, created or updated at start.

``MEDIA_EVENTS`` holds every media event (``playback.<server>.<source>.<media_type>``; before
2026-12 ``playback.<source>.<media_type>``, still read) and, in the same total order, audit
decisions (``audit.>``), detection alerts (``alert.>``), identity records (``identity.>``:
accounts merged into one person, or unmerged) and erasures (``erasure.>``: a user forgotten,
see :mod:`ingestor.erasure`).
``MEDIA_EVENTS_DLQ`` holds dead letters under ``dlq.>``, a subject family no consumer of
``MEDIA_EVENTS`` can match.

Both are created with ``NATS_REPLICAS`` replicas (1 on the embedded server; 3 or 5 on a
cluster, so that losing a node loses no acknowledged message), and an existing stream's
replica count is brought up to date at start: JetStream copies the stream to the new
replicas in the background (or drops the extra ones) without a gap in service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from ingestor.errors import IngestorError
from ingestor.events import MEDIA_SUBJECT_ROOT, subject_token

log = logging.getLogger(__name__)

STREAM = "MEDIA_EVENTS"
DLQ_STREAM = "MEDIA_EVENTS_DLQ"
MEDIA_SUBJECTS = "playback.>"
AUDIT_SUBJECTS = "audit.>"
ALERT_SUBJECTS = "alert.>"
IDENTITY_SUBJECTS = "identity.>"
ERASURE_SUBJECTS = "erasure.>"
STREAM_SUBJECTS = [
    MEDIA_SUBJECTS,
    AUDIT_SUBJECTS,
    ALERT_SUBJECTS,
    IDENTITY_SUBJECTS,
    ERASURE_SUBJECTS,
]
OLD_MEDIA_SUBJECTS = "playback.*.*"  # playback.<source>.<media_type>: no server in it
DLQ_SUBJECT_PREFIX = "dlq.media_events"
DUPLICATE_WINDOW_S = 120.0
DLQ_MIN_RETENTION_DAYS = 30
_DAY = 86400.0


def consumer_filter_subjects(servers: Iterable[str], *, records: bool = True) -> list[str] | None:
    """The filter subjects of a durable consumer that reads the events of ``servers`` only
    (``PROJECT_SERVERS``; :mod:`ingestor.servers`); None (no filter) for every server.

    Per server ``playback.<server>.*.*``; ``playback.*.*``, the subjects written before
    servers were in them (every server's: the reader keeps those whose decoded ``server_id``
    is one of ``servers``); and with ``records`` every record family of the stream
    (``audit.>``, ``alert.>``, ``identity.>``...), which name no server in their subject.
    JetStream (2.10 and later) takes several filters if none overlaps, hence exactly four
    tokens per server and exactly three for the old form.

    >>> consumer_filter_subjects([])
    >>> consumer_filter_subjects(["c0de", "8f.2a"], records=False)
    ['playback.8f_2a.*.*', 'playback.c0de.*.*', 'playback.*.*']
    >>> consumer_filter_subjects(["c0de"])[-4:]
    ['audit.>', 'alert.>', 'identity.>', 'erasure.>']
    """
    tokens = sorted({subject_token(server) for server in servers})
    if not tokens:
        return None
    media = [f"{MEDIA_SUBJECT_ROOT}.{token}.*.*" for token in tokens] + [OLD_MEDIA_SUBJECTS]
    others = [s for s in STREAM_SUBJECTS if s != MEDIA_SUBJECTS] if records else []
    return media + others


def media_events_config(retention_days: int, replicas: int = 1) -> StreamConfig:
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
        num_replicas=replicas,
    )


def dlq_config(retention_days: int, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=DLQ_STREAM,
        description="Dead letters of MEDIA_EVENTS, with their error",
        subjects=[f"{DLQ_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max(retention_days, DLQ_MIN_RETENTION_DAYS) * _DAY,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )


async def ensure_streams(js: JetStreamContext, retention_days: int, replicas: int = 1) -> None:
    """Create both streams, or bring an existing one's settings (replicas included) up to
    date.

    Raises :class:`~ingestor.errors.IngestorError` naming ``NATS_REPLICAS`` when the servers
    cannot hold that many replicas (a single server, or a cluster with fewer JetStream nodes).
    """
    for config in (
        media_events_config(retention_days, replicas),
        dlq_config(retention_days, replicas),
    ):
        try:
            try:
                info = await js.stream_info(config.name)
            except NotFoundError:
                await js.add_stream(config)
                log.info("created stream %s with %d replica(s)", config.name, replicas)
                continue
            before = info.config.num_replicas or 1
            await js.update_stream(config)
        except APIError as exc:
            if replicas > 1 and not isinstance(exc, NotFoundError):
                raise IngestorError(
                    f"NATS_REPLICAS={replicas}: NATS refused stream {config.name} with "
                    f"{replicas} replicas ({exc.description or exc}); it needs a cluster "
                    f"of at least {replicas} JetStream servers"
                ) from exc
            raise
        if before != replicas:
            log.info("stream %s: replicas %d -> %d", config.name, before, replicas)
            await _wait_replicated(js, config.name, replicas)
        else:
            log.debug("stream %s is up to date", config.name)


async def _wait_replicated(
    js: JetStreamContext, name: str, replicas: int, timeout: float = 30.0
) -> None:
    """Wait until a stream whose replica count changed has a leader and that many current
    replicas (consumers cannot be created before: JetStream answers "insufficient
    resources"); after ``timeout`` go on, the consumers retry."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        with contextlib.suppress(Exception):
            cluster = (await js.stream_info(name)).cluster
            peers = (cluster.replicas or []) if cluster is not None else []
            if replicas == 1 or (
                cluster is not None
                and cluster.leader
                and len(peers) == replicas - 1
                and all(peer.current for peer in peers)
            ):
                return
        await asyncio.sleep(0.2)
    log.warning("stream %s: still copying to its new replicas after %.0fs", name, timeout)
