"""The composition root: ``run_service`` (``ingestor run``) wires the sources, the sink, the
router, the archiver, the detector and the HTTP server together; the parts every command shares
(opening the projection, a pipeline, the stop signals, the status of a service) live here too.

The other commands are in :mod:`ingestor.commands`, one module each; ``cli.py`` parses
arguments and presents errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from ingestor.anonymize import Anonymizer
from ingestor.archive import ARCHIVER, Archiver
from ingestor.broadcast import DEFAULT_QUEUE_LIMIT, BroadcastHub
from ingestor.config import Settings
from ingestor.dedup import DedupIndex
from ingestor.detection.config import DetectionConfig
from ingestor.detection.detector import DETECTOR, Detector
from ingestor.errors import IngestorError
from ingestor.gctune import tune_gc
from ingestor.http import (
    add_broadcast_route,
    add_health_routes,
    add_query_route,
    build_app,
    start_http,
)
from ingestor.metrics import METRICS_CONTENT_TYPE, Monitor, ProjectionProbe
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.dlq import DeadLetters
from ingestor.nats.publisher import Publisher
from ingestor.nats.streams import STREAM
from ingestor.pipeline import Pipeline
from ingestor.priority import Priority
from ingestor.projection import PROJECTOR, BatchResult, Projection
from ingestor.router import Router, RouterStats
from ingestor.servers import check_projection
from ingestor.sink import DIRECT, DirectSink, Sink, StreamSink
from ingestor.sources.assemble import build_sources
from ingestor.sources.config import SourcesConfig

log = logging.getLogger(__name__)


def open_projection(path: Path, *, read_only: bool = False, **kwargs: Any) -> Projection:
    try:
        return Projection(path, read_only=read_only, **kwargs)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise IngestorError(
                f"{path} is in use by another process (is `ingestor run` up? "
                "stop it, or use `ingestor status` which asks it over HTTP)"
            ) from None
        raise


def new_pipeline(settings: Settings, projection: Projection) -> Pipeline:
    """The write path over ``projection`` (writable), after checking that the file is this
    ``PROJECT_SERVERS`` set's (ingestor/servers.py)."""
    check_projection(projection.con, settings.partition, settings.duckdb_path)
    return Pipeline(
        projection, DedupIndex(tolerance=settings.dedup_tolerance), partition=settings.partition
    )


def install_stop_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)


# --------------------------------------------------------------------------- run


async def run_service(
    settings: Settings,
    sources_config: SourcesConfig | None = None,
    *,
    ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
    detection: DetectionConfig | None = None,
) -> RouterStats | None:
    """``ingestor run``: run the configured sources and project until SIGTERM or SIGINT (or
    ``stop`` is set), then stop taking input, drain, checkpoint and return.

    ``detection`` (default: the defaults, detection on) configures the detector; it runs in
    event-sourcing mode only, where its alerts go through the stream into the projection.
    """
    sources_config = sources_config or SourcesConfig()
    detection = detection or DetectionConfig()
    stopped = stop or asyncio.Event()
    install_stop_signals(stopped.set)
    tune_gc()
    projection = await asyncio.to_thread(
        open_projection, settings.duckdb_path, stale_after=settings.stale_after
    )
    handle: NatsHandle | None = None
    runner = None
    try:
        pipeline = await asyncio.to_thread(new_pipeline, settings, projection)
        router: Router | None = None
        if settings.nats_enabled:
            handle = await open_nats(settings)
        publisher = Publisher(handle.nc) if handle is not None else None
        # the live feed and the metrics hear of every batch once it is committed
        hub, monitor = await _observers(settings, handle, projection)
        on_batch = batch_handlers(hub.publish, monitor.observe_batch)
        sink: Sink
        anonymizer = Anonymizer.open(settings.ip_anonymize, detection.geoip_db)
        # the projection drains a backlog before the archiver and the detector read on
        priority = Priority()
        if settings.event_sourcing:
            assert handle is not None and publisher is not None
            router = Router(
                handle.nc,
                pipeline,
                batch_size=settings.nats_batch_size,
                flush_interval=settings.nats_flush_interval,
                on_batch=on_batch,
                # the live feed's queues are sized for NATS_BATCH_SIZE: batches grow only
                # while nobody listens
                may_grow=lambda: hub.clients == 0,
                priority=priority,
                consumer=settings.partition.durable(PROJECTOR),
                filter_subjects=settings.partition.filters(),
            )
            sink = StreamSink(publisher, anonymizer)
        else:
            sink = DirectSink(
                pipeline,
                publisher,
                batch_size=settings.nats_batch_size,
                on_batch=on_batch,
                anonymizer=anonymizer,
            )
        sources = build_sources(sources_config, sink, settings.data_dir)
        monitor.sources = sources.health
        monitor.router_stats = router.stats if router is not None else None
        # the archive keeps every message after the stream's retention has aged it out
        archiver = (
            Archiver(
                handle.nc,
                settings.archive_dir,
                batch_size=settings.nats_batch_size,
                priority=priority,
                consumer=settings.partition.durable(ARCHIVER),
                filter_subjects=settings.partition.filters(),
            )
            if handle is not None
            else None
        )

        # detection: its own durable consumer; alerts go to the stream, so the router projects
        # them and a replay has them (legacy mode has no router reading the stream)
        detector = (
            Detector(
                handle.nc,
                detection,
                batch_size=settings.nats_batch_size,
                priority=priority,
                consumer=settings.partition.durable(DETECTOR),
                partition=settings.partition,
            )
            if handle is not None and settings.event_sourcing
            else None
        )

        async def status() -> dict[str, Any]:
            status = await collect_status(settings, handle, projection, running=True)
            if router is not None:
                status["router"] = router.stats.as_dict()
            status["sources"] = [health.as_dict() for health in sources.health]
            if archiver is not None:
                status["archive"] = archiver.status()
            status["broadcast"] = hub.stats()
            if detector is not None:
                status["detection"] = detector.status()
            return status

        app = build_app(status)
        add_health_routes(app, monitor.readiness, monitor.render, METRICS_CONTENT_TYPE)
        add_broadcast_route(app, hub, settings.broadcast_token)
        consumer = PROJECTOR if settings.event_sourcing else DIRECT

        async def query(sql: str) -> tuple[Any, int]:
            return await asyncio.to_thread(projection.snapshot_query, sql, consumer)

        add_query_route(app, query, settings.query_token)
        for webhook in sources.webhooks:
            webhook.add_routes(app)
        runner = await start_http(app, settings.http_host, settings.http_port)
        mode = "event sourcing" if router else ("legacy" if handle else "NATS off")
        names = ", ".join(h.name for h in sources.health) or "none configured"
        log.info("ingestor running (%s mode; sources: %s); SIGTERM or Ctrl-C stops it", mode, names)
        if ready is not None:
            ready()
        stop_sources = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            for source in sources.runners:
                tasks.create_task(source.run(stop_sources))
            routing = tasks.create_task(router.run()) if router is not None else None
            if archiver is not None:
                tasks.create_task(archiver.run())
            if detector is not None:
                tasks.create_task(detector.run())
            await stopped.wait()
            log.info("stopping: no new input, draining")
            await runner.cleanup()  # webhooks first: nothing new arrives while we drain
            runner = None
            stop_sources.set()
            if router is not None:
                router.stop()
            if archiver is not None:
                archiver.stop()  # seals what it holds, so a restart starts after it
            if detector is not None:
                detector.stop()
        if routing is None:
            return None
        stats = routing.result()
        log.info(
            "stopped cleanly at checkpoint %d (%d batches, %d events accepted)",
            stats.last_seq,
            stats.batches,
            stats.accepted,
        )
        return stats
    finally:
        if runner is not None:
            await runner.cleanup()
        if handle is not None:
            await handle.close()
        projection.close()


