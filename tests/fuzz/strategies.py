"""Hypothesis strategies for the fuzz targets: valid upstream payloads built from the
documented formats (``../shared/reference/upstream-payloads.md``), and a mutation layer that
breaks them the ways real peers (and attackers) do.

Every strategy draws a :class:`Fuzzed` input: the bytes to send, the mutation applied (its
name, for the tallies and for reading a failure), and whether the mutation certainly makes
the input unreadable (``broken``: not JSON, not an object, cut short), which lets a target
demand a rejection rather than merely tolerate one.

Mutations of the document (at a path drawn among all of its values): ``none``, ``drop`` a
field, ``null``, ``type`` (a value of another type), ``huge_string`` (up to 3 MiB),
``huge_number`` (past int64, past 4,300 digits, ``NaN``, ``Infinity``, ``1e999``), ``deep``
nesting (up to 100,000 levels), ``extra`` fields, ``duplicate`` keys, ``unicode`` (lone
surrogates, NUL, bidi controls), ``top`` (the document replaced by a scalar or a list). Of its
bytes: ``invalid_utf8`` inserted, ``truncate``, ``garbage``, ``empty``, ``bom``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from tests.fakes.jellyfin import movie, notification, session
from tests.fakes.plex import JPEG_THUMB, webhook_payload

# ---------------------------------------------------------------------------------------
# raw JSON text inside a document, and a dict that keeps duplicate keys


@dataclass(frozen=True)
class Raw:
    """JSON text placed as is (huge numbers, NaN, deep nesting)."""

    text: str


@dataclass(frozen=True)
class Pairs:
    """An object written with its keys in this order, duplicates kept."""

    pairs: tuple[tuple[str, Any], ...]


def encode(value: Any) -> str:
    """JSON text of ``value`` (which may hold :class:`Raw` and :class:`Pairs`)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)


@dataclass(frozen=True)
class Fuzzed:
    data: bytes
    mutation: str
    broken: bool  # certainly unreadable: a target must reject it

    def __repr__(self) -> str:  # hypothesis prints it on failure: keep megabytes out
        head = self.data[:300]
        more = f"... ({len(self.data):,} bytes)" if len(self.data) > 300 else ""
        return f"Fuzzed(mutation={self.mutation!r}, broken={self.broken}, data={head!r}{more})"


# ---------------------------------------------------------------------------------------
# valid documents, per documented format

HEX = "0123456789abcdef"
hex32 = st.text(HEX, min_size=32, max_size=32)
# small pools of identities, so that fuzzed reports meet open playbacks and state machines
# move through their transitions, not only open new playbacks
few_hex32 = st.sampled_from([uuid.UUID(int=i * 7919 + 1).hex for i in range(4)])
names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40
).filter(lambda s: s.strip())

PLEX_KINDS = [
    "media.play",
    "media.pause",
    "media.resume",
    "media.stop",
    "media.scrobble",
    "media.rate",
    "library.new",
    "playback.started",
    "admin.database.backup",
]


