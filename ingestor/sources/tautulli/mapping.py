"""Where a Tautulli history row or live session becomes a MediaEvent. Pure: no I/O, no clock.

A history row's mapping (:func:`summary_from_history_row`) is the one the API sync
(:mod:`ingestor.sources.tautulli.sync`) and the database import
(:mod:`ingestor.sources.tautulli.db_import`) share, so both give the same event for one row.
A ``get_activity`` session's (:func:`live_fields`, :func:`activity_event`) gives the
transitions the activity poll (:mod:`ingestor.sources.tautulli.activity`) decided.

A finished history row is one ``summary`` event:

* identity: ``session_key = str(row_id)`` and ``event_id = make_event_id("tautulli",
  server_id, row_id)`` (``row_id`` as an int, ``session_history.id``). The id is stable across
  re-syncs and re-imports of one Tautulli database, so a row the sync already brought in adds
  nothing when the database is imported (dedup tier a). ``reference_id`` only labels
  Tautulli's play group; it is kept in the raw payload, never used as identity.
* ``server_id`` is the Plex server's machineIdentifier (``get_server_info.pms_identifier``):
  history rows carry none, so the caller passes it.
* times: ``started``/``stopped`` (epoch seconds) become ``started_at``/``stopped_at``;
  ``occurred_at`` is the stop, since a summary happens when the session ends.
* durations are seconds (``play_duration``, falling back to ``duration``, which is the same
  value kept for backwards compatibility, never the item length), ``paused_counter`` seconds.
* ids become strings (``user_id``, ``rating_key``); ``""`` and ``None`` mean "not said".
* ``transcode_decision`` ``copy`` is a direct stream: it becomes ``"direct stream"``.
* ``secure``/``relayed``/``local`` 0/1/None become booleans; ``local`` falls back to
  ``location == "lan"`` (history rows have no ``local`` column).

Two kinds of rows are not summaries and :func:`summary_from_history_row` refuses them:

* in-progress rows (``state`` set: ``playing``/``paused``/``buffering``, added by
  ``include_activity=1``): the session has not ended. The sync skips them; the next pass sees
  the finished row. Live sessions reach the log as play/pause/resume/stop transitions from
  ``get_activity`` instead.
* grouped rows (``group_count`` > 1): one row standing for several sessions (Tautulli's
  "continued" plays, ``grouping=1``). The sync always asks for ``grouping=0``. A grouped row
  cannot be split, and keying it on either ``row_id`` (its newest session) or
  ``reference_id`` (its first) would merge different playbacks into one summary and lose or
  double count the others; so it is refused, and the caller reports it (the database import
  recovers every session of the group one by one).

Rows carry more than the API returns when they come from the database (``view_offset``, the
item length, stream details, app versions): the builder takes those optional keys too, so the
imported event can be richer; its identity, times and durations are the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from ingestor.errors import InvalidEvent
from ingestor.events import EventType, MediaEvent, make_event_id, percent_of

SOURCE = "tautulli"
ACTIVITY_SOURCE = "tautulli_activity"

# Tautulli shows this placeholder when a user has no avatar: it is no avatar.
DEFAULT_USER_THUMB = "interfaces/default/images/gravatar-default-80x80.png"

_TRANSCODE_DECISIONS = {
    "direct play": "direct play",
    "directplay": "direct play",
    "copy": "direct stream",
    "direct stream": "direct stream",
    "transcode": "transcode",
}

_json = msgspec.json.Encoder()


class InvalidHistoryRow(InvalidEvent):
    """A Tautulli history row that is not a finished session, or lacks what an event needs."""

    category = "invalid_tautulli_row"


# ---------------------------------------------------------------------------------------
# value normalisers: Tautulli mixes ints, numeric strings, "" and None for the same column


def as_int(value: Any) -> int | None:
    """An int from an int, a float or a numeric string; ``None`` for ``None``/``""``/junk.

    >>> as_int("42"), as_int(""), as_int(None), as_int(97.6), as_int("12.0")
    (42, None, None, 98, 12)
    """
    if value is None or isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return round(float(text))
        except ValueError:
            return None


def as_float(value: Any) -> float | None:
    """A float from a number or a numeric string; ``None`` for ``None``/``""``/junk.

    >>> as_float(84.79), as_float("85"), as_float(""), as_float(None), as_float("nan")
    (84.79, 85.0, None, None, None)
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value if isinstance(value, int | float) else str(value).strip())
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def as_id(value: Any) -> str:
    """An identifier as a string: ``5120`` and ``"5120"`` are both ``"5120"``; ``""`` for none.

    >>> as_id(5120), as_id("5120"), as_id(""), as_id(None), as_id(12.0)
    ('5120', '5120', '', '', '12')
    """
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def as_text(value: Any) -> str:
    return "" if value is None else str(value)


