"""MediaEvent: the one immutable record every source produces.

An event is one report from one source: a webhook call, a state transition seen on a
WebSocket, a Tautulli history row. It is a *transition* (``play``, ``pause``...) or a
finished-session ``summary``, never a snapshot of a session's state.

Identity and keys are structured values:

* ``event_id`` is a deterministic hash of the source occurrence (:func:`make_event_id`),
  never random, never all-zero.
* :data:`StepKey` names one step of one source session (dedup tier b).
* :class:`CorrelationKey` names the playback a report is about (dedup tier c); its
  :attr:`CorrelationKey.cross_source` drops the source so reports from different sources of
  the same playback meet.

Payloads on the wire are JSON encoded by msgspec. Every event has a ``schema_version``;
older payloads are upcast on read (:func:`decode_event`), so nothing written once becomes
unreadable.

How versions are spelled on the wire: msgspec leaves out fields at their default, and
``schema_version``'s default is :data:`SCHEMA_VERSION`, so a current payload has *no*
``schema_version`` key and a missing key reads as the current version (the batch fast path
relies on it too). A version bump would therefore make every payload written before it read
as the new version. So a field that an older event simply lacks, and whose absence means
"this source did not say" (its empty default), is added **without** a bump: the decoded
older event has the empty default, exactly what an upcaster would give it. ``library_id``
and ``library_name`` (added 2026-12) are such fields; events recorded before them read with
empty libraries, which statistics show as "unknown". A change that an upcaster must compute
(a rename, a new unit, a new meaning) needs a bump *and* an explicit version on the wire for
the version before it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

import msgspec

from ingestor.errors import InvalidEvent

SCHEMA_VERSION = 1


class EventType(StrEnum):
    PLAY = "play"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    SCROBBLE = "scrobble"
    PROGRESS = "progress"
    SUMMARY = "summary"


LIFECYCLE_TYPES = frozenset(
    {
        EventType.PLAY,
        EventType.PAUSE,
        EventType.RESUME,
        EventType.STOP,
        EventType.SCROBBLE,
        EventType.PROGRESS,
    }
)

# Steps that happen once per session: a second report of one is a re-report (tier b).
# Pause, resume and progress can happen many times; their step is told apart by position.
_ONCE_PER_SESSION = frozenset(
    {EventType.PLAY, EventType.STOP, EventType.SCROBBLE, EventType.SUMMARY}
)


class MediaEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One playback report, schema version 1.

    Times are timezone-aware UTC. Durations are seconds, positions milliseconds. Empty
    strings and ``None`` mean "this source did not say": projections never overwrite a
    known value with one.

    ``library_id`` and ``library_name`` are later additions within version 1 (see the module
    docstring): events recorded before them, and sources whose payload names no library,
    leave them empty ("unknown").
    """

    schema_version: int = SCHEMA_VERSION
    event_id: str
    event_type: EventType
    occurred_at: datetime
    source: str
    server_id: str
    session_key: str
    # who
    user_id: str
    username: str = ""
    friendly_name: str = ""
    user_thumb: str = ""
    email: str = ""
    # what
    media_type: str
    title: str
    parent_title: str = ""
    grandparent_title: str = ""
    rating_key: str = ""
    year: int | None = None
    media_duration: int | None = None
    # the library (Plex section, Tautulli section_id / library_name) the item belongs to;
    # ids are strings like every id. Empty: unknown (an older event, or not in the payload)
    library_id: str = ""
    library_name: str = ""
    # when (the playback as this source saw it)
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    position_ms: int | None = None
    # the exact share of the media reached, 0-100, never rounded (events recorded before
    # 2026-12-07 carry whole numbers: JSON's 85 reads as 85.0)
    percent_complete: float | None = None
    play_duration: int | None = None
    paused_counter: int | None = None
    # where and how
    platform: str = ""
    platform_name: str = ""
    platform_version: str = ""
    player: str = ""
    product: str = ""
    product_version: str = ""
    device: str = ""
    machine_id: str = ""
    ip_address: str = ""
    location_type: str = ""
    transcode_decision: str = ""
    video_resolution: str = ""
    video_codec: str = ""
    video_dynamic_range: str = ""
    audio_codec: str = ""
    audio_channels: int | None = None
    stream_bitrate: int | None = None
    bandwidth: int | None = None
    secure: bool | None = None
    local: bool | None = None
    relayed: bool | None = None
    # where ip_address was, resolved at ingestion from the full address before IP_ANONYMIZE
    # truncated it (ingestor/anonymize.py); empty: not resolved there (the detector looks
    # the address up itself)
    geo_country: str = ""
    geo_city: str = ""
    geo_latitude: float | None = None
    geo_longitude: float | None = None
    # the upstream payload as received, for the audit trail
    raw_payload: str | None = None

    @property
    def subject(self) -> str:
        """The JetStream subject, ``playback.<server>.<source>.<media_type>``
        (:func:`media_subject`)."""
        return media_subject(self.server_id, self.source, self.media_type)

    @property
    def playback_start(self) -> datetime:
        """When the playback began as this source reports it (falls back to the event time)."""
        return self.started_at or self.occurred_at

    @property
    def correlation(self) -> CorrelationKey:
        return CorrelationKey(
            source=self.source,
            server_id=self.server_id,
            user_id=self.user_id,
            rating_key=self.rating_key or self.title,
            machine_id=self.machine_id,
            started_at=self.playback_start,
        )

    def validate(self) -> MediaEvent:
        """Raise :class:`InvalidEvent` naming every missing or malformed field."""
        problems = []
        if not self.event_id or not self.event_id.strip("0-"):
            problems.append("event_id is empty or all zero")
        if not (
            self.source
            and self.server_id
            and self.session_key
            and self.user_id
            and self.media_type
            and self.title
        ):
            for name in ("source", "server_id", "session_key", "user_id", "media_type", "title"):
                if not getattr(self, name):
                    problems.append(f"{name} is empty")
        for name, value in (
            ("occurred_at", self.occurred_at),
            ("started_at", self.started_at),
            ("stopped_at", self.stopped_at),
        ):
            if value is not None and value.tzinfo is None:
                problems.append(f"{name} has no time zone")
        if self.event_type is EventType.SUMMARY and self.started_at is None:
            problems.append("a summary needs started_at")
        if problems:
            raise InvalidEvent(f"invalid event {self.event_id!r}: " + "; ".join(problems))
        return self


