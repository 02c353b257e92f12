"""Import the Jellyfin Playback Reporting plugin's SQLite database (``playback_reporting.db``).

The format (jellyfin/jellyfin-plugin-playbackreporting @ 694a56a0806af128acb3bb0ac670bf9205be018d,
``Jellyfin.Plugin.PlaybackReporting/``):

* ``Data/ActivityRepository.cs``: the file is ``<jellyfin data>/playback_reporting.db``; one
  table ``PlaybackActivity(DateCreated DATETIME NOT NULL, UserId TEXT, ItemId TEXT, ItemType
  TEXT, ItemName TEXT, PlaybackMethod TEXT, ClientName TEXT, DeviceName TEXT, PlayDuration
  INT)``, no key but SQLite's ``rowid``. The plugin's own restore treats (DateCreated, UserId,
  ItemId) as a row's identity, and drops and recreates the table when its schema differs, so
  rowids are not stable: the event id hashes that triple instead.
* ``EventMonitorEntryPoint.cs`` StartPlaybackTimer: a row is written 20 seconds after the
  playback starts (``Task.Delay(20000)``, then ``date: DateTime.Now``), and only if the
  session still plays the item then. ``DateCreated`` is therefore the start plus about 20 s,
  in the **server's local time** (``Data/SqliteExtensions.cs`` ToDateTimeParamValue writes a
  local ``DateTime`` as ``yyyy-MM-dd HH:mm:ss.FFFFFFF`` with no zone; a UTC one would end in
  ``Z``). ``UserId``/``ItemId`` are Jellyfin Guids as 32 hex (``ToString("N")``), as the
  live WebSocket reports them. ``ItemType`` is the item's type (``Movie``, ``Episode``,
  ``Audio``...). ``ItemName`` is ``Series - sNNeMM - Episode`` for episodes and ``Artist -
  Track (Album)`` for audio. ``PlaybackMethod`` is ``DirectPlay``, ``DirectStream``,
  ``Transcode (v:CODEC a:CODEC)`` or ``na``.
* ``Data/PlaybackTracker.cs`` CalculateDuration: ``PlayDuration`` is whole **seconds of
  playing time** (paused stretches are not counted), updated every 20 s while playing and on
  stop.

What the row does not say: the device id (only ``DeviceName``), so a row cannot link by tier
(c) with the live Jellyfin source, whose reports carry ``DeviceId`` (the same playback seen
live and imported counts twice: import only the time before the live source ran); the stop
time (pauses are not recorded); the user's name; the position and the item's length; the
server id (pass it). Each row becomes one ``summary`` with ``started_at`` = DateCreated - 20 s
(in UTC, DateCreated read in ``tz``), ``play_duration`` = PlayDuration and no ``stopped_at``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import msgspec

from ingestor.events import EventType, MediaEvent, make_event_id
from ingestor.sink import Sink
from ingestor.sources.history_import import (
    Cursor,
    HistoryImportError,
    ImportResult,
    InvalidRow,
    PagedSqlite,
    Progress,
    emit_rows,
    open_sqlite_readonly,
    sqlite_tables,
)
from ingestor.sources.jellyfin.mapping import PLAY_METHODS, media_type

log = logging.getLogger(__name__)

SOURCE = "playback-reporting"
TABLE = "PlaybackActivity"
COLUMNS = (
    "DateCreated",
    "UserId",
    "ItemId",
    "ItemType",
    "ItemName",
    "PlaybackMethod",
    "ClientName",
    "DeviceName",
    "PlayDuration",
)
START_DELAY = timedelta(seconds=20)
"""The plugin writes a row this long after the playback started (StartPlaybackTimer)."""

SELECT_TOTAL = "SELECT count(*) FROM PlaybackActivity"
SELECT_DONE = "SELECT count(*) FROM PlaybackActivity WHERE rowid <= ?"
SELECT_PAGE = (
    "SELECT rowid AS row_id, DateCreated, UserId, ItemId, ItemType, ItemName, PlaybackMethod,"
    " ClientName, DeviceName, PlayDuration"
    " FROM PlaybackActivity WHERE rowid > ? ORDER BY rowid LIMIT ?"
)

_EPISODE_NAME = re.compile(r"^(?P<series>.+) - s(?P<season>\d+)e(?P<episode>\d+) - (?P<name>.*)$")
_DATE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<time>\d{2}:\d{2}(?::\d{2})?)"
    r"(?:\.(?P<frac>\d+))?\s*(?P<zone>Z|[+-]\d{2}:?\d{2})?$"
)
_json = msgspec.json.Encoder()


class PlaybackReportingImportError(HistoryImportError):
    """The file is not a Playback Reporting database, or the server id is missing."""


def parse_date_created(text: Any, tz: tzinfo) -> datetime:
    """``DateCreated`` as an aware UTC datetime: a value without a zone is local time in
    ``tz``; one ending in ``Z`` or an offset says its own zone.

    >>> from zoneinfo import ZoneInfo
    >>> parse_date_created("2026-01-05 21:00:20.1234567", ZoneInfo("Europe/Paris")).isoformat()
    '2026-01-05T20:00:20.123456+00:00'
    >>> parse_date_created("2026-01-05 20:00:20Z", ZoneInfo("Europe/Paris")).isoformat()
    '2026-01-05T20:00:20+00:00'
    """
    match = _DATE.match(str(text or "").strip())
    if match is None:
        raise InvalidRow(f"DateCreated {text!r} is not a date")
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    zone = match["zone"] or ""
    if zone == "Z":
        zone = "+00:00"
    try:
        value = datetime.fromisoformat(f"{match['date']}T{match['time']}.{frac}{zone}")
    except ValueError as exc:
        raise InvalidRow(f"DateCreated {text!r}: {exc}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def play_method(value: Any) -> str:
    """``PlaybackMethod`` in the event's words (``Transcode (v:h264 a:aac)`` -> transcode).

    >>> play_method("Transcode (v:h264 a:direct)"), play_method("DirectPlay"), play_method("na")
    ('transcode', 'direct play', '')
    """
    first = str(value or "").strip().split(" ", 1)[0]
    return PLAY_METHODS.get(first, "")


def event_id(server_id: str, row: dict[str, Any]) -> str:
    """The row's event id: its (DateCreated, UserId, ItemId) identity on the server."""
    return make_event_id(
        SOURCE, server_id, str(row["DateCreated"]), str(row["UserId"]), str(row["ItemId"])
    )


