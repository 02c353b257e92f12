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
import logging
import os
import re
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from ingestor.accounts import Digests, names_account
from ingestor.errors import IngestorError, InvalidEvent
from ingestor.nats.consumer import Consumer, ConsumerStats, Delivery, Handler
from ingestor.nats.reader import message_of
from ingestor.nats.streams import STREAM
from ingestor.pipeline import Message
from ingestor.priority import Priority
from ingestor.records import ERASURE_PREFIX, ErasureRecord, decode_record
from ingestor.sources.base import Backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

ARCHIVER = "archiver"
ERASURE_SUBJECTS = ERASURE_PREFIX + ">"
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
ERASE_TMP_SUFFIX = ".erase" + TMP_SUFFIX  # a segment ingestor.erasure rewrites
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
    """Seal ``messages`` (in sequence order) as one segment and return it (:func:`seal`)."""
    if not messages:
        raise ValueError("a segment holds at least one message")
    first, last = messages[0].seq, messages[-1].seq
    path = archive_dir / Segment.name_of(first, last)
    seal(path, segment_table(messages))
    return Segment(first, last, path)


def seal(path: Path, table: pa.Table, tmp_suffix: str = TMP_SUFFIX) -> None:
    """Write ``table`` as the segment file ``path``: under a temporary name ending in
    ``.tmp``, fsynced, renamed into place, and the directory fsynced, so the file is there
    complete or not at all, even across a power cut (a new segment, or one rewritten by
    :mod:`ingestor.erasure`)."""
    install(write_tmp(path, table, tmp_suffix), path)


