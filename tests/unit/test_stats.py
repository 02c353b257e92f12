"""The statistics of ``workbench.stats`` equal the same statistics computed independently.

The references below are plain polars over the raw playback records (no DuckDB, nothing
imported from ``workbench.stats``): hypothesis draws playback rows, which go into a real
``playback_events`` table (the projection's own DDL) for ``workbench.stats`` and straight into
the references; the simulator's ground truth is checked the same way after a real pipeline
projected its feed. Hand-made cases pin the rules a reference could share a mistake on:
daylight-saving days, the sweep line's tie rule, the 120 s and 85 % thresholds, grouping.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from ingestor.dedup import DedupIndex
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.simulation import SimulationConfig, simulate
from tests.factory import messages
from workbench import stats

# ---------------------------------------------------------------------------------------
# raw playback rows and the table they go into

TS = pl.Datetime("us", "UTC")
SCHEMA: dict[str, pl.DataType] = {
    "correlation_key": pl.String(),
    "server_id": pl.String(),
    "user_id": pl.String(),
    "username": pl.String(),
    "media_type": pl.String(),
    "title": pl.String(),
    "grandparent_title": pl.String(),
    "rating_key": pl.String(),
    "platform": pl.String(),
    "player": pl.String(),
    "transcode_decision": pl.String(),
    "video_resolution": pl.String(),
    "library_id": pl.String(),
    "library_name": pl.String(),
    "started_at": TS,
    "stopped_at": TS,
    "state": pl.String(),
    "paused_seconds": pl.Int64(),
    "played_seconds": pl.Int64(),
    "percent_complete": pl.Float64(),
    "last_event_at": TS,
    "stream_bitrate": pl.Int32(),
    "bandwidth": pl.Int32(),
}

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",  # a 30-minute daylight-saving shift
    "Pacific/Chatham",
]
# two days around each: Berlin's spring and autumn changes, a month boundary
BASES = [
    datetime(2026, 3, 28, 0, 0, tzinfo=UTC),
    datetime(2026, 10, 24, 0, 0, tzinfo=UTC),
    datetime(2026, 1, 30, 12, 0, tzinfo=UTC),
]
USERS = [("1", "ann"), ("2", "bob"), (None, None)]
ITEMS: dict[str, tuple[str | None, str, str | None]] = {
    "10": ("movie", "Heat", ""),
    "11": ("episode", "Pilot", "Lost"),
    "12": ("episode", "Day 2", "Lost"),
    "13": ("track", "", ""),
    "14": (None, "Odd", None),
    "15": (" movie ", "Up", None),
}
PLATFORMS = ["Roku", " Roku ", "Chrome", "", None]
PLAYERS = ["Living Room", "iPhone", "", None]
DECISIONS = [
    "direct play",
    "DirectPlay",
    "copy",
    "direct stream",
    "transcode",
    "Transcode",
    "",
    None,
]
RESOLUTIONS = ["4k", "1080", " 720", "", None]
# (library_id, library_name): named, id only (Plex history), blank, unknown (older events)
LIBRARIES = [("1", "Movies"), ("2", " TV Shows "), ("9", ""), ("7", None), ("", ""), (None, None)]


def record(
    key: str,
    start: datetime,
    stop: datetime | None,
    *,
    paused: int | None = 0,
    percent: float | None = 100,
    user: str | None = "1",
    item: str = "10",
    **fields: Any,
) -> dict[str, Any]:
    """One playback_events row (the columns statistics read), defaults for the rest."""
    media_type, title, grandparent = ITEMS[item]
    played = None
    if stop is not None:
        played = max(round((stop - start).total_seconds()) - (paused or 0), 0)
    row = {
        "correlation_key": key,
        "server_id": "plex-a",
        "user_id": user,
        "username": dict(USERS)[user],
        "media_type": media_type,
        "title": title,
        "grandparent_title": grandparent,
        "rating_key": item,
        "platform": "Roku",
        "player": "Living Room",
        "transcode_decision": "direct play",
        "video_resolution": "1080",
        "started_at": start,
        "stopped_at": stop,
        "state": "stopped" if stop is not None else "playing",
        "paused_seconds": paused,
        "played_seconds": played,
        "percent_complete": percent,
        "last_event_at": stop if stop is not None else start,
        "stream_bitrate": None,
        "bandwidth": None,
    }
    row.update(fields)
    return row


def frame_of(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA)


def projection_of(rows: list[dict[str, Any]]) -> Projection:
    """A real in-memory projection whose playback_events holds ``rows``."""
    db = Projection(":memory:")
    db.con.register("incoming", frame_of(rows).to_arrow())
    db.con.execute("INSERT INTO playback_events BY NAME SELECT * FROM incoming")
    db.con.unregister("incoming")
    return db


# completion as playback_events stores it: exact shares, whole numbers, the threshold's edges
SHARES = st.one_of(
    st.integers(0, 100).map(float),
    st.integers(0, 10_000).map(lambda n: n / 100),
    st.sampled_from([84.79, 84.99, 85.0, 85.01]),
)


@st.composite
def playback_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    """0-30 playbacks within two days, a third of them resuming the one before."""
    base = draw(st.sampled_from(BASES))
    rows: list[dict[str, Any]] = []
    for index in range(draw(st.integers(0, 30))):
        previous = rows[-1] if rows else None
        if previous and previous["stopped_at"] is not None and draw(st.integers(0, 2)) == 0:
            server, user, item = previous["server_id"], previous["user_id"], previous["rating_key"]
            # at, just before (overlapping by 1 µs) or some time after the previous stop
            gap = draw(st.one_of(st.sampled_from([-1, 0]), st.integers(0, 7200 * 10**6)))
            start = previous["stopped_at"] + timedelta(microseconds=gap)
            before = previous["percent_complete"]
            near = [] if before is None else [max(before - 1, 0), before, min(before + 1, 100)]
            near += [] if before is None else [max(before - 0.01, 0), min(before + 0.01, 100)]
            percent = draw(st.one_of(st.none(), SHARES, st.sampled_from(near or [None])))
        else:
            server = draw(st.sampled_from(["plex-a", "jelly-b"]))
            user = draw(st.sampled_from(USERS))[0]
            item = draw(st.sampled_from(sorted(ITEMS)))
            start = base + timedelta(
                minutes=draw(st.integers(0, 2 * 24 * 60)),
                seconds=draw(st.sampled_from([0, 30])),
                microseconds=draw(st.sampled_from([0, 250_000, 500_000])),
            )
            percent = draw(st.one_of(st.none(), SHARES))
        length = draw(
            st.one_of(
                st.sampled_from([0, 60, 119, 120, 121, 1800, 3600]).map(lambda s: s * 1_000_000),
                st.integers(0, 4 * 3600 * 1_000_000),
            )
        )
        is_open = draw(st.integers(0, 6)) == 0
        stop = None if is_open else start + timedelta(microseconds=length)
        row = record(
            f"p{index:02d}",
            start,
            stop,
            paused=draw(st.one_of(st.none(), st.just(0), st.integers(0, 2000))),
            percent=percent,
            user=user,
            item=item,
            server_id=server,
            platform=draw(st.sampled_from(PLATFORMS)),
            player=draw(st.sampled_from(PLAYERS)),
            transcode_decision=draw(st.sampled_from(DECISIONS)),
            video_resolution=draw(st.sampled_from(RESOLUTIONS)),
        )
        row["library_id"], row["library_name"] = draw(st.sampled_from(LIBRARIES))
        if is_open:
            row["last_event_at"] = start + timedelta(seconds=draw(st.integers(0, 3 * 3600)))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# the references: plain polars over the raw rows


def blank_to_null(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr == "").then(None).otherwise(expr)


def or_unknown(name: str) -> pl.Expr:
    return blank_to_null(pl.col(name).str.strip_chars(" ")).fill_null("unknown")


def expected_watch_seconds() -> pl.Expr:
    """stop - start - paused, whole seconds rounded half up, at least 0."""
    span_us = (pl.col("stopped_at") - pl.col("started_at")).dt.total_microseconds()
    rounded = (span_us.clip(lower_bound=0) + 500_000) // 1_000_000
    return (rounded - pl.col("paused_seconds").fill_null(0)).clip(lower_bound=0)


def expected_stream_type() -> pl.Expr:
    raw = blank_to_null(pl.col("transcode_decision").str.strip_chars(" ")).str.to_lowercase()
    return (
        pl.when(raw.is_null())
        .then(pl.lit("unknown"))
        .when(raw.is_in(["copy", "direct stream", "directstream"]))
        .then(pl.lit("direct stream"))
        .when(raw.is_in(["direct play", "directplay"]))
        .then(pl.lit("direct play"))
        .otherwise(raw)
    )


def expected_plays(
    raw: pl.DataFrame,
    *,
    grouping: bool = True,
    min_seconds: int = 120,
    watched_percent: float = 85,
) -> pl.DataFrame:
    """One row per play, grouped the Tautulli way when ``grouping``."""
    item = ["server_id", "user_id", "rating_key"]
    kept = (
        raw.filter(pl.col("started_at").is_not_null() & pl.col("stopped_at").is_not_null())
        .with_columns(watch=expected_watch_seconds())
        .filter(pl.col("watch") >= min_seconds)
        .sort([*item, "started_at", "stopped_at", "correlation_key"], nulls_last=True)
    )

    def before(name: str) -> pl.Expr:
        return pl.col(name).shift(1).over(item)

    resumes = (
        pl.lit(grouping)
        & pl.col("user_id").is_not_null()
        & pl.col("rating_key").is_not_null()
        & (pl.col("started_at") >= before("stopped_at"))
        & (before("percent_complete") < watched_percent)
        & (pl.col("percent_complete") >= before("percent_complete"))
    ).fill_null(False)
    chained = kept.with_columns(play=(~resumes).cast(pl.Int64).cum_sum().over(item))
    grouped = chained.group_by([*item, "play"], maintain_order=True).agg(
        pl.col(
            "correlation_key",
            "username",
            "media_type",
            "title",
            "grandparent_title",
            "platform",
            "player",
            "transcode_decision",
            "video_resolution",
            "started_at",
        ).first(),
        pl.col("stopped_at").max(),
        pl.col("watch").sum().alias("watch_time"),
        pl.col("percent_complete").max(),
        pl.len().alias("playbacks"),
    )
    return grouped.select(
        pl.col("correlation_key").alias("play_key"),
        "server_id",
        "user_id",
        "username",
        # no identity records here: each account is a person of its own (an account's
        # username is the same on all its rows, so its latest one is any row's)
        pl.concat_str(
            pl.coalesce(blank_to_null(pl.col("username")), "user_id", pl.lit("unknown")),
            pl.lit(" on "),
            pl.col("server_id").fill_null("unknown"),
        ).alias("person"),
        "rating_key",
        or_unknown("media_type").alias("media_type"),
        "title",
        "grandparent_title",
        pl.coalesce(
            blank_to_null(pl.col("grandparent_title")),
            blank_to_null(pl.col("title")),
            pl.col("rating_key"),
        ).alias("title_key"),
        or_unknown("platform").alias("platform"),
        or_unknown("player").alias("player"),
        expected_stream_type().alias("stream_type"),
        or_unknown("video_resolution").alias("resolution"),
        "started_at",
        "stopped_at",
        pl.col("watch_time").cast(pl.Int64),
        "percent_complete",
        (pl.col("percent_complete") >= watched_percent).fill_null(False).alias("watched"),
        "playbacks",
    )


WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def expected_buckets(plays: pl.DataFrame, kind: str, metric: str, tz: str) -> pl.DataFrame:
    local = pl.col("started_at").dt.convert_time_zone(tz)
    keys = {
        "day": local.dt.date(),
        "month": pl.date(local.dt.year(), local.dt.month(), 1),
        "weekday": local.dt.weekday().cast(pl.Int64),
        "hour": local.dt.hour().cast(pl.Int64),
    }
    counted = plays.group_by(keys[kind].alias(kind)).agg(
        pl.len().alias("plays"), pl.col("watch_time").sum().alias("watch_time")
    )
    if kind == "weekday":
        domain = pl.DataFrame({"weekday": range(1, 8), "day_name": WEEKDAYS})
    elif kind == "hour":
        domain = pl.DataFrame({"hour": range(24)})
    elif counted.is_empty():
        domain = pl.DataFrame({kind: []}, schema={kind: pl.Date})
    else:
        step = "1d" if kind == "day" else "1mo"
        first, last = counted[kind].min(), counted[kind].max()
        domain = pl.DataFrame({kind: pl.date_range(first, last, step, eager=True)})
    filled = domain.join(counted, on=kind, how="left").with_columns(
        pl.col("plays", "watch_time").fill_null(0)
    )
    columns = [kind, "day_name"] if kind == "weekday" else [kind]
    return filled.sort(kind).select(*columns, metric)


def expected_ranked(plays: pl.DataFrame, keys: list[str], metric: str) -> pl.DataFrame:
    extra = []
    if "username" in keys:  # a user's name is the one of their latest play
        keys = [k for k in keys if k != "username"]
        extra = [pl.col("username").sort_by("started_at").last()]
    summed = plays.group_by(keys).agg(
        *extra, pl.len().alias("plays"), pl.col("watch_time").sum().alias("watch_time")
    )
    order = keys + (["username"] if extra else [])
    return summed.sort(
        [metric, *order], descending=[True] + [False] * len(order), nulls_last=True
    ).select(*order, metric)


def expected_libraries(raw: pl.DataFrame, plays: pl.DataFrame) -> pl.DataFrame:
    """``plays`` with ``library``: its first playback's name, else "library <id>", else
    "unknown"."""
    label = pl.coalesce(
        blank_to_null(pl.col("library_name").str.strip_chars(" ")),
        pl.lit("library ") + blank_to_null(pl.col("library_id").str.strip_chars(" ")),
        pl.lit("unknown"),
    )
    first = raw.select(pl.col("correlation_key").alias("play_key"), label.alias("library"))
    return plays.join(first, on="play_key", how="left")


def expected_titles(plays: pl.DataFrame, media_type: str | None) -> pl.DataFrame:
    chosen = plays if media_type is None else plays.filter(pl.col("media_type") == media_type)
    return chosen.group_by("media_type", pl.col("title_key").alias("title")).agg(
        pl.struct("server_id", "user_id").n_unique().alias("users"),
        pl.len().alias("plays"),
        pl.col("watch_time").sum(),
    )


def expected_spans(
    raw: pl.DataFrame, until: datetime | None, keep: list[str] | None = None
) -> pl.DataFrame:
    open_end = pl.lit(until, dtype=TS) if until is not None else pl.col("last_event_at")
    end = pl.when(pl.col("stopped_at").is_not_null()).then(pl.col("stopped_at")).otherwise(open_end)
    return (
        raw.filter(pl.col("started_at").is_not_null())
        .select(pl.col("started_at").alias("start"), end.alias("end"), *(keep or []))
        .filter(pl.col("end") > pl.col("start"))
    )


def expected_concurrency(raw: pl.DataFrame, until: datetime | None) -> pl.DataFrame:
    """At every start or end: how many playbacks have start <= t < end (half-open)."""
    spans = expected_spans(raw, until)
    moments = pl.concat([spans["start"], spans["end"]]).unique().sort().to_frame("at")
    return (
        moments.join(spans, how="cross")
        .group_by("at")
        .agg(((pl.col("start") <= pl.col("at")) & (pl.col("at") < pl.col("end"))).sum())
        .rename({"start": "streams"})
        .sort("at")
        .select("at", pl.col("streams").cast(pl.Int64))
    )


def expected_bitrate_spans(raw: pl.DataFrame, until: datetime | None) -> pl.DataFrame:
    """The streams with a bitrate: ``bandwidth`` above 0, else ``stream_bitrate`` above 0."""
    positive = [pl.when(pl.col(c) > 0).then(pl.col(c)) for c in ("bandwidth", "stream_bitrate")]
    spans = expected_spans(raw.with_columns(kbps=pl.coalesce(positive)), until, keep=["kbps"])
    return spans.filter(pl.col("kbps").is_not_null())


def local_bucket_starts(first: datetime, last: datetime, by: str, tz: str) -> list[datetime]:
    """The instants each local day (or hour) of ``tz`` begins, a day around first..last: the
    wall clock's midnights (hours) read by zoneinfo, one that a gap skips becoming the
    instant after the gap (the same as the next one: kept once)."""
    zone = ZoneInfo(tz)
    day = first.astimezone(zone).date() - timedelta(days=1)
    starts = set()
    while day <= last.astimezone(zone).date() + timedelta(days=1):
        hours = [0] if by == "day" else range(24)
        starts.update(datetime.combine(day, time(h), zone).astimezone(UTC) for h in hours)
        day += timedelta(days=1)
    return sorted(starts)


def expected_bandwidth(
    raw: pl.DataFrame, by: str, tz: str, until: datetime | None = None
) -> pl.DataFrame:
    """Each local bucket from the first stream's to the last one's: the kilobits of every
    stream's overlap with it, over its length (kbps) and as decimal GB."""
    spans = expected_bitrate_spans(raw, until)
    if spans.is_empty():
        label = pl.Date() if by == "day" else pl.Datetime("us", tz)
        return pl.DataFrame(schema={by: label, "kbps": pl.Float64, "gigabytes": pl.Float64})
    first, last = spans["start"].min(), spans["end"].max()
    starts = local_bucket_starts(first, last, by, tz)  # type: ignore[arg-type]
    buckets = pl.DataFrame(
        {"b_start": starts[:-1], "b_end": starts[1:]}, schema={"b_start": TS, "b_end": TS}
    ).filter((pl.col("b_end") > first) & (pl.col("b_start") < last))
    overlap = (
        pl.min_horizontal("end", "b_end") - pl.max_horizontal("start", "b_start")
    ).dt.total_microseconds() / 1e6
    used = (
        buckets.join(spans, how="cross")
        .filter((pl.col("start") < pl.col("b_end")) & (pl.col("end") > pl.col("b_start")))
        .group_by("b_start")
        .agg((pl.col("kbps") * overlap).sum().alias("kilobits"))
    )
    length = (pl.col("b_end") - pl.col("b_start")).dt.total_microseconds() / 1e6
    label = (
        pl.col("b_start").dt.convert_time_zone(tz)
        if by == "hour"
        else pl.col("b_start").dt.convert_time_zone(tz).dt.date()
    )
    return (
        buckets.join(used, on="b_start", how="left")
        .with_columns(pl.col("kilobits").fill_null(0.0))
        .sort("b_start")
        .select(
            label.alias(by),
            (pl.col("kilobits") / length).alias("kbps"),
            (pl.col("kilobits") / 8e6).alias("gigabytes"),
        )
    )


