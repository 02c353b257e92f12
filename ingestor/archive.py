"""The event archive: every message of ``MEDIA_EVENTS``, in sequence order, in sealed Parquet
segments that outlive the stream's retention.

The :class:`Archiver` is a durable pull consumer named ``archiver`` on ``MEDIA_EVENTS`` (all
subjects). It buffers what it reads and writes the buffer as one **segment**,
``seg-{first_seq:012d}-{last_seq:012d}.parquet`` (columns ``seq``, ``recorded_at``, ``subject``,
``data``; zstd), when the segment reaches ``segment_max_messages`` or ``segment_max_bytes``,
when its first message has waited ``segment_max_age`` seconds (wall clock of the archiver:
housekeeping, not event time), or on stop. A segment is written under a ``.tmp`` name, fsynced,
renamed, and the directory fsynced: a reader lists only complete segments.

Messages are acked (``AckAll`` on the segment's last one) only after their segment is sealed,
and at every start the durable is recreated at the last sealed sequence + 1, read from the
file names; so the archive, not the server's ack floor, decides where archiving resumes. A
``kill -9`` loses nothing and doubles nothing: the unsealed messages are simply read again.

With ``PROJECT_SERVERS`` (:mod:`ingestor.servers`) the durable is named for the server set and
filtered to its servers' subjects, the old-form media subjects and every record: the archive
holds the messages that ingestor reads, so its ``DATA_DIR`` replays to its own projection.

The archive is the log, not the projection: duplicates, audit decisions and alerts are all
kept, exactly as the stream stored them. Gaps in ``seq`` (messages deleted from the stream)
are kept as gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ingestor.errors import IngestorError
from ingestor.nats.continuity import Continuity, delivery_seq
from ingestor.nats.reader import message_of, pull_status
from ingestor.nats.streams import STREAM
from ingestor.pipeline import Message
from ingestor.priority import Priority
from ingestor.sources.base import Backoff
from ingestor.waiting import wait_until

log = logging.getLogger(__name__)
T = TypeVar("T")

ARCHIVER = "archiver"
MiB = 1024 * 1024
SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
    ],
    metadata={"stream": STREAM},
)
SEGMENT_NAME = re.compile(r"^seg-(\d{12})-(\d{12})\.parquet$")
TMP_SUFFIX = ".tmp"
PULL_EXPIRES_S = 1.0
_OVERHEAD_BYTES = 24  # per message, on top of its data and subject: seq and timestamp
_FINAL_SEAL_ATTEMPTS = 3


class ArchiveError(IngestorError):
    """The archive directory is inconsistent (overlapping segments): a person must look."""


@dataclass(frozen=True, slots=True, order=True)
class Segment:
    """One sealed segment: the sequences it holds (inclusive) and its file."""

    first_seq: int
    last_seq: int
    path: Path

    @staticmethod
    def name_of(first_seq: int, last_seq: int) -> str:
        """The file name of a segment.

        >>> Segment.name_of(1, 1000)
        'seg-000000000001-000000001000.parquet'
        """
        return f"seg-{first_seq:012d}-{last_seq:012d}.parquet"


def archive_segments(archive_dir: Path) -> list[Segment]:
    """The sealed segments of ``archive_dir`` in sequence order; ``[]`` if there is none.

    Only complete segments are listed (never a ``.tmp`` being written). Raises
    :class:`ArchiveError` when two segments overlap, which the archiver never produces.
    """
    if not archive_dir.is_dir():
        return []
    segments: list[Segment] = []
    for path in archive_dir.iterdir():
        match = SEGMENT_NAME.match(path.name)
        if match is None:
            continue
        first, last = int(match.group(1)), int(match.group(2))
        if first > last:
            raise ArchiveError(f"{path}: first sequence {first} is after last sequence {last}")
        segments.append(Segment(first, last, path))
    segments.sort()
    for before, after in itertools.pairwise(segments):
        if after.first_seq <= before.last_seq:
            raise ArchiveError(
                f"archive segments overlap: {before.path.name} and {after.path.name} both hold "
                f"sequence {after.first_seq}; move one of them out of {archive_dir}"
            )
    return segments


def segment_table(messages: Sequence[Message]) -> pa.Table:
    """The Arrow table of a segment holding ``messages``."""
    return pa.Table.from_arrays(
        [
            pa.array([m.seq for m in messages], pa.int64()),
            pa.array([m.recorded_at for m in messages], pa.timestamp("us", tz="UTC")),
            pa.array([m.subject for m in messages], pa.string()),
            pa.array([m.data for m in messages], pa.binary()),
        ],
        schema=SEGMENT_SCHEMA,
    )


def write_segment(archive_dir: Path, messages: Sequence[Message]) -> Segment:
    """Seal ``messages`` (in sequence order) as one segment and return it.

    Written under a ``.tmp`` name, fsynced, renamed into place, and the directory fsynced, so
    the segment exists complete or not at all, even across a power cut.
    """
    if not messages:
        raise ValueError("a segment holds at least one message")
    first, last = messages[0].seq, messages[-1].seq
    path = archive_dir / Segment.name_of(first, last)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with tmp.open("wb") as sink:
            pq.write_table(segment_table(messages), sink, compression="zstd")
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(archive_dir)
    return Segment(first, last, path)


def read_segment(
    path: Path, start_seq: int | None = None, until_seq: int | None = None
) -> pa.Table:
    """A segment's rows with ``start_seq <= seq <= until_seq`` (bounds optional), in order."""
    filters = []
    if start_seq is not None:
        filters.append(("seq", ">=", start_seq))
    if until_seq is not None:
        filters.append(("seq", "<=", until_seq))
    table = pq.read_table(path, filters=filters or None)
    return table.select(SEGMENT_SCHEMA.names).cast(SEGMENT_SCHEMA)


