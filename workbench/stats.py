"""The statistics users of Tautulli and Jellystat expect, over ``playback_events``.

Every function takes a DuckDB connection (or anything with a ``.con``, such as
:class:`ingestor.projection.Projection`) whose ``playback_events`` table the projection wrote,
and returns a polars DataFrame. The aggregation runs in DuckDB over all rows; polars only picks
the requested metric column and orders the result.

Words
-----
playback
    One row of ``playback_events``: one start-to-stop of one item on one device.
watch time of a playback
    ``stopped_at - started_at - paused_seconds``, rounded to whole seconds (half up) and
    never below 0. This is the formula the projection uses for ``played_seconds``; it is
    recomputed from the row's own start, stop and pause so that a Tautulli summary's own
    ``play_duration`` (counted from Tautulli's start, one poll late) does not shift it by the
    few seconds the two sources disagree on.
open playback
    A row without ``stopped_at`` (still playing or paused, or its stop was never reported).
    It has no watch time yet and whether it passes the short-play rule cannot be decided,
    so it is **left out of every statistic except the concurrent streams and bandwidth**
    (see "stream").
short playback
    A playback whose watch time is under ``min_seconds`` (default 120 s, Tautulli's
    ``LOGGING_IGNORE_INTERVAL``). Left out before grouping, as Tautulli never writes it to
    its history; ``min_seconds=0`` keeps them all.
play
    What ``plays`` counts. With ``grouping=False`` every playback is a play. With
    ``grouping=True`` (the default, Tautulli's "group history") resumed playbacks are chained
    into one play by this rule: order the playbacks of one ``(server_id, user_id,
    rating_key)`` by ``started_at`` (then ``stopped_at``, ``correlation_key``); a playback
    *continues* the play of the one just before it when

    * it starts at or after that one's ``stopped_at`` (overlapping playbacks on two devices
      stay two plays),
    * that one was not watched: its ``percent_complete`` is under ``watched_percent``
      (a finished item followed by a rewatch is two plays), and
    * the progress did not go back: its ``percent_complete`` is at least that one's
      (Tautulli compares ``view_offset``; ``playback_events`` keeps the exact share, which
      orders plays of one item the same way).

    A missing ``user_id``, ``rating_key`` or ``percent_complete`` on either side starts a new
    play. There is no time window, as in Tautulli. Functions without a ``watched_percent``
    argument group with the default 85. A play takes its start time, user, item,
    platform, player, stream type and resolution from its **first** playback; its
    ``stopped_at`` is the last stop, its watch time the **sum** of its playbacks' watch times
    (so total watch time is the same with grouping on or off), its ``percent_complete`` the
    highest of its playbacks'.
person
    Who watched, across accounts: the person an identity record merged the play's account
    ``(server_id, user_id)`` into (``person_accounts``; see :mod:`workbench.identities`),
    else the account itself, named ``"<username> on <server_id>"`` (the username of the
    account's latest play). A user id belongs to its server, so one person with a Plex
    account on two servers and a Jellyfin user is three users and, once merged, one person
    (:func:`by_person`; :func:`plays` has a ``person`` column). A projection without
    identity records (or a file older than them) has one person per account.
watched
    A play whose ``percent_complete`` reaches ``watched_percent`` (default 85, Tautulli's
    ``MOVIE_WATCHED_PERCENT``/``TV_WATCHED_PERCENT``), compared unrounded as Tautulli does
    (``view_offset >= 0.85 * duration``): a play stopped at 84.79 % is not watched.
stream
    What the concurrency and bandwidth statistics count: every playback (short ones
    included, no grouping) running from ``started_at`` to ``stopped_at``, an open one until
    the given ``until``, else until its last event (``last_event_at``); a playback of zero
    length is no stream. A stop at ``t`` is applied before a start at ``t``, so back-to-back
    playbacks never run at once.
bitrate of a stream
    Its ``bandwidth`` (what the server reserved for it, Plex's and Tautulli's figure) when
    that is above 0, else its ``stream_bitrate`` (the delivered stream's bitrate, what
    Jellyfin and the simulator report), in kbps (1 kbps = 1000 bits per second), taken as
    constant over the whole stream (pauses included: the sources report no bitrate over
    time). A stream with neither uses no bandwidth.
bandwidth
    The sum of the bitrates of the streams running at an instant, in kbps. Over a local
    hour or day (see below) :func:`bandwidth` integrates it: each stream's bitrate times
    the seconds of it inside the bucket, summed. ``gigabytes`` is that integral as data
    (kilobits / 8 / 10**6: decimal GB); ``kbps`` is the average bandwidth over the whole
    bucket (the integral over the bucket's length: 3600 s for most hours, 7200 s for the
    hour that repeats when daylight saving ends). :func:`max_concurrent_bandwidth` is the
    highest bandwidth at any instant: a sweep line over the starts (+bitrate) and stops
    (-bitrate).

Buckets in local time
---------------------
``tz`` is an IANA zone name; a play falls in the day, hour, weekday and month of its start
*as a clock in that zone showed it* (DuckDB's ICU ``timezone()``), so a day in which
daylight saving starts has 23 hours and the hour 02:00 has no plays in Europe/Berlin that
day. Day and month series are filled with zeros between the first and the last bucket that
has a play; weekdays (ISO: 1 = Monday ... 7 = Sunday) and hours (0-23) are always complete.
:func:`bandwidth` buckets time itself, not starts: a bucket is every instant whose clock in
``tz`` shows that date (and hour), so a day lasts 23, 24 or 25 hours, the hour 02:00 lasts
two hours the night summer time ends in Europe/Berlin and does not exist the night it
starts; a stream running across midnight counts in both days for its time in each. Its
series runs from the bucket the first stream starts in to the one the last stream ends
in, with zeros between.

Dimensions
----------
Text dimensions (platform, player, media type, stream type, resolution) that are missing
or empty read ``"unknown"``. ``transcode_decision`` becomes the stream type ``"direct
play"``, ``"direct stream"`` (also Plex's and Tautulli's ``"copy"``), ``"transcode"`` or
``"unknown"``; other values are kept lower-cased. A play's library (:func:`by_library`) is
its first playback's ``library_name``, else ``"library <library_id>"`` when a source gave
only the id, else ``"unknown"`` (events recorded before libraries existed, and sources that
do not name one: Jellyfin, Emby, Tautulli's history API). ``playback_events`` keeps one
resolution, ``video_resolution`` (the source media's for the Plex poller, Tautulli and
Jellyfin adapters), so :func:`by_resolution` is the only resolution split: a separate stream
resolution needs a ``stream_video_resolution`` column in the projection first.
Titles roll episodes up to their show and tracks to their artist (``grandparent_title``
when present, else ``title``), like Tautulli's "most watched TV shows".
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, Protocol, TypeAlias, get_args

import duckdb
import polars as pl

Metric = Literal["plays", "watch_time"]
"""``plays``: how many plays; ``watch_time``: their watch time in seconds."""


class HasConnection(Protocol):
    """Anything holding a DuckDB connection as ``.con`` (e.g. a ``Projection``)."""

    con: duckdb.DuckDBPyConnection


Database: TypeAlias = duckdb.DuckDBPyConnection | HasConnection

DEFAULT_MIN_SECONDS = 120
DEFAULT_WATCHED_PERCENT = 85

# ---------------------------------------------------------------------------------------
# SQL. Every statement starts with PLAYS_CTE, which leaves one row per play in ``plays``.
# Parameters: $min_seconds, $grouping, $watched_percent (and $tz, $media_type, $title where
# a statement says so).

PLAYS_CTE = """
WITH finished AS (
    SELECT
        correlation_key, server_id, user_id, username, rating_key, media_type, title,
        grandparent_title, platform, player, transcode_decision, video_resolution,
        started_at, stopped_at, percent_complete,
        greatest(
            (greatest(epoch_us(stopped_at) - epoch_us(started_at), 0) + 500000) // 1000000
                - coalesce(paused_seconds, 0),
            0
        ) AS watch_seconds
    FROM playback_events
    WHERE started_at IS NOT NULL AND stopped_at IS NOT NULL
),
kept AS (
    SELECT * FROM finished WHERE watch_seconds >= $min_seconds
),
chained AS (
    SELECT
        *,
        CASE
            WHEN $grouping
                AND user_id IS NOT NULL
                AND rating_key IS NOT NULL
                AND started_at >= lag(stopped_at) OVER chain
                AND lag(percent_complete) OVER chain < $watched_percent
                AND percent_complete >= lag(percent_complete) OVER chain
            THEN 0
            ELSE 1
        END AS opens_play
    FROM kept
    WINDOW chain AS (
        PARTITION BY server_id, user_id, rating_key
        ORDER BY started_at, stopped_at, correlation_key
    )
),
numbered AS (
    SELECT
        *,
        sum(opens_play) OVER (
            PARTITION BY server_id, user_id, rating_key
            ORDER BY started_at, stopped_at, correlation_key
            ROWS UNBOUNDED PRECEDING
        ) AS play_number
    FROM chained
),
summed AS (
    SELECT
        *,
        sum(watch_seconds) OVER play AS play_watch_seconds,
        max(percent_complete) OVER play AS play_percent,
        max(stopped_at) OVER play AS play_stopped_at,
        count(*) OVER play AS play_playbacks
    FROM numbered
    WINDOW play AS (PARTITION BY server_id, user_id, rating_key, play_number)
),
plays AS (
    SELECT
        correlation_key AS play_key,
        server_id,
        user_id,
        username,
        rating_key,
        coalesce(nullif(trim(media_type), ''), 'unknown') AS media_type,
        title,
        grandparent_title,
        coalesce(nullif(grandparent_title, ''), nullif(title, ''), rating_key) AS title_key,
        coalesce(nullif(trim(platform), ''), 'unknown') AS platform,
        coalesce(nullif(trim(player), ''), 'unknown') AS player,
        CASE
            WHEN nullif(trim(transcode_decision), '') IS NULL THEN 'unknown'
            WHEN lower(trim(transcode_decision)) IN ('copy', 'direct stream', 'directstream')
                THEN 'direct stream'
            WHEN lower(trim(transcode_decision)) IN ('direct play', 'directplay')
                THEN 'direct play'
            ELSE lower(trim(transcode_decision))
        END AS stream_type,
        coalesce(nullif(trim(video_resolution), ''), 'unknown') AS resolution,
        started_at,
        play_stopped_at AS stopped_at,
        CAST(play_watch_seconds AS BIGINT) AS watch_seconds,
        play_percent AS percent_complete,
        coalesce(play_percent >= $watched_percent, false) AS watched,
        play_playbacks AS playbacks
    FROM summed
    WHERE opens_play = 1
)
"""

SELECT_PLAYS = (
    PLAYS_CTE
    + """