def expected_peak_bandwidth(raw: pl.DataFrame, until: datetime | None) -> tuple[int, Any, int]:
    """At every start or end: the bitrates of the streams with start <= t < end; the
    highest sum, the first moment it was reached, and how many streams ran then."""
    spans = expected_bitrate_spans(raw, until)
    if spans.is_empty():
        return 0, None, 0
    moments = pl.concat([spans["start"], spans["end"]]).unique().sort().to_frame("at")
    running = (pl.col("start") <= pl.col("at")) & (pl.col("at") < pl.col("end"))
    sums = (
        moments.join(spans, how="cross")
        .group_by("at")
        .agg(pl.col("kbps").filter(running).sum().alias("kbps"), running.sum().alias("streams"))
        .sort("at")
    )
    top = sums.filter(pl.col("kbps") == sums["kbps"].max()).row(0, named=True)
    return top["kbps"], top["at"], top["streams"]


# ---------------------------------------------------------------------------------------
# property tests over hypothesis-drawn playbacks

RULES = st.fixed_dictionaries(
    {"grouping": st.booleans(), "min_seconds": st.sampled_from([0, 120, 600])}
)
METRICS = st.sampled_from(["plays", "watch_time"])
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    rows=playback_rows(),
    rules=RULES,
    watched_percent=st.sampled_from([50, 85, 100]),
    tz=st.sampled_from(ZONES),
)
def test_plays_are_the_playbacks_grouped_like_tautulli(
    rows: list[dict[str, Any]], rules: dict[str, Any], watched_percent: int, tz: str
) -> None:
    actual = stats.plays(projection_of(rows), tz=tz, watched_percent=watched_percent, **rules)
    expected = expected_plays(frame_of(rows), watched_percent=watched_percent, **rules)
    expected = expected.with_columns(pl.col("started_at", "stopped_at").dt.convert_time_zone(tz))
    assert_frame_equal(actual.sort("play_key"), expected.sort("play_key"), check_dtypes=False)


