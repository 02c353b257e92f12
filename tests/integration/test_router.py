"""The router against a real nats-server and real DuckDB files."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from msgspec.structs import replace

from ingestor.app import new_pipeline, open_projection
from ingestor.commands.replay import replay_command
from ingestor.config import Settings
from ingestor.events import MediaEvent
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.dlq import DeadLetters
from ingestor.nats.publisher import Publisher
from ingestor.nats.reader import read_range, stream_bounds
from ingestor.projection import Projection
from ingestor.router import Router, RouterStats
from ingestor.simulation import TRUTH_SQL, SimulationConfig, simulate, truth_keys
from tests.factory import T0, plex_playback, tautulli_summary

pytestmark = pytest.mark.integration


async def project(
    settings: Settings,
    handle: NatsHandle,
    *,
    fault: Callable[[Sequence], None] | None = None,
    **router_kwargs,
) -> tuple[Projection, RouterStats]:
    """Run a router until the checkpoint reaches the stream's last sequence."""
    projection = open_projection(settings.duckdb_path, fault=fault)
    router = Router(
        handle.nc,
        new_pipeline(settings, projection),
        batch_size=router_kwargs.pop("batch_size", 500),
        flush_interval=0.05,
        **router_kwargs,
    )
    task = asyncio.create_task(router.run())
    _, last = await stream_bounds(handle.nc)
    reached = await router.wait_for_seq(last, timeout=120)
    router.stop()
    stats = await task
    assert reached, f"checkpoint stuck at {router.stats.last_seq} of {last}"
    return projection, stats


async def publish(handle: NatsHandle, events: list[MediaEvent]) -> None:
    stats = await Publisher(handle.nc).publish_many(events)
    assert stats.total == len(events)


async def ingest(
    settings: Settings, events: list[MediaEvent], **router_kwargs
) -> tuple[Projection, RouterStats]:
    """Publish ``events`` to a fresh stream and project all of it."""
    handle = await open_nats(settings)
    try:
        await publish(handle, events)
        return await project(settings, handle, **router_kwargs)
    finally:
        await handle.close()


def table(projection: Projection, sql: str) -> list[tuple]:
    return projection.con.execute(sql).fetchall()


async def test_the_simulated_feed_projects_to_its_ground_truth(settings: Settings) -> None:
    sim = simulate(SimulationConfig(seed=5, users=10, days=3))
    projection, stats = await ingest(settings, sim.events)
    assert set(table(projection, TRUTH_SQL)) == truth_keys(sim.truth)
    assert table(projection, "SELECT count(*) = count(DISTINCT event_id) FROM media_events") == [
        (True,)
    ]
    assert stats.linked == sim.expected.linked
    assert stats.dropped.get("session_key", 0) == sim.expected.dropped_session_key
    projection.close()


async def test_a_malformed_message_is_dead_lettered_while_the_rest_is_projected(
    settings: Settings,
) -> None:
    events = plex_playback()
    handle = await open_nats(settings)
    try:
        await publish(handle, events[:2])
        await handle.js.publish("playback.plex.movie", b"{this is not json")
        await handle.js.publish("playback.plex.movie", b'{"schema_version": 1, "event_id": "x"}')
        await publish(handle, events[2:])
        projection, stats = await project(settings, handle)
        letters = [letter async for letter in DeadLetters(handle.js).entries()]
    finally:
        await handle.close()
    assert stats.dead_lettered == 2
    assert [(d.sequence, d.category, d.subject) for d in letters] == [
        (3, "invalid_event", "playback.plex.movie"),
        (4, "invalid_event", "playback.plex.movie"),
    ]
    assert "undecodable" in letters[0].error and letters[0].data == b"{this is not json"
    assert "invalid event payload" in letters[1].error
    assert all(d.deliveries >= 1 and d.dead_at for d in letters)
    assert table(projection, "SELECT count(*), max(event_count) FROM playback_events") == [(1, 5)]
    assert projection.checkpoint() == 7
    projection.close()


async def test_a_database_outage_is_retried_and_nothing_is_dead_lettered(
    settings: Settings,
) -> None:
    sim = simulate(SimulationConfig(seed=6, users=6, days=2))
    outage_ends = time.monotonic() + 2.5
    failures = []

    def database_down(_items: Sequence) -> None:
        if time.monotonic() < outage_ends:
            failures.append(1)
            raise duckdb.IOException("IO Error: could not write to the database file")

    handle = await open_nats(settings)
    try:
        await publish(handle, sim.events)
        projection, stats = await project(
            settings, handle, fault=database_down, retry_attempts=3, pause_s=0.3
        )
        dead = await DeadLetters(handle.js).count()
    finally:
        await handle.close()
    assert len(failures) >= 3 and stats.pauses >= 1  # it really was down, and fetching paused
    assert dead == 0 and stats.dead_lettered == 0
    assert set(table(projection, TRUTH_SQL)) == truth_keys(sim.truth)
    projection.close()


