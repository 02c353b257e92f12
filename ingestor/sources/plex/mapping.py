"""Where a Plex payload becomes a MediaEvent. Pure: no I/O, no clock, no state of its own.

Two documented formats (``upstream-payloads.md`` section 1, ``tautulli-db-and-plex-sessions.md``
section B) carry the same Plex objects, and one mapping serves both:

* a webhook document (``POST /webhooks/plex``, :mod:`.webhook`): ``event``, ``Account``,
  ``Server``, ``Player``, ``Metadata`` -> :func:`webhook_events`;
* a ``GET /status/sessions`` entry (:mod:`.poll`): a ``Metadata`` item with ``sessionKey``,
  ``User``, ``Player``, ``Session``, ``TranscodeSession``, ``Media`` -> :func:`session_event`;
* an entry of PMS's watch history, ``GET /status/sessions/history/all``
  (:mod:`.history_import`) -> :func:`history_event` (a ``summary`` of what little it says).

The item (``Metadata``: title, hierarchy, ``ratingKey``, year, length, library) and the user
(``Account`` in a webhook, ``User`` in a session) are the same objects in both and are mapped
by the same code (:class:`PlexItem`, :class:`PlexUser`). Plex sends no event time, no
playback id and no start: those are the transport's (the receipt or poll time, the
``session_key`` and ``started_at`` its state gave the playback) and come in as arguments.

The server owner appears as user id 1 (its local admin id); :func:`plex_user_id` maps it to the
owner's plex.tv id when the caller knows it (``owner_id``), as Tautulli does.

>>> import json
>>> from datetime import UTC, datetime
>>> doc = {"event": "media.play", "Account": {"id": 1, "title": "alice"},
...        "Server": {"uuid": "srv"}, "Player": {"uuid": "dev", "title": "TV", "local": True},
...        "Metadata": {"ratingKey": "54321", "type": "movie", "title": "Heat",
...                     "duration": 6000000, "librarySectionID": 1}}
>>> at = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
>>> [event] = webhook_events(
...     decode_webhook(json.dumps(doc).encode()),
...     [WebhookTransition(EventType.PLAY, "media.play", "dev/54321/1767643200000", at)],
...     received_at=at, raw=b"{}", owner_id="8312457")
>>> event.user_id, event.title, event.position_ms, event.media_duration, event.location_type
('8312457', 'Heat', 0, 6000, 'lan')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from ingestor.errors import IngestorError
from ingestor.events import EventType, MediaEvent, make_event_id, percent_of
from ingestor.sources.base import check_event_size
from ingestor.sources.history_import import InvalidRow

WEBHOOK_SOURCE = "plex"
POLL_SOURCE = "plex_poll"
HISTORY_SOURCE = "plex-history"
OWNER_LOCAL_ID = "1"

KINDS: dict[str, EventType] = {
    "media.play": EventType.PLAY,
    "media.pause": EventType.PAUSE,
    "media.resume": EventType.RESUME,
    "media.stop": EventType.STOP,
    "media.scrobble": EventType.SCROBBLE,
}
"""The webhook kinds that are playback transitions; every other kind is not an event."""

SUPERSEDED = "superseded"
"""The identity kind of a stop the webhook infers from a new play of the same key."""

Number = int | str | None
"""A number PMS may send as a number or as its text (``"1"``/``"0"`` for flags, too)."""
Flag = bool | int | str | None


class PlexPayloadError(IngestorError):
    """A payload that is not the documented format; the message is the reason."""


# ---------------------------------------------------------------------------------------
# the payloads, as Plex sends them (only the fields mapped; the rest is kept raw)


class PlexUser(msgspec.Struct, rename="camel"):
    """A webhook's ``Account`` or a session's ``User``."""

    id: int | str
    title: str = ""
    thumb: str = ""


class PlexItem(msgspec.Struct, rename="camel"):
    """A library item (``Metadata``), as both formats carry it."""

    rating_key: str | int
    type: str
    title: str
    parent_title: str = ""
    grandparent_title: str = ""
    year: Number = None
    duration: Number = None  # ms
    view_offset: Number = None  # ms; absent when the item has no saved progress
    library_section_title: str = ""
    # an int in PMS's JSON; absent for items outside a library (VOD, trailers)
    library_section_id: Number = msgspec.field(name="librarySectionID", default=None)


class PlexServer(msgspec.Struct, rename="camel"):
    uuid: str
    title: str = ""


class WebhookPlayer(msgspec.Struct, rename="camel"):
    """A webhook's ``Player``: the client, with its public address."""

    uuid: str
    title: str = ""
    public_address: str = ""
    local: bool | None = None


