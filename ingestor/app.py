"""The ingestor's commands as async functions: run, demo, simulate, replay, status, dlq.

``cli.py`` parses arguments and presents errors; everything that does work lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import duckdb

from ingestor.anonymize import Anonymizer
from ingestor.archive import ARCHIVER, Archiver
from ingestor.broadcast import DEFAULT_QUEUE_LIMIT, BroadcastHub
from ingestor.config import Settings
from ingestor.dedup import DedupIndex
from ingestor.detection.config import DetectionConfig
from ingestor.detection.detector import DETECTOR, Detector
from ingestor.errors import ConfigError, IngestorError
from ingestor.eventlog import EventLog
from ingestor.events import MediaEvent
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
from ingestor.nats.publisher import Publisher, PublishStats
from ingestor.nats.reader import stream_bounds
from ingestor.nats.server import port_answers
from ingestor.nats.streams import STREAM
from ingestor.pipeline import Pipeline
from ingestor.priority import Priority
from ingestor.projection import PROJECTOR, BatchResult, Projection
from ingestor.rebuild import DEFAULT_CHUNK, rebuild
from ingestor.records import IdentityAction, IdentityRecord, encode_record
from ingestor.router import Router, RouterStats
from ingestor.servers import check_projection
from ingestor.sink import DIRECT, DirectSink, Sink, StreamSink
from ingestor.sources.assemble import build_sources
from ingestor.sources.config import SourcesConfig

if TYPE_CHECKING:  # imported by the demo commands only: `run` never loads the simulator
    from ingestor import simulation as simulator

log = logging.getLogger(__name__)

Out = Callable[[str], None]


class DatabaseLocked(IngestorError):
    """Another process holds the DuckDB file."""


def open_projection(path: Path, *, read_only: bool = False, **kwargs: Any) -> Projection:
    try:
        return Projection(path, read_only=read_only, **kwargs)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise DatabaseLocked(
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
    probe = ProjectionProbe(projection.con)
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
        cursor = projection.con.cursor()
        try:
            counts = await asyncio.to_thread(_read_counts, cursor, settings)
        finally:
            cursor.close()
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


def _read_counts(cursor: duckdb.DuckDBPyConnection, settings: Settings) -> dict[str, Any]:
    reader = Projection.over(cursor)
    counts = reader.counts()
    consumer = PROJECTOR if settings.event_sourcing else DIRECT
    return {"checkpoint_seq": reader.checkpoint(consumer), **counts}


def _mode(settings: Settings) -> str:
    if not settings.nats_enabled:
        return "nats-off"
    return "event-sourcing" if settings.nats_event_sourcing else "legacy"


async def status_command(settings: Settings) -> dict[str, Any]:
    """Ask a running ingestor over HTTP; otherwise read the stream and the file directly."""
    url = f"http://{settings.http_host}:{settings.http_port}/status"
    if port_answers(settings.http_host, settings.http_port):
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(url) as response,
            ):
                if response.status == 200:
                    return await response.json()
    handle = await open_nats(settings) if settings.nats_enabled else None
    projection = None
    try:
        if settings.duckdb_path.exists():
            projection = await asyncio.to_thread(
                open_projection, settings.duckdb_path, read_only=True
            )
        return await collect_status(settings, handle, projection, running=False)
    finally:
        if projection is not None:
            projection.close()
        if handle is not None:
            await handle.close()


def format_status(status: dict[str, Any]) -> str:
    width = max(len(k) for k in status)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in status.items())


# --------------------------------------------------------------------------- demo


@dataclass
class DemoReport:
    published: int
    stored: int
    jetstream_duplicates: int
    accepted: int
    dropped_event_id: int
    dropped_session_key: int
    linked: int
    dead_lettered: int
    playbacks: int
    truth_playbacks: int
    missing: list[tuple]
    unexpected: list[tuple]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected and self.playbacks == self.truth_playbacks


async def run_demo(
    settings: Settings, config: simulator.SimulationConfig, out: Out = print
) -> DemoReport:
    """Embedded server + simulator + projection, checked against the simulator's truth."""
    if not settings.partition.all:
        raise ConfigError(["PROJECT_SERVERS is for `ingestor run`: the demo projects every server"])
    from ingestor import simulation as simulator

    started = time.monotonic()
    tune_gc()
    sim = simulator.simulate(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    truth_path = settings.data_dir / "demo-truth.json"
    simulator.write_truth(truth_path, sim)
    out(
        f"simulated {len(sim.events):,} events for {config.users} users over {config.days} days "
        f"(seed {config.seed}); ground truth: {len(sim.truth):,} playbacks -> {truth_path}"
    )
    projection = await asyncio.to_thread(
        open_projection, settings.duckdb_path, stale_after=settings.stale_after
    )
    handle: NatsHandle | None = None
    try:
        before = await asyncio.to_thread(projection.counts)
        pipeline = await asyncio.to_thread(new_pipeline, settings, projection)
        dead = 0
        if settings.nats_enabled:
            handle = await open_nats(settings)
            where = handle.server.url + " (embedded)" if handle.server else settings.nats_url
            out(f"NATS JetStream at {where}; DuckDB at {settings.duckdb_path}")
        if settings.event_sourcing:
            assert handle is not None
            publish = await _publish_with_progress(Publisher(handle.nc), sim.events, out)
            _, target = await stream_bounds(handle.nc)
            router = Router(
                handle.nc,
                pipeline,
                batch_size=settings.nats_batch_size,
                flush_interval=min(settings.nats_flush_interval, 0.2),
            )
            task = asyncio.create_task(router.run())
            # the archive too, so the data directory can be replayed offline afterwards
            archiver = Archiver(
                handle.nc,
                settings.archive_dir,
                batch_size=settings.nats_batch_size,
                segment_max_age=0.5,  # seal promptly: the demo ends when the feed is in
            )
            archiving = asyncio.create_task(archiver.run())
            while not await router.wait_for_seq(target, timeout=2):
                if task.done():
                    break
                out(f"  projected up to seq {router.stats.last_seq:,} of {target:,}")
            router.stop()
            stats = await task
            dead = stats.dead_lettered
            await archiver.wait_for_seq(target, timeout=60)
            archiver.stop()  # seals what it holds
            await archiving
            out(f"archived up to seq {archiver.stats.last_sealed_seq:,} in {settings.archive_dir}")
        else:
            sink = DirectSink(
                pipeline,
                Publisher(handle.nc) if handle is not None else None,
                batch_size=settings.nats_batch_size,
            )
            publish = await sink.emit(sim.events)
        after = await asyncio.to_thread(projection.counts)
        projected = await asyncio.to_thread(_playback_keys, projection)
    finally:
        projection.close()
        if handle is not None:
            await handle.close()
    truth = simulator.truth_keys(sim.truth)
    report = DemoReport(
        published=len(sim.events),
        stored=publish.stored,
        jetstream_duplicates=publish.duplicate if settings.event_sourcing else 0,
        accepted=after["accepted"] - before["accepted"],
        dropped_event_id=after["dropped_event_id"] - before["dropped_event_id"],
        dropped_session_key=after["dropped_session_key"] - before["dropped_session_key"],
        linked=after["linked"] - before["linked"],
        dead_lettered=dead,
        playbacks=after["playbacks"],
        truth_playbacks=len(sim.truth),
        missing=sorted(truth - projected),
        unexpected=sorted(projected - truth),
        seconds=time.monotonic() - started,
    )
    out(format_demo(report, sim.expected, first_run=before["accepted"] == 0))
    return report


async def _publish_with_progress(
    publisher: Publisher, events: Sequence[MediaEvent], out: Out
) -> PublishStats:
    stats = PublishStats()
    step = max(1, len(events) // 5)
    async for result in publisher.iter_publish(events):
        stats.add(result)
        if stats.total % step == 0 and stats.total < len(events):
            out(f"  published {stats.total:,} / {len(events):,}")
    return stats


def _playback_keys(projection: Projection) -> set[tuple]:
    """The projected playbacks, comparable with ``simulator.truth_keys``."""
    from ingestor.simulation import TRUTH_SQL

    return set(projection.con.execute(TRUTH_SQL).fetchall())


def format_demo(report: DemoReport, expected: simulator.ExpectedCounts, *, first_run: bool) -> str:
    def line(label: str, value: int, want: int | None = None) -> str:
        tail = f"   (simulator injected {want:,})" if want is not None and first_run else ""
        return f"  {label:<34}{value:>10,}{tail}"

    verdict = (
        "OK: projected playbacks equal the ground truth"
        if report.ok
        else (
            f"MISMATCH: {len(report.missing)} truth playbacks missing, "
            f"{len(report.unexpected)} projected playbacks not in the truth"
        )
    )
    lines = [
        "",
        "demo results" + ("" if first_run else " (on the data an earlier run left)"),
        line("events published", report.published),
        line("  stored by JetStream", report.stored),
        line("  JetStream duplicates (2 min window)", report.jetstream_duplicates),
        line(
            "exact repeats (JetStream + tier a)",
            report.jetstream_duplicates + report.dropped_event_id,
            expected.dropped_event_id,
        ),
        line("events accepted", report.accepted),
        line("dropped, tier a (event_id)", report.dropped_event_id),
        line(
            "dropped, tier b (session key)",
            report.dropped_session_key,
            expected.dropped_session_key,
        ),
        line("linked, tier c (correlation)", report.linked, expected.linked),
        line("dead-lettered", report.dead_lettered),
        line("playbacks projected", report.playbacks),
        line("playbacks in the ground truth", report.truth_playbacks),
        f"  took {report.seconds:.1f}s",
        verdict,
    ]
    for label, rows in (("missing", report.missing), ("unexpected", report.unexpected)):
        for row in rows[:5]:
            lines.append(f"  {label}: {row}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- simulate


async def simulate_command(
    settings: Settings,
    config: simulator.SimulationConfig,
    *,
    out_path: Path | None,
    truth_path: Path | None,
    out: Out = print,
) -> int:
    from ingestor import simulation as simulator

    sim = simulator.simulate(config)
    if truth_path is not None:
        simulator.write_truth(truth_path, sim)
        out(f"wrote ground truth ({len(sim.truth):,} playbacks) to {truth_path}")
    if out_path is not None:
        n = simulator.write_jsonl(out_path, sim.events)
        out(f"wrote {n:,} events to {out_path}")
        return 0
    handle = await open_nats(settings)
    try:
        stats = await _publish_with_progress(Publisher(handle.nc), sim.events, out)
    finally:
        await handle.close()
    out(
        f"published {stats.total:,} events: {stats.stored:,} stored, {stats.duplicate:,} duplicates"
    )
    return 0


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayReport:
    messages: int
    applied: int
    rejected: int
    last_seq: int
    counts: dict[str, int]
    seconds: float


async def replay_command(
    settings: Settings,
    output: Path,
    *,
    until: datetime | None = None,
    clock: str = "recorded",
    chunk: int = DEFAULT_CHUNK,
    out: Out = print,
) -> ReplayReport:
    """Rebuild the projection from the log (the archive, then the stream's tail) into a new
    DuckDB file at ``output`` (:func:`ingestor.rebuild.rebuild`, the workbench's own).

    With ``until`` on the recorded clock the file is the projection of the log's prefix
    recorded by then, rebuilt from scratch. On the occurred clock the whole log is rebuilt
    and the file holds what had happened by ``until`` as known now
    (:mod:`ingestor.projection.asof`).
    """
    if output.exists():
        raise IngestorError(
            f"{output} exists; replay writes a new file (remove it or pick another path)"
        )
    started = time.monotonic()
    tune_gc()
    handle = await open_nats(settings)
    occurred = clock == "occurred" and until is not None
    # the occurred clock reads the whole log's projection, then writes the slice of it
    target = output.with_name(output.name + ".whole") if occurred else output
    projection = await asyncio.to_thread(open_projection, target, stale_after=settings.stale_after)
    try:
        # the archive first: the stream's retention may have aged the oldest messages out
        archive = settings.archive_dir if settings.archive_dir.is_dir() else None
        log_ = EventLog(archive, nc=handle.nc)
        bounds = await log_.bounds()
        if bounds.first_seq > 1:
            out(
                f"warning: the log starts at sequence {bounds.first_seq:,}: earlier messages "
                f"aged out of the stream and are not in the archive ({settings.archive_dir})"
            )
        reported = [0]

        def progress(done: int, total: int) -> None:
            if done - reported[0] >= chunk or (done == total and done != reported[0]):
                reported[0] = done
                out(f"  replayed {done:,} of {total:,} messages")

        stats = await rebuild(
            log_,
            projection,
            tolerance=settings.dedup_tolerance,
            until_recorded=until if clock == "recorded" else None,
            chunk=chunk,
            progress=progress,
            partition=settings.partition,
        )
        if occurred:
            assert until is not None
            await asyncio.to_thread(_write_occurred, projection, until, output)
            await asyncio.to_thread(projection.close)
            for leftover in (target, target.with_name(target.name + ".wal")):
                leftover.unlink(missing_ok=True)
            projection = await asyncio.to_thread(
                open_projection, output, stale_after=settings.stale_after
            )
        counts = await asyncio.to_thread(projection.counts)
    finally:
        projection.close()
        await handle.close()
    applied = stats.projected
    return ReplayReport(
        stats.messages, applied, stats.rejected, stats.last_seq, counts, time.monotonic() - started
    )


def _write_occurred(projection: Projection, until: datetime, output: Path) -> None:
    """Write what had happened by ``until`` (as the whole log knows it) to ``output``."""
    from ingestor.projection.asof import open_as_of, resolve, write_as_of

    cursor, _ = open_as_of(projection.con, resolve(projection.con, until, "occurred"))
    try:
        write_as_of(cursor, output)
    finally:
        cursor.close()


# --------------------------------------------------------------------------- import


async def import_tautulli_command(
    settings: Settings, path: Path, *, server_id: str | None, out: Out = print
) -> int:
    """``ingestor import tautulli-db PATH``: a Tautulli database's history as summary events,
    through the mode's sink; resumable, and a second import of the same file adds nothing."""
    from ingestor.progress import Progress
    from ingestor.sources.tautulli.db_import import import_tautulli_db

    if not path.exists():
        raise IngestorError(f"{path}: no such file")
    async with _import_sink(settings) as sink:
        bar = Progress(f"importing {path.name}")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done)

        result = await import_tautulli_db(
            path,
            sink,
            server_id=server_id,
            progress=progress,
            state_path=settings.data_dir / "sources" / "tautulli-import.json",
        )
        bar.close()
    resumed = f", resumed after row {result.resumed_after:,}" if result.resumed_after else ""
    out(
        f"imported {path} (server {result.server_id}): {result.rows_read:,} of "
        f"{result.total_rows:,} history rows read{resumed}; {result.stored:,} new events, "
        f"{result.duplicate:,} already known, {result.invalid:,} invalid rows skipped"
    )
    if settings.event_sourcing:
        out("the events are in the stream; `ingestor run` projects them")
    return 0


async def import_history_command(
    settings: Settings, args: Any, *, sources: SourcesConfig | None = None, out: Out = print
) -> int:
    """``ingestor import plex-history | playback-reporting PATH | jellystat PATH``: history
    from before install as summary events, through the mode's sink; resumable, and a second
    run adds nothing (see :mod:`ingestor.sources.history_import`)."""
    from ingestor.progress import Progress
    from ingestor.sources import history_import

    kind: str = args.kind
    run = await _history_importer(settings, args, sources or SourcesConfig.from_env())
    async with _import_sink(settings) as sink:
        bar = Progress(f"importing {kind}")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done)

        state = settings.data_dir / "sources" / f"{kind}-import.json"
        result: history_import.ImportResult = await run(sink, progress, state)
        bar.close()
    resumed = ", resumed where the last run stopped" if result.resumed else ""
    out(
        f"imported {result.origin} (server {result.server_id}): {result.rows_read:,} of "
        f"{result.total_rows:,} rows read{resumed}; {result.stored:,} new events, "
        f"{result.duplicate:,} already known, {result.invalid:,} invalid rows skipped"
    )
    if settings.event_sourcing:
        out("the events are in the stream; `ingestor run` projects them")
    return 0


@contextlib.asynccontextmanager
async def _import_sink(settings: Settings) -> AsyncIterator[Sink]:
    """Where an importer's events go in the configured mode: the stream (event sourcing),
    or the projection directly (legacy: notified on NATS too; NATS off)."""
    handle = await open_nats(settings) if settings.nats_enabled else None
    projection = None
    try:
        if settings.event_sourcing:
            assert handle is not None
            yield StreamSink(Publisher(handle.nc), Anonymizer.open(settings.ip_anonymize))
        else:
            projection = await asyncio.to_thread(
                open_projection, settings.duckdb_path, stale_after=settings.stale_after
            )
            pipeline = await asyncio.to_thread(new_pipeline, settings, projection)
            publisher = Publisher(handle.nc) if handle is not None else None
            yield DirectSink(
                pipeline,
                publisher,
                batch_size=settings.nats_batch_size,
                anonymizer=Anonymizer.open(settings.ip_anonymize),
            )
    finally:
        if projection is not None:
            projection.close()
        if handle is not None:
            await handle.close()


async def _history_importer(settings: Settings, args: Any, sources: SourcesConfig) -> Any:
    """The chosen importer with its arguments checked, as ``run(sink, progress, state)``."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from ingestor.sources.jellyfin.jellystat_import import import_jellystat
    from ingestor.sources.jellyfin.playback_reporting_import import import_playback_reporting
    from ingestor.sources.plex.history_import import import_plex_history

    kind, path = args.kind, args.path
    if kind == "plex-history":
        poll = sources.plex_polls[0] if sources.plex_polls else None
        url = args.url or (poll.url if poll else None)
        token = args.token or (poll.token if poll else None)
        if not url or not token:
            raise IngestorError(
                "import plex-history needs --url and --token (or PLEX_URL, PLEX_TOKEN)"
            )
        webhook = sources.plex_webhook
        owner = (
            args.owner_id
            or (poll.owner_id if poll else None)
            or (webhook.owner_id if webhook else None)
        )
        return lambda sink, progress, state: import_plex_history(
            url, token, sink, owner_id=owner, until=args.until, progress=progress, state_path=state
        )
    if path is None:
        raise IngestorError(f"import {kind} needs the file's path")
    if kind == "playback-reporting":
        try:
            tz = ZoneInfo(args.tz) if args.tz else UTC
        except (ZoneInfoNotFoundError, ValueError):
            raise IngestorError(
                f"--tz {args.tz!r} is not a time zone (e.g. Europe/Paris)"
            ) from None
        if not args.tz:
            log.warning("reading DateCreated as UTC: pass --tz if Jellyfin ran in local time")
        return lambda sink, progress, state: import_playback_reporting(
            path, sink, server_id=args.server_id, tz=tz, progress=progress, state_path=state
        )
    return lambda sink, progress, state: import_jellystat(
        path, sink, server_id=args.server_id, progress=progress, state_path=state
    )


# --------------------------------------------------------------------------- dlq


async def dlq_command(settings: Settings, action: str, seq: int | None, out: Out = print) -> int:
    import json

    handle = await open_nats(settings)
    try:
        letters = DeadLetters(handle.js)
        if action == "list":
            n = 0
            async for letter in letters.entries():
                n += 1
                out(json.dumps(letter.as_dict()))
            if n == 0:
                print("the dead-letter stream is empty", file=sys.stderr)
        elif action == "retry":
            n = await letters.retry(seq)
            out(f"republished {n} dead letter(s) to {STREAM}")
        else:
            n = await letters.purge(seq)
            out(f"purged {n} dead letter(s)")
    finally:
        await handle.close()
    return 0


# ---------------------------------------------------------------------- identity records

IDENTITY_LIST_SQL = (
    "SELECT person, server_id, user_id, since_seq, since FROM person_accounts"
    " ORDER BY person, server_id, user_id"
)


async def identity_publish_command(
    settings: Settings,
    action: IdentityAction,
    person: str,
    accounts: Sequence[tuple[str, str]],
    *,
    by: str = "",
    notes: str = "",
    out: Out = print,
) -> int:
    """Publish a merge or unmerge to the stream, for the router to project."""
    if not settings.nats_enabled:
        raise IngestorError(
            "an identity record is a record in the stream, and NATS_ENABLED=false has none: "
            "enable NATS (the projection changes only through the stream)"
        )
    if not settings.event_sourcing:
        raise IngestorError(
            "NATS_EVENT_SOURCING=false (legacy mode): no router projects the stream, so an "
            "identity record would never reach the projection; run in event-sourcing mode"
        )
    try:
        record = IdentityRecord.make(
            action, person, accounts, datetime.now(UTC), by=by, notes=notes
        )
    except ValueError as exc:
        raise IngestorError(str(exc)) from None
    handle = await open_nats(settings)
    try:
        ack = await handle.js.publish(
            record.subject,
            encode_record(record),
            headers={"Nats-Msg-Id": record.record_id},
        )
    finally:
        await handle.close()
    named = ", ".join(f"{a.server_id}/{a.user_id}" for a in record.accounts) or "all accounts"
    stored = "already held" if ack.duplicate else "stored"
    out(
        f"identity {action} of {record.person} ({named}): the stream {stored} it as message "
        f"{ack.seq}; the projection shows it once the ingestor has applied it"
    )
    return 0


async def identity_list_command(
    settings: Settings, *, as_json: bool = False, out: Out = print
) -> int:
    """Who is whose now: asks a running ingestor over HTTP, otherwise reads the file."""
    import json

    import pyarrow as pa

    rows: list[dict[str, Any]] | None = None
    if port_answers(settings.http_host, settings.http_port):
        url = f"http://{settings.http_host}:{settings.http_port}/query"
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.query_token:
            headers["Authorization"] = f"Bearer {settings.query_token}"
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.post(url, data=IDENTITY_LIST_SQL.encode(), headers=headers) as response,
            ):
                if response.status == 200:
                    rows = pa.ipc.open_stream(await response.read()).read_all().to_pylist()
    if rows is None:
        if not settings.duckdb_path.exists():
            raise IngestorError(f"no projection at {settings.duckdb_path} (DUCKDB_PATH)")
        projection = await asyncio.to_thread(open_projection, settings.duckdb_path, read_only=True)
        try:
            try:
                rows = projection.con.sql(IDENTITY_LIST_SQL).to_arrow_table().to_pylist()
            except duckdb.CatalogException:  # a file from before identity records
                rows = []
        finally:
            projection.close()
    for row in rows:
        if as_json:
            out(json.dumps(row, default=str))
        else:
            fields = (row["person"], row["server_id"], row["user_id"], row["since_seq"])
            out("{}\t{}\t{}\tsince seq {}".format(*fields))
    if not rows:
        print("no accounts are merged into a person", file=sys.stderr)
    return 0


async def erase_command(settings: Settings, user_id: str, server_id: str | None) -> int:
    """``ingestor erase``: all of it is in :mod:`ingestor.erasure`."""
    from ingestor.erasure import erase

    return 0 if await erase(settings, user_id, server_id) is not None else 1
