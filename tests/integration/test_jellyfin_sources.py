"""Jellyfin and Emby adapters against a fake server on loopback (real WebSocket, real REST)
and the Jellyfin webhook receiver on a real aiohttp server, into a real DirectSink + DuckDB."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ingestor.dedup import DedupIndex
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.sink import DirectSink
from ingestor.sources.base import Backoff, CircuitBreaker, StateFile
from ingestor.sources.jellyfin.tracker import PlaybackTracker
from ingestor.sources.jellyfin.webhook import JellyfinWebhook
from ingestor.sources.jellyfin.websocket import MediaServerSocket
from tests.fakes.jellyfin import (
    FakeMediaServer,
    eventually,
    movie,
    notification,
    session,
)
from tests.support import ManualClock, RecordingSink

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
SESSION = "6c5e0b2a1f3d4e5f60718293a4b5c6d7"
USER = "2b1f9c3e4d5a6b7c8d9e0f1a2b3c4d5e"
DEVICE = "TW96aWxsYS81LjAgKFgxMTsgTGludXggeDg2XzY0KQ11"
T0_MS = round(T0.timestamp() * 1000)


@pytest.fixture
def projection(tmp_path: Path) -> Iterator[Projection]:
    projection = Projection(tmp_path / "analytics.duckdb")
    yield projection
    projection.close()


@pytest.fixture
def sink(projection: Projection) -> RecordingSink:
    return RecordingSink(DirectSink(Pipeline(projection, DedupIndex())))


def rows(projection: Projection, sql: str) -> list[tuple[Any, ...]]:
    return projection.con.execute(sql).fetchall()


PLAYBACK_SQL = """
    SELECT source, server_id, user_id, rating_key, machine_id, started_at, stopped_at,
           state, paused_seconds, played_seconds
    FROM playback_events
"""


@contextlib.asynccontextmanager
async def running(socket: MediaServerSocket) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(socket.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def push(server: FakeMediaServer, socket: MediaServerSocket, sessions: list[dict]) -> None:
    """Push a Sessions frame and wait until the client applied it."""
    applied = socket.snapshots
    assert await server.push(sessions) == 1, "no subscribed client to push to"
    await eventually(lambda: socket.snapshots > applied, what="the push to be applied")


async def subscribed(
    server: FakeMediaServer, socket: MediaServerSocket, count: int = 1, *, opened: int = 1
) -> None:
    """Wait until the server has had ``count`` connections, one is subscribed, and ``socket``
    opened its ``opened``-th and applied the snapshot read at connect."""
    await eventually(
        lambda: (
            len(server.connections) == count
            and bool(server.subscribed)
            and socket.connections == opened
            and socket.snapshots >= opened
        ),
        what=f"connection {count} to subscribe",
    )


def own_session(server: FakeMediaServer) -> dict[str, Any]:
    """The ingestor's own idle session, which every push lists."""
    return session(
        server_id=server.server_id,
        session_id="d41d8cd98f00b204e9800998ecf8427e",
        user_id="0" * 32,
        client="mediaevents",
        device_name="ingestor",
        device_id="mediaevents-0011223344556677",
    )


# ---------------------------------------------------------------------------------------
# the WebSocket client


