"""The projection's tables, their columns, and the DDL that creates them.

Column lists are data here so that the Arrow batch builder, the DDL and the fold query are
generated from one definition and cannot drift apart; the event's own columns are read from
``MediaEvent`` itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import get_args

import msgspec
import polars as pl
import pyarrow as pa

from ingestor.events import MediaEvent

_TYPES_OF: dict[type, tuple[str, pa.DataType]] = {
    str: ("VARCHAR", pa.string()),  # an enum of the event (EventType) is a str
    int: ("INTEGER", pa.int32()),
    float: ("DOUBLE", pa.float64()),
    bool: ("BOOLEAN", pa.bool_()),
    datetime: ("TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
}
_WIDE = {"position_ms": ("BIGINT", pa.int64())}  # milliseconds into an item pass 2**31


def _stored(annotation: object) -> type:
    """The Python type a MediaEvent field holds (``int | None`` -> int, a StrEnum -> str)."""
    (kind,) = [t for t in get_args(annotation) if t is not type(None)] or [annotation]
    if not isinstance(kind, type):
        raise TypeError(f"a MediaEvent field of type {annotation!r} has no column type")
    return str if issubclass(kind, str) else kind


EVENT_COLUMNS: list[tuple[str, str, pa.DataType]] = [
    (field.name, *_WIDE.get(field.name, _TYPES_OF[_stored(field.type)]))
    for field in msgspec.structs.fields(MediaEvent)
]
"""(column, DuckDB type, Arrow type) of every MediaEvent field, in its order: the types
``media_events_detail`` reads them as, derived from the event itself."""

_DUCK_TO_POLARS: dict[str, pl.DataType] = {
    "VARCHAR": pl.String(),
    "DOUBLE": pl.Float64(),
    "INTEGER": pl.Int32(),
    "BIGINT": pl.Int64(),
    "BOOLEAN": pl.Boolean(),
    "TIMESTAMPTZ": pl.Datetime("us", "UTC"),
}
EVENT_DTYPES: dict[str, pl.DataType] = {
    name: _DUCK_TO_POLARS[duck] for name, duck, _ in EVENT_COLUMNS
}
"""Every MediaEvent field as a polars type (the types ``media_events`` stores)."""

# columns the projection adds to each accepted event
TRACKING_COLUMNS: list[tuple[str, str, pa.DataType]] = [
    ("seq", "BIGINT NOT NULL", pa.int64()),
    ("recorded_at", "TIMESTAMPTZ NOT NULL", pa.timestamp("us", tz="UTC")),
    ("correlation_key", "VARCHAR NOT NULL", pa.string()),  # the playback it belongs to
    ("dedup_action", "VARCHAR NOT NULL", pa.string()),  # open | fold | link | restored
    ("step", "BIGINT NOT NULL", pa.int64()),  # events.step_of()
]

# media_events keeps the columns that identify, order and locate an event, and the whole
# event as JSON (``payload``). DuckDB's ingestion cost here is per cell (a 1,000-row batch
# of all 47 fields took 15 ms to insert, of 16 columns 4 ms), so the other fields are read
# through the ``media_events_detail`` view, which extracts every field from the payload.
_KEY_EVENT_FIELDS = [
    "event_id",
    "event_type",
    "occurred_at",
    "source",
    "server_id",
    "session_key",
    "user_id",
    "media_type",
    "started_at",
    "stopped_at",
]
MEDIA_EVENT_COLUMNS: list[tuple[str, str, pa.DataType]] = [
    *TRACKING_COLUMNS,
    *[col for col in EVENT_COLUMNS if col[0] in _KEY_EVENT_FIELDS],
    # the event as JSON (current version). zstd: DuckDB's own choice of compression for these
    # ~800-byte strings cost half the insert time (191k rows: 2.0 -> 1.0 s) and a file 3.6x
    # the size (87 -> 24 MB), and scans are no slower
    ("payload", "VARCHAR NOT NULL USING COMPRESSION zstd", pa.string()),
]


def _event_fields(*names: str) -> list[tuple[str, str, pa.DataType]]:
    """The MediaEvent fields ``names`` as :data:`EVENT_COLUMNS` types them (nullable)."""
    typed = {col[0]: col for col in EVENT_COLUMNS}
    return [typed[name] for name in names]


AUDIT_COLUMNS: list[tuple[str, str, pa.DataType]] = [
    ("audit_id", "VARCHAR NOT NULL", pa.string()),  # unique by construction (see store.py)
    ("seq", "BIGINT NOT NULL", pa.int64()),
    ("recorded_at", "TIMESTAMPTZ NOT NULL", pa.timestamp("us", tz="UTC")),
    ("tier", "VARCHAR NOT NULL", pa.string()),  # event_id | session_key | correlation
    ("action", "VARCHAR NOT NULL", pa.string()),  # drop | link
    ("reason", "VARCHAR NOT NULL", pa.string()),
    ("status", "VARCHAR NOT NULL", pa.string()),  # auto_dedupe | user_confirmed | user_restored
    # the dropped or linked report: its fields, as the event had them
    ("event_id", "VARCHAR NOT NULL", pa.string()),
    *_event_fields("event_type"),
    ("source", "VARCHAR NOT NULL", pa.string()),
    *_event_fields("session_key", "occurred_at", "started_at"),
    # the report it was dropped for, or linked to
    ("kept_event_id", "VARCHAR", pa.string()),
    ("kept_source", "VARCHAR", pa.string()),
    ("kept_correlation_key", "VARCHAR", pa.string()),
    ("similarity_score", "DOUBLE", pa.float64()),
    *_event_fields(
        "server_id", "user_id", "username", "media_type", "title", "rating_key", "machine_id"
    ),
    ("raw_payload", "VARCHAR", pa.string()),  # the whole dropped or linked event as JSON
    ("resolved_by", "VARCHAR", pa.string()),
    ("resolved_at", "TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
    ("resolution_notes", "VARCHAR", pa.string()),
]
AUDIT_ARROW = pa.schema([(name, arrow) for name, _, arrow in AUDIT_COLUMNS])

# detection_alerts: one row per alert record of the stream (``alert.>``), unique alert_id
ALERT_COLUMNS: list[tuple[str, str, pa.DataType]] = [
    ("alert_id", "VARCHAR NOT NULL", pa.string()),
    ("seq", "BIGINT NOT NULL", pa.int64()),
    ("recorded_at", "TIMESTAMPTZ NOT NULL", pa.timestamp("us", tz="UTC")),
    ("rule", "VARCHAR NOT NULL", pa.string()),
    ("severity", "VARCHAR NOT NULL", pa.string()),  # info | warning | critical
    ("occurred_at", "TIMESTAMPTZ NOT NULL", pa.timestamp("us", tz="UTC")),  # event time
    ("user_id", "VARCHAR", pa.string()),
    ("username", "VARCHAR", pa.string()),
    ("server_id", "VARCHAR", pa.string()),
    ("message", "VARCHAR", pa.string()),
    ("event_ids", "VARCHAR[]", pa.list_(pa.string())),
    ("details", "VARCHAR", pa.string()),  # JSON object: the rule's figures
]
ALERT_ARROW = pa.schema([(name, arrow) for name, _, arrow in ALERT_COLUMNS])

# playback_events: where each column's value comes from (see fold.py)
LIBRARY_COLUMNS = ["library_id", "library_name"]
IDENTITY_COLUMNS = [
    "server_id",
    "user_id",
    "username",
    "friendly_name",
    "media_type",
    "title",
    "parent_title",
    "grandparent_title",
    "rating_key",
    "machine_id",
    "platform",
    "platform_name",
    "platform_version",
    "player",
    "product",
    "product_version",
    "device",
    "ip_address",
    "location_type",
    *LIBRARY_COLUMNS,
]
"""Text said once per playback: the first non-empty value (by stream sequence) wins."""
IDENTITY_NUMBERS = ["year", "media_duration"]
# a finished-session summary is authoritative for stream details
STREAM_DETAIL_COLUMNS = [
    "transcode_decision",
    "video_resolution",
    "video_codec",
    "video_dynamic_range",
    "audio_codec",
]
STREAM_DETAIL_VALUES = [
    "audio_channels",
    "stream_bitrate",
    "bandwidth",
    "secure",
    "local",
    "relayed",
]

_TYPES = {name: duck for name, duck, _ in EVENT_COLUMNS}

PLAYBACK_COLUMNS: list[tuple[str, str]] = [
    ("correlation_key", "VARCHAR NOT NULL"),  # unique by construction (see store.py)
    *[
        (name, _TYPES[name])
        for name in IDENTITY_COLUMNS + IDENTITY_NUMBERS
        if name not in LIBRARY_COLUMNS
    ],
    *[(name, _TYPES[name]) for name in STREAM_DETAIL_COLUMNS + STREAM_DETAIL_VALUES],
    ("started_at", "TIMESTAMPTZ"),
    ("stopped_at", "TIMESTAMPTZ"),
    ("state", "VARCHAR"),  # playing | paused | stopped
    ("paused_seconds", "BIGINT"),
    ("played_seconds", "BIGINT"),
    ("percent_complete", "DOUBLE"),
    ("source", "VARCHAR"),  # the source whose report opened the playback
    ("sources", "VARCHAR[]"),
    ("key_started_at", "TIMESTAMPTZ"),  # the opening report's start (links match on it)
    ("opening_event_id", "VARCHAR"),
    ("event_count", "INTEGER"),
    ("first_seq", "BIGINT"),
    ("last_seq", "BIGINT"),
    ("last_event_at", "TIMESTAMPTZ"),
    # a playback still playing or paused counts as stopped at its last report once the
    # projection's newest event time passes this (fold.py, "stale"); NULL once stopped
    ("stale_at", "TIMESTAMPTZ"),
    # tables version 4: added last, as ``ALTER TABLE ... ADD COLUMN`` appends them to a file
    # of version 3 and rows are inserted by position (store.py MIGRATIONS)
    *[(name, _TYPES[name]) for name in LIBRARY_COLUMNS],
]

# playback_moves: every change of an accepted event's playback after it was projected, so
# that the projection as of an earlier sequence can be read back (ingestor.projection.asof).
# A user's restore moves events: unlinking a source session moves its events into a playback
# of their own, undropping a re-report puts an event into the projection (``from_key`` NULL:
# it was in none before). media_events.correlation_key holds the current assignment; the
# rows here are its history.
MOVE_COLUMNS: list[tuple[str, str]] = [
    ("seq", "BIGINT NOT NULL"),  # the stream sequence of the decision that moved it
    ("event_id", "VARCHAR NOT NULL"),
    ("from_key", "VARCHAR"),  # NULL: the event was in no playback before (restored)
    ("to_key", "VARCHAR NOT NULL"),
    ("from_action", "VARCHAR"),  # media_events.dedup_action before (NULL: restored)
    ("to_action", "VARCHAR NOT NULL"),
]

# audit_decisions: every user decision (confirm, restore) the projection read, applied or
# ignored, in stream order; dedupe_audit_log.status is the latest applied one
DECISION_COLUMNS: list[tuple[str, str]] = [
    ("seq", "BIGINT NOT NULL"),
    ("recorded_at", "TIMESTAMPTZ"),
    ("audit_id", "VARCHAR NOT NULL"),
    ("action", "VARCHAR NOT NULL"),  # confirm | restore
    ("applied", "BOOLEAN NOT NULL"),
    ("status", "VARCHAR"),  # the entry's status it set (applied), else NULL
    ("detail", "VARCHAR"),  # why it was ignored, or the status it set
    ("decided_by", "VARCHAR"),
    ("decided_at", "TIMESTAMPTZ"),
    ("notes", "VARCHAR"),
]

CHECKPOINT_TABLE = "projection_checkpoint"

# identity_links: every account an identity record (``identity.>``) named, applied or not, in
# stream order: the history of which person each (server_id, user_id) account belonged to.
# Never updated: person_accounts (below) reads the current mapping from it, and an as-of
# answer the mapping as of a sequence (ingestor.projection.asof).
IDENTITY_LINK_COLUMNS: list[tuple[str, str]] = [
    ("seq", "BIGINT NOT NULL"),  # the identity record's stream sequence
    ("recorded_at", "TIMESTAMPTZ"),
    ("record_id", "VARCHAR NOT NULL"),
    ("action", "VARCHAR NOT NULL"),  # merge | unmerge
    ("person", "VARCHAR NOT NULL"),
    ("server_id", "VARCHAR"),  # NULL: an unmerge of all a person's accounts found none
    ("user_id", "VARCHAR"),
    ("applied", "BOOLEAN NOT NULL"),  # false: it changed nothing (detail says why)
    ("detail", "VARCHAR"),
    ("decided_by", "VARCHAR"),
    ("decided_at", "TIMESTAMPTZ"),  # the record's occurred_at
    ("notes", "VARCHAR"),
]


# erasure_log: one row per erasure record (``erasure.>``, ingestor.erasure): the counts the
# record carries (what erase deleted from the log, so a replay writes the same row), never a
# name, an id or an address
ERASURE_COLUMNS: list[tuple[str, str]] = [
    ("seq", "BIGINT NOT NULL"),  # the erasure record's stream sequence
    ("recorded_at", "TIMESTAMPTZ"),
    ("record_id", "VARCHAR NOT NULL"),
    ("accounts", "INTEGER NOT NULL"),  # how many account digests it named
    ("log_events", "BIGINT NOT NULL"),  # media events erase deleted from the log
    ("log_records", "BIGINT NOT NULL"),  # alerts and identity records it deleted
    ("dead_letters", "BIGINT NOT NULL"),
    ("erased_at", "TIMESTAMPTZ"),  # the record's occurred_at
]


def _person_view(create: str = "CREATE OR REPLACE VIEW") -> str:
    """The current person of every merged account: its latest applied identity row, if that
    was a merge (an unmerge leaves the account to itself)."""
    return f"""{create} person_accounts AS
