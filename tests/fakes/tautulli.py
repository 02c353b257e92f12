"""A fake Tautulli: a real-schema SQLite history file and an API v2 server reading it.

:class:`TautulliDb` writes ``tautulli.db`` the way Tautulli does: one row per finished stream
in each of ``session_history`` (26 columns), ``session_history_metadata`` (42) and
``session_history_media_info`` (77), sharing ``id``; ``''`` in INTEGER columns for missing
values (movies have no parent/grandparent rating key); WAL journal mode; plus ``users``,
``library_sections`` (where the Plex server id lives) and ``version_info``.

:class:`FakeTautulli` serves ``/api/v2`` on a loopback port from that file, answering as
Tautulli v2.17.2 does. Read from Tautulli/Tautulli at c7153deb6e3017b8dda46c8448fe548a61c5a47a
(tag v2.17.2), in our own code; each method names the functions it follows:

* ``plexpy/api2.py`` ``_api_validate`` / ``_api_run`` / ``_api_responds``: the envelope
  ``{"response": {"result", "message", "data"}}``, ``data`` ``{}`` when empty. The status
  says little: a wrong or missing key, the API switched off and an unknown command are all
  **400** (``_api_validate`` sets 401 or 404, then ``_api_run`` turns every error but 500
  into 400), told apart only by ``message`` (``Invalid apikey``, ``API not enabled``...); a
  command that raised is 500 ``Check the logs for errors``; one that returned nothing is 400
  without a message.
* ``plexpy/webserve.py`` ``get_activity``: ``{}`` (a success) when Plex does not answer.
* ``get_server_info`` (``plexpy/plextv.py`` ``get_server_resources``): Tautulli's stored
  PMS settings, ``pms_identifier`` ``''`` until Tautulli was connected to Plex once.
* ``get_history`` (``plexpy/webserve.py``, ``plexpy/datafactory.py``
  ``get_datatables_history``, ``plexpy/datatables.py``): filters before grouping, inclusive
  day filters in Tautulli's local time, grouping and in-progress rows on by default
  (``GROUP_HISTORY_TABLES``, ``HISTORY_TABLE_ACTIVITY``), ``recordsTotal`` counting every
  session row, ``order_column`` limited to the table's columns, human durations.
* ``get_users`` (``plexpy/users.py`` ``get_users``): deleted users left out.

:class:`Knobs` set Plex's state (connected, unreachable, never connected) and Tautulli's
settings, and inject faults: failing statuses (a proxy's, or Tautulli's own 500), grouping
ignored, in-progress rows leaking into history, ``rating_key`` as a string on some rows, rows
inserted between page requests, a page held until released. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from itertools import zip_longest
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

SERVER_ID = "8f2c1a9d4b7e6f3a0c5d2e1b9a8f7c6d5e4b3a21"
OWNER_ID = 8312457
API_KEY = "3234af6a723eabfeeeb0cf7c28d7d1c2"  # Tautulli keys are 32 hex digits

SESSION_HISTORY = (
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("reference_id", "INTEGER"),
    ("started", "INTEGER"),
    ("stopped", "INTEGER"),
    ("rating_key", "INTEGER"),
    ("user_id", "INTEGER"),
    ("user", "TEXT"),
    ("ip_address", "TEXT"),
    ("paused_counter", "INTEGER DEFAULT 0"),
    ("player", "TEXT"),
    ("product", "TEXT"),
    ("product_version", "TEXT"),
    ("platform", "TEXT"),
    ("platform_version", "TEXT"),
    ("profile", "TEXT"),
    ("machine_id", "TEXT"),
    ("bandwidth", "INTEGER"),
    ("location", "TEXT"),
    ("quality_profile", "TEXT"),
    ("secure", "INTEGER"),
    ("relayed", "INTEGER"),
    ("parent_rating_key", "INTEGER"),
    ("grandparent_rating_key", "INTEGER"),
    ("media_type", "TEXT"),
    ("section_id", "INTEGER"),
    ("view_offset", "INTEGER DEFAULT 0"),
)
_METADATA_INTEGER = {
    "rating_key",
    "parent_rating_key",
    "grandparent_rating_key",
    "media_index",
    "parent_media_index",
    "year",
    "added_at",
    "updated_at",
    "last_viewed_at",
    "duration",
    "live",
    "channel_id",
    "marker_credits_first",
    "marker_credits_final",
}
_METADATA_NAMES = [
    "id",
    "rating_key",
    "parent_rating_key",
    "grandparent_rating_key",
    "title",
    "parent_title",
    "grandparent_title",
    "original_title",
    "full_title",
    "media_index",
    "parent_media_index",
    "thumb",
    "parent_thumb",
    "grandparent_thumb",
    "art",
    "media_type",
    "year",
    "originally_available_at",
    "added_at",
    "updated_at",
    "last_viewed_at",
    "content_rating",
    "summary",
    "tagline",
    "rating",
    "duration",
    "guid",
    "directors",
    "writers",
    "actors",
    "genres",
    "labels",
    "studio",
    "live",
    "channel_call_sign",
    "channel_id",
    "channel_identifier",
    "channel_title",
    "channel_thumb",
    "channel_vcn",
    "marker_credits_first",
    "marker_credits_final",
]
SESSION_HISTORY_METADATA = tuple(
    (
        name,
        "INTEGER PRIMARY KEY"
        if name == "id"
        else "INTEGER DEFAULT 0"
        if name in ("duration", "live")
        else "INTEGER DEFAULT NULL"
        if name.startswith("marker_")
        else "INTEGER"
        if name in _METADATA_INTEGER
        else "TEXT",
    )
    for name in _METADATA_NAMES
)
_MEDIA_INFO_INTEGER = {
    "rating_key",
    "bitrate",
    "width",
    "height",
    "video_bitrate",
    "video_bit_depth",
    "video_width",
    "video_height",
    "audio_bitrate",
    "audio_channels",
    "subtitles",
    "transcode_audio_channels",
    "transcode_width",
    "transcode_height",
    "transcode_hw_requested",
    "transcode_hw_full_pipeline",
    "transcode_hw_decoding",
    "transcode_hw_encoding",
    "stream_bitrate",
    "stream_video_bitrate",
    "stream_video_bit_depth",
    "stream_video_height",
    "stream_video_width",
    "stream_audio_bitrate",
    "stream_audio_channels",
    "stream_subtitle_forced",
    "synced_version",
    "optimized_version",
}
_MEDIA_INFO_NAMES = [
    "id",
    "rating_key",
    "video_decision",
    "audio_decision",
    "transcode_decision",
    "duration",
    "container",
    "bitrate",
    "width",
    "height",
    "video_bitrate",
    "video_bit_depth",
    "video_codec",
    "video_codec_level",
    "video_width",
    "video_height",
    "video_resolution",
    "video_framerate",
    "video_scan_type",
    "video_full_resolution",
    "video_dynamic_range",
    "aspect_ratio",
    "audio_bitrate",
    "audio_codec",
    "audio_channels",
    "audio_language",
    "audio_language_code",
    "subtitles",
    "subtitle_codec",
    "subtitle_forced",
    "subtitle_language",
    "transcode_protocol",
    "transcode_container",
    "transcode_video_codec",
    "transcode_audio_codec",
    "transcode_audio_channels",
    "transcode_width",
    "transcode_height",
    "transcode_hw_requested",
    "transcode_hw_full_pipeline",
    "transcode_hw_decode",
    "transcode_hw_decode_title",
    "transcode_hw_decoding",
    "transcode_hw_encode",
    "transcode_hw_encode_title",
    "transcode_hw_encoding",
    "stream_container",
    "stream_container_decision",
    "stream_bitrate",
    "stream_video_decision",
    "stream_video_bitrate",
    "stream_video_codec",
    "stream_video_codec_level",
    "stream_video_bit_depth",
    "stream_video_height",
    "stream_video_width",
    "stream_video_resolution",
    "stream_video_framerate",
    "stream_video_scan_type",
    "stream_video_full_resolution",
    "stream_video_dynamic_range",
    "stream_audio_decision",
    "stream_audio_codec",
    "stream_audio_bitrate",
    "stream_audio_channels",
    "stream_audio_language",
    "stream_audio_language_code",
    "stream_subtitle_decision",
    "stream_subtitle_codec",
    "stream_subtitle_container",
    "stream_subtitle_forced",
    "stream_subtitle_language",
    "synced_version",
    "synced_version_profile",
    "optimized_version",
    "optimized_version_profile",
    "optimized_version_title",
]
SESSION_HISTORY_MEDIA_INFO = tuple(
    (
        name,
        "INTEGER PRIMARY KEY"
        if name == "id"
        else "INTEGER DEFAULT 0"
        if name == "duration"
        else ""  # no declared type on a fresh install
        if name == "subtitle_forced"
        else "INTEGER"
        if name in _MEDIA_INFO_INTEGER
        else "TEXT",
    )
    for name in _MEDIA_INFO_NAMES
)
assert len(SESSION_HISTORY) == 26
assert len(SESSION_HISTORY_METADATA) == 42
assert len(SESSION_HISTORY_MEDIA_INFO) == 77

_USERS = (
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("user_id", "INTEGER DEFAULT NULL UNIQUE"),
    ("username", "TEXT NOT NULL"),
    ("friendly_name", "TEXT"),
    ("thumb", "TEXT"),
    ("custom_avatar_url", "TEXT"),
    ("email", "TEXT"),
    ("is_admin", "INTEGER DEFAULT 0"),
    ("is_active", "INTEGER DEFAULT 1"),
    ("deleted_user", "INTEGER DEFAULT 0"),
    ("keep_history", "INTEGER DEFAULT 1"),
)
_LIBRARY_SECTIONS = (
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("server_id", "TEXT"),
    ("section_id", "INTEGER"),
    ("section_name", "TEXT"),
    ("section_type", "TEXT"),
)


def _create(con: sqlite3.Connection, table: str, columns: tuple[tuple[str, str], ...]) -> None:
    body = ", ".join(f'"{name}" {kind}'.strip() for name, kind in columns)
    con.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({body})')


@dataclass
class Play:
    """One stream as Tautulli records it (defaults: a movie on a LAN Roku)."""

    started: int
    stopped: int
    user_id: int = OWNER_ID
    user: str = "alice"
    rating_key: int = 54321
    media_type: str = "movie"
    title: str = "Heat"
    parent_title: str = ""
    grandparent_title: str = ""
    parent_rating_key: int | str = ""
    grandparent_rating_key: int | str = ""
    year: int | str = 1995
    media_index: int | str = ""
    parent_media_index: int | str = ""
    paused_counter: int = 0
    view_offset: int = 0  # ms
    duration_ms: int = 170 * 60_000
    machine_id: str = "roku-livingroom"
    player: str = "Living Room"
    platform: str = "Roku"
    platform_version: str = "12.5"
    product: str = "Plex for Roku"
    product_version: str = "8.4.2.4029"
    ip_address: str = "192.168.1.20"
    location: str = "lan"
    secure: int | None = 1
    relayed: int = 0
    bandwidth: int = 9000
    transcode_decision: str = "direct play"
    video_resolution: str = "1080"
    video_codec: str = "h264"
    audio_codec: str = "eac3"
    audio_channels: int = 6
    stream_bitrate: int = 8000
    continues: int | None = None  # the id of the row this session continues (grouping)

    @property
    def full_title(self) -> str:
        if self.media_type == "episode":
            return f"{self.grandparent_title} - {self.title}"
        return self.title


def episode(started: int, stopped: int, **kw: Any) -> Play:
    """An episode row: show and season keys and titles set."""
    values: dict[str, Any] = {
        "media_type": "episode",
        "title": "Pilot",
        "parent_title": "Season 1",
        "grandparent_title": "Northern Harbor",
        "rating_key": 70001,
        "parent_rating_key": 70000,
        "grandparent_rating_key": 69999,
        "year": 2019,
        "media_index": 1,
        "parent_media_index": 1,
        "duration_ms": 45 * 60_000,
    }
    values.update(kw)
    return Play(started, stopped, **values)


class TautulliDb:
    """A Tautulli SQLite file with the documented history schema."""

    def __init__(self, path: Path, server_id: str | None = SERVER_ID) -> None:
        self.path = Path(path)
        self.server_id = server_id
        con = sqlite3.connect(self.path)
        con.execute("PRAGMA journal_mode=WAL")
        _create(con, "session_history", SESSION_HISTORY)
        _create(con, "session_history_metadata", SESSION_HISTORY_METADATA)
        _create(con, "session_history_media_info", SESSION_HISTORY_MEDIA_INFO)
        _create(con, "users", _USERS)
        _create(con, "library_sections", _LIBRARY_SECTIONS)
        con.execute("CREATE TABLE IF NOT EXISTS version_info (key TEXT UNIQUE, value TEXT)")
        con.execute("INSERT OR IGNORE INTO version_info VALUES ('version', 'v2.17.2')")
        con.execute(
            "INSERT OR IGNORE INTO users (user_id, username, friendly_name, thumb, is_admin) "
            "VALUES (0, 'Local', 'Local', '', 0)"
        )
        if server_id is not None:
            for section_id, name, kind in ((1, "Movies", "movie"), (2, "TV Shows", "show")):
                con.execute(
                    "INSERT INTO library_sections (server_id, section_id, section_name, "
                    "section_type) VALUES (?, ?, ?, ?)",
                    [server_id, section_id, name, kind],
                )
        con.commit()
        self.con = con
        self.add_user(OWNER_ID, "alice", "Alice", admin=True)

    def add_user(self, user_id: int, username: str, friendly: str, *, admin: bool = False) -> None:
        self.con.execute(
            "INSERT OR REPLACE INTO users (user_id, username, friendly_name, thumb, is_admin) "
            "VALUES (?, ?, ?, ?, ?)",
            [user_id, username, friendly, f"https://plex.tv/users/{user_id}/avatar", int(admin)],
        )
        self.con.commit()

    def add(self, play: Play) -> int:
        """Write one finished stream (the three tables, one id); return the id."""
        con = self.con
        cur = con.execute(
            "INSERT INTO session_history (reference_id, started, stopped, rating_key, user_id, "
            "user, ip_address, paused_counter, player, product, product_version, platform, "
            "platform_version, profile, machine_id, bandwidth, location, quality_profile, "
            "secure, relayed, parent_rating_key, grandparent_rating_key, media_type, "
            "section_id, view_offset) "
            "VALUES (0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                play.started,
                play.stopped,
                play.rating_key,
                play.user_id,
                play.user,
                play.ip_address,
                play.paused_counter,
                play.player,
                play.product,
                play.product_version,
                play.platform,
                play.platform_version,
                play.product,
                play.machine_id,
                play.bandwidth,
                play.location,
                "Original",
                play.secure,
                play.relayed,
                play.parent_rating_key,
                play.grandparent_rating_key,
                play.media_type,
                1 if play.media_type == "movie" else 2,
                play.view_offset,
            ],
        )
        row_id = int(cur.lastrowid or 0)
        reference = row_id
        if play.continues is not None:
            (reference,) = con.execute(
                "SELECT reference_id FROM session_history WHERE id = ?", [play.continues]
            ).fetchone()
        con.execute("UPDATE session_history SET reference_id = ? WHERE id = ?", [reference, row_id])
        con.execute(
            "INSERT INTO session_history_metadata (id, rating_key, parent_rating_key, "
            "grandparent_rating_key, title, parent_title, grandparent_title, original_title, "
            "full_title, media_index, parent_media_index, media_type, year, duration, guid, "
            "live) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?, 0)",
            [
                row_id,
                play.rating_key,
                play.parent_rating_key,
                play.grandparent_rating_key,
                play.title,
                play.parent_title,
                play.grandparent_title,
                play.full_title,
                play.media_index,
                play.parent_media_index,
                play.media_type,
                play.year,
                play.duration_ms,
                f"plex://{play.media_type}/{play.rating_key:024x}",
            ],
        )
        con.execute(
            "INSERT INTO session_history_media_info (id, rating_key, video_decision, "
            "audio_decision, transcode_decision, duration, video_resolution, video_codec, "
            "video_dynamic_range, audio_codec, audio_channels, stream_bitrate, "
            "subtitle_forced) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'SDR', ?, ?, ?, '')",
            [
                row_id,
                play.rating_key,
                play.transcode_decision,
                play.transcode_decision,
                play.transcode_decision,
                play.duration_ms,
                play.video_resolution,
                play.video_codec,
                play.audio_codec,
                play.audio_channels,
                play.stream_bitrate,
            ],
        )
        con.commit()
        return row_id

    def records(self) -> list[dict[str, Any]]:
        """Every history row joined the way get_history joins them."""
        cur = self.con.execute(
            "SELECT h.id, h.reference_id, h.started, h.stopped, h.paused_counter, "
            "h.view_offset, h.user_id, h.user, h.platform, h.product, h.player, h.ip_address, "
            "h.machine_id, h.location, h.secure, h.relayed, h.media_type, h.section_id, "
            "m.rating_key, "
            "m.parent_rating_key, m.grandparent_rating_key, m.full_title, m.title, "
            "m.parent_title, m.grandparent_title, m.original_title, m.year, m.media_index, "
            "m.parent_media_index, m.thumb, m.parent_thumb, m.grandparent_thumb, m.live, "
            "m.originally_available_at, m.guid, m.duration, i.transcode_decision, "
            "u.friendly_name AS u_friendly_name, u.username AS u_username, u.thumb AS u_thumb "
            "FROM session_history h "
            "JOIN session_history_metadata m ON m.id = h.id "
            "JOIN session_history_media_info i ON i.id = h.id "
            "LEFT JOIN users u ON u.user_id = h.user_id"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def count(self) -> int:
        """``SELECT COUNT(id) FROM session_history``: get_history's ``recordsTotal``."""
        (total,) = self.con.execute("SELECT COUNT(id) FROM session_history").fetchone()
        return int(total)

    def close(self) -> None:
        self.con.close()


