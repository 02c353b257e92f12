"""History from before install, in the real formats, for tests: a Playback Reporting SQLite
database, a Jellystat backup file, and a fake PMS serving ``/status/sessions/history/all``.

Sources of the formats (read, not copied):

* Playback Reporting: jellyfin/jellyfin-plugin-playbackreporting @
  694a56a0806af128acb3bb0ac670bf9205be018d, ``Jellyfin.Plugin.PlaybackReporting/Data/
  ActivityRepository.cs`` (the CREATE TABLE below, column for column), ``Data/
  SqliteExtensions.cs`` (DateCreated text ``yyyy-MM-dd HH:mm:ss.FFFFFFF``, server local time),
  ``EventMonitorEntryPoint.cs`` (row written 20 s after the start; ItemName and
  PlaybackMethod shapes), ``Data/PlaybackTracker.cs`` (PlayDuration: seconds played).
* Jellystat: CyferShepard/Jellystat @ 3fae9f7e168a8c4728892793c2bebfae78e4c34b,
  ``backend/classes/backup.js`` (``JSON.stringify([{table: rows}, ...])``),
  ``backend/global/backup_tables.js`` (the tables), ``backend/migrations/007``, ``038``,
  ``043`` (jf_playback_activity's columns), ``backend/models/jf_playback_activity.js`` and
  ``backend/tasks/ActivityMonitor.js`` (values: NowPlayingItemId is the series for an
  episode, ActivityDateInserted the end), ``migrations/068`` (rows imported from Playback
  Reporting).
* Plex: pkkid/python-plexapi @ a8d051f29bbadca28dc9bd4bf50f1fb76d0fb77a ``plexapi/server.py``
  history(), ``plexapi/base.py`` PlexHistory and fetchItems (paging headers, ``totalSize``);
  LukeHagar/plexjs @ 2b38478255ecc955a3afc05dca5e5a95595efcbf
  ``docs/sdk/models/operations/getsessionhistoryresponse.md`` (a JSON entry).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

JELLYFIN_SERVER_ID = "f2a6c1d0b9e84c7a8d3e5f60718293a4"
JELLYFIN_USER_ID = "4b1c7e2d9a8f4e3b8c6d5a4f3e2d1c0b"
DEVICE_ID = "TW96aWxsYS81LjAgKFgxMTsgTGludXggeDg2XzY0KQ11"

# Data/ActivityRepository.cs InitializeInternal, verbatim in its SQL meaning
PLAYBACK_ACTIVITY_DDL = (
    "create table if not exists PlaybackActivity ("
    "DateCreated DATETIME NOT NULL, UserId TEXT, ItemId TEXT, ItemType TEXT, ItemName TEXT,"
    " PlaybackMethod TEXT, ClientName TEXT, DeviceName TEXT, PlayDuration INT)"
)


def plugin_date(local: datetime) -> str:
    """A local ``DateTime`` as the plugin stores it (``yyyy-MM-dd HH:mm:ss.FFFFFFF``: the
    fraction without trailing zeros, and without the dot when it is zero)."""
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    fraction = f"{local.microsecond:06d}0".rstrip("0")
    return f"{text}.{fraction}" if fraction else text


@dataclass
class Activity:
    """One PlaybackActivity row."""

    date_created: str
    item_id: str
    item_name: str = "Heat"
    item_type: str = "Movie"
    user_id: str = JELLYFIN_USER_ID
    method: str = "DirectPlay"
    client: str = "Jellyfin Web"
    device_name: str = "Chrome"
    duration: Any = 3600


class PlaybackReportingDb:
    """A ``playback_reporting.db`` with the plugin's schema (plus its UserList table)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.con = sqlite3.connect(path)
        self.con.execute(PLAYBACK_ACTIVITY_DDL)
        self.con.execute("create table if not exists UserList (UserId TEXT)")
        self.con.commit()

    def add(self, row: Activity) -> None:
        self.con.execute(
            "insert into PlaybackActivity (DateCreated, UserId, ItemId, ItemType, ItemName,"
            " PlaybackMethod, ClientName, DeviceName, PlayDuration)"
            " values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                row.date_created,
                row.user_id,
                row.item_id,
                row.item_type,
                row.item_name,
                row.method,
                row.client,
                row.device_name,
                row.duration,
            ],
        )
        self.con.commit()

    def close(self) -> None:
        self.con.close()


def js_time(value: datetime) -> str:
    """A timestamptz as node-postgres + JSON.stringify write it (ms, ``Z``)."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def jellystat_activity(
    row_id: str,
    *,
    ended: datetime,
    seconds: int,
    item_id: str,
    episode_id: str | None = None,
    name: str = "Heat",
    series: str | None = None,
    device_id: str | None = DEVICE_ID,
    server_id: str | None = JELLYFIN_SERVER_ID,
    imported: bool = False,
    position_s: int | None = None,
) -> dict[str, Any]:
    """A ``jf_playback_activity`` row, keys in the table's column order."""
    state = None
    if position_s is not None:
        state = {
            "CanSeek": True,
            "IsPaused": False,
            "IsMuted": False,
            "PositionTicks": position_s * 10_000_000,
            "PlayMethod": "DirectPlay",
            "RepeatMode": "RepeatNone",
        }
    return {
        "Id": row_id,
        "IsPaused": False,
        "UserId": JELLYFIN_USER_ID,
        "UserName": "alice",
        "Client": "Jellyfin Web",
        "DeviceName": "Chrome",
        "DeviceId": device_id,
        "ApplicationVersion": None if imported else "10.10.3",
        "NowPlayingItemId": item_id,
        "NowPlayingItemName": name,
        "SeasonId": None,
        "SeriesName": series,
        "EpisodeId": episode_id,
        "PlaybackDuration": str(seconds),  # bigint: node-postgres returns it as a string
        "ActivityDateInserted": js_time(ended),
        "PlayMethod": "DirectPlay",
        "MediaStreams": None,
        "TranscodingInfo": None,
        "PlayState": state,
        "OriginalContainer": None if imported else "mkv",
        "RemoteEndPoint": None if imported else "192.168.1.20",
        "ServerId": server_id,
        "imported": imported,
    }


