"""The Tautulli API sync and the Tautulli database import, against a real loopback fake
Tautulli (tests/fakes/tautulli.py) and a real-schema SQLite file, through a real DirectSink
into a real DuckDB projection."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ingestor.dedup import DedupIndex
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.sink import DirectSink
from ingestor.sources.base import Backoff, CircuitBreaker
from ingestor.sources.config import TautulliConfig
from ingestor.sources.http import UpstreamError, UpstreamMisconfigured, UpstreamUnavailable
from ingestor.sources.tautulli.activity import NO_LIVE_ACTIVITY
from ingestor.sources.tautulli.client import TautulliClient
from ingestor.sources.tautulli.db_import import TautulliImportError, import_tautulli_db
from ingestor.sources.tautulli.mapping import ACTIVITY_SOURCE, summary_event_id
from ingestor.sources.tautulli.sync import TautulliSync
from tests.fakes.tautulli import (
    API_KEY,
    OWNER_ID,
    SERVER_ID,
    FakeTautulli,
    Play,
    TautulliDb,
    episode,
)
from workbench import stats

pytestmark = pytest.mark.integration

T0 = int(datetime(2026, 1, 5, 20, 0, tzinfo=UTC).timestamp())
DAY = int(datetime(2026, 1, 6, tzinfo=UTC).timestamp())  # 00:00 UTC


# ---------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def db(tmp_path: Path) -> Iterator[TautulliDb]:
    database = TautulliDb(tmp_path / "tautulli.db")
    yield database
    database.close()


@pytest.fixture
async def fake(db: TautulliDb) -> AsyncIterator[FakeTautulli]:
    server = await FakeTautulli(db).start()
    yield server
    server.knobs.release.set()
    await server.close()


def direct_sink(path: Path) -> DirectSink:
    return DirectSink(Pipeline(Projection(path), DedupIndex()))


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DirectSink]:
    out = direct_sink(tmp_path / "a.duckdb")
    yield out
    out.pipeline.projection.close()


def new_sync(url: str, sink: DirectSink, state: Path, **kwargs: Any) -> TautulliSync:
    options: dict[str, Any] = {
        "sync_interval": 60.0,
        "lookback": None,
        "page_size": 5,
        "activity_interval": 0.01,
        "breaker": CircuitBreaker(threshold=3, reset_timeout=60),
        "backoff": lambda: Backoff(initial=0.01, maximum=0.02, jitter=0),
    }
    options.update(kwargs)
    api_key = options.pop("api_key", API_KEY)
    return TautulliSync(url, api_key, sink, state, **options)


def counts(sink: DirectSink) -> dict[str, int]:
    return sink.pipeline.projection.counts()


def query(sink: DirectSink, sql: str) -> list[tuple]:
    return sink.pipeline.projection.con.execute(sql).fetchall()


def asc_pages(fake: FakeTautulli) -> list[dict[str, str]]:
    """The paging requests of history passes (not the lookups of live sessions)."""
    return [p for p in fake.calls("get_history") if p.get("order_dir") == "asc"]


def seed(db: TautulliDb, n: int, start: int = T0, spacing: int = 3600) -> list[int]:
    """``n`` finished rows, alternately movies (empty show fields) and episodes."""
    ids = []
    for i in range(n):
        began = start + i * spacing
        if i % 2:
            play = episode(
                began,
                began + 2400,
                paused_counter=60,
                view_offset=2_300_000,
                rating_key=70001 + i,
                media_index=i,
                transcode_decision="transcode",
            )
        else:
            play = Play(
                began,
                began + 7000,
                paused_counter=300,
                view_offset=6_500_000,
                rating_key=54321 + i,
                transcode_decision="copy" if i % 4 == 0 else "direct play",
            )
        ids.append(db.add(play))
    return ids


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def zoned(db: TautulliDb, hours: int) -> AsyncIterator[FakeTautulli]:
    """A fake Tautulli running in the zone UTC+``hours`` (its day filters use local dates)."""
    server = await FakeTautulli(db, local_zone=timezone(timedelta(hours=hours))).start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def running(sync: TautulliSync) -> AsyncIterator[asyncio.Event]:
    """Run ``sync`` in a task; stop it (and check it stops) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


# ---------------------------------------------------------------------------------------
# history sync