@PROPERTY
@given(rows=playback_rows(), rules=RULES, metric=METRICS, tz=st.sampled_from(ZONES))
def test_time_buckets_count_plays_by_their_local_start(
    rows: list[dict[str, Any]], rules: dict[str, Any], metric: str, tz: str
) -> None:
    db = projection_of(rows)
    plays = expected_plays(frame_of(rows), **rules)
    for function, kind in [
        (stats.by_day, "day"),
        (stats.by_day_of_week, "weekday"),
        (stats.by_hour_of_day, "hour"),
        (stats.by_month, "month"),
    ]:
        actual = function(db, metric=metric, tz=tz, **rules)
        assert_frame_equal(actual, expected_buckets(plays, kind, metric, tz), check_dtypes=False)


DIMENSIONS = [
    (stats.by_user, ["server_id", "user_id", "username"]),
    (stats.by_platform, ["platform"]),
    (stats.by_player, ["player"]),
    (stats.by_media_type, ["media_type"]),
    (stats.by_stream_type, ["stream_type"]),
    (stats.by_resolution, ["resolution"]),
    (stats.by_server, ["server_id"]),
]


@PROPERTY
@given(rows=playback_rows(), rules=RULES, metric=METRICS)
def test_dimensions_split_plays_by_their_first_playback(
    rows: list[dict[str, Any]], rules: dict[str, Any], metric: str
) -> None:
    # the statistics read a plain DuckDB connection as well as a Projection
    con = projection_of(rows).con
    plays = expected_plays(frame_of(rows), **rules)
    for function, keys in DIMENSIONS:
        actual = function(con, metric=metric, **rules)
        assert_frame_equal(actual, expected_ranked(plays, keys, metric), check_dtypes=False)


