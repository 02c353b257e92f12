"""A batch of stream messages decoded once, into columns: the write path's input.

:func:`decode_batch` (live: a list of :class:`~ingestor.messages.Message`) and
:func:`decode_table` (rebuild: an Arrow table of archived messages) return a :class:`Decoded`:
the batch's media events as one polars frame (:data:`FRAME_COLUMNS`), its records (audit
decisions, alerts, identity records: ``audit.>``, ``alert.>``, ``identity.>``; rare, decoded
one by one), and the messages that can never be projected, with why.

**Fast path.** ``polars.read_ndjson`` parses the joined payloads into typed columns. A row stays
on the fast path only if its payload is *byte for byte* what :func:`ingestor.events.encode_event`
writes for the values polars read (msgspec's field order, defaults left out, its escapes, its
datetime form) and the values pass :meth:`MediaEvent.validate`'s rules, checked as vectorised
expressions. msgspec decodes such a payload to exactly those values, so these rows need no
per-event decoder and the check cannot let through a payload the per-event path would refuse.

**Per-event path.** Every other row (an older ``schema_version``, a producer's own JSON
spelling, an invalid event, a block polars cannot read) goes through
:func:`~ingestor.events.decode_event_versioned` and ``validate`` as before, so rejects keep
their exact error and category and upcasters run. Its accepted events join the frame as the
current version's JSON (:meth:`Decoded.frame`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ingestor.dedup import BatchKeys
from ingestor.errors import PermanentError
from ingestor.events import (
    SCHEMA_VERSION,
    EventType,
    MediaEvent,
    decode_event_versioned,
    encode_event,
)
from ingestor.messages import Message, Rejected
from ingestor.projection.schema import EVENT_DTYPES
from ingestor.records import RECORD_PREFIXES, Record, decode_record

_TIMES = [name for name, dtype in EVENT_DTYPES.items() if dtype == pl.Datetime("us", "UTC")]
# timestamps are read as text: the fast path checks their spelling, then parses them
JSON_SCHEMA: dict[str, pl.DataType] = {
    name: pl.String() if name in _TIMES else dtype for name, dtype in EVENT_DTYPES.items()
}

FRAME_COLUMNS: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    "recorded_at": pl.Datetime("us", "UTC"),
    **EVENT_DTYPES,
    "payload": pl.String(),  # the event as current-version JSON (what media_events stores)
    "step": pl.Int64(),  # events.step_of()
    "start": pl.Float64(),  # playback_start as epoch seconds (datetime.timestamp())
    "item": pl.String(),  # rating_key, or the title when there is none (a cross key's item)
    "start_text": pl.String(),  # playback_start as msgspec writes it (correlation keys)
}
"""The columns of :meth:`Decoded.frame`: one row per decodable media event."""

_FIELDS = MediaEvent.__struct_fields__
_DEFAULTS = dict(zip(_FIELDS, MediaEvent.__struct_defaults__, strict=True))
_REQUIRED = [name for name in _FIELDS if _DEFAULTS[name] is msgspec.NODEFAULT]
_NOT_EMPTY = ["source", "server_id", "session_key", "user_id", "media_type", "title"]
_EVENT_TYPES = [t.value for t in EventType]
_ONCE_PER_SESSION = ["play", "stop", "scrobble", "summary"]  # events._ONCE_PER_SESSION
_CANONICAL_TIME = r"^\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{6})?Z$"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"
_BISECT_MIN = 32  # a block polars cannot read is split down to this size, then decoded per event
_json = msgspec.json.Encoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RAW_SCHEMA = {
    "seq": pl.Int64(),
    "recorded_at": pl.Datetime("us", "UTC"),
    "subject": pl.String(),
    "data": pl.Binary(),
}


@dataclass
class Decoded:
    """One batch, decoded: media events as columns, records and rejects as objects.

    ``slow`` holds the media events the per-event path accepted, as (message, event) with the
    message's data the current version's JSON; :meth:`frame` folds them into the columns.
    """

    fast: pl.DataFrame
    slow: list[tuple[Message, MediaEvent]] = field(default_factory=list)
    records: list[tuple[Message, Record]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    messages: int = 0  # messages decoded (every kind)
    _frame: pl.DataFrame | None = field(default=None, repr=False)

    @property
    def events(self) -> int:
        return self.fast.height + len(self.slow)

    def frame(self) -> pl.DataFrame:
        """Every media event of the batch in sequence order, :data:`FRAME_COLUMNS`.

        Raises polars' error when a per-event event's columns cannot be built (a number out
        of its column's range): the write path's error handling isolates that message.
        """
        if self._frame is None:
            if self.slow:
                slow = _slow_frame(self.slow)
                self._frame = pl.concat([self.fast, slow], how="vertical").sort("seq")
            else:
                self._frame = self.fast
        return self._frame


def decode_batch(messages: Sequence[Message]) -> Decoded:
    """Decode live messages (any subjects, in sequence order)."""
    raw = pl.DataFrame(
        {
            "seq": [m.seq for m in messages],
            "recorded_at": [_micros(m.recorded_at) for m in messages],
            "subject": [m.subject for m in messages],
            "data": [m.data for m in messages],
        },
        schema={**_RAW_SCHEMA, "recorded_at": pl.Int64()},
    ).with_columns(pl.col("recorded_at").cast(pl.Datetime("us", "UTC")))
    return _decode(raw, list(messages).__getitem__)


def decode_table(
    table: pa.Table | pl.DataFrame, *, message: Callable[[int], Message] | None = None
) -> Decoded:
    """Decode archived messages: ``seq``, ``recorded_at``, ``subject``, ``data`` columns (an
    archive segment's, or :func:`ingestor.eventlog.messages_frame`'s). ``message(i)`` gives
    row ``i`` as a :class:`Message` where one is needed (a reject, a per-event decode):
    by default, built from the row."""
    raw = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    assert isinstance(raw, pl.DataFrame)
    raw = raw.select(pl.col(name).cast(dtype) for name, dtype in _RAW_SCHEMA.items())
    return _decode(raw, message)


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=FRAME_COLUMNS)


def dedup_keys(frame: pl.DataFrame) -> BatchKeys:
    """The dedup's inputs of a frame of :data:`FRAME_COLUMNS`, as Python lists."""
    machine = frame["machine_id"]
    return BatchKeys(
        seq=frame["seq"].to_list(),
        event_id=frame["event_id"].to_list(),
        event_type=frame["event_type"].to_list(),
        source=frame["source"].to_list(),
        server_id=frame["server_id"].to_list(),
        session_key=frame["session_key"].to_list(),
        step=frame["step"].to_list(),
        user_id=frame["user_id"].to_list(),
        item=frame["item"].to_list(),
        machine_id=machine.to_list(),
        start=frame["start"].to_list(),
        start_text=frame["start_text"].to_list(),
    )


# ---------------------------------------------------------------------------------------


def _decode(raw: pl.DataFrame, given: Callable[[int], Message] | None) -> Decoded:
    source = raw

    def message(row: int) -> Message:
        if given is not None:
            return given(row)
        seq, recorded, subject, data = source.row(row)
        return Message(seq=seq, recorded_at=recorded, data=data, subject=subject)

    raw = raw.with_row_index("_row")
    subject = pl.col("subject")
    is_record = pl.any_horizontal(subject.str.starts_with(p) for p in RECORD_PREFIXES)
    data = pl.col("data")
    # one line of NDJSON each, so that row i of the parse is message i
    one_line = (
        data.bin.starts_with(b"{")
        & data.bin.ends_with(b"}")
        & ~data.bin.contains(b"\n")
        & ~data.bin.contains(b"\r")
    )
    raw = raw.with_columns(_record=is_record, _line=~is_record & one_line)
    candidates = raw.filter(pl.col("_line"))
    slow_rows: list[int] = raw.filter(~pl.col("_record") & ~pl.col("_line"))["_row"].to_list()
    fast_parts: list[pl.DataFrame] = []
    if candidates.height:
        payloads = candidates["data"].to_list()
        for lo, hi, parsed in _parse_blocks(payloads, 0, len(payloads)):
            part = candidates.slice(lo, hi - lo)
            if parsed is None:
                slow_rows.extend(part["_row"].to_list())
                continue
            fast_parts.append(pl.concat([part, parsed], how="horizontal"))
    fast = empty_frame()
    if fast_parts:
        checked = _check(pl.concat(fast_parts, how="vertical"))
        slow_rows.extend(checked.filter(~pl.col("_fast"))["_row"].to_list())
        fast = _derive(checked.filter(pl.col("_fast")))
        fast = fast.with_columns(_DEFAULTED)
        fast = fast.select(FRAME_COLUMNS.keys())
    decoded = Decoded(fast=fast, messages=raw.height)
    # the per-event path: records, and media rows the fast path did not vouch for
    record_rows = frozenset(raw.filter(pl.col("_record"))["_row"].to_list())
    for row in sorted(record_rows.union(slow_rows)):
        m = message(row)
        if row in record_rows:
            try:
                decoded.records.append((m, decode_record(m.subject, m.data)))
            except PermanentError as exc:
                decoded.rejected.append(Rejected(m, str(exc), exc.category))
            continue
        try:
            event, upcast = decode_event_versioned(m.data)
            event.validate()
        except PermanentError as exc:
            decoded.rejected.append(Rejected(m, str(exc), exc.category))
            continue
        if upcast:  # downstream reads the current version's JSON
            m = replace(m, data=encode_event(event))
        decoded.slow.append((m, event))
    return decoded


def _parse_blocks(
    payloads: list[bytes], lo: int, hi: int
) -> list[tuple[int, int, pl.DataFrame | None]]:
    """Parse ``payloads[lo:hi]``; a block polars refuses is split until it is small, and its
    small parts are left to the per-event path (``None``)."""
    try:
        parsed = pl.read_ndjson(io.BytesIO(b"\n".join(payloads[lo:hi])), schema=JSON_SCHEMA)
    except (pl.exceptions.PolarsError, ValueError, OverflowError):
        parsed = None
    if parsed is not None and parsed.height == hi - lo:
        return [(lo, hi, parsed)]
    if hi - lo <= _BISECT_MIN:
        return [(lo, hi, None)]
    mid = (lo + hi) // 2
    return _parse_blocks(payloads, lo, mid) + _parse_blocks(payloads, mid, hi)


_STRING_FIELDS = [name for name in _FIELDS if JSON_SCHEMA[name] == pl.String()]  # times too
# Every key of a payload is one of these patterns' matches when its JSON has no backslash
# (no escaped quote can then hide in a string); with one, a key's quote follows no backslash.
_KEY, _KEY_ESCAPED = '":', r'[^\\]":'
_STRING_KEY, _STRING_KEY_ESCAPED = '":"', r'[^\\]":"'
_SPACE_BEFORE_COLON = r'[^\\]"[ \t]'
_ESCAPED_KEY_OR_SURROGATE = r'\\u([0-9a-fA-F]{4}[^"\\]*"[ \t]*:|[dD][89a-fA-F])'


def _check(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``_fast``: msgspec would decode the row's payload to the values polars read, and
    they are a valid event. Parses the timestamps (the text is kept as ``_<name>_text``).

    polars reads numbers and booleans strictly (a wrong type fails the block) but turns any
    JSON value into text for a string column, and cannot tell a JSON null from a missing
    key. So the payload's keys are counted: as many as the fields polars found, as many with
    a string value as string fields it found. With no whitespace before a colon and no
    escaped key, equal counts leave no room for an unknown, repeated or null key, or a
    string field holding another type.
    """
    frame = frame.with_columns(
        pl.col("data").cast(pl.String).alias("payload"),  # valid UTF-8: polars parsed it
        *[pl.col(name).alias(f"_{name}_text") for name in _TIMES],
    )
    texts = {name: pl.col(f"_{name}_text") for name in _TIMES}
    frame = frame.with_columns(
        pl.col(name).str.to_datetime(_TIME_FORMAT, time_unit="us", time_zone="UTC", strict=False)
        for name in _TIMES
    )
    ok = pl.col("schema_version").is_null()
    for name in _REQUIRED:
        ok = ok & pl.col(name).is_not_null()
    ok = ok & pl.col("event_type").is_in(_EVENT_TYPES)
    for name, text in texts.items():
        parsed = pl.col(name)
        spelled = (
            text.str.contains(_CANONICAL_TIME)
            & parsed.is_not_null()
            & (parsed.dt.year() >= 1)
            # as msgspec writes it back (correlation keys hold it): no ".000000"
            & ((text.str.len_bytes() == 20) == (parsed.dt.microsecond() == 0))
        )
        ok = ok & (text.is_null() | spelled.fill_null(False))
    # MediaEvent.validate's rules (a failing row takes the per-event path for its message)
    ok = ok & ~pl.col("event_id").str.contains(r"^[0-]*$")
    for name in _NOT_EMPTY:
        ok = ok & (pl.col(name) != "")
    ok = ok & ((pl.col("event_type") != "summary") | pl.col("started_at").is_not_null())
    present = pl.sum_horizontal(
        (texts[name] if name in _TIMES else pl.col(name)).is_not_null() for name in _FIELDS
    )
    strings = pl.sum_horizontal(
        (texts[name] if name in _TIMES else pl.col(name)).is_not_null() for name in _STRING_FIELDS
    )
    frame = frame.with_columns(
        _ok=ok.fill_null(False),
        _present=present,
        _strings=strings,
        _plain=~pl.col("payload").str.contains("\\", literal=True),
    )
    payload = pl.col("payload")
    parts = []
    for plain in (True, False):
        part = frame.filter(pl.col("_plain") == plain)
        if not part.height:
            continue
        if plain:
            keys = payload.str.count_matches(_KEY, literal=True)
            string_keys = payload.str.count_matches(_STRING_KEY, literal=True)
            spaced = payload.str.contains('" ', literal=True) | payload.str.contains(
                '"\t', literal=True
            )
            escaped_key = pl.lit(False)
        else:
            keys = payload.str.count_matches(_KEY_ESCAPED)
            string_keys = payload.str.count_matches(_STRING_KEY_ESCAPED)
            spaced = payload.str.contains(_SPACE_BEFORE_COLON)
            escaped_key = payload.str.contains(_ESCAPED_KEY_OR_SURROGATE)
        exact = (
            (keys == pl.col("_present"))
            & (string_keys == pl.col("_strings"))
            & ~spaced
            & ~escaped_key
        )
        parts.append(part.with_columns(_fast=pl.col("_ok") & exact.fill_null(False)))
    checked = pl.concat(parts, how="vertical").sort("_row")
    start = pl.coalesce(pl.col("_started_at_text"), pl.col("_occurred_at_text"))
    return checked.with_columns(start_text=start)


# what msgspec gives a field the payload left out (polars reads it as null)
_DEFAULTED = [pl.lit(SCHEMA_VERSION, pl.Int32).alias("schema_version")] + [
    pl.col(name).fill_null("") for name in _FIELDS if _DEFAULTS[name] == ""
]


def _derive(frame: pl.DataFrame) -> pl.DataFrame:
    """Add the dedup's derived columns ``step``, ``start`` and ``item`` (``start_text`` and
    ``payload`` are already there). The floats are Arrow's: polars divides by a reciprocal,
    which is not always the correctly rounded quotient ``datetime.timestamp()`` gives."""
    micros = frame.select(
        pl.col("occurred_at").dt.epoch("us").cast(pl.Float64).alias("occurred"),
        pl.coalesce("started_at", "occurred_at").dt.epoch("us").cast(pl.Float64).alias("start"),
    ).to_arrow()
    start = pc.divide(micros.column("start"), 1e6)
    # int(occurred_at.timestamp() * 1000): the same float operations, truncated the same way
    seconds = pc.divide(micros.column("occurred"), 1e6)
    ms = pc.cast(pc.trunc(pc.multiply(seconds, 1000.0)), pa.int64())
    rating_key = pl.col("rating_key")
    return frame.with_columns(
        step=pl.when(pl.col("event_type").is_in(_ONCE_PER_SESSION))
        .then(pl.lit(0, pl.Int64))
        .when(pl.col("position_ms").is_not_null())
        .then(pl.col("position_ms"))
        .otherwise(pl.Series(ms)),
        start=pl.Series(start),
        item=pl.when(rating_key.is_not_null() & (rating_key != ""))
        .then(rating_key)
        .otherwise(pl.col("title")),
    )


def _slow_frame(slow: list[tuple[Message, MediaEvent]]) -> pl.DataFrame:
    """Columns of the events the per-event path accepted, from their canonical JSON (so the
    values are msgspec's, as the dedup saw them)."""
    parsed = pl.read_ndjson(
        io.BytesIO(b"\n".join(encode_event(event) for _, event in slow)), schema=JSON_SCHEMA
    )
    parsed = parsed.with_columns(
        pl.col(name).str.strptime(pl.Datetime("us", "UTC"), format="%+") for name in _TIMES
    ).with_columns(
        seq=pl.Series([m.seq for m, _ in slow], dtype=pl.Int64),
        recorded_at=pl.Series([_micros(m.recorded_at) for m, _ in slow], dtype=pl.Int64).cast(
            pl.Datetime("us", "UTC")
        ),
        payload=pl.Series([m.data.decode() for m, _ in slow], dtype=pl.String),
        start_text=pl.Series(
            [_json.encode(event.playback_start)[1:-1].decode() for _, event in slow],
            dtype=pl.String,
        ),
    )
    parsed = _derive(parsed).with_columns(_DEFAULTED)
    return parsed.select(FRAME_COLUMNS.keys()).cast(FRAME_COLUMNS)  # type: ignore[arg-type]


def _micros(at: datetime) -> int:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // timedelta(microseconds=1)


__all__ = [
    "EVENT_DTYPES",
    "FRAME_COLUMNS",
    "JSON_SCHEMA",
    "SCHEMA_VERSION",
    "Decoded",
    "decode_batch",
    "decode_table",
    "dedup_keys",
    "empty_frame",
]
