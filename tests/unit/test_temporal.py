"""Temporal queries (workbench.temporal) on small hand-built projections: real DuckDB files
written by the ingestor's own pipeline, with chosen stream times."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pytest

from ingestor.dedup import DedupIndex
from ingestor.events import MediaEvent, encode_event
from ingestor.pipeline import Message, Pipeline
from ingestor.projection import Projection
from tests.factory import T0, event, plex_playback, tautulli_summary
from workbench.temporal import active_at, changes_between, playback_history, user_timeline


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def project(path: Path, reports: list[tuple[MediaEvent, datetime]]) -> Projection:
    """Feed ``(event, recorded_at)`` pairs, in this order, through the ingestor's pipeline."""
    pipeline = Pipeline(Projection(path), DedupIndex())
    batch = [
        Message(seq, recorded, encode_event(e), e.subject)
        for seq, (e, recorded) in enumerate(reports, start=1)
    ]
    pipeline.process(batch)
    return pipeline.projection


def recorded_on_time(
    events: list[MediaEvent], delay: float = 0.5
) -> list[tuple[MediaEvent, datetime]]:
    return [(e, e.occurred_at + timedelta(seconds=delay)) for e in events]


# ------------------------------------------------------------------------ active_at


@pytest.fixture
def paused_once(tmp_path: Path) -> Iterator[Projection]:
    """play at 0 s, pause at 600 s, resume at 900 s, scrobble, stop at 7200 s."""
    projection = project(
        tmp_path / "p.duckdb",
        recorded_on_time(plex_playback(pause_at=600, resume_at=900, stop_at=7200)),
    )
    yield projection
    projection.close()


@pytest.mark.parametrize(
    ("seconds", "state"),
    [(0, "playing"), (599.999, "playing"), (600, "paused"), (899, "paused"), (900, "playing")],
)
def test_a_pause_makes_the_playback_paused_until_its_resume(
    paused_once: Projection, seconds: float, state: str
) -> None:
    frame = active_at(paused_once, at(seconds))
    assert frame["state_at"].to_list() == [state]
    # the projection's own state is the final one, whatever the instant
    assert frame["state"].to_list() == ["stopped"]


def test_a_playback_is_active_from_its_start_until_just_before_its_stop(
    paused_once: Projection,
) -> None:
    assert active_at(paused_once, at(-0.001)).is_empty()
    assert active_at(paused_once, at(0)).height == 1
    assert active_at(paused_once, at(7199.999)).height == 1
    assert active_at(paused_once, at(7200)).is_empty()  # stopped at t: not active at t


def test_a_paused_playback_never_resumed_stays_paused(tmp_path: Path) -> None:
    projection = project(tmp_path / "p.duckdb", recorded_on_time(plex_playback()[:2]))
    frame = active_at(projection, at(86_400))
    assert frame.select("state_at", "state_event", "state_event_at").row(0) == (
        "paused",
        "pause",
        at(600),
    )


def test_the_instant_may_be_in_any_zone_but_must_be_aware(paused_once: Projection) -> None:
    plus_two = timezone(timedelta(hours=2))
    assert active_at(paused_once, at(700).astimezone(plus_two))["state_at"].item() == "paused"
    with pytest.raises(ValueError, match="instant must be timezone-aware"):
        active_at(paused_once, at(700).replace(tzinfo=None))


def test_a_plain_connection_in_another_zone_still_gets_utc_times(
    tmp_path: Path, paused_once: Projection
) -> None:
    paused_once.close()
    con = duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True)
    con.execute("SET TimeZone = 'America/New_York'")
    frame = active_at(con, at(700))
    assert frame.schema["started_at"] == pl.Datetime("us", "UTC")
    assert frame["started_at"].item() == T0
    assert con.execute("SELECT current_setting('TimeZone')").fetchall() == [("America/New_York",)]
    con.close()


# ------------------------------------------------------------------------ playback_history