def as_bool(value: Any) -> bool | None:
    """0/1 (int or string) or a bool to a bool; ``None`` when not said.

    >>> as_bool(1), as_bool("0"), as_bool(None), as_bool("")
    (True, False, None, None)
    """
    if value is None or isinstance(value, bool):
        return value
    number = as_int(value)
    return None if number is None else number != 0


def as_time(value: Any) -> datetime | None:
    """Epoch seconds to an aware UTC datetime; ``None`` for 0, ``None`` or ``""``."""
    seconds = as_int(value)
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC)


def transcode_decision(value: Any) -> str:
    """Tautulli's ``direct play``/``copy``/``transcode`` in the event's words.

    >>> transcode_decision("copy"), transcode_decision("direct play"), transcode_decision(None)
    ('direct stream', 'direct play', '')
    """
    text = as_text(value).strip().lower()
    return _TRANSCODE_DECISIONS.get(text, text)


# ---------------------------------------------------------------------------------------
# row kinds and identity


def is_in_progress(row: Mapping[str, Any]) -> bool:
    """True for a row of a session still running (``state`` set by ``include_activity``)."""
    return bool(row.get("state"))


def is_grouped(row: Mapping[str, Any]) -> bool:
    """True for a row standing for several sessions (``grouping=1``)."""
    count = as_int(row.get("group_count"))
    return count is not None and count > 1


def history_row_id(row: Mapping[str, Any]) -> int | None:
    """The row's ``session_history.id`` (``row_id``, or ``id``); ``None`` if it has none."""
    for key in ("row_id", "id"):
        value = as_int(row.get(key))
        if value is not None:
            return value
    return None


def summary_event_id(server_id: str, row_id: int) -> str:
    """The event id of history row ``row_id`` of the Plex server ``server_id``."""
    return make_event_id(SOURCE, server_id, int(row_id))


def encode_raw(raw: Mapping[str, Any]) -> str:
    """The raw row as JSON text, for the audit trail."""
    return _json.encode(dict(raw)).decode()


# ---------------------------------------------------------------------------------------
# the mapping

# Columns a history row and a live session name alike (Tautulli flattens PMS's session the
# same way in both), by the reader each needs; the event's field has the column's name.
_TEXT_COLUMNS = (
    "friendly_name",
    "media_type",
    "parent_title",
    "grandparent_title",
    "library_name",
    "platform",
    "platform_version",
    "player",
    "product",
    "product_version",
    "machine_id",
    "ip_address",
    "video_resolution",
    "video_codec",
    "video_dynamic_range",
    "audio_codec",
)
_INT_COLUMNS = ("audio_channels", "stream_bitrate", "bandwidth")
_BOOL_COLUMNS = ("secure", "relayed")


