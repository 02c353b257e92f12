"""Plex Media Server webhooks (Plex Pass): ``POST /webhooks/plex`` -> lifecycle events.

Plex posts ``multipart/form-data``: the JSON document in the ``payload`` part and, for some
kinds, a JPEG poster in a ``thumb`` part (read and thrown away, never stored). The kinds
``media.play|pause|resume|stop|scrobble`` become ``play|pause|resume|stop|scrobble`` events;
every other kind (``media.rate``, ``library.new``, ``device.new``, ``admin.*``,
``playback.started``...) is answered 200 and ignored.

Plex signs nothing and never retries. When a token is configured (``PLEX_WEBHOOK_TOKEN``) the
webhook URL must carry ``?token=<it>``, else 401. Malformed input gets 400 with the reason as
plain text, a body over ``max_body`` bytes 413 (and an event over
:data:`~ingestor.sources.base.MAX_EVENT_BYTES` encoded), a sink failure 503 (the event is lost: Plex
does not re-send it, and the log says so). The answer comes only after the sink returned, so a
2xx means the event is stored.

Playback identity. Plex gives no session id and no event time. A playback is keyed on
(``Server.uuid``, ``Account.id``, ``Player.uuid``, ``Metadata.ratingKey``); ``media.play``
records its receipt time as the playback's start, and every later event of that key carries
that ``started_at`` and the ``session_key`` ``"{Player.uuid}/{ratingKey}/{start epoch ms}"``.
``media.stop`` closes it (``stopped_at`` = receipt). Open playbacks are persisted in a
:class:`~ingestor.sources.base.StateFile`, so a pause after an ingestor restart still folds into
the same playback. The state is written before the events are emitted and restored if the sink
fails.

The rules for reports that do not fit the state (decided by state, in the adapter, so they
never become a second transition):

* ``media.pause`` while paused, ``media.resume`` while playing, a second ``media.scrobble``:
  re-reports, dropped (Plex sometimes fires twice).
* ``media.play`` for a key whose playback is open and whose last report was a play less than
  ``duplicate_window`` seconds ago: a double fire, dropped. Later, it is a new playback: the
  open one is closed first by a ``stop`` at this receipt time (its stop was never delivered).
* Any report within ``duplicate_window`` after a playback's stop, for that key, other than a
  play: late or repeated, dropped.
* ``media.pause|resume|scrobble|stop`` for a key with no open playback (the play was missed,
  or the state was lost): the playback's start is unknown, so the receipt time stands for it:
  a playback is opened at that time (``started_at`` = receipt, ``session_key`` from it) and
  the event is its first. An orphan stop is thus a playback of zero known length.
* An open playback with no report for ``stale_after`` seconds (24 h) is forgotten (not
  stopped: its end is unknown); a later report of its key opens a new one.

``event_id = make_event_id("plex", Server.uuid, kind, session_key, receipt_ms)``: the receipt
time is recorded once, so the event keeps its id however often it is re-emitted. What a
document says becomes event fields in :mod:`ingestor.sources.plex.mapping`
(:func:`~ingestor.sources.plex.mapping.webhook_events`); this module decides which
transitions happened.

The server owner appears as ``Account.id`` 1. It is mapped to the owner's plex.tv id
(``owner_id``, from ``PLEX_OWNER_ID``, or taught later by :meth:`PlexWebhook.set_owner_id`, for
example by a Tautulli adapter); until then it stays ``"1"`` and a warning is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ingestor.errors import IngestorError, InvalidEvent
from ingestor.events import EventType
from ingestor.sink import Sink
from ingestor.sources.base import EventTooLarge, SourceHealth, StateFile, receipt_time
from ingestor.sources.plex.mapping import (
    KINDS,
    SUPERSEDED,
    PlexPayloadError,
    PlexWebhookPayload,
    WebhookTransition,
    decode_webhook,
    webhook_events,
    webhook_kind,
)
from ingestor.sources.plex.owner import OwnerMap

log = logging.getLogger(__name__)

PATH = "/webhooks/plex"
DEFAULT_MAX_BODY = 2 * 1024 * 1024  # the JSON and the thumb together
DEFAULT_DUPLICATE_WINDOW = 10.0  # seconds
DEFAULT_STALE_AFTER = 86_400.0  # seconds
STATE_VERSION = 1


class BadRequest(IngestorError):
    """The request is not a Plex webhook we can read; ``status`` and the reason go back."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