async def test_jellyfin_socket_makes_one_playback_with_its_pause_across_a_dropped_connection(
    tmp_path: Path, sink: RecordingSink, projection: Projection
) -> None:
    clock = ManualClock()
    item = movie()
    async with FakeMediaServer("jellyfin") as server:
        idle = own_session(server)

        def watching(position_s: float, paused: bool = False) -> list[dict[str, Any]]:
            return [
                idle,
                session(
                    server_id=server.server_id,
                    session_id=SESSION,
                    user_id=USER,
                    item=item,
                    position_s=position_s,
                    paused=paused,
                    play_method="Transcode",
                    remote="203.0.113.9",
                ),
            ]

        server.sessions = [idle]
        socket = MediaServerSocket(
            "jellyfin", server.url, server.api_key, tmp_path / "jellyfin.json", sink, clock=clock
        )
        async with running(socket):
            await subscribed(server, socket)
            first = server.connections[0]
            assert first.path == "/socket"
            assert first.subscriptions == ["0,1500"]
            assert first.query == {"api_key": server.api_key, "deviceId": socket.device_id}
            for _ in range(20):  # the same state pushed 20 times: one play
                await push(server, socket, watching(0))
            clock.at(600)
            await push(server, socket, watching(600, paused=True))
            clock.at(720)
            await push(server, socket, watching(600))

            answered = first.keepalives
            await server.force_keepalive(60)
            await eventually(lambda: first.keepalives > answered, 5, "a KeepAlive answer")

            clock.at(900)  # mid-playback the connection drops; the server plays on
            server.sessions = watching(780)
            await server.drop()
            await subscribed(server, socket, count=2, opened=2)
            second = server.connections[1]
            assert second.subscriptions == ["0,1500"]
            assert second.query["deviceId"] == first.query["deviceId"]
            await push(server, socket, watching(790))
            clock.at(1800)
            await push(server, socket, [idle])

    assert sink.kinds == ["play", "pause", "resume", "stop"]
    assert len({e.session_key for e in sink.events}) == 1
    assert [e.position_ms for e in sink.events] == [0, 600_000, 600_000, 790_000]
    play = sink.events[0]
    assert play.rating_key == item["Id"] and len(play.rating_key) == 32
    assert (play.ip_address, play.transcode_decision, play.stream_bitrate) == (
        "203.0.113.9",
        "transcode",
        8000,
    )
    assert (play.platform, play.player, play.title, play.media_duration) == (
        "Jellyfin Web",
        "Chrome",
        "Heat",
        170 * 60,
    )
    assert rows(projection, PLAYBACK_SQL) == [
        (
            "jellyfin",
            server.server_id,
            USER,
            item["Id"],
            DEVICE,
            T0,
            T0 + timedelta(seconds=1800),
            "stopped",
            120,
            1680,
        )
    ]
    assert socket.health.server_id == server.server_id
    assert socket.health.name == f"jellyfin:{server.server_id}"
    assert socket.health.events_published == 4
    assert "closed the connection" in (socket.health.last_error or "")


async def test_a_restarted_client_recognises_the_playback_it_already_reported(
    tmp_path: Path, sink: RecordingSink, projection: Projection
) -> None:
    clock = ManualClock()
    state = tmp_path / "jellyfin.json"
    item = movie()
    async with FakeMediaServer("jellyfin") as server:

        def watching(position_s: float, paused: bool = False) -> list[dict[str, Any]]:
            return [
                session(
                    server_id=server.server_id,
                    session_id=SESSION,
                    user_id=USER,
                    item=item,
                    position_s=position_s,
                    paused=paused,
                )
            ]

        first = MediaServerSocket("jellyfin", server.url, server.api_key, state, sink, clock=clock)
        async with running(first):
            await subscribed(server, first)
            await push(server, first, watching(0))
        assert sink.kinds == ["play"]
        assert json.loads(state.read_text())["outbox"] == []

        clock.at(240)  # the ingestor restarts: a new client, a new tracker, the same file
        server.sessions = watching(240)
        second = MediaServerSocket("jellyfin", server.url, server.api_key, state, sink, clock=clock)
        async with running(second):
            await subscribed(server, second, count=2)
            clock.at(250)
            await push(server, second, watching(250, paused=True))
            clock.at(400)
            await push(server, second, [])

    assert sink.kinds == ["play", "pause", "stop"]
    assert len({e.session_key for e in sink.events}) == 1
    assert {e.started_at for e in sink.events} == {T0}
    assert rows(projection, "SELECT count(*), max(paused_seconds) FROM playback_events") == [
        (1, 150)
    ]


