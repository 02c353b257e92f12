from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

import duckdb
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestor.dedup import DedupIndex
from ingestor.errors import IngestorError, TransientError
from ingestor.messages import Message
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.projection.store import PROJECTION_SCHEMA_VERSION, SELECT_SCHEMA_VERSION
from ingestor.simulation import TRUTH_SQL, SimulationConfig, simulate, truth_keys
from tests.factory import T0, event, messages, plex_playback, tautulli_summary

PLAYBACK_COLUMNS = "* EXCLUDE (last_seq, event_count)"


def pipeline_at(path: Path, **kwargs) -> Pipeline:
    return Pipeline(Projection(path, **kwargs), DedupIndex())


def rows(p: Pipeline, sql: str) -> list[tuple]:
    return p.projection.con.execute(sql).fetchall()


def one_playback(p: Pipeline) -> dict:
    cur = p.projection.con.execute("SELECT * FROM playback_events")
    names = [d[0] for d in cur.description]
    (row,) = cur.fetchall()
    return dict(zip(names, row, strict=True))


def test_lifecycle_events_fold_into_one_playback(tmp_path: Path) -> None:
    p = pipeline_at(tmp_path / "a.duckdb")
    p.process(messages(plex_playback(pause_at=600, resume_at=900, stop_at=7200)))
    row = one_playback(p)
    assert row["started_at"] == T0
    assert row["stopped_at"] == T0 + timedelta(seconds=7200)
    assert row["paused_seconds"] == 300
    assert row["played_seconds"] == 7200 - 300
    assert row["state"] == "stopped"
    assert row["sources"] == ["plex"]
    assert row["event_count"] == 5


def test_a_summary_is_authoritative_for_durations_and_stream_details(tmp_path: Path) -> None:
    p = pipeline_at(tmp_path / "a.duckdb")
    lifecycle = plex_playback(pause_at=600, resume_at=900)
    lifecycle = [
        msgspec.structs.replace(e, player="Living Room", ip_address="203.0.113.5")
        for e in lifecycle
    ]
    summary = tautulli_summary(late=4, paused=420)
    p.process(messages([*lifecycle, summary]))
    row = one_playback(p)
    assert row["started_at"] == T0  # lifecycle wins the start time
    assert row["paused_seconds"] == 420  # the summary wins durations
    assert row["played_seconds"] == summary.play_duration
    assert row["transcode_decision"] == "transcode"  # and stream details
    assert row["player"] == "Living Room"  # never overwritten with an empty value
    assert row["ip_address"] == "203.0.113.5"
    assert row["sources"] == ["plex", "tautulli"]
    (audit,) = rows(
        p,
        "SELECT tier, action, event_id, kept_event_id, raw_payload IS NOT NULL "
        "FROM dedupe_audit_log",
    )
    assert audit == ("correlation", "link", summary.event_id, lifecycle[0].event_id, True)


def test_a_paused_playback_without_stop_is_paused(tmp_path: Path) -> None:
    p = pipeline_at(tmp_path / "a.duckdb")
    p.process(messages(plex_playback()[:2]))
    row = one_playback(p)
    assert (row["state"], row["stopped_at"], row["played_seconds"]) == ("paused", None, None)


def test_batch_failure_commits_nothing_and_a_retry_gives_the_same_result(tmp_path: Path) -> None:
    failures = [duckdb.IOException("disk I/O error")]

    def fault(_items) -> None:
        if failures:
            raise failures.pop()

    p = pipeline_at(tmp_path / "a.duckdb", fault=fault)
    batch = messages([*plex_playback(), tautulli_summary()])
    with pytest.raises(TransientError):
        p.process(batch)
    assert rows(p, "SELECT count(*) FROM media_events") == [(0,)]
    assert p.projection.checkpoint() == 0
    result = p.process(batch)  # the index forgot the failed attempt: nothing is a duplicate
    assert (result.result.accepted, result.result.linked) == (6, 1)
    assert p.projection.checkpoint() == 6


