"""A year "wrapped": the figures of a year in review, for one user or a whole server.

Every function takes a DuckDB connection holding ``playback_events`` (in a report, the
year's scope: :func:`workbench.db.scope` with the year's bounds and, for one user's page,
the user) and counts **plays** as :mod:`workbench.stats` does (resumed playbacks grouped,
playbacks under 120 s left out), their times as clocks in ``tz``.

Words
-----
binge
    Episodes of one show played by one user one after another: each play starts at most
    ``max_gap`` (default 30 minutes) after the previous play of that user stopped, and is
    of the same show (``grandparent_title``). Any other play in between (a movie, another
    show) ends the binge. Its length is the number of its plays; a binge has at least two.
busiest day
    The local calendar day with the most watch time (ties: the earlier day).
busiest hour
    The hour of the day (0-23, local) in which the most plays started (ties: the earlier).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl

from workbench import stats
from workbench.stats import Database

DEFAULT_MAX_GAP = timedelta(minutes=30)

# -------------------------------------------------------------------------------- binges


def binges(
    db: Database,
    *,
    tz: str = "UTC",
    max_gap: timedelta = DEFAULT_MAX_GAP,
) -> pl.DataFrame:
    """Every binge (see the module's words), longest first: ``server_id``, ``user_id``,
    ``username``, ``show``, ``episodes`` (plays in it), ``started_at`` (its first play's
    start), ``stopped_at`` (its last play's stop), ``watch_time`` (s). Ties: more watch
    time, then the earlier start.

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, user_id, rating_key, media_type, title, grandparent_title,"
    ...     " started_at",
    ...     ('a', 'u1', 'e1', 'episode', 'Pilot', 'Lost', '2026-01-05 20:00Z'),
    ...     ('b', 'u1', 'e2', 'episode', 'Day 2', 'Lost', '2026-01-05 20:50Z'),
    ...     ('c', 'u1', 'e3', 'episode', 'Day 3', 'Lost', '2026-01-05 21:40Z'),
    ...     ('d', 'u1', 'e4', 'episode', 'Day 4', 'Lost', '2026-01-06 20:00Z'),
    ... )
    >>> stop = "UPDATE playback_events SET stopped_at = started_at + INTERVAL 45 MINUTE"
    >>> _ = db.con.execute(stop)
    >>> binges(db).select("show", "episodes", "watch_time").rows()
    [('Lost', 3, 8100)]
    """
    plays = stats.plays(db, tz=tz)
    columns = ["server_id", "user_id", "username", "show", "episodes"]
    schema_times = plays.schema["started_at"]
    empty = pl.DataFrame(
        schema={
            **{name: pl.String for name in columns[:4]},
            "episodes": pl.Int64,
            "started_at": schema_times,
            "stopped_at": schema_times,
            "watch_time": pl.Int64,
        }
    )
    if plays.is_empty():
        return empty
    user = ["server_id", "user_id"]
    ordered = plays.sort([*user, "started_at", "play_key"], nulls_last=True)
    show = pl.when(pl.col("media_type") == "episode").then(pl.col("grandparent_title"))

    def before(expr: pl.Expr) -> pl.Expr:
        return expr.shift(1).over(user)

    continues = (
        pl.col("user_id").is_not_null()
        & show.is_not_null()
        & (show == before(show))
        & (pl.col("started_at") >= before(pl.col("stopped_at")))
        & (pl.col("started_at") - before(pl.col("stopped_at")) <= max_gap)
    ).fill_null(False)
    runs = (
        ordered.with_columns(show.alias("show"), continues.alias("_continues"))
        .with_columns((~pl.col("_continues")).cast(pl.Int64).cum_sum().over(user).alias("_run"))
        .group_by([*user, "_run"], maintain_order=True)
        .agg(
            pl.col("username").last(),
            pl.col("show").first(),
            pl.len().cast(pl.Int64).alias("episodes"),
            pl.col("started_at").first(),
            pl.col("stopped_at").last(),
            pl.col("watch_time").sum().cast(pl.Int64),
        )
        .filter(pl.col("show").is_not_null() & (pl.col("episodes") >= 2))
    )
    return runs.sort(
        ["episodes", "watch_time", "started_at", "server_id", "user_id"],
        descending=[True, True, False, False, False],
        nulls_last=True,
    ).select(empty.columns)


# -------------------------------------------------------------------------------- a year


def months(db: Database, *, year: int, tz: str = "UTC") -> pl.DataFrame:
    """The twelve months of ``year`` (local): ``month`` (the 1st, Date), ``plays``,
    ``watch_time`` (s); months without a play are 0.

    Examples
    --------
    >>> from ingestor.projection import Projection
    >>> db = Projection(":memory:")
    >>> _ = db.con.execute(
    ...     "INSERT INTO playback_events (correlation_key, started_at, stopped_at) VALUES "
    ...     "('a', '2026-02-28 23:30Z', '2026-03-01 00:30Z')"
    ... )
    >>> frame = months(db, year=2026, tz="Europe/Berlin")  # 00:30 on 1 March in Berlin
    >>> frame.height, frame.filter(pl.col("plays") > 0).rows()
    (12, [(datetime.date(2026, 3, 1), 1, 3600)])
    """
    domain = pl.DataFrame({"month": [date(year, m, 1) for m in range(1, 13)]})
    counted = stats.by_month(db, tz=tz).join(
        stats.by_month(db, metric="watch_time", tz=tz), on="month"
    )
    return (
        domain.join(counted, on="month", how="left")
        .with_columns(pl.col("plays", "watch_time").fill_null(0).cast(pl.Int64))
        .select("month", "plays", "watch_time")
    )


@dataclass(frozen=True)
class Play:
    """One play, as a year's first or last."""

    started_at: datetime
    username: str | None
    title: str | None
    show: str | None
    platform: str


@dataclass(frozen=True)
class Binge:
    """A user's longest run of one show's episodes."""

    username: str | None
    show: str
    episodes: int
    started_at: datetime
    watch_time: int


@dataclass(frozen=True)
class Year:
    """The headline figures of a wrapped page (see :func:`year`)."""

    plays: int
    watch_time: int
    titles: int
    users: int
    busiest_day: date | None
    busiest_day_watch_time: int
    busiest_hour: int | None
    busiest_hour_plays: int
    first_play: Play | None
    last_play: Play | None
    longest_binge: Binge | None


def _play(row: dict[str, Any]) -> Play:
    return Play(
        started_at=row["started_at"],
        username=row["username"],
        title=row["title"],
        show=row["grandparent_title"] or None,
        platform=row["platform"],
    )


def year(db: Database, *, tz: str = "UTC", max_gap: timedelta = DEFAULT_MAX_GAP) -> Year:
    """The figures of a year in review over ``db`` (already scoped to the year, and to a
    user for one user's page): plays, watch time (s), titles (shows count once), accounts,
    the busiest day and hour (see the module's words), the first and the last play, and the
    longest binge.

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, user_id, username, rating_key, media_type, title, grandparent_title,"
    ...     " started_at",
    ...     ('a', 'u1', 'ann', 'e1', 'episode', 'Pilot', 'Lost', '2026-01-05 20:00Z'),
    ...     ('b', 'u1', 'ann', 'e2', 'episode', 'Day 2', 'Lost', '2026-01-05 21:00Z'),
    ...     ('c', 'u2', 'bob', 'm1', 'movie', 'Heat', None, '2026-03-01 08:00Z'),
    ... )
    >>> stop = "UPDATE playback_events SET stopped_at = started_at + INTERVAL 50 MINUTE"
    >>> _ = db.con.execute(stop)
    >>> y = year(db)
    >>> y.plays, y.watch_time, y.titles, y.users, y.busiest_day, y.busiest_hour
    (3, 9000, 2, 2, datetime.date(2026, 1, 5), 8)
    >>> y.first_play.title, y.last_play.title, y.longest_binge.episodes
    ('Pilot', 'Heat', 2)
    """
    plays = stats.plays(db, tz=tz)
    if plays.is_empty():
        return Year(0, 0, 0, 0, None, 0, None, 0, None, None, None)
    days = stats.by_day(db, metric="watch_time", tz=tz).sort(
        ["watch_time", "day"], descending=[True, False]
    )
    hours = stats.by_hour_of_day(db, tz=tz).sort(["plays", "hour"], descending=[True, False])
    ordered = plays.sort("started_at", "play_key")
    longest = binges(db, tz=tz, max_gap=max_gap)
    binge = None
    if not longest.is_empty():
        top = longest.row(0, named=True)
        binge = Binge(
            top["username"], top["show"], top["episodes"], top["started_at"], top["watch_time"]
        )
    return Year(
        plays=plays.height,
        watch_time=int(plays["watch_time"].sum()),
        titles=plays["title_key"].n_unique(),
        users=plays.select("server_id", "user_id").n_unique(),
        busiest_day=days["day"][0],
        busiest_day_watch_time=int(days["watch_time"][0]),
        busiest_hour=int(hours["hour"][0]),
        busiest_hour_plays=int(hours["plays"][0]),
        first_play=_play(ordered.row(0, named=True)),
        last_play=_play(ordered.row(-1, named=True)),
        longest_binge=binge,
    )


def users(db: Database, *, tz: str = "UTC", max_gap: timedelta = DEFAULT_MAX_GAP) -> pl.DataFrame:
    """Each account's year, most watched first: ``server_id``, ``user_id``, ``username``,
    ``plays``, ``watch_time`` (s), ``top_title`` (their most played title, shows rolled up;
    ties by watch time, then name), ``busiest_day`` (their day with the most watch time),
    ``binge_show`` and ``binge_episodes`` (their longest binge; null and 0 without one).

    Examples
    --------
    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, server_id, user_id, username, rating_key, media_type, title,"
    ...     " grandparent_title, started_at",
    ...     ('a', 's', 'u1', 'ann', 'e1', 'episode', 'Pilot', 'Lost', '2026-01-05 20:00Z'),
    ...     ('b', 's', 'u1', 'ann', 'e2', 'episode', 'Day 2', 'Lost', '2026-01-05 21:00Z'),
    ...     ('c', 's', 'u2', 'bob', 'm1', 'movie', 'Heat', None, '2026-03-01 08:00Z'),
    ... )
    >>> stop = "UPDATE playback_events SET stopped_at = started_at + INTERVAL 50 MINUTE"
    >>> _ = db.con.execute(stop)
    >>> users(db).select("username", "plays", "top_title", "binge_episodes").rows()
    [('ann', 2, 'Lost', 2), ('bob', 1, 'Heat', 0)]
    """
    plays = stats.plays(db, tz=tz)
    key = ["server_id", "user_id"]
    schema = {
        "server_id": pl.String,
        "user_id": pl.String,
        "username": pl.String,
        "plays": pl.Int64,
        "watch_time": pl.Int64,
        "top_title": pl.String,
        "busiest_day": pl.Date,
        "binge_show": pl.String,
        "binge_episodes": pl.Int64,
    }
    if plays.is_empty():
        return pl.DataFrame(schema=schema)
    totals = plays.group_by(key).agg(
        pl.col("username").sort_by("started_at").last(),
        pl.len().cast(pl.Int64).alias("plays"),
        pl.col("watch_time").sum().cast(pl.Int64),
    )
    top = (
        plays.group_by([*key, "title_key"])
        .agg(pl.len().alias("n"), pl.col("watch_time").sum().alias("w"))
        .sort([*key, "n", "w", "title_key"], descending=[False, False, True, True, False])
        .group_by(key, maintain_order=True)
        .agg(pl.col("title_key").first().alias("top_title"))
    )
    busiest = (
        plays.group_by([*key, pl.col("started_at").dt.date().alias("day")])
        .agg(pl.col("watch_time").sum().alias("w"))
        .sort([*key, "w", "day"], descending=[False, False, True, False])
        .group_by(key, maintain_order=True)
        .agg(pl.col("day").first().alias("busiest_day"))
    )
    longest = (
        binges(db, tz=tz, max_gap=max_gap)
        .group_by(key, maintain_order=True)
        .agg(pl.col("show").first().alias("binge_show"), pl.col("episodes").first())
        .rename({"episodes": "binge_episodes"})
    )
    joined = (
        totals.join(top, on=key, how="left", nulls_equal=True)
        .join(busiest, on=key, how="left", nulls_equal=True)
        .join(longest, on=key, how="left", nulls_equal=True)
        .with_columns(pl.col("binge_episodes").fill_null(0))
    )
    return joined.sort(
        ["watch_time", "username", "server_id", "user_id"],
        descending=[True, False, False, False],
        nulls_last=True,
    ).select(pl.col(name).cast(dtype) for name, dtype in schema.items())


__all__ = ["DEFAULT_MAX_GAP", "Binge", "Play", "Year", "binges", "months", "users", "year"]