@PROPERTY
@given(rows=playback_rows(), rules=RULES, metric=METRICS)
def test_libraries_split_plays_by_their_first_playback(
    rows: list[dict[str, Any]], rules: dict[str, Any], metric: str
) -> None:
    raw = frame_of(rows)
    plays = expected_libraries(raw, expected_plays(raw, **rules))
    actual = stats.by_library(projection_of(rows), metric=metric, **rules)
    assert_frame_equal(actual, expected_ranked(plays, ["library"], metric), check_dtypes=False)


@PROPERTY
@given(
    rows=playback_rows(),
    rules=RULES,
    item=st.sampled_from(sorted(ITEMS)),
    by_key=st.booleans(),
    tz=st.sampled_from(ZONES),
)
def test_a_title_page_lists_each_play_of_it_newest_first(
    rows: list[dict[str, Any]], rules: dict[str, Any], item: str, by_key: bool, tz: str
) -> None:
    raw = frame_of(rows)
    plays = expected_libraries(raw, expected_plays(raw, **rules))
    if by_key:
        page = stats.title_history(projection_of(rows), rating_key=item, tz=tz, **rules)
        wanted = plays.filter(pl.col("rating_key") == item)
    else:
        _, title, grandparent = ITEMS[item]
        name = grandparent or title or item
        page = stats.title_history(projection_of(rows), name, tz=tz, **rules)
        wanted = plays.filter(pl.col("title_key") == name)
    expected = (
        wanted.sort(["started_at", "play_key"], descending=True)
        .with_columns(pl.col("started_at", "stopped_at").dt.convert_time_zone(tz))
        .select(stats.TITLE_HISTORY_COLUMNS)
    )
    assert_frame_equal(page, expected, check_dtypes=False)


def test_a_title_page_needs_a_title_or_a_rating_key() -> None:
    db = projection_of([])
    with pytest.raises(ValueError, match="title or its rating_key"):
        stats.title_history(db)
    with pytest.raises(ValueError, match="title or its rating_key"):
        stats.title_history(db, "Heat", rating_key="10")


@PROPERTY
@given(
    rows=playback_rows(),
    rules=RULES,
    metric=METRICS,
    limit=st.integers(1, 8),
    media_type=st.sampled_from([None, "movie", "episode", "unknown"]),
    tz=st.sampled_from(ZONES),
)
def test_titles_rank_by_plays_and_by_distinct_users(
    rows: list[dict[str, Any]],
    rules: dict[str, Any],
    metric: str,
    limit: int,
    media_type: str | None,
    tz: str,
) -> None:
    db = projection_of(rows)
    plays = expected_plays(frame_of(rows), **rules)
    titles = expected_titles(plays, media_type)

    top = stats.top_titles(db, limit=limit, metric=metric, media_type=media_type, **rules)
    expected_top = titles.sort([metric, "title", "media_type"], descending=[True, False, False])
    assert_frame_equal(
        top, expected_top.head(limit).select("media_type", "title", metric), check_dtypes=False
    )

    popular = stats.popular_titles(db, limit=limit, metric=metric, media_type=media_type, **rules)
    expected_popular = titles.sort(
        ["users", metric, "title", "media_type"], descending=[True, True, False, False]
    )
    assert_frame_equal(
        popular,
        expected_popular.head(limit).select("media_type", "title", "users", metric),
        check_dtypes=False,
    )

    for title in ["Lost", "Heat", "13", "Pilot"]:
        watchers = stats.who_watched(db, title, metric=metric, tz=tz, **rules)
        of_title = plays.filter(pl.col("title_key") == title)
        expected = (
            of_title.group_by("server_id", "user_id")
            .agg(
                pl.col("username").sort_by("started_at").last(),
                pl.len().alias("plays"),
                pl.col("watch_time").sum(),
                pl.col("started_at").max().dt.convert_time_zone(tz).alias("last_played"),
            )
            .sort(
                [metric, "server_id", "user_id", "username"],
                descending=[True, False, False, False],
                nulls_last=True,
            )
            .select("server_id", "user_id", "username", metric, "last_played")
        )
        assert_frame_equal(watchers, expected, check_dtypes=False)


