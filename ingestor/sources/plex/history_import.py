"""Import a Plex Media Server's own watch history (``GET /status/sessions/history/all``).

The format (pkkid/python-plexapi @ a8d051f29bbadca28dc9bd4bf50f1fb76d0fb77a:
``plexapi/server.py`` PlexServer.history, ``plexapi/base.py`` PlexHistory and fetchItems;
LukeHagar/plexjs @ 2b38478255ecc955a3afc05dca5e5a95595efcbf,
``docs/sdk/models/operations/getsessionhistoryresponse.md``):

* ``GET /status/sessions/history/all?sort=viewedAt:asc`` with ``X-Plex-Token``; paged with
  the ``X-Plex-Container-Start`` and ``X-Plex-Container-Size`` headers; ``viewedAt>=N``
  filters (plexapi sends the key ``viewedAt>`` for its ``mindate``). With ``Accept:
  application/json`` the answer is ``{"MediaContainer": {"size", "totalSize", "Metadata":
  [...]}}``; each entry has ``historyKey`` (``/status/sessions/history/<id>``), ``key``,
  ``ratingKey`` (string), ``librarySectionID``, ``title``, ``grandparentTitle``,
  ``parentTitle`` (tracks), ``type``, ``index``, ``parentIndex``,
  ``originallyAvailableAt``, ``viewedAt`` (epoch seconds), ``accountID`` (int; the owner is
  1) and ``deviceID`` (int).
* The server id is ``/identity``'s ``machineIdentifier``, as the live Plex sources use.

``librarySectionID`` becomes the event's ``library_id``; the entry has no library title, so
``library_name`` stays empty (a live source's report of the item names it).

A history entry records only that an account viewed an item at ``viewedAt`` (when Plex
counted it watched, usually near the end): each becomes a ``summary`` with ``started_at`` =
``occurred_at`` = viewedAt and nothing invented. It lacks the start and stop times, the
played and paused durations, the position, the player (``deviceID`` is the server's own
device row number, not the client's ``machineIdentifier``, so it is kept in the raw payload
only), the address and the stream. Without a start and a device it never links (tier c)
with the webhook, poller or Tautulli reports of the same playback: import the time before
those sources ran (``--until``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from ingestor.events import MediaEvent
from ingestor.sink import Sink
from ingestor.sources.history_import import (
    Cursor,
    HistoryImportError,
    ImportResult,
    Progress,
    emit_rows,
)
from ingestor.sources.http import (
    CredentialsRefused,
    UpstreamClient,
    UpstreamError,
    UpstreamUnavailable,
)
from ingestor.sources.plex.mapping import (
    HISTORY_SOURCE,
    PlexPayloadError,
    epoch,
    history_entry_id,
    history_event,
    read_history_page,
    read_identity,
)
from ingestor.sources.plex.owner import OwnerMap

log = logging.getLogger(__name__)

SOURCE = HISTORY_SOURCE
HISTORY_PATH = "/status/sessions/history/all"
IDENTITY_PATH = "/identity"


class PlexHistoryImportError(HistoryImportError):
    """The server cannot be read: unreachable, token rejected, or an unreadable answer."""


class PlexHistoryClient:
    """Reads PMS over HTTP (the shared client): ``/identity`` and the history pages, oldest
    first. Every failure is a :class:`PlexHistoryImportError` saying what to do."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.upstream = UpstreamClient(
            url,
            http,
            name="Plex",
            credentials="PLEX_TOKEN",
            headers={"X-Plex-Token": token, "Accept": "application/json"},
        )
        self.url = self.upstream.url

    async def _get(self, path: str, params: dict[str, str], headers: dict[str, str]) -> bytes:
        try:
            return await self.upstream.get(path, params=params, headers=headers)
        except CredentialsRefused as exc:
            raise PlexHistoryImportError(
                f"the token was rejected by {self.url} (HTTP {exc.status}): "
                "check --token / PLEX_TOKEN"
            ) from None
        except UpstreamUnavailable as exc:
            if exc.status is None:
                raise PlexHistoryImportError(f"{self.url} does not answer: {exc}") from None
            raise PlexHistoryImportError(str(exc)) from None
        except UpstreamError as exc:
            raise PlexHistoryImportError(str(exc)) from None

    async def server_id(self) -> str:
        body = await self._get(IDENTITY_PATH, {}, {})
        try:
            return read_identity(body)
        except PlexPayloadError as exc:
            raise PlexHistoryImportError(f"{self.url}{IDENTITY_PATH} {exc}") from None

    async def page(
        self, since: int | None, until: int | None, start: int, size: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of entries viewed at ``since`` or later (and before ``until``), oldest
        first, and the total the server counts."""
        params = {"sort": "viewedAt:asc"}
        if since is not None:
            params["viewedAt>"] = str(since)  # sent as viewedAt>=N, as plexapi does
        if until is not None:
            params["viewedAt<"] = str(until)  # viewedAt<=N; the caller drops N itself
        headers = {"X-Plex-Container-Start": str(start), "X-Plex-Container-Size": str(size)}
        body = await self._get(HISTORY_PATH, params, headers)
        try:
            return read_history_page(body)
        except PlexPayloadError as exc:
            raise PlexHistoryImportError(f"{self.url}{HISTORY_PATH}: {exc}") from None


async def import_plex_history(
    url: str,
    token: str,
    sink: Sink,
    *,
    owner_id: str | None = None,
    until: datetime | None = None,
    page_size: int = 500,
    progress: Progress | None = None,
    state_path: Path | str | None,
    http: aiohttp.ClientSession | None = None,
) -> ImportResult:
    """Import the server's watch history through ``sink``, oldest first.

    The cursor saved in ``state_path`` (per server id) is the last stored entry's viewedAt
    and the history ids stored at that second: a later run asks for entries viewed at that
    second or later and skips those ids, so it resumes an interrupted import and adds only
    what was watched since. ``owner_id`` maps the owner's account 1 to their plex.tv id (as
    ``PLEX_OWNER_ID`` does for the webhook). ``until`` (exclusive) stops at a time, e.g.
    when the live sources began.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    own_http = http is None
    session = http or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    try:
        client = PlexHistoryClient(session, url, token)
        server_id = await client.server_id()
        owner = OwnerMap(owner_id, "plex history import")

        def owned(event: MediaEvent) -> MediaEvent:
            owner.check(event.user_id)
            return event

        cursor = Cursor(state_path, "plex_history", server_id)
        saved = cursor.load(server_id) or {}
        since: int | None = saved.get("viewed_at")
        seen_at_since: set[str] = set(saved.get("ids", []))
        saved_at, saved_ids = since, set(seen_at_since)
        limit = int(until.timestamp()) if until is not None else None
        result = ImportResult(SOURCE, client.url, server_id, resumed=since is not None)
        start = done = 0
        while True:
            entries, total = await client.page(since, limit, start, page_size)
            result.total_rows = max(result.total_rows, total)
            if not entries:
                break
            start += len(entries)
            fresh = [
                e
                for e in entries
                if not (epoch(e.get("viewedAt")) == since and history_entry_id(e) in seen_at_since)
                and (limit is None or (epoch(e.get("viewedAt")) or 0) < limit)
            ]
            await emit_rows(
                fresh, lambda e: owned(history_event(e, server_id, owner.owner_id)), sink, result
            )
            done += len(entries)
            last = max((epoch(e.get("viewedAt")) or 0 for e in entries), default=0)
            ids_at_last = {history_entry_id(e) for e in entries if epoch(e.get("viewedAt")) == last}
            if last and last != saved_at:
                saved_at, saved_ids = last, ids_at_last
            else:
                saved_ids |= ids_at_last
            cursor.save(server_id, {"viewed_at": saved_at, "ids": sorted(saved_ids)})
            if progress is not None:
                progress(done, max(total, done))
            if len(entries) < page_size:
                break
        return result
    finally:
        if own_http:
            await session.close()


__all__ = [
    "HISTORY_PATH",
    "SOURCE",
    "PlexHistoryClient",
    "PlexHistoryImportError",
    "import_plex_history",
]