@dataclass
class LiveSession:
    """A stream in progress: in get_activity, and (when ``listed``) in Tautulli's sessions."""

    session_key: int
    play: Play  # ``started`` is when Tautulli first saw it; ``stopped`` is ignored
    state: str = "playing"
    view_offset: int = 0
    listed: bool = True  # Tautulli already wrote it to its sessions table


@dataclass
class Knobs:
    """Tautulli's settings and Plex's state, faults to inject, and hooks into paging."""

    # Plex as Tautulli sees it: "connected"; "unreachable" (get_activity answers ``{}``);
    # "never_connected" (also an empty ``pms_identifier``: Tautulli's config defaults)
    plex: str = "connected"
    api_disabled: bool = False  # Settings > Web Interface > API off
    group_history_tables: bool = True  # GROUP_HISTORY_TABLES: get_history's default grouping
    history_table_activity: bool = True  # HISTORY_TABLE_ACTIVITY: default include_activity
    # faults: statuses answered first per cmd or "*"; 500 is Tautulli's own answer to a
    # command that raised, any other status is what a proxy in front of it answers
    fail: dict[str, list[int]] = field(default_factory=dict)
    always_status: int | None = None  # every request answers this (a dead Tautulli)
    ignore_grouping: bool = False  # groups history whatever ``grouping`` says
    leak_in_progress: bool = False  # in-progress rows even with include_activity=0
    str_rating_key_every: int = 3  # rows whose id is a multiple answer rating_key as a str
    after_page: Callable[[int], None] | None = None  # called with the page number served
    hold_page: int | None = None  # this history page waits for ``release``
    release: asyncio.Event = field(default_factory=asyncio.Event)
    no_owner: bool = False  # get_users lists no admin