@PROPERTY
@given(
    rows=playback_rows(),
    rules=RULES,
    metric=METRICS,
    watched_percent=st.sampled_from([1, 50, 85, 100]),
)
def test_completion_is_the_share_of_plays_reaching_the_watched_percent(
    rows: list[dict[str, Any]], rules: dict[str, Any], metric: str, watched_percent: int
) -> None:
    actual = stats.completion(
        projection_of(rows), metric=metric, watched_percent=watched_percent, **rules
    )
    plays = expected_plays(frame_of(rows), watched_percent=watched_percent, **rules)
    if metric == "plays":
        totals = [pl.len().alias("plays"), pl.col("watched").sum().alias("watched")]
    else:
        watch = pl.col("watch_time")
        totals = [watch.sum(), watch.filter(pl.col("watched")).sum().alias("watched")]
    expected = (
        plays.group_by("media_type")
        .agg(*totals)
        .with_columns(
            pl.when(pl.col(metric) > 0)
            .then(pl.col("watched") / pl.col(metric))
            .cast(pl.Float64)
            .alias("rate")
        )
        .sort("media_type")
    )
    assert_frame_equal(actual, expected, check_dtypes=False)


@PROPERTY
@given(
    rows=playback_rows(),
    until_hours=st.one_of(st.none(), st.integers(0, 80)),
    tz=st.sampled_from(ZONES),
)
def test_concurrent_streams_count_the_playbacks_running_at_each_change(
    rows: list[dict[str, Any]], until_hours: int | None, tz: str
) -> None:
    db = projection_of(rows)
    base = min((r["started_at"] for r in rows), default=BASES[0])
    until = None if until_hours is None else base + timedelta(hours=until_hours)
    expected = expected_concurrency(frame_of(rows), until)

    actual = stats.concurrent_streams(db, until=until, tz=tz)
    assert_frame_equal(
        actual,
        expected.with_columns(pl.col("at").dt.convert_time_zone(tz)),
        check_dtypes=False,
    )

    peak = stats.max_concurrent_streams(db, until=until, tz=tz).row(0, named=True)
    if expected.is_empty():
        assert peak == {"streams": 0, "at": None}
    else:
        top = expected["streams"].max()
        first = expected.filter(pl.col("streams") == top)["at"].min()
        assert peak["streams"] == top
        assert peak["at"] == first


BITRATES = st.tuples(
    st.sampled_from([None, 0, 1500, 8000, 20000]),  # bandwidth
    st.sampled_from([None, 0, 4000, 12000]),  # stream_bitrate
)


@PROPERTY
@given(
    rows=playback_rows(),
    bitrates=st.lists(BITRATES, min_size=30, max_size=30),
    until_hours=st.one_of(st.none(), st.integers(0, 80)),
    tz=st.sampled_from(ZONES),
)
def test_bandwidth_integrates_each_streams_bitrate_over_local_buckets(
    rows: list[dict[str, Any]],
    bitrates: list[tuple[int | None, int | None]],
    until_hours: int | None,
    tz: str,
) -> None:
    for row, (bandwidth, bitrate) in zip(rows, bitrates, strict=False):
        row.update(bandwidth=bandwidth, stream_bitrate=bitrate)
    db = projection_of(rows)
    base = min((r["started_at"] for r in rows), default=BASES[0])
    until = None if until_hours is None else base + timedelta(hours=until_hours)
    raw = frame_of(rows)
    for by in ["hour", "day"]:
        actual = stats.bandwidth(db, by=by, tz=tz, until=until)  # type: ignore[arg-type]
        expected = expected_bandwidth(raw, by, tz, until)
        assert_frame_equal(actual, expected, check_dtypes=False)
    kbps, first, streams = expected_peak_bandwidth(raw, until)
    peak = stats.max_concurrent_bandwidth(db, until=until, tz=tz).row(0, named=True)
    # Python answers False to == between zones when one side is a clock in a DST fold
    # (PEP 495), so the instants are compared in UTC; the fold is what makes them agree.
    instant = None if peak["at"] is None else peak["at"].astimezone(UTC)
    assert {**peak, "at": instant} == {"kbps": kbps, "at": first, "streams": streams}
    if first is not None:
        assert str(peak["at"].tzinfo) == tz


# ---------------------------------------------------------------------------------------
# hand-made cases

BERLIN = "Europe/Berlin"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_days_and_hours_follow_berlin_clocks_across_both_daylight_saving_changes() -> None:
    hour = timedelta(hours=1)
    db = projection_of(
        [
            record("a", at("2026-03-28 23:30"), at("2026-03-28 23:30") + hour),  # 00:30 CET
            record("b", at("2026-03-29 00:30"), at("2026-03-29 00:30") + hour),  # 01:30 CET
            record("c", at("2026-03-29 01:30"), at("2026-03-29 01:30") + hour),  # 03:30 CEST
            record("d", at("2026-03-29 22:30"), at("2026-03-29 22:30") + hour),  # 00:30, 30th
            record("e", at("2026-10-25 00:30"), at("2026-10-25 00:30") + hour),  # 02:30 CEST
            record("f", at("2026-10-25 01:30"), at("2026-10-25 01:30") + 2 * hour),  # 02:30 CET
        ]
    )
    days = stats.by_day(db, tz=BERLIN)
    assert days.filter(pl.col("plays") > 0).rows() == [
        (date(2026, 3, 29), 3),
        (date(2026, 3, 30), 1),
        (date(2026, 10, 25), 2),
    ]
    assert days.height == (date(2026, 10, 25) - date(2026, 3, 29)).days + 1
    in_utc = stats.by_day(db).filter(pl.col("plays") > 0).rows()
    assert in_utc[:2] == [(date(2026, 3, 28), 1), (date(2026, 3, 29), 3)]

    hours = dict(stats.by_hour_of_day(db, tz=BERLIN).rows())
    assert {h: n for h, n in hours.items() if n} == {0: 2, 1: 1, 2: 2, 3: 1}
    watch = dict(stats.by_hour_of_day(db, metric="watch_time", tz=BERLIN).rows())
    assert watch[2] == 3600 + 7200

    weekdays = stats.by_day_of_week(db, tz=BERLIN).rows()
    assert (7, "Sunday", 5) in weekdays and (1, "Monday", 1) in weekdays

    months = stats.by_month(db, tz=BERLIN).rows()
    assert months[0] == (date(2026, 3, 1), 4) and months[-1] == (date(2026, 10, 1), 2)
    assert len(months) == 8


