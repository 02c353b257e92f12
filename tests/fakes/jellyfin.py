"""A fake Jellyfin or Emby server on loopback, speaking the documented formats.

REST: ``GET /System/Info`` and ``GET /Sessions`` (token required, like the real servers),
``GET /System/Info/Public`` (no token); for Emby under ``/emby``, as its clients call them.
WebSocket: a real aiohttp ``WebSocketResponse`` on ``/socket`` (Jellyfin) or
``/embywebsocket`` (Emby) only, so a client that opens the wrong path fails. Like the real
server it checks the token (header ``Authorization: MediaBrowser Token="..."``,
``X-Emby-Token``, or the ``api_key`` query), sends ``ForceKeepAlive`` right after the
upgrade, answers each ``KeepAlive``, and pushes ``Sessions`` (the full list, compact JSON with
a ``MessageId``) only to connections that subscribed with ``SessionsStart``.

The test drives it: :meth:`push` sets the sessions and pushes them, :meth:`drop` closes every
socket, :meth:`force_keepalive` asks for a ``KeepAlive``. It records what each connection
sent. Builders of realistic ``SessionInfoDto`` entries and webhook plugin notifications are at
the end.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.conftest import free_port

_TOKEN = re.compile(r'Token="([^"]*)"')


@dataclass
class FakeConnection:
    """One accepted WebSocket and what its client sent."""

    ws: web.WebSocketResponse
    path: str
    query: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)

    @property
    def subscriptions(self) -> list[Any]:
        """The ``Data`` of every ``SessionsStart`` the client sent."""
        return [m.get("Data") for m in self.received if m.get("MessageType") == "SessionsStart"]

    @property
    def keepalives(self) -> int:
        return sum(1 for m in self.received if m.get("MessageType") == "KeepAlive")


class FakeMediaServer:
    """A Jellyfin (``flavour="jellyfin"``) or Emby (``"emby"``) server for one test."""

    def __init__(
        self,
        flavour: str = "jellyfin",
        *,
        api_key: str = "0123456789abcdef0123456789abcdef",
        server_id: str | None = None,
        reject_socket: int | None = None,
    ) -> None:
        self.flavour = flavour
        self.api_key = api_key
        self.server_id = server_id or uuid.uuid4().hex
        self.reject_socket = reject_socket  # accept REST, refuse the upgrade with this status
        self.answer_keepalive = True  # False: a server gone silent (the socket stays open)
        self.sessions: list[dict[str, Any]] = []
        self.connections: list[FakeConnection] = []
        self.rejected = 0  # requests refused for their token
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self.socket_path = "/socket" if flavour == "jellyfin" else "/embywebsocket"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> list[FakeConnection]:
        return [c for c in self.connections if not c.ws.closed]

    @property
    def subscribed(self) -> list[FakeConnection]:
        return [c for c in self.open_connections if c.subscriptions]

    async def start(self) -> FakeMediaServer:
        app = web.Application()
        api = "" if self.flavour == "jellyfin" else "/emby"  # Emby's REST API is under /emby
        app.router.add_get(f"{api}/System/Info/Public", self._info_public)
        app.router.add_get(f"{api}/System/Info", self._info)
        app.router.add_get(f"{api}/Sessions", self._sessions)
        app.router.add_get(self.socket_path, self._socket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        await self.drop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeMediaServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ driving it

    async def push(self, sessions: list[dict[str, Any]]) -> int:
        """Make ``sessions`` the current list and push it; return how many sockets got it."""
        self.sessions = sessions
        return await self.send({"MessageType": "Sessions", "Data": sessions}, subscribed=True)

    async def send(self, message: dict[str, Any] | str, *, subscribed: bool = False) -> int:
        """Send a frame (a message, or raw text) to every open (or subscribed) socket."""
        if isinstance(message, dict):
            message = {**message, "MessageId": uuid.uuid4().hex}
            text = json.dumps(message, separators=(",", ":"))
        else:
            text = message
        targets = self.subscribed if subscribed else self.open_connections
        for connection in targets:
            await connection.ws.send_str(text)
        return len(targets)

    async def force_keepalive(self, timeout: int = 60) -> int:
        return await self.send({"MessageType": "ForceKeepAlive", "Data": timeout})

    async def drop(self) -> None:
        """Close every open socket, as a restarting server or a network cut would."""
        for connection in self.open_connections:
            await connection.ws.close(code=1001, message=b"going away")

    # ------------------------------------------------------------------ handlers

    def _authorised(self, request: web.Request) -> bool:
        tokens = {request.headers.get("X-Emby-Token", ""), request.query.get("api_key", "")}
        match = _TOKEN.search(request.headers.get("Authorization", ""))
        if match:
            tokens.add(match.group(1))
        if self.api_key in tokens:
            return True
        self.rejected += 1
        return False

    def _info_body(self) -> dict[str, Any]:
        return {
            "LocalAddress": self.url,
            "ServerName": f"fake-{self.flavour}",
            "Version": "10.10.7" if self.flavour == "jellyfin" else "4.8.11.0",
            "ProductName": "Jellyfin Server" if self.flavour == "jellyfin" else "Emby Server",
            "Id": self.server_id,
            "StartupWizardCompleted": True,
        }

    async def _info_public(self, _: web.Request) -> web.Response:
        return web.json_response(self._info_body())

    async def _info(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401, text="Unauthorized")
        return web.json_response({**self._info_body(), "OperatingSystem": "Linux"})

    async def _sessions(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401, text="Unauthorized")
        return web.json_response(self.sessions)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if self.reject_socket is not None:
            self.rejected += 1
            return web.Response(status=self.reject_socket, text="refused")
        if not self._authorised(request):
            return web.Response(status=401, text="Unauthorized")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        connection = FakeConnection(ws, request.path, dict(request.query))
        self.connections.append(connection)
        await ws.send_str(
            json.dumps(
                {"MessageType": "ForceKeepAlive", "MessageId": uuid.uuid4().hex, "Data": 60},
                separators=(",", ":"),
            )
        )
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
            except json.JSONDecodeError:
                continue
            connection.received.append(data)
            if data.get("MessageType") == "KeepAlive" and self.answer_keepalive:
                await ws.send_str(
                    json.dumps(
                        {"MessageType": "KeepAlive", "MessageId": uuid.uuid4().hex},
                        separators=(",", ":"),
                    )
                )
        return ws


async def eventually(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait (without blocking the loop) until ``condition()`` is true, or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------
# SessionInfoDto builders

TICKS_PER_SECOND = 10_000_000


def movie(
    item_id: str | None = None, name: str = "Heat", minutes: int = 170, year: int = 1995
) -> dict[str, Any]:
    """A ``NowPlayingItem`` of a movie (``item_id`` 32-hex for Jellyfin, digits for Emby)."""
    return {
        "Name": name,
        "ServerId": "",
        "Id": item_id or uuid.uuid4().hex,
        "RunTimeTicks": minutes * 60 * TICKS_PER_SECOND,
        "ProductionYear": year,
        "Type": "Movie",
        "MediaType": "Video",
        "IsFolder": False,
        "MediaStreams": [
            {"Codec": "hevc", "Type": "Video", "Index": 0, "Height": 2160, "Width": 3840,
             "BitRate": 48_000_000},
            {"Codec": "eac3", "Type": "Audio", "Index": 1, "Channels": 6, "IsDefault": True},
            {"Codec": "subrip", "Type": "Subtitle", "Index": 2},
        ],
    }  # fmt: skip


def episode(
    item_id: str | None = None,
    name: str = "Pilot",
    series: str = "Northern Harbor",
    season: int = 1,
    minutes: int = 45,
) -> dict[str, Any]:
    return {
        "Name": name,
        "Id": item_id or uuid.uuid4().hex,
        "RunTimeTicks": minutes * 60 * TICKS_PER_SECOND,
        "Type": "Episode",
        "MediaType": "Video",
        "SeriesName": series,
        "SeriesId": uuid.uuid4().hex,
        "SeasonName": f"Season {season}",
        "SeasonId": uuid.uuid4().hex,
        "IndexNumber": 1,
        "ParentIndexNumber": season,
        "MediaStreams": [
            {"Codec": "h264", "Type": "Video", "Index": 0, "Height": 1080, "Width": 1920},
            {"Codec": "aac", "Type": "Audio", "Index": 1, "Channels": 2},
        ],
    }


def session(
    *,
    server_id: str,
    session_id: str,
    user_id: str,
    item: dict[str, Any] | None = None,
    position_s: float = 0.0,
    paused: bool = False,
    play_method: str = "DirectPlay",
    user_name: str = "alice",
    client: str = "Jellyfin Web",
    device_name: str = "Chrome",
    device_id: str = "TW96aWxsYS81LjAgKFgxMTsgTGludXggeDg2XzY0KQ11",
    remote: str = "192.168.1.20",
    emby: bool = False,
) -> dict[str, Any]:
    """One ``Sessions`` entry; idle (no ``NowPlayingItem``) when ``item`` is None."""
    state: dict[str, Any] = {
        "CanSeek": item is not None,
        "IsPaused": paused,
        "IsMuted": False,
        "RepeatMode": "RepeatNone",
    }
    if item is not None:
        state |= {
            "PositionTicks": int(position_s * TICKS_PER_SECOND),
            "VolumeLevel": 100,
            "AudioStreamIndex": 1,
            "SubtitleStreamIndex": -1,
            "MediaSourceId": item["Id"],
            "PlayMethod": play_method,
        }
    entry: dict[str, Any] = {
        "PlayState": state,
        "AdditionalUsers": [],
        "RemoteEndPoint": remote,
        "PlayableMediaTypes": ["Audio", "Video"],
        "Id": session_id,
        "UserId": user_id,
        "UserName": user_name,
        "Client": client,
        "LastActivityDate": "2026-01-05T20:00:00.0000000Z",
        "DeviceName": device_name,
        "DeviceId": device_id,
        "ApplicationVersion": "10.10.7",
        "ServerId": server_id,
        "SupportsRemoteControl": True,
    }
    if emby:
        entry |= {"InternalDeviceId": 41, "AppIconUrl": "", "PlaylistIndex": 0}
    else:
        entry |= {
            "Capabilities": {
                "PlayableMediaTypes": ["Audio", "Video"],
                "SupportedCommands": ["VolumeUp", "VolumeDown", "Mute"],
                "SupportsMediaControl": True,
                "SupportsPersistentIdentifier": False,
            },
            "LastPlaybackCheckIn": "2026-01-05T20:00:00.0000000Z",
            "IsActive": True,
            "SupportsMediaControl": True,
            "HasCustomDeviceName": False,
            "NowPlayingQueue": [],
            "SupportedCommands": [],
        }
    if item is not None:
        entry["NowPlayingItem"] = {**item, "ServerId": server_id}
        if play_method == "Transcode":
            entry["TranscodingInfo"] = {
                "AudioCodec": "aac",
                "VideoCodec": "h264",
                "Container": "ts",
                "IsVideoDirect": False,
                "IsAudioDirect": False,
                "Bitrate": 8_000_000,
                "Width": 1920,
                "Height": 1080,
                "AudioChannels": 2,
                "HardwareAccelerationType": "none",
                "TranscodeReasons": ["VideoCodecNotSupported"],
            }
    return entry


# ---------------------------------------------------------------------------------------
# webhook plugin notifications ("Send All Properties")


def notification(
    kind: str,
    *,
    server_id: str,
    session_id: str,
    user_id: str,
    item_id: str,
    position_s: float = 0.0,
    paused: bool = False,
    name: str = "Heat",
    device_id: str = "TW96aWxsYS81LjAgKFgxMTsgTGludXggeDg2XzY0KQ11",
) -> dict[str, Any]:
    """A PlaybackStart/PlaybackProgress/PlaybackStop body of the Jellyfin webhook plugin,
    keys in the plugin's order. ``name`` is escaped the way the plugin does (``"`` -> ``\\"``)."""
    body: dict[str, Any] = {
        "ServerId": server_id,
        "ServerName": "fake-jellyfin",
        "ServerVersion": "10.10.7",
        "ServerUrl": "http://jellyfin.lan:8096",
        "NotificationType": kind,
        "Timestamp": "2026-01-05T21:00:00.1234567+01:00",
        "UtcTimestamp": "2026-01-05T20:00:00.1234567Z",
        "Name": name.replace('"', '\\"'),
        "Overview": "A group of professional bank robbers...",
        "Tagline": "A Los Angeles crime saga",
        "ItemId": item_id,
        "ItemType": "Movie",
        "RunTimeTicks": 170 * 60 * TICKS_PER_SECOND,
        "RunTime": "02:50:00",
        "Year": 1995,
        "PremiereDate": "1995-12-15",
        "Genres": "Action, Crime, Drama",
        "Provider_imdb": "tt0113277",
        "Provider_tmdb": "949",
        "Video_0_Title": "4K HEVC HDR",
        "Video_0_Type": "Video",
        "Video_0_Codec": "hevc",
        "Video_0_Height": 2160,
        "Video_0_Width": 3840,
        "Audio_0_Title": "English - Dolby Digital+ - 5.1 - Default",
        "Audio_0_Type": "Audio",
        "Audio_0_Language": "eng",
        "Audio_0_Codec": "eac3",
        "Audio_0_Channels": 6,
        "Audio_0_Default": True,
        "PlaybackPositionTicks": int(position_s * TICKS_PER_SECOND),
        "PlaybackPosition": _hms(position_s),
        "MediaSourceId": item_id,
        "IsPaused": paused,
        "IsAutomated": False,
        "DeviceId": device_id,
        "DeviceName": "Chrome",
        "ClientName": "Jellyfin Web",
        "PlayMethod": "DirectPlay",
    }
    if kind == "PlaybackStop":
        body["PlayedToCompletion"] = False
    body |= {
        "Id": session_id,
        "UserId": user_id,
        "NotificationUsername": "alice",
        "Client": "Jellyfin Web",
        "LastActivityDate": "2026-01-05T20:00:00.0000000Z",
        "LastPlaybackCheckIn": "2026-01-05T20:00:00.0000000Z",
        "RemoteEndPoint": "192.168.1.20",
    }
    return body


def _hms(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