# ---------------------------------------------------------------------------------------
# open playbacks: the adapter's state, persisted

PlaybackKey = tuple[str, str, str, str]
"""(Server.uuid, Account.id as sent, Player.uuid, Metadata.ratingKey)"""


@dataclass(frozen=True)
class OpenPlayback:
    session_key: str
    started_at: datetime
    paused: bool
    scrobbled: bool
    last_kind: str
    last_at: datetime


@dataclass(frozen=True)
class Step:
    """One transition to emit: its type, the Plex kind it is identified by, its playback."""

    event_type: EventType
    kind: str
    playback: OpenPlayback


class PlaybackBook:
    """Open playbacks and recently closed keys, and the transition rules (module docstring).

    :meth:`apply` returns the steps to emit and updates the book; a caller that may need to
    undo keeps a :meth:`copy` (the records are immutable, so a shallow copy is enough).
    """

    def __init__(self, duplicate_window: float, stale_after: float) -> None:
        self.window = timedelta(seconds=duplicate_window)
        self.stale_after = timedelta(seconds=stale_after)
        self.open: dict[PlaybackKey, OpenPlayback] = {}
        self.closed: dict[PlaybackKey, datetime] = {}

    def copy(self) -> PlaybackBook:
        other = PlaybackBook(0, 0)
        other.window, other.stale_after = self.window, self.stale_after
        other.open, other.closed = dict(self.open), dict(self.closed)
        return other

    def apply(self, kind: str, key: PlaybackKey, now: datetime) -> list[Step]:
        self._prune(now)
        current = self.open.get(key)
        if kind == "media.play":
            if (
                current is not None
                and current.last_kind == kind
                and now - current.last_at <= self.window
            ):
                return []
            steps = []
            if current is not None:
                steps.append(Step(EventType.STOP, SUPERSEDED, current))
            opened = _new_playback(key, now, kind)
            self.open[key] = opened
            self.closed.pop(key, None)
            return [*steps, Step(EventType.PLAY, kind, opened)]
        if current is None:
            closed_at = self.closed.get(key)
            if closed_at is not None and now - closed_at <= self.window:
                return []
            # the start is unknown: the receipt time stands for it
            current = _new_playback(key, now, kind, paused=kind == "media.resume")
        event_type = KINDS[kind]
        if (
            (event_type is EventType.PAUSE and current.paused)
            or (event_type is EventType.RESUME and not current.paused)
            or (event_type is EventType.SCROBBLE and current.scrobbled)
        ):
            return []
        step = Step(event_type, kind, current)
        if event_type is EventType.STOP:
            self.open.pop(key, None)
            self.closed[key] = now
            return [step]
        self.open[key] = replace(
            current,
            paused=event_type is EventType.PAUSE
            or (current.paused and event_type is not EventType.RESUME),
            scrobbled=current.scrobbled or event_type is EventType.SCROBBLE,
            last_kind=kind,
            last_at=now,
        )
        return [step]

    def _prune(self, now: datetime) -> None:
        for key, closed_at in list(self.closed.items()):
            if now - closed_at > self.window:
                del self.closed[key]
        for key, playback in list(self.open.items()):
            if now - playback.last_at > self.stale_after:
                log.info(
                    "plex webhook: forgetting playback %s, no report for %s",
                    playback.session_key,
                    now - playback.last_at,
                )
                del self.open[key]

    # -- persistence: lists of records, keys as their fields (never a joined string)

    def dump(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "open": [
                {
                    "server": k[0],
                    "account": k[1],
                    "player": k[2],
                    "item": k[3],
                    "session_key": p.session_key,
                    "started_at": p.started_at.isoformat(),
                    "paused": p.paused,
                    "scrobbled": p.scrobbled,
                    "last_kind": p.last_kind,
                    "last_at": p.last_at.isoformat(),
                }
                for k, p in self.open.items()
            ],
            "closed": [
                {"server": k[0], "account": k[1], "player": k[2], "item": k[3], "at": t.isoformat()}
                for k, t in self.closed.items()
            ],
        }

    def load(self, state: dict[str, Any]) -> None:
        for row in state.get("open", []):
            key = (row["server"], row["account"], row["player"], row["item"])
            self.open[key] = OpenPlayback(
                session_key=row["session_key"],
                started_at=datetime.fromisoformat(row["started_at"]),
                paused=bool(row["paused"]),
                scrobbled=bool(row["scrobbled"]),
                last_kind=row["last_kind"],
                last_at=datetime.fromisoformat(row["last_at"]),
            )
        for row in state.get("closed", []):
            key = (row["server"], row["account"], row["player"], row["item"])
            self.closed[key] = datetime.fromisoformat(row["at"])


