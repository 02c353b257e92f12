"""One person, several accounts, through the real stream: a notebook merges accounts into a
person, the router projects the identity record, the statistics count by person; an unmerge
puts the figures back; the log's replay (the workbench's and ``ingestor replay``'s) gives the
same tables (docs/architecture.md, invariants 2 and 7)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ingestor.app import new_pipeline, open_projection
from ingestor.commands.replay import replay_command
from ingestor.config import Settings
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.dlq import DeadLetters
from ingestor.nats.publisher import Publisher
from ingestor.nats.reader import stream_bounds
from ingestor.projection import Projection
from ingestor.router import Router
from ingestor.simulation import SimulationConfig, simulate
from workbench import connect, identities
from workbench.api import WorkbenchError, open_data_dir
from workbench.log import EventLog
from workbench.replay import replay
from workbench.stats import by_person, by_user

pytestmark = pytest.mark.integration


@pytest.fixture
async def handle(settings: Settings) -> AsyncIterator[NatsHandle]:
    h = await open_nats(settings)
    try:
        yield h
    finally:
        await h.close()


async def caught_up(router: Router, handle: NatsHandle) -> None:
    _, last = await stream_bounds(handle.nc)
    assert await router.wait_for_seq(last, timeout=60), "the router did not catch up"


def persons(db) -> pl.DataFrame:
    return by_person(db, metric="watch_time").sort("person")


def links(con) -> pl.DataFrame:
    return con.sql("SELECT * FROM identity_links ORDER BY seq, server_id, user_id").pl()


async def test_merge_report_unmerge_and_replay_through_the_stream(
    settings: Settings, handle: NatsHandle, tmp_path: Path
) -> None:
    feed = simulate(SimulationConfig(seed=21, users=4, days=3)).events
    await Publisher(handle.nc).publish_many(feed)
    projection: Projection = open_projection(settings.duckdb_path)
    router = Router(handle.nc, new_pipeline(settings, projection), flush_interval=0.05)
    routing = asyncio.create_task(router.run())
    try:
        await caught_up(router, handle)
        users = by_user(projection, metric="watch_time")
        assert users.height >= 3
        # one person behind accounts on different servers when the feed has them
        picked = users.unique("server_id", keep="first").head(2)
        if picked.height < 2:
            picked = users.head(2)
        accounts = list(zip(picked["server_id"], picked["user_id"], strict=True))
        before = persons(projection)

        async with await connect(settings.nats_url, http_url=None) as wb:
            merged = await identities.merge(wb, "Ana", accounts, by="admin", notes="one person")
            assert "into Ana as message" in str(merged)
            await caught_up(router, handle)
            after = persons(projection)
            ana = after.filter(pl.col("person") == "Ana")
            assert ana.rows() == [("Ana", 2, int(picked["watch_time"].sum()))]
            assert after.height == before.height - 1
            assert after["watch_time"].sum() == before["watch_time"].sum()
            assert set(identities.accounts(projection)["person"]) == {"Ana"}
            # a record that would change nothing is refused before publishing
            with pytest.raises(identities.IdentityError, match="Ana's already"):
                await identities.merge(wb, "Ana", accounts)

            # a broken identity record is dead-lettered; the stream goes on
            await handle.js.publish("identity.merge", b'{"record_id": "x"}')
            unmerged = await identities.unmerge(wb, "Ana", by="admin")
        await caught_up(router, handle)
        assert router.stats.dead_lettered == 1
        assert await DeadLetters(handle.js).count() == 1
        assert_frame_equal(persons(projection), before)
        assert identities.accounts(projection).height == 0
        history = identities.history(projection)
        assert history["seq"].unique().to_list() == [merged.seq, unmerged.seq]
        assert history.filter(pl.col("seq") == unmerged.seq)["detail"].to_list() == [
            "unmerged",
            "unmerged",
        ]

        # merged again, so that the replays below must reproduce a merge that stands
        async with await connect(settings.nats_url, http_url=None) as wb:
            await identities.merge(wb, "Ana", [*accounts[:1], ("elsewhere", "42")])
        await caught_up(router, handle)
    finally:
        router.stop()
        await routing

    live_links, live_persons = links(projection.con), persons(projection)
    projection.close()
    async with EventLog(nc=handle.nc) as log:
        with await replay(log, progress=False) as again:
            assert_frame_equal(links(again.con), live_links)
            assert_frame_equal(persons(again), live_persons)
    output = tmp_path / "replayed.duckdb"
    await replay_command(settings, output, out=lambda _: None)
    rebuilt = open_projection(output, read_only=True)
    try:
        assert_frame_equal(links(rebuilt.con), live_links)
        assert_frame_equal(persons(rebuilt), live_persons)
    finally:
        rebuilt.close()


async def test_a_merge_without_nats_says_what_it_needs(settings: Settings) -> None:
    settings.archive_dir.mkdir(parents=True)
    async with open_data_dir(settings.data_dir) as wb:
        with pytest.raises(WorkbenchError, match=r"identity merge .*needs the running ingestor"):
            await identities.merge(wb, "Ana", [("plex-1", "1")])
