"""The ingestor's one HTTP server (aiohttp).

Routes: ``GET /healthz`` (the process is up), ``GET /readyz`` (ready to do its job: see
:func:`add_health_routes`), ``GET /metrics`` (Prometheus), ``GET /status``, ``POST /query``
(read-only SQL on the live projection), ``GET /ws/events`` (the live feed over WebSocket), and
the source webhooks, which add their own routes.

``/query`` and ``/ws/events`` are never open to the world by default: without their token
(``QUERY_TOKEN``, ``BROADCAST_TOKEN``) they answer loopback clients only; with it, every
request must carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, web

if TYPE_CHECKING:
    from ingestor.broadcast import BroadcastHub, Subscription
    from ingestor.metrics import Readiness

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "::1")

StatusFn = Callable[[], Awaitable[dict[str, Any]]]


def build_app(status: StatusFn) -> web.Application:
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def status_view(_: web.Request) -> web.Response:
        return web.json_response(await status())

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status_view)
    return app


async def start_http(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving; raise a clear OSError when the address is taken."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(
            f"cannot listen on {host}:{port} (HTTP_HOST/HTTP_PORT): {exc.strerror}"
        ) from exc
    log.info("http listening on %s:%s", host, port)
    return runner


QueryFn = Callable[[str], Awaitable[tuple[Any, int]]]
ARROW_STREAM = "application/vnd.apache.arrow.stream"
MAX_QUERY_BYTES = 64 * 1024


def add_query_route(app: web.Application, run_query: QueryFn, token: str | None) -> None:
    """``POST /query``: one read-only SELECT against the live projection, answered as an Arrow
    IPC stream with the stream sequence it is consistent as of in ``X-Checkpoint-Seq``.

    Without ``QUERY_TOKEN`` only loopback clients may query; with it, every request must carry
    ``Authorization: Bearer <token>`` (SQL can read files, so this is never open by default).
    """

    async def query(request: web.Request) -> web.StreamResponse:
        refused = authorize(request, token, "QUERY_TOKEN", "queries")
        if refused is not None:
            return refused
        if (request.content_length or 0) > MAX_QUERY_BYTES:
            return web.Response(status=413, text=f"a query is at most {MAX_QUERY_BYTES} bytes")
        sql = (await request.text()).strip()
        try:
            table, seq = await run_query(sql)
        except ValueError as exc:  # not a single SELECT, or DuckDB refused it
            return web.Response(status=400, text=str(exc))
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return web.Response(
            body=sink.getvalue().to_pybytes(),
            content_type=ARROW_STREAM,
            headers={"X-Checkpoint-Seq": str(seq)},
        )

    app.router.add_post("/query", query)


def authorize(
    request: web.Request,
    token: str | None,
    variable: str,
    what: str,
    *,
    query_param: bool = False,
) -> web.Response | None:
    """None when ``request`` may proceed, else the refusal to send.

    Without a token only loopback clients are let in (403 for others); with one, the request
    must carry ``Authorization: Bearer <token>`` (or, with ``query_param``, ``?token=``, which
    browsers' WebSocket API needs since it cannot set headers), else 401.
    """
    if token is None:
        if request.remote in LOOPBACK:
            return None
        return web.Response(status=403, text=f"set {variable} to allow {what} from afar")
    given = request.headers.get("Authorization", "")
    offered = [given.removeprefix("Bearer ")] if given.startswith("Bearer ") else []
    if query_param and "token" in request.query:
        offered.append(request.query["token"])
    if any(hmac.compare_digest(o.encode(), token.encode()) for o in offered):
        return None
    return web.Response(status=401, text=f"missing or wrong bearer token ({variable})")


# --------------------------------------------------------------------------- health, metrics

ReadinessFn = Callable[[], Awaitable["Readiness"]]
MetricsFn = Callable[[], Awaitable[bytes]]


def add_health_routes(
    app: web.Application, readiness: ReadinessFn, metrics: MetricsFn, content_type: str
) -> None:
    """``GET /readyz``: 200 with every check when all pass, 503 naming the failing ones
    (``failing``) otherwise; a check that does not apply in the mode says "not used".
    ``GET /metrics``: the Prometheus text format (``content_type``).

    ``/healthz`` (from :func:`build_app`) only says the process answers; an orchestrator
    restarts on ``/healthz`` and routes traffic or waits on ``/readyz``.
    """

    async def readyz(_: web.Request) -> web.Response:
        result = await readiness()
        return web.json_response(result.as_dict(), status=200 if result.ready else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=await metrics(), headers={"Content-Type": content_type})

    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)


# --------------------------------------------------------------------------- live feed

HEARTBEAT_S = 30.0  # ping period; a client that does not answer within half of it is closed
CLOSE_GRACE_S = 5.0  # how long a closing client may take to read what is left and the close
# The kernel's send buffer per feed client. Linux grows a socket's buffer up to 4 MB on its
# own, which would let a client that stopped reading sit on megabytes (thousands of
# messages) before its queue even starts to fill; capped, the queue limit is what decides
# when a client is too slow. 256 KiB (the kernel doubles it) covers 100 ms at 20 Mbit/s.
SEND_BUFFER_BYTES = 256 * 1024


def add_broadcast_route(
    app: web.Application,
    hub: BroadcastHub,
    token: str | None,
    *,
    close_grace: float = CLOSE_GRACE_S,
    heartbeat: float = HEARTBEAT_S,
) -> None:
    """``GET /ws/events``: the live feed (see ``ingestor/broadcast.py``) over a WebSocket.

    Query parameters ``server``, ``user``, ``event_type`` filter (comma separated; unknown
    event types get 400 before the upgrade), ``token`` authenticates (or
    ``Authorization: Bearer``; see :func:`authorize`: 401/403 before the upgrade).

    Each connection gets a sender task that drains its subscription's queue. When the hub
    ends the subscription (the client fell too far behind, or the ingestor stops), the
    connection is closed with the hub's code and reason; a client that has not taken the
    close within ``close_grace`` seconds is cut off, so a stalled peer holds nothing for long.
    On shutdown every client gets 1001 "ingestor stopping".
    """
    from ingestor.broadcast import Filters

    closing: set[asyncio.Task[None]] = set()

    async def events(request: web.Request) -> web.StreamResponse:
        refused = authorize(request, token, "BROADCAST_TOKEN", "the live feed", query_param=True)
        if refused is not None:
            return refused
        try:
            filters = Filters.parse(request.query)
        except ValueError as exc:
            return web.Response(status=400, text=str(exc))
        ws = web.WebSocketResponse(
            compress=False,  # per-client compression would cost CPU per client per message
            heartbeat=heartbeat,
            max_msg_size=64 * 1024,  # clients have nothing to say
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="GET /ws/events needs a WebSocket upgrade")
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        _cap_send_buffer(transport)
        closer: asyncio.Task[None] | None = None

        def ended(code: int, reason: str) -> None:  # called by the hub, synchronously
            nonlocal closer
            closer = asyncio.create_task(_close(transport, ws, code, reason, close_grace))
            closing.add(closer)
            closer.add_done_callback(closing.discard)

        sub = hub.subscribe(filters, ended)
        sender = asyncio.create_task(_send(ws, sub))
        try:
            async for _ in ws:  # pings are answered by aiohttp; anything else is ignored
                pass
        finally:
            hub.unsubscribe(sub)
            if closer is not None:
                await asyncio.shield(closer)
            # only now: a sender waiting for the peer to read shares aiohttp's drain future
            # with the closer, and cancelling it would cancel the closer's wait too
            sender.cancel()
        return ws

    async def on_shutdown(_: web.Application) -> None:
        hub.close_all(WSCloseCode.GOING_AWAY, "ingestor stopping")
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    app.router.add_get("/ws/events", events)
    app.on_shutdown.append(on_shutdown)


def _cap_send_buffer(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


async def _send(ws: web.WebSocketResponse, sub: Subscription) -> None:
    """Drain one subscription into its socket, in order, until it ends or the peer leaves."""
    try:
        while (message := await sub.next()) is not None:
            await ws.send_str(message)
    except (ConnectionError, RuntimeError):  # the peer went away mid-send
        pass


async def _close(
    transport: asyncio.BaseTransport,
    ws: web.WebSocketResponse,
    code: int,
    reason: str,
    grace: float,
) -> None:
    """Close with ``code`` and ``reason``; cut a peer off that does not take it in time.

    The sender is left alone: its subscription has ended, so it stops at its next message,
    and if it is waiting for the peer to read, it wakes when the close does.
    """
    try:
        await asyncio.wait_for(ws.close(code=code, message=reason.encode()), grace)
    except (TimeoutError, ConnectionError, RuntimeError):
        _abort_if_stuck(transport)  # it stopped reading: free what we buffered for it
        return
    # closed: the transport flushes what is left and lets go, unless the peer stalls again
    asyncio.get_running_loop().call_later(grace, _abort_if_stuck, transport)


def _abort_if_stuck(transport: asyncio.BaseTransport) -> None:
    """Abort a transport that is still open, or closing with data its peer never took.

    With a zero linger the kernel resets the connection and drops what its send buffer still
    holds for the peer, instead of keeping it (and the socket) until TCP gives up.
    """
    assert isinstance(transport, asyncio.WriteTransport)
    if not transport.is_closing() or transport.get_write_buffer_size() > 0:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