async def test_emby_flavour_uses_embywebsocket_and_numeric_item_ids(
    tmp_path: Path, sink: RecordingSink, projection: Projection
) -> None:
    clock = ManualClock()
    async with FakeMediaServer("emby") as server:

        def watching(position_s: float) -> list[dict[str, Any]]:
            return [
                session(
                    server_id=server.server_id,
                    session_id="8f14e45fceea167a5a36dedd4bea2543",
                    user_id=USER,
                    item=movie("208431", name="Ronin", minutes=122, year=1998),
                    position_s=position_s,
                    client="Emby Web",
                    device_name="Firefox",
                    play_method="DirectStream",
                    emby=True,
                )
            ]

        socket = MediaServerSocket(
            "emby", server.url, server.api_key, tmp_path / "emby.json", sink, clock=clock
        )
        async with running(socket):
            await subscribed(server, socket)
            assert server.connections[0].path == "/embywebsocket"
            assert server.connections[0].subscriptions == ["0,1500"]
            for second in (0, 5, 10):
                clock.at(second)
                await push(server, socket, watching(second))
            clock.at(3600)
            await push(server, socket, [])

    assert sink.kinds == ["play", "stop"]
    assert {(e.source, e.rating_key, e.transcode_decision) for e in sink.events} == {
        ("emby", "208431", "direct stream")
    }
    assert rows(projection, "SELECT source, rating_key, title, state FROM playback_events") == [
        ("emby", "208431", "Ronin", "stopped")
    ]


async def test_keepalives_hold_the_socket_open_and_a_silent_socket_is_reopened(
    tmp_path: Path, sink: RecordingSink
) -> None:
    async with FakeMediaServer("jellyfin") as server:
        socket = MediaServerSocket(
            "jellyfin",
            server.url,
            server.api_key,
            tmp_path / "state.json",
            sink,
            keepalive_interval=0.1,
            read_timeout=0.5,
        )
        async with running(socket):
            await subscribed(server, socket)
            first = server.connections[0]
            # 8 answered KeepAlives span longer than the read timeout: the socket stays
            await eventually(lambda: first.keepalives >= 8, what="periodic KeepAlives")
            assert socket.connections == 1 and not first.ws.closed
            server.answer_keepalive = False
            await eventually(lambda: socket.connections == 2, what="a reconnect")
            assert "no message in 0.5s" in (socket.health.last_error or "")
            assert len(server.connections) == 2


@pytest.mark.parametrize(
    ("flavour", "name", "variable", "reject_socket"),
    [
        ("jellyfin", "jellyfin", "JELLYFIN_API_KEY", None),
        ("emby", "emby_2", "EMBY_API_KEY_2", None),
        ("jellyfin", "jellyfin", "JELLYFIN_API_KEY", 401),
        ("emby", "emby", "EMBY_API_KEY", 403),
    ],
)
async def test_a_rejected_api_key_is_reported_by_name_and_the_breaker_stops_retrying(
    tmp_path: Path,
    sink: RecordingSink,
    flavour: str,
    name: str,
    variable: str,
    reject_socket: int | None,
) -> None:
    async with FakeMediaServer(flavour, reject_socket=reject_socket) as server:
        key = server.api_key if reject_socket is not None else "not-the-key"
        socket = MediaServerSocket(
            flavour,
            server.url,
            key,
            tmp_path / "state.json",
            sink,
            name=name,
            backoff=Backoff(0.01, 0.05),
            breaker=CircuitBreaker(threshold=2, reset_timeout=60),
        )
        async with running(socket):
            await eventually(lambda: "circuit open" in (socket.health.last_error or ""))
            refused = server.rejected
            reported_at = socket.health.last_error_at
            await eventually(lambda: socket.health.last_error_at != reported_at)
            assert server.rejected == refused == 2  # the open breaker calls no more
    assert socket.connections == 0 and server.open_connections == []
    assert sink.events == []


async def test_the_first_rejection_names_the_variable_and_the_server(
    tmp_path: Path, sink: RecordingSink
) -> None:
    async with FakeMediaServer("jellyfin") as server:
        socket = MediaServerSocket(
            "jellyfin", server.url, "not-the-key", tmp_path / "state.json", sink
        )
        async with running(socket):
            await eventually(lambda: socket.health.last_error is not None)
    assert socket.health.last_error == f"JELLYFIN_API_KEY rejected by {server.url} (HTTP 401)"