@st.composite
def plex_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A Plex webhook JSON document (section 1), keys as Plex emits them."""
    event = draw(st.sampled_from(PLEX_KINDS))
    doc = webhook_payload(
        event,
        account_id=draw(st.sampled_from([1, 8312457, 5551234])),
        account_title=draw(names),
        rating_key=draw(st.sampled_from(["54301", "54302", "70001"])),
        view_offset=draw(st.none() | st.integers(0, 3_000_000)),
        player_uuid=draw(st.sampled_from(["p1x9q", "roku-7b", "web-3c4d"])),
        player_title=draw(names),
        local=draw(st.booleans()),
    )
    doc["Metadata"]["title"] = draw(names)
    if event == "media.rate":
        doc["rating"] = "10"
    return doc


@st.composite
def jellyfin_notifications(draw: st.DrawFn) -> dict[str, Any]:
    """A Jellyfin webhook plugin body, "Send All Properties" (section 3b)."""
    kind = draw(
        st.sampled_from(
            ["PlaybackStart", "PlaybackProgress", "PlaybackStop", "ItemAdded", "UserDataSaved"]
        )
    )
    return notification(
        kind,
        server_id="f" * 32,
        session_id=draw(few_hex32),
        user_id=draw(few_hex32),
        item_id=draw(few_hex32),
        position_s=draw(st.floats(0, 10_000, allow_nan=False)),
        paused=draw(st.booleans()),
        name=draw(names),
    )


@st.composite
def session_entries(draw: st.DrawFn) -> dict[str, Any]:
    """One Jellyfin/Emby ``Sessions`` entry (SessionInfoDto), idle or playing."""
    item = None
    if draw(st.booleans()):
        item = movie(item_id=draw(few_hex32), name=draw(names))
    return session(
        server_id="e" * 32,
        session_id=draw(few_hex32),
        user_id=draw(few_hex32),
        item=item,
        position_s=draw(st.floats(0, 10_000, allow_nan=False)),
        paused=draw(st.booleans()),
        play_method=draw(st.sampled_from(["DirectPlay", "DirectStream", "Transcode"])),
        user_name=draw(names),
        remote=draw(st.sampled_from(["192.168.1.20", "[2001:db8::1]:443", "::ffff:10.0.0.5"])),
        emby=draw(st.booleans()),
    )


@st.composite
def socket_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A server -> client WebSocket message (section 3a): mostly ``Sessions`` pushes."""
    kind = draw(
        st.sampled_from(
            ["Sessions"] * 6
            + ["ForceKeepAlive", "KeepAlive", "UserDataChanged", "Playstate", "LibraryChanged"]
        )
    )
    message: dict[str, Any] = {"MessageType": kind, "MessageId": draw(hex32)}
    if kind == "Sessions":
        message["Data"] = draw(st.lists(session_entries(), max_size=4))
    elif kind == "ForceKeepAlive":
        message["Data"] = draw(st.integers(1, 600))
    elif kind == "UserDataChanged":
        message["Data"] = {
            "UserId": draw(few_hex32),
            "UserDataList": [{"PlaybackPositionTicks": 0, "PlayCount": 1, "Played": True}],
        }
    elif kind == "Playstate":
        message["Data"] = {"Command": "Pause"}
    return message


def tautulli_envelope(data: Any) -> dict[str, Any]:
    return {"response": {"result": "success", "message": None, "data": data}}


@st.composite
def tautulli_history_rows(draw: st.DrawFn) -> dict[str, Any]:
    """One ``get_history`` row, the exact key set of ``get_datatables_history`` (section 2)."""
    row_id = draw(st.integers(1, 10_000_000))
    started = draw(st.integers(1_700_000_000, 1_800_000_000))
    stopped = started + draw(st.integers(0, 20_000))
    movie_row = draw(st.booleans())
    return {
        "reference_id": row_id,
        "row_id": row_id,
        "id": row_id,
        "date": started,
        "started": started,
        "stopped": stopped,
        "duration": stopped - started,
        "play_duration": stopped - started,
        "paused_counter": draw(st.integers(0, 600)),
        "user_id": draw(st.sampled_from([8312457, 5551234])),
        "user": "alice",
        "friendly_name": draw(names),
        "user_thumb": "interfaces/default/images/gravatar-default-80x80.png",
        "platform": "Roku",
        "product": "Plex for Roku",
        "player": draw(names),
        "ip_address": "192.168.1.20",
        "live": 0,
        "machine_id": draw(st.sampled_from(["p1x9q", "roku-7b"])),
        "location": draw(st.sampled_from(["lan", "wan", "cellular"])),
        "secure": draw(st.sampled_from([0, 1, None])),
        "relayed": 0,
        "media_type": "movie" if movie_row else "episode",
        "rating_key": draw(st.integers(1, 99_999)),
        "parent_rating_key": "" if movie_row else 54300,
        "grandparent_rating_key": "" if movie_row else 54299,
        "full_title": draw(names),
        "title": draw(names),
        "parent_title": "" if movie_row else "Season 1",
        "grandparent_title": "" if movie_row else "Breaking Bad",
        "original_title": "",
        "year": 2008,
        "media_index": "" if movie_row else 1,
        "parent_media_index": "" if movie_row else 1,
        "thumb": "/library/metadata/54300/thumb/1700000000",
        "originally_available_at": "2008-01-20",
        "guid": "plex://episode/5d9c0874e98e47001eb0f6a3",
        "transcode_decision": draw(st.sampled_from(["direct play", "copy", "transcode"])),
        "percent_complete": draw(st.integers(0, 100)),
        "watched_status": draw(st.sampled_from([0, 0.25, 0.5, 0.75, 1])),
        "group_count": 1,
        "group_ids": str(row_id),
        "state": None,
        "session_key": None,
    }


