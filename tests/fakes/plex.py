"""Plex on the wire, for tests: webhook multipart bodies and a fake PMS ``/status/sessions``.

The shapes follow ``/work/shared/reference/upstream-payloads.md`` section 1 (webhooks) and
``tautulli-db-and-plex-sessions.md`` section B (sessions). Bodies are built byte by byte, the
way Plex sends them (compact JSON in a ``payload`` part, a JPEG ``thumb`` part), so a test can
also cut or bend them.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

SERVER_UUID = "5d4f5c0a1e2b3c4d5e6f708192a3b4c5d6e7f809"
SERVER_TITLE = "Basement"
PLAYER_UUID = "k7xq2m9c4vbt8n1pl3wz6hyd"
PLAYER_TITLE = "Living Room Roku"
PUBLIC_ADDRESS = "203.0.113.7"
LAN_ADDRESS = "192.168.1.20"
OWNER_PLEX_ID = "8312457"
SHARED_USER_ID = 5551234
RATING_KEY = "54321"
DURATION_MS = 2_640_000  # 44 minutes

# A small JPEG-looking poster: SOI, a JFIF APP0 segment, bytes that look like a multipart
# delimiter and CRLFs (a parser must not cut the part there), EOI.
JPEG_THUMB = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    + b"\r\n--not-the-boundary\r\n\x00\xfe\x80"
    + bytes(range(256)) * 8
    + b"\xff\xd9"
)


def webhook_payload(
    event: str,
    *,
    account_id: int | str = 1,
    account_title: str = "alice",
    rating_key: str | int = RATING_KEY,
    view_offset: int | None = None,
    player_uuid: str = PLAYER_UUID,
    player_title: str = PLAYER_TITLE,
    local: bool = True,
    server_uuid: str = SERVER_UUID,
) -> dict[str, Any]:
    """A ``media.*`` webhook document for an episode, keys as Plex emits them."""
    metadata: dict[str, Any] = {
        "librarySectionType": "show",
        "ratingKey": rating_key,
        "key": f"/library/metadata/{rating_key}",
        "parentRatingKey": "54300",
        "grandparentRatingKey": "54299",
        "guid": "plex://episode/5d9c0874e98e47001eb0f6a3",
        "parentGuid": "plex://season/602e6d1c6b8a0c002c5c7b11",
        "grandparentGuid": "plex://show/5d9c086fe98e47001eb0f4a9",
        "Guid": [{"id": "imdb://tt0959621"}, {"id": "tmdb://62085"}, {"id": "tvdb://349232"}],
        "type": "episode",
        "title": "Pilot",
        "grandparentKey": "/library/metadata/54299",
        "parentKey": "/library/metadata/54300",
        "librarySectionTitle": "TV Shows",
        "librarySectionID": 2,
        "librarySectionKey": "/library/sections/2",
        "grandparentTitle": "Breaking Bad",
        "parentTitle": "Season 1",
        "contentRating": "TV-MA",
        "summary": "A chemistry teacher takes a turn.",
        "index": 1,
        "parentIndex": 1,
        "year": 2008,
        "thumb": f"/library/metadata/{rating_key}/thumb/1700000000",
        "art": "/library/metadata/54299/art/1700000000",
        "parentThumb": "/library/metadata/54300/thumb/1700000000",
        "grandparentThumb": "/library/metadata/54299/thumb/1700000000",
        "grandparentArt": "/library/metadata/54299/art/1700000000",
        "duration": DURATION_MS,
        "originallyAvailableAt": "2008-01-20",
        "addedAt": 1690000000,
        "updatedAt": 1700000000,
    }
    if view_offset is not None:
        metadata["viewOffset"] = view_offset
    return {
        "event": event,
        "user": True,
        "owner": True,
        "Account": {
            "id": account_id,
            "thumb": "https://plex.tv/users/3fa1c2d4e5b6a7c8/avatar?c=1700000000",
            "title": account_title,
        },
        "Server": {"title": SERVER_TITLE, "uuid": server_uuid},
        "Player": {
            "local": local,
            "publicAddress": PUBLIC_ADDRESS,
            "title": player_title,
            "uuid": player_uuid,
        },
        "Metadata": metadata,
    }


def compact(document: Any) -> bytes:
    """JSON as Plex writes it: compact, UTF-8."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def multipart_body(
    payload: dict[str, Any] | bytes | None,
    *,
    thumb: bytes | None = JPEG_THUMB,
    thumb_first: bool = False,
    boundary: str = "------------------------5c2b1e9d8a7f6e3b",
) -> tuple[bytes, str]:
    """A Plex webhook body and its Content-Type header value.

    ``payload`` is a document (serialised compactly), raw bytes (sent as they are), or None
    (no payload part at all).
    """
    parts: list[bytes] = []
    if payload is not None:
        data = payload if isinstance(payload, bytes) else compact(payload)
        parts.append(
            b'Content-Disposition: form-data; name="payload"\r\n'
            b"Content-Type: application/json\r\n\r\n" + data
        )
    if thumb is not None:
        image = (
            b'Content-Disposition: form-data; name="thumb"; filename="image.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + thumb
        )
        parts.insert(0 if thumb_first else len(parts), image)
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    body += delimiter + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary}"


