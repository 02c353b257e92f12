"""The Jellyfin webhook plugin receiver: ``POST /webhooks/jellyfin``.

Configure the plugin (jellyfin/jellyfin-plugin-webhook) with a **Generic** destination to
``http://<ingestor>:3857/webhooks/jellyfin`` (``?token=<JELLYFIN_WEBHOOK_TOKEN>`` when a token
is set), "Send All Properties (ignores template)" on, and the notification types
PlaybackStart, PlaybackProgress and PlaybackStop. The plugin posts the JSON object with
``Content-Type: text/plain`` unless told otherwise; both that and ``application/json`` are read.

The notifications go through the same session state machine as the WebSocket, in the same
:class:`~ingestor.sources.jellyfin.websocket.PlaybackTracker` (give both the one tracker): a
``PlaybackStart`` or ``PlaybackProgress`` is that session's current state (play, pause,
resume, progress as the state changes), a ``PlaybackStop`` closes it. A playback reported by
the webhook and the WebSocket of the same server is therefore one playback (source
``jellyfin``, one ``session_key``) with one event per transition: whichever report arrives
first makes the transition, the other finds the state already there and emits nothing.

Times: the plugin's ``UtcTimestamp`` is the Jellyfin server's clock; the WebSocket has no
timestamps and is timed by this ingestor's clock. One playback's transitions must be timed on
one clock (pause durations are differences of them), so a notification is timed by its
receipt time, recorded once per request.

Answers: 200 ``{"events": n}`` once the sink stored the events; 200 ``{"ignored": why}`` for
notification types that are not about playback; 400 with the reason for malformed input; 401
for a wrong or missing token; 413 over ``max_body`` bytes; 503 when the sink cannot store the
events now (they are kept in the tracker's outbox and emitted with the next report).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from ingestor.sources.base import SourceHealth, receipt_time
from ingestor.sources.jellyfin.session_machine import (
    PLAY_METHODS,
    Observation,
    PlaybackDetails,
    UnreadableSession,
    media_type,
    resolution,
    strip_port,
    ticks_to_ms,
)
from ingestor.sources.jellyfin.websocket import PlaybackTracker

log = logging.getLogger(__name__)

PATH = "/webhooks/jellyfin"
DEFAULT_MAX_BODY = 1024 * 1024
PLAYBACK_NOTIFICATIONS = ("PlaybackStart", "PlaybackProgress", "PlaybackStop")

# String values the plugin escapes (" -> \") before serialising them.
_ESCAPED = ("Name", "SeriesName", "ServerName", "DeviceName", "Client", "ClientName", "Album")


class MalformedNotification(ValueError):
    """A webhook body that cannot be ingested; the message is the reason given to the caller."""


class BodyTooLarge(Exception):
    pass


class JellyfinWebhook:
    """Receives the Jellyfin webhook plugin's playback notifications (a ``WebhookSource``)."""

    def __init__(
        self,
        tracker: PlaybackTracker,
        *,
        token: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        path: str = PATH,
        clock: Callable[[], datetime] = receipt_time,
    ) -> None:
        if tracker.source != "jellyfin":
            raise ValueError(f"the Jellyfin webhook needs a jellyfin tracker, not {tracker.source}")
        self.tracker = tracker
        self.token = token or None
        self.max_body = max_body
        self.path = path
        self.clock = clock
        self.health = SourceHealth(name="jellyfin-webhook", kind="jellyfin_webhook")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(self.path, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        received = self.clock()  # the one receipt time of this notification
        if self.token is not None and not hmac.compare_digest(
            request.query.get("token", "").encode(), self.token.encode()
        ):
            return self._refuse(401, "missing or wrong token (JELLYFIN_WEBHOOK_TOKEN)")
        try:
            body = await self._read(request)
        except BodyTooLarge:
            return self._refuse(413, f"body larger than {self.max_body} bytes")
        try:
            payload = _decode(body)
            kind = payload.get("NotificationType")
            if not isinstance(kind, str) or not kind:
                raise MalformedNotification("no NotificationType")
            if kind not in PLAYBACK_NOTIFICATIONS:
                return web.json_response(
                    {"ignored": f"NotificationType {kind} is not a playback notification"}
                )
            server_id, observation = observe_notification(payload, body)
        except MalformedNotification as exc:
            return self._refuse(400, str(exc))
        try:
            if kind == "PlaybackStop":
                emitted = await self.tracker.end(server_id, observation, received)
            else:
                emitted = await self.tracker.report(server_id, observation, received)
        except Exception as exc:
            error = f"events not stored yet ({type(exc).__name__}: {exc}); they will be retried"
            self.health.failure(error)
            log.error("jellyfin webhook: %s", error)
            return web.json_response({"error": error}, status=503)
        self.health.server_id = server_id
        self.health.success(emitted)
        return web.json_response({"events": emitted})

    async def _read(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body:
            raise BodyTooLarge
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > self.max_body:
                raise BodyTooLarge
        return bytes(body)

    def _refuse(self, status: int, reason: str) -> web.Response:
        self.health.failure(f"HTTP {status}: {reason}")
        log.warning("jellyfin webhook refused (HTTP %s): %s", status, reason)
        return web.json_response({"error": reason}, status=status)


def _decode(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise MalformedNotification("empty body")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MalformedNotification("body is not UTF-8 text") from None
    try:
        payload = json.loads(text)
    except RecursionError:
        raise MalformedNotification("body is JSON nested too deeply to be a notification") from None
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's 4,300 digits
        raise MalformedNotification(
            f"body is not JSON ({exc}); enable 'Send All Properties' in the plugin"
        ) from None
    if not isinstance(payload, dict):
        raise MalformedNotification(f"body is a JSON {type(payload).__name__}, not an object")
    return payload


def observe_notification(payload: dict[str, Any], body: bytes) -> tuple[str, Observation]:
    """A playback notification -> (server id, the session's :class:`Observation`).

    Raise :class:`MalformedNotification` naming what is missing or wrong.
    """
    missing = [key for key in ("ServerId", "Id", "ItemId", "UserId") if not _text(payload, key)]
    if missing:
        raise MalformedNotification(f"{payload['NotificationType']} without {', '.join(missing)}")
    paused = payload.get("IsPaused")
    if paused is not None and not isinstance(paused, bool):
        raise MalformedNotification(f"IsPaused must be true or false, got {paused!r}")
    try:
        position = ticks_to_ms(payload.get("PlaybackPositionTicks"))
        duration_ms = ticks_to_ms(payload.get("RunTimeTicks"))
    except UnreadableSession as exc:
        raise MalformedNotification(str(exc)) from None
    item_type = _text(payload, "ItemType")
    client = _text(payload, "ClientName") or _text(payload, "Client")
    item_id = _text(payload, "ItemId")
    details = PlaybackDetails(
        user_id=_text(payload, "UserId"),
        username=_text(payload, "NotificationUsername"),
        media_type=media_type(item_type),
        title=_text(payload, "Name") or item_id,
        **_hierarchy(payload, item_type),
        rating_key=item_id,
        year=_number(payload.get("Year")),
        media_duration=None if duration_ms is None else duration_ms // 1000,
        media_duration_ms=duration_ms,
        platform=client,
        player=_text(payload, "DeviceName"),
        product=client,
        machine_id=_text(payload, "DeviceId"),
        ip_address=strip_port(_text(payload, "RemoteEndPoint")),
        transcode_decision=PLAY_METHODS.get(_text(payload, "PlayMethod"), ""),
        video_resolution=resolution(_number(payload.get("Video_0_Height"))),
        video_codec=_text(payload, "Video_0_Codec"),
        audio_codec=_text(payload, "Audio_0_Codec"),
        audio_channels=_number(payload.get("Audio_0_Channels")),
    )
    observation = Observation(
        session_id=_text(payload, "Id"),
        item_id=item_id,
        play_session_id=_text(payload, "PlaySessionId"),
        position_ms=position,
        paused=paused,
        details=details,
        raw=body.decode("utf-8-sig"),
    )
    return _text(payload, "ServerId"), observation


def _hierarchy(payload: dict[str, Any], item_type: str) -> dict[str, str]:
    if item_type == "Episode":
        season = _number(payload.get("SeasonNumber"))
        return {
            "parent_title": f"Season {season}" if season is not None else "",
            "grandparent_title": _text(payload, "SeriesName"),
        }
    if item_type == "Audio":
        return {
            "parent_title": _text(payload, "Album"),
            "grandparent_title": _text(payload, "Artist"),
        }
    return {}


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        return ""
    value = value.strip()
    return value.replace('\\"', '"') if key in _ESCAPED else value


def _number(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


__all__ = ["PATH", "JellyfinWebhook", "MalformedNotification", "observe_notification"]