SELECT
    play_key, server_id, user_id, username, rating_key, media_type, title, grandparent_title,
    title_key, platform, player, stream_type, resolution, started_at, stopped_at,
    watch_seconds AS watch_time, percent_complete, watched, playbacks
FROM plays
ORDER BY started_at, play_key
"""
)

_TOTALS = "count(*) AS plays, CAST(coalesce(sum(watch_seconds), 0) AS BIGINT) AS watch_time"
_BUCKET_TOTALS = (
    "count(b.play_key) AS plays, CAST(coalesce(sum(b.watch_seconds), 0) AS BIGINT) AS watch_time"
)

_CALENDAR_SQL = """
, bucketed AS (
    SELECT
        play_key,
        watch_seconds,
        CAST(date_trunc('{unit}', timezone($tz, started_at)) AS DATE) AS {unit}
    FROM plays
),
series AS (
    SELECT CAST(generate_series AS DATE) AS {unit}
    FROM generate_series(
        (SELECT CAST(min({unit}) AS TIMESTAMP) FROM bucketed),
        (SELECT CAST(max({unit}) AS TIMESTAMP) FROM bucketed),
        INTERVAL 1 {unit}
    )
)
SELECT s.{unit}, {totals}
FROM series s LEFT JOIN bucketed b ON b.{unit} = s.{unit}
GROUP BY s.{unit}
ORDER BY s.{unit}
"""
# every local day (month) from the first to the last with a play, the empty ones included
PLAYS_BY_DAY = PLAYS_CTE + _CALENDAR_SQL.format(unit="day", totals=_BUCKET_TOTALS)
PLAYS_BY_MONTH = PLAYS_CTE + _CALENDAR_SQL.format(unit="month", totals=_BUCKET_TOTALS)

PLAYS_BY_DAY_OF_WEEK = (
    PLAYS_CTE
    + f"""
, bucketed AS (
    SELECT play_key, watch_seconds, isodow(timezone($tz, started_at)) AS weekday FROM plays
),
series AS (
    SELECT CAST(range AS BIGINT) AS weekday FROM range(1, 8)
)
SELECT
    s.weekday,
    ['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'][s.weekday]
        AS day_name,
    {_BUCKET_TOTALS}
FROM series s LEFT JOIN bucketed b ON b.weekday = s.weekday
GROUP BY s.weekday
ORDER BY s.weekday
"""
)

PLAYS_BY_HOUR_OF_DAY = (
    PLAYS_CTE
    + f"""
, bucketed AS (
    SELECT play_key, watch_seconds, hour(timezone($tz, started_at)) AS hour FROM plays
),
series AS (
    SELECT CAST(range AS BIGINT) AS hour FROM range(24)
)
SELECT s.hour, {_BUCKET_TOTALS}
FROM series s LEFT JOIN bucketed b ON b.hour = s.hour
GROUP BY s.hour
ORDER BY s.hour
"""
)

PLAYS_BY_USER = (
    PLAYS_CTE
    + f"""
SELECT server_id, user_id, arg_max(username, started_at) AS username, {_TOTALS}
FROM plays
GROUP BY server_id, user_id
"""
)

_CATEGORY_SQL = PLAYS_CTE + "\nSELECT {column}, " + _TOTALS + "\nFROM plays\nGROUP BY {column}\n"
PLAYS_BY_CATEGORY = {
    column: _CATEGORY_SQL.format(column=column)
    for column in ("platform", "player", "media_type", "stream_type", "resolution", "server_id")
}
"""One query per :data:`Category` (a column of the plays CTE, never user input)."""

PLAYS_BY_TITLE = (
    PLAYS_CTE
    + f"""
SELECT
    media_type,
    title_key AS title,
    count(DISTINCT (server_id, user_id)) AS users,
    {_TOTALS}
FROM plays
WHERE $media_type IS NULL OR media_type = $media_type
GROUP BY media_type, title_key
"""
)

WHO_WATCHED = (
    PLAYS_CTE
    + f"""
SELECT
    server_id,
    user_id,
    arg_max(username, started_at) AS username,
    {_TOTALS},
    max(started_at) AS last_played
FROM plays
WHERE title_key = $title AND ($media_type IS NULL OR media_type = $media_type)
GROUP BY server_id, user_id
"""
)

COMPLETION_BY_MEDIA_TYPE = (
    PLAYS_CTE
    + f"""
SELECT
    media_type,
    {_TOTALS},
    count(*) FILTER (WHERE watched) AS watched_plays,
    CAST(coalesce(sum(watch_seconds) FILTER (WHERE watched), 0) AS BIGINT)
        AS watched_watch_time
FROM plays
GROUP BY media_type
ORDER BY media_type
"""
)

# The sweep line: +1 at each start, -1 at each end, in time order with a stop at t before
# a start at t (delta ascending), so back-to-back playbacks never count as concurrent.
# ``streams`` is the count once every change at ``moment`` is applied; ``running`` the count
# after each single change (the sweep itself), whose maximum is the peak.
CONCURRENCY_CHANGES = """
WITH spans AS (
    SELECT
        started_at AS start_at,
        CASE
            WHEN stopped_at IS NOT NULL THEN stopped_at
            ELSE coalesce(CAST($until AS TIMESTAMPTZ), last_event_at)
        END AS end_at
    FROM playback_events
    WHERE started_at IS NOT NULL
),
valid AS (
    SELECT * FROM spans WHERE end_at > start_at
),
changes AS (
    SELECT start_at AS moment, 1 AS delta FROM valid
    UNION ALL
    SELECT end_at AS moment, -1 AS delta FROM valid
),
swept AS (
    SELECT
        moment,
        delta,
        sum(delta) OVER (ORDER BY moment, delta ROWS UNBOUNDED PRECEDING) AS running,
        sum(delta) OVER (ORDER BY moment RANGE UNBOUNDED PRECEDING) AS streams
    FROM changes
)
"""

CONCURRENT_STREAMS = (
    CONCURRENCY_CHANGES
    + """