SELECT person, server_id, user_id, seq AS since_seq, decided_at AS since
FROM identity_links
WHERE applied AND server_id IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY server_id, user_id ORDER BY seq DESC) = 1
    AND action = 'merge'"""


def _table(name: str, columns: list[tuple[str, str]] | list[tuple[str, str, pa.DataType]]) -> str:
    body = ",\n    ".join(f"{col[0]} {col[1]}" for col in columns)
    return f"CREATE TABLE IF NOT EXISTS {name} (\n    {body}\n)"


def _detail_view(create: str = "CREATE OR REPLACE VIEW") -> str:
    """Every MediaEvent field as a typed column, extracted from ``payload``."""
    fields = [
        f"CAST(json_extract_string(payload, '$.{name}') AS {duck}) AS {name}"
        if name not in _KEY_EVENT_FIELDS
        else name
        for name, duck, _ in EVENT_COLUMNS
    ]
    tracking = [name for name, _, _ in TRACKING_COLUMNS]
    body = ",\n    ".join(tracking + fields)
    return f"{create} media_events_detail AS SELECT\n    {body}\nFROM media_events"


DETAIL_VIEW = _detail_view()
# the same view over whatever ``media_events`` names on a connection (an as-of view)
TEMP_DETAIL_VIEW = _detail_view("CREATE OR REPLACE TEMP VIEW")
PERSON_VIEW = _person_view()
# the same view over whatever ``identity_links`` names on a connection (an as-of view)
TEMP_PERSON_VIEW = _person_view("CREATE OR REPLACE TEMP VIEW")

DDL: list[str] = [
    _table("media_events", MEDIA_EVENT_COLUMNS),
    DETAIL_VIEW,
    _table("playback_events", PLAYBACK_COLUMNS),
    _table("dedupe_audit_log", AUDIT_COLUMNS),
    _table("detection_alerts", ALERT_COLUMNS),
    _table("playback_moves", MOVE_COLUMNS),
    _table("audit_decisions", DECISION_COLUMNS),
    f"""CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} (
    consumer VARCHAR PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS projection_meta (
    name VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
)""",
    _table("identity_links", IDENTITY_LINK_COLUMNS),
    PERSON_VIEW,
    _table("erasure_log", ERASURE_COLUMNS),
]
