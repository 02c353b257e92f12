"""workbench.replay against real logs: a real nats-server (stream time is the server's) and
archive segments in tmp_path, compared with the ingestor's own pipeline fed the same slice.

Invariant 2 (deterministic replay) and 6 (two clocks): ``replay(until=T, clock="recorded")``
has exactly the rows of a projection fed, batch by batch, the messages the log recorded by
``T``; ``clock="occurred"`` those of one fed the whole log, restricted to the events that
happened by ``T`` (each playback folded from those: valid time T, as known now).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from ingestor.archive import write_segment
from ingestor.config import Settings
from ingestor.dedup import DedupIndex
from ingestor.events import decode_event, encode_event
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.publisher import Publisher
from ingestor.nats.reader import read_range
from ingestor.nats.streams import STREAM
from ingestor.pipeline import Message, Pipeline
from ingestor.projection import Projection
from ingestor.simulation import SimulationConfig, simulate
from tests.support import occurred_slice
from workbench.log import EventLog, LogGapError
from workbench.replay import CLOCKS, Replay, replay, simulated_log
from workbench.temporal import active_at, changes_between, changes_in_log

# the submodule itself (``workbench.replay`` the attribute is the function, re-exported)
replay_module = sys.modules["workbench.replay"]

pytestmark = pytest.mark.integration

TABLES = {
    "playback_events": "correlation_key",
    "media_events": "seq",
    "dedupe_audit_log": "audit_id",
}
NOT_AN_EVENT = b"{not json"
# changes_between reports the playback as the projection knows it: a replay to t2 may not
# know its stop yet, the whole log does
WHOLE_LOG_COLUMNS = {"started_at", "stopped_at"}
ONE_US = timedelta(microseconds=1)


def table_rows(con) -> dict[str, pl.DataFrame]:
    return {
        table: con.sql(f"SELECT * FROM {table} ORDER BY {order}").pl()
        for table, order in TABLES.items()
    }


def assert_same_projection(got: Replay, expected: dict[str, pl.DataFrame]) -> None:
    actual = table_rows(got.con)
    for table in TABLES:
        try:
            assert_frame_equal(actual[table], expected[table])
        except AssertionError as exc:
            raise AssertionError(f"{table} differs: {exc}") from None


def ingestor_projection(
    path: Path, messages: Sequence[Message], batch: int, restart_every: int = 0
) -> dict[str, pl.DataFrame]:
    """What the live ingestor writes when the router hands it ``messages`` in batches of
    ``batch``, restarting (a new pipeline whose dedup index is rebuilt from the database)
    every ``restart_every`` batches."""
    projection = Projection(path)
    pipeline = Pipeline(projection, DedupIndex())
    for n, lo in enumerate(range(0, len(messages), batch), start=1):
        pipeline.process(messages[lo : lo + batch])
        if restart_every and n % restart_every == 0:
            projection.close()
            projection = Projection(path)
            pipeline = Pipeline(projection, DedupIndex())
    rows = table_rows(projection.con)
    projection.close()
    return rows


def recorded_by(messages: Sequence[Message], until: datetime) -> list[Message]:
    return [m for m in messages if m.recorded_at <= until]


def occurred_by(messages: Sequence[Message], until: datetime) -> list[Message]:
    kept = []
    for m in messages:
        if not m.subject.startswith("playback.") or m.data == NOT_AN_EVENT:
            continue
        if decode_event(m.data).occurred_at <= until:
            kept.append(m)
    return kept


def feed(config: SimulationConfig, rng: Random) -> list[Message]:
    """The simulated feed as log messages: the stream times run ahead of the event times by
    a random delay (an outage now and then), and a few messages are not readable events."""
    messages: list[Message] = []
    recorded = datetime.min.replace(tzinfo=UTC)
    for event in simulate(config).events:
        delay = rng.choice((0, 0, 0.2, 3, 90, 1800))
        recorded = max(recorded, event.occurred_at + timedelta(seconds=delay))
        seq = len(messages) + 1
        messages.append(Message(seq, recorded, encode_event(event), event.subject))
        if rng.random() < 0.03:
            subject = rng.choice(("audit.decision", "playback.plex.movie"))
            messages.append(Message(seq + 1, recorded, NOT_AN_EVENT, subject))
    return messages


def cut_instants(times: Sequence[datetime], picks: Sequence[int]) -> list[datetime]:
    """Instants at, just before and just after some of ``times``, and beyond both ends."""
    ordered = sorted(set(times))
    chosen = [ordered[i % len(ordered)] for i in picks]
    return [
        ordered[0] - timedelta(days=1),
        *chosen,
        *(t - ONE_US for t in chosen),
        *(t + ONE_US for t in chosen),
        ordered[-1] + timedelta(days=1),
    ]


# ------------------------------------------------------------------ property: archive logs


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    users=st.integers(1, 3),
    days=st.integers(1, 3),
    clock=st.sampled_from(CLOCKS),
    pick=st.integers(0, 10_000),
    offset=st.sampled_from((-ONE_US, timedelta(0), ONE_US)),
    segment=st.integers(7, 400),
    batch=st.integers(5, 60),
    restart_every=st.integers(0, 3),
)
def test_a_replay_to_any_instant_equals_the_ingestor_fed_that_slice(
    seed: int,
    users: int,
    days: int,
    clock: str,
    pick: int,
    offset: timedelta,
    segment: int,
    batch: int,
    restart_every: int,
) -> None:
    rng = Random(seed)
    messages = feed(SimulationConfig(seed=seed, users=users, days=days), rng)
    if clock == "recorded":
        times = [m.recorded_at for m in messages]
    else:
        times = [decode_event(m.data).occurred_at for m in messages if m.data != NOT_AN_EVENT]
    ordered = sorted(set(times))
    until = ordered[pick % len(ordered)] + offset
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive"
        archive.mkdir()
        for lo in range(0, len(messages), segment):
            write_segment(archive, messages[lo : lo + segment])
        if clock == "recorded":
            sliced = recorded_by(messages, until)
            expected = ingestor_projection(Path(tmp) / "live.duckdb", sliced, batch, restart_every)
        else:
            whole = Path(tmp) / "whole.duckdb"
            ingestor_projection(whole, messages, batch, restart_every)
            with duckdb.connect(str(whole), read_only=True) as con:
                con.execute("SET TimeZone = 'UTC'")
                expected = {t: f for t, f in occurred_slice(con, until).items() if t in TABLES}
        with asyncio.run(replay(EventLog(archive), until, clock, progress=False)) as got:
            assert_same_projection(got, expected)
            assert got.as_of == until and got.clock == clock
            if clock == "recorded":
                # the newest message recorded by the cut that the projection holds a row of
                projected = [m for m in sliced if m.data != NOT_AN_EVENT]
                assert got.last_seq == (projected[-1].seq if projected else 0)
            else:
                assert got.last_seq == messages[-1].seq
            assert got.stats.messages == len(messages)  # the log was projected once, whole
            assert got.stats.rejected == sum(1 for m in messages if m.data == NOT_AN_EVENT)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), picks=st.lists(st.integers(0, 10_000), min_size=2, max_size=2))
def test_states_in_a_window_match_replays_as_of_its_ends(seed: int, picks: list[int]) -> None:
    """changes_between on the recorded clock reports, for each playback, the state that
    replays as of t1 and t2 show (or "absent"); active_at agrees with the replay's state."""
    rng = Random(seed)
    messages = feed(SimulationConfig(seed=seed, users=2, days=2), rng)
    ordered = sorted({m.recorded_at for m in messages})
    t1, t2 = sorted(ordered[p % len(ordered)] for p in picks)
    if t1 == t2:
        t2 = t2 + timedelta(minutes=30)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive"
        archive.mkdir()
        write_segment(archive, messages)
        log = EventLog(archive)

        async def three() -> tuple[Replay, Replay, Replay]:
            return (
                await replay(log, progress=False),
                await replay(log, t1, progress=False),
                await replay(log, t2, progress=False),
            )

        whole, first, second = asyncio.run(three())
        with whole, first, second:
            changes = changes_between(whole, t1, t2)
            before = dict(first.playbacks().select("correlation_key", "state").rows())
            after = dict(second.playbacks().select("correlation_key", "state").rows())
            for key, state_t1, state_t2 in changes.select(
                "correlation_key", "state_t1", "state_t2"
            ).rows():
                assert before.get(key, "absent") == state_t1
                assert after.get(key, "absent") == state_t2
            # every playback whose state changed, or that appeared, is in the window's changes
            moved = {k for k, s in after.items() if before.get(k) != s}
            assert moved <= set(changes["correlation_key"])
            with pytest.raises(ValueError, match="replay to t2 or later"):
                changes_between(first, t1 - timedelta(hours=1), t2)
            # straight from the log (a replay to t2): the same states and reports
            window_columns = [c for c in changes.columns if c not in WHOLE_LOG_COLUMNS]
            from_log = asyncio.run(changes_in_log(log, t1.isoformat(), t2))
            assert_frame_equal(
                from_log.select(window_columns).sort("correlation_key"),
                changes.select(window_columns).sort("correlation_key"),
            )

            # at the newest event time, active_at's state is the replay's own live state
            newest = second.sql("SELECT max(occurred_at) AS t FROM media_events")["t"].item()
            if newest is not None:
                live = second.playbacks().filter(pl.col("state") != "stopped")
                frame = active_at(second, newest)
                states = dict(frame.select("correlation_key", "state_at").rows())
                for key, state, started in live.select(
                    "correlation_key", "state", "started_at"
                ).rows():
                    if started <= newest:
                        assert states[key] == state


