"""The event archive against a real nats-server and real Parquet files in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest

from ingestor.archive import (
    SEGMENT_SCHEMA,
    ArchiveError,
    Archiver,
    Segment,
    archive_segments,
    read_segment,
)
from ingestor.config import Settings
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.publisher import Publisher
from ingestor.nats.reader import read_range, stream_bounds
from ingestor.nats.server import EmbeddedServer
from ingestor.nats.streams import STREAM
from ingestor.simulation import SimulationConfig, simulate

pytestmark = pytest.mark.integration

Row = tuple  # (seq, recorded_at, subject, data)


@pytest.fixture
async def handle(settings: Settings) -> AsyncIterator[NatsHandle]:
    handle = await open_nats(settings)
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
def archive_dir(settings: Settings) -> Path:
    return settings.archive_dir


async def publish_simulated(handle: NatsHandle, count: int, seed: int = 11) -> None:
    """Publish ``count`` distinct simulated events (all stored)."""
    events = list({e.event_id: e for e in simulate(SimulationConfig(seed=seed)).events}.values())
    assert len(events) >= count
    stats = await Publisher(handle.nc).publish_many(events[:count])
    assert stats.stored == count


async def publish_raw(handle: NatsHandle, count: int, subject: str = "audit.test") -> None:
    """Publish ``count`` messages without a message id (nothing for JetStream to dedup)."""
    for i in range(count):
        await handle.js.publish(subject, f"raw {i}".encode(), stream=STREAM)


async def stream_rows(handle: NatsHandle) -> list[Row]:
    rows: list[Row] = []
    async for batch in read_range(handle.nc):
        rows.extend((m.seq, m.recorded_at, m.subject, m.data) for m in batch)
    return rows


def archived_rows(archive_dir: Path) -> list[Row]:
    rows: list[Row] = []
    for segment in archive_segments(archive_dir):
        table = read_segment(segment.path)
        rows.extend(zip(*(table.column(n).to_pylist() for n in SEGMENT_SCHEMA.names), strict=True))
    return rows


def spans(archive_dir: Path) -> list[tuple[int, int]]:
    return [(s.first_seq, s.last_seq) for s in archive_segments(archive_dir)]


@contextlib.asynccontextmanager
async def running(archiver: Archiver) -> AsyncIterator[asyncio.Task]:
    task = asyncio.create_task(archiver.run())
    try:
        yield task
    finally:
        archiver.stop()
        if not task.done():
            await asyncio.wait_for(task, 30)


async def eventually(condition: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await _value(condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def _value(value: object) -> object:
    return await value if asyncio.iscoroutine(value) else value


async def ack_floor(handle: NatsHandle) -> int:
    info = await handle.js.consumer_info(STREAM, "archiver")
    return info.ack_floor.stream_seq if info.ack_floor else 0


async def test_the_archive_holds_every_message_once_in_sequence_order(
    handle: NatsHandle, archive_dir: Path
) -> None:
    await publish_simulated(handle, 60)
    await publish_raw(handle, 1, "playback.plex.movie")  # the same bytes, stored twice
    await handle.js.publish("playback.plex.movie", b"raw 0", stream=STREAM)
    await publish_raw(handle, 5, "audit.decision")
    await publish_raw(handle, 3, "alert.detection")
    _, last = await stream_bounds(handle.nc)
    assert last == 70

    archiver = Archiver(handle.nc, archive_dir, batch_size=16, segment_max_messages=25)
    async with running(archiver):
        assert await archiver.wait_for_seq(50, timeout=20)
        await eventually(lambda: archiver.status()["buffered_messages"] == 20, "20 buffered")
    rows = archived_rows(archive_dir)

    assert [r[0] for r in rows] == list(range(1, last + 1))
    assert rows == await stream_rows(handle)
    repeated = [r for r in rows if r[2:] == ("playback.plex.movie", b"raw 0")]
    assert [r[0] for r in repeated] == [61, 62]  # a duplicate is the log's too: kept
    assert {r[2].split(".")[0] for r in rows} == {"playback", "audit", "alert"}
    assert spans(archive_dir) == [(1, 25), (26, 50), (51, 70)]
    for segment in archive_segments(archive_dir):
        table = read_segment(segment.path)
        assert table.schema.equals(SEGMENT_SCHEMA)
        assert table.column("seq").to_pylist()[0] == segment.first_seq
        assert table.column("seq").to_pylist()[-1] == segment.last_seq
        assert pq.ParquetFile(segment.path).metadata.row_group(0).column(3).compression == "ZSTD"


async def test_full_segments_seal_and_ack_while_the_rest_waits_unacked(
    handle: NatsHandle, archive_dir: Path
) -> None:
    await publish_simulated(handle, 60)
    archiver = Archiver(handle.nc, archive_dir, segment_max_messages=25, segment_max_age=600)
    async with running(archiver) as task:
        assert await archiver.wait_for_seq(50, timeout=20)
        await eventually(lambda: archiver.status()["buffered_messages"] == 10, "10 buffered")
        await eventually(lambda: _floor_is(handle, 50), "ack floor 50")
        status = archiver.status()
        assert (status["sealed_segments"], status["last_sealed_seq"]) == (2, 50)
        assert spans(archive_dir) == [(1, 25), (26, 50)]
        info = await handle.js.consumer_info(STREAM, "archiver")
        assert info.num_ack_pending == 10  # read, not sealed: not acked
        assert not task.done()
    assert spans(archive_dir) == [(1, 25), (26, 50), (51, 60)]  # stop seals the rest
    await eventually(lambda: _floor_is(handle, 60), "ack floor 60 after stop")


async def _floor_is(handle: NatsHandle, seq: int) -> bool:
    return await ack_floor(handle) == seq


async def test_a_segment_seals_once_its_first_message_is_older_than_max_age(
    handle: NatsHandle, archive_dir: Path
) -> None:
    archiver = Archiver(handle.nc, archive_dir, segment_max_messages=1000, segment_max_age=0.4)
    async with running(archiver) as task:
        started = time.monotonic()
        await publish_raw(handle, 5)
        assert await archiver.wait_for_seq(5, timeout=10)
        assert time.monotonic() - started >= 0.4
        assert spans(archive_dir) == [(1, 5)]
        await publish_raw(handle, 3)
        assert await archiver.wait_for_seq(8, timeout=10)
        assert spans(archive_dir) == [(1, 5), (6, 8)]
        assert not task.done()  # sealed by age, not by stopping


async def test_a_segment_seals_at_its_byte_limit(handle: NatsHandle, archive_dir: Path) -> None:
    for _ in range(7):
        await handle.js.publish("audit.bulk", os.urandom(100_000), stream=STREAM)
    archiver = Archiver(handle.nc, archive_dir, segment_max_bytes=250_000)
    async with running(archiver) as task:
        assert await archiver.wait_for_seq(6, timeout=10)
        assert spans(archive_dir) == [(1, 2), (3, 4), (5, 6)]  # a third would pass 250 kB
        assert not task.done()
    assert spans(archive_dir)[-1] == (7, 7)


async def test_readers_never_see_a_segment_being_written(
    handle: NatsHandle, archive_dir: Path
) -> None:
    archive_dir.mkdir(parents=True)
    leftover = archive_dir / (Segment.name_of(1, 10) + ".tmp")
    leftover.write_bytes(b"half a parquet file")  # what a crash mid-seal leaves
    assert archive_segments(archive_dir) == []
    for _ in range(48):  # incompressible payloads: each segment takes a while to write
        await handle.js.publish("audit.bulk", os.urandom(256 * 1024), stream=STREAM)
    done = threading.Event()
    verified: list[str] = []

    def reader() -> None:
        """Read every segment the moment it is listed, as a notebook polling the archive;
        one last pass after the archiver is done, so the last segment is read too."""
        while True:
            finished = done.is_set()
            for segment in archive_segments(archive_dir):
                if segment.path.name in verified:
                    continue
                assert not segment.path.name.endswith(".tmp")
                seqs = read_segment(segment.path).column("seq").to_pylist()
                assert seqs == list(range(segment.first_seq, segment.last_seq + 1))
                verified.append(segment.path.name)
            if finished:
                return

    reading = asyncio.create_task(asyncio.to_thread(reader))
    archiver = Archiver(handle.nc, archive_dir, batch_size=3, segment_max_messages=4)
    async with running(archiver):
        assert await archiver.wait_for_seq(48, timeout=30)
    done.set()
    await reading  # raises if the reader ever met an incomplete segment

    assert len(verified) == 12
    assert not leftover.exists()
    assert sorted(p.suffix for p in archive_dir.iterdir()) == [".parquet"] * 12
    assert [r[0] for r in archived_rows(archive_dir)] == list(range(1, 49))


async def test_a_killed_archiver_is_resumed_with_nothing_lost_or_doubled(
    handle: NatsHandle, archive_dir: Path
) -> None:
    await publish_simulated(handle, 130)
    first = Archiver(handle.nc, archive_dir, batch_size=20, segment_max_messages=50)
    task = asyncio.create_task(first.run())
    assert await first.wait_for_seq(100, timeout=20)
    await eventually(lambda: first.status()["buffered_messages"] == 30, "30 buffered")
    task.cancel()  # killed mid-segment: 101..130 read but never sealed
    with pytest.raises(asyncio.CancelledError):
        await task
    assert spans(archive_dir) == [(1, 50), (51, 100)]
    await eventually(lambda: _floor_is(handle, 100), "ack floor 100")  # unsealed: never acked
    crash_leftover = archive_dir / (Segment.name_of(101, 130) + ".tmp")
    crash_leftover.write_bytes(b"PAR1 truncated")
    await publish_simulated(handle, 20, seed=12)

    second = Archiver(handle.nc, archive_dir, batch_size=20, segment_max_messages=50)
    async with running(second):
        assert await second.wait_for_seq(150, timeout=20)
    rows = archived_rows(archive_dir)
    assert [r[0] for r in rows] == list(range(1, 151))
    assert rows == await stream_rows(handle)
    assert spans(archive_dir) == [(1, 50), (51, 100), (101, 150)]
    assert not crash_leftover.exists()


async def test_the_archiver_rides_out_a_nats_server_restart(
    handle: NatsHandle, archive_dir: Path, nats_server: EmbeddedServer
) -> None:
    await publish_simulated(handle, 30)
    archiver = Archiver(handle.nc, archive_dir, segment_max_messages=10, segment_max_age=0.3)
    async with running(archiver) as task:
        assert await archiver.wait_for_seq(30, timeout=20)
        await asyncio.to_thread(nats_server.stop)
        await eventually(lambda: not handle.nc.is_connected, "disconnected")
        await asyncio.to_thread(nats_server.start)
        await eventually(lambda: handle.nc.is_connected, "reconnected")
        await publish_simulated(handle, 25, seed=12)
        assert await archiver.wait_for_seq(55, timeout=30)
        assert not task.done()
        assert archiver.stats.restarts >= 1  # the consumer was recreated from the archive
    assert [r[0] for r in archived_rows(archive_dir)] == list(range(1, 56))


async def test_overlapping_segments_are_refused(handle: NatsHandle, archive_dir: Path) -> None:
    archive_dir.mkdir(parents=True)
    for first, last in ((1, 10), (8, 20)):
        (archive_dir / Segment.name_of(first, last)).write_bytes(b"")
    with pytest.raises(ArchiveError, match="overlap"):
        archive_segments(archive_dir)
    with pytest.raises(ArchiveError, match="overlap"):
        await Archiver(handle.nc, archive_dir).run()


async def test_an_erasure_record_not_read_yet_keeps_its_accounts_out_of_the_next_segment(
    handle: NatsHandle, archive_dir: Path
) -> None:
    """``ingestor erase`` publishes its record, then rewrites the sealed segments: one the
    archiver seals later, from messages it read before, must already be without them, even
    when it has not read the record (here it never does: its filter leaves records out)."""
    from ingestor.accounts import account_digest
    from ingestor.records import ErasureRecord, encode_record

    await publish_simulated(handle, 40)
    rows = await stream_rows(handle)
    events = [msgspec.json.decode(r[3]) for r in rows]
    gone = (events[0]["server_id"], events[0]["user_id"])
    theirs = {
        r[0] for r, e in zip(rows, events, strict=True) if (e["server_id"], e["user_id"]) == gone
    }
    assert 0 < len(theirs) < len(rows) and 1 in theirs
    archiver = Archiver(
        handle.nc, archive_dir, segment_max_messages=1000, filter_subjects=["playback.>"]
    )
    async with running(archiver):
        await eventually(lambda: archiver.status()["buffered_messages"] == 40, "40 buffered")
        record = ErasureRecord.make([account_digest(*gone)], datetime.now(UTC))
        await handle.js.publish(record.subject, encode_record(record), stream=STREAM)
    assert spans(archive_dir) == [(1, 40)]  # the range still covers the dropped first one
    kept = archived_rows(archive_dir)
    assert [r[0] for r in kept] == sorted({r[0] for r in rows} - theirs)
    assert archiver.status()["erased_unsealed"] == len(theirs)
    assert archiver.status()["archived_messages"] == 40 - len(theirs)