def test_replaying_committed_messages_changes_nothing(tmp_path: Path) -> None:
    p = pipeline_at(tmp_path / "a.duckdb")
    batch = messages([*plex_playback(), tautulli_summary()])
    p.process(batch)
    before = rows(p, f"SELECT {PLAYBACK_COLUMNS} FROM playback_events")
    again = p.process(messages([*plex_playback(), tautulli_summary()], first_seq=7)).result
    assert again.accepted == 0 and again.dropped == {"event_id": 6}
    assert rows(p, f"SELECT {PLAYBACK_COLUMNS} FROM playback_events") == before


def test_the_dedup_index_is_rebuilt_from_the_database_at_start(tmp_path: Path) -> None:
    path = tmp_path / "a.duckdb"
    p = pipeline_at(path)
    p.process(messages(plex_playback()))
    p.projection.close()
    restarted = pipeline_at(path)
    result = restarted.process(
        messages([plex_playback()[0], tautulli_summary()], first_seq=6)
    ).result
    assert result.dropped == {"event_id": 1} and result.linked == 1
    assert rows(restarted, "SELECT count(*) FROM playback_events") == [(1,)]


def test_cold_events_are_decided_against_the_database(tmp_path: Path) -> None:
    """A summary for a playback far older than the hot window still links, via DuckDB."""
    p = Pipeline(Projection(tmp_path / "a.duckdb"), DedupIndex(hot_window=3600))
    old = plex_playback(T0)
    p.process(messages(old))
    p.process(messages(plex_playback(T0 + timedelta(days=3)), first_seq=6))
    assert old[0].event_id not in p.index.event_ids  # evicted
    result = p.process(messages([tautulli_summary(T0), old[0]], first_seq=11)).result
    assert result.linked == 1 and result.dropped == {"event_id": 1}
    assert rows(p, "SELECT count(*) FROM playback_events") == [(2,)]


