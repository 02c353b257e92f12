"""The Plex webhook receiver and the Plex sessions poller against real loopback HTTP peers,
with a real DirectSink projecting into a real DuckDB file."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ingestor.config import Settings
from ingestor.dedup import DedupIndex
from ingestor.events import decode_event, make_event_id
from ingestor.nats.connection import open_nats
from ingestor.nats.publisher import Publisher
from ingestor.nats.reader import read_range, stream_bounds
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.sink import DirectSink, Sink, StreamSink
from ingestor.sources.base import Backoff, CircuitBreaker
from ingestor.sources.plex.poll import PlexSessionsPoller
from ingestor.sources.plex.webhook import PlexWebhook
from tests.conftest import free_port
from tests.fakes.plex import (
    DURATION_MS,
    JPEG_THUMB,
    LAN_ADDRESS,
    OWNER_PLEX_ID,
    PLAYER_TITLE,
    PLAYER_UUID,
    PUBLIC_ADDRESS,
    RATING_KEY,
    SERVER_UUID,
    SHARED_USER_ID,
    FakePlexServer,
    compact,
    multipart_body,
    session_entry,
    webhook_payload,
)
from tests.support import ManualClock, RecordingSink

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


# ---------------------------------------------------------------------------------------
# helpers


def open_sink(path: Path) -> tuple[Projection, RecordingSink]:
    projection = Projection(path)
    return projection, RecordingSink(DirectSink(Pipeline(projection, DedupIndex())))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Projection, RecordingSink]]:
    projection, sink = open_sink(tmp_path / "analytics.duckdb")
    yield projection, sink
    projection.close()


def playbacks(projection: Projection) -> list[dict[str, Any]]:
    cursor = projection.con.execute(
        "SELECT * FROM playback_events ORDER BY started_at, correlation_key"
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def stored(projection: Projection) -> list[tuple]:
    return projection.con.execute(
        "SELECT event_type, session_key, raw_payload FROM media_events_detail ORDER BY seq"
    ).fetchall()


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def webhook_server(hook: PlexWebhook) -> AsyncIterator[str]:
    app = web.Application()
    hook.add_routes(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/webhooks/plex"))
    finally:
        await server.close()


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes | dict[str, Any],
    content_type: str | None = None,
    **query: str,
) -> tuple[int, str]:
    if isinstance(body, dict):
        body, content_type = multipart_body(body)
    headers = {"Content-Type": content_type} if content_type else {}
    async with http.post(url, data=body, headers=headers, params=query) as response:
        return response.status, await response.text()


async def send(
    http: aiohttp.ClientSession, url: str, event: str, **payload: Any
) -> tuple[int, str]:
    return await post(http, url, webhook_payload(event, **payload))


def make_hook(sink: Sink, tmp_path: Path, clock: ManualClock, **kw: Any) -> PlexWebhook:
    kw.setdefault("owner_id", OWNER_PLEX_ID)
    return PlexWebhook(sink, tmp_path / "sources" / "plex-webhook.json", clock=clock, **kw)


# ---------------------------------------------------------------------------------------
# the webhook


async def test_a_full_plex_playback_becomes_exact_lifecycle_events_and_one_playback_row(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()
    hook = make_hook(sink, tmp_path, clock)
    script = [  # (seconds after T0, Plex kind, viewOffset)
        (0, "media.play", None),
        (600, "media.pause", 600_000),
        (900, "media.resume", 600_000),
        (2400, "media.scrobble", 2_100_000),
        (2640, "media.stop", 2_340_000),
    ]
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        for seconds, kind, offset in script:
            clock.at(seconds)
            status, text = await send(http, url, kind, view_offset=offset)
            assert (status, text) == (200, "ok: 1 event(s)")

    session = f"{PLAYER_UUID}/{RATING_KEY}/{T0_MS}"
    got = [
        (e.event_type, e.occurred_at, e.position_ms, e.stopped_at, e.session_key, e.started_at)
        for e in sink.events
    ]
    assert got == [
        ("play", T0, 0, None, session, T0),
        ("pause", T0 + timedelta(seconds=600), 600_000, None, session, T0),
        ("resume", T0 + timedelta(seconds=900), 600_000, None, session, T0),
        ("scrobble", T0 + timedelta(seconds=2400), 2_100_000, None, session, T0),
        (
            "stop",
            T0 + timedelta(seconds=2640),
            2_340_000,
            T0 + timedelta(seconds=2640),
            session,
            T0,
        ),
    ]
    pause = sink.events[1]
    assert pause.event_id == make_event_id(
        "plex", SERVER_UUID, "media.pause", session, T0_MS + 600_000
    )
    assert len({e.event_id for e in sink.events}) == 5
    assert (pause.source, pause.server_id, pause.user_id, pause.username) == (
        "plex",
        SERVER_UUID,
        OWNER_PLEX_ID,
        "alice",
    )
    assert (pause.rating_key, pause.machine_id, pause.player, pause.ip_address) == (
        RATING_KEY,
        PLAYER_UUID,
        PLAYER_TITLE,
        PUBLIC_ADDRESS,
    )
    assert (pause.local, pause.location_type, pause.media_type) == (True, "lan", "episode")
    assert (pause.title, pause.parent_title, pause.grandparent_title) == (
        "Pilot",
        "Season 1",
        "Breaking Bad",
    )
    assert (pause.year, pause.media_duration) == (2008, DURATION_MS // 1000)
    # Metadata.librarySectionID is an int in the webhook's JSON: ids are strings
    assert (pause.library_id, pause.library_name) == ("2", "TV Shows")
    assert (
        pause.raw_payload == compact(webhook_payload("media.pause", view_offset=600_000)).decode()
    )

    [row] = playbacks(projection)
    assert (row["state"], row["paused_seconds"], row["played_seconds"]) == ("stopped", 300, 2340)
    assert (row["started_at"], row["stopped_at"]) == (T0, T0 + timedelta(seconds=2640))
    assert (row["user_id"], row["rating_key"], row["sources"]) == (
        OWNER_PLEX_ID,
        RATING_KEY,
        ["plex"],
    )
    assert hook.health.events_published == 5 and hook.health.last_error is None
    assert hook.health.server_id == SERVER_UUID


async def test_a_plex_playback_whose_stop_webhook_never_comes_goes_stale_at_its_last_report(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    """Webhooks report no progress, so the episode (44 min) may play until its end; once
    the newest event time is STALE_AFTER (30 min) past that, it counts as stopped at its
    last report instead of playing forever."""
    projection, sink = db
    clock = ManualClock()
    hook = make_hook(sink, tmp_path, clock)
    other = {"player_uuid": "other-player", "account_id": 7, "rating_key": 99}
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        for seconds, kind, offset, who in [
            (0, "media.play", None, {}),
            (600, "media.pause", 600_000, {}),
            (900, "media.resume", 600_000, {}),
            # the stop never comes; another viewer's reports move the event time on
            (2400, "media.play", None, other),
            (5400, "media.pause", 60_000, other),
        ]:
            clock.at(seconds)
            assert (await send(http, url, kind, view_offset=offset, **who))[0] == 200
        # resumed at 10 of 44 min at T0+15m: the episode ends at T0+49m, stale at T0+79m
        [row, _] = playbacks(projection)
        assert row["state"] == "stale" and row["stopped_at"] == T0 + timedelta(seconds=900)
        assert row["stale_at"] == T0 + timedelta(seconds=900 + 2040 + 1800)
        assert row["played_seconds"] == 600  # 15 minutes less the 5-minute pause
        # the stop that comes after all stops it where it says
        clock.at(5500)
        assert (await send(http, url, "media.stop", view_offset=1_800_000))[0] == 200
    [row, _] = playbacks(projection)
    assert (row["state"], row["stopped_at"]) == ("stopped", T0 + timedelta(seconds=5500))


async def test_the_owner_keeps_account_id_1_until_taught_the_real_id_and_ids_are_strings(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    _, sink = db
    clock = ManualClock()
    hook = make_hook(sink, tmp_path, clock, owner_id=None)
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        assert (await send(http, url, "media.play", rating_key=54321))[0] == 200
        hook.set_owner_id(int(OWNER_PLEX_ID))
        clock.at(60)
        assert (await send(http, url, "media.pause", rating_key=54321))[0] == 200
        clock.at(120)
        shared = {"account_id": SHARED_USER_ID, "player_uuid": "ipad-9f2c"}
        assert (await send(http, url, "media.play", **shared))[0] == 200
    assert [(e.user_id, e.rating_key) for e in sink.events] == [
        ("1", "54321"),
        (OWNER_PLEX_ID, "54321"),
        (str(SHARED_USER_ID), RATING_KEY),
    ]


async def test_a_configured_token_is_required_in_the_query(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    hook = make_hook(sink, tmp_path, ManualClock(), token="s3cret-tok")
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        body = webhook_payload("media.play")
        missing = await post(http, url, body)
        wrong = await post(http, url, body, token="guess")
        assert [missing[0], wrong[0]] == [401, 401]
        assert "PLEX_WEBHOOK_TOKEN" in missing[1]
        assert stored(projection) == []
        assert "401" in (hook.health.last_error or "")
        assert (await post(http, url, body, token="s3cret-tok"))[0] == 200
    assert [row[0] for row in stored(projection)] == ["play"]


async def test_an_item_outside_any_library_has_an_unknown_library(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    """VOD items and trailers carry no librarySection* keys: the library stays empty."""
    _, sink = db
    hook = make_hook(sink, tmp_path, ManualClock())
    payload = webhook_payload("media.play")
    for key in ("librarySectionID", "librarySectionTitle", "librarySectionKey"):
        del payload["Metadata"][key]
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        assert (await post(http, url, payload))[0] == 200
    [play] = sink.events
    assert (play.library_id, play.library_name) == ("", "")


def _without(key: str) -> dict[str, Any]:
    payload = webhook_payload("media.play")
    del payload[key]
    return payload


def _metadata_without(key: str) -> dict[str, Any]:
    payload = webhook_payload("media.play")
    del payload["Metadata"][key]
    return payload


MALFORMED: dict[str, tuple[Callable[[], tuple[bytes, str]], str]] = {
    "json_instead_of_multipart": (
        lambda: (compact(webhook_payload("media.play")), "application/json"),
        "expected Content-Type multipart/form-data",
    ),
    "no_payload_part": (lambda: multipart_body(None), "no payload part"),
    "invalid_json": (lambda: multipart_body(b'{"event":"media.play",'), "not valid JSON"),
    "json_array": (lambda: multipart_body(b"[1,2]"), "Expected `object`, got `array`"),
    "no_event": (lambda: multipart_body(_without("event")), "field `event`"),
    "no_metadata": (lambda: multipart_body(_without("Metadata")), "field `Metadata`"),
    "no_account": (lambda: multipart_body(_without("Account")), "field `Account`"),
    "no_player": (lambda: multipart_body(_without("Player")), "field `Player`"),
    "no_server": (lambda: multipart_body(_without("Server")), "field `Server`"),
    "metadata_without_rating_key": (
        lambda: multipart_body(_metadata_without("ratingKey")),
        "missing required field `ratingKey` - at `$.Metadata`",
    ),
    "truncated_multipart": (
        lambda: (
            multipart_body(webhook_payload("media.play"))[0][:-40],
            "multipart/form-data; boundary=------------------------5c2b1e9d8a7f6e3b",
        ),
        "truncated or malformed multipart body",
    ),
    "multipart_without_boundary": (
        lambda: (multipart_body(webhook_payload("media.play"))[0], "multipart/form-data"),
        "truncated or malformed multipart body",
    ),
    # found by tests/fuzz: msgspec raises RecursionError (not a DecodeError) past ~1,000
    # levels, even inside a field it skips; it was answered 500 by aiohttp
    "deeply_nested": (
        lambda: multipart_body(
            b'{"event":"media.play","Guid":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        ),
        "nested too deeply",
    ),
    # found by tests/fuzz: the event (the field and the raw payload holding it) was over
    # NATS's 1 MiB max_payload, so the sink failed and the answer was 503
    "event_too_large": (
        lambda: multipart_body(_with_title("x" * 700_000)),
        "over the limit",
    ),
}


def _with_title(title: str) -> dict[str, Any]:
    payload = webhook_payload("media.play")
    payload["Metadata"]["title"] = title
    return payload


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_input_gets_a_4xx_with_its_reason_and_the_next_valid_one_is_ingested(
    case: str, db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    build, reason = MALFORMED[case]
    hook = make_hook(sink, tmp_path, ManualClock())
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        body, content_type = build()
        status, text = await post(http, url, body, content_type)
        assert status == (413 if case == "event_too_large" else 400), text
        assert reason in text
        assert "Traceback" not in text
        assert reason in (hook.health.last_error or "")
        assert stored(projection) == []
        assert (await send(http, url, "media.play")) == (200, "ok: 1 event(s)")
    assert [row[0] for row in stored(projection)] == ["play"]


async def test_a_media_event_with_an_empty_title_is_rejected_not_stored(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    payload = webhook_payload("media.play")
    payload["Metadata"]["title"] = ""
    hook = make_hook(sink, tmp_path, ManualClock())
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        status, text = await post(http, url, payload)
        assert (status, "title is empty" in text) == (400, True)
        assert hook.open_playbacks == 0  # the refused play left no open playback behind
        assert (await send(http, url, "media.play"))[0] == 200
    assert [row[0] for row in stored(projection)] == ["play"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_size_limit_gets_413_and_the_next_one_is_ingested(
    chunked: bool, db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    hook = make_hook(sink, tmp_path, ManualClock(), max_body=64 * 1024)
    body, content_type = multipart_body(webhook_payload("media.play"), thumb=b"\xff" * 100_000)

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        data: Any = stream() if chunked else body
        async with http.post(url, data=data, headers={"Content-Type": content_type}) as response:
            assert response.status == 413
            assert "limit of 65536" in await response.text()
        assert (await send(http, url, "media.play"))[0] == 200
    assert [row[0] for row in stored(projection)] == ["play"]


@pytest.mark.parametrize("thumb_first", [False, True], ids=["thumb-after", "thumb-before"])
async def test_the_thumb_part_is_read_past_and_never_stored(
    thumb_first: bool, db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    hook = make_hook(sink, tmp_path, ManualClock())
    payload = webhook_payload("media.play")
    body, content_type = multipart_body(payload, thumb=JPEG_THUMB, thumb_first=thumb_first)
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        assert (await post(http, url, body, content_type))[0] == 200
    [(event_type, _, raw)] = stored(projection)
    assert event_type == "play"
    assert raw == compact(payload).decode()
    assert "JFIF" not in raw and "not-the-boundary" not in raw


async def test_other_webhook_kinds_are_answered_200_and_ignored(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    hook = make_hook(sink, tmp_path, ManualClock())
    rate = webhook_payload("media.rate")
    rate["rating"] = "10"
    library_new = {"event": "library.new", "user": True, "owner": True, "Metadata": {}}
    library_new["Server"] = rate["Server"]
    others = [
        rate,
        library_new,
        {"event": "device.new", "owner": True, "Server": rate["Server"]},
        {"event": "admin.database.backup", "owner": True, "Server": rate["Server"]},
        {**webhook_payload("playback.started"), "owner": True, "user": False},
    ]
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        for document in others:
            status, text = await post(http, url, document)
            assert (status, text) == (200, f"ignored {document['event']}")
    assert stored(projection) == [] and sink.events == []
    assert hook.health.last_error is None


async def test_a_restart_between_play_and_stop_keeps_one_playback(tmp_path: Path) -> None:
    clock = ManualClock()
    projection, sink = open_sink(tmp_path / "analytics.duckdb")
    hook = make_hook(sink, tmp_path, clock)
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        assert (await send(http, url, "media.play"))[0] == 200
        clock.at(300)
        assert (await send(http, url, "media.pause", view_offset=300_000))[0] == 200
    projection.close()

    # the ingestor restarts: a new adapter, a new projection connection, the same files
    projection, sink = open_sink(tmp_path / "analytics.duckdb")
    try:
        hook = make_hook(sink, tmp_path, clock)
        assert hook.open_playbacks == 1
        async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
            clock.at(420)
            assert (await send(http, url, "media.resume", view_offset=300_000))[0] == 200
            clock.at(1800)
            assert (await send(http, url, "media.stop", view_offset=1_680_000))[0] == 200
        assert {e.session_key for e in sink.events} == {f"{PLAYER_UUID}/{RATING_KEY}/{T0_MS}"}
        assert {e.started_at for e in sink.events} == {T0}
        [row] = playbacks(projection)
        assert (row["state"], row["paused_seconds"], row["played_seconds"]) == (
            "stopped",
            120,
            1680,
        )
        assert hook.open_playbacks == 0
    finally:
        projection.close()


async def test_plex_double_fires_do_not_become_two_transitions(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()
    hook = make_hook(sink, tmp_path, clock)
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        for seconds, kind in [
            (0, "media.play"),
            (1, "media.play"),
            (100, "media.pause"),
            (101, "media.pause"),
            (200, "media.resume"),
            (200, "media.resume"),
            (300, "media.scrobble"),
            (301, "media.scrobble"),
            (400, "media.stop"),
            (402, "media.stop"),
            (403, "media.pause"),  # late, after the stop
        ]:
            clock.at(seconds)
            status, _ = await send(http, url, kind, view_offset=seconds * 1000)
            assert status == 200
        concurrent = await asyncio.gather(
            *(send(http, url, "media.play") for _ in range(2))
        )  # two identical plays at once, a later playback
        assert sorted(text for _, text in concurrent) == [
            "duplicate media.play ignored",
            "ok: 1 event(s)",
        ]
    assert [e.event_type for e in sink.events] == [
        "play",
        "pause",
        "resume",
        "scrobble",
        "stop",
        "play",
    ]
    assert [p["state"] for p in playbacks(projection)] == ["stopped", "playing"]


async def test_a_pause_without_a_known_play_opens_the_playback_at_its_receipt_time(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()
    hook = make_hook(sink, tmp_path, clock)
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        clock.at(50)
        assert (await send(http, url, "media.pause", view_offset=900_000))[0] == 200
        clock.at(110)
        assert (await send(http, url, "media.resume", view_offset=900_000))[0] == 200
        clock.at(500)
        assert (await send(http, url, "media.stop", view_offset=1_290_000))[0] == 200
    start = T0 + timedelta(seconds=50)
    assert {(e.session_key, e.started_at) for e in sink.events} == {
        (f"{PLAYER_UUID}/{RATING_KEY}/{T0_MS + 50_000}", start)
    }
    [row] = playbacks(projection)
    assert (row["started_at"], row["paused_seconds"], row["played_seconds"]) == (start, 60, 390)


async def test_a_new_play_of_an_open_playback_closes_the_old_one_first(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()
    hook = make_hook(sink, tmp_path, clock)
    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        assert (await send(http, url, "media.play"))[0] == 200
        clock.at(3600)  # the stop was never delivered
        status, text = await send(http, url, "media.play")
        assert (status, text) == (200, "ok: 2 event(s)")
    assert [(e.event_type, e.started_at) for e in sink.events] == [
        ("play", T0),
        ("stop", T0),
        ("play", T0 + timedelta(hours=1)),
    ]
    first, second = playbacks(projection)
    assert (first["state"], first["stopped_at"]) == ("stopped", T0 + timedelta(hours=1))
    assert (second["state"], second["started_at"]) == ("playing", T0 + timedelta(hours=1))


async def test_a_sink_failure_answers_503_and_leaves_the_playback_as_it_was(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()
    hook = make_hook(sink, tmp_path, clock)

    def database_down(_: Sequence[Any]) -> None:
        raise OSError("disk full")

    async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
        assert (await send(http, url, "media.play"))[0] == 200
        projection.fault = database_down
        clock.at(100)
        status, text = await send(http, url, "media.pause", view_offset=100_000)
        assert status == 503 and "disk full" in text
        assert "not stored" in (hook.health.last_error or "")
        projection.fault = None
        clock.at(160)  # the next pause is a transition again, not a re-report
        assert (await send(http, url, "media.pause", view_offset=160_000))[0] == 200
    assert [(row[0]) for row in stored(projection)] == ["play", "pause"]
    [row] = playbacks(projection)
    assert row["state"] == "paused"


# ---------------------------------------------------------------------------------------
# the sessions poller


@contextlib.asynccontextmanager
async def polling(poller: PlexSessionsPoller) -> AsyncIterator[PlexSessionsPoller]:
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    try:
        yield poller
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def make_poller(
    sink: Sink, tmp_path: Path, server: FakePlexServer, clock: ManualClock, **kw: Any
) -> PlexSessionsPoller:
    kw.setdefault("token", server.token)
    kw.setdefault("owner_id", OWNER_PLEX_ID)
    return PlexSessionsPoller(
        sink,
        url=kw.pop("url", server.url),
        state_path=tmp_path / "sources" / "plex-poll.json",
        interval=0.02,
        backoff=Backoff(initial=0.02, maximum=0.1),
        breaker=kw.pop("breaker", CircuitBreaker(threshold=3, reset_timeout=60)),
        clock=clock,
        **kw,
    )


async def polls_later(server: FakePlexServer, n: int = 3) -> None:
    """Wait until ``n`` more polls of the sessions list were answered."""
    target = server.requests["/status/sessions"] + n
    await until(lambda: server.requests["/status/sessions"] >= target, f"{n} more polls")


async def test_an_unchanged_session_polled_twenty_times_is_one_play(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    async with FakePlexServer() as server:
        server.sessions = [session_entry(view_offset=5_000)]
        poller = make_poller(sink, tmp_path, server, ManualClock())
        async with polling(poller):
            await until(lambda: server.requests["/status/sessions"] >= 20, "20 polls")
            await polls_later(server, 1)
    assert [e.event_type for e in sink.events] == ["play"]
    assert poller.stats.polls >= 20 and poller.health.events_published == 1
    [row] = playbacks(projection)
    assert (row["state"], row["source"], row["server_id"]) == ("playing", "plex_poll", SERVER_UUID)


async def test_pause_resume_scrobble_and_stop_are_emitted_once_each_into_one_playback(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()
    async with FakePlexServer() as server:
        poller = make_poller(sink, tmp_path, server, clock)
        async with polling(poller):

            async def step(seconds: int, expected: int, *sessions: dict[str, Any]) -> None:
                clock.at(seconds)  # the time first, then the change: a poll never sees a
                server.sessions = list(sessions)  # new state with an old time
                await until(lambda: len(sink.events) == expected, f"{expected} events")
                await polls_later(server)  # unchanged polls add nothing
                assert len(sink.events) == expected

            await step(0, 1, session_entry(view_offset=0))
            await step(600, 2, session_entry(state="paused", view_offset=600_000))
            await step(610, 2, session_entry(state="buffering", view_offset=600_000))
            await step(900, 3, session_entry(state="playing", view_offset=600_000))
            await step(2400, 4, session_entry(view_offset=2_400_000))
            await step(2640, 5)

    session = f"42/{RATING_KEY}/{T0_MS}"
    assert [
        (e.event_type, e.occurred_at, e.position_ms, e.session_key, e.started_at)
        for e in sink.events
    ] == [
        ("play", T0, 0, session, T0),
        ("pause", T0 + timedelta(seconds=600), 600_000, session, T0),
        ("resume", T0 + timedelta(seconds=900), 600_000, session, T0),
        ("scrobble", T0 + timedelta(seconds=2400), 2_400_000, session, T0),
        ("stop", T0 + timedelta(seconds=2640), 2_400_000, session, T0),
    ]
    stop = sink.events[-1]
    assert stop.stopped_at == T0 + timedelta(seconds=2640)
    assert stop.event_id == make_event_id(
        "plex_poll", SERVER_UUID, "stop", session, T0_MS + 2_640_000
    )
    assert (stop.user_id, stop.username, stop.rating_key, stop.machine_id) == (
        OWNER_PLEX_ID,
        "alice",
        RATING_KEY,
        PLAYER_UUID,
    )
    assert (stop.player, stop.platform, stop.product, stop.device, stop.ip_address) == (
        PLAYER_TITLE,
        "Roku",
        "Plex for Roku",
        "Roku Ultra",
        LAN_ADDRESS,
    )
    assert (stop.transcode_decision, stop.video_resolution, stop.audio_channels) == (
        "transcode",
        "1080",
        6,
    )
    assert (stop.bandwidth, stop.location_type, stop.local, stop.secure, stop.relayed) == (
        10400,
        "lan",
        True,
        True,
        False,
    )
    assert (stop.media_duration, stop.year, stop.grandparent_title) == (2640, 2008, "Breaking Bad")
    assert (stop.library_id, stop.library_name) == ("2", "TV Shows")
    [row] = playbacks(projection)
    assert (row["library_id"], row["library_name"]) == ("2", "TV Shows")
    assert (row["state"], row["paused_seconds"], row["played_seconds"]) == ("stopped", 300, 2340)
    assert (row["started_at"], row["stopped_at"]) == (T0, T0 + timedelta(seconds=2640))


async def test_a_new_item_under_the_same_session_key_is_a_stop_and_a_play(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()
    async with FakePlexServer() as server:
        poller = make_poller(sink, tmp_path, server, clock)
        async with polling(poller):
            server.sessions = [session_entry("7", "54321", view_offset=2_600_000)]
            await until(lambda: len(sink.events) == 2, "play and scrobble")
            clock.at(60)
            server.sessions = [session_entry("7", "54322", title="Cat's in the Bag...")]
            await until(lambda: len(sink.events) == 4, "stop and play")
    assert [(e.event_type, e.rating_key) for e in sink.events] == [
        ("play", "54321"),
        ("scrobble", "54321"),
        ("stop", "54321"),
        ("play", "54322"),
    ]
    assert [p["rating_key"] for p in playbacks(projection)] == ["54321", "54322"]


async def test_a_restart_does_not_re_emit_play_for_a_session_already_seen(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()
    async with FakePlexServer() as server:
        server.sessions = [session_entry(state="paused", view_offset=120_000)]
        async with polling(make_poller(sink, tmp_path, server, clock)):
            await until(lambda: len(sink.events) == 2, "play and pause")
        clock.at(300)
        restarted = make_poller(sink, tmp_path, server, clock)
        assert restarted.open_sessions == 1
        async with polling(restarted):
            await polls_later(server, 5)
            assert len(sink.events) == 2
            clock.at(360)
            server.sessions = []
            await until(lambda: len(sink.events) == 3, "the stop")
    assert [e.event_type for e in sink.events] == ["play", "pause", "stop"]
    [row] = playbacks(projection)
    assert (row["state"], row["started_at"], row["paused_seconds"]) == ("stopped", T0, 360)


async def test_a_rejected_token_is_reported_and_the_circuit_stops_calls_until_it_half_opens(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    _, sink = db
    async with FakePlexServer(token="the-right-one") as server:
        server.sessions = [session_entry()]
        breaker = CircuitBreaker(threshold=3, reset_timeout=1.0)
        poller = make_poller(
            sink, tmp_path, server, ManualClock(), token="a-wrong-one", breaker=breaker
        )
        async with polling(poller):
            await until(lambda: poller.stats.refused >= 3, "the circuit to refuse polls")
            assert server.total_requests == 3  # no calls while the circuit is open
            assert "PLEX_TOKEN rejected" in (poller.health.last_error or "")
            assert "circuit open" in (poller.health.last_error or "")
            assert sink.events == []
            server.token = "a-wrong-one"  # the server accepts it now (the token was fixed)
            await until(lambda: len(sink.events) == 1, "the play after the circuit half-opened")
    assert breaker.state == "closed"
    assert poller.stats.failures == 3


async def test_an_unreachable_server_is_recorded_and_retried_with_backoff(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    _, sink = db
    async with FakePlexServer() as server:
        poller = make_poller(
            sink, tmp_path, server, ManualClock(), url=f"http://127.0.0.1:{free_port()}"
        )
        async with polling(poller):
            await until(lambda: poller.stats.failures >= 2, "two failed polls")
    assert "cannot reach Plex" in (poller.health.last_error or "")
    assert poller.health.last_success is None and sink.events == []


async def test_an_unreadable_answer_or_session_is_an_error_and_polling_goes_on(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()
    async with FakePlexServer() as server:
        poller = make_poller(sink, tmp_path, server, clock)
        async with polling(poller):
            server.body = b"<html>oops</html>"
            await until(lambda: poller.stats.failures >= 1, "a failed poll")
            assert "unreadable" in (poller.health.last_error or "")
            server.body = None
            server.sessions = [session_entry("1", "100")]
            await until(lambda: len(sink.events) == 1, "the first play")
            broken = session_entry("2", "200")
            del broken["Player"]
            clock.at(30)
            server.sessions = [broken, session_entry("3", "300")]
            await until(lambda: len(sink.events) == 2, "the play of the readable session")
            await polls_later(server)
            assert "Metadata[0]" in (poller.health.last_error or "")
            clock.at(90)
            server.sessions = [session_entry("3", "300")]
            await until(lambda: len(sink.events) == 3, "the stop once the list is readable")
    assert [(e.event_type, e.rating_key) for e in sink.events] == [
        ("play", "100"),
        ("play", "300"),
        ("stop", "100"),
    ]
    assert sink.events[-1].occurred_at == T0 + timedelta(seconds=90)
    assert len(playbacks(projection)) == 2


async def test_a_playback_seen_by_webhook_and_poll_is_one_row_linked_across_sources(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()
    hook = make_hook(sink, tmp_path, clock)
    async with (
        FakePlexServer() as server,
        webhook_server(hook) as url,
        aiohttp.ClientSession() as http,
    ):
        assert (await send(http, url, "media.play"))[0] == 200
        clock.at(4)  # the poll sees it a few seconds later
        server.sessions = [session_entry(view_offset=4_000)]
        async with polling(make_poller(sink, tmp_path, server, clock)):
            await until(lambda: len(sink.events) == 2, "the poller's play")
    [row] = playbacks(projection)
    assert row["sources"] == ["plex", "plex_poll"]
    assert projection.con.execute(
        "SELECT count(*) FROM dedupe_audit_log WHERE tier = 'correlation'"
    ).fetchall() == [(1,)]


async def test_events_the_sink_refused_are_emitted_later_with_their_original_ids(
    db: tuple[Projection, RecordingSink], tmp_path: Path
) -> None:
    projection, sink = db
    clock = ManualClock()

    def database_down(_: Sequence[Any]) -> None:
        raise OSError("database is locked")

    projection.fault = database_down
    async with FakePlexServer() as server:
        server.sessions = [session_entry()]
        async with polling(make_poller(sink, tmp_path, server, clock)) as poller:
            await until(lambda: poller.stats.failures >= 2, "the sink to refuse twice")
            assert "sink failed" in (poller.health.last_error or "")
        clock.at(120)  # later polls, and a restart, must not re-time the refused play
        projection.fault = None
        async with polling(make_poller(sink, tmp_path, server, clock)):
            await until(lambda: len(sink.events) == 1, "the kept play")
            await polls_later(server)
    [play] = sink.events
    session = f"42/{RATING_KEY}/{T0_MS}"
    assert (play.event_type, play.occurred_at, play.session_key) == ("play", T0, session)
    assert play.event_id == make_event_id("plex_poll", SERVER_UUID, "play", session, T0_MS)
    assert [row[0] for row in stored(projection)] == ["play"]


async def test_webhook_events_are_in_the_stream_when_the_answer_comes(
    settings: Settings, tmp_path: Path
) -> None:
    handle = await open_nats(settings)
    try:
        clock = ManualClock()
        hook = make_hook(StreamSink(Publisher(handle.nc)), tmp_path, clock)
        async with webhook_server(hook) as url, aiohttp.ClientSession() as http:
            for n, (seconds, kind) in enumerate([(0, "media.play"), (60, "media.pause")], 1):
                clock.at(seconds)
                assert (await send(http, url, kind, view_offset=seconds * 1000))[0] == 200
                assert (await stream_bounds(handle.nc))[1] == n
        messages = [m async for batch in read_range(handle.nc) for m in batch]
        events = [decode_event(m.data) for m in messages]
        assert [(e.event_type, e.user_id) for e in events] == [
            ("play", OWNER_PLEX_ID),
            ("pause", OWNER_PLEX_ID),
        ]
        assert {m.subject for m in messages} == {f"playback.{events[0].server_id}.plex.episode"}
    finally:
        await handle.close()