def test_a_stop_at_t_is_counted_before_a_start_at_t() -> None:
    rows = [
        record("a", at("2026-01-05 20:00"), at("2026-01-05 21:00")),
        record("b", at("2026-01-05 21:00"), at("2026-01-05 22:00")),
        record("zero", at("2026-01-05 20:30"), at("2026-01-05 20:30")),
    ]
    db = projection_of(rows)
    assert stats.max_concurrent_streams(db).row(0) == (1, at("2026-01-05 20:00"))
    assert [(t.strftime("%H:%M"), n) for t, n in stats.concurrent_streams(db).rows()] == [
        ("20:00", 1),
        ("21:00", 1),
        ("22:00", 0),
    ]
    db = projection_of([*rows, record("c", at("2026-01-05 21:00"), at("2026-01-05 21:30"))])
    assert stats.max_concurrent_streams(db).row(0) == (2, at("2026-01-05 21:00"))


def test_open_playbacks_count_as_streams_until_the_given_time_or_their_last_event() -> None:
    db = projection_of(
        [
            record("a", at("2026-01-05 20:00"), at("2026-01-05 21:00")),
            record("open", at("2026-01-05 20:30"), None, last_event_at=at("2026-01-05 20:45")),
        ]
    )
    by_last_event = stats.concurrent_streams(db).rows()
    assert by_last_event[-2:] == [(at("2026-01-05 20:45"), 1), (at("2026-01-05 21:00"), 0)]
    until = at("2026-01-05 23:00")
    by_until = stats.concurrent_streams(db, until=until).rows()
    assert by_until[-2:] == [(at("2026-01-05 21:00"), 1), (until, 0)]
    # ...but an open playback has no watch time, so it is no play
    assert stats.plays(db)["play_key"].to_list() == ["a"]
    assert stats.by_day(db, metric="watch_time").rows() == [(date(2026, 1, 5), 3600)]


def test_bandwidth_buckets_follow_berlin_clocks_across_both_daylight_saving_changes() -> None:
    db = projection_of(
        [  # 1 Mbps from local midnight to midnight, on the 23-hour and the 25-hour day
            record("spring", at("2026-03-28 23:00"), at("2026-03-29 22:00"), stream_bitrate=1000),
            record("autumn", at("2026-10-24 22:00"), at("2026-10-25 23:00"), stream_bitrate=1000),
        ]
    )
    days = stats.bandwidth(db, by="day", tz=BERLIN)
    assert days.filter(pl.col("kbps") > 0).rows() == [
        (date(2026, 3, 29), 1000.0, 1000 * 23 * 3600 / 8e6),
        (date(2026, 10, 25), 1000.0, 1000 * 25 * 3600 / 8e6),
    ]
    assert days.height == (date(2026, 10, 25) - date(2026, 3, 29)).days + 1  # zeros between
    hours = stats.bandwidth(db, tz=BERLIN).with_columns(day=pl.col("hour").dt.date())
    spring = hours.filter(pl.col("day") == date(2026, 3, 29))
    assert [h.hour for h in spring["hour"]] == [0, 1, *range(3, 24)]  # no 02:00
    assert set(spring["kbps"]) == {1000.0}
    autumn = hours.filter(pl.col("day") == date(2026, 10, 25))
    assert [h.hour for h in autumn["hour"]] == list(range(24))  # 02:00 once, two hours long
    assert set(autumn["kbps"]) == {1000.0}
    assert autumn.filter(pl.col("hour").dt.hour() == 2)["gigabytes"].item() == 0.9
    assert hours["gigabytes"].sum() == pytest.approx(days["gigabytes"].sum())


def test_peak_bandwidth_counts_a_stop_at_t_before_a_start_at_t() -> None:
    rows = [
        record("a", at("2026-01-05 20:00"), at("2026-01-05 21:00"), stream_bitrate=20000),
        record("b", at("2026-01-05 21:00"), at("2026-01-05 22:00"), stream_bitrate=15000),
    ]
    assert stats.max_concurrent_bandwidth(projection_of(rows)).row(0) == (
        20000,
        at("2026-01-05 20:00"),
        1,
    )
    late = record("c", at("2026-01-05 21:00"), at("2026-01-05 21:30"), stream_bitrate=15000)
    assert stats.max_concurrent_bandwidth(projection_of([*rows, late])).row(0) == (
        30000,
        at("2026-01-05 21:00"),
        2,
    )


def test_peak_bandwidth_in_the_repeated_autumn_hour_names_the_second_clock() -> None:
    rows = [  # 02:30 comes twice in Berlin; the peak is at the second one (CET)
        record("cest", at("2026-10-25 00:30"), at("2026-10-25 00:45"), stream_bitrate=1000),
        record("cet", at("2026-10-25 01:30"), at("2026-10-25 02:00"), stream_bitrate=4000),
    ]
    kbps, moment, streams = stats.max_concurrent_bandwidth(projection_of(rows), tz=BERLIN).row(0)
    assert (kbps, streams) == (4000, 1)
    assert (moment.hour, moment.minute, moment.fold) == (2, 30, 1)
    assert moment.astimezone(UTC) == at("2026-10-25 01:30")


def test_a_streams_bitrate_is_its_bandwidth_else_its_stream_bitrate_else_none() -> None:
    hour = (at("2026-01-05 20:00"), at("2026-01-05 21:00"))
    db = projection_of(
        [
            record("both", *hour, bandwidth=5000, stream_bitrate=9000),  # 5000
            record("zero", *hour, bandwidth=0, stream_bitrate=3000),  # 3000
            record("none", *hour),  # uses no bandwidth, and is no stream here
        ]
    )
    assert stats.bandwidth(db).rows() == [(at("2026-01-05 20:00"), 8000.0, 3.6)]
    assert stats.max_concurrent_bandwidth(db).row(0) == (8000, at("2026-01-05 20:00"), 2)


def test_bandwidth_of_nothing_is_empty_and_refuses_a_bad_bucket_or_until() -> None:
    db = projection_of([record("none", at("2026-01-05 20:00"), at("2026-01-05 21:00"))])
    assert stats.bandwidth(db).is_empty() and stats.bandwidth(db, by="day").is_empty()
    assert stats.max_concurrent_bandwidth(db).rows() == [(0, None, 0)]
    with pytest.raises(ValueError, match="by must be one of"):
        stats.bandwidth(db, by="week")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        stats.max_concurrent_bandwidth(db, until=datetime(2026, 1, 5))