def batch_handlers(*handlers: Callable[[BatchResult], None]) -> Callable[[BatchResult], None]:
    """One ``on_batch`` that calls each post-commit handler in turn (live feed, metrics...).

    They run on the router's loop after the commit: each must be quick and must not await.
    One that raises is logged and skipped; the batch is committed, so it must neither stop
    the router nor keep the other handlers from hearing of it.
    """

    def on_batch(result: BatchResult) -> None:
        for handler in handlers:
            try:
                handler(result)
            except Exception:
                log.exception("post-commit handler %r failed", handler)

    return on_batch


async def _observers(
    settings: Settings, handle: NatsHandle | None, projection: Projection
) -> tuple[BroadcastHub, Monitor]:
    """The live-feed hub and the metrics/readiness monitor of ``run_service``."""
    probe = ProjectionProbe(projection)
    await asyncio.to_thread(probe.prepare)
    monitor = Monitor(
        mode=_mode(settings),
        handle=handle,
        consumer=settings.partition.durable(PROJECTOR) if settings.event_sourcing else None,
        probe=probe,
        max_lag=settings.ready_max_lag,
    )
    # a reader that keeps up holds at most about one batch: allow two before dropping it
    queue_limit = max(DEFAULT_QUEUE_LIMIT, 2 * settings.nats_batch_size)
    monitor.hub = BroadcastHub(queue_limit=queue_limit)
    return monitor.hub, monitor


# --------------------------------------------------------------------------- status


async def collect_status(
    settings: Settings,
    handle: NatsHandle | None,
    projection: Projection | None,
    *,
    running: bool,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "running": running,
        "mode": _mode(settings),
        "nats_url": settings.nats_url,
        "duckdb_path": str(settings.duckdb_path),
        "stream_last_seq": None,
        "stream_messages": None,
        "consumer_pending": None,
        "dlq_messages": None,
        "checkpoint_seq": None,
        "playbacks": None,
    }
    if handle is not None:
        js = handle.js
        with contextlib.suppress(Exception):
            info = await js.stream_info(STREAM)
            status["stream_last_seq"] = info.state.last_seq
            status["stream_messages"] = info.state.messages
        with contextlib.suppress(Exception):
            status["dlq_messages"] = await DeadLetters(js).count()
        with contextlib.suppress(Exception):
            consumer = await js.consumer_info(STREAM, settings.partition.durable(PROJECTOR))
            status["consumer_pending"] = (consumer.num_pending or 0) + (
                consumer.num_ack_pending or 0
            )
    if projection is not None:
        counts = await asyncio.to_thread(_read_counts, projection, settings)
        status.update(counts)
        # (a partition's checkpoint stops at its own servers' last message: no estimate)
        if (
            status["consumer_pending"] is None
            and status["stream_last_seq"] is not None
            and settings.partition.all
        ):
            status["consumer_pending"] = max(
                0, status["stream_last_seq"] - status["checkpoint_seq"]
            )
    return status


def _read_counts(projection: Projection, settings: Settings) -> dict[str, Any]:
    consumer = PROJECTOR if settings.event_sourcing else DIRECT
    with projection.reading() as cursor:  # never across the swap after an erasure
        reader = Projection.over(cursor)
        return {"checkpoint_seq": reader.checkpoint(consumer), **reader.counts()}


def _mode(settings: Settings) -> str:
    if not settings.nats_enabled:
        return "nats-off"
    return "event-sourcing" if settings.nats_event_sourcing else "legacy"
