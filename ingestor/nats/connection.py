"""Connect to NATS, starting the embedded server when none answers and that is allowed."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from ingestor.config import Settings
from ingestor.errors import IngestorError
from ingestor.nats.server import EmbeddedServer, port_answers
from ingestor.nats.streams import ensure_streams

log = logging.getLogger(__name__)


@dataclass
class NatsHandle:
    """An open connection, its JetStream context, and the embedded server if we started one."""

    nc: Client
    js: JetStreamContext
    server: EmbeddedServer | None = None
    _closed: bool = field(default=False, repr=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.nc.drain()
        except Exception:
            await self.nc.close()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)


async def _connect(servers: list[str], *, reconnect: bool) -> Client:
    nc: Client | None = None

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def on_disconnect() -> None:
        if nc is not None and not (nc.is_closed or nc.is_draining):
            log.warning("nats: disconnected")

    async def on_reconnect() -> None:
        log.info("nats: reconnected")

    nc = await nats.connect(
        servers=servers,
        connect_timeout=2,
        allow_reconnect=reconnect,
        max_reconnect_attempts=-1 if reconnect else 0,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
    )
    return nc


async def connect_reader(url: str, *, connect_timeout: float = 5) -> Client:
    """A client of a running NATS for a long-lived reader (a notebook's event log and its
    verdicts): ``url`` may list several servers, comma separated. It reconnects for as long
    as it lives, and says what happens at debug level only: a notebook shows a failed
    request as one line, never the client's own tracebacks.

    Raises what ``nats.connect`` raises when no server answers now.
    """
    servers = [part.strip() for part in url.split(",") if part.strip()]
    # nats-py retries a first connection as often as a reconnection (forever, here): ask
    # the ports first, so "nobody there" is an answer, not a hang
    reachable = [server for server in servers if _answers(server)]
    if not reachable:
        raise IngestorError(f"no NATS server answers at {url}")

    async def quiet_error(exc: Exception) -> None:
        log.debug("nats (%s): %s", url, exc)

    async def quiet() -> None:
        log.debug("nats (%s): disconnected or reconnected", url)

    return await nats.connect(
        servers=servers,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        error_cb=quiet_error,
        disconnected_cb=quiet,
        reconnected_cb=quiet,
    )


async def open_nats(settings: Settings, *, provision: bool = True) -> NatsHandle:
    """Connect to ``NATS_URL``; with ``NATS_EMBEDDED`` start a server if none answers.

    JetStream is ready when this returns, and with ``provision`` both streams exist.
    """
    servers = settings.nats_servers
    server: EmbeddedServer | None = None
    host, port = settings.embedded_listen()
    if settings.nats_embedded and not port_answers(host, port):
        if settings.nats_replicas > 1:
            raise IngestorError(
                f"NATS_REPLICAS={settings.nats_replicas} needs a NATS cluster, but no server "
                f"answers at {settings.nats_url}, and the embedded server is a single node: "
                "start the cluster, or set NATS_REPLICAS=1"
            )
        server = EmbeddedServer(host, port, settings.nats_store_dir)
        await asyncio.to_thread(server.start)
        servers = [server.url]
    elif not settings.nats_embedded and not any(_answers(url) for url in servers):
        raise IngestorError(
            f"no NATS server answers at {settings.nats_url} and NATS_EMBEDDED=false; "
            "start one or set NATS_EMBEDDED=true"
        )
    try:
        nc = await _connect(servers, reconnect=True)
        js = nc.jetstream(timeout=10)
        await wait_jetstream(js)
        if provision:
            await ensure_streams(js, settings.nats_retention_days, settings.nats_replicas)
    except Exception:
        if server is not None:
            await asyncio.to_thread(server.stop)
        raise
    return NatsHandle(nc=nc, js=js, server=server)


def _answers(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return port_answers(parts.hostname or "127.0.0.1", parts.port or 4222)


async def wait_jetstream(js: JetStreamContext, timeout: float = 15.0) -> None:
    """JetStream answers a little after the port opens; wait for it with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await js.account_info()
            return
        except Exception as exc:
            if loop.time() > deadline:
                raise IngestorError(f"JetStream is not available: {exc}") from exc
            await asyncio.sleep(0.1)