# ------------------------------------------------------------------ a real nats-server


@pytest.fixture
async def handle(settings: Settings) -> AsyncIterator[NatsHandle]:
    handle = await open_nats(settings)
    try:
        yield handle
    finally:
        await handle.close()


async def test_replays_of_a_real_stream_equal_the_ingestor_at_every_cut(
    handle: NatsHandle, settings: Settings, tmp_path: Path
) -> None:
    """Publish a feed, seal the first part into the archive, and replay archive + stream
    tail to instants at, just before and just after real stream times and event times."""
    sim = simulate(SimulationConfig(seed=5, users=3, days=2))
    publisher = Publisher(handle.nc)
    half = len(sim.events) // 2
    assert (await publisher.publish_many(sim.events[:half])).stored > 0
    await handle.js.publish("audit.decision", b"confirmed", stream=STREAM)  # not an event
    await publisher.publish_many(sim.events[half:])
    stored = [m async for batch in read_range(handle.nc) for m in batch]
    assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
    times = [m.recorded_at for m in stored]
    assert times == sorted(times)  # stream time never runs backwards here
    archive = settings.archive_dir
    archive.mkdir(parents=True)
    write_segment(archive, stored[:40])
    write_segment(archive, stored[40:100])
    log = EventLog(archive, nc=handle.nc)
    assert (await log.bounds()).archive_last_seq == 100

    occurred = [decode_event(m.data).occurred_at for m in stored if m.subject != "audit.decision"]
    cuts = [("recorded", t) for t in cut_instants(times, (0, 39, 40, 99, 100, 150))]
    cuts += [("occurred", t) for t in cut_instants(occurred, (3, 77, 130))]
    cuts.append(("recorded", None))
    for n, (clock, until) in enumerate(cuts):
        if until is None:
            sliced = stored
        elif clock == "recorded":
            sliced = recorded_by(stored, until)
        else:
            sliced = occurred_by(stored, until)
        expected = ingestor_projection(tmp_path / f"live-{n}.duckdb", sliced, batch=50)
        async with asyncio.timeout(30):
            got = await replay(log, until, clock, progress=False)  # type: ignore[arg-type]
        with got:
            assert_same_projection(got, expected)
            if clock == "recorded":
                assert got.last_seq == (sliced[-1].seq if sliced else 0)


