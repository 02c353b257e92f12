"""Rebuild a projection from the event log: the one replay loop.

``ingestor replay`` and the workbench (:func:`workbench.replay.replay`) both call
:func:`rebuild`, so what they write is the same projection by construction (docs/architecture.md,
invariant 2). It reads the :class:`~ingestor.eventlog.EventLog` (archive segments, then the
stream's tail) after the projection's checkpoint and feeds it, chunk by chunk, to the
ingestor's own write path (:class:`~ingestor.pipeline.Pipeline`). A projection that already
holds part of the log resumes after its checkpoint, as a restarted ingestor does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from ingestor.batch import decode_table
from ingestor.dedup import DedupIndex
from ingestor.eventlog import EventLog
from ingestor.gctune import tuned_gc
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.servers import Partition

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 100_000
"""Messages read, decoded and projected at once (one Arrow table): bounds the rebuild's
memory."""

RebuildProgress = Callable[[int, int], None]
"""Called as ``progress(messages_read, messages_to_read)`` after each chunk read."""


@dataclass(frozen=True)
class RebuildStats:
    """What a rebuild read and projected."""

    messages: int  # log messages read
    projected: int  # decoded items (events, decisions, alerts) fed to the projection
    rejected: int  # messages that are not a readable event, decision or alert
    last_seq: int  # the projection's checkpoint afterwards
    seconds: float


async def rebuild(
    log_: EventLog,
    projection: Projection,
    *,
    tolerance: float,
    stop_seq: int | None = None,
    until_recorded: datetime | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: RebuildProgress | None = None,
    partition: Partition | None = None,
) -> RebuildStats:
    """Project the log's messages after ``projection``'s checkpoint into it.

    Reading stops after ``stop_seq`` (default: the log's last sequence when the call starts)
    or before the first message recorded after ``until_recorded`` (a prefix of the log: the
    state the live projection passed through at that instant). Rejected messages are
    skipped, as the router skips them (they are in the dead-letter stream), and counted.
    ``partition``: project only these servers' events (``PROJECT_SERVERS``), as that
    ingestor's router does.
    """
    started = time.perf_counter()
    checkpoint = await asyncio.to_thread(projection.checkpoint)
    bounds = await log_.bounds()
    stop = bounds.last_seq if stop_seq is None else min(stop_seq, bounds.last_seq)
    if checkpoint == 0 and bounds.first_seq > 1:
        log.warning(
            "the log starts at sequence %d: earlier messages aged out of the stream and are "
            "not in the archive, so the rebuild lacks them (point the EventLog at ARCHIVE_DIR)",
            bounds.first_seq,
        )
    total = max(0, stop - max(checkpoint + 1, bounds.first_seq) + 1)
    read = projected = rejected = 0
    last_seq = checkpoint
    with tuned_gc():
        pipeline = await asyncio.to_thread(
            Pipeline,
            projection,
            DedupIndex(tolerance=tolerance),
            load_index=checkpoint > 0,
            partition=partition,
        )
        if stop > checkpoint:
            tables = log_.tables(checkpoint + 1, stop, batch=chunk)
            async with contextlib.aclosing(tables) as tables:
                async for table in tables:
                    done = False
                    if until_recorded is not None:
                        keep = _recorded_rows(table, until_recorded)
                        done = keep < table.num_rows
                        table = table.slice(0, keep)
                    if table.num_rows:
                        last_seq = table.column("seq")[-1].as_py()
                        read += table.num_rows
                        good, bad = await asyncio.to_thread(_project, pipeline, table, last_seq)
                        projected += good
                        rejected += bad
                    if progress is not None:
                        progress(read, total)
                    if done:
                        break
    seconds = time.perf_counter() - started
    log.info(
        "rebuilt %d messages (%d projected, %d rejected) up to seq %d in %.2fs",
        *(read, projected, rejected, last_seq, seconds),
    )
    return RebuildStats(read, projected, rejected, last_seq, seconds)


def _project(pipeline: Pipeline, table: pa.Table, last_seq: int) -> tuple[int, int]:
    """Decode and project one chunk of the log; (items projected, messages rejected)."""
    decoded = decode_table(table)
    pipeline.project(decoded, last_seq)
    return decoded.events + len(decoded.records), len(decoded.rejected)


def _recorded_rows(table: pa.Table, until: datetime) -> int:
    """How many leading rows of ``table`` the log had recorded by ``until``."""
    later = pc.greater(table.column("recorded_at"), pa.scalar(until, pa.timestamp("us", "UTC")))
    first = pc.index(later, True).as_py()
    return table.num_rows if first < 0 else first


__all__ = ["DEFAULT_CHUNK", "RebuildProgress", "RebuildStats", "rebuild"]
