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
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from ingestor.events import EventType, MediaEvent, make_event_id
from ingestor.sink import Sink
from ingestor.sources.history_import import (
    Cursor,
    HistoryImportError,
    ImportResult,
    InvalidRow,
    Progress,
    emit_rows,
)
from ingestor.sources.plex.owner import OwnerMap

log = logging.getLogger(__name__)

SOURCE = "plex-history"
HISTORY_PATH = "/status/sessions/history/all"
IDENTITY_PATH = "/identity"

_json = msgspec.json.Encoder()


class PlexHistoryImportError(HistoryImportError):
    """The server cannot be read: unreachable, token rejected, or an unreadable answer."""


def history_id(entry: Mapping[str, Any]) -> str:
    """The id in ``historyKey`` (``/status/sessions/history/1234`` -> ``1234``)."""
    key = str(entry.get("historyKey") or "").strip().rstrip("/")
    return key.rsplit("/", 1)[-1] if key else ""


def _epoch(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def event_from_entry(entry: Mapping[str, Any], server_id: str, owner: OwnerMap) -> MediaEvent:
    """The ``summary`` event of one history entry (raw payload: the entry)."""
    hid = history_id(entry)
    where = f"history entry {hid or '(no historyKey)'}"
    if not hid:
        raise InvalidRow(f"{where}: no historyKey")
    viewed = _epoch(entry.get("viewedAt"))
    if not viewed:
        raise InvalidRow(f"{where}: no viewedAt")
    account = entry.get("accountID")
    if account is None or str(account).strip() == "":
        raise InvalidRow(f"{where}: no accountID")
    at = datetime.fromtimestamp(viewed, UTC)
    return MediaEvent(
        event_id=make_event_id(SOURCE, server_id, hid),
        event_type=EventType.SUMMARY,
        occurred_at=at,
        source=SOURCE,
        server_id=server_id,
        session_key=hid,
        user_id=owner.user_id(account),
        media_type=str(entry.get("type") or "unknown"),
        title=str(entry.get("title") or entry.get("ratingKey") or ""),
        parent_title=str(entry.get("parentTitle") or ""),
        grandparent_title=str(entry.get("grandparentTitle") or ""),
        rating_key=str(entry.get("ratingKey") or ""),
        # the section id only: history entries name no library title
        library_id=str(entry.get("librarySectionID") or ""),
        started_at=at,
        raw_payload=_json.encode(dict(entry)).decode(),
    )


class PlexHistoryClient:
    """Reads PMS over HTTP: ``/identity`` and the history pages, oldest first."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.http, self.url = http, url.rstrip("/")
        self.headers = {"X-Plex-Token": token, "Accept": "application/json"}

    async def _get(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Any:
        try:
            async with self.http.get(
                self.url + path, params=params, headers={**self.headers, **headers}
            ) as response:
                if response.status in (401, 403):
                    raise PlexHistoryImportError(
                        f"the token was rejected by {self.url} (HTTP {response.status}): "
                        "check --token / PLEX_TOKEN"
                    )
                if response.status != 200:
                    raise PlexHistoryImportError(
                        f"{self.url}{path} answered HTTP {response.status}"
                    )
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PlexHistoryImportError(f"{self.url} does not answer: {exc}") from None
        try:
            document = msgspec.json.decode(body)
            container = document["MediaContainer"]
            if not isinstance(container, dict):
                raise TypeError("MediaContainer is not an object")
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            raise PlexHistoryImportError(
                f"{self.url}{path} answered something unreadable: {exc}"
            ) from None
        return container

    async def server_id(self) -> str:
        container = await self._get(IDENTITY_PATH, {}, {})
        machine = str(container.get("machineIdentifier") or "").strip()
        if not machine:
            raise PlexHistoryImportError(f"{self.url}{IDENTITY_PATH} gave no machineIdentifier")
        return machine

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
        container = await self._get(HISTORY_PATH, params, headers)
        entries = container.get("Metadata") or []
        if not isinstance(entries, list):
            raise PlexHistoryImportError(f"{self.url}{HISTORY_PATH}: Metadata is not a list")
        total = _epoch(container.get("totalSize")) or _epoch(container.get("size")) or 0
        return [e for e in entries if isinstance(e, dict)], total


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
                if not (_epoch(e.get("viewedAt")) == since and history_id(e) in seen_at_since)
                and (limit is None or (_epoch(e.get("viewedAt")) or 0) < limit)
            ]
            await emit_rows(fresh, lambda e: event_from_entry(e, server_id, owner), sink, result)
            done += len(entries)
            last = max((_epoch(e.get("viewedAt")) or 0 for e in entries), default=0)
            ids_at_last = {history_id(e) for e in entries if _epoch(e.get("viewedAt")) == last}
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
    "event_from_entry",
    "history_id",
    "import_plex_history",
]