def _epoch_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _new_playback(
    key: PlaybackKey, now: datetime, kind: str, *, paused: bool = False
) -> OpenPlayback:
    _, _, player, item = key
    return OpenPlayback(
        session_key=f"{player}/{item}/{_epoch_ms(now)}",
        started_at=now,
        paused=paused,
        scrobbled=False,
        last_kind=kind,
        last_at=now,
    )


# ---------------------------------------------------------------------------------------
# the adapter


class PlexWebhook:
    """The Plex webhook receiver (a :class:`~ingestor.sources.base.WebhookSource`).

    ``state_path`` holds the open playbacks (e.g. ``$DATA_DIR/sources/plex-webhook.json``);
    ``clock`` is where receipt times come from (tests pass a controllable one).
    """

    def __init__(
        self,
        sink: Sink,
        state_path: Path,
        *,
        token: str | None = None,
        owner_id: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
        stale_after: float = DEFAULT_STALE_AFTER,
        path: str = PATH,
        clock: Callable[[], datetime] = receipt_time,
    ) -> None:
        self.sink = sink
        self.token = token or None
        self.owner = OwnerMap(owner_id, "plex webhook")
        self.max_body = max_body
        self.path = path
        self.clock = clock
        self.health = SourceHealth(name="plex-webhook", kind="plex_webhook")
        self._state = StateFile(state_path)
        self._book = PlaybackBook(duplicate_window, stale_after)
        self._book.load(self._state.load())
        self._lock = asyncio.Lock()

    # -- wiring

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(self.path, self.handle)

    def set_owner_id(self, owner_id: str | int) -> None:
        """Map ``Account.id`` 1 (the server owner) to ``owner_id`` from now on."""
        self.owner.learn(owner_id)

    @property
    def open_playbacks(self) -> int:
        return len(self._book.open)

    # -- the request

    async def handle(self, request: web.Request) -> web.Response:
        if self.token is not None and not hmac.compare_digest(
            request.query.get("token", ""), self.token
        ):
            reason = "missing or wrong ?token= (set the webhook URL to include PLEX_WEBHOOK_TOKEN)"
            self._reject(request, 401, reason)
            return web.Response(status=401, text=reason)
        now = self.clock()
        try:
            payload = await self._read_payload(request)
            kind = webhook_kind(payload)
            if kind not in KINDS:
                self.health.success(0)
                return web.Response(text=f"ignored {kind}")
            parsed = decode_webhook(payload)
            steps = await self._ingest(parsed, payload, now)
        except PlexPayloadError as exc:
            self._reject(request, 400, str(exc))
            return web.Response(status=400, text=str(exc))
        except BadRequest as exc:
            self._reject(request, exc.status, str(exc))
            return web.Response(status=exc.status, text=str(exc))
        except _SinkFailed as exc:
            return web.Response(status=503, text=f"event not stored: {exc}")
        if not steps:
            return web.Response(text=f"duplicate {kind} ignored")
        return web.Response(text=f"ok: {len(steps)} event(s)")

    def _reject(self, request: web.Request, status: int, reason: str) -> None:
        self.health.failure(f"HTTP {status}: {reason}")
        log.warning(
            "plex webhook from %s rejected with %d: %s", request.remote or "?", status, reason
        )

    async def _read_payload(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body:
            raise BadRequest(
                f"body of {request.content_length} bytes exceeds the limit of {self.max_body}",
                413,
            )
        if request.content_type != "multipart/form-data":
            raise BadRequest(
                f"expected Content-Type multipart/form-data (a Plex webhook), "
                f"got {request.content_type or 'none'}"
            )
        try:
            return await self._read_parts(request)
        except BadRequest:
            raise
        except (ValueError, AssertionError, HttpProcessingError, web.HTTPException) as exc:
            text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
            detail = " ".join(str(text).split()) or type(exc).__name__
            raise BadRequest(f"truncated or malformed multipart body: {detail}") from None

    async def _read_parts(self, request: web.Request) -> bytes:
        reader = await request.multipart()
        size = 0
        named: bytes | None = None
        json_part: bytes | None = None
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not a Plex webhook")
            data = bytearray()
            while chunk := await part.read_chunk(65536):
                size += len(chunk)
                if size > self.max_body:
                    raise BadRequest(f"body exceeds the limit of {self.max_body} bytes", 413)
                if part.name != "thumb":  # the poster is read past, never kept
                    data += chunk
            if part.name == "payload":
                named = bytes(data)
            elif json_part is None and part.headers.get("Content-Type", "").startswith(
                "application/json"
            ):
                json_part = bytes(data)
        payload = named if named is not None else json_part
        if payload is None:
            raise BadRequest("no payload part in the multipart body")
        return payload

    async def _ingest(
        self, parsed: PlexWebhookPayload, payload: bytes, now: datetime
    ) -> list[Step]:
        key = _playback_key(parsed)
        async with self._lock:
            before = self._book.copy()
            steps = self._book.apply(parsed.event, key, now)
            if not steps:
                log.debug("plex webhook: %s for %s is a re-report, dropped", parsed.event, key)
                self.health.success(0)
                return steps
            try:
                events = webhook_events(
                    parsed,
                    [
                        WebhookTransition(
                            s.event_type, s.kind, s.playback.session_key, s.playback.started_at
                        )
                        for s in steps
                    ],
                    received_at=now,
                    raw=payload,
                    owner_id=self.owner.owner_id,
                )
                self.owner.check(events[0].user_id)
            except InvalidEvent as exc:
                self._book = before
                raise BadRequest(str(exc), 413 if isinstance(exc, EventTooLarge) else 400) from None
            try:
                self._state.save(self._book.dump())  # written ahead: a crash keeps the start
                await self.sink.emit(events)
            except Exception as exc:
                self._book = before
                with contextlib.suppress(OSError):
                    self._state.save(before.dump())
                self.health.failure(f"not stored: {type(exc).__name__}: {exc}")
                log.error(
                    "plex webhook %s for %s not stored (%s: %s); Plex does not retry "
                    "webhooks, so this report is lost",
                    parsed.event,
                    steps[-1].playback.session_key,
                    type(exc).__name__,
                    exc,
                )
                raise _SinkFailed(f"{type(exc).__name__}: {exc}") from exc
        self.health.server_id = parsed.server.uuid
        self.health.success(len(events))
        return steps


class _SinkFailed(IngestorError):
    pass


def _playback_key(parsed: PlexWebhookPayload) -> PlaybackKey:
    return (
        parsed.server.uuid,
        str(parsed.account.id),
        parsed.player.uuid,
        str(parsed.metadata.rating_key),
    )