def test_playbacks_under_120_seconds_are_left_out_unless_asked_for() -> None:
    t = at("2026-01-05 20:00")
    db = projection_of(
        [
            record("119", t, t + timedelta(minutes=10), paused=481),
            record("exactly-120", t, t + timedelta(seconds=120)),
            record("119.5-rounds-up", t, t + timedelta(seconds=119.5)),
            record("119.499", t, t + timedelta(seconds=119.499)),
        ]
    )
    kept = stats.plays(db)["play_key"].sort().to_list()
    assert kept == ["119.5-rounds-up", "exactly-120"]
    assert stats.by_day(db).rows() == [(date(2026, 1, 5), 2)]
    assert stats.by_day(db, min_seconds=0).rows() == [(date(2026, 1, 5), 4)]
    assert stats.by_day(db, metric="watch_time", min_seconds=0).rows() == [
        (date(2026, 1, 5), 119 + 120 + 120 + 119)
    ]


def test_a_short_playback_is_dropped_before_grouping() -> None:
    t = at("2026-01-05 10:00")
    db = projection_of(
        [
            record("x", t, t + timedelta(hours=1), percent=40),
            record("short", t + timedelta(hours=2), t + timedelta(hours=2, seconds=60), percent=30),
            record("z", t + timedelta(hours=3), t + timedelta(hours=4), percent=90),
        ]
    )
    assert stats.plays(db)[["play_key", "playbacks"]].rows() == [("x", 2)]
    # with the short one kept, it goes backwards (30 < 40): it opens a play that z resumes
    everything = stats.plays(db, min_seconds=0)
    assert everything[["play_key", "playbacks", "watch_time"]].rows() == [
        ("x", 1, 3600),
        ("short", 2, 3660),
    ]


def test_a_play_is_watched_from_85_percent_and_the_threshold_can_be_set() -> None:
    t = at("2026-01-05 10:00")
    hour = timedelta(hours=1)
    rows = [
        record(str(i), t + i * 2 * hour, t + i * 2 * hour + hour, percent=p, item=item)
        for i, (p, item) in enumerate([(84.99, "10"), (85, "11"), (100, "12"), (None, "15")])
    ]
    db = projection_of(rows)
    assert dict(zip(*stats.plays(db)[["play_key", "watched"]], strict=True)) == {
        "0": False,
        "1": True,
        "2": True,
        "3": False,
    }
    assert stats.completion(db).rows() == [("episode", 2, 2, 1.0), ("movie", 2, 0, 0.0)]
    assert stats.completion(db, watched_percent=90).rows() == [
        ("episode", 2, 1, 0.5),
        ("movie", 2, 0, 0.0),
    ]


def test_a_watched_playback_ends_its_play() -> None:
    t = at("2026-01-05 10:00")
    hour = timedelta(hours=1)
    # compared unrounded, as Tautulli compares the position with 85 % of the length
    for before, plays in [(84.79, 1), (84.99, 1), (85.0, 2), (85.01, 2)]:
        db = projection_of(
            [
                record("a", t, t + hour, percent=before),
                record("b", t + 2 * hour, t + 3 * hour, percent=100),
            ]
        )
        assert stats.plays(db).height == plays, before


def test_grouping_joins_resumed_playbacks_and_nothing_else() -> None:
    day = at("2026-01-05 00:00")

    def span(key: str, start: float, stop: float, percent: int | None, **kw: Any) -> dict:
        return record(
            key, day + timedelta(hours=start), day + timedelta(hours=stop), percent=percent, **kw
        )

    db = projection_of(
        [
            span("A", 10, 11, 40),
            span("B", 12, 12.5, 60),  # resumes A
            span("C", 13, 14, 90),  # resumes B
            span("D", 15, 16, 20),  # C was watched: a new play
            span("E", 15.5, 16.5, 50),  # starts before D stopped: a new play
            span("F", 17, 17 + 1 / 6, 10),  # went back from 50 %: a new play
            span("G", 18, 18.5, None),  # progress unknown: a new play
            span("H", 19, 19.5, 45, user="2"),  # another user: a new play
            span("I", 20, 21, 80, user=None),  # no user: never grouped
            span("J", 21, 22, 90, user=None),
        ]
    )
    grouped = stats.plays(db)
    assert grouped["play_key"].to_list() == ["A", "D", "E", "F", "G", "H", "I", "J"]
    first = grouped.row(0, named=True)
    assert first["playbacks"] == 3
    assert first["watch_time"] == 3600 + 1800 + 3600
    assert first["percent_complete"] == 90 and first["watched"]
    assert first["stopped_at"] == day + timedelta(hours=14)

    ungrouped = stats.plays(db, grouping=False)
    assert ungrouped.height == 10
    assert ungrouped["watch_time"].sum() == grouped["watch_time"].sum()
    assert stats.by_user(db).rows()[0] == ("plex-a", "1", "ann", 5)
    assert stats.by_user(db, grouping=False).rows()[0] == ("plex-a", "1", "ann", 7)
    # a grouped play's whole watch time falls in the hour its first playback started
    hours = dict(stats.by_hour_of_day(db, metric="watch_time").rows())
    assert hours[10] == 9000 and hours[12] == 0 and hours[13] == 0
    assert dict(stats.by_hour_of_day(db, metric="watch_time", grouping=False).rows())[12] == 1800


def test_grouping_boundaries_start_at_the_stop_and_equal_progress_resume() -> None:
    t = at("2026-01-05 10:00")
    hour = timedelta(hours=1)
    tiny = timedelta(microseconds=1)
    cases = [
        (t + hour, 40, 1),  # starts exactly at the stop, same progress: resumes
        (t + hour - tiny, 40, 2),  # overlaps the previous by 1 µs: a new play
        (t + hour, 39, 2),  # progress 1 % behind: a new play
    ]
    for start, percent, expected in cases:
        db = projection_of(
            [
                record("a", t, t + hour, percent=40),
                record("b", start, start + hour, percent=percent),
            ]
        )
        assert stats.plays(db).height == expected, (start, percent)
        assert stats.plays(db, grouping=False).height == 2


def test_stream_types_and_blank_dimensions_read_as_documented() -> None:
    t = at("2026-01-05 10:00")
    decisions = ["copy", "Direct Stream", "direct play", "DirectPlay", "transcode", "", None]
    db = projection_of(
        [
            record(str(i), t, t + timedelta(hours=1), transcode_decision=d, platform=" ")
            for i, d in enumerate(decisions)
        ]
    )
    assert stats.by_stream_type(db).rows() == [
        ("direct play", 2),
        ("direct stream", 2),
        ("unknown", 2),
        ("transcode", 1),
    ]
    assert stats.by_platform(db).rows() == [("unknown", 7)]