def test_history_shows_every_report_of_a_playback_across_sources_with_its_audit(
    tmp_path: Path,
) -> None:
    lifecycle = plex_playback(pause_at=600, resume_at=900, stop_at=7200)
    summary = tautulli_summary(late=4, stop_at=7200)
    other = plex_playback(at(10_000), machine_id="shield")  # another playback: left out
    reports = [
        *recorded_on_time(lifecycle[:2]),
        (lifecycle[1], at(650)),  # the exact pause again: dropped (event_id)
        *recorded_on_time(lifecycle[2:]),
        *recorded_on_time([summary]),  # Tautulli's row of the same playback: linked
        *recorded_on_time(other),
    ]
    projection = project(tmp_path / "p.duckdb", reports)
    key = projection.con.execute(
        "SELECT correlation_key FROM playback_events WHERE machine_id = 'roku-livingroom'"
    ).fetchall()[0][0]

    history = playback_history(projection, key)
    assert history.select("source", "event_type", "dedup_action", "tier").rows() == [
        ("plex", "play", "open", None),
        ("plex", "pause", "fold", None),
        ("plex", "pause", "drop", "event_id"),
        ("plex", "resume", "fold", None),
        ("plex", "scrobble", "fold", None),
        ("plex", "stop", "fold", None),
        ("tautulli", "summary", "link", "correlation"),
    ]
    link = history.filter(pl.col("dedup_action") == "link").row(0, named=True)
    assert link["event_id"] == summary.event_id
    assert link["kept_event_id"] == lifecycle[0].event_id
    assert link["similarity_score"] == pytest.approx(0.6)  # starts 4 s apart of 10 s
    drop = history.filter(pl.col("dedup_action") == "drop").row(0, named=True)
    assert (drop["seq"], drop["recorded_at"], drop["kept_event_id"]) == (
        3,
        at(650),
        lifecycle[1].event_id,
    )
    assert history["position_ms"].to_list()[:2] == [0, 600_000]

    by_seq = playback_history(projection, key, clock="recorded")
    assert by_seq["seq"].to_list() == [1, 2, 3, 4, 5, 6, 7]
    assert playback_history(projection, "no such playback").is_empty()
    with pytest.raises(ValueError, match="clock"):
        playback_history(projection, key, clock="wall")  # type: ignore[arg-type]


def test_history_by_event_time_puts_a_late_report_where_it_happened(tmp_path: Path) -> None:
    lifecycle = plex_playback(pause_at=600, resume_at=900, stop_at=7200)
    # the pause webhook arrived last (recorded after the stop)
    reports = [(e, e.occurred_at) for e in lifecycle if e.event_type != "pause"]
    reports.append((lifecycle[1], at(7300)))
    projection = project(tmp_path / "p.duckdb", reports)
    key = projection.con.execute("SELECT correlation_key FROM playback_events").fetchall()[0][0]
    assert playback_history(projection, key)["event_type"].to_list() == [
        "play",
        "pause",
        "resume",
        "scrobble",
        "stop",
    ]
    assert playback_history(projection, key, clock="recorded")["event_type"].to_list() == [
        "play",
        "resume",
        "scrobble",
        "stop",
        "pause",
    ]


# ------------------------------------------------------------------------ user_timeline


@pytest.fixture
def two_users(tmp_path: Path) -> Iterator[Projection]:
    evening = plex_playback(at(3 * 3600), machine_id="shield", stop_at=3600)
    morning = plex_playback(at(0), stop_at=1800)
    someone_else = plex_playback(at(600), user_id="777", machine_id="phone")
    # the evening playback is published first: the timeline orders by event time
    reports = recorded_on_time([*evening, *someone_else, *reversed(morning)])
    projection = project(tmp_path / "p.duckdb", reports)
    yield projection
    projection.close()


def test_a_timeline_lists_one_users_playbacks_by_start_with_events_in_time_order(
    two_users: Projection,
) -> None:
    timeline = user_timeline(two_users, "8312457")
    assert timeline["started_at"].to_list() == [at(0), at(3 * 3600)]
    assert timeline["machine_id"].to_list() == ["roku-livingroom", "shield"]
    for row in timeline.iter_rows(named=True):
        kinds = [step["event_type"] for step in row["events"]]
        times = [step["occurred_at"] for step in row["events"]]
        assert kinds == ["play", "pause", "resume", "scrobble", "stop"]
        assert times == sorted(times)
    assert user_timeline(two_users, "777")["machine_id"].to_list() == ["phone"]
    assert user_timeline(two_users, "8312457", server_id="another server").is_empty()


def test_a_timeline_window_keeps_playbacks_active_in_it(two_users: Projection) -> None:
    def starts(start: datetime | None, end: datetime | None) -> list[datetime]:
        return user_timeline(two_users, "8312457", start, end)["started_at"].to_list()

    assert starts(at(1800), None) == [at(3 * 3600)]  # the morning one stopped at 1800 s
    assert starts(at(1799), None) == [at(0), at(3 * 3600)]
    assert starts(None, at(3 * 3600)) == [at(0), at(3 * 3600)]  # started exactly at end
    assert starts(None, at(3 * 3600 - 1)) == [at(0)]
    assert starts(at(2000), at(2100)) == []