# Keys are tuples of their fields: structured, hashable, cheap (the dedup index builds
# several per event), and never a string split on a separator.
SessionKey = tuple[str, str, str]
"""A source's own identity of one playback: (source, server_id, session_key)."""
StepKey = tuple[SessionKey, str, int]
"""One step of one source session: (session, event_type, step). Tier (b) keys on it."""
CrossKey = tuple[str, str, str, str]
"""What two sources' reports of one playback share: (server_id, user_id, item, machine_id)."""


def percent_of(position_ms: float | None, duration_ms: float | None) -> float | None:
    """The exact share of the media a position reached, 0-100 (never rounded: a play
    stopped at 84.79 % is not watched at 85 %).

    >>> percent_of(84_790, 100_000), percent_of(9_000, 0), percent_of(None, 10)
    (84.79, None, None)
    """
    if position_ms is None or not duration_ms or duration_ms <= 0:
        return None
    return max(0.0, min(100.0, position_ms * 100 / duration_ms))


def session_key(event: MediaEvent) -> SessionKey:
    return (event.source, event.server_id, event.session_key)


def step_of(event: MediaEvent) -> int:
    """Tells apart the steps of one type in a session: 0 for steps that happen once (play,
    stop, scrobble, summary); the playhead in ms (or the event time) for pause, resume and
    progress, which can happen many times."""
    if event.event_type in _ONCE_PER_SESSION:
        return 0
    if event.position_ms is not None:
        return event.position_ms
    return int(event.occurred_at.timestamp() * 1000)


def step_key(event: MediaEvent) -> StepKey:
    return ((event.source, event.server_id, event.session_key), event.event_type, step_of(event))


def cross_key(event: MediaEvent) -> CrossKey:
    return (event.server_id, event.user_id, event.rating_key or event.title, event.machine_id)