# ---------------------------------------------------------------------------------------
# a fake Plex Media Server


def session_entry(
    session_key: str = "42",
    rating_key: str = RATING_KEY,
    *,
    state: str = "playing",
    view_offset: int = 0,
    user_id: str = "1",
    user_title: str = "alice",
    machine_id: str = PLAYER_UUID,
    title: str = "Pilot",
    transcode: bool = True,
) -> dict[str, Any]:
    """One ``MediaContainer.Metadata[]`` entry of ``/status/sessions`` (JSON form)."""
    entry: dict[str, Any] = {
        "addedAt": 1690000000,
        "art": "/library/metadata/54299/art/1700000000",
        "duration": DURATION_MS,
        "grandparentKey": "/library/metadata/54299",
        "grandparentRatingKey": "54299",
        "grandparentTitle": "Breaking Bad",
        "guid": "plex://episode/5d9c0874e98e47001eb0f6a3",
        "index": 1,
        "key": f"/library/metadata/{rating_key}",
        "librarySectionID": "2",
        "librarySectionKey": "/library/sections/2",
        "librarySectionTitle": "TV Shows",
        "parentIndex": 1,
        "parentRatingKey": "54300",
        "parentTitle": "Season 1",
        "ratingKey": rating_key,
        "sessionKey": session_key,
        "title": title,
        "type": "episode",
        "viewOffset": view_offset,
        "year": 2008,
        "Media": [
            {
                "audioChannels": 6,
                "audioCodec": "eac3",
                "bitrate": 9800,
                "container": "mkv",
                "duration": DURATION_MS,
                "height": 1080,
                "id": "77101",
                "videoCodec": "hevc",
                "videoResolution": "1080",
                "width": 1920,
                "selected": True,
                "Part": [
                    {
                        "container": "mkv",
                        "decision": "transcode" if transcode else "directplay",
                        "duration": DURATION_MS,
                        "id": "88101",
                        "selected": True,
                        "Stream": [
                            {"codec": "hevc", "streamType": 1, "decision": "transcode"},
                            {"codec": "eac3", "streamType": 2, "decision": "copy"},
                        ],
                    }
                ],
            }
        ],
        "User": {
            "id": user_id,
            "thumb": "https://plex.tv/users/3fa1c2d4e5b6a7c8/avatar?c=1700000000",
            "title": user_title,
        },
        "Player": {
            "address": LAN_ADDRESS,
            "device": "Roku Ultra",
            "machineIdentifier": machine_id,
            "model": "4800X",
            "platform": "Roku",
            "platformVersion": "12.5.0",
            "product": "Plex for Roku",
            "profile": "Roku",
            "remotePublicAddress": PUBLIC_ADDRESS,
            "state": state,
            "title": PLAYER_TITLE,
            "vendor": "Roku",
            "version": "8.4.2.4029",
            "local": True,
            "relayed": False,
            "secure": True,
            "userID": 1,
        },
        "Session": {"id": "gc8kdp2x3bcmkl1m1qfsbvbd", "bandwidth": 10400, "location": "lan"},
    }
    if transcode:
        entry["TranscodeSession"] = {
            "key": "/transcode/sessions/3b7e6f1d-9a2c-4c1b-8d33-0f2a6a1c9e55",
            "throttled": False,
            "complete": False,
            "progress": 12.5,
            "speed": 3.1,
            "duration": DURATION_MS,
            "context": "streaming",
            "sourceVideoCodec": "hevc",
            "sourceAudioCodec": "eac3",
            "videoDecision": "transcode",
            "audioDecision": "copy",
            "protocol": "hls",
            "container": "mpegts",
            "videoCodec": "h264",
            "audioCodec": "eac3",
            "audioChannels": 6,
            "transcodeHwRequested": True,
        }
    return entry