SELECT DISTINCT moment AS "at", CAST(streams AS BIGINT) AS streams
FROM swept
ORDER BY "at"
"""
)

MAX_CONCURRENT_STREAMS = (
    CONCURRENCY_CHANGES
    + """
, peak AS (
    SELECT max(running) AS streams FROM swept
)
SELECT
    CAST(coalesce(peak.streams, 0) AS BIGINT) AS streams,
    (SELECT min(moment) FROM swept WHERE running = peak.streams) AS "at"
FROM peak
"""
)

# Bandwidth: the streams of the sweep line above, each with its bitrate (kbps). Parameters:
# $until (and $tz for the buckets).
BANDWIDTH_STREAMS = """
WITH spans AS (
    SELECT
        started_at AS start_at,
        CASE
            WHEN stopped_at IS NOT NULL THEN stopped_at
            ELSE coalesce(CAST($until AS TIMESTAMPTZ), last_event_at)
        END AS end_at,
        CAST(
            coalesce(
                CASE WHEN bandwidth > 0 THEN bandwidth END,
                CASE WHEN stream_bitrate > 0 THEN stream_bitrate END
            ) AS BIGINT
        ) AS kbps
    FROM playback_events
    WHERE started_at IS NOT NULL
),
streams AS (
    SELECT * FROM spans WHERE end_at > start_at AND kbps IS NOT NULL
)
"""

# The local buckets are found, not computed: ticks every 15 minutes (every zone's offset is
# a multiple of 15 minutes, so every local hour and midnight falls on one) from a day
# before the first stream to a day after the last, grouped by the clock they show in $tz;
# a bucket runs from its first tick to 15 minutes after its last. Each stream adds its
# bitrate times its seconds inside each bucket it overlaps.
_BANDWIDTH_BUCKETS = (
    BANDWIDTH_STREAMS
    + """
, bounds AS (
    SELECT
        to_timestamp(floor(epoch(min(start_at)) / 900) * 900) - INTERVAL 2 DAY AS lo,
        max(end_at) + INTERVAL 2 DAY AS hi,
        min(start_at) AS first_start,
        max(end_at) AS last_end
    FROM streams
),
ticks AS (
    SELECT unnest(generate_series(lo, hi, INTERVAL 15 MINUTE)) AS tick FROM bounds
),
buckets AS (
    SELECT key, min(tick) AS bucket_start, max(tick) + INTERVAL 15 MINUTE AS bucket_end
    FROM (SELECT tick, {key} AS key FROM ticks)
    GROUP BY key
),
used AS (
    SELECT
        b.key,
        sum(
            s.kbps * (
                epoch_us(least(s.end_at, b.bucket_end))
                - epoch_us(greatest(s.start_at, b.bucket_start))
            ) / 1e6
        ) AS kilobits
    FROM buckets b JOIN streams s ON s.start_at < b.bucket_end AND s.end_at > b.bucket_start
    GROUP BY b.key
)
SELECT
    b.key,
    b.bucket_start,
    coalesce(u.kilobits, 0)
        / ((epoch_us(b.bucket_end) - epoch_us(b.bucket_start)) / 1e6) AS kbps,
    coalesce(u.kilobits, 0) / 8e6 AS gigabytes
FROM buckets b
CROSS JOIN bounds
LEFT JOIN used u ON u.key = b.key
WHERE b.bucket_end > bounds.first_start AND b.bucket_start < bounds.last_end
ORDER BY b.bucket_start
"""
)
BANDWIDTH_BY_HOUR = _BANDWIDTH_BUCKETS.format(key="date_trunc('hour', timezone($tz, tick))")
BANDWIDTH_BY_DAY = _BANDWIDTH_BUCKETS.format(key="CAST(timezone($tz, tick) AS DATE)")

# The sweep line weighted by bitrate: a stop (negative) before a start at the same moment,
# as for the stream count; ``streams`` counts the streams running after each change.
MAX_CONCURRENT_BANDWIDTH = (
    BANDWIDTH_STREAMS
    + """
, changes AS (
    SELECT start_at AS moment, kbps AS delta FROM streams
    UNION ALL
    SELECT end_at AS moment, -kbps AS delta FROM streams
),
swept AS (
    SELECT
        moment,
        sum(delta) OVER sweep AS running,
        sum(sign(delta)) OVER sweep AS streams,
        row_number() OVER sweep AS step
    FROM changes
    WINDOW sweep AS (ORDER BY moment, delta ROWS UNBOUNDED PRECEDING)
),
peak AS (
    SELECT max(running) AS kbps FROM swept
)
SELECT
    CAST(coalesce(peak.kbps, 0) AS BIGINT) AS kbps,
    (SELECT min(moment) FROM swept WHERE running = peak.kbps) AS "at",
    CAST(coalesce(
        (SELECT arg_min(streams, step) FROM swept WHERE running = peak.kbps), 0
    ) AS BIGINT) AS streams
FROM peak
"""
)

# The same plays and streams over the playbacks that started in [$since, $before) only: a
# period is cut before grouping, as ``workbench.db.scope`` cuts it for a report.
_FINISHED_WHERE = "WHERE started_at IS NOT NULL AND stopped_at IS NOT NULL"
_SPANS_WHERE = "WHERE started_at IS NOT NULL\n"
_IN_PERIOD = " AND started_at >= $since AND started_at < $before"
assert PLAYS_CTE.count(_FINISHED_WHERE) == 1 and CONCURRENCY_CHANGES.count(_SPANS_WHERE) == 1

PERIOD_TOTALS = (
    PLAYS_CTE.replace(_FINISHED_WHERE, _FINISHED_WHERE + _IN_PERIOD)
    + f"""
SELECT {_TOTALS}, count(DISTINCT (server_id, user_id)) AS users
FROM plays
"""
)

PERIOD_PEAK_STREAMS = (
    CONCURRENCY_CHANGES.replace(_SPANS_WHERE, _SPANS_WHERE.rstrip() + _IN_PERIOD + "\n")
    + """