def event_from_row(row: dict[str, Any], server_id: str, tz: tzinfo) -> MediaEvent:
    """The ``summary`` event of one ``PlaybackActivity`` row (raw payload: the row)."""
    where = f"PlaybackActivity row {row.get('row_id')}"
    user_id = str(row.get("UserId") or "").strip()
    item_id = str(row.get("ItemId") or "").strip()
    if not user_id or not item_id:
        raise InvalidRow(f"{where}: no UserId or ItemId")
    try:
        created = parse_date_created(row.get("DateCreated"), tz)
    except InvalidRow as exc:
        raise InvalidRow(f"{where}: {exc}") from None
    duration = row.get("PlayDuration")
    if duration is not None and not isinstance(duration, int):
        try:
            duration = int(str(duration).strip())
        except ValueError:
            raise InvalidRow(f"{where}: PlayDuration {duration!r} is not a number") from None
    item_type = str(row.get("ItemType") or "")
    name = str(row.get("ItemName") or "")
    title, grandparent = name, ""
    if item_type == "Episode" and (match := _EPISODE_NAME.match(name)):
        title, grandparent = match["name"], match["series"]
    client = str(row.get("ClientName") or "")
    started = created - START_DELAY
    eid = event_id(server_id, row)
    return MediaEvent(
        event_id=eid,
        event_type=EventType.SUMMARY,
        occurred_at=started + timedelta(seconds=duration or 0),
        source=SOURCE,
        server_id=server_id,
        session_key=eid,
        user_id=user_id,
        media_type=media_type(item_type),
        title=title or item_id,
        grandparent_title=grandparent,
        rating_key=item_id,
        started_at=started,
        play_duration=duration,
        platform=client,
        product=client,
        player=str(row.get("DeviceName") or ""),
        transcode_decision=play_method(row.get("PlaybackMethod")),
        raw_payload=_json.encode(row).decode(),
    )


class _Reader(PagedSqlite):
    """The open database, used from a worker thread."""

    select_total, select_done, select_page = SELECT_TOTAL, SELECT_DONE, SELECT_PAGE

    def __init__(self, path: Path) -> None:
        self.con = open_sqlite_readonly(
            path, "a Playback Reporting database", PlaybackReportingImportError
        )
        self.con.row_factory = sqlite3.Row
        try:
            if TABLE not in sqlite_tables(self.con):
                raise PlaybackReportingImportError(
                    f"{path} is not a Playback Reporting database: no table {TABLE}"
                )
            info = self.con.execute(f'PRAGMA table_info("{TABLE}")').fetchall()
            missing = [c for c in COLUMNS if c not in {row[1] for row in info}]
            if missing:
                raise PlaybackReportingImportError(
                    f"{path}: table {TABLE} lacks column {', '.join(missing)}"
                )
        except BaseException:
            self.con.close()
            raise


async def import_playback_reporting(
    path: Path | str,
    sink: Sink,
    *,
    server_id: str | None,
    tz: tzinfo = UTC,
    batch_size: int = 1000,
    progress: Progress | None = None,
    state_path: Path | str | None,
) -> ImportResult:
    """Import every ``PlaybackActivity`` row of ``path`` through ``sink``, in ``rowid``
    order, resuming after the last stored batch saved in ``state_path`` for this file.

    ``server_id`` is the Jellyfin server's id (32 hex, ``ServerId`` in ``/System/Info``);
    the file does not hold it. ``tz`` is the zone the Jellyfin server ran in (DateCreated is
    its local time). Raises :class:`PlaybackReportingImportError` for a file that cannot be
    imported; a bad row is skipped and counted.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    path = Path(path)
    if not server_id:
        raise PlaybackReportingImportError(
            f"{path} does not say which Jellyfin server it belongs to: pass --server-id "
            "(the server's Id in /System/Info, 32 hex)"
        )
    reader = await asyncio.to_thread(_Reader, path)
    try:
        cursor = Cursor(state_path, "playback_reporting", str(path.resolve()))
        after = int(cursor.load(server_id) or 0)
        total, done = await asyncio.to_thread(reader.counts, after)
        result = ImportResult(SOURCE, str(path), server_id, total_rows=total, resumed=after > 0)
        if after:
            log.info("resuming import of %s after rowid %d (%d/%d done)", path, after, done, total)
        while rows := await asyncio.to_thread(reader.page, after, batch_size):
            await emit_rows(rows, lambda r: event_from_row(r, server_id, tz), sink, result)
            after = int(rows[-1]["row_id"])
            done += len(rows)
            await asyncio.to_thread(cursor.save, server_id, after)
            if progress is not None:
                progress(done, total)
        return result
    finally:
        reader.close()


__all__ = [
    "SOURCE",
    "START_DELAY",
    "PlaybackReportingImportError",
    "event_from_row",
    "event_id",
    "import_playback_reporting",
    "parse_date_created",
    "play_method",
]
