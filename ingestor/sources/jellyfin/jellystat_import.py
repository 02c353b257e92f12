"""Import the playback history of a Jellystat backup file (``backup_<date>.json``).

The format (CyferShepard/Jellystat @ 3fae9f7e168a8c4728892793c2bebfae78e4c34b, ``backend/``):

* ``classes/backup.js``: the file is ``JSON.stringify`` of a list with one object per backed
  up table, ``[{"jf_libraries": [rows]}, {"jf_library_items": [rows]}, ...]``; each row is a
  Postgres row as node-postgres returns it (``SELECT *``), so timestamps are ISO 8601 UTC
  strings (``"2026-01-05T20:44:00.000Z"``). The tables (``global/backup_tables.js``) can be
  excluded one by one in Jellystat's settings.
* ``jf_playback_activity`` (``migrations/007``, ``038``, ``043``; written by
  ``tasks/ActivityMonitor.js`` through ``models/jf_playback_activity.js``): ``Id`` (a random
  UUID per playback, or the Playback Reporting ``rowid`` for rows Jellystat imported from
  that plugin, ``imported`` = true, ``migrations/045``/``068``), ``UserId``, ``UserName``,
  ``Client``, ``DeviceName``, ``DeviceId`` (null for imported rows), ``ApplicationVersion``,
  ``NowPlayingItemId`` (for an episode: the **series** id), ``EpisodeId`` (the episode's own
  id, else null), ``NowPlayingItemName``, ``SeasonId``, ``SeriesName``, ``PlaybackDuration``
  (**seconds** played, pauses excluded), ``ActivityDateInserted`` (when the playback
  **ended**: the monitor writes the row when the session disappears), ``PlayMethod``,
  ``MediaStreams``, ``TranscodingInfo``, ``PlayState`` (the last ``PlayState`` seen, with
  ``PositionTicks``), ``OriginalContainer``, ``RemoteEndPoint``, ``ServerId``, ``imported``.
* ``jf_library_items`` (``Id``, ``Type``, ``RunTimeTicks``, ``ProductionYear``) and
  ``jf_library_episodes`` (``EpisodeId``, ``RunTimeTicks``, ``ProductionYear``) give the
  item's type and length when the backup holds them.

Mapping: one ``summary`` per row, ``event_id`` = hash of (``jellystat``, server id, ``Id``).
``stopped_at`` = ActivityDateInserted, ``started_at`` = stopped_at - PlaybackDuration (exact
for a playback without pauses, later than the true start by the paused time otherwise). For
rows imported from Playback Reporting, ActivityDateInserted is that plugin's DateCreated
(start + 20 s), so ``started_at`` = it - 20 s and there is no stop, as in the
``playback-reporting`` importer. ``rating_key`` is the item played (EpisodeId, else
NowPlayingItemId; NowPlayingItemId for imported rows), ``machine_id`` the DeviceId: rows with
a DeviceId link with the live Jellyfin source (tier c); imported rows have none.

What the backup does not say: the start time (derived as above); when the monitor merged a
re-watch within an hour into an earlier row, the row covers both (one summary, summed
duration); the media type when ``jf_library_items`` is excluded (episodes are known by
EpisodeId, the rest reads ``unknown``); ServerId on rows written before Jellystat 1.1 and on
imported rows (the file's one ServerId, or ``--server-id``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from ingestor.events import EventType, MediaEvent, make_event_id, percent_of
from ingestor.sink import Sink
from ingestor.sources.history_import import (
    Cursor,
    HistoryImportError,
    ImportResult,
    InvalidRow,
    Progress,
    emit_rows,
)
from ingestor.sources.jellyfin.mapping import PLAY_METHODS, TICKS_PER_MS, media_type, strip_port
from ingestor.sources.jellyfin.playback_reporting_import import START_DELAY

log = logging.getLogger(__name__)

SOURCE = "jellystat"
ACTIVITY = "jf_playback_activity"
ITEMS = "jf_library_items"
EPISODES = "jf_library_episodes"

_json = msgspec.json.Encoder()


class JellystatImportError(HistoryImportError):
    """The file is not a Jellystat backup, lacks the activity table, or its server is unknown."""


@dataclass
class Library:
    """What the backup's library tables say about items: type, length in ms, year."""

    types: dict[str, str] = field(default_factory=dict)
    lengths_ms: dict[str, int] = field(default_factory=dict)
    years: dict[str, int] = field(default_factory=dict)

    def add(self, item_id: Any, row: Mapping[str, Any], item_type: str) -> None:
        key = _text(item_id)
        if not key:
            return
        if item_type:
            self.types[key] = item_type
        ticks = _number(row.get("RunTimeTicks"))
        if ticks:
            self.lengths_ms[key] = ticks // TICKS_PER_MS
        year = _number(row.get("ProductionYear"))
        if year:
            self.years[key] = year


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _number(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def parse_time(value: Any) -> datetime:
    """An ISO 8601 timestamp of the backup as aware UTC (no zone: UTC).

    >>> parse_time("2026-01-05T20:44:00.000Z").isoformat()
    '2026-01-05T20:44:00+00:00'
    >>> parse_time("2026-01-05 21:44:00.000+01:00").isoformat()
    '2026-01-05T20:44:00+00:00'
    """
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRow(f"ActivityDateInserted {value!r} is not a time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def read_backup(path: Path) -> tuple[list[dict[str, Any]], Library]:
    """The activity rows (sorted by ActivityDateInserted, Id) and the library of a backup
    file; :class:`JellystatImportError` naming the file and what is wrong."""
    if not path.is_file():
        raise JellystatImportError(f"{path}: no such file")
    try:
        with open(path, "rb") as handle:
            document = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JellystatImportError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(document, list) or not all(isinstance(t, dict) for t in document):
        raise JellystatImportError(
            f"{path} is not a Jellystat backup (expected a list of {{table: rows}} objects)"
        )
    tables: dict[str, Any] = {}
    for entry in document:
        tables.update(entry)
    activity = tables.get(ACTIVITY)
    if not isinstance(activity, list):
        raise JellystatImportError(
            f"{path} holds no {ACTIVITY} table (is Activity excluded from Jellystat's backups?)"
        )
    library = Library()
    for row in tables.get(ITEMS) or []:
        if isinstance(row, dict):
            library.add(row.get("Id"), row, _text(row.get("Type")))
    for row in tables.get(EPISODES) or []:
        if isinstance(row, dict):
            library.add(row.get("EpisodeId"), row, "Episode")
    rows = [r for r in activity if isinstance(r, dict)]
    skipped = len(activity) - len(rows)
    if skipped:
        log.error("%s: %d %s entries are not objects, skipped", path, skipped, ACTIVITY)
    rows.sort(key=sort_key)
    return rows, library


def sort_key(row: Mapping[str, Any]) -> tuple[str, str]:
    """Rows in the order they were written (ActivityDateInserted as UTC text, then Id)."""
    try:
        when = parse_time(row.get("ActivityDateInserted")).isoformat()
    except InvalidRow:
        when = ""
    return (when, _text(row.get("Id")))


def backup_server_ids(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({_text(r.get("ServerId")) for r in rows} - {""})


def resolve_server_id(path: Path, rows: list[dict[str, Any]], given: str | None) -> str:
    known = backup_server_ids(rows)
    if given:
        if known and given not in known:
            log.warning("importing %s as server %s, but it names %s", path, given, ", ".join(known))
        return given
    if len(known) == 1:
        return known[0]
    if not known:
        raise JellystatImportError(
            f"{path} does not say which Jellyfin server it belongs to (no ServerId in "
            f"{ACTIVITY}): pass --server-id (the server's Id in /System/Info, 32 hex)"
        )
    raise JellystatImportError(
        f"{path} names several servers ({', '.join(known)}): import each with --server-id"
    )


def event_from_row(row: Mapping[str, Any], default_server: str, library: Library) -> MediaEvent:
    """The ``summary`` event of one ``jf_playback_activity`` row (raw payload: the row)."""
    row_id = _text(row.get("Id"))
    where = f"{ACTIVITY} row {row_id or '(no Id)'}"
    if not row_id:
        raise InvalidRow(f"{where}: no Id")
    server_id = _text(row.get("ServerId")) or default_server
    user_id = _text(row.get("UserId"))
    imported = row.get("imported") is True
    episode = _text(row.get("EpisodeId"))
    item = _text(row.get("NowPlayingItemId")) if imported else episode
    item = item or _text(row.get("NowPlayingItemId"))
    if not user_id or not item:
        raise InvalidRow(f"{where}: no UserId or item id")
    try:
        inserted = parse_time(row.get("ActivityDateInserted"))
    except InvalidRow as exc:
        raise InvalidRow(f"{where}: {exc}") from None
    played = _number(row.get("PlaybackDuration"))
    if imported:
        started, stopped = inserted - START_DELAY, None
    else:
        started, stopped = inserted - timedelta(seconds=played or 0), inserted
    item_type = library.types.get(item) or ("Episode" if episode else "")
    state = row.get("PlayState") if isinstance(row.get("PlayState"), dict) else {}
    ticks = _number(state.get("PositionTicks"))
    position = ticks // TICKS_PER_MS if ticks is not None else None
    length = library.lengths_ms.get(item)
    method = _text(row.get("PlayMethod")).split(" ", 1)[0]
    return MediaEvent(
        event_id=make_event_id(SOURCE, server_id, row_id),
        event_type=EventType.SUMMARY,
        occurred_at=stopped or started + timedelta(seconds=played or 0),
        source=SOURCE,
        server_id=server_id,
        session_key=row_id,
        user_id=user_id,
        username=_text(row.get("UserName")),
        media_type=media_type(item_type) if item_type else "unknown",
        title=_text(row.get("NowPlayingItemName")) or item,
        grandparent_title=_text(row.get("SeriesName")),
        rating_key=item,
        year=library.years.get(item),
        media_duration=length // 1000 if length else None,
        started_at=started,
        stopped_at=stopped,
        position_ms=position,
        percent_complete=percent_of(position, length),
        play_duration=played,
        platform=_text(row.get("Client")),
        product=_text(row.get("Client")),
        product_version=_text(row.get("ApplicationVersion")),
        player=_text(row.get("DeviceName")),
        machine_id=_text(row.get("DeviceId")),
        ip_address=strip_port(_text(row.get("RemoteEndPoint"))),
        transcode_decision=PLAY_METHODS.get(method, ""),
        raw_payload=_json.encode(dict(row)).decode(),
    )


async def import_jellystat(
    path: Path | str,
    sink: Sink,
    *,
    server_id: str | None = None,
    batch_size: int = 1000,
    progress: Progress | None = None,
    state_path: Path | str | None,
) -> ImportResult:
    """Import every ``jf_playback_activity`` row of a Jellystat backup through ``sink``.

    Rows are read in the order Jellystat wrote them (ActivityDateInserted, then Id); the
    cursor saved in ``state_path`` for this file is the last stored row's sort key, so an
    interrupted import resumes after it, and a newer backup at the same path imports only
    the rows written since. ``server_id`` serves rows without a ServerId (and must be given
    when the file names none). Raises :class:`JellystatImportError` for a file that cannot be
    imported; a bad row is skipped and counted.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    path = Path(path)
    rows, library = await asyncio.to_thread(read_backup, path)
    resolved = resolve_server_id(path, rows, server_id)
    cursor = Cursor(state_path, "jellystat", str(path.resolve()))
    saved = cursor.load(resolved)
    after = tuple(saved) if saved else None
    start = 0
    if after is not None:
        while start < len(rows) and sort_key(rows[start]) <= after:
            start += 1
        log.info(
            "resuming import of %s after row %s (%d/%d done)", path, after[1], start, len(rows)
        )
    result = ImportResult(SOURCE, str(path), resolved, total_rows=len(rows), resumed=start > 0)
    for first in range(start, len(rows), batch_size):
        batch = rows[first : first + batch_size]
        await emit_rows(batch, lambda r: event_from_row(r, resolved, library), sink, result)
        await asyncio.to_thread(cursor.save, resolved, list(sort_key(batch[-1])))
        if progress is not None:
            progress(first + len(batch), len(rows))
    return result


__all__ = [
    "SOURCE",
    "JellystatImportError",
    "Library",
    "event_from_row",
    "import_jellystat",
    "parse_time",
    "read_backup",
    "resolve_server_id",
]
