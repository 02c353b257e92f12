"""The EventLog: the whole log of ``MEDIA_EVENTS``, from the archive and the stream's tail.

The archive (:mod:`ingestor.archive`) holds sealed segments up to some sequence ``A``; the
stream holds what its retention still keeps. The log is the archive up to ``A``, then the
stream from ``A + 1``: no gap, no overlap, and the archive wins where both hold a message.
Either source alone works too: the archive offline (no NATS at all), or the stream alone
(a remote NATS, no archive directory at hand).

Example, in a notebook (top-level ``await`` works there)::

    from pathlib import Path
    from workbench.log import EventLog

    async with EventLog(Path("data/archive"), nats_url="nats://127.0.0.1:4222") as log:
        frame = await log.frame()                  # seq, recorded_at, subject, data
        events = await log.events_frame()          # one row per media event, decoded
        async for batch in log.messages(start_seq=1_000, until_seq=2_000):
            ...                                    # lists of ingestor.pipeline.Message

    offline = EventLog(Path("data/archive"))        # the archive alone
    print(await offline.last_seq())
"""

from __future__ import annotations

import asyncio
import logging
import types
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import polars as pl
import pyarrow as pa
from nats.aio.client import Client

from ingestor.archive import Segment, archive_segments, read_segment
from ingestor.errors import IngestorError, InvalidEvent
from ingestor.events import MediaEvent, decode_event
from ingestor.nats.connection import connect_reader
from ingestor.nats.reader import read_range
from ingestor.nats.streams import MEDIA_SUBJECTS, STREAM
from ingestor.pipeline import Message

log = logging.getLogger(__name__)

FRAME_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    "recorded_at": pl.Datetime("us", "UTC"),
    "subject": pl.String(),
    "data": pl.Binary(),
}
_MEDIA_PREFIX = MEDIA_SUBJECTS.removesuffix(">")


class LogGapError(IngestorError):
    """Messages of the requested range are in neither the archive nor the stream."""

    def __init__(self, first_missing: int, last_missing: int, archive_last_seq: int) -> None:
        self.first_missing = first_missing
        self.last_missing = last_missing
        self.archive_last_seq = archive_last_seq
        super().__init__(
            f"the event log has a gap: messages {first_missing}..{last_missing} are neither "
            f"in the archive (sealed up to {archive_last_seq}) nor in {STREAM} (which now "
            f"starts at {last_missing + 1}); they aged out of the stream before the archiver "
            "sealed them. Read from a later start_seq, or restore the missing segments."
        )


@dataclass(frozen=True)
class LogBounds:
    """Where each source of the log starts and ends (0 when a source is empty or absent).

    ``gap`` is the inclusive range of sequences neither source holds between the archive's
    last sealed sequence and the stream's first, or ``None``.
    """

    archive_first_seq: int
    archive_last_seq: int
    stream_first_seq: int
    stream_last_seq: int
    segments: list[Segment] = field(default_factory=list, repr=False)

    @property
    def first_seq(self) -> int:
        firsts = [s for s in (self.archive_first_seq, self.stream_first_seq) if s]
        return min(firsts, default=0)

    @property
    def last_seq(self) -> int:
        return max(self.archive_last_seq, self.stream_last_seq)

    @property
    def gap(self) -> tuple[int, int] | None:
        if not self.archive_last_seq or not self.stream_last_seq:
            return None
        if self.stream_last_seq > self.archive_last_seq and (
            self.stream_first_seq > self.archive_last_seq + 1
        ):
            return self.archive_last_seq + 1, self.stream_first_seq - 1
        return None


