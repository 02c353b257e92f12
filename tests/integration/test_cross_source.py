"""One playback reported by two real adapters: Plex webhooks over HTTP and a Tautulli history
row from the Tautulli API, in either order, is one playback_events row and one audit link."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ingestor.dedup import DedupIndex
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.sink import DirectSink
from ingestor.sources.plex.webhook import PlexWebhook
from ingestor.sources.tautulli.sync import TautulliSync
from tests.fakes.plex import (
    OWNER_PLEX_ID,
    PLAYER_UUID,
    RATING_KEY,
    SERVER_UUID,
    multipart_body,
    webhook_payload,
)
from tests.fakes.tautulli import API_KEY, FakeTautulli, Play, TautulliDb
from tests.support import ManualClock

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 9, 20, 0, tzinfo=UTC)
LATE = 5  # Tautulli notices the stream a few seconds after Plex's media.play
STOP = 2400
PAUSED = 300


async def plex_reports(sink: DirectSink, tmp_path: Path) -> None:
    clock = ManualClock(T0)
    hook = PlexWebhook(sink, tmp_path / "plex.json", owner_id=OWNER_PLEX_ID, clock=clock)
    app = web.Application()
    hook.add_routes(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            for at, kind, offset in [
                (0, "media.play", None),
                (600, "media.pause", 600_000),
                (600 + PAUSED, "media.resume", 600_000),
                (STOP - 3, "media.scrobble", 2_090_000),
                (STOP, "media.stop", 2_100_000),
            ]:
                clock.at(at)
                body, content_type = multipart_body(webhook_payload(kind, view_offset=offset))
                async with http.post(
                    server.make_url("/webhooks/plex"),
                    data=body,
                    headers={"Content-Type": content_type},
                ) as response:
                    assert response.status == 200, await response.text()
    finally:
        await server.close()


async def tautulli_reports(sink: DirectSink, tmp_path: Path) -> None:
    db = TautulliDb(tmp_path / "tautulli.db", server_id=SERVER_UUID)
    started = int(T0.timestamp()) + LATE
    db.add(
        Play(
            started,
            int(T0.timestamp()) + STOP,
            rating_key=int(RATING_KEY),
            machine_id=PLAYER_UUID,
            media_type="episode",
            title="Pilot",
            paused_counter=PAUSED,
            transcode_decision="transcode",
        )
    )
    fake = await FakeTautulli(db, server_id=SERVER_UUID).start()
    try:
        sync = TautulliSync(
            fake.url, API_KEY, sink, tmp_path / "tautulli.json", lookback=None, poll_activity=False
        )
        async with sync:
            await sync.sync_history()
    finally:
        await fake.close()
        db.close()


@pytest.mark.parametrize("tautulli_first", [False, True], ids=["plex-first", "tautulli-first"])
async def test_plex_webhooks_and_a_tautulli_row_of_one_playback_are_one_row(
    tmp_path: Path, tautulli_first: bool
) -> None:
    projection = Projection(tmp_path / "a.duckdb")
    sink = DirectSink(Pipeline(projection, DedupIndex()))
    if tautulli_first:
        await tautulli_reports(sink, tmp_path)
        await plex_reports(sink, tmp_path)
    else:
        await plex_reports(sink, tmp_path)
        await tautulli_reports(sink, tmp_path)
    rows = projection.con.execute(
        "SELECT started_at, stopped_at, paused_seconds, played_seconds, transcode_decision, "
        "sources, user_id, rating_key FROM playback_events"
    ).fetchall()
    assert rows == [
        (
            T0,  # Plex's media.play: lifecycle events win the start
            T0 + timedelta(seconds=STOP),
            PAUSED,  # Tautulli's durations
            STOP - LATE - PAUSED,
            "transcode",  # and stream details (the API's history rows carry the decision)
            ["plex", "tautulli"],
            OWNER_PLEX_ID,  # Account.id 1 mapped to the owner's real id
            RATING_KEY,
        )
    ]
    links = projection.con.execute(
        "SELECT tier, action, source, kept_source FROM dedupe_audit_log"
    ).fetchall()
    first, second = ("tautulli", "plex") if tautulli_first else ("plex", "tautulli")
    assert links == [("correlation", "link", second, first)]
    projection.close()


async def test_ingestor_run_serves_the_plex_webhook_and_syncs_tautulli(
    tmp_path: Path, settings
) -> None:
    """The wiring of `ingestor run`: sources from the configuration, webhooks on the one HTTP
    server, events through the stream into the projection, source health in /status."""
    import asyncio

    from ingestor.app import run_service
    from ingestor.sources.config import PlexWebhookConfig, SourcesConfig, TautulliConfig

    # the webhook's receipt time is the wall clock here: Tautulli saw the stream start 2 s on
    now = int(datetime.now(UTC).timestamp())
    db = TautulliDb(tmp_path / "tautulli.db", server_id=SERVER_UUID)
    db.add(
        Play(
            now + 2,
            now + STOP,
            rating_key=int(RATING_KEY),
            machine_id=PLAYER_UUID,
            media_type="episode",
            title="Pilot",
            paused_counter=PAUSED,
        )
    )
    fake = await FakeTautulli(db, server_id=SERVER_UUID).start()
    config = SourcesConfig(
        plex_webhook=PlexWebhookConfig(token="s3cret"),  # the owner id comes from Tautulli
        tautulli=[TautulliConfig("tautulli", fake.url, API_KEY, sync_interval=3600, lookback=None)],
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    service = asyncio.create_task(run_service(settings, config, ready=ready.set, stop=stop))
    base = f"http://127.0.0.1:{settings.http_port}"
    try:
        await asyncio.wait_for(ready.wait(), 30)
        async with aiohttp.ClientSession() as http:

            async def status() -> dict:
                async with http.get(f"{base}/status") as response:
                    return await response.json()

            deadline = asyncio.get_running_loop().time() + 30
            while (await status())["accepted"] < 1:  # the Tautulli row, synced at start
                assert asyncio.get_running_loop().time() < deadline, await status()
                await asyncio.sleep(0.05)
            body, content_type = multipart_body(webhook_payload("media.play"))
            headers = {"Content-Type": content_type}
            async with http.post(f"{base}/webhooks/plex", data=body, headers=headers) as denied:
                assert denied.status == 401
            url = f"{base}/webhooks/plex?token=s3cret"
            async with http.post(url, data=body, headers=headers) as accepted:
                assert accepted.status == 200, await accepted.text()
            while (await status())["accepted"] < 2:
                assert asyncio.get_running_loop().time() < deadline, await status()
                await asyncio.sleep(0.05)
            final = await status()
    finally:
        stop.set()
        stats = await asyncio.wait_for(service, 60)
        await fake.close()
        db.close()
    assert stats is not None and stats.accepted == 2
    assert final["playbacks"] == 1 and final["linked"] == 1  # the play linked to the row
    health = {h["kind"]: h for h in final["sources"]}
    assert health["tautulli"]["events_published"] == 1 and health["tautulli"]["last_success"]
    assert health["plex_webhook"]["events_published"] == 1