class CorrelationKey(msgspec.Struct, frozen=True, array_like=True):
    """The key of the report that opened a playback; unique per playback."""

    source: str
    server_id: str
    user_id: str
    rating_key: str
    machine_id: str
    started_at: datetime

    @property
    def cross_source(self) -> CrossKey:
        return (self.server_id, self.user_id, self.rating_key, self.machine_id)

    def encode(self) -> str:
        """Canonical text form for storage (a JSON array: never split on a separator)."""
        return _json_encoder.encode(self).decode()

    @classmethod
    def decode(cls, text: str) -> CorrelationKey:
        return msgspec.json.decode(text, type=cls)


def make_event_id(source: str, server_id: str, *identity: object) -> str:
    """A deterministic event id: the same upstream occurrence always hashes the same.

    ``identity`` is what makes the occurrence unique within its source, for example a
    Tautulli ``row_id``, or for a webhook (which carries no time) its kind, its session and
    the receipt time the adapter recorded once.

    >>> make_event_id("tautulli", "srv", 5120) == make_event_id("tautulli", "srv", 5120)
    True
    >>> len(make_event_id("plex", "srv", "media.play", "abc", 1))
    32
    """
    material = _json_encoder.encode([source, server_id, *identity])
    return hashlib.blake2b(material, digest_size=16).hexdigest()


_SUBJECT_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MEDIA_SUBJECT_ROOT = "playback"
NO_SERVER_TOKEN = "unknown"
"""The server token of an event without a server id (such an event is invalid and ends in the
dead-letter stream, but its subject must still be a valid one)."""


MAX_SUBJECT_TOKEN = 96
"""The longest subject token: nats-server closes a connection whose protocol line is over
4 KiB (``maximum control line exceeded``), and nats-py does not reconnect after it, so one
report with a huge server id or media type would stop every later publish."""


def subject_token(value: str) -> str:
    """Make ``value`` usable as one NATS subject token: every run of characters other than
    letters, digits, ``_`` and ``-`` (so ``.``, ``*``, ``>``, spaces) becomes ``_``; an empty
    value becomes ``unknown``; one over :data:`MAX_SUBJECT_TOKEN` characters keeps its first
    79 and a digest of the whole (the payload keeps the value itself).

    >>> subject_token("a.b *>c"), subject_token("")
    ('a_b_c', 'unknown')
    >>> long = subject_token("A" * 5000)
    >>> len(long), long[:4], long == subject_token("A" * 5000) != subject_token("A" * 5001)
    (96, 'AAAA', True)
    """
    token = _SUBJECT_UNSAFE.sub("_", value) or NO_SERVER_TOKEN
    if len(token) <= MAX_SUBJECT_TOKEN:
        return token
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{token[: MAX_SUBJECT_TOKEN - 17]}_{digest}"


def media_subject(server_id: str, source: str, media_type: str) -> str:
    """The subject of a media event: ``playback.<server>.<source>.<media_type>``, each part
    one token (:func:`subject_token`). The server comes first after the root so that one
    ingestor can take one server's events with one filter, ``playback.<server>.>``
    (``PROJECT_SERVERS``, docs/architecture.md "Several ingestors").

    >>> media_subject("8f2a" * 10, "plex", "movie") == "playback." + "8f2a" * 10 + ".plex.movie"
    True
    >>> media_subject("", "jelly.fin", "episode")
    'playback.unknown.jelly_fin.episode'
    """
    server = subject_token(server_id)
    return f"{MEDIA_SUBJECT_ROOT}.{server}.{subject_token(source)}.{subject_token(media_type)}"


class MediaSubject(NamedTuple):
    """A media event's subject, read. ``server`` is the server's token, or None for a subject
    written before servers were in it (``playback.<source>.<media_type>``, until 2026-12):
    such a message's server is the ``server_id`` of its payload (:meth:`upcast`)."""

    server: str | None
    source: str
    media_type: str

    def upcast(self, server_id: str) -> MediaSubject:
        """This subject in the current form, the server taken from the decoded event when the
        subject did not name one."""
        if self.server is not None:
            return self
        return MediaSubject(subject_token(server_id), self.source, self.media_type)

    def __str__(self) -> str:
        if self.server is None:
            return f"{MEDIA_SUBJECT_ROOT}.{self.source}.{self.media_type}"
        return f"{MEDIA_SUBJECT_ROOT}.{self.server}.{self.source}.{self.media_type}"