def remove_leftovers(archive_dir: Path) -> list[Path]:
    """Delete the ``.tmp`` files a crash left behind mid-write; return what was deleted."""
    removed = []
    for path in archive_dir.glob(f"seg-*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the archiver


@dataclass
class ArchiverStats:
    """What the archiver did since it started, and where the archive stands."""

    sealed_segments: int = 0
    last_sealed_seq: int = 0
    archived_messages: int = 0  # sealed by this run
    redeliveries_skipped: int = 0
    restarts: int = 0  # consumer recreated after a NATS failure
    write_errors: int = 0
    last_error: str | None = None
    last_seal_at: float | None = None  # Unix time


@dataclass(slots=True)
class _Buffered:
    message: Message
    reply: str  # its ack subject
    arrived: float  # time.monotonic() when it was read
    size: int


class _Restart(Exception):
    """The consumer must be recreated from the archive (NATS reconnected, consumer gone)."""


class Archiver:
    """Archive ``MEDIA_EVENTS`` into ``archive_dir`` until told to stop.

    Wire it next to the router: ``tasks.create_task(archiver.run())``, and
    ``archiver.stop()`` when stopping; ``run`` seals what it holds and returns.
    """

    def __init__(
        self,
        nc: Client,
        archive_dir: Path,
        *,
        batch_size: int = 1000,
        segment_max_messages: int = 100_000,
        segment_max_bytes: int = 64 * MiB,
        segment_max_age: float = 600.0,
        consumer: str = ARCHIVER,
        priority: Priority | None = None,
        filter_subjects: list[str] | None = None,
    ) -> None:
        if segment_max_messages < 1 or segment_max_bytes < 1 or batch_size < 1:
            raise ValueError("batch_size and segment limits must be positive")
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.archive_dir = Path(archive_dir)
        self.batch_size = batch_size
        self.segment_max_messages = segment_max_messages
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age = segment_max_age
        self.consumer = consumer
        self.priority = priority  # waited for while the router drains a backlog
        self.stats = ArchiverStats()
        self._buffer: deque[_Buffered] = deque()
        self._buffered_bytes = 0
        self._high_water = 0  # highest sequence sealed or buffered
        self._stopping = asyncio.Event()
        self._halt = asyncio.Event()  # the current consumer is done (failure): stop sealing
        self._wake = asyncio.Event()  # something for the sealer to look at
        self._room = asyncio.Event()  # the buffer has room again
        self._request_done = asyncio.Event()
        self._outstanding = 0
        self._reconnects = 0
        self._lost: str | None = None
        # PROJECT_SERVERS: the archive of those servers' messages (and every record), checked
        # by delivery sequence since stream sequences jump (ingestor/servers.py)
        self.filter_subjects = filter_subjects
        self._continuity = Continuity(nc.stats["reconnects"], by_delivery=bool(filter_subjects))
        self._sealed = asyncio.Condition()

    # ------------------------------------------------------------------ lifecycle

    @property
    def last_sealed_seq(self) -> int:
        return self.stats.last_sealed_seq

    def stop(self) -> None:
        """Stop reading; ``run`` seals what it holds, acks it and returns."""
        self._stopping.set()

    def status(self) -> dict[str, object]:
        """Where the archive stands, for ``/status``."""
        return {
            "archive_dir": str(self.archive_dir),
            "sealed_segments": self.stats.sealed_segments,
            "last_sealed_seq": self.stats.last_sealed_seq,
            "buffered_messages": len(self._buffer),
            "buffered_bytes": self._buffered_bytes,
            "archived_messages": self.stats.archived_messages,
            "redeliveries_skipped": self.stats.redeliveries_skipped,
            "restarts": self.stats.restarts,
            "write_errors": self.stats.write_errors,
            "last_error": self.stats.last_error,
            "last_seal_at": self.stats.last_seal_at,
        }

    async def run(self) -> ArchiverStats:
        """Archive until :meth:`stop`; NATS failures are retried with backoff, never raised.

        Raises :class:`ArchiveError` at start if the archive directory holds overlapping
        segments.
        """
        await asyncio.to_thread(self._recover)
        backoff = Backoff(initial=0.2, maximum=15.0)
        while not self._stopping.is_set():
            try:
                await self._run_consumer()
                backoff.reset()
            except Exception as exc:
                self.stats.restarts += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("archiver: %s; recreating the consumer after a pause", exc)
                if await backoff.sleep(self._stopping):
                    break
        if self._buffer:  # stopped while the consumer was being recreated
            await self._seal_due(final=True)
        log.info(
            "archiver stopped: %d segments, sealed up to seq %d",
            self.stats.sealed_segments,
            self.stats.last_sealed_seq,
        )
        return self.stats

    async def wait_for_seq(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until the archive is sealed up to ``seq``; False on timeout."""
        return await wait_until(self._sealed, lambda: self.stats.last_sealed_seq >= seq, timeout)

    def _recover(self) -> None:
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        for path in remove_leftovers(self.archive_dir):
            log.info("removed %s, left behind by an interrupted seal", path.name)
        segments = archive_segments(self.archive_dir)
        self.stats.sealed_segments = len(segments)
        self.stats.last_sealed_seq = segments[-1].last_seq if segments else 0

    # ------------------------------------------------------------------ consumer

    async def _create_consumer(self) -> tuple[int, int]:
        """(Re)create the consumer after the last sealed segment; (start, stream's first seq)."""
        start = self.stats.last_sealed_seq + 1
        info = await self.js.stream_info(STREAM)
        if self.stats.last_sealed_seq and info.state.first_seq > start:
            log.warning(
                "messages %d..%d aged out of %s before they were archived; the archive "
                "continues at %d",
                start,
                info.state.first_seq - 1,
                STREAM,
                info.state.first_seq,
            )
        if info.state.last_seq < self.stats.last_sealed_seq:
            log.warning(
                "%s ends at seq %d, before the archive (sealed up to %d): was the stream "
                "recreated? The archiver waits for seq %d",
                STREAM,
                info.state.last_seq,
                self.stats.last_sealed_seq,
                start,
            )
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(STREAM, self.consumer)
        await self.js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=self.consumer,
                description="the event archive: every message, sealed into Parquet",
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
                opt_start_seq=start if start > 1 else None,
                ack_policy=AckPolicy.ALL,
                # unsealed messages wait unacked up to the segment's age limit
                ack_wait=self.segment_max_age + 120.0,
                max_deliver=-1,
                max_ack_pending=self.segment_max_messages + 2 * self.batch_size,
                max_waiting=4,
                filter_subjects=self.filter_subjects,
            ),
        )
        log.info("archiver reads %s from sequence %d into %s", STREAM, start, self.archive_dir)
        return start, info.state.first_seq

    async def _run_consumer(self) -> None:
        self._buffer.clear()  # unsealed messages of a failed consumer are read again
        self._buffered_bytes = 0
        self._high_water = self.stats.last_sealed_seq
        self._halt.clear()
        self._lost = None
        start, first_seq = await self._create_consumer()
        self._reconnects = self.nc.stats["reconnects"]
        self._continuity.restart(start, self._reconnects)
        self._continuity.allow_start_at(first_seq)
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=self._on_message)
        fetcher = asyncio.create_task(self._fetch_loop(inbox))
        sealer = asyncio.create_task(self._seal_loop())
        try:
            await asyncio.wait({fetcher, sealer}, return_when=asyncio.FIRST_COMPLETED)
            if fetcher.done() and not sealer.done():
                # stopping: the sealer seals all it holds; a failure: it finishes the seal in
                # progress and returns, the rest is read again from the recreated consumer
                if fetcher.exception() is not None:
                    self._halt.set()
                await sealer
            sealer.result()
            if fetcher.done():
                fetcher.result()
            if not self._stopping.is_set():
                raise _Restart("the fetch loop ended")
        finally:
            for task in (fetcher, sealer):
                task.cancel()
            await asyncio.gather(fetcher, sealer, return_exceptions=True)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        status = pull_status(msg)
        if status is not None:
            if status.over:
                self._lost = status.lost or self._lost
                self._request_done.set()
            return
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._request_done.set()
        message = message_of(msg)
        if message.seq <= self._high_water:
            self.stats.redeliveries_skipped += 1
            return
        checked = delivery_seq(msg.reply) if self.filter_subjects else message.seq
        if not self._continuity.accept(checked, self.nc.stats["reconnects"]):
            # a delivery before it may be lost (a reconnect, a cluster node gone): take
            # nothing more and read again after the last sealed segment
            self._lost = self._continuity.lost
            self._request_done.set()
            return
        self._high_water = message.seq
        size = len(message.data) + len(message.subject) + _OVERHEAD_BYTES
        self._buffer.append(_Buffered(message, msg.reply, time.monotonic(), size))
        self._buffered_bytes += size
        if len(self._buffer) == 1 or self._full():
            self._wake.set()

    async def _fetch_loop(self, inbox: str) -> None:
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{self.consumer}"
        while not self._stopping.is_set():
            if self._lost is not None:
                raise _Restart(self._lost)
            if self.nc.stats["reconnects"] != self._reconnects:
                raise _Restart("NATS reconnected")  # a delivery may have been lost meanwhile
            room = self.segment_max_messages - len(self._buffer)
            if room <= 0 or self._buffered_bytes >= self.segment_max_bytes:
                self._room.clear()
                self._wake.set()
                await _wait_any(self._room, self._stopping, timeout=1.0)
                continue
            if self.priority is not None and self.priority.claimed:
                await self.priority.turn(self._stopping)  # the projection drains first
                if self._stopping.is_set():
                    continue
            want = min(self.batch_size, room)
            self._outstanding = want
            self._request_done.clear()
            request = {"batch": want, "expires": int(PULL_EXPIRES_S * 1e9)}
            await self.nc.publish(subject, json.dumps(request).encode(), reply=inbox)
            await _wait_any(self._request_done, self._stopping, timeout=PULL_EXPIRES_S + 2)

    # ------------------------------------------------------------------ sealing

    def _full(self) -> bool:
        return (
            len(self._buffer) >= self.segment_max_messages
            or self._buffered_bytes >= self.segment_max_bytes
        )

    def _aged(self) -> bool:
        return bool(self._buffer) and (
            time.monotonic() - self._buffer[0].arrived >= self.segment_max_age
        )

    async def _seal_loop(self) -> None:
        while True:
            self._wake.clear()
            if self._stopping.is_set():
                await self._seal_due(final=True)
                return
            if self._halt.is_set():
                return
            await self._seal_due(final=False)
            timeout = None
            if self._buffer:
                timeout = max(
                    0.0, self._buffer[0].arrived + self.segment_max_age - time.monotonic()
                )
            await _wait_any(self._wake, self._stopping, self._halt, timeout=timeout)

    async def _seal_due(self, *, final: bool) -> None:
        """Seal segments while one is due (all that is buffered when ``final``)."""
        while self._buffer and (final or self._full() or self._aged()):
            if not final and self._halt.is_set():
                return
            if not await self._seal(self._segment_length(), final=final):
                return

    def _segment_length(self) -> int:
        n = size = 0
        for item in self._buffer:
            if n >= self.segment_max_messages or (n and size + item.size > self.segment_max_bytes):
                break
            n += 1
            size += item.size
        return n

    async def _seal(self, n: int, *, final: bool) -> bool:
        """Write the first ``n`` buffered messages as a segment, then ack them; False if the
        write kept failing while stopping (they stay unacked and are read again next start)."""
        items = [self._buffer[i] for i in range(n)]
        backoff = Backoff(initial=0.2, maximum=15.0)
        attempts = 0
        while True:
            try:
                segment = await _finish_even_if_cancelled(
                    asyncio.to_thread(
                        write_segment, self.archive_dir, [item.message for item in items]
                    )
                )
                break
            except Exception as exc:
                attempts += 1
                self.stats.write_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error("archiver: cannot seal seq %d..%d: %s", items[0].message.seq,
                          items[-1].message.seq, exc)  # fmt: skip
                giving_up = final or self._stopping.is_set() or self._halt.is_set()
                if giving_up and attempts >= _FINAL_SEAL_ATTEMPTS:
                    return False
                await asyncio.sleep(backoff.next())
        for _ in range(n):
            self._buffered_bytes -= self._buffer.popleft().size
        self.stats.sealed_segments += 1
        self.stats.archived_messages += n
        self.stats.last_sealed_seq = segment.last_seq
        self.stats.last_seal_at = time.time()
        self._room.set()
        log.debug("sealed %s", segment.path.name)
        await self._ack(items[-1].reply)
        async with self._sealed:
            self._sealed.notify_all()
        return True

    async def _ack(self, subject: str) -> None:
        try:
            await self.nc.publish(subject, b"+ACK")
        except Exception as exc:  # the archive is the truth: a lost ack changes nothing
            log.warning("archiver: ack %s not sent: %s", subject, exc)


async def _finish_even_if_cancelled(work: Coroutine[Any, Any, T]) -> T:
    """Await a segment write; if cancelled meanwhile, let the write finish before re-raising,
    so no rename can land after whoever cancelled us has moved on."""
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


async def _wait_any(*events: asyncio.Event, timeout: float | None) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


__all__ = [
    "ARCHIVER",
    "SEGMENT_SCHEMA",
    "ArchiveError",
    "Archiver",
    "ArchiverStats",
    "Segment",
    "archive_segments",
    "read_segment",
    "remove_leftovers",
    "segment_table",
    "write_segment",
]