class FakePlexServer:
    """A loopback PMS answering ``/identity`` and ``/status/sessions`` like the real one.

    ``sessions`` is what is playing now (edit it between polls); ``token`` the accepted
    ``X-Plex-Token`` (401 otherwise); without ``Accept: application/json`` it answers XML,
    as PMS does. ``body`` overrides the sessions answer with raw bytes. ``requests`` counts
    requests per path.
    """

    def __init__(self, token: str = "plex-token", machine_identifier: str = SERVER_UUID) -> None:
        self.token = token
        self.machine_identifier = machine_identifier
        self.sessions: list[dict[str, Any]] = []
        self.body: bytes | None = None
        self.requests: Counter[str] = Counter()
        app = web.Application()
        app.router.add_get("/identity", self._identity)
        app.router.add_get("/status/sessions", self._sessions)
        self._server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self._server.make_url("")).rstrip("/")

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    async def __aenter__(self) -> FakePlexServer:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()

    def _authorised(self, request: web.Request) -> bool:
        given = request.headers.get("X-Plex-Token") or request.query.get("X-Plex-Token")
        return given == self.token

    @staticmethod
    def _unauthorised() -> web.Response:
        return web.Response(
            status=401,
            text="<html><head><title>Unauthorized</title></head>"
            "<body><h1>401 Unauthorized</h1></body></html>",
            content_type="text/html",
        )

    @staticmethod
    def _wants_json(request: web.Request) -> bool:
        return "application/json" in request.headers.get("Accept", "")

    async def _identity(self, request: web.Request) -> web.Response:
        self.requests[request.path] += 1
        if not self._authorised(request):
            return self._unauthorised()
        if not self._wants_json(request):
            return web.Response(
                text=f'<?xml version="1.0" encoding="UTF-8"?>\n<MediaContainer size="0" '
                f'machineIdentifier="{self.machine_identifier}" version="1.41.3"/>',
                content_type="text/xml",
            )
        return web.json_response(
            {
                "MediaContainer": {
                    "size": 0,
                    "apiVersion": "1.1.1",
                    "claimed": True,
                    "machineIdentifier": self.machine_identifier,
                    "version": "1.41.3.9314-a0bfb8370",
                }
            }
        )

    async def _sessions(self, request: web.Request) -> web.Response:
        self.requests[request.path] += 1
        if not self._authorised(request):
            return self._unauthorised()
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        if not self._wants_json(request):
            return web.Response(
                text=f'<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<MediaContainer size="{len(self.sessions)}"></MediaContainer>',
                content_type="text/xml",
            )
        container: dict[str, Any] = {"size": len(self.sessions)}
        if self.sessions:
            container["Metadata"] = list(self.sessions)
        return web.json_response({"MediaContainer": container})
