"""Verdicts through the real stream: a notebook confirms and restores audit entries, the
router projects the decisions, and a replay of the log reproduces the result (docs/architecture.md,
invariants 2 and 4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ingestor.app import new_pipeline, open_projection
from ingestor.config import Settings
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.publisher import Publisher
from ingestor.nats.reader import stream_bounds
from ingestor.projection import Projection
from ingestor.router import Router
from ingestor.simulation import SimulationConfig, simulate
from tests.factory import plex_playback, tautulli_summary
from workbench import audit, connect
from workbench.api import WorkbenchError, open_data_dir
from workbench.log import EventLog
from workbench.replay import replay

pytestmark = pytest.mark.integration

TABLES = {
    "playback_events": "correlation_key",
    "media_events": "seq",
    "dedupe_audit_log": "audit_id",
}


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


def tables(con) -> dict[str, pl.DataFrame]:
    return {
        name: con.sql(f"SELECT * FROM {name} ORDER BY {order}").pl()
        for name, order in TABLES.items()
    }


async def test_verdicts_change_the_projection_and_a_replay_reproduces_them(
    settings: Settings, handle: NatsHandle
) -> None:
    feed = simulate(SimulationConfig(seed=11, users=4, days=2)).events
    await Publisher(handle.nc).publish_many(feed)
    projection: Projection = open_projection(settings.duckdb_path)
    router = Router(handle.nc, new_pipeline(settings, projection), flush_interval=0.05)
    routing = asyncio.create_task(router.run())
    try:
        await caught_up(router, handle)
        links = audit.entries(projection, tier="correlation")
        drops = audit.entries(projection, tier=["session_key", "event_id"])
        assert links.height >= 3 and drops.height >= 1
        unlink, keep = links["audit_id"][0], links["audit_id"][1]
        playbacks_before = projection.counts()["playbacks"]

        async with await connect(settings.nats_url, http_url=None) as wb:
            restored = await wb.restore(unlink, by="ana", notes="two devices, not one")
            confirmed = await wb.confirm(keep, by="ana")
            await wb.confirm(drops["audit_id"][0], by="ana")
            # the router applies them on the projection's connection: wait, then read it
            await caught_up(router, handle)
            # a verdict that cannot apply is refused before anything is published
            with pytest.raises(audit.AuditError, match="already restored"):
                await audit.confirm(handle.nc, unlink, db=projection)
        assert confirmed.seq > restored.seq
        await caught_up(router, handle)

        statuses = dict(
            projection.con.execute(
                "SELECT audit_id, status FROM dedupe_audit_log WHERE audit_id IN (?, ?)",
                [unlink, keep],
            ).fetchall()
        )
        assert statuses == {unlink: "user_restored", keep: "user_confirmed"}
        assert projection.counts()["playbacks"] == playbacks_before + 1
        summary = audit.summary(projection)
        assert (summary.confirmed, summary.restored) == (2, 1)
        assert summary.accuracy == pytest.approx(2 / 3)

        # events keep arriving after the verdicts: the split playback stays split
        more = simulate(SimulationConfig(seed=12, users=2, days=1)).events
        await Publisher(handle.nc).publish_many(more)
        await caught_up(router, handle)
    finally:
        router.stop()
        await routing

    live = tables(projection.con)
    async with EventLog(nc=handle.nc) as log:
        with await replay(log, progress=False) as again:
            replayed = tables(again.con)
    for name in TABLES:
        assert_frame_equal(replayed[name], live[name], check_exact=True)
    projection.close()


async def test_a_verdict_without_nats_says_what_it_needs(settings: Settings) -> None:
    archive = settings.archive_dir
    archive.mkdir(parents=True)
    async with open_data_dir(settings.data_dir) as wb:
        with pytest.raises(WorkbenchError, match="needs the running ingestor") as caught:
            await wb.confirm("any")
    assert "`.venv/bin/ingestor run`" in str(caught.value)  # and how to start it


async def test_connect_to_nothing_is_a_clear_error() -> None:
    with pytest.raises(WorkbenchError, match="no NATS server answers"):
        await connect("nats://127.0.0.1:1", http_url=None)


async def test_the_audit_browser_publishes_the_verdict_of_its_button(
    settings: Settings, handle: NatsHandle
) -> None:
    feed = simulate(SimulationConfig(seed=13, users=3, days=1)).events
    await Publisher(handle.nc).publish_many(feed)
    projection: Projection = open_projection(settings.duckdb_path)
    router = Router(handle.nc, new_pipeline(settings, projection), flush_interval=0.05)
    routing = asyncio.create_task(router.run())
    try:
        await caught_up(router, handle)
        async with await connect(settings.nats_url, http_url=None) as wb:
            browser = await wb.audit_browser(tier="correlation")
            assert browser.visible["kept_raw_payload"].null_count() == 0
            link = browser.visible["audit_id"][0]
            browser.select(link)
            outcome = await browser.restore_selected()
            assert outcome.ok, outcome.message
            await caught_up(router, handle)
            status = projection.con.execute(
                "SELECT status FROM dedupe_audit_log WHERE audit_id = ?", [link]
            ).fetchall()
            assert status == [("user_restored",)]
            # the same button again is refused with a message, and nothing is published
            outcome = await browser.restore_selected()
            assert not outcome.ok and "already restored" in outcome.message
    finally:
        router.stop()
        await routing
        projection.close()


async def test_an_offline_data_dir_with_a_nats_url_can_publish_verdicts(
    settings: Settings, handle: NatsHandle
) -> None:
    await Publisher(handle.nc).publish_many([*plex_playback(), tautulli_summary()])
    async with open_data_dir(settings.data_dir, nats_url=settings.nats_url) as wb:
        (link,) = (await wb.audit(tier="correlation"))["audit_id"].to_list()
        receipt = await wb.confirm(link, by="ana")
    assert receipt.seq == 7 and not receipt.duplicate