class PlexWebhookPayload(msgspec.Struct):
    """The part of a ``media.*`` webhook document that is mapped."""

    event: str
    account: PlexUser = msgspec.field(name="Account")
    server: PlexServer = msgspec.field(name="Server")
    player: WebhookPlayer = msgspec.field(name="Player")
    metadata: PlexItem = msgspec.field(name="Metadata")


class SessionPlayer(msgspec.Struct, rename="camel"):
    """A session's ``Player``: the client, its state and its address on the server's side."""

    machine_identifier: str = ""
    title: str = ""
    platform: str = ""
    platform_version: str = ""
    product: str = ""
    version: str = ""
    device: str = ""
    address: str = ""
    state: str = ""
    local: Flag = None
    relayed: Flag = None
    secure: Flag = None


class PlexSessionInfo(msgspec.Struct, rename="camel"):
    id: str = ""
    bandwidth: Number = None
    location: str = ""


class PlexTranscodeSession(msgspec.Struct, rename="camel"):
    video_decision: str = ""
    audio_decision: str = ""


class PlexMedia(msgspec.Struct, rename="camel"):
    video_resolution: str = ""
    video_codec: str = ""
    audio_codec: str = ""
    audio_channels: Number = None
    bitrate: Number = None
    selected: Flag = None


class PlexSession(PlexItem, rename="camel", kw_only=True):
    """One entry of ``/status/sessions``: a library item plus who plays it where."""

    session_key: int | str
    user: PlexUser = msgspec.field(name="User")
    player: SessionPlayer = msgspec.field(name="Player")
    session: PlexSessionInfo | None = msgspec.field(name="Session", default=None)
    transcode_session: PlexTranscodeSession | None = msgspec.field(
        name="TranscodeSession", default=None
    )
    media: list[PlexMedia] = msgspec.field(name="Media", default_factory=list)
    guid: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """The live session as PMS names it: (sessionKey, ratingKey)."""
        return (str(self.session_key), str(self.rating_key))


class _Envelope(msgspec.Struct):
    event: str


class _IdentityContainer(msgspec.Struct, rename="camel"):
    machine_identifier: str


class _IdentityDoc(msgspec.Struct):
    container: _IdentityContainer = msgspec.field(name="MediaContainer")


class _SessionsContainer(msgspec.Struct):
    size: int = 0
    metadata: list[msgspec.Raw] = msgspec.field(name="Metadata", default_factory=list)


class _SessionsDoc(msgspec.Struct):
    container: _SessionsContainer = msgspec.field(name="MediaContainer")


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_identity_decoder = msgspec.json.Decoder(_IdentityDoc)
_webhook_decoder = msgspec.json.Decoder(PlexWebhookPayload)
_sessions_decoder = msgspec.json.Decoder(_SessionsDoc)
_session_decoder = msgspec.json.Decoder(PlexSession)

_json = msgspec.json.Encoder()

_TOO_DEEP = "payload is nested too deeply to be a Plex webhook"


# ---------------------------------------------------------------------------------------
# reading the payloads


