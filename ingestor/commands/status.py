"""``ingestor status``: the stream, the checkpoint, the lag, the DLQ and the playbacks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

from ingestor.app import collect_status, open_projection
from ingestor.config import Settings
from ingestor.nats.connection import open_nats
from ingestor.nats.server import port_answers


async def status_command(settings: Settings) -> dict[str, Any]:
    """Ask a running ingestor over HTTP; otherwise read the stream and the file directly."""
    url = f"http://{settings.http_host}:{settings.http_port}/status"
    if port_answers(settings.http_host, settings.http_port):
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(url) as response,
            ):
                if response.status == 200:
                    return await response.json()
    handle = await open_nats(settings) if settings.nats_enabled else None
    projection = None
    try:
        if settings.duckdb_path.exists():
            projection = await asyncio.to_thread(
                open_projection, settings.duckdb_path, read_only=True
            )
        return await collect_status(settings, handle, projection, running=False)
    finally:
        if projection is not None:
            projection.close()
        if handle is not None:
            await handle.close()


def format_status(status: dict[str, Any]) -> str:
    width = max(len(k) for k in status)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in status.items())