async def test_a_server_that_is_down_is_retried_until_it_answers(
    tmp_path: Path, sink: RecordingSink
) -> None:
    server = FakeMediaServer("jellyfin")  # its port is chosen, nothing listens yet
    socket = MediaServerSocket(
        "jellyfin",
        server.url,
        server.api_key,
        tmp_path / "state.json",
        sink,
        backoff=Backoff(0.01, 0.05),
        breaker=CircuitBreaker(threshold=1000),
    )
    async with running(socket):
        await eventually(lambda: "cannot connect" in (socket.health.last_error or ""))
        async with server:
            await subscribed(server, socket)
            assert socket.health.last_success is not None


async def test_a_failing_upgrade_is_retried_and_reported_without_the_key(
    tmp_path: Path, sink: RecordingSink
) -> None:
    async with FakeMediaServer("jellyfin", reject_socket=500) as server:
        socket = MediaServerSocket(
            "jellyfin",
            server.url,
            server.api_key,
            tmp_path / "state.json",
            sink,
            backoff=Backoff(0.01, 0.05),
        )
        async with running(socket):
            await eventually(lambda: server.rejected >= 2, what="a retry")
    error = socket.health.last_error or ""
    assert error.startswith(f"cannot connect to {server.url}: WSServerHandshakeError: 500")
    assert server.api_key not in error and "api_key=***" in error


async def test_malformed_frames_are_reported_and_the_stream_goes_on(
    tmp_path: Path, sink: RecordingSink, projection: Projection
) -> None:
    clock = ManualClock()
    async with FakeMediaServer("jellyfin") as server:
        playing = session(
            server_id=server.server_id, session_id=SESSION, user_id=USER, item=movie()
        )
        socket = MediaServerSocket(
            "jellyfin", server.url, server.api_key, tmp_path / "state.json", sink, clock=clock
        )
        async with running(socket):
            await subscribed(server, socket)
            await push(server, socket, [playing])

            await server.send("this is not json", subscribed=True)
            await eventually(lambda: "not JSON" in (socket.health.last_error or ""))
            await server.send({"MessageType": "Sessions", "Data": "oops"}, subscribed=True)
            await eventually(lambda: "without a list" in (socket.health.last_error or ""))
            broken = json.loads(json.dumps(playing))
            del broken["NowPlayingItem"]["Id"]
            clock.at(60)
            await push(server, socket, [broken])  # unreadable: neither stopped nor replayed
            assert "NowPlayingItem has no Id" in (socket.health.last_error or "")

            clock.at(120)
            await push(server, socket, [])
            assert socket.connections == 1
    assert sink.kinds == ["play", "stop"]
    assert rows(projection, "SELECT state FROM playback_events") == [("stopped",)]


# ---------------------------------------------------------------------------------------
# the webhook receiver


@contextlib.asynccontextmanager
async def webhook_server(webhook: JellyfinWebhook) -> AsyncIterator[str]:
    app = web.Application()
    webhook.add_routes(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/webhooks/jellyfin"))
    finally:
        await server.close()


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any] | str | bytes, **kw: Any
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body) if isinstance(body, dict) else body
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    async with http.post(url, data=data, headers=headers, **kw) as response:
        return response.status, await response.json()


