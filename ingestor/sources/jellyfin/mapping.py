"""Where a Jellyfin or Emby report becomes an observation of a playback. Pure: no I/O, no clock.

Jellyfin and Emby never say "a playback started": the WebSocket pushes the full list of
sessions (``Sessions``, ``upstream-payloads.md`` sections 3a and 4) and the webhook plugin
reports one session at a time (section 3b). Both are read here into the same
:class:`Observation` (one session playing one item: ids, position, paused, and the
:class:`PlaybackDetails` that become the events' fields):

* a ``Sessions`` entry (``SessionInfoDto``) -> :func:`observe_session`; a whole push ->
  :func:`observe_sessions`;
* a webhook notification (``PlaybackStart|Progress|Stop`` with "Send All Properties") ->
  :func:`observe_notification`.

The transitions, and so the :class:`~ingestor.events.MediaEvent` s, come from the session state
machine (:mod:`ingestor.sources.jellyfin.session_machine`), which needs what was seen before.

>>> entry = {"Id": "s1", "UserId": "u1", "UserName": "alice", "Client": "Jellyfin Web",
...          "DeviceName": "Firefox", "DeviceId": "d1", "RemoteEndPoint": "192.168.1.20",
...          "PlayState": {"PositionTicks": 6_000_000_000, "IsPaused": False,
...                        "PlayMethod": "DirectPlay"},
...          "NowPlayingItem": {"Id": "i1", "Name": "Heat", "Type": "Movie",
...                             "RunTimeTicks": 102_000_000_000, "ProductionYear": 1995}}
>>> seen = observe_session(entry)
>>> seen.session_id, seen.item_id, seen.position_ms, seen.paused
('s1', 'i1', 600000, False)
>>> seen.details.media_type, seen.details.media_duration, seen.details.transcode_decision
('movie', 10200, 'direct play')
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from ingestor.errors import IngestorError
from ingestor.events import MediaEvent

TICKS_PER_MS = 10_000
TICKS_PER_SECOND = 10_000_000

MEDIA_TYPES = {
    "Movie": "movie",
    "Episode": "episode",
    "Audio": "track",
    "AudioBook": "track",
    "MusicVideo": "clip",
    "Video": "clip",
    "Trailer": "clip",
    "TvChannel": "live",
    "LiveTvChannel": "live",
    "LiveTvProgram": "live",
    "Program": "live",
}
"""Jellyfin/Emby item ``Type`` -> the canonical media type (others are lower-cased)."""

PLAY_METHODS = {
    "DirectPlay": "direct play",
    "DirectStream": "direct stream",
    "Transcode": "transcode",
}
"""``PlayState.PlayMethod`` -> ``transcode_decision``."""


class UnreadableSession(IngestorError):
    """A session entry that cannot be read (missing ids, wrong types): the reason says which."""


DETAIL_FIELDS = (
    "user_id",
    "username",
    "media_type",
    "title",
    "parent_title",
    "grandparent_title",
    "rating_key",
    "year",
    "media_duration",
    "platform",
    "player",
    "product",
    "product_version",
    "device",
    "machine_id",
    "ip_address",
    "transcode_decision",
    "video_resolution",
    "video_codec",
    "audio_codec",
    "audio_channels",
    "stream_bitrate",
)
"""The :class:`~ingestor.events.MediaEvent` fields a Jellyfin or Emby report can say."""


def _detail_fields() -> list[tuple[str, Any] | tuple[str, Any, Any]]:
    """:data:`DETAIL_FIELDS` with MediaEvent's own types and defaults (one definition), and
    the exact length (``media_duration`` is whole seconds; completion is position / this)."""
    event = {f.name: f for f in msgspec.structs.fields(MediaEvent)}
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (name, event[name].type)
        if event[name].required
        else (name, event[name].type, event[name].default)
        for name in DETAIL_FIELDS
    ]
    return [*fields, ("media_duration_ms", int | None, None)]


PlaybackDetails = msgspec.defstruct(
    "PlaybackDetails",
    _detail_fields(),
    kw_only=True,
    frozen=True,
    omit_defaults=True,
    module=__name__,
)
PlaybackDetails.__doc__ = """What a report says about the playback: :data:`DETAIL_FIELDS`, typed
and defaulted as in :class:`~ingestor.events.MediaEvent`, plus ``media_duration_ms``."""


class Observation(msgspec.Struct, kw_only=True, frozen=True):
    """One session playing one item, as one report saw it."""

    session_id: str
    item_id: str
    play_session_id: str = ""
    position_ms: int | None = None
    paused: bool | None = False  # None: the report does not say (the known state stays)
    details: PlaybackDetails
    text: str | None = None  # the upstream report as received (a webhook body)
    # or the upstream Sessions entry, encoded only when an event needs it (most reports of a
    # playing session change nothing, and encoding every entry was most of their cost)
    entry: dict[str, Any] | None = None

    @property
    def raw(self) -> str | None:
        """The upstream report, for the events' ``raw_payload``."""
        if self.text is not None:
            return self.text
        return None if self.entry is None else _raw(self.entry)