def _session_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The event fields of what a history row and a live session say alike: who, what,
    which library (an imported database row and a live session have it; get_history's
    rows do not), where from, and the stream."""
    thumb = as_text(row.get("user_thumb"))
    fields: dict[str, Any] = {key: as_text(row.get(key)) for key in _TEXT_COLUMNS}
    fields.update({key: as_int(row.get(key)) for key in _INT_COLUMNS})
    fields.update({key: as_bool(row.get(key)) for key in _BOOL_COLUMNS})
    fields.update(
        user_id=as_id(row.get("user_id")),
        user_thumb="" if thumb == DEFAULT_USER_THUMB else thumb,
        title=as_text(row.get("title")) or as_text(row.get("full_title")),
        rating_key=as_id(row.get("rating_key")),
        year=as_int(row.get("year")) or None,
        # PMS's librarySectionID, as Tautulli flattens it
        library_id=as_id(row.get("section_id")),
        location_type=as_text(row.get("location")).strip().lower(),
        transcode_decision=transcode_decision(row.get("transcode_decision")),
    )
    return fields


def summary_from_history_row(
    row: Mapping[str, Any],
    server_id: str,
    *,
    raw: Mapping[str, Any] | None = None,
) -> MediaEvent:
    """The ``summary`` event of one finished Tautulli history row.

    ``row`` has the keys of a ``get_history`` row (the database import builds such a mapping,
    with a few extra keys the database has: ``view_offset``, ``media_duration_ms``,
    ``platform_version``, ``product_version``, ``bandwidth``, ``video_resolution``,
    ``video_codec``, ``video_dynamic_range``, ``audio_codec``, ``audio_channels``,
    ``stream_bitrate``). ``raw`` is what goes to ``raw_payload`` (default: ``row``).

    Raises :class:`InvalidHistoryRow` for an in-progress or grouped row, or a row missing
    what an event needs (an id, a start, a user, a title).

    >>> event = summary_from_history_row(
    ...     {"row_id": 5120, "started": 1767600000, "stopped": 1767607200,
    ...      "paused_counter": 300, "play_duration": 6900, "user_id": 8312457,
    ...      "user": "alice", "media_type": "movie", "title": "Heat", "rating_key": 54321,
    ...      "parent_rating_key": "", "year": 1995, "transcode_decision": "copy",
    ...      "secure": 1, "relayed": 0, "location": "lan", "state": None},
    ...     "srv")
    >>> event.session_key, event.user_id, event.rating_key, event.transcode_decision
    ('5120', '8312457', '54321', 'direct stream')
    >>> event.play_duration, event.local, event.occurred_at == event.stopped_at
    (6900, True, True)
    """
    row_id = history_row_id(row)
    where = f"Tautulli history row {row_id if row_id is not None else '(no id)'}"
    if is_in_progress(row):
        raise InvalidHistoryRow(f"{where} is in progress (state {row.get('state')!r})")
    if is_grouped(row):
        raise InvalidHistoryRow(
            f"{where} groups sessions {row.get('group_ids')!r}; ask for grouping=0"
        )
    if row_id is None:
        raise InvalidHistoryRow(f"{where}: no row_id or id")
    if not server_id:
        raise InvalidHistoryRow(f"{where}: the Plex server id is unknown")
    started = as_time(row.get("started"))
    stopped = as_time(row.get("stopped"))
    if started is None:
        raise InvalidHistoryRow(f"{where}: no started time")
    paused = as_int(row.get("paused_counter"))
    played = as_int(row.get("play_duration"))
    if played is None:
        played = as_int(row.get("duration"))
    media_ms = as_int(row.get("media_duration_ms"))
    fields = _session_fields(row)
    local = as_bool(row.get("local"))
    if local is None and fields["location_type"] in ("lan", "wan", "cellular"):
        local = fields["location_type"] == "lan"
    event = MediaEvent(
        event_id=summary_event_id(server_id, row_id),
        event_type=EventType.SUMMARY,
        occurred_at=stopped or started,
        source=SOURCE,
        server_id=server_id,
        session_key=str(row_id),
        username=as_text(row.get("user")),
        media_duration=media_ms // 1000 if media_ms else None,
        started_at=started,
        stopped_at=stopped,
        position_ms=as_int(row.get("view_offset")),
        # the API's is Tautulli's whole-number display value; an imported database row's
        # is exact (db_import computes it from view_offset and the length)
        percent_complete=as_float(row.get("percent_complete")),
        play_duration=played,
        paused_counter=paused,
        local=local,
        raw_payload=encode_raw(row if raw is None else raw),
        **fields,
    )
    try:
        return event.validate()
    except InvalidEvent as exc:
        raise InvalidHistoryRow(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------------------
# live sessions (get_activity): the fields of one session, and one transition of it


def live_session_key(session: Any) -> str | None:
    """Tautulli's live identity of a ``get_activity`` session, ``"<session_key>:<rating_key>"``
    (Plex reuses session keys); ``None`` for an entry without them.

    >>> live_session_key({"session_key": "12", "rating_key": 54321}), live_session_key([])
    ('12:54321', None)
    """
    if not isinstance(session, dict):
        return None
    key, item = as_id(session.get("session_key")), as_id(session.get("rating_key"))
    if not key or not item:
        return None
    return f"{key}:{item}"


def live_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The MediaEvent fields every transition of a live session carries (who, what, where,
    the stream), from its ``get_activity`` entry; values not said are left out."""
    length_ms = as_int(raw.get("duration"))
    fields = _session_fields(raw)
    fields.update(
        username=as_text(raw.get("username") or raw.get("user")),
        platform_name=as_text(raw.get("platform_name")),
        device=as_text(raw.get("device")),
        media_duration=length_ms // 1000 if length_ms else None,
        local=as_bool(raw.get("local")),
    )
    return {k: v for k, v in fields.items() if v not in (None, "")}