async def test_history_is_paged_in_ascending_start_order_and_each_row_is_one_summary(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    ids = seed(db, 12)
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        result = await sync.sync_history()
    pages = asc_pages(fake)
    assert [p["start"] for p in pages] == ["0", "5", "10"]
    assert all(
        p["grouping"] == "0"
        and p["include_activity"] == "0"
        and p["order_column"] == "started"
        and p["length"] == "5"
        for p in pages
    )
    assert result.events == 12
    assert counts(sink)["accepted"] == 12 and counts(sink)["playbacks"] == 12
    # rating_key came as an int on most rows and as a str on every third: all are str now
    keys = {r[0] for r in query(sink, "SELECT rating_key FROM media_events_detail")}
    assert keys == {str(54321 + i) for i in range(0, 12, 2)} | {
        str(70001 + i) for i in range(1, 12, 2)
    }
    cur = sink.pipeline.projection.con.execute(
        "SELECT * FROM media_events_detail WHERE session_key = ?", [str(ids[0])]
    )
    movie = dict(zip([d[0] for d in cur.description], cur.fetchall()[0], strict=True))
    assert movie["event_id"] == summary_event_id(SERVER_ID, ids[0])
    assert movie["event_type"] == "summary" and movie["source"] == "tautulli"
    assert movie["server_id"] == SERVER_ID and movie["user_id"] == str(OWNER_ID)
    assert movie["started_at"] == datetime.fromtimestamp(T0, UTC)
    assert movie["stopped_at"] == movie["occurred_at"] == datetime.fromtimestamp(T0 + 7000, UTC)
    assert (movie["play_duration"], movie["paused_counter"]) == (7000 - 300, 300)
    assert movie["transcode_decision"] == "direct stream"  # Tautulli's "copy"
    assert (movie["secure"], movie["local"], movie["relayed"]) == (True, True, False)
    # a movie's empty show fields are "not said" (omitted from the event)
    assert (movie["parent_title"], movie["grandparent_title"], movie["year"]) == (None, None, 1995)
    assert movie["percent_complete"] == round(6_500_000 / (170 * 60_000) * 100)
    show = query(
        sink,
        "SELECT grandparent_title, parent_title, transcode_decision FROM media_events_detail "
        f"WHERE session_key = '{ids[1]}'",
    )
    assert show == [("Northern Harbor", "Season 1", "transcode")]


async def test_a_second_pass_sends_only_rows_it_has_not_read(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 7)
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        assert (await sync.sync_history()).events == 7
        again = await sync.sync_history()
        assert again.rows == 7 and again.events == 0  # re-read the overlap, sent nothing
        db.add(Play(T0 + 10 * 3600, T0 + 11 * 3600, rating_key=999))
        assert (await sync.sync_history()).events == 1
    later = asc_pages(fake)[-1]
    assert later["after"] == "2026-01-04"  # cursor (Jan 6, 02:00) minus two days
    assert counts(sink) == {
        "accepted": 8,
        "playbacks": 8,
        "dropped_event_id": 0,
        "dropped_session_key": 0,
        "linked": 0,
    }


async def test_rows_written_between_page_requests_are_picked_up_exactly_once(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 10)

    def write_rows(page: int) -> None:
        if page == 1:
            # a long session that started before every row read so far ends now (its row
            # shifts every later offset by one), and a new session after all of them
            db.add(Play(T0 - 1800, T0 + 30 * 3600, rating_key=1111, machine_id="tv2"))
            db.add(Play(T0 + 20 * 3600, T0 + 21 * 3600, rating_key=2222))

    fake.knobs.after_page = write_rows
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        first = await sync.sync_history()
        assert first.events == 11  # the early row slipped before the offset: next pass
        fake.knobs.after_page = None
        second = await sync.sync_history()
        assert second.events == 1
    result = counts(sink)
    assert result["accepted"] == 12 and result["playbacks"] == 12
    assert result["dropped_event_id"] == 0  # the re-read boundary row was not sent again
    keys = {r[0] for r in query(sink, "SELECT rating_key FROM playback_events")}
    assert {"1111", "2222"} <= keys


async def test_a_restart_mid_backfill_neither_loses_nor_doubles_a_row(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 40, spacing=1800)
    state = tmp_path / "state.json"
    fake.knobs.hold_page = 4  # the fourth page request hangs: the ingestor dies there
    sync = new_sync(fake.url, sink, state)
    task = asyncio.create_task(sync.run(asyncio.Event()))
    await wait_for(lambda: fake.history_pages >= 4, what="the fourth page request")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert counts(sink)["accepted"] == 15  # three pages were stored
    fake.knobs.hold_page = None
    fake.knobs.release.set()
    requests_before = len(asc_pages(fake))
    async with new_sync(fake.url, sink, state) as restarted:
        await restarted.sync_history()
    resumed = asc_pages(fake)[requests_before]
    assert resumed["start"] == "0" and resumed["after"]  # from the saved cursor, not all
    result = counts(sink)
    assert result["accepted"] == 40 and result["playbacks"] == 40
    assert result["dropped_event_id"] <= 5  # at most one page was sent again
    (distinct,) = query(sink, "SELECT count(DISTINCT session_key) FROM media_events")[0]
    assert distinct == 40


async def test_the_lookback_bounds_the_first_sync_and_widening_it_backfills(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    now = int(time.time())
    db.add(Play(now - 3 * 86400, now - 3 * 86400 + 7000, rating_key=1))
    db.add(Play(now - 7200, now - 600, rating_key=2))
    state = tmp_path / "state.json"
    async with new_sync(fake.url, sink, state, lookback=86400.0) as sync:
        await sync.sync_history()
        await sync.sync_history()
    expected_after = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d")
    assert asc_pages(fake)[0]["after"] in (
        expected_after,
        (datetime.now(UTC) - timedelta(days=3, seconds=60)).strftime("%Y-%m-%d"),
    )
    assert [r[0] for r in query(sink, "SELECT rating_key FROM playback_events")] == ["2"]
    async with new_sync(fake.url, sink, state, lookback=None) as wider:
        await wider.sync_history()
    keys = sorted(r[0] for r in query(sink, "SELECT rating_key FROM playback_events"))
    assert keys == ["1", "2"] and counts(sink)["dropped_event_id"] == 0


async def test_history_passes_leave_out_the_live_sessions_tautulli_lists_by_default(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 4)
    fake.start_live(31, Play(T0 + 1800, 0, rating_key=4242), view_offset=600_000)
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        result = await sync.sync_history()
    assert (result.rows, result.skipped_in_progress, result.events) == (4, 0, 4)


@pytest.mark.parametrize("hours", [-12, 14], ids=["UTC-12", "UTC+14"])
async def test_a_row_written_late_is_read_whatever_zone_tautulli_dates_its_filter_in(
    db: TautulliDb, sink: DirectSink, tmp_path: Path, hours: int
) -> None:
    """Tautulli compares ``after`` with the *local* date of ``started`` (inclusive)."""
    db.add(Play(DAY + 23 * 3600, DAY + 25 * 3600, rating_key=1))
    async with zoned(db, hours) as fake, new_sync(fake.url, sink, tmp_path / "s.json") as sync:
        assert (await sync.sync_history()).events == 1
        # a session begun 22 hours before the cursor ends now: in UTC-12 it began the
        # day before the cursor's UTC date
        db.add(Play(DAY + 3600, DAY + 26 * 3600, rating_key=2))
        assert (await sync.sync_history()).events == 1
    assert counts(sink)["playbacks"] == 2


async def test_in_progress_history_rows_never_become_summaries(
    fake: FakeTautulli, sink: DirectSink, tmp_path: Path
) -> None:
    fake.knobs.leak_in_progress = True
    fake.start_live(31, Play(T0, 0, rating_key=4242), view_offset=600_000)
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        running_pass = await sync.sync_history()
        assert running_pass.skipped_in_progress == 1 and running_pass.events == 0
        row_id = fake.finish(31, T0 + 3600, paused=120)
        finished_pass = await sync.sync_history()
        assert finished_pass.events == 1
    (row,) = query(
        sink,
        "SELECT e.session_key, e.event_type, p.paused_seconds FROM playback_events p "
        "JOIN media_events e USING (correlation_key)",
    )
    assert row == (str(row_id), "summary", 120)


async def test_a_play_group_is_synced_as_its_sessions_with_grouping_0(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    first = db.add(Play(T0, T0 + 1800, view_offset=1_700_000))
    second = db.add(Play(T0 + 7200, T0 + 10800, view_offset=5_000_000, continues=first))
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        await sync.sync_history()
    assert counts(sink)["playbacks"] == 2
    sessions = sorted(r[0] for r in query(sink, "SELECT session_key FROM media_events"))
    assert sessions == sorted([str(first), str(second)])


async def test_grouped_rows_from_a_server_ignoring_grouping_are_reported_not_merged(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    first = db.add(Play(T0, T0 + 1800, view_offset=1_700_000))
    db.add(Play(T0 + 7200, T0 + 10800, view_offset=5_000_000, continues=first))
    db.add(Play(T0 + 20000, T0 + 23000, rating_key=777))
    fake.knobs.ignore_grouping = True
    sync = new_sync(fake.url, sink, tmp_path / "state.json")
    async with sync:
        result = await sync.sync_history()
    assert result.skipped_grouped == 1 and result.events == 1
    assert "grouped history rows" in (sync.health.last_error or "")
    # the database import recovers the group one session at a time
    await import_tautulli_db(db.path, sink, state_path=tmp_path / "import.json")
    assert counts(sink)["playbacks"] == 3


async def test_the_server_and_owner_ids_are_reported_to_the_callback(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seen: list[tuple[str, str | None]] = []
    sync = new_sync(
        fake.url, sink, tmp_path / "state.json", on_server_info=lambda s, o: seen.append((s, o))
    )
    async with sync:
        await sync.sync_history()
        await sync.sync_history()
    assert seen == [(SERVER_ID, str(OWNER_ID))]
    assert sync.health.server_id == SERVER_ID and sync.health.name == f"tautulli:{SERVER_ID}"


# ---------------------------------------------------------------------------------------
# live sessions


async def test_live_transitions_are_emitted_once_per_change_and_link_with_the_history_row(
    fake: FakeTautulli, sink: DirectSink, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    started = int(time.time()) - 120
    live = fake.start_live(7, Play(started, 0, rating_key=5150), view_offset=120_000)
    async with new_sync(fake.url, sink, state) as sync:
        assert (await sync.poll_activity()).events == 1  # play
        assert (await sync.poll_activity()).events == 0  # unchanged: nothing
        live.state, live.view_offset = "paused", 150_000
        assert (await sync.poll_activity()).events == 1  # pause
        live.state = "buffering"
        assert (await sync.poll_activity()).events == 0  # buffering is no transition
        live.state = "paused"
        assert (await sync.poll_activity()).events == 0
    async with new_sync(fake.url, sink, state) as restarted:
        assert (await restarted.poll_activity()).events == 0  # the open session survived
        live.state = "playing"
        assert (await restarted.poll_activity()).events == 1  # resume
        row_id = fake.finish(7, started + 900, paused=40)
        assert (await restarted.poll_activity()).events == 1  # stop
        assert (await restarted.poll_activity()).events == 0
        assert (await restarted.sync_history()).events == 1  # the summary
    kinds = query(sink, "SELECT source, event_type FROM media_events ORDER BY seq")
    assert kinds == [
        (ACTIVITY_SOURCE, "play"),
        (ACTIVITY_SOURCE, "pause"),
        (ACTIVITY_SOURCE, "resume"),
        (ACTIVITY_SOURCE, "stop"),
        ("tautulli", "summary"),
    ]
    (playback,) = query(
        sink,
        "SELECT started_at, stopped_at, paused_seconds, sources, state FROM playback_events",
    )
    assert playback == (
        datetime.fromtimestamp(started, UTC),
        datetime.fromtimestamp(started + 900, UTC),  # the history row timed the stop
        40,  # the summary is authoritative for pause time
        ["tautulli", ACTIVITY_SOURCE],
        "stopped",
    )
    (link,) = query(sink, "SELECT tier, action, event_id FROM dedupe_audit_log")
    assert link == ("correlation", "link", summary_event_id(SERVER_ID, row_id))
    # get_activity names the library (PMS's librarySection*): every live transition has it
    libraries = "SELECT DISTINCT source, library_id, library_name FROM media_events_detail"
    assert set(query(sink, libraries)) == {
        (ACTIVITY_SOURCE, "1", "Movies"),
        ("tautulli", None, None),
    }
    assert query(sink, "SELECT library_id, library_name FROM playback_events") == [("1", "Movies")]


async def test_a_live_session_is_held_back_until_tautulli_lists_its_start(
    fake: FakeTautulli, sink: DirectSink, tmp_path: Path
) -> None:
    started = int(time.time()) - 30
    live = fake.start_live(
        9, Play(started, 0, rating_key=808), view_offset=400_000, state="paused", listed=False
    )
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        assert (await sync.poll_activity()).events == 0
        live.listed = True
        assert (await sync.poll_activity()).events == 2  # play, then the pause it is in
    rows = query(
        sink, "SELECT event_type, started_at, position_ms FROM media_events_detail ORDER BY seq"
    )
    begun = datetime.fromtimestamp(started, UTC)
    assert rows == [("play", begun, 400_000), ("pause", begun, 400_000)]


# ---------------------------------------------------------------------------------------
# failures


async def test_a_rejected_api_key_is_a_clear_error_and_is_not_hammered(
    fake: FakeTautulli, sink: DirectSink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sync = new_sync(fake.url, sink, tmp_path / "state.json", api_key="wrong")
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="ingestor.sources.tautulli"):
        async with running(sync):
            await wait_for(lambda: sync.rounds >= 25, what="25 rounds")
    assert fake.statuses == [400]  # Tautulli says "Invalid apikey" with 400, never 401
    message = f"TAUTULLI_API_KEY rejected by {fake.url}: Invalid apikey"
    assert sync.health.last_error == message
    assert sync.breaker.state == "open"  # the circuit opened on the first answer
    assert [r.getMessage() for r in caplog.records] == [
        f"history sync of {fake.url} failed: {message}"
    ]
    assert time.monotonic() - started >= 24 * 0.01  # the loop waited between rounds


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (
            lambda fake: setattr(fake.knobs, "api_disabled", True),
            "the API of Tautulli at {url} is not enabled: enable it in Settings > Web "
            "Interface > API",
        ),
        (
            lambda fake: setattr(fake, "api_key", "abc"),
            "Tautulli at {url} has no usable API key of its own: API key not generated "
            "correctly: generate one in Settings > Web Interface > API and set "
            "TAUTULLI_API_KEY to it",
        ),
    ],
    ids=["api-disabled", "no-own-key"],
)
async def test_tautulli_refusing_every_call_is_one_clear_error(
    fake: FakeTautulli,
    sink: DirectSink,
    tmp_path: Path,
    setup: Callable[[FakeTautulli], None],
    expected: str,
) -> None:
    setup(fake)
    sync = new_sync(fake.url, sink, tmp_path / "state.json")
    async with running(sync):
        await wait_for(lambda: sync.rounds >= 10, what="10 rounds")
    assert sync.health.last_error == expected.format(url=fake.url)
    assert fake.statuses == [400] and sync.breaker.state == "open"


async def test_an_unknown_command_is_a_configuration_error_not_a_retry(
    fake: FakeTautulli, sink: DirectSink, tmp_path: Path
) -> None:
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        with pytest.raises(UpstreamMisconfigured) as info:
            await sync._api().call("get_recently_watched")
    assert str(info.value) == (
        f"Tautulli at {fake.url} does not know the command get_recently_watched: is it "
        "Tautulli 2.x?"
    )
    assert fake.statuses == [400] and sync.breaker.state == "open"


async def test_server_errors_and_rate_limits_are_retried_until_the_answer_comes(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 3)
    fake.knobs.fail = {"get_history": [500, 429], "get_server_info": [503]}
    sync = new_sync(fake.url, sink, tmp_path / "state.json")
    async with sync:
        result = await sync.sync_history()
    assert result.events == 3 and counts(sink)["playbacks"] == 3
    assert len(fake.calls("get_server_info")) == 2 and len(fake.calls("get_history")) == 3
    assert sync.breaker.state == "closed" and sync.health.last_error is None


async def test_a_dead_tautulli_opens_the_circuit_instead_of_spinning(
    fake: FakeTautulli, sink: DirectSink, tmp_path: Path
) -> None:
    fake.knobs.always_status = 500
    sync = new_sync(fake.url, sink, tmp_path / "state.json")
    async with running(sync):
        await wait_for(lambda: sync.rounds >= 30, what="30 rounds")
    assert len(fake.requests) == 3  # the breaker's threshold, then nothing
    assert sync.breaker.state == "open"
    assert "answered 500" in (sync.health.last_error or "")


async def test_an_unreachable_tautulli_is_an_error_not_a_crash(
    sink: DirectSink, tmp_path: Path
) -> None:
    from tests.conftest import free_port

    sync = new_sync(f"http://127.0.0.1:{free_port()}", sink, tmp_path / "state.json")
    async with running(sync):
        await wait_for(lambda: sync.rounds >= 10, what="10 rounds")
    assert "unreachable" in (sync.health.last_error or "")
    assert sync.requests == 3 and sync.breaker.state == "open"


# ---------------------------------------------------------------------------------------
# Tautulli up, Plex not (or never connected)


def tautulli_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("ingestor.sources.tautulli.")]


async def test_a_plex_that_does_not_answer_is_a_state_of_the_source_not_an_error(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path, caplog
) -> None:
    seed(db, 3)
    fake.knobs.plex = "unreachable"  # get_activity: success, data {}
    sync = new_sync(fake.url, sink, tmp_path / "state.json")
    with caplog.at_level(logging.INFO, logger="ingestor.sources.tautulli"):
        async with running(sync):
            await wait_for(lambda: len(fake.calls("get_activity")) >= 5, what="5 polls")
            during = sync.health.as_dict()
            fake.knobs.plex = "connected"
            await wait_for(lambda: sync.health.state is None, what="the state to end")
            polls = len(fake.calls("get_activity"))
            await wait_for(lambda: len(fake.calls("get_activity")) >= polls + 3, what="3 more")
    assert counts(sink)["playbacks"] == 3  # history synced all along
    assert during["state"] == NO_LIVE_ACTIVITY and during["state_since"]
    assert "its Plex server does not answer" in during["state_detail"]
    assert during["last_error"] is None and sync.health.last_error is None
    records = tautulli_records(caplog)
    assert not [r for r in records if r.levelno >= logging.ERROR]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == [
        f"Tautulli at {fake.url}: Tautulli answers get_activity without sessions: its Plex "
        "server does not answer, so live sessions are not followed (history still syncs)"
    ]
    again = [r.getMessage() for r in records if "live activity again" in r.getMessage()]
    assert again == [f"Tautulli at {fake.url} knows its live activity again"]
    assert sync.health.as_dict()["state"] is None


async def test_an_open_session_outlives_a_plex_outage_and_stops_at_its_history_row(
    fake: FakeTautulli, sink: DirectSink, tmp_path: Path
) -> None:
    started = int(time.time()) - 600
    fake.start_live(7, Play(started, 0, rating_key=5150), view_offset=120_000)
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        assert (await sync.poll_activity()).events == 1  # play
        fake.knobs.plex = "unreachable"
        assert (await sync.poll_activity()).events == 0  # not a stop: nothing is known
        fake.finish(7, started + 300)
        assert (await sync.poll_activity()).events == 0
        fake.knobs.plex = "connected"
        assert (await sync.poll_activity()).events == 1  # now known gone: the stop
    (row,) = query(sink, "SELECT state, stopped_at FROM playback_events")
    assert row == ("stopped", datetime.fromtimestamp(started + 300, UTC))


async def test_a_tautulli_never_connected_to_plex_asks_for_the_server_id_once(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 2)
    fake.knobs.plex = "never_connected"  # pms_identifier "" and get_activity {}
    sync = new_sync(fake.url, sink, tmp_path / "state.json")
    async with running(sync):
        await wait_for(lambda: sync.rounds >= 20, what="20 rounds")
    assert sync.health.last_error == (
        f"Tautulli at {fake.url} reports no Plex server (empty pms_identifier: it was never "
        "connected to Plex): connect it to Plex (Settings > Plex Media Server), or set "
        "TAUTULLI_SERVER_ID to the Plex server's id (its machineIdentifier, the Plex "
        "webhook's Server.uuid)"
    )
    assert [cmd for cmd, _ in fake.requests] == ["get_server_info"]  # then the circuit
    assert counts(sink)["accepted"] == 0


async def test_tautulli_server_id_names_the_server_tautulli_cannot(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path, caplog
) -> None:
    seed(db, 3)
    fake.knobs.plex = "never_connected"
    named = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
    config = TautulliConfig("tautulli", fake.url, API_KEY, lookback=None, server_id=named)
    sync = TautulliSync.from_config(config, data_dir=tmp_path, sink=sink)
    with caplog.at_level(logging.INFO, logger="ingestor.sources.tautulli"):
        async with sync:
            assert (await sync.sync_history()).events == 3
            await sync.poll_activity()
            fake.knobs.plex = "connected"  # connected later: Tautulli's own id differs
            assert (await sync.sync_history()).events == 0
            await sync.sync_history()
    servers = {r[0] for r in query(sink, "SELECT server_id FROM media_events")}
    assert servers == {named}  # the events keep the named id: nothing doubles
    assert sync.health.server_id == named and sync.health.last_error is None
    assert sync.health.state == NO_LIVE_ACTIVITY  # the poll ran while Plex was away
    said = [r.getMessage() for r in tautulli_records(caplog) if r.levelno >= logging.INFO]
    assert (
        said.count(
            f"Tautulli at {fake.url} reports no Plex server yet: using TAUTULLI_SERVER_ID {named}"
        )
        == 1
    )
    assert (
        said.count(
            f"Tautulli at {fake.url} reports Plex server {SERVER_ID}, TAUTULLI_SERVER_ID says "
            f"{named}: keeping {named} (event ids depend on it); unset TAUTULLI_SERVER_ID to "
            "follow Tautulli"
        )
        == 1
    )


async def test_the_status_endpoint_shows_the_no_live_activity_state(
    tmp_path: Path, settings
) -> None:
    from ingestor.app import run_service
    from ingestor.sources.config import SourcesConfig

    db = TautulliDb(tmp_path / "tautulli.db")
    seed(db, 2)
    fake = await FakeTautulli(db).start()
    fake.knobs.plex = "unreachable"
    config = SourcesConfig(
        tautulli=[TautulliConfig("tautulli", fake.url, API_KEY, sync_interval=3600, lookback=None)]
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    service = asyncio.create_task(run_service(settings, config, ready=ready.set, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        async with aiohttp.ClientSession() as http:

            async def source() -> dict[str, Any]:
                async with http.get(f"http://127.0.0.1:{settings.http_port}/status") as resp:
                    return (await resp.json())["sources"][0]

            deadline = time.monotonic() + 30
            while (current := await source())["state"] is None:
                assert time.monotonic() < deadline, current
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(service, 60)
        await fake.close()
        db.close()
    assert current["state"] == NO_LIVE_ACTIVITY and current["last_error"] is None
    assert current["events_published"] == 2 and current["name"] == f"tautulli:{SERVER_ID}"


async def test_an_invalid_row_is_skipped_and_the_others_are_ingested(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 2)
    bad = db.add(Play(T0 + 9000, T0 + 9999, title="", rating_key=5))
    seed(db, 2, start=T0 + 20000)
    sync = new_sync(fake.url, sink, tmp_path / "state.json")
    async with sync:
        result = await sync.sync_history()
    assert result.invalid == 1 and result.events == 4
    assert f"history row {bad}" in (sync.health.last_error or "")
    imported = direct_sink(tmp_path / "b.duckdb")
    outcome = await import_tautulli_db(db.path, imported, state_path=None)
    assert (outcome.invalid, outcome.stored) == (1, 4)


# ---------------------------------------------------------------------------------------
# the fake answers as Tautulli v2.17.2 does (tests/fakes/tautulli.py names the source)


async def ask(fake: FakeTautulli, **params: Any) -> tuple[int, dict[str, Any]]:
    query = {"apikey": API_KEY, **{k: str(v) for k, v in params.items()}}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{fake.url}/api/v2", params=query) as resp,
    ):
        return resp.status, (await resp.json())["response"]


async def test_refusals_are_400_told_apart_by_the_message(fake: FakeTautulli) -> None:
    assert await ask(fake, cmd="get_history", apikey="wrong") == (
        400,
        {"result": "error", "message": "Invalid apikey", "data": {}},
    )
    status, unknown = await ask(fake, cmd="get_nothing", apikey="wrong")
    assert status == 400 and unknown["message"].startswith("Unknown command: get_nothing. ")
    fake.knobs.api_disabled = True
    assert (await ask(fake, cmd="get_history", apikey="wrong"))[1]["message"] == (
        "API not enabled"  # the switch is checked before the key
    )
    fake.knobs.api_disabled = False
    assert await ask(fake, cmd="get_history", start="x") == (
        500,
        {"result": "error", "message": "Check the logs for errors", "data": {}},
    )


async def test_without_plex_activity_is_an_empty_success_and_the_server_id_empty(
    fake: FakeTautulli,
) -> None:
    assert (await ask(fake, cmd="get_activity"))[1]["data"]["sessions"] == []
    fake.knobs.plex = "unreachable"
    assert await ask(fake, cmd="get_activity") == (
        200,
        {"result": "success", "message": None, "data": {}},
    )
    assert (await ask(fake, cmd="get_server_info"))[1]["data"]["pms_identifier"]
    fake.knobs.plex = "never_connected"
    _, info = await ask(fake, cmd="get_server_info")
    assert info["data"]["pms_identifier"] == "" and "pms_is_remote" not in info["data"]


async def test_grouping_and_activity_change_the_filtered_count_not_the_total(
    fake: FakeTautulli, db: TautulliDb
) -> None:
    first = db.add(Play(DAY, DAY + 1800, view_offset=1_700_000))
    db.add(Play(DAY + 7200, DAY + 9000, view_offset=5_000_000, continues=first))
    db.add(Play(DAY + 20000, DAY + 23000, rating_key=777))
    fake.start_live(3, Play(DAY + 30000, 0, rating_key=888))
    found = {}
    for grouping, activity in ((None, None), (0, None), (1, 0), (0, 0)):
        params = {"grouping": grouping, "include_activity": activity}
        _, answer = await ask(
            fake, cmd="get_history", **{k: v for k, v in params.items() if v is not None}
        )
        data = answer["data"]
        found[(grouping, activity)] = (data["recordsFiltered"], data["recordsTotal"])
    # Tautulli's defaults group history and list live sessions; the total is every row
    assert found == {(None, None): (3, 3), (0, None): (4, 3), (1, 0): (2, 3), (0, 0): (3, 3)}


async def test_day_filters_are_inclusive_local_dates_applied_before_grouping(
    db: TautulliDb,
) -> None:
    # 03:00 UTC on the 6th is the 5th in Tautulli's zone (UTC-5)
    first = db.add(Play(DAY + 3 * 3600, DAY + 4 * 3600, view_offset=100_000))
    second = db.add(Play(DAY + 6 * 3600, DAY + 7 * 3600, view_offset=900_000, continues=first))
    async with zoned(db, -5) as fake:
        answers = [
            (await ask(fake, cmd="get_history", **params))[1]["data"]
            for params in (
                {"after": "2026-01-06"},
                {"before": "2026-01-05", "grouping": 0},
                {"after": "2026-01-05", "before": "2026-01-06"},
            )
        ]
    after, before, both = answers
    (row,) = after["data"]
    assert (row["group_count"], row["group_ids"], row["started"]) == (
        1,
        str(second),
        DAY + 6 * 3600,
    )
    assert [r["row_id"] for r in before["data"]] == [first]
    (group,) = both["data"]
    assert group["group_count"] == 2 and group["play_duration"] == 7200
    assert both["filter_duration"] == "2 hrs"


# ---------------------------------------------------------------------------------------
# database import

_SAME_FIELDS = (
    "event_id, event_type, occurred_at, source, server_id, session_key, user_id, username, "
    "friendly_name, user_thumb, media_type, title, parent_title, grandparent_title, "
    "rating_key, year, "
    "started_at, stopped_at, play_duration, paused_counter, platform, "
    "player, product, machine_id, ip_address, location_type, transcode_decision, secure, "
    "local, relayed"
)


async def test_the_import_makes_the_same_events_as_the_api_sync(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 9)
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        await sync.sync_history()
    imported = direct_sink(tmp_path / "b.duckdb")
    result = await import_tautulli_db(db.path, imported, state_path=None)
    assert (result.server_id, result.stored, result.rows_read) == (SERVER_ID, 9, 9)
    order = f"SELECT {_SAME_FIELDS} FROM media_events_detail ORDER BY event_id"
    assert query(sink, order) == query(imported, order)
    # the API gives the completion rounded to a whole number, the database its exact share
    percent = "SELECT percent_complete FROM media_events_detail ORDER BY event_id"
    rounded = [(float(round(exact)),) for (exact,) in query(imported, percent)]
    assert query(sink, percent) == rounded != query(imported, percent)
    # the database knows more than the API row: stream details and the playhead
    details = query(
        imported, "SELECT video_resolution, position_ms FROM media_events_detail LIMIT 1"
    )
    assert details[0][0] == "1080" and details[0][1] > 0
    # and the library (session_history.section_id, its library_sections name); get_history's
    # rows name none, so the API sync's summaries leave it unknown
    libraries = "SELECT DISTINCT media_type, library_id, library_name FROM media_events_detail"
    assert sorted(query(imported, libraries)) == [
        ("episode", "2", "TV Shows"),
        ("movie", "1", "Movies"),
    ]
    assert {row[1:] for row in query(sink, libraries)} == {(None, None)}


async def test_an_old_database_keeps_the_section_in_metadata_and_may_lack_names(
    db: TautulliDb, tmp_path: Path
) -> None:
    """Before Tautulli v2.7.0 section_id lived in session_history_metadata; a database
    without library_sections names no library."""
    seed(db, 2)
    db.con.execute("ALTER TABLE session_history_metadata ADD COLUMN section_id INTEGER")
    db.con.execute(
        "UPDATE session_history_metadata SET section_id = "
        "(SELECT section_id FROM session_history h WHERE h.id = session_history_metadata.id)"
    )
    db.con.execute("ALTER TABLE session_history DROP COLUMN section_id")
    db.con.execute("DELETE FROM library_sections")
    db.con.commit()
    imported = direct_sink(tmp_path / "old.duckdb")
    await import_tautulli_db(db.path, imported, server_id=SERVER_ID, state_path=None)
    libraries = "SELECT DISTINCT media_type, library_id, library_name FROM media_events_detail"
    assert sorted(query(imported, libraries)) == [("episode", "2", None), ("movie", "1", None)]


async def test_importing_after_the_sync_adds_nothing(
    fake: FakeTautulli, db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 6)
    async with new_sync(fake.url, sink, tmp_path / "state.json") as sync:
        await sync.sync_history()
    before = counts(sink)
    result = await import_tautulli_db(db.path, sink, state_path=tmp_path / "import.json")
    assert (result.stored, result.duplicate) == (0, 6)
    after = counts(sink)
    assert (after["accepted"], after["playbacks"]) == (before["accepted"], before["playbacks"])
    assert after["dropped_event_id"] == 6


async def test_importing_the_same_file_twice_adds_nothing(
    db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 7)
    state = tmp_path / "import.json"
    first = await import_tautulli_db(db.path, sink, state_path=state)
    assert (first.rows_read, first.stored) == (7, 7)
    again = await import_tautulli_db(db.path, sink, state_path=state)
    assert again.rows_read == 0 and again.resumed_after == first.last_id
    forgotten = await import_tautulli_db(db.path, sink, state_path=tmp_path / "other.json")
    assert (forgotten.rows_read, forgotten.stored, forgotten.duplicate) == (7, 0, 7)
    assert counts(sink)["accepted"] == 7 and counts(sink)["playbacks"] == 7


async def test_a_play_is_watched_on_its_exact_share_not_a_rounded_one(
    db: TautulliDb, sink: DirectSink
) -> None:
    """Tautulli compares the position with 85 % of the length: a movie stopped at 84.79 %
    is not watched, though its history shows 85 (the defect: the import stored the rounded
    share, and "watched" then tested it)."""
    length = 10_000_000  # ms
    shares = [84.79, 84.99, 85.0, 85.01]
    for i, share in enumerate(shares):
        began = T0 + i * 4 * 3600
        db.add(
            Play(
                began,
                began + 9000,
                view_offset=round(share * length / 100),
                duration_ms=length,
                rating_key=60001 + i,
            )
        )
    await import_tautulli_db(db.path, sink, state_path=None)
    con = sink.pipeline.projection.con
    stored = "SELECT percent_complete FROM playback_events ORDER BY started_at"
    assert [row[0] for row in query(sink, stored)] == pytest.approx(shares, abs=1e-9)
    watched = stats.plays(con, min_seconds=0).sort("started_at")["watched"].to_list()
    assert watched == [False, False, True, True]
    rate = stats.completion(con, min_seconds=0).row(0, named=True)
    assert (rate["plays"], rate["watched"]) == (4, 2)


class _Interrupted(Exception):
    pass


async def test_an_interrupted_import_resumes_after_the_last_stored_batch(
    db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    ids = seed(db, 10)
    state = tmp_path / "import.json"
    reports: list[tuple[int, int]] = []

    def die_after_two_batches(done: int, total: int) -> None:
        reports.append((done, total))
        if len(reports) == 2:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        await import_tautulli_db(
            db.path, sink, batch_size=4, progress=die_after_two_batches, state_path=state
        )
    assert counts(sink)["accepted"] == 8
    rest: list[tuple[int, int]] = []
    result = await import_tautulli_db(
        db.path, sink, batch_size=4, progress=lambda d, t: rest.append((d, t)), state_path=state
    )
    assert result.resumed_after == ids[7] and result.rows_read == 2 and result.stored == 2
    assert reports == [(4, 10), (8, 10)] and rest == [(10, 10)]
    assert counts(sink)["accepted"] == 10 and counts(sink)["dropped_event_id"] == 0


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("tautulli.db*")
    }


async def test_the_import_reads_a_live_wal_database_without_writing_it(
    db: TautulliDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed(db, 3)  # committed to the -wal file: "Tautulli" still has it open
    before = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.glob("tautulli.db*")
    }
    assert "tautulli.db-wal" in before
    result = await import_tautulli_db(db.path, sink, state_path=None)
    assert result.stored == 3
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.glob("tautulli.db*")
    }
    assert after["tautulli.db"] == before["tautulli.db"]
    assert after["tautulli.db-wal"] == before["tautulli.db-wal"]


async def test_the_server_id_comes_from_the_argument_or_the_database_or_a_clear_error(
    sink: DirectSink, tmp_path: Path
) -> None:
    anonymous = TautulliDb(tmp_path / "anonymous.db", server_id=None)
    anonymous.add(Play(T0, T0 + 3600))
    with pytest.raises(TautulliImportError, match="pass the server id"):
        await import_tautulli_db(anonymous.path, sink, state_path=None)
    given = await import_tautulli_db(anonymous.path, sink, server_id="abc123", state_path=None)
    assert given.server_id == "abc123" and given.stored == 1
    moved = TautulliDb(tmp_path / "moved.db", server_id="old-server")
    moved.con.execute(
        "INSERT INTO library_sections (server_id, section_id, section_name) "
        "VALUES ('new-server', 7, 'Movies')"
    )
    moved.con.commit()
    with pytest.raises(TautulliImportError, match="several Plex servers"):
        await import_tautulli_db(moved.path, sink, state_path=None)
    not_tautulli = tmp_path / "other.db"
    TautulliDb(not_tautulli).con.execute("DROP TABLE session_history_metadata")
    with pytest.raises(TautulliImportError, match="not a Tautulli database"):
        await import_tautulli_db(not_tautulli, sink, state_path=None)
    for database in (anonymous, moved):
        database.close()


@pytest.mark.parametrize("status", [200, 429])
async def test_a_deeply_nested_answer_is_a_tautulli_error_not_a_recursion_error(
    status: int,
) -> None:
    # found by tests/fuzz: msgspec raises RecursionError on JSON nested past ~1,000 levels,
    # which escaped the client as an unexpected exception instead of a TautulliError
    body = b'{"response":{"result":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"

    async def answer(_: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v2", answer)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        url = str(server.make_url("")).rstrip("/")
        client = TautulliClient(url, "key", http, breaker=CircuitBreaker(), attempts=1)
        with pytest.raises(UpstreamError) as info:
            await client.call("get_history")
    assert type(info.value) is (UpstreamMisconfigured if status == 200 else UpstreamUnavailable)