# ---------------------------------------------------------------------------------------
# reading Jellyfin/Emby ``Sessions`` entries (SessionInfoDto)


def ticks_to_ms(ticks: object) -> int | None:
    """.NET ticks (100 ns) to whole milliseconds.

    >>> ticks_to_ms(6_000_000_000), ticks_to_ms(None)
    (600000, None)
    """
    if ticks is None:
        return None
    if isinstance(ticks, bool) or not isinstance(ticks, int | float):
        raise UnreadableSession(f"ticks must be a number, got {ticks!r}")
    if not -(2**63) <= ticks < 2**63:  # .NET ticks are an Int64; this also refuses NaN, inf
        raise UnreadableSession(f"ticks must be a 64-bit integer, got {ticks!r}")
    return max(0, int(ticks) // TICKS_PER_MS)


def media_type(item_type: str) -> str:
    """Jellyfin/Emby item ``Type`` -> canonical media type.

    >>> media_type("Episode"), media_type("Audio"), media_type("Book")
    ('episode', 'track', 'book')
    """
    return MEDIA_TYPES.get(item_type, item_type.lower() or "unknown")


def strip_port(endpoint: str) -> str:
    """The IP of a ``RemoteEndPoint`` (which may carry a port, brackets, or a v4-mapped v6).

    >>> strip_port("192.168.1.20:53211"), strip_port("[2001:db8::1]:443"), strip_port("::1")
    ('192.168.1.20', '2001:db8::1', '::1')
    >>> strip_port("::ffff:10.0.0.5")
    '10.0.0.5'
    """
    value = endpoint.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    if value.lower().startswith("::ffff:") and value.count(".") == 3:
        value = value[7:]
    return value


def resolution(height: object) -> str:
    """A video height -> Plex-style resolution label (``4k``, ``1080``, ``720``, ``sd``...)."""
    if not isinstance(height, int) or isinstance(height, bool) or height <= 0:
        return ""
    for floor, label in ((1800, "4k"), (1000, "1080"), (700, "720"), (560, "576"), (440, "480")):
        if height >= floor:
            return label
    return "sd"


def observe_session(entry: object) -> Observation | None:
    """Read one ``Sessions`` entry: an :class:`Observation` if it plays something, ``None``
    if it is idle. Raise :class:`UnreadableSession` naming what is wrong.

    Jellyfin item ids are 32-hex strings, Emby's numeric strings (or numbers): both become
    ``rating_key`` strings. Positions are ticks (100 ns), converted to ms.
    """
    if not isinstance(entry, dict):
        raise UnreadableSession(f"a session is a JSON {type(entry).__name__}, not an object")
    session_id = _id(entry.get("Id"))
    if not session_id:
        raise UnreadableSession("a session has no Id")
    item = entry.get("NowPlayingItem")
    if item is None:
        return None
    if not isinstance(item, dict):
        raise UnreadableSession(f"session {session_id}: NowPlayingItem is not an object")
    item_id = _id(item.get("Id"))
    if not item_id:
        raise UnreadableSession(f"session {session_id}: NowPlayingItem has no Id")
    user_id = _id(entry.get("UserId"))
    if not user_id:
        raise UnreadableSession(f"session {session_id}: a playing session without UserId")
    state = entry.get("PlayState") or {}
    if not isinstance(state, dict):
        raise UnreadableSession(f"session {session_id}: PlayState is not an object")
    try:
        position = ticks_to_ms(state.get("PositionTicks"))
        duration_ms = ticks_to_ms(item.get("RunTimeTicks"))
    except UnreadableSession as exc:
        raise UnreadableSession(f"session {session_id}: {exc}") from None
    video, audio = _streams(item.get("MediaStreams"))
    transcoding = entry.get("TranscodingInfo")
    transcoding = transcoding if isinstance(transcoding, dict) else {}
    bitrate = _int(transcoding.get("Bitrate")) or _int(video.get("BitRate"))
    item_type = _str(item.get("Type"))
    details = PlaybackDetails(
        user_id=user_id,
        username=_str(entry.get("UserName")),
        media_type=media_type(item_type),
        title=_str(item.get("Name")) or item_id,
        **_hierarchy(item, item_type),
        rating_key=item_id,
        year=_int(item.get("ProductionYear")),
        # no library: NowPlayingItem's ParentId is the item's folder (a season, a movie's
        # folder), not its library, and the Sessions frame names no collection; the events
        # leave library_id/library_name empty rather than guess
        media_duration=None if duration_ms is None else duration_ms // 1000,
        media_duration_ms=duration_ms,
        platform=_str(entry.get("Client")),
        player=_str(entry.get("DeviceName")),
        product=_str(entry.get("Client")),
        product_version=_str(entry.get("ApplicationVersion")),
        device=_str(entry.get("DeviceType")),
        machine_id=_str(entry.get("DeviceId")),
        ip_address=strip_port(_str(entry.get("RemoteEndPoint"))),
        transcode_decision=PLAY_METHODS.get(_str(state.get("PlayMethod")), ""),
        video_resolution=resolution(video.get("Height")),
        video_codec=_str(video.get("Codec")),
        audio_codec=_str(audio.get("Codec")),
        audio_channels=_int(audio.get("Channels")),
        stream_bitrate=bitrate // 1000 if bitrate else None,
    )
    return Observation(
        session_id=session_id,
        item_id=item_id,
        play_session_id=_str(state.get("PlaySessionId") or entry.get("PlaySessionId")),
        position_ms=position,
        paused=state.get("IsPaused") is True,
        details=details,
        entry=entry,
    )


def observe_sessions(entries: Sequence[object]) -> tuple[list[Observation], set[str], list[str]]:
    """Read a whole ``Sessions`` push: (playing sessions, ids of unreadable sessions,
    one problem line per unreadable session)."""
    playing: list[Observation] = []
    unknown: set[str] = set()
    problems: list[str] = []
    for entry in entries:
        try:
            seen = observe_session(entry)
        except UnreadableSession as exc:
            problems.append(str(exc))
            if isinstance(entry, dict) and _id(entry.get("Id")):
                unknown.add(_id(entry.get("Id")))
            continue
        if seen is not None:
            playing.append(seen)
    return playing, unknown, problems


def _hierarchy(item: dict[str, Any], item_type: str) -> dict[str, str]:
    if item_type == "Episode":
        return {
            "parent_title": _str(item.get("SeasonName")),
            "grandparent_title": _str(item.get("SeriesName")),
        }
    if item_type == "Audio":
        artists = item.get("Artists")
        first_artist = artists[0] if isinstance(artists, list) and artists else ""
        return {
            "parent_title": _str(item.get("Album")),
            "grandparent_title": _str(item.get("AlbumArtist")) or _str(first_artist),
        }
    return {}


def _streams(streams: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first video and the default (else first) audio stream of the playing source."""
    video: dict[str, Any] = {}
    audio: dict[str, Any] = {}
    if not isinstance(streams, list):
        return video, audio
    for stream in streams:
        if not isinstance(stream, dict):
            continue
        if stream.get("Type") == "Video" and not video:
            video = stream
        elif stream.get("Type") == "Audio" and (not audio or stream.get("IsDefault") is True):
            audio = stream
    return video, audio


def _raw(entry: dict[str, Any]) -> str:
    """The entry as received, without the client's device profile (``Capabilities``), which
    describes the app, not the playback, and can be tens of kilobytes."""
    trimmed = {k: v for k, v in entry.items() if k != "Capabilities"}
    return json.dumps(trimmed, separators=(",", ":"), ensure_ascii=False)


def _id(value: object) -> str:
    """An upstream id as a string (Emby sends numeric ids as numbers in places)."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return value.strip() if isinstance(value, str) else ""


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


# ---------------------------------------------------------------------------------------
# reading the webhook plugin's notifications

PLAYBACK_NOTIFICATIONS = ("PlaybackStart", "PlaybackProgress", "PlaybackStop")
"""The notification types that report a playback; others are not events."""

# String values the plugin escapes (" -> \") before serialising them.
_ESCAPED = ("Name", "SeriesName", "ServerName", "DeviceName", "Client", "ClientName", "Album")


class MalformedNotification(IngestorError):
    """A webhook body that cannot be ingested; the message is the reason given to the caller."""


def decode_notification(body: bytes) -> dict[str, Any]:
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
    if _SURROGATE_ESCAPE.search(text):  # rare: only then pay for the whole check
        try:
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedNotification(
                "body has a string with a lone UTF-16 surrogate (\\uD800-\\uDFFF escape): not text"
            ) from None
    return payload


# a \uD800-\uDFFF escape: json.loads turns an unpaired one into a str that cannot be stored
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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
        **_notification_hierarchy(payload, item_type),
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
        text=body.decode("utf-8-sig"),
    )
    return _text(payload, "ServerId"), observation


def _notification_hierarchy(payload: dict[str, Any], item_type: str) -> dict[str, str]:
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


__all__ = [
    "DETAIL_FIELDS",
    "MEDIA_TYPES",
    "PLAYBACK_NOTIFICATIONS",
    "PLAY_METHODS",
    "MalformedNotification",
    "Observation",
    "PlaybackDetails",
    "UnreadableSession",
    "decode_notification",
    "media_type",
    "observe_notification",
    "observe_session",
    "observe_sessions",
    "resolution",
    "strip_port",
    "ticks_to_ms",
]
