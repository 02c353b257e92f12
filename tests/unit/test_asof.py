"""The projection as of a point, read from the projection (ingestor.projection.asof), equals
the projection rebuilt from scratch: on the recorded clock, a pipeline fed the log's prefix;
on the occurred clock, a from-scratch projection of the whole log (today's decisions)
restricted to the events that happened by then, each playback folded from those.

Logs are simulated feeds with user verdicts (confirm, restore of links and of drops) put
anywhere after the entry they judge.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from ingestor.dedup import DedupIndex
from ingestor.events import encode_event
from ingestor.pipeline import Message, Pipeline
from ingestor.projection import Projection
from ingestor.projection.asof import AsOfPoint, open_as_of, resolve
from ingestor.records import AuditDecision, encode_record
from ingestor.simulation import SimulationConfig, simulate
from tests.factory import messages, plex_playback
from tests.support import occurred_slice
from workbench.stats import by_user
from workbench.temporal import active_at

TABLES = {
    "media_events": "seq",
    "playback_events": "correlation_key",
    "dedupe_audit_log": "audit_id",
    "detection_alerts": "alert_id",
}
DECIDED = datetime(2026, 2, 1, tzinfo=UTC)


def rows(con, where: str = "") -> dict[str, pl.DataFrame]:
    return {t: con.sql(f"SELECT * FROM {t} {where} ORDER BY {o}").pl() for t, o in TABLES.items()}


def assert_same(actual: dict[str, pl.DataFrame], expected: dict[str, pl.DataFrame], what: str):
    for table in TABLES:
        try:
            assert_frame_equal(actual[table], expected[table])
        except AssertionError as exc:
            raise AssertionError(f"{what}: {table} differs: {exc}") from None


def log_with_verdicts(path: Path, seed: int, users: int, days: int, verdicts: int):
    """A simulated log fed to a live pipeline in batches, with ``verdicts`` user decisions
    on the audit entries known when each is made; returns the messages and the projection."""
    rng = Random(seed)
    events = simulate(SimulationConfig(seed=seed, users=users, days=days)).events
    at = sorted(rng.sample(range(1, len(events)), min(verdicts, len(events) - 1)))
    projection = Projection(path)
    pipeline = Pipeline(projection, DedupIndex())
    messages: list[Message] = []
    recorded = datetime.min.replace(tzinfo=UTC)
    pending: list[Message] = []

    def flush() -> None:
        if pending:
            pipeline.process(pending)
            pending.clear()

    for n, event in enumerate(events):
        recorded = max(recorded, event.occurred_at + timedelta(seconds=rng.choice((0, 3, 900))))
        message = Message(len(messages) + 1, recorded, encode_event(event), event.subject)
        messages.append(message)
        pending.append(message)
        if len(pending) >= rng.choice((1, 7, 50)):
            flush()
        while at and at[0] == n:
            at.pop(0)
            flush()
            entries = projection.con.execute(
                "SELECT audit_id, tier FROM dedupe_audit_log ORDER BY seq"
            ).fetchall()
            if not entries:
                continue
            audit_id, tier = rng.choice(entries)
            action = "confirm" if tier == "event_id" or rng.random() < 0.3 else "restore"
            decision = AuditDecision.make(audit_id, action, DECIDED, by="ana")
            verdict = Message(
                len(messages) + 1, recorded, encode_record(decision), decision.subject
            )
            messages.append(verdict)
            pending.append(verdict)
    flush()
    return messages, projection


def prefix_projection(path: Path, messages: list[Message], known: int, batch: int):
    projection = Projection(path)
    pipeline = Pipeline(projection, DedupIndex())
    prefix = [m for m in messages if m.seq <= known]
    for lo in range(0, len(prefix), batch):
        pipeline.process(prefix[lo : lo + batch])
    return projection


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    users=st.integers(1, 3),
    days=st.integers(1, 2),
    verdicts=st.integers(0, 6),
    picks=st.lists(st.integers(0, 10_000), min_size=3, max_size=3),
    batch=st.sampled_from([3, 100, 10_000]),
)
def test_as_of_equals_a_replay_from_scratch_on_both_clocks(
    seed: int, users: int, days: int, verdicts: int, picks: list[int], batch: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        messages, live = log_with_verdicts(Path(tmp) / "live.duckdb", seed, users, days, verdicts)
        seqs = [m.seq for m in messages]
        for n, pick in enumerate(picks):
            known = seqs[pick % len(seqs)]
            cursor, _ = open_as_of(live.con, AsOfPoint("recorded", None, known, None))
            expected = prefix_projection(Path(tmp) / f"prefix{n}.duckdb", messages, known, batch)
            assert_same(rows(cursor), rows(expected.con), f"recorded as of seq {known}")
            # the workbench's statistics and temporal queries read the as-of state
            assert_frame_equal(by_user(cursor), by_user(expected.con))
            instant = messages[known - 1].recorded_at
            assert_frame_equal(active_at(cursor, instant), active_at(expected.con, instant))
            assert cursor.execute("SELECT last_seq FROM projection_checkpoint").fetchall() == [
                (known,)
            ]
            cursor.close()
            expected.close()
        scratch = prefix_projection(Path(tmp) / "scratch.duckdb", messages, seqs[-1], batch)
        occurred = sorted(
            scratch.con.execute("SELECT DISTINCT occurred_at FROM media_events").fetchall()
        )
        for pick in picks:
            until = occurred[pick % len(occurred)][0] + timedelta(microseconds=pick % 3 - 1)
            point = resolve(live.con, until, "occurred")
            cursor, _ = open_as_of(live.con, point)
            assert_same(rows(cursor), occurred_slice(scratch.con, until), f"occurred by {until}")
            cursor.close()
        scratch.close()
        live.close()


def test_the_recorded_clock_names_the_newest_sequence_recorded_by_the_instant(
    tmp_path: Path,
) -> None:
    messages, live = log_with_verdicts(tmp_path / "live.duckdb", 3, 2, 1, 2)
    times = sorted({m.recorded_at for m in messages})
    middle = times[len(times) // 2]
    point = resolve(live.con, middle, "recorded")
    assert point.known_seq == max(m.seq for m in messages if m.recorded_at <= middle)
    assert resolve(live.con, times[0] - timedelta(days=1)).known_seq == 0
    assert resolve(live.con, times[-1] + timedelta(days=1)).known_seq == messages[-1].seq
    before = open_as_of(live.con, resolve(live.con, times[0] - timedelta(days=1)))[0]
    assert before.execute("SELECT count(*) FROM playback_events").fetchall() == [(0,)]
    before.close()
    live.close()


def test_as_of_shadows_the_tables_on_its_own_cursor_only(tmp_path: Path) -> None:
    _, live = log_with_verdicts(tmp_path / "live.duckdb", 5, 2, 1, 0)
    everything = live.con.execute("SELECT count(*) FROM media_events").fetchall()
    cursor, stats = open_as_of(live.con, AsOfPoint("recorded", None, 10, None))
    assert cursor.execute("SELECT count(*) FROM media_events").fetchall() == [(10,)]
    assert cursor.execute("SELECT max(seq) FROM media_events_detail").fetchall() == [(10,)]
    assert live.con.execute("SELECT count(*) FROM media_events").fetchall() == everything
    assert (
        stats.playbacks_kept + stats.playbacks_refolded
        == cursor.execute("SELECT count(*) FROM playback_events").fetchall()[0][0]
    )
    cursor.close()
    live.close()


def test_a_restore_is_undone_as_of_any_sequence_before_it(tmp_path: Path) -> None:
    from tests.factory import plex_playback, tautulli_summary

    feed = [*plex_playback(), tautulli_summary()]
    messages = [
        Message(seq, DECIDED, encode_event(e), e.subject) for seq, e in enumerate(feed, start=1)
    ]
    live = Projection(tmp_path / "live.duckdb")
    pipeline = Pipeline(live, DedupIndex())
    pipeline.process(messages)
    (link,) = live.con.execute("SELECT audit_id FROM dedupe_audit_log").fetchall()[0]
    decision = AuditDecision.make(link, "restore", DECIDED, by="ana")
    restore = Message(len(messages) + 1, DECIDED, encode_record(decision), decision.subject)
    pipeline.process([restore])
    assert live.con.execute("SELECT count(*) FROM playback_events").fetchall() == [(2,)]
    before = open_as_of(live.con, AsOfPoint("recorded", None, restore.seq - 1, None))[0]
    assert before.execute("SELECT sources FROM playback_events").fetchall() == [
        (["plex", "tautulli"],)
    ]
    assert before.execute("SELECT status FROM dedupe_audit_log").fetchall() == [("auto_dedupe",)]
    before.close()
    after = open_as_of(live.con, AsOfPoint("recorded", None, restore.seq, None))[0]
    assert after.execute("SELECT count(*) FROM playback_events").fetchall() == [(2,)]
    assert after.execute("SELECT status FROM dedupe_audit_log").fetchall() == [("user_restored",)]
    after.close()
    live.close()


@pytest.mark.parametrize("clock", ["recorded", "occurred"])
def test_an_unknown_clock_is_refused(tmp_path: Path, clock: str) -> None:
    live = Projection(tmp_path / "p.duckdb")
    assert resolve(live.con, None, clock).known_seq == 0
    with pytest.raises(ValueError, match="clock must be"):
        resolve(live.con, DECIDED, "wall")  # type: ignore[arg-type]
    live.close()


def test_twenty_instants_of_a_simulated_week_on_both_clocks_after_a_confirm_and_a_restore(
    tmp_path: Path,
) -> None:
    messages, live = log_with_verdicts(tmp_path / "live.duckdb", 11, 3, 7, 8)
    applied = live.con.execute(
        "SELECT action, min(seq) FROM audit_decisions WHERE applied GROUP BY 1"
    ).fetchall()
    assert {action for action, _ in applied} == {"confirm", "restore"}
    assert live.con.execute("SELECT count(*) FROM playback_moves").fetchall()[0][0] > 0
    recorded = sorted({m.recorded_at for m in messages})
    twenty = [recorded[i * (len(recorded) - 1) // 19] for i in range(20)]
    for n, until in enumerate(twenty):
        point = resolve(live.con, until, "recorded")
        cursor, _ = open_as_of(live.con, point)
        expected = prefix_projection(tmp_path / f"p{n}.duckdb", messages, point.known_seq, 50)
        assert_same(rows(cursor), rows(expected.con), f"recorded as of {until}")
        cursor.close()
        expected.close()
    scratch = prefix_projection(tmp_path / "scratch.duckdb", messages, messages[-1].seq, 50)
    occurred = sorted(
        row[0]
        for row in scratch.con.execute("SELECT DISTINCT occurred_at FROM media_events").fetchall()
    )
    for i in range(20):
        until = occurred[i * (len(occurred) - 1) // 19]
        cursor, _ = open_as_of(live.con, resolve(live.con, until, "occurred"))
        assert_same(rows(cursor), occurred_slice(scratch.con, until), f"occurred by {until}")
        cursor.close()
    scratch.close()
    live.close()


def test_an_unmigrated_file_of_tables_version_2_is_read_as_of_a_point(tmp_path: Path) -> None:
    """Read-only, a version-2 file is not migrated: refolded playbacks fill the columns it
    has and leave out the later ones it lacks (stale_at, the library's)."""
    path = tmp_path / "v2.duckdb"
    projection = Projection(path)
    Pipeline(projection, DedupIndex()).process(messages(plex_playback()))
    projection.con.execute("ALTER TABLE playback_events DROP COLUMN stale_at")
    projection.con.execute("ALTER TABLE playback_events DROP COLUMN library_id")
    projection.con.execute("ALTER TABLE playback_events DROP COLUMN library_name")
    projection.con.execute("UPDATE projection_meta SET value = '2' WHERE name = 'schema_version'")
    projection.close()
    con = duckdb.connect(str(path), read_only=True)
    cursor, stats = open_as_of(con, AsOfPoint("recorded", None, 2, None))
    assert stats.playbacks_refolded == 1
    assert cursor.execute("SELECT state FROM playback_events").fetchall() == [("paused",)]
    cursor.close()
    con.close()
