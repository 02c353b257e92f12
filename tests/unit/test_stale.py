"""Playbacks whose stop never came count as stopped at their last report (the stale rule,
``ingestor/projection/fold.py``): judged by the projection's newest event time, the same
whatever the batches, in a replay and as of any instant."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from ingestor.config import Settings
from ingestor.dedup import DedupIndex
from ingestor.errors import ConfigError
from ingestor.events import MediaEvent, encode_event
from ingestor.messages import Message
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.projection.asof import open_as_of, resolve
from tests.factory import T0, event
from workbench import audit, stats

MINUTE = timedelta(minutes=1)
ROW = "SELECT state, started_at, stopped_at, played_seconds, stale_at FROM playback_events"


def plex_webhooks() -> list[MediaEvent]:
    """A Plex film of 2 h reported by webhooks (no progress reports): play, a 2-minute
    pause, resume; the stop never comes."""
    say = {"started_at": T0, "media_duration": 7200}
    return [
        event("plex", "play", T0, "p", position_ms=0, **say),
        event("plex", "pause", T0 + 10 * MINUTE, "p", position_ms=600_000, **say),
        event("plex", "resume", T0 + 12 * MINUTE, "p", position_ms=600_000, **say),
    ]


def jellyfin_reports() -> list[MediaEvent]:
    """A Jellyfin episode of 45 min with progress every 5 minutes, whose session then
    disappears at 20 min (no stop)."""
    say = {"started_at": T0, "media_duration": 2700, "machine_id": "tv"}
    return [
        event("jellyfin", "play", T0, "j", position_ms=0, **say),
        *[
            event("jellyfin", "progress", T0 + n * 5 * MINUTE, "j", position_ms=n * 300_000, **say)
            for n in range(1, 5)
        ],
    ]


def clock(at: datetime, n: int = 0) -> MediaEvent:
    """Another user's report at ``at``: it moves the projection's newest event time."""
    return event("emby", "progress", at, f"other-{n}", user_id="bob", machine_id="pc")


def project(path: Path, events: list[MediaEvent], cuts: tuple[int, ...] = ()) -> Projection:
    projection = Projection(path)
    pipeline = Pipeline(projection, DedupIndex())
    bounds = [0, *cuts, len(events)]
    for lo, hi in itertools.pairwise(bounds):
        batch = [
            Message(i + 1, e.occurred_at, encode_event(e))
            for i, e in enumerate(events[lo:hi], start=lo)
        ]
        if batch:
            pipeline.process(batch)
    return projection


def row(projection: Projection, key_source: str) -> tuple:
    (found,) = projection.con.execute(f"{ROW} WHERE source = ?", [key_source]).fetchall()
    return found


def test_a_plex_film_whose_stop_never_comes_is_stopped_at_its_last_report(tmp_path: Path) -> None:
    # webhooks report no progress: the film could still be playing until its end (resumed
    # at 10 min of 120 at T0+12m: ends at T0+2h02m), and STALE_AFTER (30 min) after that
    still_playing = project(tmp_path / "a.duckdb", [*plex_webhooks(), clock(T0 + 150 * MINUTE)])
    state, _, stopped, played, stale_at = row(still_playing, "plex")
    assert (state, stopped, played) == ("playing", None, None)
    assert stale_at == T0 + 152 * MINUTE
    stale = project(tmp_path / "b.duckdb", [*plex_webhooks(), clock(T0 + 153 * MINUTE)])
    # stopped at its last report (the resume): 12 minutes less the 2-minute pause
    assert row(stale, "plex") == ("stale", T0, T0 + 12 * MINUTE, 600, T0 + 152 * MINUTE)
    plays = stats.plays(stale, min_seconds=0).filter(pl.col("user_id") == "8312457")
    assert plays["watch_time"].to_list() == [600]


def test_a_jellyfin_session_that_disappears_is_stopped_at_its_last_report(
    tmp_path: Path,
) -> None:
    # last report at 20 min, at 20 min of 45: the episode would end at T0+45m; stale 30 min on
    projection = project(tmp_path / "j.duckdb", [*jellyfin_reports(), clock(T0 + 74 * MINUTE)])
    assert row(projection, "jellyfin")[0] == "playing"
    projection = project(tmp_path / "k.duckdb", [*jellyfin_reports(), clock(T0 + 76 * MINUTE)])
    assert row(projection, "jellyfin") == ("stale", T0, T0 + 20 * MINUTE, 1200, T0 + 75 * MINUTE)
    listed = audit.stale(projection)
    assert listed.select("source", "last_report_at", "played_seconds").rows() == [
        ("jellyfin", T0 + 20 * MINUTE, 1200)
    ]
    # the watch time no longer grows with the missing stop: 20 minutes, not 76
    assert stats.plays(projection, min_seconds=0)["watch_time"].sum() == 1200


def test_a_later_report_folds_a_stale_playback_again_and_reopens_nothing(tmp_path: Path) -> None:
    stale = [*jellyfin_reports(), clock(T0 + 80 * MINUTE)]
    say = {"started_at": T0, "media_duration": 2700, "machine_id": "tv"}
    # a report delayed in transit, from before the limit: still stale, at that report
    late = event("jellyfin", "progress", T0 + 22 * MINUTE, "j", position_ms=1_320_000, **say)
    projection = project(tmp_path / "a.duckdb", [*stale, late])
    assert row(projection, "jellyfin")[:4] == ("stale", T0, T0 + 22 * MINUTE, 1320)
    # the stop that finally comes stops it where it says
    stop = event(
        "jellyfin", "stop", T0 + 30 * MINUTE, "j", position_ms=1_800_000, stopped_at=None, **say
    )
    projection = project(tmp_path / "b.duckdb", [*stale, late, stop])
    assert row(projection, "jellyfin")[:4] == ("stopped", T0, T0 + 30 * MINUTE, 1800)
    # and one playback, never a second one
    assert projection.counts()["playbacks"] == 2


@pytest.mark.parametrize("cuts", [(), (1,), (3, 5), (2, 4, 6, 7), tuple(range(1, 9))])
def test_batch_boundaries_change_no_stale_row(tmp_path: Path, cuts: tuple[int, ...]) -> None:
    events = sorted(
        [*plex_webhooks(), *jellyfin_reports(), clock(T0 + 80 * MINUTE), clock(T0 + 160 * MINUTE)],
        key=lambda e: e.occurred_at,
    )
    whole = project(tmp_path / "whole.duckdb", events)
    cut = project(tmp_path / "cut.duckdb", events, cuts)
    every = "SELECT * FROM playback_events ORDER BY correlation_key"
    assert whole.con.execute(every).fetchall() == cut.con.execute(every).fetchall()
    assert [r[0] for r in whole.con.execute(f"{ROW} ORDER BY started_at, source").fetchall()] == [
        "stale",
        "stale",
        "playing",
    ]


@pytest.mark.parametrize("clock_name", ["recorded", "occurred"])
def test_as_of_an_instant_the_rule_reads_the_newest_event_time_known_then(
    tmp_path: Path, clock_name: str
) -> None:
    events = sorted(
        [*jellyfin_reports(), clock(T0 + 60 * MINUTE, 1), clock(T0 + 80 * MINUTE, 2)],
        key=lambda e: e.occurred_at,
    )
    now = project(tmp_path / "all.duckdb", events)
    assert row(now, "jellyfin")[0] == "stale"
    for until, prefix in [(T0 + 70 * MINUTE, len(events) - 1), (T0 + 90 * MINUTE, len(events))]:
        cursor, _ = open_as_of(now.con, resolve(now.con, until, clock_name))  # type: ignore[arg-type]
        try:
            got = cursor.execute(f"{ROW} ORDER BY source").fetchall()
        finally:
            cursor.close()
        expected = project(tmp_path / f"prefix-{prefix}.duckdb", events[:prefix])
        assert got == expected.con.execute(f"{ROW} ORDER BY source").fetchall()
    assert got[-1][0] == "stale"  # the last instant: past its limit


def test_stale_after_is_a_setting_the_projection_keeps_for_its_readers(tmp_path: Path) -> None:
    path = tmp_path / "p.duckdb"
    projection = Projection(path, stale_after=600)
    Pipeline(projection, DedupIndex()).process(
        [Message(i + 1, e.occurred_at, encode_event(e)) for i, e in enumerate(jellyfin_reports())]
    )
    # 10 minutes past the media's end (T0+45m)
    assert row(projection, "jellyfin")[4] == T0 + 55 * MINUTE
    projection.close()
    assert Projection(path, read_only=True).stale_after == 600
    assert Settings.from_env({"STALE_AFTER": "45m"}).stale_after == 2700
    with pytest.raises(ConfigError, match="STALE_AFTER"):
        Settings.from_env({"STALE_AFTER": "5s"})
