"""Rebuild a projection from the event log: the one replay loop.

``ingestor replay`` and the workbench (:func:`workbench.replay.replay`) both call
:func:`rebuild`, so what they write is the same projection by construction (ARCHITECTURE
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ingestor.dedup import DedupIndex
from ingestor.eventlog import EventLog
from ingestor.gctune import tuned_gc
from ingestor.pipeline import Message, Pipeline, decode_messages
from ingestor.projection import Projection

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 100_000
"""Decoded messages held before they are projected: bounds the rebuild's memory."""

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
) -> RebuildStats:
    """Project the log's messages after ``projection``'s checkpoint into it.

    Reading stops after ``stop_seq`` (default: the log's last sequence when the call starts)
    or before the first message recorded after ``until_recorded`` (a prefix of the log: the
    state the live projection passed through at that instant). Rejected messages are
    skipped, as the router skips them (they are in the dead-letter stream), and counted.
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
            Pipeline, projection, DedupIndex(tolerance=tolerance), load_index=checkpoint > 0
        )
        pending: list = []
        if stop > checkpoint:
            batches = log_.messages(checkpoint + 1, stop)
            async with contextlib.aclosing(batches) as batches:
                async for batch in batches:
                    done = False
                    if until_recorded is not None:
                        keep = _recorded_prefix(batch, until_recorded)
                        done = keep < len(batch)
                        batch = batch[:keep]
                    decoded, bad = decode_messages(batch)
                    rejected += len(bad)
                    pending.extend(decoded)
                    if batch:
                        last_seq = batch[-1].seq
                        read += len(batch)
                    if len(pending) >= chunk:
                        await asyncio.to_thread(pipeline.project, pending, last_seq)
                        projected += len(pending)
                        pending = []
                    if progress is not None:
                        progress(read, total)
                    if done:
                        break
        if last_seq > checkpoint:
            await asyncio.to_thread(pipeline.project, pending, last_seq)
            projected += len(pending)
    seconds = time.perf_counter() - started
    log.info(
        "rebuilt %d messages (%d projected, %d rejected) up to seq %d in %.2fs",
        *(read, projected, rejected, last_seq, seconds),
    )
    return RebuildStats(read, projected, rejected, last_seq, seconds)


def _recorded_prefix(batch: Sequence[Message], until: datetime) -> int:
    """How many leading messages of ``batch`` the log had recorded by ``until``."""
    for index, message in enumerate(batch):
        if message.recorded_at > until:
            return index
    return len(batch)


__all__ = ["DEFAULT_CHUNK", "RebuildProgress", "RebuildStats", "rebuild"]
