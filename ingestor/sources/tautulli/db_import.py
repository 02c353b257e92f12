"""Import the play history of a Tautulli SQLite database (``tautulli.db``).

:func:`import_tautulli_db` reads ``session_history`` joined with ``session_history_metadata``
and ``session_history_media_info`` (one row each per finished stream, sharing ``id``), in
``id`` order, with Python's ``sqlite3`` opened read-only (``file:...?mode=ro``; a WAL file in
a read-only directory is retried with ``immutable=1``). Each row becomes the same ``summary``
event the API sync makes of it (:mod:`ingestor.sources.tautulli.mapping`: same ``event_id``,
``session_key``, times and durations), so importing a database whose rows the sync already
brought in adds nothing (dedup tier a), and importing one file twice adds nothing.

Batches of ``batch_size`` rows go through the sink; after each batch is stored, the last
imported ``id`` is saved in a :class:`~ingestor.sources.base.StateFile` under the database
file's resolved path, so an interrupted import resumes after the last stored batch (at most
that batch is sent again, and tier a drops it).

**The server id.** History rows carry no server id (a Tautulli database covers one Plex
server). It is, in order: the ``server_id`` argument (the Plex ``Server.uuid``, Tautulli's
``pms_identifier``); else the one distinct non-empty ``library_sections.server_id`` (or
``recently_added.pms_identifier``) in the database. Several distinct ids (the Tautulli
instance was moved to another Plex server) or none: :class:`TautulliImportError` asks for
the argument. An argument the database does not list is used as given, with a warning.

Columns are selected by name, and a column an older schema lacks reads as NULL, so files of
any Tautulli 2.x version import. Rows without metadata, a user or a start are counted as
``invalid`` and skipped (logged), never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ingestor.errors import IngestorError
from ingestor.events import MediaEvent, percent_of
from ingestor.sink import Sink
from ingestor.sources.base import StateFile
from ingestor.sources.history_import import PagedSqlite
from ingestor.sources.tautulli.mapping import InvalidHistoryRow, as_int, summary_from_history_row

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (rows done, rows in total) after each stored batch."""

# Tautulli's get_history renames these "mystery" platforms; the database keeps PMS's names.
PLATFORM_NAME_OVERRIDES = {
    "Konvergo": "Plex Media Player",
    "Mystery 3": "Playstation 3",
    "Mystery 4": "Playstation 4",
    "Mystery 5": "Xbox 360",
    "WebMAF": "Playstation 4",
}

# (table alias, column, name in the row): what the import reads. Missing columns read NULL.
_HISTORY = "session_history"
_METADATA = "session_history_metadata"
_MEDIA_INFO = "session_history_media_info"
_USERS = "users"
_ALIASES = {_HISTORY: "h", _METADATA: "m", _MEDIA_INFO: "i", _USERS: "u"}
_COLUMNS: tuple[tuple[str, str, str], ...] = (
    (_HISTORY, "id", "id"),
    (_HISTORY, "reference_id", "reference_id"),
    (_HISTORY, "started", "started"),
    (_HISTORY, "stopped", "stopped"),
    (_HISTORY, "paused_counter", "paused_counter"),
    (_HISTORY, "view_offset", "view_offset"),
    (_HISTORY, "user_id", "user_id"),
    (_HISTORY, "user", "user"),
    (_HISTORY, "ip_address", "ip_address"),
    (_HISTORY, "player", "player"),
    (_HISTORY, "product", "product"),
    (_HISTORY, "product_version", "product_version"),
    (_HISTORY, "platform", "platform"),
    (_HISTORY, "platform_version", "platform_version"),
    (_HISTORY, "machine_id", "machine_id"),
    (_HISTORY, "bandwidth", "bandwidth"),
    (_HISTORY, "location", "location"),
    (_HISTORY, "secure", "secure"),
    (_HISTORY, "relayed", "relayed"),
    (_HISTORY, "media_type", "media_type"),
    (_HISTORY, "rating_key", "history_rating_key"),
    (_METADATA, "rating_key", "rating_key"),
    (_METADATA, "parent_rating_key", "parent_rating_key"),
    (_METADATA, "grandparent_rating_key", "grandparent_rating_key"),
    (_METADATA, "title", "title"),
    (_METADATA, "parent_title", "parent_title"),
    (_METADATA, "grandparent_title", "grandparent_title"),
    (_METADATA, "original_title", "original_title"),
    (_METADATA, "full_title", "full_title"),
    (_METADATA, "year", "year"),
    (_METADATA, "media_index", "media_index"),
    (_METADATA, "parent_media_index", "parent_media_index"),
    (_METADATA, "originally_available_at", "originally_available_at"),
    (_METADATA, "guid", "guid"),
    (_METADATA, "duration", "media_duration_ms"),
    (_METADATA, "live", "live"),
    (_MEDIA_INFO, "transcode_decision", "transcode_decision"),
    (_MEDIA_INFO, "video_resolution", "video_resolution"),
    (_MEDIA_INFO, "video_codec", "video_codec"),
    (_MEDIA_INFO, "video_dynamic_range", "video_dynamic_range"),
    (_MEDIA_INFO, "audio_codec", "audio_codec"),
    (_MEDIA_INFO, "audio_channels", "audio_channels"),
    (_MEDIA_INFO, "stream_bitrate", "stream_bitrate"),
    (_USERS, "username", "username"),
    (_USERS, "friendly_name", "users_friendly_name"),
    (_USERS, "thumb", "users_thumb"),
    (_USERS, "custom_avatar_url", "users_custom_thumb"),
)
_REQUIRED_TABLES = (_HISTORY, _METADATA, _MEDIA_INFO)