SELECT CAST(coalesce(max(running), 0) AS BIGINT) AS peak_streams FROM swept
"""
)

# ---------------------------------------------------------------------------------------
# helpers


def _con(db: Database) -> duckdb.DuckDBPyConnection:
    if isinstance(db, duckdb.DuckDBPyConnection):
        return db
    return db.con


def _check_metric(metric: str) -> None:
    if metric not in get_args(Metric):
        raise ValueError(f"metric must be one of {get_args(Metric)}, got {metric!r}")


def _check_tz(tz: str) -> None:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"tz must be an IANA time zone name, got {tz!r}") from exc


def _rules(grouping: bool, min_seconds: int, watched_percent: float) -> dict[str, object]:
    return {
        "grouping": bool(grouping),
        "min_seconds": int(min_seconds),
        "watched_percent": float(watched_percent),
    }


def _query(db: Database, sql: str, params: dict[str, object]) -> pl.DataFrame:
    return _con(db).sql(sql, params=params).pl()


def _local(frame: pl.DataFrame, columns: list[str], tz: str) -> pl.DataFrame:
    """Timestamp columns shown as clocks in ``tz`` (the instants do not change)."""
    return frame.with_columns(
        pl.col(name).cast(pl.Datetime("us", "UTC")).dt.convert_time_zone(tz) for name in columns
    )


def _bucketed(
    db: Database,
    sql: str,
    keys: list[str],
    metric: Metric,
    tz: str,
    grouping: bool,
    min_seconds: int,
) -> pl.DataFrame:
    _check_metric(metric)
    _check_tz(tz)
    params = {**_rules(grouping, min_seconds, DEFAULT_WATCHED_PERCENT), "tz": tz}
    return _query(db, sql, params).select(*keys, metric)


def _ranked(
    db: Database,
    sql: str,
    keys: list[str],
    metric: Metric,
    grouping: bool,
    min_seconds: int,
) -> pl.DataFrame:
    _check_metric(metric)
    frame = _query(db, sql, _rules(grouping, min_seconds, DEFAULT_WATCHED_PERCENT))
    return frame.sort(
        [metric, *keys], descending=[True] + [False] * len(keys), nulls_last=True
    ).select(*keys, metric)


# ---------------------------------------------------------------------------------------
# plays


def plays(
    db: Database,
    *,
    tz: str = "UTC",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
    watched_percent: float = DEFAULT_WATCHED_PERCENT,
) -> pl.DataFrame:
    """One row per play (see the module's "play"), in start order, times as clocks in ``tz``.

    Columns: ``play_key`` (the first playback's ``correlation_key``), ``server_id``,
    ``user_id``, ``username``, ``person`` (see the module's "person"), ``rating_key``,
    ``media_type``, ``title``, ``grandparent_title``, ``title_key``, ``platform``, ``player``,
    ``stream_type``, ``resolution``, ``started_at``, ``stopped_at``, ``watch_time`` (s),
    ``percent_complete``, ``watched``, ``playbacks`` (how many playbacks were grouped into it).

    Examples
    --------
    Stopped at 40 %, resumed after lunch to the end: one play of 2 playbacks.

    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, user_id, rating_key, started_at, stopped_at, paused_seconds,"
    ...     " percent_complete",
    ...     ('a', 'u1', '7', '2026-01-05 11:00Z', '2026-01-05 12:00Z', 0, 40),
    ...     ('b', 'u1', '7', '2026-01-05 14:00Z', '2026-01-05 15:30Z', 0, 98),
    ... )
    >>> plays(db, tz="Europe/Berlin").select(
    ...     "play_key", "started_at", "watch_time", "watched", "playbacks"
    ... ).rows()  # doctest: +NORMALIZE_WHITESPACE
    [('a', datetime.datetime(2026, 1, 5, 12, 0, tzinfo=zoneinfo.ZoneInfo(key='Europe/Berlin')),
      9000, True, 2)]
    >>> plays(db, grouping=False)["watch_time"].to_list()
    [3600, 5400]
    """
    _check_tz(tz)
    frame = _query(db, SELECT_PLAYS, _rules(grouping, min_seconds, watched_percent))
    return _local(_with_person(db, frame), ["started_at", "stopped_at"], tz)


# ---------------------------------------------------------------------------------------
# over time


def by_day(
    db: Database,
    *,
    metric: Metric = "plays",
    tz: str = "UTC",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """Plays (or watch time) per local calendar day: columns ``day`` (Date) and ``metric``,
    every day from the first to the last day with a play.

    Examples
    --------
    22:30 UTC is still the 28th in Berlin before summer time starts, the next day at the same
    UTC time it is already the 30th (UTC+2):

    >>> import duckdb
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, started_at, stopped_at, paused_seconds",
    ...     ('a', '2026-03-28 22:30Z', '2026-03-28 23:30Z', 0),
    ...     ('b', '2026-03-29 22:30Z', '2026-03-29 23:00Z', 600),
    ... )
    >>> for day, plays in by_day(db, tz="Europe/Berlin").rows():
    ...     print(day, plays)
    2026-03-28 1
    2026-03-29 0
    2026-03-30 1
    >>> for day, seconds in by_day(db, metric="watch_time").rows():
    ...     print(day, seconds)
    2026-03-28 3600
    2026-03-29 1200
    """
    return _bucketed(db, PLAYS_BY_DAY, ["day"], metric, tz, grouping, min_seconds)


def by_day_of_week(
    db: Database,
    *,
    metric: Metric = "plays",
    tz: str = "UTC",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """Plays (or watch time) per local weekday: columns ``weekday`` (ISO, 1 = Monday),
    ``day_name`` and ``metric``; all seven days.

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, started_at, stopped_at, paused_seconds",
    ...     ('a', '2026-01-05 03:00Z', '2026-01-05 04:00Z', 0),
    ... )
    >>> frame = by_day_of_week(db, tz="America/New_York")  # Sunday 22:00 there
    >>> print(frame.filter(frame["plays"] > 0).to_dicts())
    [{'weekday': 7, 'day_name': 'Sunday', 'plays': 1}]
    >>> frame.height
    7
    """
    return _bucketed(
        db, PLAYS_BY_DAY_OF_WEEK, ["weekday", "day_name"], metric, tz, grouping, min_seconds
    )


def by_hour_of_day(
    db: Database,
    *,
    metric: Metric = "plays",
    tz: str = "UTC",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """Plays (or watch time) per local start hour: columns ``hour`` (0-23) and ``metric``.

    Examples
    --------
    On the night winter time returns, 01:30 UTC is 02:30 in Berlin (UTC+1 again):

    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, started_at, stopped_at, paused_seconds",
    ...     ('a', '2026-10-25 01:30Z', '2026-10-25 02:30Z', 0),
    ... )
    >>> frame = by_hour_of_day(db, metric="watch_time", tz="Europe/Berlin")
    >>> print(frame.filter(frame["watch_time"] > 0).rows())
    [(2, 3600)]
    """
    return _bucketed(db, PLAYS_BY_HOUR_OF_DAY, ["hour"], metric, tz, grouping, min_seconds)


def by_month(
    db: Database,
    *,
    metric: Metric = "plays",
    tz: str = "UTC",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """Plays (or watch time) per local month: columns ``month`` (its first day, a Date) and
    ``metric``, every month from the first to the last with a play.

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, started_at, stopped_at, paused_seconds",
    ...     ('a', '2026-01-31 23:30Z', '2026-02-01 00:30Z', 0),
    ...     ('b', '2026-03-02 20:00Z', '2026-03-02 21:00Z', 0),
    ... )
    >>> print(by_month(db, tz="Asia/Tokyo").rows())
    [(datetime.date(2026, 2, 1), 1), (datetime.date(2026, 3, 1), 1)]
    >>> print(by_month(db).rows())
    [(datetime.date(2026, 1, 1), 1), (datetime.date(2026, 2, 1), 0), (datetime.date(2026, 3, 1), 1)]
    """
    return _bucketed(db, PLAYS_BY_MONTH, ["month"], metric, tz, grouping, min_seconds)


# ---------------------------------------------------------------------------------------
# by dimension (largest first, then by key)


def by_user(
    db: Database,
    *,
    metric: Metric = "plays",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """Plays (or watch time) per user: ``server_id``, ``user_id``, ``username`` (the one of
    the user's latest play) and ``metric``. User ids belong to a server, so one person on
    Plex and on Jellyfin is two rows (:func:`by_person` counts them as one, once merged).

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, server_id, user_id, username, started_at, stopped_at",
    ...     ('a', 's', '1', 'ann', '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('b', 's', '2', 'bob', '2026-01-05 20:00Z', '2026-01-05 20:30Z'),
    ...     ('c', 's', '2', 'bob', '2026-01-06 20:00Z', '2026-01-06 20:01Z'),
    ... )
    >>> print(by_user(db).rows())  # bob's 1-minute play is under 120 s
    [('s', '1', 'ann', 1), ('s', '2', 'bob', 1)]
    >>> print(by_user(db, metric="watch_time", min_seconds=0).rows())
    [('s', '1', 'ann', 3600), ('s', '2', 'bob', 1860)]
    """
    return _ranked(
        db, PLAYS_BY_USER, ["server_id", "user_id", "username"], metric, grouping, min_seconds
    )


Category = Literal["platform", "player", "media_type", "stream_type", "resolution", "server_id"]
"""What :func:`by_category` counts by: a column of the play (see the module's "play")."""

CATEGORIES: tuple[Category, ...] = get_args(Category)


def by_category(
    db: Database,
    category: Category,
    *,
    metric: Metric = "plays",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """Plays (or watch time) per value of ``category``, largest first: columns ``category``
    and ``metric``; a missing value counts as ``"unknown"``. Each category also has a
    function of its own: ``by_platform(db)`` is ``by_category(db, "platform")``.

    * ``platform``, ``player`` (the device's name), ``server_id``;
    * ``media_type``: ``movie``, ``episode``, ``track``... (per library: :func:`by_library`);
    * ``stream_type``: ``"direct play"``, ``"direct stream"`` (``"copy"`` included),
      ``"transcode"`` or ``"unknown"``;
    * ``resolution``: the ``video_resolution`` (``4k``, ``1080``, ``720``, ``sd``...). The
      projection keeps one resolution, the source media's for most adapters, so this
      answers both "source resolution" and "stream resolution" until a delivered-stream
      column exists.

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, platform, player, media_type, transcode_decision,"
    ...     " video_resolution, server_id, started_at, stopped_at",
    ...     ('a', 'Roku', 'Living Room', 'movie', 'copy', '4k', 'plex',
    ...      '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('b', None, 'iPhone', 'episode', 'direct stream', '1080', 'jelly',
    ...      '2026-01-05 20:00Z', '2026-01-05 22:00Z'),
    ...     ('c', 'Roku', 'Living Room', 'episode', None, '1080', 'plex',
    ...      '2026-01-06 20:00Z', '2026-01-06 20:30Z'),
    ... )
    >>> print(by_category(db, "platform").rows())
    [('Roku', 2), ('unknown', 1)]
    >>> print(by_category(db, "platform", metric="watch_time").rows())
    [('unknown', 7200), ('Roku', 5400)]
    >>> print(by_player(db, metric="watch_time").to_dicts())
    [{'player': 'iPhone', 'watch_time': 7200}, {'player': 'Living Room', 'watch_time': 5400}]
    >>> print(by_media_type(db).rows())
    [('episode', 2), ('movie', 1)]
    >>> print(by_stream_type(db).rows())
    [('direct stream', 2), ('unknown', 1)]
    >>> print(by_resolution(db, metric="watch_time").rows())
    [('1080', 9000), ('4k', 3600)]
    >>> print(by_server(db).rows())
    [('plex', 2), ('jelly', 1)]
    """
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    sql = PLAYS_BY_CATEGORY[category]
    return _ranked(db, sql, [category], metric, grouping, min_seconds)


class _PerCategory(Protocol):
    def __call__(
        self,
        db: Database,
        *,
        metric: Metric = "plays",
        grouping: bool = True,
        min_seconds: int = DEFAULT_MIN_SECONDS,
    ) -> pl.DataFrame: ...


def _per(category: Category, name: str) -> _PerCategory:
    """``name(db, ...)``: :func:`by_category` of ``category``, as a function of its own."""

    def per_category(
        db: Database,
        *,
        metric: Metric = "plays",
        grouping: bool = True,
        min_seconds: int = DEFAULT_MIN_SECONDS,
    ) -> pl.DataFrame:
        return by_category(db, category, metric=metric, grouping=grouping, min_seconds=min_seconds)

    per_category.__name__ = per_category.__qualname__ = name
    per_category.__doc__ = (
        f"Plays (or watch time) per ``{category}``: ``by_category(db, {category!r}, ...)``"
        " (see :func:`by_category`)."
    )
    return per_category


by_platform = _per("platform", "by_platform")
by_player = _per("player", "by_player")
by_media_type = _per("media_type", "by_media_type")
by_stream_type = _per("stream_type", "by_stream_type")
by_resolution = _per("resolution", "by_resolution")
by_server = _per("server_id", "by_server")


# ---------------------------------------------------------------------------------------
# titles


def _titles(
    db: Database,
    media_type: str | None,
    grouping: bool,
    min_seconds: int,
) -> pl.DataFrame:
    params = {
        **_rules(grouping, min_seconds, DEFAULT_WATCHED_PERCENT),
        "media_type": media_type,
    }
    return _query(db, PLAYS_BY_TITLE, params)


def top_titles(
    db: Database,
    *,
    limit: int = 10,
    metric: Metric = "plays",
    media_type: str | None = None,
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """The ``limit`` most played titles (or most watched, by watch time): ``media_type``,
    ``title`` (a show for episodes) and ``metric``; ties by title. ``media_type`` keeps one
    kind (``"movie"``, ``"episode"``...).

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, user_id, media_type, title, grandparent_title, started_at",
    ...     ('a', 'u1', 'episode', 'Pilot', 'Lost', '2026-01-05 20:00Z'),
    ...     ('b', 'u1', 'episode', 'Day 2', 'Lost', '2026-01-06 20:00Z'),
    ...     ('c', 'u2', 'movie', 'Heat', None, '2026-01-05 20:00Z'),
    ... )
    >>> _ = db.con.execute("UPDATE playback_events SET stopped_at = started_at + INTERVAL 1 HOUR")
    >>> print(top_titles(db).rows())
    [('episode', 'Lost', 2), ('movie', 'Heat', 1)]
    >>> print(top_titles(db, limit=1, media_type="movie", metric="watch_time").rows())
    [('movie', 'Heat', 3600)]
    """
    _check_metric(metric)
    frame = _titles(db, media_type, grouping, min_seconds)
    return (
        frame.sort([metric, "title", "media_type"], descending=[True, False, False])
        .head(limit)
        .select("media_type", "title", metric)
    )


def popular_titles(
    db: Database,
    *,
    limit: int = 10,
    metric: Metric = "plays",
    media_type: str | None = None,
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """The ``limit`` titles watched by the most distinct users: ``media_type``, ``title``,
    ``users`` and ``metric`` (ties broken by ``metric``, then title).

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, user_id, media_type, title, started_at",
    ...     ('a', 'u1', 'movie', 'Heat', '2026-01-05 20:00Z'),
    ...     ('b', 'u1', 'movie', 'Heat', '2026-01-06 20:00Z'),
    ...     ('c', 'u1', 'movie', 'Up', '2026-01-05 20:00Z'),
    ...     ('d', 'u2', 'movie', 'Up', '2026-01-05 20:00Z'),
    ... )
    >>> _ = db.con.execute("UPDATE playback_events SET stopped_at = started_at + INTERVAL 1 HOUR")
    >>> print(popular_titles(db).rows())
    [('movie', 'Up', 2, 2), ('movie', 'Heat', 1, 2)]
    """
    _check_metric(metric)
    frame = _titles(db, media_type, grouping, min_seconds)
    return (
        frame.sort(["users", metric, "title", "media_type"], descending=[True, True, False, False])
        .head(limit)
        .select("media_type", "title", "users", metric)
    )


def who_watched(
    db: Database,
    title: str,
    *,
    media_type: str | None = None,
    metric: Metric = "plays",
    tz: str = "UTC",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """Who watched ``title`` (a movie's title, or a show's: the ``title`` column of
    :func:`top_titles`): ``server_id``, ``user_id``, ``username``, ``metric`` and
    ``last_played`` (their latest play's start, as a clock in ``tz``); most first.

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, server_id, user_id, username, title, started_at",
    ...     ('a', 's', 'u1', 'ann', 'Heat', '2026-01-05 20:00Z'),
    ...     ('b', 's', 'u2', 'bob', 'Heat', '2026-01-06 20:00Z'),
    ...     ('c', 's', 'u2', 'bob', 'Heat', '2026-01-07 20:00Z'),
    ...     ('d', 's', 'u3', 'cat', 'Up', '2026-01-07 20:00Z'),
    ... )
    >>> _ = db.con.execute("UPDATE playback_events SET stopped_at = started_at + INTERVAL 1 HOUR")
    >>> frame = who_watched(db, "Heat", tz="Europe/Paris")
    >>> for username, plays, last in frame.select("username", "plays", "last_played").rows():
    ...     print(username, plays, last.isoformat())
    bob 2 2026-01-07T21:00:00+01:00
    ann 1 2026-01-05T21:00:00+01:00
    """
    _check_metric(metric)
    _check_tz(tz)
    params = {
        **_rules(grouping, min_seconds, DEFAULT_WATCHED_PERCENT),
        "title": title,
        "media_type": media_type,
    }
    frame = _query(db, WHO_WATCHED, params)
    keys = ["server_id", "user_id", "username"]
    frame = frame.sort([metric, *keys], descending=[True, False, False, False], nulls_last=True)
    return _local(frame.select(*keys, metric, "last_played"), ["last_played"], tz)


# ---------------------------------------------------------------------------------------
# libraries and the title page

# a play's library is its first playback's (the play_key row); the projection's empty
# values are NULL
_LIBRARY_LABEL = """coalesce(
    nullif(trim({p}library_name), ''),
    'library ' || nullif(trim({p}library_id), ''),
    'unknown'
)"""
PLAYS_BY_LIBRARY = (
    PLAYS_CTE
    + f"""
SELECT {_LIBRARY_LABEL.format(p="e.")} AS library, {_TOTALS}
FROM plays LEFT JOIN playback_events e ON e.correlation_key = plays.play_key
GROUP BY library
"""
)
PLAY_LIBRARIES = (
    f"SELECT correlation_key AS play_key, {_LIBRARY_LABEL.format(p='')} AS library\n"
    "FROM playback_events"
)


def by_library(
    db: Database,
    *,
    metric: Metric = "plays",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """Plays (or watch time) per library (see the module's "Dimensions"): columns
    ``library`` and ``metric``, most first. Libraries of one name on two servers are one row.

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, library_id, library_name, started_at, stopped_at",
    ...     ('a', '1', 'Movies', '2026-01-05 20:00Z', '2026-01-05 22:00Z'),
    ...     ('b', '2', 'TV Shows', '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('c', '1', 'Movies', '2026-01-06 20:00Z', '2026-01-06 21:00Z'),
    ...     ('d', '9', None, '2026-01-06 20:00Z', '2026-01-06 21:00Z'),
    ...     ('e', None, None, '2026-01-06 20:00Z', '2026-01-06 21:00Z'),
    ... )
    >>> print(by_library(db).rows())
    [('Movies', 2), ('TV Shows', 1), ('library 9', 1), ('unknown', 1)]
    """
    return _ranked(db, PLAYS_BY_LIBRARY, ["library"], metric, grouping, min_seconds)


TITLE_HISTORY_COLUMNS = [
    "started_at",
    "stopped_at",
    "username",
    "user_id",
    "server_id",
    "title",
    "percent_complete",
    "watched",
    "watch_time",
    "platform",
    "player",
    "stream_type",
    "library",
    "playbacks",
]
"""The columns of :func:`title_history`."""


def title_history(
    db: Database,
    title: str | None = None,
    *,
    rating_key: str | None = None,
    media_type: str | None = None,
    tz: str = "UTC",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
    watched_percent: float = DEFAULT_WATCHED_PERCENT,
) -> pl.DataFrame:
    """A title's page: who watched it, when, how far, on what. One row per play (see the
    module's "play"), newest first.

    ``title`` is a movie's title or a show's (the ``title`` column of :func:`top_titles`: an
    episode rolls up to its show, and the row's ``title`` names the episode); ``rating_key``
    names one item instead. Columns :data:`TITLE_HISTORY_COLUMNS`: ``started_at`` and
    ``stopped_at`` as clocks in ``tz``, ``percent_complete`` the exact share reached (the
    highest of the play's playbacks), ``watched``, ``watch_time`` (s), ``platform``,
    ``player``, ``stream_type``, ``library`` (named as :func:`by_library` names it).

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, user_id, username, rating_key, title, platform, started_at,"
    ...     " percent_complete",
    ...     ('a', 'u1', 'ann', '7', 'Heat', 'Roku', '2026-01-05 20:00Z', 84.79),
    ...     ('b', 'u2', 'bob', '7', 'Heat', 'Chrome', '2026-01-06 20:00Z', 100.0),
    ...     ('c', 'u2', 'bob', '8', 'Up', 'Chrome', '2026-01-07 20:00Z', 100.0),
    ... )
    >>> _ = db.con.execute("UPDATE playback_events SET stopped_at = started_at + INTERVAL 2 HOUR")
    >>> page = title_history(db, "Heat", tz="Europe/Paris")
    >>> columns = ["started_at", "username", "percent_complete", "watched", "platform"]
    >>> for started, *rest in page.select(columns).rows():
    ...     print(started.isoformat(), *rest)
    2026-01-06T21:00:00+01:00 bob 100.0 True Chrome
    2026-01-05T21:00:00+01:00 ann 84.79 False Roku
    >>> title_history(db, rating_key="8")["username"].to_list()
    ['bob']
    """
    if (title is None) == (rating_key is None):
        raise ValueError("name the title or its rating_key (one of them)")
    frame = plays(
        db, tz=tz, grouping=grouping, min_seconds=min_seconds, watched_percent=watched_percent
    )
    if rating_key is not None:
        frame = frame.filter(pl.col("rating_key") == rating_key)
    else:
        frame = frame.filter(pl.col("title_key") == title)
    if media_type is not None:
        frame = frame.filter(pl.col("media_type") == media_type)
    libraries = _con(db).sql(PLAY_LIBRARIES).pl()
    frame = frame.join(libraries, on="play_key", how="left")
    return frame.sort(["started_at", "play_key"], descending=True).select(TITLE_HISTORY_COLUMNS)


# ---------------------------------------------------------------------------------------
# completion


def completion(
    db: Database,
    *,
    metric: Metric = "plays",
    watched_percent: float = DEFAULT_WATCHED_PERCENT,
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """How much was watched to the end, per ``media_type``: ``metric`` (all plays),
    ``watched`` (the same metric over the plays reaching ``watched_percent`` of
    ``percent_complete``) and ``rate`` = watched / all (null when all is 0).

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, media_type, percent_complete, started_at, stopped_at",
    ...     ('a', 'movie', 85, '2026-01-05 20:00Z', '2026-01-05 22:00Z'),
    ...     ('b', 'movie', 84, '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('c', 'movie', 99, '2026-01-05 20:00Z', '2026-01-05 20:01Z'),
    ... )
    >>> print(completion(db).to_dicts())  # the 1-minute play is left out
    [{'media_type': 'movie', 'plays': 2, 'watched': 1, 'rate': 0.5}]
    >>> print(completion(db, metric="watch_time", watched_percent=90, min_seconds=0).rows())
    [('movie', 10860, 60, 0.0055248618784530384)]
    """
    _check_metric(metric)
    frame = _query(
        db, COMPLETION_BY_MEDIA_TYPE, _rules(grouping, min_seconds, watched_percent)
    ).rename({"watched_plays": "watched_of_plays", "watched_watch_time": "watched_of_watch_time"})
    watched = pl.col(f"watched_of_{metric}")
    return frame.select(
        "media_type",
        metric,
        watched.alias("watched"),
        pl.when(pl.col(metric) > 0)
        .then(watched / pl.col(metric))
        .otherwise(None)
        .cast(pl.Float64)
        .alias("rate"),
    )


# ---------------------------------------------------------------------------------------
# concurrent streams


def _check_until(until: datetime | None) -> None:
    if until is not None and until.tzinfo is None:
        raise ValueError("until must be a timezone-aware datetime (e.g. datetime.now(UTC))")


def concurrent_streams(
    db: Database,
    *,
    until: datetime | None = None,
    tz: str = "UTC",
) -> pl.DataFrame:
    """How many playbacks were running, at every moment that number changed: ``at`` (as a
    clock in ``tz``) and ``streams`` (the count from ``at`` on).

    Every playback counts from ``started_at`` to ``stopped_at`` (short ones included, no
    grouping: each is a stream); an open playback counts until ``until`` if given, else
    until its last event (``last_event_at``). A stop at ``t`` is applied before a start at
    ``t``, so back-to-back playbacks are never concurrent; playbacks of zero length never
    count.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, started_at, stopped_at",
    ...     ('a', '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('b', '2026-01-05 21:00Z', '2026-01-05 22:00Z'),
    ...     ('c', '2026-01-05 21:30Z', None),
    ... )
    >>> until = datetime(2026, 1, 5, 23, 0, tzinfo=UTC)
    >>> for at, streams in concurrent_streams(db, until=until).rows():
    ...     print(at.strftime("%H:%M"), streams)
    20:00 1
    21:00 1
    21:30 2
    22:00 1
    23:00 0
    """
    _check_until(until)
    _check_tz(tz)
    frame = _query(db, CONCURRENT_STREAMS, {"until": until})
    return _local(frame, ["at"], tz)


def max_concurrent_streams(
    db: Database,
    *,
    until: datetime | None = None,
    tz: str = "UTC",
) -> pl.DataFrame:
    """The peak of :func:`concurrent_streams`: one row, ``streams`` (0 for no playbacks) and
    ``at`` (when the peak was first reached, as a clock in ``tz``; null for none).

    Examples
    --------
    Back to back is not concurrent (the stop at 21:00 comes before the start at 21:00):

    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, started_at, stopped_at",
    ...     ('a', '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('b', '2026-01-05 21:00Z', '2026-01-05 22:00Z'),
    ... )
    >>> max_concurrent_streams(db)["streams"].item()
    1
    >>> _ = db.con.execute(
    ...     "INSERT INTO playback_events (correlation_key, started_at, stopped_at) VALUES "
    ...     "('c', '2026-01-05 20:30Z', '2026-01-05 21:30Z')"
    ... )
    >>> print(max_concurrent_streams(db, tz="Europe/Berlin").rows())
    [(2, datetime.datetime(2026, 1, 5, 21, 30, tzinfo=zoneinfo.ZoneInfo(key='Europe/Berlin')))]
    """
    _check_until(until)
    _check_tz(tz)
    frame = _query(db, MAX_CONCURRENT_STREAMS, {"until": until})
    return _local(frame, ["at"], tz)


# ---------------------------------------------------------------------------------------
# bandwidth

Bucket = Literal["hour", "day"]
"""The buckets of :func:`bandwidth`: local hours or local days."""


def bandwidth(
    db: Database,
    *,
    by: Bucket = "hour",
    tz: str = "UTC",
    until: datetime | None = None,
) -> pl.DataFrame:
    """The bandwidth used per local hour or day (see the module's "bandwidth" and
    "bitrate of a stream"): ``hour`` (when that local hour began, a clock in ``tz``) or
    ``day`` (a Date), ``kbps`` (the average over the bucket) and ``gigabytes`` (the data
    sent in it), every bucket from the first stream's to the last one's. Open playbacks
    run until ``until`` if given, else until their last event, as in
    :func:`concurrent_streams`.

    Examples
    --------
    8 Mbps from 20:30 to 21:30 and 4 Mbps from 21:00 to 22:00 (UTC):

    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, bandwidth, stream_bitrate, started_at, stopped_at",
    ...     ('a', 8000, None, '2026-01-05 20:30Z', '2026-01-05 21:30Z'),
    ...     ('b', None, 4000, '2026-01-05 21:00Z', '2026-01-05 22:00Z'),
    ... )
    >>> for hour, kbps, gb in bandwidth(db, tz="Europe/Berlin").rows():
    ...     print(hour.strftime("%H:%M %Z"), kbps, gb)
    21:00 CET 4000.0 1.8
    22:00 CET 8000.0 3.6
    >>> print(bandwidth(db, by="day").rows())
    [(datetime.date(2026, 1, 5), 500.0, 5.4)]
    """
    if by not in get_args(Bucket):
        raise ValueError(f"by must be one of {get_args(Bucket)}, got {by!r}")
    _check_until(until)
    _check_tz(tz)
    sql = BANDWIDTH_BY_HOUR if by == "hour" else BANDWIDTH_BY_DAY
    frame = _query(db, sql, {"until": until, "tz": tz})
    if by == "hour":
        frame = _local(frame.rename({"bucket_start": "hour"}), ["hour"], tz)
    else:
        frame = frame.rename({"key": "day"}).with_columns(pl.col("day").cast(pl.Date))
    return frame.select(by, pl.col("kbps", "gigabytes").cast(pl.Float64))


def max_concurrent_bandwidth(
    db: Database,
    *,
    until: datetime | None = None,
    tz: str = "UTC",
) -> pl.DataFrame:
    """The highest bandwidth at any instant, one row: ``kbps`` (0 when no stream has a
    bitrate), ``at`` (when it was first reached, a clock in ``tz``; null for none) and
    ``streams`` (how many streams with a bitrate were running then). A sweep line, as
    :func:`max_concurrent_streams`, each stream weighted by its bitrate.

    Examples
    --------
    Back to back is not concurrent; overlapping is:

    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, stream_bitrate, started_at, stopped_at",
    ...     ('a', 20000, '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('b', 8000, '2026-01-05 21:00Z', '2026-01-05 22:00Z'),
    ...     ('c', 4000, '2026-01-05 21:30Z', '2026-01-05 23:00Z'),
    ... )
    >>> kbps, at, streams = max_concurrent_bandwidth(db).row(0)
    >>> kbps, at.isoformat(), streams
    (20000, '2026-01-05T20:00:00+00:00', 1)
    >>> _ = db.con.execute("UPDATE playback_events SET stream_bitrate = 16000 WHERE started_at > "
    ...     "'2026-01-05 21:15Z'")
    >>> kbps, at, streams = max_concurrent_bandwidth(db, tz="Europe/Berlin").row(0)
    >>> kbps, at.strftime("%H:%M %Z"), streams
    (24000, '22:30 CET', 2)
    """
    _check_until(until)
    _check_tz(tz)
    frame = _query(db, MAX_CONCURRENT_BANDWIDTH, {"until": until})
    return _local(frame, ["at"], tz).select("kbps", "at", "streams")


# ---------------------------------------------------------------------------------------
# periods


PERIOD_MEASURES = ("plays", "watch_time", "users", "peak_streams")
"""The figures of :func:`period_totals`, in the order :func:`compare_periods` lists them."""


def local_period(start: date, end: date, tz: str = "UTC") -> tuple[datetime, datetime]:
    """The local days ``start`` to ``end`` (both included) in ``tz`` as the instants
    ``[since, before)`` in UTC: midnight of ``start`` and midnight after ``end`` as clocks
    there showed them (a week over a daylight-saving change is 167 or 169 hours).

    Examples
    --------
    >>> from datetime import date
    >>> since, before = local_period(date(2026, 3, 23), date(2026, 3, 29), "Europe/Berlin")
    >>> since.isoformat(), before.isoformat(), (before - since).total_seconds() / 3600
    ('2026-03-22T23:00:00+00:00', '2026-03-29T22:00:00+00:00', 167.0)
    """
    _check_tz(tz)
    if end < start:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    zone = zoneinfo.ZoneInfo(tz)
    since = datetime.combine(start, time(), zone).astimezone(UTC)
    before = datetime.combine(end + timedelta(days=1), time(), zone).astimezone(UTC)
    return since, before


def previous_period(start: date, end: date) -> tuple[date, date]:
    """The period of the same number of days that ends the day before ``start``.

    Examples
    --------
    >>> from datetime import date
    >>> previous_period(date(2026, 1, 12), date(2026, 1, 18))
    (datetime.date(2026, 1, 5), datetime.date(2026, 1, 11))
    """
    days = (end - start).days + 1
    if days < 1:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    return start - timedelta(days=days), start - timedelta(days=1)


def period_totals(
    db: Database,
    *,
    since: datetime,
    before: datetime,
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """The headline figures of the playbacks that started in ``[since, before)``, one row:
    ``plays``, ``watch_time`` (s), ``users`` (accounts, ``(server_id, user_id)``, with a
    play) and ``peak_streams`` (the most playbacks running at once, counted as
    :func:`max_concurrent_streams` counts them, over the playbacks that started in the
    period, open ones until their last event). The period is cut before plays are grouped,
    as :func:`workbench.db.scope` cuts it.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, server_id, user_id, started_at, stopped_at",
    ...     ('a', 's', 'u1', '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('b', 's', 'u2', '2026-01-05 20:30Z', '2026-01-05 21:30Z'),
    ...     ('c', 's', 'u1', '2026-01-06 20:00Z', '2026-01-06 20:30Z'),
    ... )
    >>> period_totals(
    ...     db, since=datetime(2026, 1, 5, tzinfo=UTC), before=datetime(2026, 1, 6, tzinfo=UTC)
    ... ).to_dicts()
    [{'plays': 2, 'watch_time': 7200, 'users': 2, 'peak_streams': 2}]
    """
    for name, value in (("since", since), ("before", before)):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be a timezone-aware datetime")
    params = {
        **_rules(grouping, min_seconds, DEFAULT_WATCHED_PERCENT),
        "since": since,
        "before": before,
    }
    totals = _query(db, PERIOD_TOTALS, params)
    peak = _query(db, PERIOD_PEAK_STREAMS, {"since": since, "before": before, "until": None})
    return pl.concat([totals, peak], how="horizontal").select(
        pl.col(name).cast(pl.Int64) for name in PERIOD_MEASURES
    )


def compare_periods(
    db: Database,
    *,
    start: date,
    end: date,
    tz: str = "UTC",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """The figures of :func:`period_totals` for the local days ``start`` to ``end`` in
    ``tz`` (both included) next to those of the period of the same number of days just
    before it (:func:`previous_period`): one row per ``measure`` (``plays``,
    ``watch_time``, ``users``, ``peak_streams``) with ``current``, ``previous`` and
    ``change`` (``current / previous - 1``; null when ``previous`` is 0: no percentage
    says how much more than nothing).

    ``db`` must hold both periods (the projection, or a snapshot of it; not a scope of the
    current period alone).

    Examples
    --------
    >>> from datetime import date
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, server_id, user_id, started_at, stopped_at",
    ...     ('a', 's', 'u1', '2026-01-04 20:00Z', '2026-01-04 21:00Z'),
    ...     ('b', 's', 'u1', '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('c', 's', 'u2', '2026-01-05 20:30Z', '2026-01-05 21:00Z'),
    ... )
    >>> for row in compare_periods(db, start=date(2026, 1, 5), end=date(2026, 1, 5)).rows():
    ...     print(row)
    ('plays', 2, 1, 1.0)
    ('watch_time', 5400, 3600, 0.5)
    ('users', 2, 1, 1.0)
    ('peak_streams', 2, 1, 1.0)
    """
    first, last = previous_period(start, end)
    figures = []
    for days in ((start, end), (first, last)):
        since, before = local_period(*days, tz)
        figures.append(
            period_totals(
                db, since=since, before=before, grouping=grouping, min_seconds=min_seconds
            ).row(0, named=True)
        )
    current, previous = figures
    return pl.DataFrame(
        {
            "measure": list(PERIOD_MEASURES),
            "current": [current[m] for m in PERIOD_MEASURES],
            "previous": [previous[m] for m in PERIOD_MEASURES],
        },
        schema={"measure": pl.String, "current": pl.Int64, "previous": pl.Int64},
    ).with_columns(
        pl.when(pl.col("previous") > 0)
        .then(pl.col("current") / pl.col("previous") - 1)
        .otherwise(None)
        .cast(pl.Float64)
        .alias("change")
    )


# ---------------------------------------------------------------------------------------
# person: a play's account merged into a person (identity records), else the account itself

# stands for person_accounts where a connection has none (no identity records, an older file)
_NO_PERSON_ACCOUNTS = (
    "(SELECT NULL::VARCHAR AS person, NULL::VARCHAR AS server_id, NULL::VARCHAR AS user_id"
    " WHERE false)"
)
PERSONS_CTE = """
, account_names AS (
    SELECT server_id, user_id, arg_max(username, started_at) AS username
    FROM plays GROUP BY server_id, user_id
),
persons AS (
    SELECT
        n.server_id,
        n.user_id,
        coalesce(
            m.person,
            coalesce(nullif(n.username, ''), n.user_id, 'unknown') || ' on '
                || coalesce(n.server_id, 'unknown')
        ) AS person
    FROM account_names n
    LEFT JOIN {accounts} m ON m.server_id = n.server_id AND m.user_id = n.user_id
),
person_plays AS (
    SELECT p.*, s.person
    FROM plays p
    JOIN persons s
        ON s.server_id IS NOT DISTINCT FROM p.server_id
        AND s.user_id IS NOT DISTINCT FROM p.user_id
)
"""
PLAYS_BY_PERSON = (
    PLAYS_CTE
    + PERSONS_CTE
    + f"""
SELECT person, count(DISTINCT (server_id, user_id)) AS accounts, {_TOTALS}
FROM person_plays
GROUP BY person
"""
)


def _person_accounts(db: Database) -> str:
    """``person_accounts`` when the connection has it, else an empty stand-in."""
    try:
        _con(db).execute("SELECT person, server_id, user_id FROM person_accounts LIMIT 0")
    except duckdb.CatalogException:
        return _NO_PERSON_ACCOUNTS
    return "person_accounts"


def _with_person(db: Database, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (plays: ``server_id``, ``user_id``, ``username``, ``started_at``) with each
    play's ``person`` after ``username``, named as :data:`PERSONS_CTE` names it."""
    accounts = _query(
        db,
        "SELECT server_id, user_id, person FROM " + _person_accounts(db),
        {},
    )
    names = (
        frame.sort("started_at")
        .group_by("server_id", "user_id", maintain_order=True)
        .agg(pl.col("username").last())
        .join(accounts, on=["server_id", "user_id"], how="left", nulls_equal=False)
        .with_columns(
            person=pl.coalesce(
                "person",
                pl.concat_str(
                    pl.coalesce(
                        pl.when(pl.col("username") != "").then("username"),
                        "user_id",
                        pl.lit("unknown"),
                    ),
                    pl.lit(" on "),
                    pl.col("server_id").fill_null("unknown"),
                ),
            )
        )
        .select("server_id", "user_id", "person")
    )
    joined = frame.join(names, on=["server_id", "user_id"], how="left", nulls_equal=True)
    at = joined.columns.index("username") + 1
    order = [*joined.columns[:at], "person", *joined.columns[at:-1]]
    return joined.select(order)


def by_person(
    db: Database,
    *,
    metric: Metric = "plays",
    grouping: bool = True,
    min_seconds: int = DEFAULT_MIN_SECONDS,
) -> pl.DataFrame:
    """Plays (or watch time) per person (see the module's "person"): ``person``,
    ``accounts`` (how many of the person's accounts have plays) and ``metric``. Grouping
    chains playbacks per account, as :func:`plays` does.

    Examples
    --------
    Ana has a Plex account on two servers and a Jellyfin user, merged into one person:

    >>> from datetime import UTC, datetime
    >>> from workbench.db import example_projection
    >>> from ingestor.records import IdentityRecord
    >>> db = example_projection(
    ...     "correlation_key, server_id, user_id, username, started_at, stopped_at",
    ...     ('a', 'plex-1', '1', 'ana', '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('b', 'plex-2', '7', 'ana', '2026-01-05 22:00Z', '2026-01-05 22:30Z'),
    ...     ('c', 'jf', 'e1', 'Ana', '2026-01-06 20:00Z', '2026-01-06 20:10Z'),
    ...     ('d', 'jf', 'f2', 'bob', '2026-01-06 20:00Z', '2026-01-06 20:10Z'),
    ... )
    >>> print(by_person(db).rows())
    [('Ana on jf', 1, 1), ('ana on plex-1', 1, 1), ('ana on plex-2', 1, 1), ('bob on jf', 1, 1)]
    >>> merge = IdentityRecord.make("merge", "Ana", [("plex-1", "1"), ("plex-2", "7"),
    ...     ("jf", "e1")], datetime(2026, 1, 7, tzinfo=UTC))
    >>> _ = db.apply_identity(1, merge)
    >>> print(by_person(db).rows())
    [('Ana', 3, 3), ('bob on jf', 1, 1)]
    >>> print(by_person(db, metric="watch_time").rows())
    [('Ana', 3, 6000), ('bob on jf', 1, 600)]
    """
    sql = PLAYS_BY_PERSON.format(accounts=_person_accounts(db))
    return _ranked(db, sql, ["person", "accounts"], metric, grouping, min_seconds)


__all__ = [
    "CATEGORIES",
    "Bucket",
    "Category",
    "Database",
    "HasConnection",
    "Metric",
    "bandwidth",
    "by_category",
    "by_day",
    "by_day_of_week",
    "by_hour_of_day",
    "by_library",
    "by_media_type",
    "by_month",
    "by_person",
    "by_platform",
    "by_player",
    "by_resolution",
    "by_server",
    "by_stream_type",
    "by_user",
    "compare_periods",
    "completion",
    "concurrent_streams",
    "local_period",
    "max_concurrent_bandwidth",
    "max_concurrent_streams",
    "period_totals",
    "plays",
    "popular_titles",
    "previous_period",
    "title_history",
    "top_titles",
    "who_watched",
]
