"""The live feed end to end: ``ingestor run`` as a real process, events published to the real
stream, real WebSocket clients on loopback (aiohttp, and the workbench's ``subscribe``)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from ingestor.broadcast import CLOSE_TOO_SLOW, EventMessage, decode_message
from ingestor.config import Settings
from ingestor.nats.connection import open_nats
from ingestor.nats.publisher import Publisher
from ingestor.nats.server import EmbeddedServer
from ingestor.simulation import SimulationConfig, simulate
from tests.conftest import make_env
from tests.integration.test_kill9 import start, status
from workbench.live import LiveProjection
from workbench.live_events import COLUMNS, LiveTable, subscribe

pytestmark = pytest.mark.integration

ROWS_SQL = (
    "SELECT seq, event_id, dedup_action, server_id, user_id, username, event_type"
    " FROM media_events_detail ORDER BY seq"
)


async def until(condition: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    """Wait for ``condition`` with a deadline, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def live_status(env: dict[str, str]) -> dict[str, Any] | None:
    return await asyncio.to_thread(status, env)


@asynccontextmanager
async def ingestor_run(env: dict[str, str], log: Path) -> AsyncIterator[str]:
    """``ingestor run`` as a process; yields its base URL; SIGTERM must stop it with 0."""
    proc = start(env, log)
    try:
        await until(lambda: proc.poll() is not None or status(env) is not None, 60, "the ingestor")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield f"http://127.0.0.1:{env['HTTP_PORT']}"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, log.read_text()[-3000:]


async def publish(env: dict[str, str], config: SimulationConfig) -> int:
    """Publish a simulated feed; the stream's last sequence."""
    handle = await open_nats(Settings.from_env(env))
    try:
        await Publisher(handle.nc).publish_many(simulate(config).events)
        return (await handle.js.stream_info("MEDIA_EVENTS")).state.last_seq
    finally:
        await handle.close()


async def caught_up(env: dict[str, str], last: int) -> bool:
    s = await live_status(env)
    return s is not None and s["checkpoint_seq"] == last


async def projected_rows(base: str) -> list[dict[str, Any]]:
    """What the projection holds, asked of the running ingestor (POST /query)."""
    result = await asyncio.to_thread(LiveProjection(base).sql, ROWS_SQL)
    return result.frame.to_dicts()