def jellystat_backup(
    path: Path,
    activity: list[dict[str, Any]] | None,
    items: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a backup file as Jellystat does: one JSON list of ``{table: rows}``."""
    tables: list[dict[str, Any]] = [
        {"jf_libraries": []},
        {"jf_library_items": items or []},
        {"jf_library_seasons": []},
        {"jf_library_episodes": []},
        {"jf_users": [{"Id": JELLYFIN_USER_ID, "Name": "alice"}]},
    ]
    if activity is not None:
        tables.append({"jf_playback_activity": activity})
    tables += [{"jf_playback_reporting_plugin_data": []}, {"jf_item_info": []}]
    path.write_text(json.dumps(tables))
    return path


def library_item(item_id: str, item_type: str = "Movie", minutes: int = 170) -> dict[str, Any]:
    return {
        "Id": item_id,
        "Name": "Heat",
        "ServerId": JELLYFIN_SERVER_ID,
        "RunTimeTicks": minutes * 60 * 10_000_000,
        "ProductionYear": 1995,
        "Type": item_type,
    }


# ---------------------------------------------------------------------------------------
# Plex


PLEX_SERVER_ID = "5d4f5c0a1e2b3c4d5e6f708192a3b4c5d6e7f809"


def history_entry(
    history_id: int, viewed_at: int, *, rating_key: str = "54321", account_id: int = 1
) -> dict[str, Any]:
    """One ``/status/sessions/history/all`` entry of an episode, as PMS sends it in JSON."""
    return {
        "historyKey": f"/status/sessions/history/{history_id}",
        "key": f"/library/metadata/{rating_key}",
        "ratingKey": rating_key,
        "librarySectionID": "2",
        "parentKey": "/library/metadata/54300",
        "grandparentKey": "/library/metadata/54299",
        "title": "The Noise That Blue Makes",
        "grandparentTitle": "Taskmaster",
        "type": "episode",
        "thumb": f"/library/metadata/{rating_key}/thumb/-1",
        "parentThumb": "/library/metadata/54300/thumb/1654134301",
        "grandparentThumb": "/library/metadata/54299/thumb/1703933346",
        "grandparentArt": "/library/metadata/54299/art/1703933346",
        "index": 1,
        "parentIndex": 13,
        "originallyAvailableAt": "2022-04-14",
        "viewedAt": viewed_at,
        "accountID": account_id,
        "deviceID": 5,
    }


class FakePlexHistory:
    """A loopback PMS answering ``/identity`` and ``/status/sessions/history/all`` (JSON,
    ``sort=viewedAt:asc|desc``, the ``viewedAt>=``/``viewedAt<=`` filters, paged by the
    ``X-Plex-Container-Start``/``-Size`` headers with ``totalSize``); 401 for a wrong token.
    ``requests`` records each history request's (start, size, query)."""

    def __init__(self, token: str = "plex-token") -> None:
        self.token = token
        self.entries: list[dict[str, Any]] = []
        self.requests: list[tuple[int, int, dict[str, str]]] = []
        self.calls: Counter[str] = Counter()
        app = web.Application()
        app.router.add_get("/identity", self._identity)
        app.router.add_get("/status/sessions/history/all", self._history)
        self._server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self._server.make_url("")).rstrip("/")

    async def __aenter__(self) -> FakePlexHistory:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()

    def _authorised(self, request: web.Request) -> bool:
        self.calls[request.path] += 1
        given = request.headers.get("X-Plex-Token") or request.query.get("X-Plex-Token")
        return given == self.token

    async def _identity(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401, text="Unauthorized")
        return web.json_response(
            {"MediaContainer": {"size": 0, "machineIdentifier": PLEX_SERVER_ID}}
        )

    async def _history(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401, text="Unauthorized")
        query = dict(request.query)
        start = int(request.headers.get("X-Plex-Container-Start", "0"))
        size = int(request.headers.get("X-Plex-Container-Size", "50"))
        self.requests.append((start, size, query))
        rows = list(self.entries)
        # "viewedAt>=N" arrives as the key "viewedAt>" with the value N
        if "viewedAt>" in query:
            rows = [r for r in rows if r["viewedAt"] >= int(query["viewedAt>"])]
        if "viewedAt<" in query:
            rows = [r for r in rows if r["viewedAt"] <= int(query["viewedAt<"])]
        descending = query.get("sort", "viewedAt:desc").endswith(":desc")
        rows.sort(key=lambda r: (r["viewedAt"], r["historyKey"]), reverse=descending)
        page = rows[start : start + size]
        container: dict[str, Any] = {"size": len(page), "totalSize": len(rows), "offset": start}
        if page:
            container["Metadata"] = page
        return web.json_response({"MediaContainer": container})