COMMANDS = ("get_activity", "get_history", "get_server_info", "get_users")
_COMMAND_LIST = ", ".join(COMMANDS)
# get_history's order_column names (webserve.py get_history: dt_columns); any other is
# skipped, and with none left the rows come unordered (datatables.py build_order)
_ORDERABLE = (
    "date",
    "friendly_name",
    "ip_address",
    "platform",
    "product",
    "player",
    "full_title",
    "started",
    "paused_counter",
    "stopped",
    "duration",
)
_TRUE = ("1", "true", "t", "yes", "y", "on")
WATCHED_PERCENT = 85  # MOVIE_/TV_/MUSIC_WATCHED_PERCENT defaults (config.py)


class FakeTautulli:
    """Tautulli's API v2 on a loopback port, answering from a :class:`TautulliDb`.

    ``local_zone`` is the zone Tautulli runs in: its day filters (``after``, ``before``,
    ``start_date``) compare dates in it.
    """

    def __init__(
        self,
        db: TautulliDb,
        *,
        api_key: str = API_KEY,
        server_id: str = SERVER_ID,
        local_zone: tzinfo = UTC,
    ) -> None:
        self.db = db
        self.api_key = api_key
        self.server_id = server_id
        self.local_zone = local_zone
        self.knobs = Knobs()
        self.live: dict[int, LiveSession] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.statuses: list[int] = []  # the HTTP status of every answer, in order
        self.history_pages = 0
        self._server: TestServer | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeTautulli:
        app = web.Application()
        app.router.add_get("/api/v2", self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.port}"

    def calls(self, cmd: str) -> list[dict[str, str]]:
        return [params for name, params in self.requests if name == cmd]

    # ------------------------------------------------------------------ live sessions

    def start_live(self, session_key: int, play: Play, **kw: Any) -> LiveSession:
        session = LiveSession(session_key, play, **kw)
        self.live[session_key] = session
        return session

    def finish(self, session_key: int, stopped: int, *, paused: int = 0) -> int:
        """The stream ends: Tautulli writes its history row (same ``started``)."""
        session = self.live.pop(session_key)
        play = session.play
        play.stopped, play.paused_counter = stopped, paused
        play.view_offset = session.view_offset
        return self.db.add(play)

    # ------------------------------------------------------------------ the API

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._respond(request)
        self.statuses.append(response.status)
        return response

    async def _respond(self, request: web.Request) -> web.Response:
        """api2.py ``_api_run``: every answer that is not a success is HTTP 400, except 500
        for a command that raised; the reason is only in the body's ``message``."""
        params = dict(request.query)
        cmd = params.get("cmd", "")
        self.requests.append((cmd, params))
        knobs = self.knobs
        if knobs.always_status is not None:
            return _failure(knobs.always_status)
        for name in (cmd, "*"):
            queue = knobs.fail.get(name)
            if queue:
                return _failure(queue.pop(0))
        refusal = self._refusal(params)
        if refusal is not None:
            return _answer(400, "error", refusal)
        try:
            data = await self._command(cmd, params)
        except ValueError:  # e.g. int("x") for start: the command raised
            return _answer(500, "error", "Check the logs for errors")
        if data is None:  # a command that returned nothing is an error without a message
            return _answer(400, "error", None)
        return _answer(200, "success", None, data)

    def _refusal(self, params: dict[str, str]) -> str | None:
        """api2.py ``_api_validate``, in its order: the API switch and Tautulli's own key come
        before the caller's key, and an unknown command before a wrong key."""
        cmd = params.get("cmd")
        if self.knobs.api_disabled:
            return "API not enabled"
        if not self.api_key:
            return "API key not generated"
        if len(self.api_key) != 32:
            return "API key not generated correctly"
        if "apikey" not in params:
            return "Parameter apikey is required"
        if cmd is None:
            return f"Parameter cmd is required. Possible commands are: {_COMMAND_LIST}"
        if cmd not in COMMANDS:
            return f"Unknown command: {cmd}. Possible commands are: {_COMMAND_LIST}"
        if params["apikey"] != self.api_key:
            return "Invalid apikey"
        return None

    async def _command(self, cmd: str, params: dict[str, str]) -> Any:
        if cmd == "get_server_info":
            return self._server_info()
        if cmd == "get_users":
            return self._users()
        if cmd == "get_activity":
            return self._activity(params)
        return await self._history(params)

    def _server_info(self) -> dict[str, Any]:
        """webserve.py ``get_server_info`` -> plextv.py ``get_server_resources(return_info=
        True)``: Tautulli's stored PMS settings (``pms_is_cloud`` removed), so an empty
        ``pms_identifier`` and config defaults until Tautulli was connected to Plex once."""
        if self.knobs.plex == "never_connected":
            return {
                "pms_name": "",
                "pms_version": "",
                "pms_platform": "",
                "pms_ip": "127.0.0.1",
                "pms_port": 32400,
                "pms_ssl": 0,
                "pms_url": "",
                "pms_url_manual": 0,
                "pms_identifier": "",
                "pms_plexpass": 0,
            }
        return {
            "pms_name": "Basement",
            "pms_version": "1.41.3.9314-a0bfb8370",
            "pms_platform": "Linux",
            "pms_ip": "192.168.1.10",
            "pms_port": 32400,
            "pms_ssl": 0,
            "pms_url": "http://192.168.1.10:32400",
            "pms_url_manual": 0,
            "pms_identifier": self.server_id,
            "pms_plexpass": 1,
        }

    def _users(self) -> list[dict[str, Any]]:
        """users.py ``Users.get_users``: deleted users left out, the friendly name falling
        back to the username."""
        cur = self.db.con.execute(
            "SELECT id AS row_id, user_id, username, friendly_name, thumb, custom_avatar_url, "
            "email, is_active, is_admin, keep_history FROM users WHERE deleted_user = 0"
        )
        names = [d[0] for d in cur.description]
        users = []
        for values in cur.fetchall():
            user = dict(zip(names, values, strict=True))
            user["friendly_name"] = user["friendly_name"] or user["username"]
            user["thumb"] = user.pop("custom_avatar_url") or user["thumb"]
            if self.knobs.no_owner:
                user["is_admin"] = 0
            users.append(user)
        return users

    def _activity(self, params: dict[str, str]) -> dict[str, Any]:
        """webserve.py ``get_activity``: ``{}`` when pmsconnect.py ``get_current_activity``
        gets nothing from Plex (unreachable, no token), a success all the same; the counts
        by transcode decision (anything but transcode and copy is direct play) and
        location; ``session_key``/``session_id`` pick one session (``{}`` if none)."""
        if self.knobs.plex != "connected":
            return {}
        sessions = [_activity_session(s) for s in sorted(self.live.values(), key=_by_key)]
        for name in ("session_key", "session_id"):
            if params.get(name):
                return next((s for s in sessions if s[name] == params[name]), {})
        counts = dict.fromkeys(
            (
                "stream_count_direct_play",
                "stream_count_direct_stream",
                "stream_count_transcode",
                "total_bandwidth",
                "lan_bandwidth",
                "wan_bandwidth",
            ),
            0,
        )
        for s in sessions:
            decision = s["transcode_decision"]
            kind = {"transcode": "transcode", "copy": "direct_stream"}.get(decision, "direct_play")
            counts[f"stream_count_{kind}"] += 1
            counts["total_bandwidth"] += int(s["bandwidth"])
            where = "lan" if s["location"] == "lan" else "wan"
            counts[f"{where}_bandwidth"] += int(s["bandwidth"])
        return {"stream_count": str(len(sessions)), "sessions": sessions, **counts}

    async def _history(self, params: dict[str, str]) -> dict[str, Any]:
        """webserve.py ``get_history`` -> datafactory.py ``get_datatables_history`` ->
        datatables.py ``ssp_query``: the filters select session rows *before* they are
        grouped by ``reference_id`` (grouping on) or ``id``; in-progress sessions are a UNION
        filtered alike; ``recordsFiltered`` counts the rows (groups) that result,
        ``recordsTotal`` every session_history row; ``start``/``length`` cut the ordered
        list; ``filter_duration`` is the returned page's play time, ``total_duration`` that
        of every matching session."""
        knobs = self.knobs
        grouping = _flag(params.get("grouping"), knobs.group_history_tables)
        include_activity = _flag(params.get("include_activity"), knobs.history_table_activity)
        wanted = self._where(params)
        records = [r for r in self.db.records() if _matches(r, wanted, self.local_zone)]
        rows = _grouped(records, grouping or knobs.ignore_grouping)
        if include_activity or knobs.leak_in_progress:
            live = [_in_progress_row(s) for s in self.live.values() if s.listed]
            rows += [row for row in live if _matches(row, wanted, self.local_zone)]
        rows = _ordered(rows, params.get("order_column", "date"), params.get("order_dir", "desc"))
        start = int(params.get("start", "0"))
        length = int(params.get("length", "25"))
        page = rows[start : start + length]
        for row in page:
            rk = row["rating_key"]
            every = knobs.str_rating_key_every
            if every and row["row_id"] and row["row_id"] % every == 0 and isinstance(rk, int):
                row["rating_key"] = str(rk)
        self.history_pages += 1
        number = self.history_pages
        if knobs.hold_page is not None and number >= knobs.hold_page:
            await knobs.release.wait()
        if knobs.after_page is not None:
            knobs.after_page(number)
        total = sum(_played(r) for r in records) if records else None
        return {
            "recordsFiltered": len(rows),
            "recordsTotal": self.db.count(),
            "draw": 1,
            "filter_duration": human_duration(sum(r["play_duration"] or 0 for r in page)),
            "total_duration": human_duration(total),
            "data": page,
        }

    def _where(self, params: dict[str, str]) -> list[tuple[str, str, list[str]]]:
        """get_history's filters as (field, comparison, values); several comma-separated
        values match any of them. ``user_id`` wins over ``user``; the day filters are
        inclusive (datatables.py ``build_custom_where`` turns ``<``/``>`` into ``<=``/``>=``)
        and compare the local date of ``started``."""
        wanted: list[tuple[str, str, list[str]]] = []

        def add(name: str, field_name: str, comparison: str = "=") -> bool:
            values = _split(params.get(name, ""))
            if values:
                wanted.append((field_name, comparison, values))
            return bool(values)

        if not add("user_id", "user_id"):
            add("user", "user")
        for name in ("rating_key", "parent_rating_key", "grandparent_rating_key", "section_id"):
            add(name, name)
        add("start_date", "day")
        add("before", "day", "<=")
        add("after", "day", ">=")
        if "all" not in _split(params.get("media_type", "")):
            add("media_type", "media_type_live")
        if "all" not in _split(params.get("transcode_decision", "")):
            add("transcode_decision", "transcode_decision")
        return wanted


