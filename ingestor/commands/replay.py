"""``ingestor replay``: the projection rebuilt from the log into a new DuckDB file."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ingestor.app import open_projection
from ingestor.commands import Out
from ingestor.config import Settings
from ingestor.errors import IngestorError
from ingestor.eventlog import EventLog
from ingestor.gctune import tune_gc
from ingestor.nats.connection import open_nats
from ingestor.projection import Projection
from ingestor.rebuild import DEFAULT_CHUNK, rebuild


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