SELECT_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
SELECT_TOTAL = "SELECT count(*) FROM session_history"
SELECT_DONE = "SELECT count(*) FROM session_history WHERE id <= ?"
SELECT_LIBRARY_SERVER_IDS = (
    "SELECT DISTINCT server_id FROM library_sections"
    " WHERE server_id IS NOT NULL AND server_id != ''"
)
SELECT_RECENT_SERVER_IDS = (
    "SELECT DISTINCT pms_identifier FROM recently_added"
    " WHERE pms_identifier IS NOT NULL AND pms_identifier != ''"
)
# The FROM and JOIN part; the column list is built from _COLUMNS and the file's schema.
_FROM_HISTORY = (
    " FROM session_history h"
    " LEFT JOIN session_history_metadata m ON m.id = h.id"
    " LEFT JOIN session_history_media_info i ON i.id = h.id"
)
_JOIN_USERS = " LEFT JOIN users u ON u.user_id = h.user_id"
_PAGE = " WHERE h.id > ? ORDER BY h.id LIMIT ?"


class TautulliImportError(IngestorError):
    """The database cannot be imported (not a Tautulli database, server id unknown...)."""


@dataclass
class ImportResult:
    """What one import did."""

    path: Path
    server_id: str
    total_rows: int = 0  # history rows in the file
    rows_read: int = 0  # rows read by this run (after the resume point)
    stored: int = 0  # events the sink stored as new
    duplicate: int = 0  # events the sink already had
    invalid: int = 0  # rows skipped: no user, title, start...
    last_id: int = 0  # the last imported session_history.id
    resumed_after: int = 0  # the id this run started after


# ---------------------------------------------------------------------------------------
# reading the file


def open_readonly(path: Path) -> sqlite3.Connection:
    """Open ``path`` read-only; a WAL database in a read-only directory is opened immutable."""
    if not path.is_file():
        raise TautulliImportError(f"{path}: no such file")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        con.execute(SELECT_TABLES).fetchall()
        return con
    except sqlite3.DatabaseError as exc:
        first = exc
    try:
        con = sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)
        con.execute(SELECT_TABLES).fetchall()
    except sqlite3.DatabaseError:
        raise TautulliImportError(f"{path} is not a readable SQLite database: {first}") from None
    log.warning(
        "%s opened immutable (%s): stop Tautulli or copy the file with its -wal first "
        "if it is still being written",
        path,
        first,
    )
    return con


def _schema(con: sqlite3.Connection) -> dict[str, set[str]]:
    tables = [row[0] for row in con.execute(SELECT_TABLES).fetchall()]
    schema: dict[str, set[str]] = {}
    for table in tables:
        if table in (*_REQUIRED_TABLES, _USERS, "library_sections", "recently_added"):
            info = con.execute(f'PRAGMA table_info("{table}")').fetchall()
            schema[table] = {row[1] for row in info}
    return schema