async def test_a_batch_redelivered_during_a_slow_commit_changes_nothing(settings: Settings) -> None:
    sim = simulate(SimulationConfig(seed=8, users=8, days=3))
    stalled = []

    def slow_first_commit(_items: Sequence) -> None:
        if not stalled:
            stalled.append(1)
            time.sleep(2.5)  # longer than ack_wait: JetStream redelivers the batch

    projection, stats = await ingest(
        settings, sim.events, fault=slow_first_commit, ack_wait=1.0, batch_size=100
    )
    assert stalled
    assert stats.redeliveries_skipped > 0  # JetStream did redeliver while we held the batch
    assert set(table(projection, TRUTH_SQL)) == truth_keys(sim.truth)
    assert table(projection, "SELECT count(*) = count(DISTINCT event_id) FROM media_events") == [
        (True,)
    ]
    # transport redeliveries are not dedup decisions: only the simulator's repeats are audited
    assert stats.dropped.get("event_id", 0) == 0  # JetStream caught the simulator's repeats
    assert table(projection, "SELECT count(*) FROM dedupe_audit_log WHERE tier = 'event_id'") == [
        (0,)
    ]
    projection.close()


async def test_an_unknown_error_is_retried_then_only_its_message_is_dead_lettered(
    settings: Settings,
) -> None:
    events = plex_playback() + plex_playback(T0 + timedelta(hours=3))
    poison = events[6].event_id
    attempts = []

    def crash_on_poison(items: Sequence) -> None:
        if any(a.event.event_id == poison for a in items):
            attempts.append(1)
            raise RuntimeError("handler bug triggered by this event")

    handle = await open_nats(settings)
    try:
        await publish(handle, events)
        projection, _ = await project(settings, handle, fault=crash_on_poison)
        letters = [letter async for letter in DeadLetters(handle.js).entries()]
    finally:
        await handle.close()
    assert len(attempts) >= 5
    assert [(d.sequence, d.category) for d in letters] == [(7, "unknown")]
    assert "handler bug" in letters[0].error
    assert table(projection, "SELECT count(*) FROM media_events") == [(9,)]
    assert projection.checkpoint() == 10
    projection.close()


@pytest.mark.parametrize("tautulli_first", [False, True])
async def test_plex_and_tautulli_reports_of_one_playback_are_one_row_and_one_link(
    settings: Settings, tautulli_first: bool
) -> None:
    lifecycle, summary = plex_playback(), tautulli_summary(late=6)
    events = [summary, *lifecycle] if tautulli_first else [*lifecycle, summary]
    projection, _ = await ingest(settings, events)
    assert table(projection, "SELECT started_at, paused_seconds, sources FROM playback_events") == [
        (T0, summary.paused_counter, ["plex", "tautulli"])
    ]
    links = table(projection, "SELECT tier, action, source FROM dedupe_audit_log")
    linked_source = "plex" if tautulli_first else "tautulli"
    assert links == [("correlation", "link", linked_source)]
    projection.close()


async def test_the_same_item_on_the_same_device_an_hour_apart_stays_two(settings: Settings) -> None:
    events = plex_playback(T0, stop_at=1800) + plex_playback(T0 + timedelta(hours=1), stop_at=1800)
    projection, _ = await ingest(settings, events)
    assert table(projection, "SELECT count(*) FROM playback_events") == [(2,)]
    assert table(projection, "SELECT count(*) FROM dedupe_audit_log") == [(0,)]
    projection.close()


COMPARED = {
    "playback_events": "SELECT * FROM playback_events ORDER BY correlation_key",
    "media_events": "SELECT * FROM media_events ORDER BY seq",
    "dedupe_audit_log": "SELECT * FROM dedupe_audit_log ORDER BY seq",
}