def _answer(
    status: int,
    result: str,
    message: str | None,
    data: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """api2.py ``_api_responds``: the envelope, ``data`` ``{}`` when there is none."""
    payload = {} if data is None else data
    body = {"response": {"result": result, "message": message, "data": payload}}
    return web.json_response(body, status=status, headers=headers)


def _failure(status: int) -> web.Response:
    if status == 500:
        return _answer(500, "error", "Check the logs for errors")
    headers = {"Retry-After": "0"} if status == 429 else None
    return web.Response(status=status, text=f"{status} from the proxy", headers=headers)


def _flag(value: str | None, default: bool) -> bool:
    """helpers.py ``bool_true(..., return_none=True)``, None meaning Tautulli's setting."""
    if value is None:
        return default
    return value.lower() in _TRUE


def _split(value: str) -> list[str]:
    """helpers.py ``split_strip``."""
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _matches(row: dict[str, Any], wanted: list[tuple[str, str, list[str]]], zone: tzinfo) -> bool:
    for name, comparison, values in wanted:
        if name == "day":
            have = datetime.fromtimestamp(row["started"], zone).strftime("%Y-%m-%d")
        elif name == "media_type_live":
            have = "live" if row.get("live") else str(row["media_type"])
        else:
            have = str(row.get(name))
        if comparison == "=" and have not in values:
            return False
        if comparison == "<=" and not any(have <= v for v in values):
            return False
        if comparison == ">=" and not any(have >= v for v in values):
            return False
    return True


def _grouped(records: list[dict[str, Any]], grouping: bool) -> list[dict[str, Any]]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        key = record["reference_id"] if grouping else record["id"]
        groups.setdefault(key, []).append(record)
    return [_history_row(members) for members in groups.values()]


def _ordered(rows: list[dict[str, Any]], columns: str, directions: str) -> list[dict[str, Any]]:
    """helpers.py ``build_datatables_json`` + datatables.py ``build_order``: each named
    column in turn (COLLATE NOCASE, NULL first ascending), a direction other than asc or
    desc meaning desc."""
    order = list(zip_longest(_split(columns) or [""], [d.lower() for d in _split(directions)]))
    out = list(rows)
    for column, direction in reversed(order):
        if column not in _ORDERABLE:
            continue

        def key(row: dict[str, Any], column: str = column) -> tuple[int, Any]:
            value = row[column]
            if value is None:
                return (0, 0)
            return (1, value.lower() if isinstance(value, str) else value)

        out.sort(key=key, reverse=direction != "asc")
    return out


def _played(record: dict[str, Any]) -> int:
    stopped, started = record["stopped"] or 0, record["started"] or 0
    return (stopped - started if stopped > 0 else 0) - (record["paused_counter"] or 0)


def human_duration(seconds: int | None) -> str:
    """helpers.py ``human_duration(s, units="s")``: days, hours, minutes, and seconds too
    when the total is under 300000 (a threshold meant in ms, compared with seconds).

    >>> human_duration(3 * 3600 + 4 * 60 + 31)
    '3 hrs 4 mins 31 secs'
    >>> human_duration(400000)
    '4 days 15 hrs 7 mins'
    >>> human_duration(None)
    '0'
    """
    if seconds is None or seconds <= 0:
        return "0"
    if seconds >= 300000:
        seconds = round(seconds / 60) * 60
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    for value, unit in ((days, "day"), (hours, "hr"), (minutes, "min"), (secs, "sec")):
        if value > 0:
            parts.append(f"{value} {unit}{'s' if value > 1 else ''}")
    return " ".join(parts)


def _by_key(session: LiveSession) -> int:
    return session.session_key


def _history_row(members: list[dict[str, Any]]) -> dict[str, Any]:
    """One get_history row from the records of one group, as Tautulli computes it."""
    first = min(members, key=lambda r: r["id"])
    last = max(members, key=lambda r: r["id"])
    started = min(r["started"] for r in members)
    stopped = max(r["stopped"] for r in members)
    played = sum(r["stopped"] - r["started"] for r in members if r["stopped"] > 0) - sum(
        r["paused_counter"] or 0 for r in members
    )
    view_offset = max(r["view_offset"] or 0 for r in members)
    length = last["duration"]
    percent = max((r["view_offset"] or 0.1) / (r["duration"] or 1.0) * 100 for r in members)
    friendly = last["u_friendly_name"]
    if friendly is None or not str(friendly).strip():
        friendly = last["u_username"]
    thumb = last["thumb"]
    if last["media_type"] == "episode":
        thumb = last["parent_thumb"] or last["grandparent_thumb"]
    return {
        "reference_id": first["reference_id"],
        "row_id": last["id"],
        "id": last["id"],
        "date": max(r["started"] for r in members),
        "started": started,
        "stopped": stopped,
        "duration": played,
        "play_duration": played,
        "paused_counter": sum(r["paused_counter"] or 0 for r in members),
        "user_id": last["user_id"],
        "user": last["user"],
        "friendly_name": friendly,
        "user_thumb": last["u_thumb"] or "interfaces/default/images/gravatar-default-80x80.png",
        "platform": last["platform"],
        "product": last["product"],
        "player": last["player"],
        "ip_address": last["ip_address"],
        "live": last["live"],
        "machine_id": last["machine_id"],
        "location": last["location"],
        "secure": last["secure"],
        "relayed": last["relayed"],
        "media_type": last["media_type"],
        "rating_key": last["rating_key"],
        "parent_rating_key": last["parent_rating_key"],
        "grandparent_rating_key": last["grandparent_rating_key"],
        "full_title": last["full_title"],
        "title": last["title"],
        "parent_title": last["parent_title"],
        "grandparent_title": last["grandparent_title"],
        "original_title": last["original_title"],
        "year": last["year"],
        "media_index": last["media_index"],
        "parent_media_index": last["parent_media_index"],
        "thumb": thumb,
        "originally_available_at": last["originally_available_at"],
        "guid": last["guid"],
        "transcode_decision": last["transcode_decision"],
        "percent_complete": 100 if last["live"] else round(percent),
        "watched_status": _watched_status(bool(last["live"]), view_offset, length, percent),
        "group_count": len(members),
        "group_ids": ",".join(str(r["id"]) for r in sorted(members, key=lambda r: r["id"])),
        "state": None,
        "session_key": None,
    }


def _watched_status(live: bool, view_offset: int, length: int | None, percent: float) -> float:
    """datafactory.py ``get_datatables_history``: 1 when watched (helpers.py
    ``check_watched``: the offset reached 85 % of the length; no credits markers here), else
    quarter buckets of that threshold."""
    if live or (length and view_offset >= WATCHED_PERCENT / 100 * length):
        return 1
    quarter = WATCHED_PERCENT / 4
    for share in (0.75, 0.5, 0.25):
        if percent >= quarter * share * 4:
            return share
    return 0


def _in_progress_row(session: LiveSession) -> dict[str, Any]:
    """The row include_activity=1 adds for a stream still running."""
    play = session.play
    return {
        "reference_id": None,
        "row_id": None,
        "id": None,
        "date": play.started,
        "started": play.started,
        "stopped": 0,
        "duration": 0,
        "play_duration": 0,
        "paused_counter": 0,
        "user_id": play.user_id,
        "user": play.user,
        "friendly_name": play.user,
        "user_thumb": None,
        "platform": play.platform,
        "product": play.product,
        "player": play.player,
        "ip_address": play.ip_address,
        "live": 0,
        "machine_id": play.machine_id,
        "location": play.location,
        "secure": play.secure,
        "relayed": play.relayed,
        "media_type": play.media_type,
        "rating_key": play.rating_key,
        "parent_rating_key": play.parent_rating_key,
        "grandparent_rating_key": play.grandparent_rating_key,
        "full_title": play.full_title,
        "title": play.title,
        "parent_title": play.parent_title,
        "grandparent_title": play.grandparent_title,
        "original_title": "",
        "year": play.year,
        "media_index": play.media_index,
        "parent_media_index": play.parent_media_index,
        "thumb": "",
        "originally_available_at": "",
        "guid": "",
        "transcode_decision": play.transcode_decision,
        "percent_complete": round(session.view_offset / play.duration_ms * 100),
        "watched_status": 0,
        "group_count": None,
        "group_ids": None,
        "state": session.state,
        "session_key": session.session_key,
    }


def _activity_session(session: LiveSession) -> dict[str, Any]:
    """A get_activity session: PMS values copied as strings, a few ints."""
    play = session.play
    return {
        "session_key": str(session.session_key),
        "session_id": f"sess{session.session_key:06d}",
        "state": session.state,
        "user_id": play.user_id,
        "user": play.user,
        "username": play.user,
        "friendly_name": play.user.title(),
        "user_thumb": f"https://plex.tv/users/{play.user_id}/avatar",
        "media_type": play.media_type,
        "rating_key": str(play.rating_key),
        "parent_rating_key": str(play.parent_rating_key),
        "grandparent_rating_key": str(play.grandparent_rating_key),
        "title": play.title,
        "parent_title": play.parent_title,
        "grandparent_title": play.grandparent_title,
        "full_title": play.full_title,
        "year": str(play.year),
        "media_index": str(play.media_index),
        "view_offset": str(session.view_offset),
        "duration": str(play.duration_ms),
        "progress_percent": str(round(session.view_offset / play.duration_ms * 100)),
        "machine_id": play.machine_id,
        "player": play.player,
        "product": play.product,
        "product_version": play.product_version,
        "platform": play.platform,
        "platform_version": play.platform_version,
        "device": play.player,
        "ip_address": play.ip_address,
        "ip_address_public": "203.0.113.7",
        "location": play.location,
        "local": 1 if play.location == "lan" else 0,
        "relayed": play.relayed,
        "secure": play.secure,
        "live": 0,
        "transcode_decision": play.transcode_decision,
        "quality_profile": "Original",
        "bandwidth": str(play.bandwidth),
        "video_resolution": play.video_resolution,
        "video_codec": play.video_codec,
        "audio_codec": play.audio_codec,
        "audio_channels": str(play.audio_channels),
        "stream_bitrate": str(play.stream_bitrate),
        "guid": f"plex://{play.media_type}/{play.rating_key:024x}",
        # PMS's librarySectionID / librarySectionTitle (the sections TautulliDb writes)
        "section_id": "1" if play.media_type == "movie" else "2",
        "library_name": "Movies" if play.media_type == "movie" else "TV Shows",
    }


__all__ = [
    "API_KEY",
    "OWNER_ID",
    "SERVER_ID",
    "FakeTautulli",
    "Knobs",
    "LiveSession",
    "Play",
    "TautulliDb",
    "episode",
]