def write_tmp(path: Path, table: pa.Table, tmp_suffix: str = TMP_SUFFIX) -> Path:
    """The first half of :func:`seal`: ``table`` written and fsynced beside ``path`` under
    a temporary name, returned (removed again if the write fails)."""
    tmp = path.with_name(path.name + tmp_suffix)
    try:
        with tmp.open("wb") as sink:
            pq.write_table(table, sink, compression="zstd")
            sink.flush()
            os.fsync(sink.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def install(tmp: Path, path: Path) -> None:
    """The second half of :func:`seal`: rename ``tmp`` over ``path``, fsync the directory."""
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def in_flight(archive_dir: Path) -> list[Path]:
    """The archiver's segment writes under way (or left by a crash): its ``.tmp`` files."""
    return [
        path
        for path in archive_dir.glob(f"seg-*{TMP_SUFFIX}")
        if not path.name.endswith(ERASE_TMP_SUFFIX)
    ]


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
class ArchiverStats(ConsumerStats):
    """What the archiver did since it started, and where the archive stands."""

    sealed_segments: int = 0
    last_sealed_seq: int = 0
    archived_messages: int = 0  # sealed by this run
    erased_unsealed: int = 0  # read, then named by an erasure record before they were sealed
    write_errors: int = 0
    last_seal_at: float | None = None  # Unix time


@dataclass(slots=True)
class _Buffered:
    message: Message
    arrived: float  # time.monotonic() when it was read
    size: int
    erased: bool = False  # an erasure record names its account: kept out of the segment


class Archiver(Handler):
    """Archive ``MEDIA_EVENTS`` into ``archive_dir`` until told to stop.

    Wire it next to the router: ``tasks.create_task(archiver.run())``, and
    ``archiver.stop()`` when stopping; ``run`` seals what it holds and returns. It is a
    :class:`~ingestor.nats.consumer.Handler` of the one pull consumer: its checkpoint is the
    last sealed sequence, so messages are acked only once their segment is sealed.
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
        self.segment_max_messages = segment_max_messages
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age = segment_max_age
        self.stats = ArchiverStats()
        self.consumer = Consumer(
            nc,
            durable=consumer,
            # PROJECT_SERVERS: those servers' messages and every record (ingestor/servers.py)
            filter_subjects=filter_subjects,
            description="the event archive: every message, sealed into Parquet",
            batch_size=batch_size,
            # unsealed messages wait unacked up to the segment's age limit
            ack_wait=segment_max_age + 120.0,
            max_ack_pending=segment_max_messages + 4 * batch_size,
            max_waiting=4,
            expires=PULL_EXPIRES_S,
            yield_to=priority,  # waited for while the router drains a backlog
            stats=self.stats,
        )
        self._buffer: deque[_Buffered] = deque()
        self._buffered_bytes = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def last_sealed_seq(self) -> int:
        return self.stats.last_sealed_seq

    def stop(self) -> None:
        """Stop reading; ``run`` seals what it holds, acks it and returns."""
        self.consumer.stop()

    def status(self) -> dict[str, object]:
        """Where the archive stands, for ``/status``."""
        return {
            "archive_dir": str(self.archive_dir),
            "sealed_segments": self.stats.sealed_segments,
            "last_sealed_seq": self.stats.last_sealed_seq,
            "buffered_messages": len(self._buffer),
            "buffered_bytes": self._buffered_bytes,
            "archived_messages": self.stats.archived_messages,
            "erased_unsealed": self.stats.erased_unsealed,
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
        await self.consumer.run(self)
        log.info(
            "archiver stopped: %d segments, sealed up to seq %d",
            self.stats.sealed_segments,
            self.stats.last_sealed_seq,
        )
        return self.stats

    async def wait_for_seq(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until the archive is sealed up to ``seq``; False on timeout."""
        return await self.consumer.wait_for(lambda: self.stats.last_sealed_seq >= seq, timeout)

    def _recover(self) -> None:
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        for path in remove_leftovers(self.archive_dir):
            log.info("removed %s, left behind by an interrupted seal", path.name)
        segments = archive_segments(self.archive_dir)
        self.stats.sealed_segments = len(segments)
        self.stats.last_sealed_seq = segments[-1].last_seq if segments else 0

    # ------------------------------------------------------------------ the handler

    async def resume(self) -> int:
        """The last sealed sequence; unsealed messages of a failed consumer are read again."""
        self._buffer.clear()
        self._buffered_bytes = 0
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
        log.info("archiver reads %s from sequence %d into %s", STREAM, start, self.archive_dir)
        return self.stats.last_sealed_seq

    def checkpoint(self) -> int:
        return self.stats.last_sealed_seq

    async def handle(self, batch: list[Delivery]) -> None:
        """Buffer the batch; seal what is due (a full or an aged segment)."""
        now = time.monotonic()
        for delivery in batch:
            message = message_of(delivery.msg)
            if message.subject.startswith(ERASURE_PREFIX):
                self._forget(message)
            size = len(message.data) + len(message.subject) + _OVERHEAD_BYTES
            self._buffer.append(_Buffered(message, now, size))
            self._buffered_bytes += size
        await self.flush(final=False)

    def due(self) -> float | None:
        """When the oldest buffered message reaches the segment's age limit."""
        return self._buffer[0].arrived + self.segment_max_age if self._buffer else None

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

    async def flush(self, *, final: bool) -> None:
        """Seal segments while one is due (all that is buffered when ``final``)."""
        while self._buffer and (final or self._full() or self._aged()):
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
        """Write the first ``n`` buffered messages as a segment (the consumer then acks
        them); False if the write kept failing while stopping (they stay unacked and are
        read again next start)."""
        items = [self._buffer[i] for i in range(n)]
        first, last = items[0].message.seq, items[-1].message.seq
        path = self.archive_dir / Segment.name_of(first, last)
        backoff = Backoff(initial=0.2, maximum=15.0)
        attempts = 0
        while True:
            try:
                await _finish_even_if_cancelled(self._write(path, items))
                break
            except Exception as exc:
                attempts += 1
                self.stats.write_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error("archiver: cannot seal seq %d..%d: %s", first, last, exc)
                giving_up = final or self.consumer.stopping
                if giving_up and attempts >= _FINAL_SEAL_ATTEMPTS:
                    return False
                await asyncio.sleep(backoff.next())
        for _ in range(n):
            self._buffered_bytes -= self._buffer.popleft().size
        self.stats.sealed_segments += 1
        self.stats.archived_messages += sum(not item.erased for item in items)
        self.stats.last_sealed_seq = last
        self.stats.last_seal_at = time.time()
        log.debug("sealed %s", path.name)
        return True

    async def _write(self, path: Path, items: list[_Buffered]) -> None:
        """Seal ``items`` as ``path``, leaving out the messages of erased accounts.

        An erasure record stored while these messages wait unsealed is applied before the
        rename even if the archiver has not read it yet: ``ingestor erase`` publishes the
        record, then rewrites the sealed segments, so a segment renamed into place after it
        must already be without the accounts. The check runs between the write and the
        rename (a write takes a while; the rename does not), and ``erase`` waits for a
        write under way (:func:`in_flight`) before its last look at the archive.
        """
        await self._catch_up_on_erasures()
        while True:
            erased = sum(item.erased for item in items)
            table = segment_table([item.message for item in items if not item.erased])
            tmp = await asyncio.to_thread(write_tmp, path, table)
            try:
                await self._catch_up_on_erasures()
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if sum(item.erased for item in items) == erased:
                await asyncio.to_thread(install, tmp, path)
                return
            tmp.unlink(missing_ok=True)  # a record arrived meanwhile: write it again

    async def _catch_up_on_erasures(self) -> None:
        """Apply to the buffer the erasure records the stream holds after the last message
        read (one request when there are none)."""
        start = (self._buffer[-1].message.seq if self._buffer else self.last_sealed_seq) + 1
        while True:
            try:
                raw = await self.js.get_msg(STREAM, seq=start, subject=ERASURE_SUBJECTS, next=True)
            except NotFoundError:
                return
            if raw.seq is None or raw.subject is None:
                return
            self._forget(Message(raw.seq, datetime.min, raw.data or b"", raw.subject))
            start = raw.seq + 1

    def _forget(self, message: Message) -> None:
        """Mark the buffered messages before ``message`` (an erasure record) that name an
        account it erases; a record that cannot be read erases nothing (the router
        dead-letters it)."""
        try:
            record = decode_record(message.subject, message.data)
        except InvalidEvent:
            return
        if not isinstance(record, ErasureRecord):
            return
        accounts = Digests(frozenset(record.accounts))
        marked = 0
        for item in self._buffer:
            if item.message.seq >= message.seq:
                break
            if not item.erased and names_account(item.message, accounts):
                item.erased = True
                marked += 1
        if marked:
            self.stats.erased_unsealed += marked
            log.info(
                "archiver: erasure record %d: %d unsealed messages left out of the archive",
                message.seq,
                marked,
            )


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


__all__ = [
    "ARCHIVER",
    "ERASE_TMP_SUFFIX",
    "SEGMENT_SCHEMA",
    "ArchiveError",
    "Archiver",
    "ArchiverStats",
    "Segment",
    "archive_segments",
    "in_flight",
    "install",
    "read_segment",
    "remove_leftovers",
    "seal",
    "segment_table",
    "write_segment",
    "write_tmp",
]