async def test_a_clean_replay_equals_the_live_projection(
    settings: Settings, tmp_path: Path
) -> None:
    sim = simulate(SimulationConfig(seed=9, users=6, days=3))
    handle = await open_nats(settings)
    try:
        await publish(handle, sim.events)
        live, _ = await project(settings, handle, batch_size=97)
    finally:
        await handle.close()
    report = await replay_command(settings, tmp_path / "replay.duckdb", out=lambda _: None)
    replayed = Projection(tmp_path / "replay.duckdb", read_only=True)
    for name, sql in COMPARED.items():
        assert table(replayed, sql) == table(live, sql), name
    assert report.last_seq == live.checkpoint()
    live.close()
    replayed.close()


async def test_replay_until_an_instant_by_either_clock(settings: Settings, tmp_path: Path) -> None:
    first, second = plex_playback(T0), plex_playback(T0 + timedelta(days=1))
    handle = await open_nats(settings)
    try:
        await publish(handle, first)
        fifth = [m async for batch in read_range(handle.nc, 5, 5) for m in batch]
        recorded_cut = fifth[0].recorded_at
        await publish(handle, second)
    finally:
        await handle.close()
    by_recorded = await replay_command(
        settings, tmp_path / "r.duckdb", until=recorded_cut, clock="recorded", out=lambda _: None
    )
    by_occurred = await replay_command(
        settings,
        tmp_path / "o.duckdb",
        until=T0 + timedelta(hours=12),
        clock="occurred",
        out=lambda _: None,
    )
    assert by_recorded.counts["accepted"] == 5 and by_recorded.counts["playbacks"] == 1
    assert by_occurred.counts["accepted"] == 5 and by_occurred.counts["playbacks"] == 1


@pytest.mark.parametrize("listening", [False, True])
async def test_batches_grow_while_a_backlog_is_pending_unless_someone_listens(
    settings: Settings, listening: bool
) -> None:
    """A drained backlog commits in batches of up to ten times NATS_BATCH_SIZE (fewer
    commits, the same rows); with a live-feed client batches stay at NATS_BATCH_SIZE."""
    sim = simulate(SimulationConfig(seed=8, users=12, days=3))
    sizes: list[int] = []
    projection, stats = await ingest(
        settings,
        sim.events,
        batch_size=100,
        on_batch=lambda result: sizes.append(len(result.applied)),
        may_grow=lambda: not listening,
    )
    assert set(table(projection, TRUTH_SQL)) == truth_keys(sim.truth)
    assert max(sizes) <= (100 if listening else 1000)
    if not listening:
        assert max(sizes) > 100 and stats.batches < len(sim.events) / 100
    projection.close()


async def test_messages_nested_too_deeply_to_decode_are_dead_lettered_and_the_rest_projected(
    settings: Settings,
) -> None:
    # found by tests/fuzz: msgspec raises RecursionError (not a decode error) on JSON nested
    # past ~1,000 levels; raised from the batch decode, it paused the router and the same
    # batch failed again after every pause: the stream stopped for good
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    events = plex_playback()
    handle = await open_nats(settings)
    try:
        await publish(handle, events[:2])
        await handle.js.publish("audit.decision", deep)
        await handle.js.publish("playback.plex.movie", deep)
        await handle.js.publish("alert.fuzz", deep)
        await publish(handle, events[2:])
        projection, stats = await project(settings, handle)
        letters = [letter async for letter in DeadLetters(handle.js).entries()]
    finally:
        await handle.close()
    assert [(d.sequence, d.category, d.data == deep) for d in letters] == [
        (3, "invalid_event", True),
        (4, "invalid_event", True),
        (5, "invalid_event", True),
    ]
    assert all("RecursionError" in d.error or "undecodable" in d.error for d in letters)
    assert stats.dead_lettered == 3
    assert table(projection, "SELECT count(*), max(event_count) FROM playback_events") == [(1, 5)]
    assert projection.checkpoint() == 8
    projection.close()


async def test_a_huge_server_id_or_media_type_neither_closes_the_connection_nor_is_lost(
    settings: Settings,
) -> None:
    """nats-server closes a connection whose protocol line is over 4 KiB, for good: the
    subject's tokens are capped, the payload keeps the values (found by the fuzzer)."""
    huge = [replace(e, server_id="S" * 5000) for e in plex_playback(machine_id="a")] + [
        replace(e, media_type="episode" + "x" * 5000) for e in plex_playback(machine_id="b")
    ]
    normal = plex_playback(T0 + timedelta(hours=5))
    projection, _ = await ingest(settings, [*huge, *normal])
    try:
        servers = table(projection, "SELECT DISTINCT length(server_id) FROM media_events")
        assert sorted(servers) == [(len(normal[0].server_id),), (5000,)]
        assert table(projection, "SELECT count(*) FROM media_events") == [(15,)]
    finally:
        projection.close()
