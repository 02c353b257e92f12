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
