"""The workbench's EventLog over a real archive (Parquet in tmp_path) and a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ingestor.archive import Archiver, archive_segments
from ingestor.commands.replay import replay_command
from ingestor.config import Settings
from ingestor.events import decode_event
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.publisher import Publisher
from ingestor.nats.reader import read_range
from ingestor.nats.streams import STREAM
from ingestor.simulation import SimulationConfig, simulate
from workbench.log import FRAME_SCHEMA, EventLog, LogGapError, messages_frame

pytestmark = pytest.mark.integration

ARCHIVED = 100  # sealed into two segments of 50
TOTAL = 150  # the stream holds 101..150 beyond the archive


@pytest.fixture
async def handle(settings: Settings) -> AsyncIterator[NatsHandle]:
    handle = await open_nats(settings)
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def archived(handle: NatsHandle, settings: Settings) -> Path:
    """Sequences 1..100 sealed in the archive, 1..150 in the stream; some are not events."""
    events = list({e.event_id: e for e in simulate(SimulationConfig(seed=21)).events}.values())
    publisher = Publisher(handle.nc)
    assert (await publisher.publish_many(events[:90])).stored == 90
    for i in range(10):  # audit decisions share the stream's order
        await handle.js.publish("audit.decision", f"decision {i}".encode(), stream=STREAM)
    archiver = Archiver(handle.nc, settings.archive_dir, segment_max_messages=50)
    task = asyncio.create_task(archiver.run())
    assert await archiver.wait_for_seq(ARCHIVED, timeout=20)
    archiver.stop()
    await task
    assert (await publisher.publish_many(events[90:140])).stored == 50
    return settings.archive_dir


async def full_read(handle: NatsHandle, start: int = 1, stop: int | None = None) -> pl.DataFrame:
    parts = [messages_frame(batch) async for batch in read_range(handle.nc, start, stop)]
    return pl.concat(parts) if parts else pl.DataFrame(schema=FRAME_SCHEMA)


async def test_archive_plus_tail_equals_a_full_read_of_the_stream(
    handle: NatsHandle, archived: Path
) -> None:
    assert [(s.first_seq, s.last_seq) for s in archive_segments(archived)] == [(1, 50), (51, 100)]
    log = EventLog(archived, nc=handle.nc)
    bounds = await log.bounds()
    assert (bounds.archive_last_seq, bounds.stream_first_seq, bounds.stream_last_seq) == (
        ARCHIVED,
        1,
        TOTAL,
    )
    full = await full_read(handle)
    frame = await log.frame()
    assert_frame_equal(frame, full)
    assert frame["seq"].to_list() == list(range(1, TOTAL + 1))
    assert await log.last_seq() == TOTAL

    seqs = [m.seq async for batch in log.messages(start_seq=45, until_seq=120) for m in batch]
    assert seqs == list(range(45, 121))  # across both segments and into the tail, once each
    assert_frame_equal(await log.frame(95, 105), full.filter(pl.col("seq").is_between(95, 105)))


async def test_the_log_stays_whole_after_the_stream_purged_below_the_archive_end(
    handle: NatsHandle, archived: Path
) -> None:
    full = await full_read(handle)
    await handle.js.purge_stream(STREAM, seq=ARCHIVED + 1)  # keep 101.. only
    assert (await full_read(handle))["seq"].min() == ARCHIVED + 1

    frame = await EventLog(archived, nc=handle.nc).frame()
    assert_frame_equal(frame, full)


async def test_the_archive_alone_serves_the_log_offline(handle: NatsHandle, archived: Path) -> None:
    full = await full_read(handle)
    await handle.close()  # no NATS from here on
    log = EventLog(archived)

    assert await log.last_seq() == ARCHIVED
    assert_frame_equal(await log.frame(), full.filter(pl.col("seq") <= ARCHIVED))

    events = await log.events_frame()
    media = full.filter(pl.col("seq") <= ARCHIVED, pl.col("subject").str.starts_with("playback."))
    assert events["seq"].to_list() == media["seq"].to_list()
    assert events["event_id"].to_list() == [decode_event(d).event_id for d in media["data"]]
    assert events.schema["occurred_at"] == pl.Datetime("us", "UTC")
    # every field as the event holds it (completion is an exact share, not a whole number)
    shares = [decode_event(d).percent_complete for d in media["data"]]
    assert events["percent_complete"].to_list() == shares
    assert any(share is not None and not share.is_integer() for share in shares)


async def test_the_stream_alone_serves_the_log(
    handle: NatsHandle, archived: Path, settings: Settings
) -> None:
    full = await full_read(handle)
    assert_frame_equal(await EventLog(nc=handle.nc).frame(), full)
    async with EventLog(nats_url=settings.nats_url) as remote:
        assert_frame_equal(await remote.frame(), full)
        assert await remote.last_seq() == TOTAL


async def test_a_gap_between_archive_and_stream_is_an_error_naming_it(
    handle: NatsHandle, archived: Path
) -> None:
    full = await full_read(handle)
    await handle.js.purge_stream(STREAM, seq=121)  # 101..120 are now nowhere
    log = EventLog(archived, nc=handle.nc)

    assert (await log.bounds()).gap == (101, 120)
    with pytest.raises(LogGapError, match=r"101\.\.120") as caught:
        await log.frame()
    assert (caught.value.first_missing, caught.value.last_missing) == (101, 120)
    # ranges that avoid the gap are still whole
    assert_frame_equal(await log.frame(until_seq=100), full.filter(pl.col("seq") <= 100))
    assert_frame_equal(await log.frame(start_seq=121), full.filter(pl.col("seq") >= 121))


async def test_ingestor_replay_reads_the_archive_after_the_stream_aged_out(
    handle: NatsHandle, archived: Path, settings: Settings, tmp_path: Path
) -> None:
    """``ingestor replay`` reads the same log: purging the stream below the archive's end
    changes nothing in the rebuilt projection."""
    quiet: list[str] = []
    before = await replay_command(settings, tmp_path / "before.duckdb", out=quiet.append)
    await handle.js.purge_stream(STREAM, seq=ARCHIVED + 1)  # keep 101.. only
    after = await replay_command(settings, tmp_path / "after.duckdb", out=quiet.append)
    assert (after.messages, after.applied, after.last_seq) == (
        before.messages,
        before.applied,
        before.last_seq,
    )
    assert after.counts == before.counts and after.counts["accepted"] > 0
    for sql in (
        "SELECT * FROM media_events ORDER BY seq",
        "SELECT * FROM playback_events ORDER BY correlation_key",
    ):
        with (
            duckdb.connect(str(tmp_path / "before.duckdb"), read_only=True) as a,
            duckdb.connect(str(tmp_path / "after.duckdb"), read_only=True) as b,
        ):
            assert a.sql(sql).fetchall() == b.sql(sql).fetchall()
