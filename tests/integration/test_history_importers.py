"""The history importers (``ingestor import plex-history | playback-reporting | jellystat``)
against fixtures in the real formats (tests/fakes/history_sources.py says where each format
comes from): a real-schema SQLite file, a Jellystat-shaped backup, a fake PMS over real HTTP;
through a real DirectSink into a real DuckDB projection."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ingestor.dedup import DedupIndex
from ingestor.events import decode_event
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.sink import DirectSink
from ingestor.sources.jellyfin.jellystat_import import JellystatImportError, import_jellystat
from ingestor.sources.jellyfin.mapping import observe_session
from ingestor.sources.jellyfin.playback_reporting_import import (
    PlaybackReportingImportError,
    import_playback_reporting,
)
from ingestor.sources.jellyfin.session_machine import SessionMachine
from ingestor.sources.plex.history_import import PlexHistoryImportError, import_plex_history
from tests.fakes.history_sources import (
    DEVICE_ID,
    JELLYFIN_SERVER_ID,
    JELLYFIN_USER_ID,
    PLEX_SERVER_ID,
    Activity,
    FakePlexHistory,
    PlaybackReportingDb,
    history_entry,
    jellystat_activity,
    jellystat_backup,
    library_item,
    plugin_date,
)
from tests.fakes.jellyfin import movie, session

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
ITEM = "9f2e4d6c8b0a4e1f9d3c5b7a9e1f3d5c"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DirectSink]:
    out = DirectSink(Pipeline(Projection(tmp_path / "a.duckdb"), DedupIndex()))
    yield out
    out.pipeline.projection.close()


def counts(sink: DirectSink) -> dict[str, int]:
    return sink.pipeline.projection.counts()


def query(sink: DirectSink, sql: str) -> list[tuple]:
    return sink.pipeline.projection.con.execute(sql).fetchall()


def stored(sink: DirectSink, *fields: str, where: str = "") -> list[tuple]:
    """``fields`` of each stored event, decoded from its payload."""
    rows = query(sink, f"SELECT payload FROM media_events {where} ORDER BY seq")
    events = [decode_event(row[0].encode()) for row in rows]
    return [tuple(getattr(e, f) for f in fields) for e in events]


class _Interrupted(Exception):
    pass


def die_after(batches: int, reports: list[tuple[int, int]]):
    def progress(done: int, total: int) -> None:
        reports.append((done, total))
        if len(reports) == batches:
            raise _Interrupted

    return progress


# ---------------------------------------------------------------------------------------
# Playback Reporting


@pytest.fixture
def pr_db(tmp_path: Path) -> Iterator[PlaybackReportingDb]:
    db = PlaybackReportingDb(tmp_path / "playback_reporting.db")
    yield db
    db.close()


def seed_pr(db: PlaybackReportingDb, n: int) -> None:
    for i in range(n):
        db.add(Activity(plugin_date((T0 + timedelta(hours=i)).replace(tzinfo=None)), f"{i:032x}"))


async def test_playback_reporting_twice_adds_nothing(
    pr_db: PlaybackReportingDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed_pr(pr_db, 5)
    kw = {"server_id": JELLYFIN_SERVER_ID, "state_path": tmp_path / "s.json"}
    first = await import_playback_reporting(pr_db.path, sink, **kw)
    assert (first.rows_read, first.stored, first.invalid) == (5, 5, 0)
    again = await import_playback_reporting(pr_db.path, sink, **kw)
    assert (again.rows_read, again.stored) == (0, 0) and again.resumed
    forgotten = await import_playback_reporting(
        pr_db.path, sink, server_id=JELLYFIN_SERVER_ID, state_path=None
    )
    assert (forgotten.rows_read, forgotten.stored, forgotten.duplicate) == (5, 0, 5)
    assert counts(sink)["accepted"] == 5 and counts(sink)["playbacks"] == 5


async def test_playback_reporting_maps_a_row_in_the_servers_zone(
    pr_db: PlaybackReportingDb, sink: DirectSink
) -> None:
    paris = ZoneInfo("Europe/Paris")
    pr_db.add(
        Activity(
            "2026-01-05 21:00:20.5",  # local time in Paris = 20:00:20.5 UTC
            ITEM,
            item_name="Northern Harbor - s01e02 - The Light",
            item_type="Episode",
            method="Transcode (v:h264 a:direct)",
            duration=1500,
        )
    )
    await import_playback_reporting(
        pr_db.path, sink, server_id=JELLYFIN_SERVER_ID, tz=paris, state_path=None
    )
    (row,) = stored(
        sink, "source", "server_id", "user_id", "rating_key", "title", "grandparent_title",
        "media_type", "started_at", "play_duration", "transcode_decision", "player", "machine_id",
    )  # fmt: skip
    assert row == (
        "playback-reporting",
        JELLYFIN_SERVER_ID,
        JELLYFIN_USER_ID,
        ITEM,
        "The Light",
        "Northern Harbor",
        "episode",
        datetime(2026, 1, 5, 20, 0, 0, 500000, tzinfo=UTC),  # DateCreated - 20 s
        1500,
        "transcode",
        "Chrome",
        "",  # the plugin records no device id
    )


async def test_an_interrupted_playback_reporting_import_resumes(
    pr_db: PlaybackReportingDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed_pr(pr_db, 10)
    state, reports = tmp_path / "s.json", []
    with pytest.raises(_Interrupted):
        await import_playback_reporting(
            pr_db.path,
            sink,
            server_id=JELLYFIN_SERVER_ID,
            batch_size=4,
            progress=die_after(2, reports),
            state_path=state,
        )
    assert counts(sink)["accepted"] == 8
    rest: list[tuple[int, int]] = []
    result = await import_playback_reporting(
        pr_db.path,
        sink,
        server_id=JELLYFIN_SERVER_ID,
        batch_size=4,
        progress=lambda d, t: rest.append((d, t)),
        state_path=state,
    )
    assert result.resumed and (result.rows_read, result.stored) == (2, 2)
    assert reports == [(4, 10), (8, 10)] and rest == [(10, 10)]
    assert counts(sink)["accepted"] == 10 and counts(sink)["dropped_event_id"] == 0


async def test_playback_reporting_bad_input_is_a_clear_error_and_bad_rows_are_skipped(
    pr_db: PlaybackReportingDb, sink: DirectSink, tmp_path: Path
) -> None:
    seed_pr(pr_db, 2)
    pr_db.add(Activity("yesterday", ITEM))
    pr_db.add(Activity(plugin_date(datetime(2026, 1, 9, 8, 0)), ITEM, duration="lots"))
    result = await import_playback_reporting(
        pr_db.path, sink, server_id=JELLYFIN_SERVER_ID, state_path=None
    )
    assert (result.rows_read, result.stored, result.invalid) == (4, 2, 2)
    with pytest.raises(PlaybackReportingImportError, match="pass --server-id"):
        await import_playback_reporting(pr_db.path, sink, server_id=None, state_path=None)
    with pytest.raises(PlaybackReportingImportError, match="no such file"):
        await import_playback_reporting(tmp_path / "nope.db", sink, server_id="s", state_path=None)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(PlaybackReportingImportError, match=r"garbage\.db is not a Playback"):
        await import_playback_reporting(garbage, sink, server_id="s", state_path=None)
    pr_db.con.execute("DROP TABLE PlaybackActivity")
    pr_db.con.commit()
    with pytest.raises(PlaybackReportingImportError, match="no table PlaybackActivity"):
        await import_playback_reporting(pr_db.path, sink, server_id="s", state_path=None)


# ---------------------------------------------------------------------------------------
# Jellystat


def seed_jellystat(path: Path, n: int) -> Path:
    rows = [
        jellystat_activity(
            f"0a1b2c3d-0000-4000-8000-{i:012d}",
            ended=T0 + timedelta(hours=i, seconds=3600),
            seconds=3600,
            item_id=f"{i:032x}",
        )
        for i in range(n)
    ]
    return jellystat_backup(path, list(reversed(rows)))  # file order is not write order


async def test_jellystat_twice_adds_nothing(sink: DirectSink, tmp_path: Path) -> None:
    backup = seed_jellystat(tmp_path / "backup_2026-01-06 10-00-00.json", 6)
    state = tmp_path / "s.json"
    first = await import_jellystat(backup, sink, state_path=state)
    assert (first.server_id, first.rows_read, first.stored) == (JELLYFIN_SERVER_ID, 6, 6)
    again = await import_jellystat(backup, sink, state_path=state)
    assert (again.rows_read, again.stored) == (0, 0)
    forgotten = await import_jellystat(backup, sink, state_path=None)
    assert (forgotten.stored, forgotten.duplicate) == (0, 6)
    assert counts(sink)["accepted"] == 6 and counts(sink)["playbacks"] == 6


async def test_jellystat_maps_an_episode_row(sink: DirectSink, tmp_path: Path) -> None:
    episode_id, series_id = "e" * 32, "5" * 32
    row = jellystat_activity(
        "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        ended=T0 + timedelta(minutes=45),
        seconds=2400,
        item_id=series_id,
        episode_id=episode_id,
        name="The Light",
        series="Northern Harbor",
        position_s=2400,
    )
    items = [library_item(series_id, "Series"), library_item(episode_id, "Episode", 48)]
    backup = jellystat_backup(tmp_path / "b.json", [row], items=items)
    await import_jellystat(backup, sink, state_path=None)
    (event,) = stored(
        sink, "rating_key", "media_type", "title", "grandparent_title", "started_at",
        "stopped_at", "play_duration", "machine_id", "ip_address", "position_ms",
        "media_duration", "percent_complete",
    )  # fmt: skip
    assert event == (
        episode_id,  # the episode, not the series Jellystat files it under
        "episode",
        "The Light",
        "Northern Harbor",
        T0 + timedelta(minutes=5),  # ended - PlaybackDuration
        T0 + timedelta(minutes=45),
        2400,
        DEVICE_ID,
        "192.168.1.20",
        2_400_000,
        48 * 60,
        2400 * 100 / (48 * 60),  # the exact share, never rounded
    )


async def test_an_interrupted_jellystat_import_resumes(sink: DirectSink, tmp_path: Path) -> None:
    backup = seed_jellystat(tmp_path / "b.json", 10)
    state, reports = tmp_path / "s.json", []
    with pytest.raises(_Interrupted):
        await import_jellystat(
            backup, sink, batch_size=3, progress=die_after(2, reports), state_path=state
        )
    assert counts(sink)["accepted"] == 6
    result = await import_jellystat(backup, sink, batch_size=3, state_path=state)
    assert result.resumed and (result.rows_read, result.stored) == (4, 4)
    assert counts(sink)["accepted"] == 10 and counts(sink)["dropped_event_id"] == 0


async def test_jellystat_bad_input_is_a_clear_error_and_bad_rows_are_skipped(
    sink: DirectSink, tmp_path: Path
) -> None:
    good = jellystat_activity("a", ended=T0, seconds=60, item_id=ITEM)
    no_user = jellystat_activity("b", ended=T0, seconds=60, item_id=ITEM) | {"UserId": None}
    bad_time = jellystat_activity("c", ended=T0, seconds=60, item_id=ITEM)
    bad_time["ActivityDateInserted"] = "last tuesday"
    backup = jellystat_backup(tmp_path / "b.json", [good, no_user, bad_time])
    result = await import_jellystat(backup, sink, state_path=None)
    assert (result.rows_read, result.stored, result.invalid) == (3, 1, 2)
    without = jellystat_backup(tmp_path / "no-activity.json", None)
    with pytest.raises(JellystatImportError, match=r"no-activity\.json holds no jf_playback"):
        await import_jellystat(without, sink, state_path=None)
    (tmp_path / "cut.json").write_text('[{"jf_playback_activity": [')
    with pytest.raises(JellystatImportError, match=r"cut\.json is not a readable JSON"):
        await import_jellystat(tmp_path / "cut.json", sink, state_path=None)
    (tmp_path / "obj.json").write_text('{"jf_playback_activity": []}')
    with pytest.raises(JellystatImportError, match="not a Jellystat backup"):
        await import_jellystat(tmp_path / "obj.json", sink, state_path=None)
    anonymous = jellystat_activity("d", ended=T0, seconds=60, item_id=ITEM, server_id=None)
    nameless = jellystat_backup(tmp_path / "anon.json", [anonymous])
    with pytest.raises(JellystatImportError, match="pass --server-id"):
        await import_jellystat(nameless, sink, state_path=None)


# ---------------------------------------------------------------------------------------
# one playback, known to two importers and a live source


def live_jellyfin_playback(start: datetime, end: datetime, item_id: str) -> list:
    """The play and stop the live Jellyfin source emits for one playback."""
    machine = SessionMachine("jellyfin", progress_interval=None)
    entry = session(
        server_id=JELLYFIN_SERVER_ID,
        session_id="a" * 32,
        user_id=JELLYFIN_USER_ID,
        item=movie(item_id),
        device_id=DEVICE_ID,
    )
    seen = observe_session(entry)
    assert seen is not None
    return machine.snapshot(JELLYFIN_SERVER_ID, [seen], start) + machine.snapshot(
        JELLYFIN_SERVER_ID, [], end
    )


async def test_one_playback_known_live_and_to_two_importers_links_where_the_device_is_known(
    pr_db: PlaybackReportingDb, sink: DirectSink, tmp_path: Path
) -> None:
    start, end = T0, T0 + timedelta(minutes=50)
    await sink.emit(live_jellyfin_playback(start, end, ITEM))
    # Jellystat's own row of it (written at the end, 50 min played, 2 s late)...
    live_row = jellystat_activity(
        "11111111-2222-4333-8444-555555555555", ended=end + timedelta(seconds=2), seconds=3000,
        item_id=ITEM,
    )  # fmt: skip
    # ...and the Playback Reporting row of it (20 s after the start, local time = UTC),
    pr_db.add(Activity(plugin_date((start + timedelta(seconds=21)).replace(tzinfo=None)), ITEM))
    # which Jellystat also imported from the plugin (Id = the plugin's rowid, no DeviceId)
    imported_row = jellystat_activity(
        "1", ended=start + timedelta(seconds=21), seconds=3000, item_id=ITEM, device_id=None,
        server_id=None, imported=True,
    )  # fmt: skip
    backup = jellystat_backup(tmp_path / "b.json", [live_row, imported_row])
    for _ in range(2):
        await import_jellystat(backup, sink, state_path=None)
        await import_playback_reporting(
            pr_db.path, sink, server_id=JELLYFIN_SERVER_ID, state_path=None
        )
    links = query(
        sink,
        "SELECT e.source, a.tier, a.action FROM dedupe_audit_log a"
        " JOIN media_events e USING (event_id) WHERE a.tier = 'correlation'",
    )
    # the Jellystat row with a DeviceId links to the live playback; the two device-less
    # records of the plugin (its own file, and Jellystat's copy) link with each other
    assert sorted(links) == [
        ("jellystat", "correlation", "link"),
        ("playback-reporting", "correlation", "link"),
    ]
    playbacks = query(sink, "SELECT sources, machine_id FROM playback_events")
    assert sorted((sorted(s), m or "") for s, m in playbacks) == [
        (["jellyfin", "jellystat"], DEVICE_ID),
        (["jellystat", "playback-reporting"], ""),
    ]
    assert counts(sink)["dropped_event_id"] == 3  # the second runs: nothing added


# ---------------------------------------------------------------------------------------
# Plex history


async def test_plex_history_twice_adds_nothing_and_pages(sink: DirectSink, tmp_path: Path) -> None:
    async with FakePlexHistory() as pms:
        pms.entries = [history_entry(i, int(T0.timestamp()) + 600 * i) for i in range(1, 8)]
        state = tmp_path / "s.json"
        kw = {"owner_id": "8312457", "page_size": 3, "state_path": state}
        first = await import_plex_history(pms.url, pms.token, sink, **kw)
        assert (first.server_id, first.rows_read, first.stored) == (PLEX_SERVER_ID, 7, 7)
        assert [r[0] for r in pms.requests] == [0, 3, 6]
        assert all(r[2]["sort"] == "viewedAt:asc" for r in pms.requests)
        again = await import_plex_history(pms.url, pms.token, sink, **kw)
        assert again.stored == 0 and again.resumed
        pms.entries.append(history_entry(8, int(T0.timestamp()) + 6000))
        later = await import_plex_history(pms.url, pms.token, sink, **kw)
        assert later.stored == 1
        forgotten = await import_plex_history(pms.url, pms.token, sink, state_path=None)
        assert (forgotten.stored, forgotten.duplicate) == (0, 8)
    (row,) = stored(
        sink, "source", "server_id", "session_key", "user_id", "rating_key", "title",
        "grandparent_title", "started_at", "stopped_at", "play_duration", "machine_id",
        "library_id", "library_name", where="WHERE session_key = '1'",
    )  # fmt: skip
    assert row == (
        "plex-history", PLEX_SERVER_ID, "1", "8312457", "54321", "The Noise That Blue Makes",
        "Taskmaster", T0 + timedelta(seconds=600), None, None, "", "2", "",
    )  # fmt: skip
    assert counts(sink)["accepted"] == 8 and counts(sink)["playbacks"] == 8


async def test_an_interrupted_plex_history_import_resumes_within_one_second(
    sink: DirectSink, tmp_path: Path
) -> None:
    viewed = int(T0.timestamp())
    async with FakePlexHistory() as pms:
        # five entries in one second, then two later: the cursor must not lose any
        pms.entries = [history_entry(i, viewed) for i in range(1, 6)]
        pms.entries += [history_entry(6, viewed + 60), history_entry(7, viewed + 120)]
        state, reports = tmp_path / "s.json", []
        with pytest.raises(_Interrupted):
            await import_plex_history(
                pms.url, pms.token, sink, page_size=2, progress=die_after(2, reports),
                state_path=state,
            )  # fmt: skip
        assert counts(sink)["accepted"] == 4
        result = await import_plex_history(pms.url, pms.token, sink, page_size=2, state_path=state)
        assert result.resumed and result.stored == 3 and result.duplicate == 0
        assert pms.requests[-1][2]["viewedAt>"] == str(viewed)
    assert counts(sink)["accepted"] == 7 and counts(sink)["dropped_event_id"] == 0


async def test_plex_history_until_and_bad_input(sink: DirectSink, tmp_path: Path) -> None:
    viewed = int(T0.timestamp())
    async with FakePlexHistory() as pms:
        pms.entries = [history_entry(i, viewed + 60 * i) for i in range(1, 5)]
        pms.entries.append(history_entry(9, viewed) | {"historyKey": None})
        result = await import_plex_history(
            pms.url, pms.token, sink, until=T0 + timedelta(seconds=180), state_path=None
        )
        assert (result.stored, result.invalid) == (2, 1)  # 60 s and 120 s; 180 s is excluded
        with pytest.raises(PlexHistoryImportError, match="token was rejected"):
            await import_plex_history(pms.url, "wrong", sink, state_path=None)
        gone = pms.url
    with pytest.raises(PlexHistoryImportError, match="does not answer"):
        await import_plex_history(gone, pms.token, sink, state_path=None)