async def test_a_stream_only_replay_answers_as_of_the_last_message_recorded_by_then(
    handle: NatsHandle, settings: Settings
) -> None:
    events = simulate(SimulationConfig(seed=9, users=2, days=1)).events
    await Publisher(handle.nc).publish_many(events)
    stored = [m async for batch in read_range(handle.nc) for m in batch]
    until = stored[9].recorded_at
    async with EventLog(nats_url=settings.nats_url) as log:
        with await replay(log, until.isoformat(), progress=False) as got:
            assert got.as_of == until
            assert got.stats.messages == len(stored)  # the log's projection, made once
            assert got.last_seq == recorded_by(stored, until)[-1].seq
            assert got.sql("SELECT max(seq) AS s FROM media_events")["s"].item() <= got.last_seq
            assert got.sql("SELECT max(recorded_at) AS t FROM media_events")["t"].item() <= until


async def test_a_replay_of_a_stream_that_lost_its_head_says_so(
    handle: NatsHandle, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    events = simulate(SimulationConfig(seed=9, users=2, days=1)).events
    await Publisher(handle.nc).publish_many(events)
    await handle.js.purge_stream(STREAM, seq=6)  # 1..5 aged out, and no archive
    caplog.set_level("WARNING", logger="workbench.replay")
    with await replay(EventLog(nc=handle.nc), progress=False) as got:
        assert got.sql("SELECT min(seq) AS s FROM media_events")["s"].item() >= 6
    assert "the log starts at sequence 6" in caplog.text

    # with an archive that ends at 3, messages 4..5 are nowhere: no half-built file is left
    stored = [m async for batch in read_range(handle.nc, 6) for m in batch]
    archive = settings.archive_dir
    archive.mkdir(parents=True)
    write_segment(archive, [Message(s, stored[0].recorded_at, b"x", "audit.x") for s in (1, 2, 3)])
    target = settings.data_dir / "as-of.duckdb"
    with pytest.raises(LogGapError, match=r"4\.\.5"):
        await replay(EventLog(archive, nc=handle.nc), path=target, progress=False)
    assert not target.exists()


# ------------------------------------------------------------------ the Replay object


@pytest.fixture
def demo_log(tmp_path: Path) -> EventLog:
    return simulated_log(tmp_path / "archive", SimulationConfig(seed=4, users=3, days=2))


async def test_slices_give_the_same_rows_as_one_call(demo_log: EventLog) -> None:
    whole = await replay(demo_log, progress=False)
    sliced = await replay(EventLog(demo_log.archive_dir), progress=False, chunk=7)
    with whole, sliced:
        assert_same_projection(sliced, table_rows(whole.con))
        assert whole.counts()["playbacks"] > 5


async def test_until_must_be_timezone_aware_and_the_clock_named(
    demo_log: EventLog, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="until must be timezone-aware"):
        await replay(demo_log, datetime(2026, 1, 5, 21), progress=False)
    with pytest.raises(ValueError, match="clock must be 'recorded' or 'occurred'"):
        await replay(demo_log, clock="wall", progress=False)  # type: ignore[arg-type]
    existing = tmp_path / "taken.duckdb"
    existing.write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"taken\.duckdb exists"):
        await replay(demo_log, path=existing, progress=False)


