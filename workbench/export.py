"""Any period of the projection written to a file: its playbacks, its plays or its events.

:func:`export` (``Workbench.export``, ``workbench export`` on the command line) writes one of

* ``playbacks``: the rows of ``playback_events`` that **started** in the period, every column,
  in start order;
* ``plays``: :func:`workbench.stats.plays` (grouped, short playbacks left out, as every
  statistic counts them) over those playbacks: the period is cut **before** grouping, as
  :func:`workbench.db.scope` cuts it for a report, so a play resumed after the period ends
  keeps only its playbacks inside it;
* ``events``: the accepted events (``media_events_detail``: the tracking columns and every
  MediaEvent field, typed) that **occurred** in the period, in stream order.

The period is ``[since, until)``: ``since`` included, ``until`` left out. Each is an ISO 8601
time with a zone (``2026-01-05T20:00:00+01:00``, ``...Z``) or a date (``2026-01-05``), read
as a local day in ``tz``: a date ``since`` is the midnight that starts that day there, a
date ``until`` the midnight that **ends** it, so ``--since 2026-01-05 --until 2026-01-11``
is the seven days 5 to 11 January, both included (167 or 169 hours across a daylight-saving
change). A time without a zone is refused: its instant is ambiguous.

Formats:

* ``parquet`` keeps every type: integers stay integers, lists stay lists, and times are
  time-zone-aware timestamps (Parquet stores the UTC instant; the column type names ``tz``,
  so polars and pyarrow read them back as clocks in ``tz``, the same instants).
* ``csv`` and ``json`` (an array of one object per row) write times as text, the clock in
  ``tz`` with its offset: ``2026-01-05T21:00:00.000000+01:00`` (ISO 8601). A list column
  (``sources``, ...) is JSON text in a CSV cell, a JSON array in JSON.

The file is written under a temporary name next to ``out`` and renamed, so ``out`` never
holds half an export.

Example (a projection of one playback)::

    >>> import tempfile
    >>> from pathlib import Path
    >>> import polars as pl
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, user_id, started_at, stopped_at",
    ...     ('a', 'u1', '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ... )
    >>> tmp = tempfile.TemporaryDirectory()
    >>> done = export(
    ...     db, "plays", since="2026-01-05", until="2026-01-05", tz="Europe/Berlin",
    ...     format="csv", out=Path(tmp.name) / "plays.csv",
    ... )
    >>> done.rows, done.since.isoformat(), done.before.isoformat()
    (1, '2026-01-05T00:00:00+01:00', '2026-01-06T00:00:00+01:00')
    >>> pl.read_csv(done.path)["started_at"].to_list()
    ['2026-01-05T21:00:00.000000+01:00']
    >>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Literal, get_args

import polars as pl

from workbench import stats
from workbench.db import ProjectionSource, query, scope
from workbench.errors import WorkbenchError

Kind = Literal["playbacks", "plays", "events"]
"""What :func:`export` writes (see the module's docstring)."""
Format = Literal["parquet", "csv", "json"]
"""The file formats :func:`export` writes."""
KINDS: tuple[str, ...] = get_args(Kind)
FORMATS: tuple[str, ...] = get_args(Format)

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.6f%:z"
"""How CSV and JSON write a time: the clock in the export's zone, with its offset."""

SELECT_PLAYBACKS = """
SELECT * FROM playback_events
WHERE started_at >= $since AND started_at < $before
ORDER BY started_at, correlation_key
"""

SELECT_EVENTS = """
SELECT * FROM media_events_detail
WHERE occurred_at >= $since AND occurred_at < $before
ORDER BY seq
"""

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Exported:
    """What :func:`export` wrote: ``rows`` of ``what`` in ``format`` to ``path``, the
    period ``[since, before)`` as clocks in the export's zone."""

    what: str
    format: str
    path: Path
    rows: int
    since: datetime
    before: datetime

    def __str__(self) -> str:
        return (
            f"wrote {self.rows:,} {self.what} to {self.path} ({self.format}; from "
            f"{self.since.isoformat()} included to {self.before.isoformat()} excluded)"
        )


def period(
    since: datetime | date | str, until: datetime | date | str, tz: str = "UTC"
) -> tuple[datetime, datetime]:
    """The period ``[since, before)`` as clocks in ``tz``: a date ``since`` is the start of
    that local day, a date ``until`` its end (the day is included); a time keeps its
    instant. ValueError for a time without a zone, an unknown zone, or an empty period.

    >>> since, before = period("2026-03-23", "2026-03-29", "Europe/Berlin")
    >>> since.isoformat(), before.isoformat()
    ('2026-03-23T00:00:00+01:00', '2026-03-30T00:00:00+02:00')
    >>> (before.astimezone(UTC) - since.astimezone(UTC)).total_seconds() / 3600  # summer time
    167.0
    >>> period("2026-01-05T20:00:00Z", "2026-01-05T21:00:00+01:00")
    Traceback (most recent call last):
    ...
    ValueError: since (2026-01-05T20:00:00+00:00) is not before until (2026-01-05T20:00:00+00:00)
    """
    zone = _zone(tz)
    start = _instant(since, "since", zone, end_of_day=False)
    before = _instant(until, "until", zone, end_of_day=True)
    if start >= before:
        raise ValueError(f"since ({start.isoformat()}) is not before until ({before.isoformat()})")
    return start, before


def rows(
    db: ProjectionSource, what: Kind, *, since: datetime, before: datetime, tz: str = "UTC"
) -> pl.DataFrame:
    """The rows :func:`export` writes for ``what`` in ``[since, before)`` (aware datetimes),
    every time as a clock in ``tz``."""
    _zone(tz)
    if what not in KINDS:
        raise ValueError(f"what must be one of {KINDS}, got {what!r}")
    since, before = since.astimezone(UTC), before.astimezone(UTC)
    params = {"since": since, "before": before}
    if what == "plays":
        period_db = scope(db, since=since, before=before)
        try:
            return stats.plays(period_db, tz=tz)
        finally:
            period_db.close()
    frame = query(db, SELECT_PLAYBACKS if what == "playbacks" else SELECT_EVENTS, params)
    return frame.with_columns(
        pl.col(name).dt.convert_time_zone(tz)
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None
    )


def write(frame: pl.DataFrame, format: Format, out: Path | str) -> Path:
    """Write ``frame`` to ``out`` in ``format`` (see the module's docstring), under a
    temporary name first; :class:`~workbench.errors.WorkbenchError` when it cannot be written."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(out)
    if path.is_dir():
        raise WorkbenchError(f"cannot write {path}: it is a directory (give a file name)")
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if format == "parquet":
            frame.write_parquet(partial)
        elif format == "csv":
            _as_text(frame, lists_as_json=True).write_csv(partial)
        else:
            _as_text(frame, lists_as_json=False).write_json(partial)
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # nothing was written where nothing can be
            partial.unlink(missing_ok=True)
        raise WorkbenchError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def export(
    db: ProjectionSource,
    what: Kind,
    *,
    since: datetime | date | str,
    until: datetime | date | str,
    tz: str = "UTC",
    format: Format = "parquet",
    out: Path | str,
) -> Exported:
    """Write ``what`` (``playbacks``, ``plays`` or ``events``) of the period ``[since,
    until)`` read in ``tz`` (see :func:`period`) to ``out`` in ``format``."""
    if what not in KINDS:
        raise ValueError(f"what must be one of {KINDS}, got {what!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    start, before = period(since, until, tz)
    frame = rows(db, what, since=start, before=before, tz=tz)
    path = write(frame, format, out)
    return Exported(what, format, path, frame.height, start, before)


# --------------------------------------------------------------------------- helpers


def _zone(tz: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"tz must be an IANA time zone name, got {tz!r}") from None


def _instant(
    value: datetime | date | str, name: str, zone: zoneinfo.ZoneInfo, *, end_of_day: bool
) -> datetime:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = (
                date.fromisoformat(text) if _DATE.fullmatch(text) else datetime.fromisoformat(text)
            )
        except ValueError:
            raise ValueError(
                f"{name} must be a date (2026-01-05) or an ISO 8601 time with a zone "
                f"(2026-01-05T20:00:00+01:00); got {value!r}"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValueError(
                f"{name} has no time zone ({value.isoformat()}): add one (Z, +01:00), "
                "or give a date, which is read in tz"
            )
        return value.astimezone(zone)
    if isinstance(value, date):
        day = value + timedelta(days=1) if end_of_day else value
        # as stats.local_period reads a local midnight (through UTC, so one that daylight
        # saving skips becomes a real instant)
        return datetime.combine(day, time(), zone).astimezone(UTC).astimezone(zone)
    raise TypeError(f"{name} must be a datetime, a date or a string, got {type(value).__name__}")


def _as_text(frame: pl.DataFrame, *, lists_as_json: bool) -> pl.DataFrame:
    """Times as ISO 8601 clocks with offsets; lists as JSON text when asked (CSV)."""
    columns = []
    for name, dtype in frame.schema.items():
        column = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            columns.append(column.dt.strftime(TIME_FORMAT))
        elif isinstance(dtype, pl.Date):
            columns.append(column.dt.strftime("%Y-%m-%d"))
        elif lists_as_json and isinstance(dtype, pl.List | pl.Array | pl.Struct):
            values = [None if v is None else json.dumps(v) for v in frame[name].to_list()]
            columns.append(pl.Series(name, values, dtype=pl.String))
        else:
            columns.append(column)
    return frame.select(columns)


__all__ = [
    "FORMATS",
    "KINDS",
    "Exported",
    "Format",
    "Kind",
    "export",
    "period",
    "rows",
    "write",
]