async def test_webhook_notifications_make_one_playback_with_its_pause(
    tmp_path: Path, sink: RecordingSink, projection: Projection
) -> None:
    clock = ManualClock()
    tracker = PlaybackTracker("jellyfin", tmp_path / "jellyfin.json", sink)
    webhook = JellyfinWebhook(tracker, token="s3cret", clock=clock)
    server_id, item = uuid.uuid4().hex, uuid.uuid4().hex
    ids = {"server_id": server_id, "session_id": SESSION, "user_id": USER, "item_id": item}
    title = 'Heat "Director\'s Cut"'
    async with webhook_server(webhook) as url, aiohttp.ClientSession() as http:
        url += "?token=s3cret"
        steps = [
            (0, notification("PlaybackStart", **ids, name=title)),
            (10, notification("PlaybackProgress", **ids, position_s=10, name=title)),
            (600, notification("PlaybackProgress", **ids, position_s=600, paused=True)),
            (610, notification("PlaybackProgress", **ids, position_s=600, paused=True)),
            (900, notification("PlaybackProgress", **ids, position_s=600)),
            (1500, notification("PlaybackStop", **ids, position_s=1200)),
            (1501, notification("PlaybackStop", **ids, position_s=1200)),  # again
        ]
        answers = []
        for second, body in steps:
            clock.at(second)
            answers.append(await post(http, url, body))
    assert answers == [(200, {"events": n}) for n in (1, 0, 1, 0, 1, 1, 0)]
    assert sink.kinds == ["play", "pause", "resume", "stop"]
    assert sink.events[0].title == title and sink.events[0].video_resolution == "4k"
    assert sink.events[-1].position_ms == 1_200_000
    assert rows(projection, PLAYBACK_SQL) == [
        (
            "jellyfin",
            server_id,
            USER,
            item,
            DEVICE,
            T0,
            T0 + timedelta(seconds=1500),
            "stopped",
            300,
            1200,
        )
    ]
    assert webhook.health.events_published == 4 and webhook.health.server_id == server_id


async def test_webhook_refuses_bad_input_with_a_reason_and_keeps_going(
    tmp_path: Path, sink: RecordingSink, projection: Projection
) -> None:
    tracker = PlaybackTracker("jellyfin", tmp_path / "jellyfin.json", sink)
    webhook = JellyfinWebhook(tracker, token="s3cret", max_body=64 * 1024, clock=ManualClock())
    ids = {
        "server_id": uuid.uuid4().hex,
        "session_id": SESSION,
        "user_id": USER,
        "item_id": uuid.uuid4().hex,
    }
    no_item = notification("PlaybackStart", **ids)
    del no_item["ItemId"]
    odd_pause = notification("PlaybackProgress", **ids)
    odd_pause["IsPaused"] = "yes"
    async with webhook_server(webhook) as base, aiohttp.ClientSession() as http:
        url = base + "?token=s3cret"
        start = notification("PlaybackStart", **ids)
        assert await post(http, base, start) == (
            401,
            {"error": "missing or wrong token (JELLYFIN_WEBHOOK_TOKEN)"},
        )
        assert await post(http, base + "?token=nope", start) == (
            401,
            {"error": "missing or wrong token (JELLYFIN_WEBHOOK_TOKEN)"},
        )
        status, answer = await post(http, url, "{not json")
        assert status == 400 and answer["error"].startswith("body is not JSON")
        assert await post(http, url, "[1, 2]") == (
            400,
            {"error": "body is a JSON list, not an object"},
        )
        assert await post(http, url, "") == (400, {"error": "empty body"})
        assert await post(http, url, {"Name": "x"}) == (400, {"error": "no NotificationType"})
        assert await post(http, url, no_item) == (
            400,
            {"error": "PlaybackStart without ItemId"},
        )
        assert await post(http, url, odd_pause) == (
            400,
            {"error": "IsPaused must be true or false, got 'yes'"},
        )
        assert await post(http, url, b"\xff\xfe{}") == (400, {"error": "body is not UTF-8 text"})
        # valid JSON text whose title is an unpaired surrogate (found by bench/fuzz.py: it was
        # a 503 "will be retried" for a body that can never be stored)
        lone = json.dumps({**start, "Name": "Pilot \udb4b"}).encode()
        status, answer = await post(http, url, lone)
        assert status == 400 and "lone UTF-16 surrogate" in answer["error"]
        huge = {**start, "Overview": "x" * 70_000}
        assert await post(http, url, huge) == (413, {"error": "body larger than 65536 bytes"})
        assert await post(http, url, {**start, "NotificationType": "ItemAdded"}) == (
            200,
            {"ignored": "NotificationType ItemAdded is not a playback notification"},
        )
        assert sink.events == []
        async with http.post(url, json=start) as response:  # application/json works too
            assert (response.status, await response.json()) == (200, {"events": 1})
    assert sink.kinds == ["play"]
    assert rows(projection, "SELECT count(*) FROM playback_events") == [(1,)]