def parse_media_subject(subject: str) -> MediaSubject | None:
    """Read a media event's subject of either form; None for anything else (a record's
    subject, a malformed one).

    >>> parse_media_subject("playback.8f2a.plex.movie")
    MediaSubject(server='8f2a', source='plex', media_type='movie')
    >>> old = parse_media_subject("playback.plex.movie")
    >>> old, str(old.upcast("8f2a"))
    (MediaSubject(server=None, source='plex', media_type='movie'), 'playback.8f2a.plex.movie')
    >>> parse_media_subject("audit.confirm"), parse_media_subject("playback.a.b.c.d")
    (None, None)
    """
    tokens = subject.split(".")
    if tokens[0] != MEDIA_SUBJECT_ROOT or not all(tokens):
        return None
    if len(tokens) == 4:
        return MediaSubject(tokens[1], tokens[2], tokens[3])
    if len(tokens) == 3:
        return MediaSubject(None, tokens[1], tokens[2])
    return None


def _epoch_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# ---------------------------------------------------------------------------------------
# encoding, decoding, upcasting

_json_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(MediaEvent)
_raw_decoder = msgspec.json.Decoder()

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[int, Upcaster] = {}


def upcaster(from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function that turns a payload of ``from_version`` into the next version."""

    def register(fn: Upcaster) -> Upcaster:
        if from_version in _UPCASTERS:
            raise ValueError(f"an upcaster from version {from_version} is already registered")
        _UPCASTERS[from_version] = fn
        return fn

    return register


def encode_event(event: MediaEvent) -> bytes:
    return _json_encoder.encode(event)


def decode_event(data: bytes) -> MediaEvent:
    """Decode one stored payload of any schema version into the current MediaEvent.

    Raises :class:`InvalidEvent` when the payload is not a readable event at all.
    """
    return decode_event_versioned(data)[0]


def decode_event_versioned(data: bytes) -> tuple[MediaEvent, bool]:
    """Like :func:`decode_event`, also saying whether the payload was upcast."""
    try:
        event = _event_decoder.decode(data)
    except msgspec.DecodeError:
        event = None
    if event is not None and event.schema_version == SCHEMA_VERSION:
        return event, False
    try:
        payload = _raw_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"undecodable payload: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidEvent(f"payload is a JSON {type(payload).__name__}, not an object")
    return upcast(payload), True


def upcast(payload: dict[str, Any]) -> MediaEvent:
    """Apply registered upcasters until the payload is at :data:`SCHEMA_VERSION`."""
    version = payload.get("schema_version") or 0
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise InvalidEvent(f"unknown schema_version {version!r}")
    while version < SCHEMA_VERSION:
        step = _UPCASTERS.get(version)
        if step is None:
            raise InvalidEvent(f"no upcaster from schema_version {version}")
        payload = step(dict(payload))
        version = payload["schema_version"]
    try:
        return msgspec.convert(payload, MediaEvent)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"invalid event payload: {exc}") from None


@upcaster(0)
def _v0_snapshot_to_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 0 is the reference implementation's snapshot: no event type, ``timestamp``
    for the record time, integer user ids, and ``play_duration`` in minutes for rows that
    came from Tautulli. A snapshot with ``stopped_at`` is a finished session (a summary);
    one without is a start.
    """
    payload["schema_version"] = 1
    payload["occurred_at"] = payload.pop("timestamp", None) or payload.get("started_at")
    if "user_id" in payload:
        payload["user_id"] = str(payload["user_id"])
    if payload.get("rating_key") is not None:
        payload["rating_key"] = str(payload["rating_key"])
    payload["event_type"] = "summary" if payload.get("stopped_at") else "play"
    if payload.get("source", "").startswith("tautulli") and payload.get("play_duration"):
        payload["play_duration"] = int(payload["play_duration"]) * 60
    if not payload.get("server_id"):
        payload["server_id"] = "default"
    payload.pop("correlation_key", None)
    payload.pop("transaction_id", None)
    raw = payload.get("raw_payload")
    if raw is not None and not isinstance(raw, str):
        payload["raw_payload"] = _json_encoder.encode(raw).decode()
    return payload
