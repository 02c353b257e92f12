"""``ingestor import``: history from before install (a Tautulli database, Plex's history,
Playback Reporting, Jellystat) as summary events, through the mode's sink."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Any

from ingestor.anonymize import Anonymizer
from ingestor.app import new_pipeline, open_projection
from ingestor.commands import Out
from ingestor.config import Settings
from ingestor.errors import IngestorError
from ingestor.nats.connection import open_nats
from ingestor.nats.publisher import Publisher
from ingestor.sink import DirectSink, Sink, StreamSink
from ingestor.sources.config import SourcesConfig

log = logging.getLogger(__name__)


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