def history_query(schema: Mapping[str, set[str]]) -> str:
    """The page query for this file's schema: every wanted column by name, NULL if absent."""
    parts = []
    for table, column, name in _COLUMNS:
        if column in schema.get(table, ()):
            parts.append(f'{_ALIASES[table]}."{column}" AS "{name}"')
        else:
            parts.append(f'NULL AS "{name}"')
    # the library: history.section_id since v2.7.0, metadata.section_id before it; its name
    # from library_sections (one Tautulli database covers one Plex server)
    if "section_id" in schema.get(_HISTORY, ()):
        section = 'h."section_id"'
    elif "section_id" in schema.get(_METADATA, ()):
        section = 'm."section_id"'
    else:
        section = "NULL"
    parts.append(f'{section} AS "section_id"')
    if section != "NULL" and {"section_id", "section_name"} <= schema.get(
        "library_sections", set()
    ):
        parts.append(
            '(SELECT l."section_name" FROM library_sections l'
            f' WHERE l."section_id" = {section} LIMIT 1) AS "library_name"'
        )
    else:
        parts.append('NULL AS "library_name"')
    users = _JOIN_USERS if "user_id" in schema.get(_USERS, ()) else ""
    return "SELECT " + ", ".join(parts) + _FROM_HISTORY + users + _PAGE


def database_server_ids(con: sqlite3.Connection) -> list[str]:
    """The Plex server ids a Tautulli database names (library sections, recently added)."""
    schema = _schema(con)
    ids: list[str] = []
    if "server_id" in schema.get("library_sections", ()):
        ids += [row[0] for row in con.execute(SELECT_LIBRARY_SERVER_IDS).fetchall()]
    if not ids and "pms_identifier" in schema.get("recently_added", ()):
        ids += [row[0] for row in con.execute(SELECT_RECENT_SERVER_IDS).fetchall()]
    return sorted({str(i) for i in ids})


def resolve_server_id(con: sqlite3.Connection, path: Path, given: str | None) -> str:
    """The server id to import under (see the module docstring)."""
    known = database_server_ids(con)
    if given:
        if known and given not in known:
            log.warning(
                "importing %s as server %s, but the database names %s",
                path,
                given,
                ", ".join(known),
            )
        return given
    if len(known) == 1:
        return known[0]
    if not known:
        raise TautulliImportError(
            f"{path} does not say which Plex server it belongs to (no library_sections."
            "server_id): pass the server id (Tautulli's pms_identifier, Plex Server.uuid)"
        )
    raise TautulliImportError(
        f"{path} names several Plex servers ({', '.join(known)}): pass the one to import as"
    )