class Collector:
    """Reads one WebSocket until it closes, keeping every message and the close frame."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.close: tuple[int, str] | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            frame = await self.ws.receive()
            if frame.type is aiohttp.WSMsgType.TEXT:
                self.messages.append(msgspec.json.decode(frame.data))
            else:
                if frame.type is aiohttp.WSMsgType.CLOSE:
                    self.close = (frame.data, frame.extra)
                return

    @property
    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages]


def feed_env(tmp_path: Path, nats_server: EmbeddedServer, **extra: str) -> dict[str, str]:
    return make_env(tmp_path / "data", nats_server.url, NATS_EMBEDDED="false", **extra)


async def test_published_events_reach_each_client_in_stream_order_filtered(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    env = feed_env(tmp_path, nats_server)
    config = SimulationConfig(seed=5, users=6, days=2)
    sim = simulate(config)
    user = sim.events[0].username  # filtered by username: matches the events' user_id too
    server = sim.events[-1].server_id
    # the session outlives the ingestor, so the clients see how the ingestor says goodbye
    async with aiohttp.ClientSession() as http, ingestor_run(env, tmp_path / "run.log") as base:
        everything = Collector(await http.ws_connect(f"{base}/ws/events"))
        by_user = Collector(await http.ws_connect(f"{base}/ws/events?user={user}"))
        by_server_type = Collector(
            await http.ws_connect(f"{base}/ws/events?server={server}&event_type=play,stop")
        )
        typed: list = []

        async def follow() -> None:
            async for message in subscribe(base, event_type=["summary"], session=http):
                typed.append(message)

        following = asyncio.create_task(follow())
        table = LiveTable(limit=5, redraw_every=3600)
        tabling = asyncio.create_task(table.follow(base, user=user))
        await until(lambda: _clients(env, 5), 10, "five subscribers")
        last = await publish(env, config)
        await until(lambda: caught_up(env, last), 60, "the checkpoint")
        rows = await projected_rows(base)
        expected = {
            "all": [r["seq"] for r in rows],
            "user": [r["seq"] for r in rows if user in (r["user_id"], r["username"])],
            "server": [
                r["seq"]
                for r in rows
                if r["server_id"] == server and r["event_type"] in ("play", "stop")
            ],
            "summary": [r["seq"] for r in rows if r["event_type"] == "summary"],
        }
        assert all(expected.values()) and len(expected["user"]) < len(rows)
        await until(
            lambda: (
                len(everything.messages) >= len(rows)
                and len(by_user.messages) >= len(expected["user"])
                and len(by_server_type.messages) >= len(expected["server"])
                and len(typed) >= len(expected["summary"])
                and table.received >= len(expected["user"])
            ),
            30,
            "every client to receive its events",
        )
        await asyncio.sleep(0.2)  # nothing more may come (a duplicate would show here)
    # the stream's order, exactly the accepted events (not the drops), per filter
    assert everything.seqs == expected["all"]
    assert by_user.seqs == expected["user"]
    assert by_server_type.seqs == expected["server"]
    assert [m.seq for m in typed] == expected["summary"]
    assert all(isinstance(m, EventMessage) for m in typed)
    by_seq = {r["seq"]: r for r in rows}
    for message in everything.messages:
        row = by_seq[message["seq"]]
        assert message["kind"] == "event"
        assert message["action"] == row["dedup_action"]
        assert message["event"]["event_id"] == row["event_id"]
    assert {m["action"] for m in everything.messages} == {"open", "fold", "link"}
    published = {e.event_id: e for e in sim.events}
    decoded = decode_message(msgspec.json.encode(everything.messages[0]))
    assert decoded.event == published[decoded.event.event_id]
    # stopping says goodbye with 1001, which ends the workbench's iteration without error
    await asyncio.wait_for(everything.task, 10)
    assert everything.close == (1001, "ingestor stopping")
    await asyncio.wait_for(following, 10)
    # the notebook table: the last 5 of that user's events, oldest first, as a polars frame
    await asyncio.wait_for(tabling, 10)
    assert table.frame["seq"].to_list() == expected["user"][-5:]
    assert table.frame.columns == list(COLUMNS)
    last = by_seq[expected["user"][-1]]
    assert table.frame.row(-1, named=True)["event_type"] == last["event_type"]


def _clients(env: dict[str, str], n: int) -> bool:
    s = status(env)
    return s is not None and s["broadcast"]["clients"] == n


def _dropped(env: dict[str, str]) -> int | None:
    s = status(env)
    return s["broadcast"]["dropped_slow"] if s is not None else None


async def test_a_configured_token_is_required_and_bad_filters_are_refused(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    env = feed_env(tmp_path, nats_server, BROADCAST_TOKEN="s3cret")
    async with ingestor_run(env, tmp_path / "run.log") as base, aiohttp.ClientSession() as http:
        for url, headers in (
            (f"{base}/ws/events", {}),
            (f"{base}/ws/events?token=nope", {}),
            (f"{base}/ws/events", {"Authorization": "Bearer nope"}),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, headers=headers)
            assert refused.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as bad:
            await http.ws_connect(f"{base}/ws/events?token=s3cret&event_type=plays")
        assert bad.value.status == 400
        async with http.get(f"{base}/ws/events?token=s3cret") as plain:  # no upgrade asked
            assert plain.status == 400
        by_query = Collector(await http.ws_connect(f"{base}/ws/events?token=s3cret"))
        by_header = Collector(
            await http.ws_connect(f"{base}/ws/events", headers={"Authorization": "Bearer s3cret"})
        )
        await until(lambda: _clients(env, 2), 10, "two subscribers")
        last = await publish(env, SimulationConfig(seed=3, users=2, days=1))
        await until(lambda: caught_up(env, last), 60, "the checkpoint")
        accepted = len(await projected_rows(base))
        await until(
            lambda: len(by_query.messages) == len(by_header.messages) == accepted,
            30,
            "both clients to receive everything",
        )
        with pytest.raises(aiohttp.WSServerHandshakeError) as workbench_refused:
            async for _ in subscribe(base, token="nope", session=http):
                pass
        assert workbench_refused.value.status == 401


def _small_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket whose receive buffer is small, so a client that stops reading stops
    the server's sends after a few kilobytes rather than after the kernel's megabytes."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_a_client_that_stops_reading_is_dropped_and_the_others_miss_nothing(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    # batches of 200: the queue holds 1,000 messages (its floor), the feed ~2,700
    env = feed_env(tmp_path, nats_server, NATS_BATCH_SIZE="200")
    config = SimulationConfig(seed=11, users=20, days=7)
    async with (
        ingestor_run(env, tmp_path / "run.log") as base,
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
        ) as stalled_http,
    ):
        reader = Collector(await http.ws_connect(f"{base}/ws/events"))
        stalled = await stalled_http.ws_connect(f"{base}/ws/events")  # not read (yet)
        await until(lambda: _clients(env, 2), 10, "two subscribers")
        publishing = asyncio.create_task(publish(env, config))
        await until(lambda: _dropped(env) == 1, 60, "the stalled client to be dropped")
        # it reads again (within the close grace): what was sent before the drop, then why
        received: list[int] = []
        while True:
            frame = await asyncio.wait_for(stalled.receive(), 10)
            if frame.type is not aiohttp.WSMsgType.TEXT:
                break
            received.append(msgspec.json.decode(frame.data)["seq"])
        last = await publishing
        await until(lambda: caught_up(env, last), 60, "ingestion to finish regardless")
        s = await live_status(env)
        assert s["broadcast"]["dropped_slow"] == 1 and s["broadcast"]["clients"] == 1
        rows = await projected_rows(base)
        await until(lambda: len(reader.messages) >= len(rows), 30, "the reading client")
    assert reader.seqs == [r["seq"] for r in rows]
    assert frame.type is aiohttp.WSMsgType.CLOSE and frame.data == CLOSE_TOO_SLOW
    assert frame.extra.startswith("too slow: ") and frame.extra.endswith(" messages behind")
    assert received == reader.seqs[: len(received)] and len(received) < len(rows)


async def test_a_client_that_never_reads_again_is_cut_off(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    """Dropped and then silent: the connection does not linger holding what was buffered."""
    env = feed_env(tmp_path, nats_server, NATS_BATCH_SIZE="200")
    async with (
        ingestor_run(env, tmp_path / "run.log") as base,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
        ) as http,
    ):
        stalled = await http.ws_connect(f"{base}/ws/events")
        await until(lambda: _clients(env, 1), 10, "the subscriber")
        publishing = asyncio.create_task(publish(env, SimulationConfig(seed=11, users=20, days=7)))
        await until(lambda: _dropped(env) == 1, 60, "the stalled client to be dropped")
        assert _server_connections(env) >= 1  # dropped, and given the close grace (5 s)
        await until(
            lambda: _server_connections(env) == 0, 20, "the server to cut the stalled client off"
        )
        last = await publishing
        await until(lambda: caught_up(env, last), 60, "the checkpoint")
        # reading now, it finds what its own buffers held and then a reset, not the close
        frame = await asyncio.wait_for(stalled.receive(), 10)
        while frame.type is aiohttp.WSMsgType.TEXT:
            frame = await asyncio.wait_for(stalled.receive(), 10)
        assert frame.type is not aiohttp.WSMsgType.CLOSE, frame


def _server_connections(env: dict[str, str]) -> int:
    """Established TCP connections whose local port is the ingestor's HTTP port (the server's
    ends), from the kernel's table."""
    port = f"{int(env['HTTP_PORT']):04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if local.rsplit(":", 1)[1] == port and state == "01":  # 01: ESTABLISHED
                count += 1
    return count