class EventLog:
    """The log of ``MEDIA_EVENTS``: archive segments, then the JetStream tail after them.

    Give an ``archive_dir`` (an ``ARCHIVE_DIR``), a NATS connection (``nc``, an open
    ``nats.aio.client.Client``, which stays yours) or a ``nats_url`` (connected on first
    use and closed by :meth:`close`), or both kinds.

    ::

        log = EventLog(Path("data/archive"), nc=handle.nc)
        bounds = await log.bounds()      # archive and stream ranges, and any gap
        frame = await log.frame(until_seq=bounds.last_seq)
    """

    def __init__(
        self,
        archive_dir: Path | None = None,
        *,
        nc: Client | None = None,
        nats_url: str | None = None,
        stream: str = STREAM,
    ) -> None:
        if nc is not None and nats_url is not None:
            raise ValueError("give nc or nats_url, not both")
        if archive_dir is None and nc is None and nats_url is None:
            raise ValueError("an EventLog needs an archive_dir, a NATS connection, or both")
        self.archive_dir = Path(archive_dir) if archive_dir is not None else None
        self.stream = stream
        self._nc = nc
        self._nats_url = nats_url
        self._owns_nc = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection this log opened from ``nats_url`` (never one given to it)."""
        if self._owns_nc and self._nc is not None:
            await self._nc.close()
            self._nc = None
            self._owns_nc = False

    @property
    def has_stream(self) -> bool:
        return self._nc is not None or self._nats_url is not None

    async def client(self) -> Client | None:
        """The NATS connection (connected now from ``nats_url`` if need be), or None when
        this log has no stream."""
        return await self._client()

    async def _client(self) -> Client | None:
        if self._nc is None and self._nats_url is not None:
            self._nc = await connect_reader(self._nats_url)
            self._owns_nc = True
        return self._nc

    # ------------------------------------------------------------------ bounds

    async def bounds(self) -> LogBounds:
        """Where the archive and the stream start and end, now.

        ::

            bounds = await log.bounds()
            bounds.archive_last_seq, bounds.stream_first_seq, bounds.gap
        """
        segments: list[Segment] = []
        if self.archive_dir is not None:
            segments = await asyncio.to_thread(archive_segments, self.archive_dir)
        stream_first = stream_last = 0
        nc = await self._client()
        if nc is not None:
            info = await nc.jetstream(timeout=10).stream_info(self.stream)
            stream_last = info.state.last_seq
            # an empty stream reports first_seq = last_seq + 1: everything up to last is gone
            stream_first = info.state.first_seq if info.state.messages else stream_last + 1
        return LogBounds(
            archive_first_seq=segments[0].first_seq if segments else 0,
            archive_last_seq=segments[-1].last_seq if segments else 0,
            stream_first_seq=stream_first if stream_last else 0,
            stream_last_seq=stream_last,
            segments=segments,
        )

    async def last_seq(self) -> int:
        """The log's last sequence (the stream's, or the archive's if that is further on).

        ::

            await EventLog(Path("data/archive")).last_seq()   # e.g. 170254
        """
        return (await self.bounds()).last_seq

    # ------------------------------------------------------------------ reading

    async def messages(
        self, start_seq: int = 1, until_seq: int | None = None, *, batch: int = 5000
    ) -> AsyncIterator[list[Message]]:
        """Yield lists of messages with ``start_seq <= seq <= until_seq`` in sequence order:
        the archive's, then the stream's after the last sealed sequence. ``until_seq``
        defaults to the log's last sequence when the call starts.

        Raises :class:`LogGapError` when part of the range is in neither source.

        ::

            async for batch in log.messages(until_seq=5000):
                for message in batch:
                    print(message.seq, message.subject, len(message.data))
        """
        bounds = await self.bounds()
        stop = bounds.last_seq if until_seq is None else until_seq
        gap = bounds.gap
        if gap is not None and start_seq <= gap[1] and stop >= gap[0]:
            raise LogGapError(gap[0], gap[1], bounds.archive_last_seq)
        for segment in bounds.segments:
            if segment.last_seq < start_seq or segment.first_seq > stop:
                continue
            table = await asyncio.to_thread(read_segment, segment.path, start_seq, stop)
            for offset in range(0, table.num_rows, batch):
                yield _messages_of(table.slice(offset, batch))
        nc = self._nc
        tail_start = max(start_seq, bounds.archive_last_seq + 1)
        tail_stop = min(stop, bounds.stream_last_seq)
        if nc is not None and tail_start <= tail_stop:
            tail = read_range(nc, tail_start, tail_stop, batch=batch, stream=self.stream)
            checked = False
            async for chunk in tail:
                if not checked and bounds.archive_last_seq and chunk[0].seq > tail_start:
                    await self._check_not_aged_out(tail_start, bounds.archive_last_seq)
                checked = True
                yield chunk

    async def tables(
        self, start_seq: int = 1, until_seq: int | None = None, *, batch: int = 100_000
    ) -> AsyncIterator[pa.Table]:
        """Like :meth:`messages`, as Arrow tables of at most ``batch`` rows with the columns
        of :data:`FRAME_SCHEMA` (``seq``, ``recorded_at``, ``subject``, ``data``): archive
        segments are passed on as read, with no Python object per message (the stream's
        tail is collected into tables).

        ::

            async for table in log.tables(until_seq=5000):
                print(table.num_rows, table.column("seq")[0])
        """
        bounds = await self.bounds()
        stop = bounds.last_seq if until_seq is None else until_seq
        gap = bounds.gap
        if gap is not None and start_seq <= gap[1] and stop >= gap[0]:
            raise LogGapError(gap[0], gap[1], bounds.archive_last_seq)
        for segment in bounds.segments:
            if segment.last_seq < start_seq or segment.first_seq > stop:
                continue
            table = await asyncio.to_thread(read_segment, segment.path, start_seq, stop)
            for offset in range(0, table.num_rows, batch):
                yield table.slice(offset, batch)
        if not self.has_stream or bounds.stream_last_seq <= bounds.archive_last_seq:
            return
        pending: list[Message] = []
        tail_start = max(start_seq, bounds.archive_last_seq + 1)
        async for chunk in self.messages(tail_start, stop):
            pending.extend(chunk)
            if len(pending) >= batch:
                yield messages_frame(pending).to_arrow()
                pending = []
        if pending:
            yield messages_frame(pending).to_arrow()

    async def _check_not_aged_out(self, tail_start: int, archive_last_seq: int) -> None:
        """The tail began after ``tail_start``: a deletion, or the stream aged messages out
        while we were reading? The latter is a gap."""
        assert self._nc is not None
        info = await self._nc.jetstream(timeout=10).stream_info(self.stream)
        if info.state.first_seq > tail_start:
            raise LogGapError(tail_start, info.state.first_seq - 1, archive_last_seq)

    async def frame(self, start_seq: int = 1, until_seq: int | None = None) -> pl.DataFrame:
        """The messages of ``start_seq..until_seq`` as a frame: ``seq`` (Int64),
        ``recorded_at`` (Datetime us UTC: when the stream stored it), ``subject``, ``data``
        (the stored bytes).

        ::

            frame = await log.frame()
            # messages per source: the token before the media type, in either subject form
            frame.group_by(pl.col("subject").str.split(".").list.get(-2)).len()
        """
        parts: list[pl.DataFrame] = []
        async for chunk in self.messages(start_seq, until_seq):
            parts.append(messages_frame(chunk))
        if not parts:
            return pl.DataFrame(schema=FRAME_SCHEMA)
        return pl.concat(parts, how="vertical", rechunk=True)

    async def events_frame(self, start_seq: int = 1, until_seq: int | None = None) -> pl.DataFrame:
        """The media events (subjects ``playback.>``) of the range, decoded (and upcast) with
        :func:`ingestor.events.decode_event`: ``seq``, ``recorded_at``, then one column per
        :class:`~ingestor.events.MediaEvent` field. Undecodable payloads are left out (they
        are in the dead-letter stream) and counted in a warning.

        ::

            events = await log.events_frame()
            events.filter(pl.col("event_type") == "play").group_by("user_id").len()
        """
        schema = {"seq": pl.Int64(), "recorded_at": pl.Datetime("us", "UTC"), **EVENT_SCHEMA}
        columns: dict[str, list[Any]] = {name: [] for name in schema}
        undecodable = 0
        async for chunk in self.messages(start_seq, until_seq):
            for message in chunk:
                if not message.subject.startswith(_MEDIA_PREFIX):
                    continue
                try:
                    event = decode_event(message.data)
                except InvalidEvent:
                    undecodable += 1
                    continue
                columns["seq"].append(message.seq)
                columns["recorded_at"].append(message.recorded_at)
                for name in EVENT_SCHEMA:
                    columns[name].append(getattr(event, name))
        if undecodable:
            log.warning("%d undecodable media events left out of the frame", undecodable)
        return pl.DataFrame(columns, schema=schema)


def messages_frame(messages: list[Message]) -> pl.DataFrame:
    """A frame of ``seq``, ``recorded_at``, ``subject``, ``data`` from messages."""
    return pl.DataFrame(
        {
            "seq": [m.seq for m in messages],
            "recorded_at": [m.recorded_at for m in messages],
            "subject": [m.subject for m in messages],
            "data": [m.data for m in messages],
        },
        schema=FRAME_SCHEMA,
    )


def _messages_of(table: pa.Table) -> list[Message]:
    # pyarrow's conversion of zoned timestamps to datetimes costs ~9 us each; from integers
    # it is ~2.6 us (the same instants)
    micros = table.column("recorded_at").cast(pa.int64()).to_pylist()
    recorded = [_EPOCH + timedelta(microseconds=us) for us in micros]
    seqs = table.column("seq").to_pylist()
    subjects = table.column("subject").to_pylist()
    data = table.column("data").to_pylist()
    return [
        Message(seq=seq, recorded_at=at, data=payload, subject=subject)
        for seq, at, subject, payload in zip(seqs, recorded, subjects, data, strict=True)
    ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _polars_type(annotation: Any) -> pl.DataType:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _polars_type(inner)
    if annotation is bool:
        return pl.Boolean()
    if annotation is int:
        return pl.Int64()
    if annotation is float:
        return pl.Float64()
    if annotation is datetime:
        return pl.Datetime("us", "UTC")
    return pl.String()  # str and StrEnum


EVENT_SCHEMA: dict[str, pl.DataType] = {
    name: _polars_type(hint)
    for name, hint in typing.get_type_hints(MediaEvent).items()
    if name in MediaEvent.__struct_fields__
}