_FEED = simulate(SimulationConfig(seed=3, users=4, days=2))


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.integers(min_value=1, max_value=len(_FEED.events) - 1), max_size=12, unique=True)
)
def test_rows_do_not_depend_on_batch_boundaries(tmp_path_factory, cuts: list[int]) -> None:
    batch = messages(_FEED.events)
    whole = pipeline_at(tmp_path_factory.mktemp("whole") / "a.duckdb")
    whole.process(batch)
    split = pipeline_at(tmp_path_factory.mktemp("split") / "a.duckdb")
    bounds = [0, *sorted(cuts), len(batch)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            split.process(batch[lo:hi])
    for table, order in (
        ("playback_events", "correlation_key"),
        ("media_events", "seq"),
        ("dedupe_audit_log", "seq"),
    ):
        sql = f"SELECT * FROM {table} ORDER BY {order}"
        assert rows(split, sql) == rows(whole, sql), table


def test_the_simulated_feed_projects_to_its_ground_truth(tmp_path: Path) -> None:
    sim = simulate(SimulationConfig(seed=11, users=8, days=3))
    p = pipeline_at(tmp_path / "a.duckdb")
    for lo in range(0, len(sim.events), 500):
        p.process(messages(sim.events[lo : lo + 500], first_seq=lo + 1))
    got = set(rows(p, TRUTH_SQL))
    assert got == truth_keys(sim.truth)
    counts = p.projection.counts()
    assert counts["dropped_event_id"] == sim.expected.dropped_event_id
    assert counts["dropped_session_key"] == sim.expected.dropped_session_key
    assert counts["linked"] == sim.expected.linked


def test_an_unrelated_event_type_from_a_new_source_opens_a_playback(tmp_path: Path) -> None:
    p = pipeline_at(tmp_path / "a.duckdb")
    p.process(messages([event("emby", "progress", T0, "e1", started_at=T0, position_ms=5000)]))
    assert one_playback(p)["state"] == "playing"


def test_a_file_of_the_first_tables_version_keeps_exact_completion_after_opening(
    tmp_path: Path,
) -> None:
    """Files written before completion became exact store it as INTEGER: opening one
    migrates the column, so a new 84.79 % is not stored as 85 (and counted watched)."""
    path = tmp_path / "old.duckdb"
    projection = Projection(path)
    # the tables as version 1 made them
    projection.con.execute("ALTER TABLE playback_events ALTER percent_complete TYPE INTEGER")
    projection.con.execute("ALTER TABLE playback_events DROP COLUMN stale_at")
    projection.con.execute("ALTER TABLE playback_events DROP COLUMN library_id")
    projection.con.execute("ALTER TABLE playback_events DROP COLUMN library_name")
    projection.con.execute("UPDATE projection_meta SET value = '1' WHERE name = 'schema_version'")
    projection.close()
    projection = Projection(path)
    stop = event("plex", "stop", T0, "s", started_at=T0, percent_complete=84.79)
    Pipeline(projection, DedupIndex()).process(messages([stop]))
    rows = projection.con.execute(
        "SELECT percent_complete, (SELECT value FROM projection_meta"
        " WHERE name = 'schema_version') FROM playback_events"
    ).fetchall()
    assert rows == [(84.79, str(PROJECTION_SCHEMA_VERSION))]
    projection.close()


def test_a_file_of_tables_version_2_gains_the_later_columns_after_opening(
    tmp_path: Path,
) -> None:
    """Versions 3 and 4 append stale_at, library_id and library_name: the rows already there
    read NULL (unknown), and new playbacks land in the right columns (rows are inserted by
    position)."""
    path = tmp_path / "v2.duckdb"
    projection = Projection(path)
    projection.con.execute("ALTER TABLE playback_events DROP COLUMN stale_at")
    projection.con.execute("ALTER TABLE playback_events DROP COLUMN library_id")
    projection.con.execute("ALTER TABLE playback_events DROP COLUMN library_name")
    projection.con.execute("UPDATE projection_meta SET value = '2' WHERE name = 'schema_version'")
    projection.con.execute(
        "INSERT INTO playback_events (correlation_key, title) VALUES ('old', 'Heat')"
    )
    projection.close()
    projection = Projection(path)
    play = event("plex", "play", T0, "s", started_at=T0, library_id="1", library_name="Movies")
    Pipeline(projection, DedupIndex()).process(messages([play]))
    rows = projection.con.execute(
        "SELECT title, library_id, library_name, state FROM playback_events ORDER BY first_seq"
    ).fetchall()
    assert rows == [("Heat", "1", "Movies", "playing"), ("Heat", None, None, None)]
    assert projection.con.execute(SELECT_SCHEMA_VERSION).fetchall() == [
        (str(PROJECTION_SCHEMA_VERSION),)
    ]
    fresh = Projection(tmp_path / "fresh.duckdb")
    columns = "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ?"
    assert (
        projection.con.execute(columns, ["playback_events"]).fetchall()
        == fresh.con.execute(columns, ["playback_events"]).fetchall()
    )
    projection.close()
    fresh.close()


def test_an_archived_v1_log_replays_to_the_same_playbacks_plus_unknown_libraries(
    tmp_path: Path,
) -> None:
    """tests/unit/data/v1_log.jsonl is simulate(seed=5, users=3, days=1) as encode_event
    wrote it before libraries existed; v1_log_playbacks.json its playback_events as that
    code projected them. Replayed now: the same rows, and NULL libraries."""
    data = Path(__file__).parent / "data"
    lines = (data / "v1_log.jsonl").read_bytes().splitlines()
    before = msgspec.json.decode((data / "v1_log_playbacks.json").read_bytes())
    p = pipeline_at(tmp_path / "replay.duckdb")
    p.process([Message(i + 1, T0, line) for i, line in enumerate(lines)])
    cur = p.projection.con.execute(
        "SELECT * EXCLUDE (sources), list_sort(sources) AS sources FROM playback_events "
        "ORDER BY correlation_key"
    )
    names = [d[0] for d in cur.description]
    found = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    now = msgspec.json.decode(msgspec.json.encode(found))
    assert len(now) == len(before) == 13
    for row in now:
        assert row.pop("library_id") is None and row.pop("library_name") is None
        # stale_at came later too: set while a playback is open (none here), NULL once stopped
        assert row.pop("stale_at") is None and row["state"] == "stopped"
    assert now == before


def test_a_file_written_by_a_later_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "new.duckdb"
    projection = Projection(path)
    projection.con.execute("UPDATE projection_meta SET value = '99' WHERE name = 'schema_version'")
    projection.close()
    with pytest.raises(IngestorError, match=r"later version.*ingestor replay"):
        Projection(path)
    version = "SELECT value FROM projection_meta WHERE name = 'schema_version'"
    assert duckdb.connect(str(path)).execute(version).fetchall() == [("99",)]
