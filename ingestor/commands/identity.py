"""``ingestor identity``: merge and unmerge records published to the stream; who is whose now."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import duckdb

from ingestor.app import open_projection
from ingestor.commands import Out
from ingestor.config import Settings
from ingestor.errors import IngestorError
from ingestor.nats.connection import open_nats
from ingestor.nats.server import port_answers
from ingestor.records import IdentityAction, IdentityRecord, encode_record

IDENTITY_LIST_SQL = (
    "SELECT person, server_id, user_id, since_seq, since FROM person_accounts"
    " ORDER BY person, server_id, user_id"
)


async def identity_publish_command(
    settings: Settings,
    action: IdentityAction,
    person: str,
    accounts: Sequence[tuple[str, str]],
    *,
    by: str = "",
    notes: str = "",
    out: Out = print,
) -> int:
    """Publish a merge or unmerge to the stream, for the router to project."""
    if not settings.nats_enabled:
        raise IngestorError(
            "an identity record is a record in the stream, and NATS_ENABLED=false has none: "
            "enable NATS (the projection changes only through the stream)"
        )
    if not settings.event_sourcing:
        raise IngestorError(
            "NATS_EVENT_SOURCING=false (legacy mode): no router projects the stream, so an "
            "identity record would never reach the projection; run in event-sourcing mode"
        )
    try:
        record = IdentityRecord.make(
            action, person, accounts, datetime.now(UTC), by=by, notes=notes
        )
    except ValueError as exc:
        raise IngestorError(str(exc)) from None
    handle = await open_nats(settings)
    try:
        ack = await handle.js.publish(
            record.subject,
            encode_record(record),
            headers={"Nats-Msg-Id": record.record_id},
        )
    finally:
        await handle.close()
    named = ", ".join(f"{a.server_id}/{a.user_id}" for a in record.accounts) or "all accounts"
    stored = "already held" if ack.duplicate else "stored"
    out(
        f"identity {action} of {record.person} ({named}): the stream {stored} it as message "
        f"{ack.seq}; the projection shows it once the ingestor has applied it"
    )
    return 0


async def identity_list_command(
    settings: Settings, *, as_json: bool = False, out: Out = print
) -> int:
    """Who is whose now: asks a running ingestor over HTTP, otherwise reads the file."""
    import json

    import pyarrow as pa

    rows: list[dict[str, Any]] | None = None
    if port_answers(settings.http_host, settings.http_port):
        url = f"http://{settings.http_host}:{settings.http_port}/query"
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.query_token:
            headers["Authorization"] = f"Bearer {settings.query_token}"
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.post(url, data=IDENTITY_LIST_SQL.encode(), headers=headers) as response,
            ):
                if response.status == 200:
                    rows = pa.ipc.open_stream(await response.read()).read_all().to_pylist()
    if rows is None:
        if not settings.duckdb_path.exists():
            raise IngestorError(f"no projection at {settings.duckdb_path} (DUCKDB_PATH)")
        projection = await asyncio.to_thread(open_projection, settings.duckdb_path, read_only=True)
        try:
            try:
                rows = projection.con.sql(IDENTITY_LIST_SQL).to_arrow_table().to_pylist()
            except duckdb.CatalogException:  # a file from before identity records
                rows = []
        finally:
            projection.close()
    for row in rows:
        if as_json:
            out(json.dumps(row, default=str))
        else:
            fields = (row["person"], row["server_id"], row["user_id"], row["since_seq"])
            out("{}\t{}\t{}\tsince seq {}".format(*fields))
    if not rows:
        print("no accounts are merged into a person", file=sys.stderr)
    return 0
