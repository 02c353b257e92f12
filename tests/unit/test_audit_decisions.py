"""Confirm and restore as records of the log, projected by the ingestor's one write path."""

from __future__ import annotations

import itertools
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestor.dedup import DedupIndex
from ingestor.events import MediaEvent, encode_event
from ingestor.pipeline import Message, Pipeline
from ingestor.projection import Projection
from ingestor.records import Alert, AuditDecision, encode_record
from ingestor.simulation import SimulationConfig, simulate
from tests.factory import T0, event, plex_playback, tautulli_summary
from workbench import audit

DECIDED = datetime(2026, 1, 6, 9, 0, tzinfo=UTC)


def pipeline(tmp_path: Path, name: str = "p.duckdb") -> Pipeline:
    return Pipeline(Projection(tmp_path / name), DedupIndex())


def log_of(*items: MediaEvent | AuditDecision | Alert, first_seq: int = 1) -> list[Message]:
    out = []
    for seq, item in enumerate(items, start=first_seq):
        if isinstance(item, MediaEvent):
            out.append(Message(seq, DECIDED, encode_event(item), item.subject))
        else:
            out.append(Message(seq, DECIDED, encode_record(item), item.subject))
    return out


def rows(p: Pipeline, sql: str) -> list[tuple]:
    return p.projection.con.execute(sql).fetchall()


def linked_feed() -> list[MediaEvent]:
    """A Plex lifecycle and the Tautulli summary of the same viewing: one link."""
    return [*plex_playback(), tautulli_summary()]


def the_entry(p: Pipeline, tier: str) -> str:
    found = audit.entries(p.projection, tier=tier)
    assert found.height == 1, found
    return found["audit_id"][0]