@st.composite
def tautulli_history(draw: st.DrawFn) -> dict[str, Any]:
    rows = draw(st.lists(tautulli_history_rows(), max_size=5))
    return tautulli_envelope(
        {
            "recordsFiltered": len(rows),
            "recordsTotal": len(rows),
            "draw": 1,
            "filter_duration": "3 hrs 4 mins 31 secs",
            "total_duration": "3 hrs 4 mins 31 secs",
            "data": rows,
        }
    )


@st.composite
def tautulli_activity_sessions(draw: st.DrawFn) -> dict[str, Any]:
    """One ``get_activity`` session (flattened ``/status/sessions``: mostly strings)."""
    return {
        "session_key": str(draw(st.integers(1, 40))),
        "session_id": draw(hex32),
        "state": draw(st.sampled_from(["playing", "paused", "buffering"])),
        "user_id": draw(st.sampled_from([8312457, 5551234])),
        "user": "alice",
        "username": "alice",
        "friendly_name": draw(names),
        "rating_key": str(draw(st.integers(1, 99_999))),
        "parent_rating_key": "",
        "grandparent_rating_key": "",
        "media_type": "movie",
        "title": draw(names),
        "full_title": draw(names),
        "view_offset": str(draw(st.integers(0, 9_000_000))),
        "duration": str(draw(st.integers(1, 9_000_000))),
        "progress_percent": str(draw(st.integers(0, 100))),
        "year": "1995",
        "machine_id": "roku-7b",
        "player": "Living Room",
        "product": "Plex for Roku",
        "platform": "Roku",
        "device": "Roku Ultra",
        "ip_address": "192.168.1.20",
        "ip_address_public": "203.0.113.9",
        "location": "lan",
        "local": 1,
        "relayed": 0,
        "secure": 1,
        "live": 0,
        "transcode_decision": "direct play",
        "quality_profile": "Original",
        "bandwidth": "8000",
        "guid": "plex://movie/5d776b59ad5437001f79c6f8",
        "guids": ["imdb://tt0113277"],
        "markers": [],
    }


@st.composite
def tautulli_activity(draw: st.DrawFn) -> dict[str, Any]:
    sessions = draw(st.lists(tautulli_activity_sessions(), max_size=3))
    return tautulli_envelope(
        {
            "stream_count": str(len(sessions)),
            "sessions": sessions,
            "stream_count_direct_play": len(sessions),
            "stream_count_direct_stream": 0,
            "stream_count_transcode": 0,
            "total_bandwidth": 8000 * len(sessions),
            "lan_bandwidth": 8000 * len(sessions),
            "wan_bandwidth": 0,
        }
    )


T_BASE = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)