async def test_webhook_answers_503_while_the_store_fails_and_delivers_later(
    tmp_path: Path,
) -> None:
    failing = {"on": True}

    def fault(_: Sequence[Any]) -> None:
        if failing["on"]:
            raise OSError("disk full")

    projection = Projection(tmp_path / "analytics.duckdb", fault=fault)
    try:
        sink = RecordingSink(DirectSink(Pipeline(projection, DedupIndex())))
        clock = ManualClock()
        state = tmp_path / "jellyfin.json"
        webhook = JellyfinWebhook(PlaybackTracker("jellyfin", state, sink), clock=clock)
        ids = {
            "server_id": uuid.uuid4().hex,
            "session_id": SESSION,
            "user_id": USER,
            "item_id": uuid.uuid4().hex,
        }
        async with webhook_server(webhook) as url, aiohttp.ClientSession() as http:
            status, answer = await post(http, url, notification("PlaybackStart", **ids))
            assert status == 503 and "disk full" in answer["error"]
            assert len(StateFile(state).load()["outbox"]) == 1  # kept, not lost
            failing["on"] = False
            clock.at(300)
            stop = notification("PlaybackStop", **ids, position_s=300)
            assert await post(http, url, stop) == (200, {"events": 2})
        assert sink.kinds == ["play", "stop"]
        assert StateFile(state).load()["outbox"] == []
        assert rows(projection, "SELECT state, started_at FROM playback_events") == [
            ("stopped", T0)
        ]
    finally:
        projection.close()


async def test_webhook_and_socket_of_one_server_make_one_playback(
    tmp_path: Path, sink: RecordingSink, projection: Projection
) -> None:
    clock = ManualClock()
    tracker = PlaybackTracker("jellyfin", tmp_path / "jellyfin.json", sink)
    webhook = JellyfinWebhook(tracker, clock=clock)
    item = movie()
    async with FakeMediaServer("jellyfin") as server:
        socket = MediaServerSocket(
            "jellyfin", server.url, server.api_key, tracker=tracker, clock=clock
        )
        ids = {
            "server_id": server.server_id,
            "session_id": SESSION,
            "user_id": USER,
            "item_id": item["Id"],
        }

        def watching(position_s: float, paused: bool = False) -> list[dict[str, Any]]:
            return [
                session(
                    server_id=server.server_id,
                    session_id=SESSION,
                    user_id=USER,
                    item=item,
                    position_s=position_s,
                    paused=paused,
                )
            ]

        async with (
            running(socket),
            webhook_server(webhook) as url,
            aiohttp.ClientSession() as http,
        ):
            await subscribed(server, socket)
            assert await post(http, url, notification("PlaybackStart", **ids)) == (
                200,
                {"events": 1},
            )
            clock.at(1)
            await push(server, socket, watching(1))
            clock.at(600)
            await push(server, socket, watching(599, paused=True))
            paused = notification("PlaybackProgress", **ids, position_s=599, paused=True)
            clock.at(601)
            assert await post(http, url, paused) == (200, {"events": 0})
            clock.at(900)
            await push(server, socket, [])
            clock.at(901)
            stop = notification("PlaybackStop", **ids, position_s=599)
            assert await post(http, url, stop) == (200, {"events": 0})

    assert sink.kinds == ["play", "pause", "stop"]
    assert len({e.session_key for e in sink.events}) == 1
    assert rows(projection, "SELECT count(*), max(paused_seconds) FROM playback_events") == [
        (1, 300)
    ]


