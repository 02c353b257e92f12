"""The figures of a year in review (``workbench.wrapped``) equal the same figures computed
independently: a Python loop over the plain-polars plays of ``test_stats`` for binges, polars
group-bys for the rest."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_stats import (
    PROPERTY,
    ZONES,
    expected_plays,
    frame_of,
    playback_rows,
    projection_of,
    record,
)
from workbench import wrapped

GAP = timedelta(minutes=30)


def expected_binges(plays: pl.DataFrame, max_gap: timedelta) -> list[tuple[Any, ...]]:
    """(user_id, show, episodes, watch_time) of every run of two or more plays of one show's
    episodes, each starting within ``max_gap`` after the user's previous play stopped."""
    found: list[tuple[Any, ...]] = []
    for (_, user), group in plays.sort("started_at", "play_key").group_by(
        "server_id", "user_id", maintain_order=True
    ):
        run: list[dict[str, Any]] = []
        for play in group.iter_rows(named=True):
            show = play["grandparent_title"] if play["media_type"] == "episode" else None
            last = run[-1] if run else None
            if (
                last is not None
                and user is not None
                and show is not None
                and show == last["show"]
                and last["stopped_at"] <= play["started_at"] <= last["stopped_at"] + max_gap
            ):
                run.append({**play, "show": show})
                continue
            if len(run) >= 2 and run[0]["show"] is not None:
                found.append((run[0]["user_id"], run[0]["show"], len(run), run))
            run = [{**play, "show": show}]
        if len(run) >= 2 and run[0]["show"] is not None:
            found.append((run[0]["user_id"], run[0]["show"], len(run), run))
    return sorted(
        (user, show, n, sum(p["watch_time"] for p in run)) for user, show, n, run in found
    )


@PROPERTY
@given(rows=playback_rows(), tz=st.sampled_from(ZONES))
def test_binges_equal_a_loop_over_the_plays(rows: list[dict[str, Any]], tz: str) -> None:
    for row in rows:  # the drawn items' episodes are all of one show, "Lost"
        row["grandparent_title"] = row["grandparent_title"] or None
    actual = wrapped.binges(projection_of(rows), tz=tz)
    got = sorted(actual.select("user_id", "show", "episodes", "watch_time").rows())
    assert got == expected_binges(expected_plays(frame_of(rows)), GAP)
    assert actual["episodes"].to_list() == sorted(actual["episodes"].to_list(), reverse=True)


@PROPERTY
@given(rows=playback_rows(), tz=st.sampled_from(ZONES))
def test_the_year_figures_equal_polars_group_bys(rows: list[dict[str, Any]], tz: str) -> None:
    db = projection_of(rows)
    plays = expected_plays(frame_of(rows)).with_columns(
        pl.col("started_at", "stopped_at").dt.convert_time_zone(tz)
    )
    year = wrapped.year(db, tz=tz)
    assert year.plays == plays.height
    assert year.watch_time == (int(plays["watch_time"].sum()) if plays.height else 0)
    if plays.is_empty():
        assert year.busiest_day is None and year.first_play is None
        return
    assert year.users == plays.select("server_id", "user_id").n_unique()
    days = (
        plays.group_by(pl.col("started_at").dt.date().alias("day"))
        .agg(pl.col("watch_time").sum())
        .sort(["watch_time", "day"], descending=[True, False])
    )
    assert (year.busiest_day, year.busiest_day_watch_time) == days.row(0)
    hours = (
        plays.group_by(pl.col("started_at").dt.hour().cast(pl.Int64).alias("hour"))
        .agg(pl.len())
        .sort(["len", "hour"], descending=[True, False])
    )
    assert (year.busiest_hour, year.busiest_hour_plays) == hours.row(0)
    ordered = plays.sort("started_at", "play_key")
    assert year.first_play is not None and year.last_play is not None
    assert year.first_play.started_at == ordered["started_at"][0]
    assert year.last_play.started_at == ordered["started_at"][-1]
    binges = expected_binges(plays, GAP)
    if binges:
        assert year.longest_binge is not None
        assert year.longest_binge.episodes == max(b[2] for b in binges)
    else:
        assert year.longest_binge is None

    months = wrapped.months(db, year=ordered["started_at"][0].year, tz=tz)
    assert months.height == 12
    in_year = plays.filter(pl.col("started_at").dt.year() == ordered["started_at"][0].year)
    assert months["plays"].sum() == in_year.height
    assert months["watch_time"].sum() == in_year["watch_time"].sum()

    users = wrapped.users(db, tz=tz)
    assert sorted(users.select("user_id", "plays", "watch_time").rows(), key=str) == sorted(
        plays.group_by("server_id", "user_id")
        .agg(pl.len().cast(pl.Int64), pl.col("watch_time").sum())
        .select("user_id", "len", "watch_time")
        .rows(),
        key=str,
    )


def at(hour: int, minute: int = 0, day: int = 5) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


def test_a_movie_between_two_episodes_or_a_long_break_ends_a_binge() -> None:
    rows = [
        record("a", at(18), at(18, 45), item="11"),
        record("b", at(19), at(19, 45), item="12"),  # 15 min later: the binge goes on
        record("c", at(20), at(21, 30), item="10"),  # a movie ends it
        record("d", at(21, 40), at(22, 25), item="11"),
        record("e", at(23, 0), at(23, 45), item="12"),  # 35 min after: a new start
        record("f", at(20), at(20, 45), user="2", item="11"),
        record("g", at(21, 15), at(22), user="2", item="12"),  # exactly 30 min: goes on
    ]
    frame = wrapped.binges(projection_of(rows))
    assert frame.select("username", "show", "episodes").rows() == [
        ("ann", "Lost", 2),
        ("bob", "Lost", 2),
    ]
    assert frame["started_at"].to_list() == [at(18), at(20)]
    assert wrapped.binges(projection_of(rows), max_gap=timedelta(minutes=40))["episodes"].max() == 2
    users = wrapped.users(projection_of(rows))
    assert users.select("username", "binge_show", "binge_episodes", "busiest_day").rows() == [
        ("ann", "Lost", 2, date(2026, 1, 5)),
        ("bob", "Lost", 2, date(2026, 1, 5)),
    ]


def test_an_empty_year_has_no_highlights_and_twelve_empty_months() -> None:
    db = projection_of([])
    year = wrapped.year(db)
    assert (year.plays, year.first_play, year.longest_binge) == (0, None, None)
    assert wrapped.months(db, year=2026)["plays"].to_list() == [0] * 12
    assert wrapped.users(db).is_empty() and wrapped.binges(db).is_empty()