@st.composite
def media_event_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A MediaEvent (schema version 1) as the stream carries it."""
    occurred = T_BASE + timedelta(seconds=draw(st.integers(0, 86_400 * 30)))
    kind = draw(st.sampled_from(["play", "pause", "resume", "stop", "scrobble", "progress"]))
    doc: dict[str, Any] = {
        "schema_version": 1,
        "event_id": draw(hex32),
        "event_type": kind,
        "occurred_at": occurred.isoformat().replace("+00:00", "Z"),
        "source": draw(st.sampled_from(["plex", "jellyfin", "emby", "fuzz"])),
        "server_id": draw(few_hex32),
        "session_key": draw(few_hex32),
        "user_id": draw(st.sampled_from(["8312457", "5551234"])),
        "username": draw(names),
        "media_type": draw(st.sampled_from(["movie", "episode", "track"])),
        "title": draw(names),
        "rating_key": draw(st.sampled_from(["54301", "70001"])),
        "started_at": occurred.isoformat().replace("+00:00", "Z"),
        "position_ms": draw(st.integers(0, 9_000_000)),
        "machine_id": draw(st.sampled_from(["p1x9q", "roku-7b"])),
        "ip_address": "192.168.1.20",
    }
    if kind == "stop":
        doc["stopped_at"] = doc["occurred_at"]
    if draw(st.booleans()):
        doc["year"] = draw(st.integers(1900, 2030))
    return doc


# ---------------------------------------------------------------------------------------
# the mutation layer

DOCUMENT_MUTATIONS = [
    "drop",
    "null",
    "type",
    "huge_string",
    "huge_number",
    "deep",
    "extra",
    "duplicate",
    "unicode",
    "top",
]
BYTE_MUTATIONS = ["invalid_utf8", "truncate", "garbage", "empty", "bom"]
# a quarter valid: the valid paths must keep working (and reach the state machines)
MUTATIONS = ["none"] * 5 + DOCUMENT_MUTATIONS * 1 + BYTE_MUTATIONS

HUGE_NUMBERS = [
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "1" + "0" * 30,
    "9" * 400,
    "7" * 5000,  # past Python's 4,300-digit limit for int(str)
    "1e999",
    "-1e999",
    "1E400",
    "NaN",
    "Infinity",
    "-Infinity",
    "-0",
    "1.5",
    "2147483648",
    "-2147483649",
]
WEIRD_STRINGS = [
    "\ud800",  # a lone surrogate: json writes it as an escape; UTF-8 cannot encode it
    "\udfff\ud800",
    "\x00",
    "a\x00b",
    "\u202e\u2066evil",
    "\U0001f3ac🎞️",
    '\\"',
    "\\",
    "",
    " ",
    "\r\n",
    "../../etc/passwd",
    "'; DROP TABLE media_events; --",
    "%s%s%n",
]
INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\x80",
]
OTHER_VALUES: list[Any] = [0, -1, 1.5, True, False, "", "x", [], {}, [1, "a"], {"k": "v"}]


def _paths(doc: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    """Every path to a value in ``doc`` (the root included), down to depth 6."""
    found = [prefix]
    if depth >= 6:
        return found
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key), depth + 1)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += _paths(value, (*prefix, i), depth + 1)
    return found


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``doc`` with the value at ``path`` replaced (or removed: ``_DROP``)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        copy = dict(doc)
        new = _replace(doc[head], rest, value)
        if new is _DROP:
            del copy[head]
        else:
            copy[head] = new
        return copy
    copy_list = list(doc)
    new = _replace(doc[head], rest, value)
    if new is _DROP:
        del copy_list[head]
    else:
        copy_list[head] = new
    return copy_list


_DROP = object()


def deep(levels: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * levels + "]" * levels)
    return Raw('{"a":' * levels + "1" + "}" * levels)


@st.composite
def mutated(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> Fuzzed:
    """A document of ``documents``, mutated (or not), as bytes."""
    doc = draw(documents)
    mutation = draw(st.sampled_from(MUTATIONS))
    paths = _paths(doc)
    path = paths[draw(st.integers(0, 10**6)) % len(paths)]
    inner = [p for p in paths if p]  # paths below the root
    ipath = inner[draw(st.integers(0, 10**6)) % len(inner)] if inner else ()
    broken = False
    if mutation == "drop" and ipath:
        doc = _replace(doc, ipath, _DROP)
    elif mutation == "null":
        doc = _replace(doc, ipath, None)
    elif mutation == "type":
        doc = _replace(doc, ipath, draw(st.sampled_from(OTHER_VALUES)))
    elif mutation == "huge_string":
        # 600,000: under the webhooks' body limits, over an event's (MAX_EVENT_BYTES)
        size = draw(st.sampled_from([1000, 65_536, 600_000, 1 << 20, 3 << 20]))
        doc = _replace(doc, ipath, "A" * size)
    elif mutation == "huge_number":
        doc = _replace(doc, ipath, Raw(draw(st.sampled_from(HUGE_NUMBERS))))
    elif mutation == "deep":
        levels = draw(st.sampled_from([100, 1_000, 10_000, 100_000]))
        doc = _replace(doc, ipath, deep(levels, draw(st.sampled_from(["list", "dict"]))))
    elif mutation == "extra":
        target = _get(doc, path)
        if isinstance(target, dict):
            key = draw(st.sampled_from(["extra", "Id", "event", "__proto__", "🎬", ""]))
            doc = _replace(doc, path, {**target, key: draw(st.sampled_from(OTHER_VALUES))})
    elif mutation == "duplicate":
        dicts = [p for p in paths if isinstance(_get(doc, p), dict) and _get(doc, p)]
        if dicts:
            where = dicts[draw(st.integers(0, 10**6)) % len(dicts)]
            target = _get(doc, where)
            key = draw(st.sampled_from(sorted(target)))
            value = draw(st.sampled_from([*OTHER_VALUES, None, "media.stop", "PlaybackStop"]))
            first = draw(st.booleans())  # the duplicate before or after the original
            pairs = list(target.items())
            pairs.insert(0 if first else len(pairs), (key, value))
            doc = _replace(doc, where, Pairs(tuple(pairs)))
    elif mutation == "unicode":
        doc = _replace(doc, ipath, draw(st.sampled_from(WEIRD_STRINGS)))
    elif mutation == "top":
        doc = draw(st.sampled_from([None, 1, "text", [], [1, 2], True, Raw("NaN")]))
        broken = True  # not an object
    text = encode(doc)
    data = text.encode("utf-8", "surrogatepass")
    if mutation == "invalid_utf8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(INVALID_UTF8)) + data[at:]
    elif mutation == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
        broken = True
    elif mutation == "garbage":
        data = draw(st.binary(min_size=1, max_size=64)).replace(b"{", b"(")
        broken = True
    elif mutation == "empty":
        data = b""
        broken = True
    elif mutation == "bom":
        data = b"\xef\xbb\xbf" + data
    return Fuzzed(data, mutation, broken)


# ---------------------------------------------------------------------------------------
# multipart bodies for the Plex webhook

BOUNDARY = "------------------------5c2b1e9d8a7f6e3b"
MULTIPART_MUTATIONS = [
    "none",
    "none",
    "none",
    "truncated",
    "no_closing_boundary",
    "wrong_boundary",
    "no_boundary_param",
    "content_type",
    "no_payload_part",
    "two_payload_parts",
    "nested_multipart",
    "huge_part_header",
    "base64_part",
    "thumb_only_huge",
]


@dataclass(frozen=True)
class Request:
    """An HTTP request body and its Content-Type."""

    body: bytes
    content_type: str | None
    fuzzed: Fuzzed
    envelope: str  # the multipart (or header) mutation
    broken: bool

    def __repr__(self) -> str:
        return (
            f"Request(envelope={self.envelope!r}, content_type={self.content_type!r}, "
            f"body={len(self.body):,} bytes, fuzzed={self.fuzzed!r})"
        )


def _part(headers: list[bytes], data: bytes) -> bytes:
    return b"\r\n".join(headers) + b"\r\n\r\n" + data


PAYLOAD_HEADERS = [
    b'Content-Disposition: form-data; name="payload"',
    b"Content-Type: application/json",
]
THUMB_HEADERS = [
    b'Content-Disposition: form-data; name="thumb"; filename="image.jpg"',
    b"Content-Type: image/jpeg",
]


def multipart(parts: list[bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (delimiter + b"--\r\n" if close else b"")


@st.composite
def plex_requests(draw: st.DrawFn) -> Request:
    """A Plex webhook request: the mutated payload in a (possibly mutated) multipart body."""
    fuzzed = draw(mutated(plex_documents()))
    envelope = draw(st.sampled_from(MULTIPART_MUTATIONS))
    payload = _part(PAYLOAD_HEADERS, fuzzed.data)
    thumb = _part(THUMB_HEADERS, JPEG_THUMB)
    parts = [payload, thumb] if draw(st.booleans()) else [payload]
    content_type: str | None = f"multipart/form-data; boundary={BOUNDARY}"
    broken = fuzzed.broken
    body = multipart(parts)
    if envelope == "truncated":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
        broken = True
    elif envelope == "no_closing_boundary":
        body = multipart(parts, close=False)
    elif envelope == "wrong_boundary":
        content_type = "multipart/form-data; boundary=not-the-boundary"
        broken = True
    elif envelope == "no_boundary_param":
        content_type = "multipart/form-data"
        broken = True
    elif envelope == "content_type":
        content_type = draw(
            st.sampled_from(["application/json", "text/plain", None, "multipart/mixed; x=1"])
        )
        if content_type is not None and content_type.startswith("multipart/mixed"):
            content_type = f"multipart/mixed; boundary={BOUNDARY}"
        broken = True
    elif envelope == "no_payload_part":
        body = multipart([thumb])
        broken = True
    elif envelope == "two_payload_parts":
        other = _part(PAYLOAD_HEADERS, b'{"event":"media.stop"}')
        body = multipart([payload, other] if draw(st.booleans()) else [other, payload])
    elif envelope == "nested_multipart":
        inner = multipart([payload], boundary="inner-boundary")
        body = multipart(
            [_part([b"Content-Type: multipart/mixed; boundary=inner-boundary"], inner)]
        )
        broken = True
    elif envelope == "huge_part_header":
        big = b"X-Fuzz: " + b"h" * draw(st.sampled_from([10_000, 100_000, 1 << 20]))
        body = multipart([_part([*PAYLOAD_HEADERS, big], fuzzed.data)])
    elif envelope == "base64_part":
        headers = [*PAYLOAD_HEADERS, b"Content-Transfer-Encoding: base64"]
        body = multipart([_part(headers, fuzzed.data)])
    elif envelope == "thumb_only_huge":
        body = multipart([payload, _part(THUMB_HEADERS, b"\xff\xd8" + b"\x00" * (3 << 20))])
    return Request(body, content_type, fuzzed, envelope, broken)


@st.composite
def jellyfin_requests(draw: st.DrawFn) -> Request:
    """A Jellyfin webhook plugin request: the mutated body, text/plain or JSON."""
    fuzzed = draw(mutated(jellyfin_notifications()))
    content_type = draw(
        st.sampled_from(["text/plain", "application/json", "text/plain; charset=utf-8", None])
    )
    return Request(fuzzed.data, content_type, fuzzed, "none", fuzzed.broken)


def oversized_jellyfin_request() -> Request:
    """A PlaybackStart whose ``Overview`` is 600,000 characters: under the webhook's body
    limit (1 MiB), over an event's (MAX_EVENT_BYTES, 512 KiB), an explicit example of every
    run (the webhook answered it 200 and dropped the event)."""
    doc = notification(
        "PlaybackStart",
        server_id="f" * 32,
        session_id="0b" * 16,
        user_id="0c" * 16,
        item_id="0d" * 16,
    )
    data = encode({**doc, "Overview": "A" * 600_000}).encode()
    return Request(data, "text/plain", Fuzzed(data, "huge_string", False), "none", False)


# the stream: subjects the router reads, the records' subjects included
stream_subjects = st.sampled_from(
    ["playback.fuzz.movie"] * 6 + ["playback.plex.episode", "audit.decision", "alert.fuzz"]
)
