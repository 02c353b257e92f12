"""The ingestor's one HTTP server (aiohttp): health and status now, source webhooks later."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

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
        if token is not None:
            if request.headers.get("Authorization", "") != f"Bearer {token}":
                return web.Response(status=401, text="missing or wrong bearer token (QUERY_TOKEN)")
        elif request.remote not in ("127.0.0.1", "::1"):
            return web.Response(status=403, text="set QUERY_TOKEN to allow queries from afar")
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
