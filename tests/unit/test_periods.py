"""The headline figures of a period and the change against the period before it equal the
same figures computed with plain polars over the raw playback rows (the references of
``test_stats``: no DuckDB, nothing from ``workbench.stats``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_stats import (
    PROPERTY,
    ZONES,
    expected_concurrency,
    expected_plays,
    frame_of,
    playback_rows,
    projection_of,
    record,
)
from workbench import stats


def expected_totals(raw: pl.DataFrame, first: date, last: date, tz: str) -> dict[str, int]:
    """Plays, watch time, accounts and peak streams of the playbacks whose start fell on a
    local day from ``first`` to ``last`` in ``tz``."""
    zone = ZoneInfo(tz)
    since = datetime.combine(first, time(), zone).astimezone(UTC)
    before = datetime.combine(last + timedelta(days=1), time(), zone).astimezone(UTC)
    kept = raw.filter((pl.col("started_at") >= since) & (pl.col("started_at") < before))
    plays = expected_plays(kept)
    streams = expected_concurrency(kept, None)
    return {
        "plays": plays.height,
        "watch_time": int(plays["watch_time"].sum()),
        "users": plays.select("server_id", "user_id").n_unique(),
        "peak_streams": int(streams["streams"].max() or 0),  # type: ignore[arg-type]
    }


def expected_change(current: int, previous: int) -> float | None:
    return None if previous == 0 else current / previous - 1


@PROPERTY
@given(
    rows=playback_rows(),
    tz=st.sampled_from(ZONES),
    offset=st.integers(-2, 2),
    days=st.integers(1, 3),
)
def test_period_figures_and_changes_equal_a_plain_polars_computation_of_both_periods(
    rows: list[dict[str, Any]], tz: str, offset: int, days: int
) -> None:
    # a period around the drawn playbacks (their first local day, moved by offset)
    first = rows[0]["started_at"].astimezone(ZoneInfo(tz)).date() if rows else date(2026, 1, 5)
    start = first + timedelta(days=offset)
    end = start + timedelta(days=days - 1)
    raw = frame_of(rows)
    actual = stats.compare_periods(projection_of(rows), start=start, end=end, tz=tz)

    current = expected_totals(raw, start, end, tz)
    previous = expected_totals(raw, start - timedelta(days=days), start - timedelta(days=1), tz)
    assert actual["measure"].to_list() == ["plays", "watch_time", "users", "peak_streams"]
    for measure, now, before, change in actual.rows():
        assert (now, before) == (current[measure], previous[measure]), measure
        wanted = expected_change(now, before)
        assert change == pytest.approx(wanted) if wanted is not None else change is None


def test_a_week_is_compared_with_the_seven_local_days_before_it() -> None:
    at = datetime(2026, 1, 11, 23, 30, tzinfo=UTC)  # Monday 00:30 in Berlin: the new week
    rows = [
        record(
            "a", datetime(2026, 1, 5, 20, 0, tzinfo=UTC), datetime(2026, 1, 5, 21, 0, tzinfo=UTC)
        ),
        record("b", at, at + timedelta(hours=2), user="2", item="11"),
        record("c", at, at + timedelta(hours=1), item="12"),
    ]
    frame = stats.compare_periods(
        projection_of(rows), start=date(2026, 1, 12), end=date(2026, 1, 18), tz="Europe/Berlin"
    )
    assert frame.rows() == [
        ("plays", 2, 1, 1.0),
        ("watch_time", 3 * 3600, 3600, 2.0),
        ("users", 2, 1, 1.0),
        ("peak_streams", 2, 1, 1.0),
    ]
    # in UTC the two late plays still belong to Sunday: the week before
    utc = stats.compare_periods(
        projection_of(rows), start=date(2026, 1, 12), end=date(2026, 1, 18), tz="UTC"
    )
    assert utc["current"].to_list() == [0, 0, 0, 0]
    assert utc["change"].to_list() == [-1.0, -1.0, -1.0, -1.0]


def test_nothing_before_gives_no_percentage_and_a_reversed_period_is_refused() -> None:
    start = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
    db = projection_of([record("a", start, start + timedelta(hours=1))])
    frame = stats.compare_periods(db, start=date(2026, 1, 5), end=date(2026, 1, 5))
    assert frame["previous"].to_list() == [0, 0, 0, 0]
    assert frame["change"].to_list() == [None, None, None, None]
    with pytest.raises(ValueError, match="before it starts"):
        stats.compare_periods(db, start=date(2026, 1, 5), end=date(2026, 1, 4))
    with pytest.raises(ValueError, match="timezone-aware"):
        stats.period_totals(db, since=datetime(2026, 1, 5), before=start)