def webhook_kind(payload: bytes) -> str:
    """The ``event`` of a webhook document (``media.play``, ``library.new``...), read
    before the rest so that kinds which are not events need not be valid."""
    try:
        return _envelope_decoder.decode(payload).event
    except msgspec.ValidationError as exc:
        raise PlexPayloadError(f"invalid payload: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PlexPayloadError(f"payload is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec gives up on deep nesting, even in fields it skips
        raise PlexPayloadError(_TOO_DEEP) from None


def decode_webhook(payload: bytes) -> PlexWebhookPayload:
    """A ``media.*`` webhook document; :class:`PlexPayloadError` says what is wrong."""
    try:
        parsed = _webhook_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise PlexPayloadError(f"invalid payload: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PlexPayloadError(f"payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise PlexPayloadError(_TOO_DEEP) from None
    _require(
        "invalid payload: ",
        ("Server.uuid", parsed.server.uuid),
        ("Player.uuid", parsed.player.uuid),
        ("Metadata.ratingKey", str(parsed.metadata.rating_key)),
        ("Account.id", str(parsed.account.id)),
    )
    return parsed


def decode_session(entry: str | bytes) -> PlexSession:
    """One ``/status/sessions`` entry (its JSON text); :class:`PlexPayloadError` says what
    is wrong."""
    try:
        session = _session_decoder.decode(entry)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PlexPayloadError(str(exc)) from None
    _require(
        "",
        ("sessionKey", str(session.session_key)),
        ("ratingKey", str(session.rating_key)),
        ("type", session.type),
        ("title", session.title),
        ("User.id", str(session.user.id)),
    )
    return session


@dataclass
class SessionsSnapshot:
    """The readable entries of one ``/status/sessions`` answer (each with its JSON text),
    and one line per entry that could not be read."""

    sessions: list[tuple[PlexSession, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unreadable


def read_sessions(body: bytes) -> SessionsSnapshot:
    """One ``/status/sessions`` answer. Theme music played while browsing (a ``library://``
    guid) is not a playback and is left out, as Tautulli does. :class:`PlexPayloadError` when
    the answer is not a sessions list at all; an unreadable entry is listed in
    ``unreadable``."""
    try:
        doc = _sessions_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PlexPayloadError(str(exc)) from None
    snapshot = SessionsSnapshot()
    for i, raw in enumerate(doc.container.metadata):
        text = bytes(raw).decode("utf-8", errors="replace")
        try:
            session = decode_session(text)
        except PlexPayloadError as exc:
            snapshot.unreadable.append(f"Metadata[{i}]: {exc}")
            continue
        if session.guid.startswith("library://"):
            continue
        snapshot.sessions.append((session, text))
    return snapshot


def read_identity(body: bytes) -> str:
    """The server id (``machineIdentifier``) of a ``GET /identity`` answer: a Plex server's
    ``Server.uuid`` in webhooks, Tautulli's ``pms_identifier``.

    >>> read_identity(b'{"MediaContainer":{"size":0,"machineIdentifier":"5d4f","version":"1"}}')
    '5d4f'
    """
    try:
        server = _identity_decoder.decode(body).container.machine_identifier
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PlexPayloadError(f"answered something unreadable: {exc}") from None
    if not server.strip():
        raise PlexPayloadError("gave an empty machineIdentifier")
    return server.strip()


def read_history_page(body: bytes) -> tuple[list[dict[str, Any]], int]:
    """The entries of one watch-history page (``MediaContainer.Metadata``) and the total the
    server counts (``totalSize``, else ``size``)."""
    try:
        document = msgspec.json.decode(body)
        container = document["MediaContainer"]
        if not isinstance(container, dict):
            raise TypeError("MediaContainer is not an object")
    except (msgspec.DecodeError, KeyError, TypeError, RecursionError) as exc:
        raise PlexPayloadError(f"answered something unreadable: {exc}") from None
    entries = container.get("Metadata") or []
    if not isinstance(entries, list):
        raise PlexPayloadError("Metadata is not a list")
    total = epoch(container.get("totalSize")) or epoch(container.get("size")) or 0
    return [e for e in entries if isinstance(e, dict)], total


def _require(prefix: str, *values: tuple[str, str]) -> None:
    for name, value in values:
        if not value.strip():
            raise PlexPayloadError(f"{prefix}{name} is empty")


# ---------------------------------------------------------------------------------------
# the mapping


def plex_user_id(raw: str | int, owner_id: str | None) -> str:
    """A Plex user id as a string, the owner's local id 1 mapped to ``owner_id`` (their
    plex.tv id) when it is known.

    >>> plex_user_id(1, "8312457"), plex_user_id("1", None), plex_user_id(5551234, "8312457")
    ('8312457', '1', '5551234')
    """
    user_id = str(raw).strip()
    if user_id == OWNER_LOCAL_ID and owner_id is not None:
        return owner_id
    return user_id


@dataclass(frozen=True)
class WebhookTransition:
    """One transition the webhook's playback state decided for a document: its type, the
    kind it is identified by (the document's ``event``, or :data:`SUPERSEDED` for the stop of
    a playback a new play replaced), and the playback's ``session_key`` and start."""

    event_type: EventType
    kind: str
    session_key: str
    started_at: datetime


def webhook_events(
    payload: PlexWebhookPayload,
    transitions: Sequence[WebhookTransition],
    *,
    received_at: datetime,
    raw: bytes,
    owner_id: str | None = None,
) -> list[MediaEvent]:
    """The events of one webhook document (source ``plex``), one per transition.

    ``received_at`` is the event time (Plex sends none) and, in ms, part of each
    ``event_id`` with the server, the kind and the ``session_key``. The position is
    ``Metadata.viewOffset``: 0 on a play without one (no saved progress: it starts at the
    beginning), unknown on a superseded playback's stop. ``Player.publicAddress`` is the
    address; ``Player.local`` gives the location. Raises
    :class:`~ingestor.errors.InvalidEvent` for an event that is not valid or too large.
    """
    meta, player, server_id = payload.metadata, payload.player, payload.server.uuid
    events = []
    for step in transitions:
        position = _int(meta.view_offset)
        if step.event_type is EventType.PLAY and position is None:
            position = 0
        if step.kind == SUPERSEDED:
            position = None
        local = player.local
        event = MediaEvent(
            event_id=make_event_id(
                WEBHOOK_SOURCE, server_id, step.kind, step.session_key, _epoch_ms(received_at)
            ),
            event_type=step.event_type,
            occurred_at=received_at,
            source=WEBHOOK_SOURCE,
            server_id=server_id,
            session_key=step.session_key,
            started_at=step.started_at,
            stopped_at=received_at if step.event_type is EventType.STOP else None,
            position_ms=position,
            percent_complete=percent_of(position, _int(meta.duration)),
            player=player.title,
            machine_id=player.uuid,
            ip_address=player.public_address,
            local=local,
            location_type="" if local is None else ("lan" if local else "wan"),
            raw_payload=raw.decode("utf-8", errors="replace"),
            **_user_fields(payload.account, owner_id),
            **_item_fields(meta),
        )
        events.append(check_event_size(event.validate()))
    return events


def session_event(
    entry: PlexSession,
    event_type: EventType,
    *,
    server_id: str,
    session_key: str,
    started_at: datetime,
    polled_at: datetime,
    raw: str,
    owner_id: str | None = None,
) -> MediaEvent:
    """The event of one transition of a ``/status/sessions`` entry (source ``plex_poll``).

    ``polled_at`` is the event time (the poll that saw the change) and, in ms, part of the
    ``event_id`` with the server, the type and the ``session_key``; ``raw`` is the entry's
    JSON text. The stream details come from the selected ``Media`` (else the first);
    ``Session.location`` (else ``Player.local``) gives the location. Raises
    :class:`~ingestor.errors.InvalidEvent` for an event that is not valid.
    """
    player = entry.player
    info = entry.session or PlexSessionInfo()
    media = next((m for m in entry.media if _flag(m.selected)), None) or (
        entry.media[0] if entry.media else PlexMedia()
    )
    local = _flag(player.local)
    location = info.location or ("" if local is None else ("lan" if local else "wan"))
    position = _int(entry.view_offset)
    event = MediaEvent(
        event_id=make_event_id(
            POLL_SOURCE, server_id, str(event_type), session_key, _epoch_ms(polled_at)
        ),
        event_type=event_type,
        occurred_at=polled_at,
        source=POLL_SOURCE,
        server_id=server_id,
        session_key=session_key,
        started_at=started_at,
        stopped_at=polled_at if event_type is EventType.STOP else None,
        position_ms=position,
        percent_complete=percent_of(position, _int(entry.duration)),
        platform=player.platform,
        platform_version=player.platform_version,
        player=player.title,
        product=player.product,
        product_version=player.version,
        device=player.device,
        machine_id=player.machine_identifier,
        ip_address=player.address,
        location_type=location,
        transcode_decision=transcode_decision(entry),
        video_resolution=media.video_resolution,
        video_codec=media.video_codec,
        audio_codec=media.audio_codec,
        audio_channels=_int(media.audio_channels),
        stream_bitrate=_int(media.bitrate),
        bandwidth=_int(info.bandwidth),
        secure=_flag(player.secure),
        local=local,
        relayed=_flag(player.relayed),
        raw_payload=raw,
        **_user_fields(entry.user, owner_id),
        **_item_fields(entry),
    )
    return event.validate()


def history_entry_id(entry: Mapping[str, Any]) -> str:
    """The id in a watch-history entry's ``historyKey``
    (``/status/sessions/history/1234`` -> ``1234``)."""
    key = str(entry.get("historyKey") or "").strip().rstrip("/")
    return key.rsplit("/", 1)[-1] if key else ""


def history_event(
    entry: Mapping[str, Any], server_id: str, owner_id: str | None = None
) -> MediaEvent:
    """The ``summary`` event of one watch-history entry (source ``plex-history``; raw
    payload: the entry). It says only who viewed which item when (``viewedAt``, when Plex
    counted it watched): that is ``started_at`` and ``occurred_at``, and nothing else is
    invented. Raises :class:`~ingestor.sources.history_import.InvalidRow` for an entry
    without a ``historyKey``, a ``viewedAt`` or an ``accountID``.

    >>> event = history_event(
    ...     {"historyKey": "/status/sessions/history/77", "ratingKey": "54321",
    ...      "librarySectionID": "2", "title": "Pilot", "type": "episode",
    ...      "viewedAt": 1767643200, "accountID": 1, "deviceID": 3}, "srv", "8312457")
    >>> event.session_key, event.user_id, event.library_id, event.started_at.year
    ('77', '8312457', '2', 2026)
    """
    hid = history_entry_id(entry)
    where = f"history entry {hid or '(no historyKey)'}"
    if not hid:
        raise InvalidRow(f"{where}: no historyKey")
    viewed = epoch(entry.get("viewedAt"))
    if not viewed:
        raise InvalidRow(f"{where}: no viewedAt")
    account = entry.get("accountID")
    if account is None or str(account).strip() == "":
        raise InvalidRow(f"{where}: no accountID")
    at = datetime.fromtimestamp(viewed, UTC)
    return MediaEvent(
        event_id=make_event_id(HISTORY_SOURCE, server_id, hid),
        event_type=EventType.SUMMARY,
        occurred_at=at,
        source=HISTORY_SOURCE,
        server_id=server_id,
        session_key=hid,
        user_id=plex_user_id(account, owner_id),
        media_type=str(entry.get("type") or "unknown"),
        title=str(entry.get("title") or entry.get("ratingKey") or ""),
        parent_title=str(entry.get("parentTitle") or ""),
        grandparent_title=str(entry.get("grandparentTitle") or ""),
        rating_key=str(entry.get("ratingKey") or ""),
        # the section id only: history entries name no library title
        library_id=str(entry.get("librarySectionID") or ""),
        started_at=at,
        raw_payload=_json.encode(dict(entry)).decode(),
    )


def epoch(value: Any) -> int | None:
    """Epoch seconds (a number or its text) as an int; ``None`` when absent or not one."""
    try:
        return int(value) if value not in (None, "") and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def transcode_decision(session: PlexSession) -> str:
    """Tautulli's rule: ``transcode`` if video or audio is transcoded, else ``copy`` if either
    is copied, else ``direct play`` (also when there is no TranscodeSession)."""
    ts = session.transcode_session
    if ts is None:
        return "direct play"
    decisions = {ts.video_decision, ts.audio_decision}
    if "transcode" in decisions:
        return "transcode"
    if "copy" in decisions:
        return "copy"
    return "direct play"


def scrobbled(session: PlexSession, fraction: float) -> bool:
    """True once the playhead reached ``fraction`` of the length (Plex's watched mark is
    0.9)."""
    offset, duration = _int(session.view_offset), _int(session.duration)
    return offset is not None and bool(duration) and offset >= fraction * duration


def _user_fields(user: PlexUser, owner_id: str | None) -> dict[str, Any]:
    return {
        "user_id": plex_user_id(user.id, owner_id),
        "username": user.title,
        "user_thumb": user.thumb,
    }


def _item_fields(item: PlexItem) -> dict[str, Any]:
    duration = _int(item.duration)
    return {
        "media_type": item.type,
        "title": item.title,
        "parent_title": item.parent_title,
        "grandparent_title": item.grandparent_title,
        "rating_key": str(item.rating_key),
        "year": _int(item.year),
        "media_duration": round(duration / 1000) if duration is not None else None,
        "library_id": "" if item.library_section_id is None else str(item.library_section_id),
        "library_name": item.library_section_title,
    }


def _epoch_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _int(value: Number) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value.strip())
    except ValueError:
        return None


def _flag(value: Flag) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true")


__all__ = [
    "HISTORY_SOURCE",
    "KINDS",
    "OWNER_LOCAL_ID",
    "POLL_SOURCE",
    "SUPERSEDED",
    "WEBHOOK_SOURCE",
    "PlexItem",
    "PlexPayloadError",
    "PlexSession",
    "PlexUser",
    "PlexWebhookPayload",
    "SessionsSnapshot",
    "WebhookTransition",
    "decode_session",
    "decode_webhook",
    "epoch",
    "history_entry_id",
    "history_event",
    "plex_user_id",
    "read_history_page",
    "read_identity",
    "read_sessions",
    "scrobbled",
    "session_event",
    "transcode_decision",
    "webhook_events",
    "webhook_kind",
]
