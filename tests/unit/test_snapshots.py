"""Replays that start from a projection snapshot equal replays from the start of the log."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingestor.sources.simulator import SimulationConfig
from workbench.replay import replay, simulated_log
from workbench.snapshots import Snapshots

TABLES = {
    "playback_events": "correlation_key",
    "media_events": "seq",
    "dedupe_audit_log": "audit_id",
}
CONFIG = SimulationConfig(seed=5, users=6, days=3)


def rows(r) -> dict[str, list[tuple]]:
    return {t: r.sql(f"SELECT * FROM {t} ORDER BY {o}").rows() for t, o in TABLES.items()}


@pytest.mark.parametrize("when", ["whole log", "just after a snapshot", "between snapshots"])
async def test_a_replay_from_a_snapshot_equals_a_replay_from_the_start(
    tmp_path: Path, when: str
) -> None:
    log = simulated_log(tmp_path / "archive", CONFIG, segment_messages=100)
    snapshots = tmp_path / "snapshots"
    with await replay(log, progress=False, chunk=100, snapshot_dir=snapshots) as first:
        assert first.stats.projected == await log.last_seq()
    saved = Snapshots(snapshots, 10.0).list()
    assert len(saved) >= 3
    until = {
        "whole log": None,
        "just after a snapshot": saved[1].recorded_at,
        "between snapshots": saved[1].recorded_at
        + (saved[2].recorded_at - saved[1].recorded_at) / 2,
    }[when]
    with await replay(log, until, progress=False) as plain:
        expected = rows(plain)
        everything, checkpoint = plain.stats.messages, plain.projection.checkpoint()
    with await replay(log, until, progress=False, snapshot_dir=snapshots) as fast:
        assert rows(fast) == expected
        assert fast.stats.messages < everything  # it started from a snapshot
        assert fast.projection.checkpoint() == fast.last_seq == checkpoint


async def test_a_snapshot_of_another_log_is_never_used(tmp_path: Path) -> None:
    theirs = simulated_log(tmp_path / "theirs", SimulationConfig(seed=6, users=6, days=3))
    ours = simulated_log(tmp_path / "ours", CONFIG)
    snapshots = tmp_path / "snapshots"
    with await replay(theirs, progress=False, chunk=150, snapshot_dir=snapshots):
        pass
    assert Snapshots(snapshots, 10.0).list()
    with await replay(ours, progress=False) as plain:
        expected = rows(plain)
    with await replay(ours, progress=False, snapshot_dir=snapshots) as checked:
        assert rows(checked) == expected
        assert checked.stats.messages == plain.stats.messages  # from the start


async def test_snapshots_are_kept_per_tolerance_and_not_used_on_the_occurred_clock(
    tmp_path: Path,
) -> None:
    log = simulated_log(tmp_path / "archive", CONFIG)
    snapshots = tmp_path / "snapshots"
    with await replay(log, progress=False, chunk=150, snapshot_dir=snapshots):
        pass
    assert Snapshots(snapshots, 10.0).list() and not Snapshots(snapshots, 30.0).list()
    instant = datetime(2026, 1, 7, 9, tzinfo=UTC)
    with await replay(log, instant, "occurred", progress=False) as plain:
        expected = rows(plain)
    with await replay(log, instant, "occurred", progress=False, snapshot_dir=snapshots) as r:
        assert rows(r) == expected and r.stats.messages == plain.stats.messages