# found by tests/fuzz: json.loads raises RecursionError on deep nesting and a plain ValueError
# for an integer past Python's 4,300-digit limit, neither a JSONDecodeError
UNREADABLE_JSON = {
    "deeply_nested": '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",
    "integer_past_4300_digits": '{"a":' + "7" * 5000 + "}",
}


@pytest.mark.parametrize("case", sorted(UNREADABLE_JSON))
async def test_webhook_refuses_json_python_cannot_read_with_a_400(
    case: str, tmp_path: Path, sink: RecordingSink
) -> None:
    tracker = PlaybackTracker("jellyfin", tmp_path / "jellyfin.json", sink)
    webhook = JellyfinWebhook(tracker, clock=ManualClock())
    ids = {"server_id": uuid.uuid4().hex, "session_id": SESSION, "user_id": USER}
    async with webhook_server(webhook) as url, aiohttp.ClientSession() as http:
        status, answer = await post(http, url, UNREADABLE_JSON[case])
        assert status == 400 and answer["error"].startswith("body is")
        start = notification("PlaybackStart", item_id=uuid.uuid4().hex, **ids)
        assert await post(http, url, start) == (200, {"events": 1})
    assert sink.kinds == ["play"]


@pytest.mark.parametrize("case", sorted(UNREADABLE_JSON))
async def test_a_frame_python_cannot_read_is_skipped_without_dropping_the_socket(
    case: str, tmp_path: Path, sink: RecordingSink
) -> None:
    clock = ManualClock()
    async with FakeMediaServer("jellyfin") as server:
        playing = session(
            server_id=server.server_id, session_id=SESSION, user_id=USER, item=movie()
        )
        socket = MediaServerSocket(
            "jellyfin", server.url, server.api_key, tmp_path / "state.json", sink, clock=clock
        )
        async with running(socket):
            await subscribed(server, socket)
            await server.send(UNREADABLE_JSON[case], subscribed=True)
            await eventually(lambda: "skipped" in (socket.health.last_error or ""))
            await push(server, socket, [playing])
            assert socket.connections == 1  # the same socket read on
    assert sink.kinds == ["play"]


# found by tests/fuzz: NaN and Infinity are JSON to Python's json module, and int() of them
# raised ValueError/OverflowError, which the webhook answered 500
@pytest.mark.parametrize("ticks", ["NaN", "Infinity", "-Infinity", "1e300", "9" * 30])
async def test_webhook_refuses_ticks_that_are_no_64_bit_integer_with_a_400(
    ticks: str, tmp_path: Path, sink: RecordingSink
) -> None:
    tracker = PlaybackTracker("jellyfin", tmp_path / "jellyfin.json", sink)
    webhook = JellyfinWebhook(tracker, clock=ManualClock())
    ids = {"server_id": uuid.uuid4().hex, "session_id": SESSION, "user_id": USER}
    start = notification("PlaybackStart", item_id=uuid.uuid4().hex, **ids)
    body = json.dumps({**start, "PlaybackPositionTicks": 0}).replace(
        '"PlaybackPositionTicks": 0', f'"PlaybackPositionTicks": {ticks}'
    )
    async with webhook_server(webhook) as url, aiohttp.ClientSession() as http:
        status, answer = await post(http, url, body)
        assert status == 400 and "ticks" in answer["error"], answer
        assert await post(http, url, start) == (200, {"events": 1})
    assert sink.kinds == ["play"]


TOO_LARGE = re.compile(
    r"Playback(Start|Progress|Stop) would make a (play|pause|stop) event of ([\d,]+) bytes "
    r"encoded, over the limit of 524,288 bytes \(an upstream field is that large\)"
)


