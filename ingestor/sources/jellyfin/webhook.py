"""The Jellyfin webhook plugin receiver: ``POST /webhooks/jellyfin``.

Configure the plugin (jellyfin/jellyfin-plugin-webhook) with a **Generic** destination to
``http://<ingestor>:3857/webhooks/jellyfin`` (``?token=<JELLYFIN_WEBHOOK_TOKEN>`` when a token
is set), "Send All Properties (ignores template)" on, and the notification types
PlaybackStart, PlaybackProgress and PlaybackStop. The plugin posts the JSON object with
``Content-Type: text/plain`` unless told otherwise; both that and ``application/json`` are read.

The notifications go through the same session state machine as the WebSocket, in the same
:class:`~ingestor.sources.jellyfin.tracker.PlaybackTracker` (give both the one tracker): a
``PlaybackStart`` or ``PlaybackProgress`` is that session's current state (play, pause,
resume, progress as the state changes), a ``PlaybackStop`` closes it. A playback reported by
the webhook and the WebSocket of the same server is therefore one playback (source
``jellyfin``, one ``session_key``) with one event per transition: whichever report arrives
first makes the transition, the other finds the state already there and emits nothing.

Times: the plugin's ``UtcTimestamp`` is the Jellyfin server's clock; the WebSocket has no
timestamps and is timed by this ingestor's clock. One playback's transitions must be timed on
one clock (pause durations are differences of them), so a notification is timed by its
receipt time, recorded once per request.

Answers (every refusal is ``{"error": reason}``): 200 ``{"events": n}`` once the sink stored
the events; 200 ``{"ignored": why}`` for notification types that are not about playback; 400
for malformed input, or a notification that makes an invalid event; 401 for a wrong or missing
token; 413 for a body over ``max_body`` bytes, and for a notification that would make an event
over :data:`~ingestor.sources.base.MAX_EVENT_BYTES` encoded (a field that large: NATS could
never store it; the reason names the size and the limit); 503 when the sink cannot store the
events now (they are kept in the tracker's outbox and emitted with the next report). A refused
notification changes nothing: no event, the session state as it was, so the next report of
the session is taken as if the refused one never came.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from datetime import datetime

from aiohttp import web

from ingestor.errors import IngestorError, InvalidEvent
from ingestor.sources.base import EventTooLarge, SourceHealth, receipt_time
from ingestor.sources.jellyfin.mapping import (
    PLAYBACK_NOTIFICATIONS,
    MalformedNotification,
    decode_notification,
    observe_notification,
)
from ingestor.sources.jellyfin.tracker import PlaybackTracker

log = logging.getLogger(__name__)

PATH = "/webhooks/jellyfin"
DEFAULT_MAX_BODY = 1024 * 1024


class BodyTooLarge(IngestorError):
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
            payload = decode_notification(body)
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
        except EventTooLarge as exc:
            return self._refuse(413, f"{kind} would make {exc}")
        except InvalidEvent as exc:
            return self._refuse(400, f"{kind} makes an event that cannot be stored: {exc}")
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


__all__ = ["PATH", "JellyfinWebhook"]