# ------------------------------------------------------------------------ changes_between


@pytest.fixture
def late_summary(tmp_path: Path) -> Iterator[tuple[Projection, list[MediaEvent], MediaEvent]]:
    """A playback from 0 s to 7200 s whose Tautulli row the log recorded a day late, and a
    second playback starting at 8000 s."""
    first = plex_playback(pause_at=600, resume_at=900, stop_at=7200)
    summary = tautulli_summary(stop_at=7200)
    second = plex_playback(at(8000), machine_id="shield", stop_at=3600)
    reports = [
        *recorded_on_time(first),
        *recorded_on_time(second),
        (summary, at(86_400)),
    ]
    projection = project(tmp_path / "p.duckdb", reports)
    yield projection, first, summary
    projection.close()


def test_changes_on_the_recorded_clock_are_what_the_log_learned_in_the_window(
    late_summary,
) -> None:
    projection, _, summary = late_summary
    changes = changes_between(projection, at(700), at(9000))
    rows = changes.select(
        "started_at", "state_t1", "state_t2", "started", "stopped", "event_types"
    ).rows()
    assert rows == [
        (at(0), "paused", "stopped", False, True, ["resume", "scrobble", "stop"]),
        (at(8000), "absent", "playing", True, False, ["play", "pause", "resume"]),
    ]
    assert changes_between(projection, at(700), at(8700))["state_t2"].to_list() == [
        "stopped",
        "paused",
    ]
    # the late Tautulli row is a change of the day after, on this clock
    late = changes_between(projection, at(80_000), at(90_000))
    assert late.select("started_at", "events", "event_types", "event_sources").rows() == [
        (at(0), 1, ["summary"], ["tautulli"])
    ]
    assert late["first_seq"].item() == 11
    assert summary.occurred_at < at(80_000)


def test_changes_on_the_occurred_clock_are_what_happened_in_the_window(late_summary) -> None:
    projection, _, summary = late_summary
    window = (at(7000), summary.occurred_at)
    changes = changes_between(projection, *window, clock="occurred")
    assert changes.select("started_at", "state_t1", "state_t2", "events", "event_types").rows() == [
        (at(0), "playing", "stopped", 3, ["scrobble", "stop", "summary"]),
    ]
    # the second playback started after the summary happened
    assert changes_between(projection, at(7990), at(8010), clock="occurred")[
        "started_at"
    ].to_list() == [at(8000)]


def test_repeats_dropped_in_the_window_are_counted(tmp_path: Path) -> None:
    lifecycle = plex_playback()
    reports = [*recorded_on_time(lifecycle), (lifecycle[0], at(8000))]
    projection = project(tmp_path / "p.duckdb", reports)
    changes = changes_between(projection, at(7900), at(8100))
    assert changes.select("state_t1", "state_t2", "events", "dropped", "event_types").rows() == [
        ("stopped", "stopped", 0, 1, [])
    ]
    projection.close()


def test_a_window_must_run_forward_between_aware_instants(late_summary) -> None:
    projection, _, _ = late_summary
    with pytest.raises(ValueError, match="t1 must be before t2"):
        changes_between(projection, at(10), at(10))
    with pytest.raises(ValueError, match="t2 must be timezone-aware"):
        changes_between(projection, at(10), datetime(2026, 1, 6))
    with pytest.raises(TypeError, match="expected a Replay"):
        changes_between("analytics.duckdb", at(10), at(20))  # type: ignore[arg-type]


def test_events_arrive_with_their_playback_identity(tmp_path: Path) -> None:
    """A progress report of a new source opens a playback that is active and playing."""
    report = event("emby", "progress", at(60), "e1", started_at=T0, position_ms=60_000)
    projection = project(tmp_path / "p.duckdb", [(report, at(61))])
    frame = active_at(projection, at(120))
    assert frame.select("source", "state_at", "state_event").row(0) == (
        "emby",
        "playing",
        "progress",
    )
    assert frame.schema["state_event_at"] == pl.Datetime("us", "UTC")
    assert frame["state_event_at"].item() == datetime(2026, 1, 5, 20, 1, tzinfo=UTC)
    projection.close()
