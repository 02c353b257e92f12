"""A fake Tautulli: a real-schema SQLite history file and an API v2 server reading it.

:class:`TautulliDb` writes ``tautulli.db`` the way Tautulli does: one row per finished stream
in each of ``session_history`` (26 columns), ``session_history_metadata`` (42) and
``session_history_media_info`` (77), sharing ``id``; ``''`` in INTEGER columns for missing
values (movies have no parent/grandparent rating key); WAL journal mode; plus ``users``,
``library_sections`` (where the Plex server id lives) and ``version_info``.

:class:`FakeTautulli` serves ``/api/v2`` on a loopback port from that file, computing rows as
Tautulli's ``get_datatables_history`` does (its own code here, independent of the ingestor's
importer): the ``{"response": {...}}`` envelope, ``get_history`` with grouping (default on),
``include_activity``, filters, ordering and ``start``/``length`` paging, ``get_activity``,
``get_server_info`` and ``get_users``. Knobs inject what real servers do: a wrong key (401),
the API switched off (404), failing statuses, grouping ignored, in-progress rows leaking into
history, ``rating_key`` as a string on some rows, rows inserted between page requests, a page
held until released. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

SERVER_ID = "8f2c1a9d4b7e6f3a0c5d2e1b9a8f7c6d5e4b3a21"
OWNER_ID = 8312457
API_KEY = "tautulli-test-key"

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
            "h.machine_id, h.location, h.secure, h.relayed, h.media_type, m.rating_key, "
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
    """What the fake does wrong, and hooks into its paging."""

    fail: dict[str, list[int]] = field(default_factory=dict)  # cmd or "*" -> statuses first
    always_status: int | None = None  # every request answers this (a dead Tautulli)
    api_disabled: bool = False
    ignore_grouping: bool = False  # groups history whatever ``grouping`` says
    leak_in_progress: bool = False  # in-progress rows in get_history without include_activity
    str_rating_key_every: int = 3  # rows whose id is a multiple answer rating_key as a str
    after_page: Callable[[int], None] | None = None  # called with the page number served
    hold_page: int | None = None  # this history page waits for ``release``
    release: asyncio.Event = field(default_factory=asyncio.Event)
    no_owner: bool = False  # get_users lists no admin


class FakeTautulli:
    """Tautulli's API v2 on a loopback port, answering from a :class:`TautulliDb`."""

    def __init__(
        self, db: TautulliDb, *, api_key: str = API_KEY, server_id: str = SERVER_ID
    ) -> None:
        self.db = db
        self.api_key = api_key
        self.server_id = server_id
        self.knobs = Knobs()
        self.live: dict[int, LiveSession] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
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
        params = dict(request.query)
        cmd = params.get("cmd", "")
        self.requests.append((cmd, params))
        knobs = self.knobs
        if knobs.always_status is not None:
            return _answer(knobs.always_status, "error", "Internal server error")
        for name in (cmd, "*"):
            queue = knobs.fail.get(name)
            if queue:
                status = queue.pop(0)
                headers = {"Retry-After": "0"} if status == 429 else None
                return _answer(status, "error", f"failing with {status}", headers=headers)
        if knobs.api_disabled:
            return _answer(404, "error", "API not enabled")
        if params.get("apikey") != self.api_key:
            return _answer(401, "error", "Invalid apikey")
        if cmd == "get_server_info":
            return _answer(200, "success", None, self._server_info())
        if cmd == "get_users":
            return _answer(200, "success", None, self._users())
        if cmd == "get_activity":
            return _answer(200, "success", None, self._activity())
        if cmd == "get_history":
            data = await self._history(params)
            return _answer(200, "success", None, data)
        return _answer(400, "error", f"Unknown command: {cmd}")

    def _server_info(self) -> dict[str, Any]:
        return {
            "pms_identifier": self.server_id,
            "pms_ip": "192.168.1.10",
            "pms_is_remote": 0,
            "pms_name": "Basement",
            "pms_platform": "Linux",
            "pms_plexpass": 1,
            "pms_port": 32400,
            "pms_ssl": 0,
            "pms_url": "http://192.168.1.10:32400",
            "pms_url_manual": 0,
            "pms_version": "1.41.3.9314-a0bfb8370",
        }

    def _users(self) -> list[dict[str, Any]]:
        rows = self.db.con.execute(
            "SELECT user_id, username, friendly_name, thumb, is_admin FROM users"
        ).fetchall()
        return [
            {
                "row_id": i + 1,
                "user_id": user_id,
                "username": username,
                "friendly_name": friendly,
                "thumb": thumb,
                "is_admin": 0 if self.knobs.no_owner else is_admin,
                "is_active": 1,
            }
            for i, (user_id, username, friendly, thumb, is_admin) in enumerate(rows)
        ]

    def _activity(self) -> dict[str, Any]:
        sessions = [_activity_session(s) for s in sorted(self.live.values(), key=_by_key)]
        return {
            "stream_count": str(len(sessions)),
            "sessions": sessions,
            "stream_count_direct_play": sum(
                1 for s in sessions if s["transcode_decision"] == "direct play"
            ),
            "stream_count_direct_stream": sum(
                1 for s in sessions if s["transcode_decision"] == "copy"
            ),
            "stream_count_transcode": sum(
                1 for s in sessions if s["transcode_decision"] == "transcode"
            ),
            "total_bandwidth": sum(int(s["bandwidth"]) for s in sessions),
            "lan_bandwidth": 0,
            "wan_bandwidth": 0,
        }

    async def _history(self, params: dict[str, str]) -> dict[str, Any]:
        knobs = self.knobs
        grouping = params.get("grouping", "1") != "0" or knobs.ignore_grouping
        rows = self._grouped_rows(grouping)
        if params.get("include_activity") == "1" or knobs.leak_in_progress:
            rows += [_in_progress_row(s) for s in self.live.values() if s.listed]
        total = len(rows)
        for name in ("user_id", "rating_key"):
            if params.get(name):
                rows = [r for r in rows if str(r[name]) == params[name]]
        if params.get("after"):
            rows = [r for r in rows if _day(r["started"]) >= params["after"]]
        column = params.get("order_column", "date")
        if column not in ("date", "started", "stopped"):
            column = "date"
        descending = params.get("order_dir", "desc") == "desc"
        rows.sort(key=lambda r: (r[column] or 0, r["row_id"] or 0), reverse=descending)
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
        return {
            "recordsFiltered": len(rows),
            "recordsTotal": total,
            "draw": 1,
            "filter_duration": "",
            "total_duration": "",
            "data": page,
        }

    def _grouped_rows(self, grouping: bool) -> list[dict[str, Any]]:
        groups: dict[int, list[dict[str, Any]]] = {}
        for record in self.db.records():
            key = record["reference_id"] if grouping else record["id"]
            groups.setdefault(key, []).append(record)
        return [_history_row(members) for members in groups.values()]


def _answer(
    status: int,
    result: str,
    message: str | None,
    data: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    payload = {} if data is None else data
    body = {"response": {"result": result, "message": message, "data": payload}}
    return web.json_response(body, status=status, headers=headers)


def _day(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


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
        "watched_status": 1 if length and view_offset >= 0.85 * length else 0,
        "group_count": len(members),
        "group_ids": ",".join(str(r["id"]) for r in sorted(members, key=lambda r: r["id"])),
        "state": None,
        "session_key": None,
    }


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