def api_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A database record in the shape of a ``get_history`` row (``grouping=0``), computed
    the way Tautulli computes it, plus the database-only keys the event builder reads."""
    started = as_int(record.get("started")) or 0
    stopped = as_int(record.get("stopped")) or 0
    paused = as_int(record.get("paused_counter")) or 0
    played = (stopped - started if stopped > 0 else 0) - paused
    view_offset = as_int(record.get("view_offset"))
    length_ms = as_int(record.get("media_duration_ms"))
    live = as_int(record.get("live")) or 0
    # exact, not Tautulli's rounded display value: 84.79 % is not watched at 85 %
    percent = 100.0 if live else percent_of(view_offset or 0, length_ms)
    friendly = record.get("users_friendly_name")
    if friendly is None or not str(friendly).strip():
        friendly = record.get("username")
    rating_key = record.get("rating_key")
    if rating_key is None or rating_key == "":
        rating_key = record.get("history_rating_key")
    platform = record.get("platform")
    thumb, custom = record.get("users_thumb"), record.get("users_custom_thumb")
    row = {
        "reference_id": record.get("reference_id"),
        "row_id": record.get("id"),
        "id": record.get("id"),
        "date": record.get("started"),
        "started": record.get("started"),
        "stopped": record.get("stopped"),
        "duration": played,
        "play_duration": played,
        "paused_counter": paused,
        "user_id": record.get("user_id"),
        "user": record.get("user"),
        "friendly_name": friendly,
        "user_thumb": custom if custom and custom != thumb else thumb,
        "platform": PLATFORM_NAME_OVERRIDES.get(platform, platform),
        "product": record.get("product"),
        "player": record.get("player"),
        "ip_address": record.get("ip_address"),
        "live": live,
        "machine_id": record.get("machine_id"),
        "location": record.get("location"),
        "secure": record.get("secure"),
        "relayed": record.get("relayed"),
        "media_type": record.get("media_type"),
        "rating_key": rating_key,
        "parent_rating_key": record.get("parent_rating_key"),
        "grandparent_rating_key": record.get("grandparent_rating_key"),
        "full_title": record.get("full_title"),
        "title": record.get("title"),
        "parent_title": record.get("parent_title"),
        "grandparent_title": record.get("grandparent_title"),
        "original_title": record.get("original_title"),
        "year": record.get("year"),
        "media_index": record.get("media_index"),
        "parent_media_index": record.get("parent_media_index"),
        "originally_available_at": record.get("originally_available_at"),
        "guid": record.get("guid"),
        "transcode_decision": record.get("transcode_decision"),
        "percent_complete": percent,
        "group_count": 1,
        "group_ids": str(record.get("id")),
        "state": None,
        "session_key": None,
        # database-only
        "view_offset": view_offset,
        "media_duration_ms": length_ms,
        "platform_version": record.get("platform_version"),
        "product_version": record.get("product_version"),
        "bandwidth": record.get("bandwidth"),
        "video_resolution": record.get("video_resolution"),
        "video_codec": record.get("video_codec"),
        "video_dynamic_range": record.get("video_dynamic_range"),
        "audio_codec": record.get("audio_codec"),
        "audio_channels": record.get("audio_channels"),
        "stream_bitrate": record.get("stream_bitrate"),
        # get_activity's names for the library (get_history rows have none)
        "section_id": record.get("section_id"),
        "library_name": record.get("library_name"),
    }
    return row


def event_from_record(record: Mapping[str, Any], server_id: str) -> MediaEvent:
    """The summary event of one database record (raw payload: the record itself)."""
    return summary_from_history_row(api_row(record), server_id, raw=record)


# ---------------------------------------------------------------------------------------
# the import


class _Reader(PagedSqlite):
    """The open database and its page query, used from a worker thread."""

    select_total, select_done = SELECT_TOTAL, SELECT_DONE

    def __init__(self, path: Path) -> None:
        self.con = open_readonly(path)
        self.con.row_factory = sqlite3.Row
        try:
            schema = _schema(self.con)
            missing = [t for t in _REQUIRED_TABLES if t not in schema]
            if missing:
                raise TautulliImportError(
                    f"{path} is not a Tautulli database: no table {', '.join(missing)}"
                )
            self.select_page = history_query(schema)
        except BaseException:
            self.con.close()
            raise


async def import_tautulli_db(
    path: Path | str,
    sink: Sink,
    *,
    server_id: str | None = None,
    batch_size: int = 1000,
    progress: Progress | None = None,
    state_path: Path | str | None,
) -> ImportResult:
    """Import every finished session of a Tautulli database through ``sink``.

    Resumes after the last id saved in ``state_path`` for this file (``None``: no resume
    state, start at the first row). ``progress(done, total)`` is called after each stored
    batch. Raises :class:`TautulliImportError` when the file is not a Tautulli database or
    its server id cannot be known; a bad row is skipped and counted, never fatal.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    path = Path(path)
    state = StateFile(Path(state_path)) if state_path is not None else None
    key = str(path.resolve())
    reader = await asyncio.to_thread(_Reader, path)
    try:
        resolved = await asyncio.to_thread(resolve_server_id, reader.con, path, server_id)
        saved: dict[str, Any] = state.load() if state is not None else {}
        entry = saved.get("databases", {}).get(key, {})
        after_id = int(entry.get("last_id", 0)) if entry.get("server_id") == resolved else 0
        total, done = await asyncio.to_thread(reader.counts, after_id)
        result = ImportResult(
            path, resolved, total_rows=total, last_id=after_id, resumed_after=after_id
        )
        if after_id:
            log.info("resuming import of %s after id %d (%d/%d done)", path, after_id, done, total)
        while True:
            records = await asyncio.to_thread(reader.page, result.last_id, batch_size)
            if not records:
                break
            events = _events(records, resolved, result)
            if events:
                stats = await sink.emit(events)
                result.stored += stats.stored
                result.duplicate += stats.duplicate
            result.rows_read += len(records)
            result.last_id = int(records[-1]["id"])
            done += len(records)
            if state is not None:
                saved.setdefault("databases", {})[key] = {
                    "last_id": result.last_id,
                    "server_id": resolved,
                }
                await asyncio.to_thread(state.save, saved)
            if progress is not None:
                progress(done, total)
        log.info(
            "imported %s: %d rows read, %d new events, %d already known, %d invalid",
            path,
            result.rows_read,
            result.stored,
            result.duplicate,
            result.invalid,
        )
        return result
    finally:
        reader.close()


def _events(
    records: Sequence[Mapping[str, Any]], server_id: str, result: ImportResult
) -> list[MediaEvent]:
    events = []
    for record in records:
        try:
            events.append(event_from_record(record, server_id))
        except InvalidHistoryRow as exc:
            result.invalid += 1
            log.error("skipped: %s", exc)
    return events


__all__ = [
    "PLATFORM_NAME_OVERRIDES",
    "ImportResult",
    "Progress",
    "TautulliImportError",
    "api_row",
    "database_server_ids",
    "event_from_record",
    "history_query",
    "import_tautulli_db",
    "open_readonly",
]