def live_percent(raw: Mapping[str, Any]) -> float | None:
    """The exact share reached (``progress_percent`` is rounded to a whole number).

    >>> live_percent({"view_offset": "2238300", "duration": "2640000", "progress_percent": "85"})
    84.7840909090909
    """
    exact = percent_of(as_int(raw.get("view_offset")), as_int(raw.get("duration")))
    return exact if exact is not None else as_float(raw.get("progress_percent"))


def activity_event(
    kind: EventType,
    server_id: str,
    *,
    session_key: str,
    started: int,
    fields: Mapping[str, Any],
    view_offset: int | None,
    percent: float | None,
    raw: Mapping[str, Any] | None,
    at: datetime | None,
) -> MediaEvent:
    """One transition of a live session (source ``tautulli_activity``).

    ``session_key`` is ``"<session_key>:<rating_key>:<started>"``, ``started`` Tautulli's own
    start of the session (epoch seconds), ``fields`` :func:`live_fields` of its entry. A play
    happens at ``started`` (``at`` None); a pause or resume is told apart from the others of
    its session by the playhead (``view_offset``, else the time). ``raw`` is the entry (or the
    history row that timed a stop) kept as the raw payload.

    >>> event = activity_event(
    ...     EventType.PLAY, "srv", session_key="12:54321:1767643200", started=1767643200,
    ...     fields={"user_id": "8312457", "media_type": "movie", "title": "Heat"},
    ...     view_offset=0, percent=0.0, raw=None, at=None)
    >>> event.source, event.occurred_at == event.started_at, event.title
    ('tautulli_activity', True, 'Heat')
    """
    started_at = datetime.fromtimestamp(started, UTC)
    occurred = at or started_at
    identity: tuple[Any, ...] = (session_key, kind.value)
    if kind in (EventType.PAUSE, EventType.RESUME):
        identity += (view_offset if view_offset is not None else int(occurred.timestamp() * 1000),)
    event = MediaEvent(
        event_id=make_event_id(ACTIVITY_SOURCE, server_id, *identity),
        event_type=kind,
        occurred_at=occurred,
        source=ACTIVITY_SOURCE,
        server_id=server_id,
        session_key=session_key,
        started_at=started_at,
        stopped_at=occurred if kind is EventType.STOP else None,
        position_ms=view_offset,
        percent_complete=percent,
        raw_payload=encode_raw(raw) if raw is not None else None,
        **fields,
    )
    return event.validate()


__all__ = [
    "ACTIVITY_SOURCE",
    "DEFAULT_USER_THUMB",
    "SOURCE",
    "InvalidHistoryRow",
    "activity_event",
    "as_bool",
    "as_float",
    "as_id",
    "as_int",
    "as_text",
    "as_time",
    "encode_raw",
    "history_row_id",
    "is_grouped",
    "is_in_progress",
    "live_fields",
    "live_percent",
    "live_session_key",
    "summary_event_id",
    "summary_from_history_row",
    "transcode_decision",
]