def test_confirm_marks_the_entry_and_changes_no_playback(tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    p.process(log_of(*linked_feed()))
    link = the_entry(p, "correlation")
    before = rows(p, "SELECT * FROM playback_events")
    decision = AuditDecision.make(link, "confirm", DECIDED, by="ana", notes="same viewing")
    result = p.process(log_of(decision, first_seq=7)).result
    assert [o.detail for o in result.decisions] == ["user_confirmed"]
    assert rows(p, "SELECT * FROM playback_events") == before
    assert rows(
        p, "SELECT status, resolved_by, resolved_at, resolution_notes FROM dedupe_audit_log"
    ) == [("user_confirmed", "ana", DECIDED, "same viewing")]
    assert p.projection.checkpoint() == 7
    assert audit.summary(p.projection).accuracy == 1.0


def test_restoring_a_link_splits_the_linked_source_into_its_own_playback(tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    p.process(log_of(*linked_feed()))
    assert rows(p, "SELECT sources FROM playback_events") == [(["plex", "tautulli"],)]
    link = the_entry(p, "correlation")
    p.process(log_of(AuditDecision.make(link, "restore", DECIDED), first_seq=7))
    playbacks = rows(
        p, "SELECT source, sources, event_count, played_seconds FROM playback_events ORDER BY 1"
    )
    assert playbacks == [
        ("plex", ["plex"], 5, 6900),
        ("tautulli", ["tautulli"], 1, 6895),  # its own play_duration
    ]
    assert rows(p, "SELECT status FROM dedupe_audit_log") == [("user_restored",)]
    summary = audit.summary(p.projection)
    assert (summary.restored, summary.accuracy) == (1, 0.0)


def test_after_an_unlink_the_same_sources_reports_fold_into_the_new_playback(
    tmp_path: Path,
) -> None:
    """A later report of the restored session must not link back into the old playback."""
    p = pipeline(tmp_path)
    lifecycle = plex_playback(stop_at=7200)
    first_summary = tautulli_summary()
    p.process(log_of(*lifecycle, first_summary))
    link = the_entry(p, "correlation")
    # Tautulli re-sends its row with more detail after the restore (same session key)
    again = event(
        "tautulli",
        "stop",
        T0 + timedelta(hours=3),
        first_summary.session_key,
        started_at=first_summary.started_at,
        stopped_at=first_summary.stopped_at,
    )
    p.process(log_of(AuditDecision.make(link, "restore", DECIDED), again, first_seq=7))
    assert rows(p, "SELECT source, event_count FROM playback_events ORDER BY 1") == [
        ("plex", 5),
        ("tautulli", 2),
    ]


def test_events_after_a_restore_in_the_same_batch_see_the_split(tmp_path: Path) -> None:
    """The batch is cut at the decision: one batch and three batches give the same rows."""
    lifecycle = plex_playback()
    summary = tautulli_summary()
    probe = pipeline(tmp_path, "probe.duckdb")
    probe.process(log_of(*lifecycle, summary))
    link = the_entry(probe, "correlation")
    later = event("tautulli", "stop", T0 + timedelta(hours=3), summary.session_key)
    feed = log_of(*lifecycle, summary, AuditDecision.make(link, "restore", DECIDED), later)
    whole = pipeline(tmp_path, "whole.duckdb")
    whole.process(feed)
    split = pipeline(tmp_path, "split.duckdb")
    for lo, hi in ((0, 5), (5, 7), (7, 8)):
        split.process(feed[lo:hi])
    for sql in (
        "SELECT * FROM playback_events ORDER BY correlation_key",
        "SELECT * EXCLUDE (recorded_at) FROM media_events ORDER BY seq",
        "SELECT * EXCLUDE (recorded_at) FROM dedupe_audit_log ORDER BY seq",
    ):
        assert rows(whole, sql) == rows(split, sql)
    assert whole.projection.checkpoint() == split.projection.checkpoint() == 8


def test_restoring_a_session_key_drop_puts_the_report_back(tmp_path: Path) -> None:
    """A second pause at the same playhead looks like a re-report; restoring it counts it."""
    p = pipeline(tmp_path)
    session = "roku-livingroom/54321/x"
    kw = {"started_at": T0}
    feed = [
        event("plex", "play", T0, session, position_ms=0, **kw),
        event("plex", "pause", T0 + timedelta(seconds=600), session, position_ms=600_000, **kw),
        event("plex", "resume", T0 + timedelta(seconds=700), session, position_ms=600_000, **kw),
        event("plex", "pause", T0 + timedelta(seconds=705), session, position_ms=600_000, **kw),
        event("plex", "stop", T0 + timedelta(seconds=905), session, position_ms=600_000, **kw),
    ]
    p.process(log_of(*feed))
    drop = the_entry(p, "session_key")
    assert rows(p, "SELECT paused_seconds, event_count FROM playback_events") == [(100, 4)]
    p.process(log_of(AuditDecision.make(drop, "restore", DECIDED), first_seq=6))
    # both pauses count now: 600-700 and 705-905
    assert rows(p, "SELECT paused_seconds, event_count FROM playback_events") == [(300, 5)]
    assert rows(p, "SELECT seq, dedup_action FROM media_events WHERE event_type = 'pause'") == [
        (2, "fold"),
        (4, "restored"),
    ]
    # the same report delivered again is still an exact duplicate
    p.process(log_of(feed[3], first_seq=7))
    assert rows(p, "SELECT count(*) FROM media_events") == [(5,)]


def test_decisions_that_cannot_apply_are_ignored_and_say_why(tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    play = plex_playback()[0]
    p.process(log_of(play, play))  # the exact event again: tier event_id
    exact = the_entry(p, "event_id")
    result = p.process(
        log_of(
            AuditDecision.make(exact, "restore", DECIDED),
            AuditDecision.make("no-such-entry", "confirm", DECIDED),
            first_seq=3,
        )
    ).result
    assert [(o.applied, o.detail) for o in result.decisions] == [
        (False, "an exact duplicate cannot be restored: the same event is projected"),
        (False, "no such audit entry"),
    ]
    assert p.projection.checkpoint() == 4
    assert rows(p, "SELECT status FROM dedupe_audit_log") == [("auto_dedupe",)]


def test_the_workbench_refuses_a_verdict_that_cannot_apply(tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    play = plex_playback()[0]
    p.process(log_of(play, play, *linked_feed()[1:]))
    exact = the_entry(p, "event_id")
    link = the_entry(p, "correlation")
    with pytest.raises(audit.AuditError, match="exact duplicate"):
        audit.check(audit.lookup(p.projection, exact), "restore", exact)
    with pytest.raises(audit.AuditError, match="no audit entry"):
        audit.check(audit.lookup(p.projection, "nope"), "confirm", "nope")
    p.process(log_of(AuditDecision.make(link, "restore", DECIDED), first_seq=20))
    with pytest.raises(audit.AuditError, match="already restored"):
        audit.check(audit.lookup(p.projection, link), "confirm", link)
    audit.check(audit.lookup(p.projection, exact), "confirm", exact)  # allowed


def test_alerts_are_projected_once_per_alert_id(tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    alert = Alert(
        alert_id="a1",
        rule="concurrent_streams",
        severity="warning",
        occurred_at=T0,
        user_id="8312457",
        message="4 streams",
        event_ids=["e1", "e2"],
        details={"streams": 4, "limit": 3},
    )
    p.process(log_of(alert, *plex_playback()[:1], alert))
    p.process(log_of(alert, first_seq=4))  # detection ran again over the same events
    assert rows(p, "SELECT alert_id, seq, event_ids, details FROM detection_alerts") == [
        ("a1", 1, ["e1", "e2"], '{"streams":4,"limit":3}')
    ]


def test_an_unreadable_decision_is_rejected_not_projected(tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    bad = Message(1, DECIDED, b'{"audit_id": 7}', "audit.restore")
    outcome = p.process([bad])
    assert [r.category for r in outcome.rejected] == ["invalid_event"]
    assert p.projection.checkpoint() == 1


_SIM = simulate(SimulationConfig(seed=3, users=4, days=2))
_SIM_LOG = log_of(*_SIM.events)


def _audit_ids() -> list[tuple[int, str, str]]:
    """(seq, audit_id, tier) of every entry the simulated feed produces."""
    with tempfile.TemporaryDirectory() as tmp:
        p = pipeline(Path(tmp))
        p.process(_SIM_LOG)
        found = rows(p, "SELECT seq, audit_id, tier FROM dedupe_audit_log ORDER BY seq")
        p.projection.close()
    return found


_ENTRIES = _audit_ids()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    verdicts=st.lists(
        st.tuples(
            st.integers(0, len(_ENTRIES) - 1),
            st.sampled_from(["confirm", "restore"]),
            st.integers(0, 200),  # how many messages after its entry the verdict arrives
        ),
        min_size=1,
        max_size=6,
    ),
    cuts=st.lists(st.integers(1, len(_SIM_LOG) + 5), max_size=10, unique=True),
)
def test_verdicts_anywhere_give_rows_that_do_not_depend_on_batch_boundaries(
    tmp_path_factory, verdicts: list[tuple[int, str, int]], cuts: list[int]
) -> None:
    """Verdicts interleaved with the feed (as a live log has them): a replay in one batch
    and a live projection in arbitrary batches write the same rows."""
    items: list[MediaEvent | AuditDecision] = list(_SIM.events)
    inserts = []
    for n, (entry, action, delay) in enumerate(verdicts):
        seq, audit_id, _ = _ENTRIES[entry]
        at = DECIDED + timedelta(minutes=n)
        inserts.append((seq + delay, n, AuditDecision.make(audit_id, action, at)))
    for position, _, decision in sorted(inserts, key=lambda x: (x[0], x[1]), reverse=True):
        items.insert(min(position, len(items)), decision)
    feed = log_of(*items)
    whole = pipeline(tmp_path_factory.mktemp("whole"))
    whole.process(feed)
    split = pipeline(tmp_path_factory.mktemp("split"))
    bounds = [0, *sorted(c for c in cuts if c < len(feed)), len(feed)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            split.process(feed[lo:hi])
    for sql in (
        "SELECT * FROM playback_events ORDER BY correlation_key",
        "SELECT * FROM media_events ORDER BY seq",
        "SELECT * FROM dedupe_audit_log ORDER BY seq",
    ):
        assert rows(whole, sql) == rows(split, sql)
    # and a restored link really split its playback: no playback mixes a restored session
    restored = rows(
        whole,
        "SELECT count(*) FROM dedupe_audit_log a JOIN media_events e"
        " ON e.source = a.source AND e.session_key = a.session_key"
        " AND e.correlation_key = a.kept_correlation_key"
        " WHERE a.status = 'user_restored' AND a.tier = 'correlation'",
    )
    assert restored == [(0,)]