def test_unknown_metric_zone_or_naive_until_is_refused() -> None:
    db = projection_of([])
    with pytest.raises(ValueError, match="metric"):
        stats.by_day(db, metric="minutes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="IANA"):
        stats.by_hour_of_day(db, tz="Mars/Olympus")
    with pytest.raises(ValueError, match="timezone-aware"):
        stats.concurrent_streams(db, until=datetime(2026, 1, 5))


def test_an_empty_table_gives_empty_series_and_full_fixed_domains() -> None:
    db = projection_of([])
    assert stats.by_day(db).is_empty() and stats.by_month(db).is_empty()
    assert stats.by_hour_of_day(db)["plays"].to_list() == [0] * 24
    assert stats.by_day_of_week(db)["plays"].to_list() == [0] * 7
    assert stats.max_concurrent_streams(db).rows() == [(0, None)]
    assert stats.top_titles(db).is_empty()


# ---------------------------------------------------------------------------------------
# the simulator's feed, projected by the real pipeline, against its ground truth

SIMULATION = SimulationConfig(seed=5, users=8, days=6)


@pytest.fixture(scope="module")
def simulated(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Projection, pl.DataFrame]]:
    sim = simulate(SIMULATION)
    projection = Projection(Path(tmp_path_factory.mktemp("stats")) / "sim.duckdb")
    pipeline = Pipeline(projection, DedupIndex())
    feed = messages(sim.events)
    for first in range(0, len(feed), 500):
        pipeline.process(feed[first : first + 500])
    truth = pl.DataFrame(
        [
            {
                "server_id": t.server_id,
                "user_id": t.user_id,
                "media_type": t.media_type,
                "started_at": t.started_at,
                "stopped_at": t.stopped_at,
                "paused_seconds": t.paused_seconds,
            }
            for t in sim.truth
        ],
        schema_overrides={"started_at": TS, "stopped_at": TS},
    )
    yield projection, truth
    projection.close()


def truth_plays(truth: pl.DataFrame, min_seconds: int) -> pl.DataFrame:
    """Every true playback is a play (no grouping), watch time from its start/stop/pause."""
    return truth.with_columns(watch_time=expected_watch_seconds()).filter(
        pl.col("watch_time") >= min_seconds
    )


@pytest.mark.parametrize("min_seconds", [0, 120])
@pytest.mark.parametrize("metric", ["plays", "watch_time"])
def test_statistics_of_the_projected_simulation_match_its_ground_truth(
    simulated: tuple[Projection, pl.DataFrame], min_seconds: int, metric: str
) -> None:
    projection, truth = simulated
    plays = truth_plays(truth, min_seconds)
    rules = {"grouping": False, "min_seconds": min_seconds, "metric": metric}
    for tz in ["America/New_York", "Asia/Kolkata"]:
        assert_frame_equal(
            stats.by_day(projection, tz=tz, **rules),
            expected_buckets(plays, "day", metric, tz),
            check_dtypes=False,
        )
        assert_frame_equal(
            stats.by_hour_of_day(projection, tz=tz, **rules),
            expected_buckets(plays, "hour", metric, tz),
            check_dtypes=False,
        )
        assert_frame_equal(
            stats.by_day_of_week(projection, tz=tz, **rules),
            expected_buckets(plays, "weekday", metric, tz),
            check_dtypes=False,
        )
    by_user = stats.by_user(projection, **rules).drop("username")
    assert_frame_equal(
        by_user, expected_ranked(plays, ["server_id", "user_id"], metric), check_dtypes=False
    )
    for function, keys in [(stats.by_server, ["server_id"]), (stats.by_media_type, ["media_type"])]:
        assert_frame_equal(
            function(projection, **rules),
            expected_ranked(plays, keys, metric),
            check_dtypes=False,
        )


def test_peak_concurrency_of_the_projected_simulation_matches_its_ground_truth(
    simulated: tuple[Projection, pl.DataFrame],
) -> None:
    projection, truth = simulated
    expected = expected_concurrency(truth.with_columns(last_event_at=pl.col("stopped_at")), None)
    top = expected["streams"].max()
    assert top >= 2  # the simulated person streaming on two devices at once
    first = expected.filter(pl.col("streams") == top)["at"].min()
    assert stats.max_concurrent_streams(projection).row(0) == (top, first)
    assert_frame_equal(stats.concurrent_streams(projection), expected, check_dtypes=False)


def test_bandwidth_of_the_projected_simulation_matches_the_reference(
    simulated: tuple[Projection, pl.DataFrame],
) -> None:
    projection, _ = simulated
    raw = projection.con.sql("SELECT * FROM playback_events").pl()
    assert raw["stream_bitrate"].is_not_null().mean() > 0.5  # most sources report one
    for by, tz in [("hour", "America/New_York"), ("day", "Asia/Kolkata")]:
        assert_frame_equal(
            stats.bandwidth(projection, by=by, tz=tz),  # type: ignore[arg-type]
            expected_bandwidth(raw, by, tz),
            check_dtypes=False,
        )
    kbps, first, streams = expected_peak_bandwidth(raw, None)
    assert streams >= 2 and kbps > raw["stream_bitrate"].max()  # type: ignore[operator]
    assert stats.max_concurrent_bandwidth(projection).row(0) == (kbps, first, streams)


@PROPERTY
@given(rows=playback_rows(), rules=RULES, metric=METRICS, merged=st.booleans())
def test_by_person_counts_merged_accounts_as_one_person(
    rows: list[dict[str, Any]], rules: dict[str, Any], metric: str, merged: bool
) -> None:
    from ingestor.records import IdentityRecord

    db = projection_of(rows)
    plays = expected_plays(frame_of(rows), **rules)
    if merged:  # ann on both servers is one person
        ann = [("plex-a", "1"), ("jelly-b", "1")]
        db.apply_identity(
            1, IdentityRecord.make("merge", "Ann", ann, datetime(2026, 2, 1, tzinfo=UTC))
        )
        is_ann = pl.col("server_id").is_in(["plex-a", "jelly-b"]) & (pl.col("user_id") == "1")
        plays = plays.with_columns(person=pl.when(is_ann).then(pl.lit("Ann")).otherwise("person"))
    expected = (
        plays.group_by("person")
        .agg(
            pl.struct("server_id", "user_id").n_unique().alias("accounts"),
            pl.len().alias("plays"),
            pl.col("watch_time").sum().alias("watch_time"),
        )
        .sort([metric, "person"], descending=[True, False])
        .select("person", "accounts", metric)
    )
    actual = stats.by_person(db, metric=metric, **rules)
    assert_frame_equal(actual, expected, check_dtypes=False)
    assert stats.plays(db, **rules).group_by("person").len().height == expected.height