async def test_a_replay_is_read_only_and_closes(
    demo_log: EventLog,
) -> None:
    got = await replay(demo_log, progress=False)
    assert got.path is None  # an answer from the log's projection, no file of its own
    with pytest.raises(Exception, match="read-only"):
        got.sql("DELETE FROM playback_events")
    assert got.playbacks().height == got.counts()["playbacks"]
    assert got.events()["seq"].is_sorted()
    assert got.audit().height == sum(
        v for k, v in got.counts().items() if k not in ("accepted", "playbacks")
    )
    assert got.playbacks().schema["started_at"] == pl.Datetime("us", "UTC")
    got.close()
    got.close()
    assert got.closed
    with pytest.raises(ValueError, match="closed"):
        got.playbacks()


async def test_a_replay_written_to_a_path_stays_for_later(
    demo_log: EventLog, tmp_path: Path
) -> None:
    target = tmp_path / "as-of.duckdb"
    until = datetime(2026, 1, 5, 23, tzinfo=UTC)
    with await replay(demo_log, until, "occurred", path=target, progress=False) as got:
        expected = table_rows(got.con)
        assert "occurred" in repr(got) and until.isoformat() in repr(got)
    assert target.exists()
    again = Projection(target, read_only=True)
    actual = table_rows(again.con)
    again.close()
    for table in TABLES:
        assert_frame_equal(actual[table], expected[table])


async def test_progress_is_reported_to_a_callable_and_drawn_for_long_logs(
    demo_log: EventLog, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[int, int]] = []
    total = await demo_log.last_seq()
    with await replay(demo_log, progress=lambda done, of: calls.append((done, of))):
        pass
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)

    monkeypatch.setattr(replay_module, "PROGRESS_MIN_MESSAGES", 1)
    again = EventLog(demo_log.archive_dir)  # a log not projected yet
    with await replay(again):
        pass
    assert f"{total:,}/{total:,}" in capsys.readouterr().err
    with await replay(EventLog(demo_log.archive_dir), progress=False):
        pass
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("clock", CLOCKS)
async def test_as_of_from_the_file_equals_the_logs_own_projection(
    demo_log: EventLog, tmp_path: Path, clock: str
) -> None:
    """Workbench.as_of in file mode (the ingestor's file, no replay) answers what the log's
    own projection answers, and a time slider over the workbench draws from it."""
    from workbench import open_data_dir
    from workbench.widgets import TimeSlider

    assert demo_log.archive_dir is not None
    data_dir = demo_log.archive_dir.parent
    with await replay(demo_log, path=data_dir / "analytics.duckdb", progress=False):
        pass  # the whole log's projection, where an ingestor keeps it
    until = datetime(2026, 1, 5, 22, 57, tzinfo=UTC)
    async with open_data_dir(data_dir) as wb:
        assert wb.mode == "file"
        with await wb.as_of(until, clock) as got:  # type: ignore[arg-type]
            assert got.stats.messages == 0  # nothing was projected to answer
            with await replay(demo_log, until, clock, progress=False) as expected:  # type: ignore[arg-type]
                assert_same_projection(got, table_rows(expected.con))
                assert got.last_seq == expected.last_seq
        slider = TimeSlider(wb, start=until - timedelta(hours=1), end=until, clock=clock)  # type: ignore[arg-type]
        shown = await slider.show_at(until)
        assert shown is not None and shown.stats.messages == 0
        assert "answered in" in slider.status.value
        slider.close()