async def test_webhook_refuses_a_notification_making_an_event_too_large_with_413_and_no_trace(
    tmp_path: Path, sink: RecordingSink, projection: Projection
) -> None:
    # a body under max_body (1 MiB) whose event is over MAX_EVENT_BYTES (512 KiB, NATS): it
    # was logged and dropped by the tracker, the state changed, and the answer was 200
    clock = ManualClock()
    state = tmp_path / "jellyfin.json"
    tracker = PlaybackTracker("jellyfin", state, sink)
    webhook = JellyfinWebhook(tracker, clock=clock)
    server_id, item = uuid.uuid4().hex, uuid.uuid4().hex
    ids = {"server_id": server_id, "session_id": SESSION, "user_id": USER, "item_id": item}
    big = "x" * 600_000

    def progress(position_s: float, **kw: Any) -> dict[str, Any]:
        return notification("PlaybackProgress", **ids, position_s=position_s, **kw)

    def stop(position_s: float) -> dict[str, Any]:
        return notification("PlaybackStop", **ids, position_s=position_s)

    steps = [  # (second, notification, answer); a refused one must change nothing
        (0, notification("PlaybackStart", **ids, name=big), 413),
        (10, notification("PlaybackStart", **ids), {"events": 1}),
        (20, {**progress(10, paused=True), "Overview": big}, 413),
        (30, progress(20, name=big), 413),  # would make no event, but stores the name
        (100, progress(90, paused=True), {"events": 1}),
        (400, progress(90), {"events": 1}),
        (500, {**stop(190), "Overview": big}, 413),
        (600, stop(290), {"events": 1}),
    ]
    async with webhook_server(webhook) as url, aiohttp.ClientSession() as http:
        for second, body, expected in steps:
            clock.at(second)
            emitted = len(sink.events)
            status, answer = await post(http, url, body)
            if expected == 413:
                assert status == 413, (second, answer)
                match = TOO_LARGE.fullmatch(answer["error"])
                assert match and int(match[3].replace(",", "")) > 600_000, answer
                assert len(sink.events) == emitted  # no event of it
            else:
                assert (status, answer) == (200, expected), second
            if second == 0:
                assert tracker.machine.open_playbacks(server_id) == {}
                assert not state.exists()  # nothing saved, nothing in the outbox
    assert sink.kinds == ["play", "pause", "resume", "stop"]
    assert {e.session_key for e in sink.events} == {f"{SESSION}:{item}:{T0_MS + 10_000}"}
    assert all(e.title == "Heat" and len(e.raw_payload or "") < 10_000 for e in sink.events)
    assert rows(projection, PLAYBACK_SQL) == [
        (
            "jellyfin",
            server_id,
            USER,
            item,
            DEVICE,
            T0 + timedelta(seconds=10),
            T0 + timedelta(seconds=600),
            "stopped",
            300,
            290,
        )
    ]
    assert webhook.health.events_published == 4
    assert "HTTP 413" in (webhook.health.last_error or "")


async def test_an_event_too_large_to_store_is_dropped_not_kept_blocking_the_outbox(
    tmp_path: Path, sink: RecordingSink
) -> None:
    # found by tests/fuzz: a session with a ~1 MiB field made an event NATS refuses (over its
    # max_payload); kept in the outbox for a retry, it blocked every later event for good
    clock = ManualClock()
    async with FakeMediaServer("jellyfin") as server:
        huge = session(
            server_id=server.server_id,
            session_id=uuid.uuid4().hex,
            user_id=USER,
            item=movie(name="x" * 700_000),
        )
        playing = session(
            server_id=server.server_id, session_id=SESSION, user_id=USER, item=movie()
        )
        socket = MediaServerSocket(
            "jellyfin", server.url, server.api_key, tmp_path / "state.json", sink, clock=clock
        )
        async with running(socket):
            await subscribed(server, socket)
            await push(server, socket, [huge])
            assert socket.tracker.pending == 0
            # no one to answer: said in health and the log, and the session kept as it was
            # (not opened: its later reports are not taken as continuing a playback)
            assert "kept as it was: a play event of" in (socket.health.last_error or "")
            assert socket.tracker.machine.open_playbacks(server.server_id) == {}
            await push(server, socket, [playing])
    assert [(e.event_type.value, e.session_key == huge["Id"]) for e in sink.events][-1:] == [
        ("play", False)
    ]
    assert all(len(e.title) < 1000 for e in sink.events)
