"""The notebook widgets (workbench.widgets), driven from code as a notebook would drive them.

The time slider replays the simulated feed's event log (archive segments in ``tmp_path``)
for real; what it draws is compared with ``active_at`` on a replay made directly. The audit
browser gets the dedup audit of that feed, or small frames with the same columns, and
callbacks that record what they receive."""

from __future__ import annotations

import asyncio
import re
import socket
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from workbench.api import open_data_dir
from workbench.log import EventLog
from workbench.replay import Clock, Replay, replay, simulated_log
from workbench.temporal import active_at
from workbench.widgets import AuditBrowser, SliderView, TimeSlider

START = datetime(2026, 1, 5, 17, 0, tzinfo=UTC)
END = datetime(2026, 1, 6, 2, 0, tzinfo=UTC)
NINE = datetime(2026, 1, 5, 21, 0, tzinfo=UTC)
TWENTY_TWO_TWENTY = datetime(2026, 1, 5, 22, 20, tzinfo=UTC)
LATE = datetime(2026, 1, 5, 22, 53, tzinfo=UTC)  # the two clocks disagree here


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    return simulated_log(tmp_path / "archive")


@pytest.fixture
def replay_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The log's projection is made here (``tempfile``'s directory), so a test can see that
    slider moves answer from one projection of the log, never a replay each."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def open_replays(scratch: Path) -> list[Path]:
    return sorted(scratch.glob("workbench-replay-*"))


def slider_for(log: EventLog, **options: Any) -> TimeSlider:
    options.setdefault("step", timedelta(minutes=10))
    return TimeSlider(log, start=START, end=END, **options)


async def expected_active(log: EventLog, instant: datetime, clock: Clock) -> list[str]:
    with await replay(log, instant, clock, progress=False) as direct:
        return active_at(direct, instant)["correlation_key"].to_list()


def output_kinds(slider: TimeSlider) -> list[list[str]]:
    return [sorted(output["data"]) for output in slider.output.outputs]


# --------------------------------------------------------------------------- time slider


@pytest.mark.parametrize("clock", ["recorded", "occurred"])
async def test_show_at_draws_the_playbacks_active_at_that_instant(
    log: EventLog, replay_dirs: Path, clock: Clock
) -> None:
    slider = slider_for(log, clock=clock, tz="Europe/Berlin")

    shown = await slider.show_at(NINE)

    assert shown is slider.replay and shown is not None
    assert (shown.as_of, shown.clock) == (NINE, clock)
    view = slider.view_result
    assert isinstance(view, SliderView)
    expected = await expected_active(log, NINE, clock)
    assert view.active["correlation_key"].to_list() == expected
    assert len(expected) == 3
    assert slider.slider.value == NINE
    assert "3 playbacks active" in slider.status.value
    assert "Mon 2026-01-05 22:00 CET" in slider.status.value
    table, chart = slider.output.outputs
    for title in view.active["title"]:
        assert title in table["data"]["text/html"]
    svg = chart["data"]["image/svg+xml"]
    assert "Concurrent streams up to Mon 2026-01-05 22:00 CET" in svg
    assert "<script" not in svg
    slider.close()


async def test_moving_the_slider_replays_the_log_to_the_new_position(
    log: EventLog, replay_dirs: Path
) -> None:
    slider = slider_for(log)

    slider.slider.value = TWENTY_TWO_TWENTY
    await slider.wait_idle()

    assert slider.instant == TWENTY_TWO_TWENTY
    assert slider.replay is not None and slider.replay.as_of == TWENTY_TWO_TWENTY
    view = slider.view_result
    assert isinstance(view, SliderView)
    expected = await expected_active(log, TWENTY_TWO_TWENTY, "recorded")
    assert view.active["correlation_key"].to_list() == expected
    assert view.active["title"].to_list() == ["The Bitter Horizon", "Pilot"]
    assert output_kinds(slider) == [["text/html", "text/plain"], ["image/svg+xml", "text/plain"]]
    slider.close()


async def test_the_clock_toggle_replays_the_same_instant_on_the_other_clock(
    log: EventLog, replay_dirs: Path
) -> None:
    slider = slider_for(log, step=timedelta(minutes=1))
    recorded = await slider.show_at(LATE)
    assert recorded is not None
    assert recorded.last_seq == 38 and recorded.counts()["linked"] == 4

    slider.clock_toggle.value = "occurred"
    await slider.wait_idle()

    assert slider.replay is not None and slider.replay is not recorded
    assert (slider.replay.clock, slider.replay.as_of) == ("occurred", LATE)
    # a Tautulli row had happened (22:51:49), not yet recorded (its pass is at 22:55)
    assert slider.replay.counts()["linked"] == 5
    assert recorded.closed
    slider.close()


async def test_a_superseded_run_never_overwrites_a_later_one(
    log: EventLog, replay_dirs: Path
) -> None:
    slider = slider_for(log)

    first = asyncio.create_task(slider.show_at(TWENTY_TWO_TWENTY))
    waiting = asyncio.create_task(slider.show_at(START + timedelta(hours=1)))
    last = asyncio.create_task(slider.show_at(NINE))
    shown = await asyncio.gather(first, waiting, last)

    assert shown[0] is None and shown[1] is None  # superseded: running, and waiting
    assert shown[2] is slider.replay
    assert slider.instant == NINE and slider.replay is not None
    assert slider.replay.as_of == NINE
    view = slider.view_result
    assert isinstance(view, SliderView) and view.instant == NINE
    assert view.active["correlation_key"].to_list() == await expected_active(log, NINE, "recorded")
    assert "Mon 2026-01-05 21:00 UTC" in slider.status.value
    assert len(open_replays(replay_dirs)) == 1  # the superseded replay was closed
    slider.close()


async def test_quick_slider_moves_draw_only_the_last_position(
    log: EventLog, replay_dirs: Path
) -> None:
    slider = slider_for(log)

    for instant in (NINE, TWENTY_TWO_TWENTY, START + timedelta(hours=2), END):
        slider.slider.value = instant
    await slider.wait_idle()

    assert slider.instant == END
    assert slider.replay is not None and slider.replay.as_of == END
    assert slider.slider.value == END
    assert len(open_replays(replay_dirs)) == 1
    slider.close()


async def test_the_previous_replay_is_closed_when_another_is_drawn(
    log: EventLog, replay_dirs: Path
) -> None:
    slider = slider_for(log)

    earlier = await slider.show_at(NINE)
    later = await slider.show_at(TWENTY_TWO_TWENTY)

    assert earlier is not None and later is not None
    assert earlier.closed and not later.closed
    assert len(open_replays(replay_dirs)) == 1  # the log's one projection
    slider.close()
    assert later.closed


async def test_a_custom_view_is_displayed_instead_of_the_default(
    log: EventLog, replay_dirs: Path
) -> None:
    seen: list[datetime | None] = []

    async def playbacks_so_far(replayed: Replay) -> tuple[str, pl.DataFrame]:
        seen.append(replayed.as_of)
        frame = replayed.playbacks().select("username", "title")
        return f"{frame.height} playbacks by {replayed.as_of:%H:%M}", frame

    slider = slider_for(log, view=playbacks_so_far)

    await slider.show_at(NINE)

    assert seen == [NINE]
    text, table = slider.output.outputs
    assert text["data"] == {"text/plain": "4 playbacks by 21:00"}
    assert "The Glass Summer" in table["data"]["text/html"]
    assert slider.view_result[0] == "4 playbacks by 21:00"  # type: ignore[index]
    assert "playbacks active" not in slider.status.value
    slider.close()


async def test_a_failing_view_shows_its_message_and_the_slider_keeps_working(
    log: EventLog, replay_dirs: Path
) -> None:
    calls = 0

    def fragile(replayed: Replay) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("no column 'weather' in playback_events")
        return f"as of {replayed.as_of:%H:%M}"

    slider = slider_for(log, view=fragile)

    with pytest.raises(KeyError):
        await slider.show_at(NINE)
    assert "no column &#x27;weather&#x27; in playback_events" in slider.status.value
    assert "Traceback" not in slider.status.value
    assert slider.output.outputs == ()

    slider.slider.value = TWENTY_TWO_TWENTY  # a slider move that fails would only log
    await slider.wait_idle()
    assert slider.output.outputs[0]["data"] == {"text/plain": "as of 22:20"}
    assert len(open_replays(replay_dirs)) == 1
    slider.close()


async def test_a_move_with_no_answer_gives_up_in_time_and_says_so_in_one_line(
    tmp_path: Path, replay_dirs: Path
) -> None:
    # a peer that accepts the live query's connection and never answers: an ingestor
    # that hangs
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    simulated_log(tmp_path / "data" / "archive")
    wb = open_data_dir(tmp_path / "data", http_url=f"http://127.0.0.1:{silent.getsockname()[1]}")
    slider = TimeSlider(wb, start=START, end=END, step=timedelta(minutes=10), timeout=0.5)
    try:
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await slider.show_at(NINE)
        assert time.monotonic() - began < 3  # the request ended, not the 60 s HTTP timeout
        assert "No answer as of Mon 2026-01-05 21:00 UTC within 0.5 s" in slider.status.value
        assert "Traceback" not in slider.status.value and "\n" not in slider.status.value
        assert slider.replay is None and slider.output.outputs == ()

        silent.close()  # the ingestor is gone: the next move reads the archive's projection
        slider.timeout = 60  # which it makes first
        slider.slider.value = TWENTY_TWO_TWENTY
        await slider.wait_idle()
        assert slider.instant == TWENTY_TWO_TWENTY, slider.status.value
        assert "As of Mon 2026-01-05 22:20 UTC" in slider.status.value
    finally:
        silent.close()
        slider.close()
        await wb.close()


async def test_a_move_cancels_the_one_in_flight_and_only_the_last_is_drawn(
    log: EventLog, replay_dirs: Path
) -> None:
    slider = slider_for(log)
    await slider.show_at(START)  # the log is projected: the moves below only answer

    positions = [START + timedelta(minutes=10 * step) for step in range(1, 11)]
    for instant in positions:
        slider.slider.value = instant
        await asyncio.sleep(0)  # let the move start before the next supersedes it
    await slider.wait_idle()

    assert slider.instant == positions[-1] and slider.slider.value == positions[-1]
    assert slider.view_result.instant == positions[-1]  # type: ignore[attr-defined]
    assert "As of Mon 2026-01-05 18:40 UTC" in slider.status.value
    slider.close()


def test_a_slider_refuses_ranges_it_cannot_show(log: EventLog) -> None:
    with pytest.raises(ValueError, match="before start"):
        TimeSlider(log, start=END, end=START)
    with pytest.raises(ValueError, match="timezone-aware"):
        TimeSlider(log, start=datetime(2026, 1, 5), end=END)
    with pytest.raises(ValueError, match="choose a larger step"):
        TimeSlider(log, start=START, end=END, step=timedelta(seconds=1))
    with pytest.raises(ValueError, match="IANA"):
        TimeSlider(log, start=START, end=END, tz="Mars/Olympus")


def test_slider_positions_are_labelled_in_the_chosen_zone(log: EventLog) -> None:
    slider = TimeSlider(log, start=START, end=END, step=timedelta(hours=1), tz="America/New_York")

    labels = [label for label, _ in slider.slider.options]

    assert len(labels) == 10
    assert labels[0] == "Mon 2026-01-05 12:00 EST"
    assert labels[-1] == "Mon 2026-01-05 21:00 EST"
    assert slider.slider.options[-1][1] == END


# --------------------------------------------------------------------------- audit browser


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The simulated feed's audit entries (5 Tautulli links, 2 Plex re-reported steps) and
    its accepted events."""

    async def read() -> tuple[pl.DataFrame, pl.DataFrame]:
        log = simulated_log(tmp_path_factory.mktemp("archive"))
        with await replay(log, progress=False) as everything:
            return everything.audit(), everything.events()

    return asyncio.run(read())


@pytest.fixture
def audit(feed: tuple[pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    return feed[0]


def many_entries(count: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "audit_id": [f"a{i:03d}" for i in range(count)],
            "tier": [("event_id", "session_key", "correlation")[i % 3] for i in range(count)],
            "source": [("plex", "jellyfin")[i % 2] for i in range(count)],
            "status": ["auto_dedupe"] * count,
            "title": [f"Title {i}" for i in range(count)],
        }
    )


class Recorder:
    """Callbacks that record the audit ids they get; ``fail`` makes them raise."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, audit_id: str) -> str:
        self.calls.append(audit_id)
        if self.fail is not None:
            raise self.fail
        return f"event for {audit_id} published"


def rows_in(table_html: str) -> int:
    return len(re.findall(r"<tr[ >]", table_html)) - 1  # minus the header


def test_filters_narrow_the_entries_by_tier_source_and_status(audit: pl.DataFrame) -> None:
    browser = AuditBrowser(audit, on_confirm=Recorder(), on_restore=Recorder())
    assert browser.visible.height == 7
    tiers = [v for _, v in browser.dropdowns["tier"].options]
    assert tiers == [None, "correlation", "session_key"]

    drops = browser.set_filter(tier="session_key")
    assert drops["tier"].to_list() == ["session_key", "session_key"]
    assert drops["source"].to_list() == ["plex", "plex"]
    assert browser.set_filter(source="tautulli").height == 0  # Tautulli's entries are links
    assert browser.set_filter(tier=None)["audit_id"].to_list() == (
        audit.filter(source="tautulli")["audit_id"].to_list()
    )
    assert browser.filters == {"tier": None, "source": "tautulli", "status": None}
    assert browser.set_filter(status="user_confirmed").height == 0
    assert "no entry matches the filters" in browser.table.value

    browser.set_filter(source=None, status=None)
    browser.dropdowns["source"].value = "plex"  # the dropdown drives the same filter
    assert browser.visible["source"].unique().to_list() == ["plex"]
    assert browser.visible.height == 2
    assert rows_in(browser.table.value) == 2


def test_entries_are_shown_a_page_at_a_time(audit: pl.DataFrame) -> None:
    browser = AuditBrowser(
        many_entries(45), on_confirm=Recorder(), on_restore=Recorder(), page_size=20
    )

    assert (browser.page, browser.pages) == (0, 3)
    assert browser.page_entries["audit_id"].to_list()[:2] == ["a000", "a001"]
    assert rows_in(browser.table.value) == 20
    assert browser.previous_button.disabled and not browser.next_button.disabled
    browser.next_button.click()
    assert browser.page_entries["audit_id"][0] == "a020"
    assert browser.next_page()["audit_id"].to_list() == [f"a{i:03d}" for i in range(40, 45)]
    assert rows_in(browser.table.value) == 5
    assert browser.next_button.disabled
    assert browser.next_page()["audit_id"][0] == "a040"  # no page after the last
    assert browser.page_label.value == "page 3 of 3 · 45 of 45 entries"

    browser.set_filter(tier="correlation")  # 15 entries: one page, from the start
    assert (browser.page, browser.pages, browser.visible.height) == (0, 1, 15)


def test_selecting_an_entry_turns_to_its_page_and_filtering_it_out_drops_it() -> None:
    browser = AuditBrowser(
        many_entries(45), on_confirm=Recorder(), on_restore=Recorder(), page_size=20
    )

    entry = browser.select("a031")

    assert entry is not None and entry["title"] == "Title 31"
    assert browser.page == 1
    assert browser.selector.value == "a031"
    assert "background:#fff3c4" in browser.table.value  # the selected row is marked
    browser.selector.value = "a025"  # picking in the list selects too
    assert browser.selected == "a025"
    with pytest.raises(ValueError, match="no visible entry"):
        browser.select("a999")
    browser.set_filter(source="plex")  # a025 is a jellyfin entry
    assert browser.selected is None
    with pytest.raises(ValueError, match="check the filters"):
        browser.select("a025")


async def test_confirm_and_restore_call_back_with_the_selected_audit_id(
    audit: pl.DataFrame,
) -> None:
    confirmed = Recorder()
    restored: list[str] = []

    async def restore(audit_id: str) -> None:
        await asyncio.sleep(0)
        restored.append(audit_id)

    browser = AuditBrowser(audit, on_confirm=confirmed, on_restore=restore)
    first, second = audit["audit_id"][0], audit["audit_id"][5]

    browser.select(first)
    outcome = await browser.confirm_selected()
    browser.select(second)
    undone = await browser.restore_selected()

    assert confirmed.calls == [first]
    assert restored == [second]
    assert outcome.ok and outcome.result == f"event for {first} published"
    assert undone.ok and undone.message == f"Restored {second}"
    assert f"Restored {second}" in browser.status.value
    assert browser.decisions == {first: "confirmed", second: "restored"}
    assert "<td>confirmed</td>" in browser.table.value
    assert "<td>restored</td>" in browser.table.value


async def test_an_error_in_a_callback_shows_its_message_and_the_browser_keeps_working(
    audit: pl.DataFrame,
) -> None:
    failing = Recorder(fail=RuntimeError("the stream is unreachable: nats://127.0.0.1:1"))
    browser = AuditBrowser(audit, on_confirm=failing, on_restore=Recorder())
    target = audit["audit_id"][2]
    browser.select(target)

    outcome = await browser.confirm_selected()

    assert failing.calls == [target]
    assert not outcome.ok
    assert outcome.message == (
        f"Could not confirm {target}: RuntimeError: the stream is unreachable: nats://127.0.0.1:1"
    )
    assert "the stream is unreachable" in browser.status.value
    assert "Traceback" not in browser.status.value
    assert browser.decisions == {}
    assert not browser.confirm_button.disabled and not browser.restore_button.disabled
    browser.set_filter(tier="session_key")
    browser.select(browser.visible["audit_id"][0])
    assert (await browser.restore_selected()).ok
    assert "Restored" in browser.status.value


async def test_acting_with_nothing_selected_calls_nothing(audit: pl.DataFrame) -> None:
    confirm = Recorder()
    browser = AuditBrowser(audit, on_confirm=confirm, on_restore=Recorder())

    outcome = await browser.confirm_selected()

    assert not outcome.ok and confirm.calls == []
    assert "Select an entry to confirm first." in browser.status.value


async def test_the_buttons_run_the_callbacks(audit: pl.DataFrame) -> None:
    confirm, restore = Recorder(), Recorder()
    browser = AuditBrowser(audit, on_confirm=confirm, on_restore=restore)
    browser.select(audit["audit_id"][1])

    browser.confirm_button.click()
    browser.restore_button.click()
    await browser.wait_idle()

    assert confirm.calls == restore.calls == [audit["audit_id"][1]]
    assert browser.last_outcome is not None and browser.last_outcome.action == "restore"


def test_the_kept_report_is_shown_beside_the_linked_one_when_the_frame_carries_it(
    feed: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    audit, events = feed
    kept = events.select(
        pl.col("event_id").alias("kept_event_id"),
        pl.col("event_type").alias("kept_event_type"),
        pl.col("started_at").alias("kept_started_at"),
        pl.col("title").alias("kept_title"),
        pl.col("player").alias("kept_player"),
    )
    entries = audit.join(kept, on="kept_event_id", how="left")
    link = entries.filter(action="link").row(0, named=True)
    browser = AuditBrowser(entries, on_confirm=Recorder(), on_restore=Recorder())

    browser.select(link["audit_id"])

    detail = browser.detail.value
    assert "<th>Linked report</th><th>Kept report</th>" in detail
    rows = dict(
        (name, (mine, theirs))
        for name, mine, theirs in re.findall(
            r"<tr[^>]*><th>([^<]+)</th><td>([^<]*)</td><td>([^<]*)</td></tr>", detail
        )
    )
    assert rows["source"] == ("tautulli", "plex")
    assert rows["event_type"] == ("summary", link["kept_event_type"])
    assert rows["title"] == (link["title"], link["kept_title"])
    assert rows["event_id"] == (link["event_id"], link["kept_event_id"])
    assert "not in these entries" not in detail


def test_missing_columns_are_left_out_rather_than_failing() -> None:
    bare = pl.DataFrame({"audit_id": ["x1", "x2"], "tier": ["event_id", "correlation"]})
    browser = AuditBrowser(bare, on_confirm=Recorder(), on_restore=Recorder())

    browser.select("x2")

    assert browser.dropdowns["source"].disabled and not browser.dropdowns["tier"].disabled
    assert "not in these entries" in browser.detail.value
    assert browser.set_filter(tier="correlation")["audit_id"].to_list() == ["x2"]
    with pytest.raises(ValueError, match="no 'source' column"):
        browser.set_filter(source="plex")
    with pytest.raises(ValueError, match="audit_id"):
        AuditBrowser(bare.drop("audit_id"), on_confirm=Recorder(), on_restore=Recorder())


def test_values_from_the_entries_are_escaped(audit: pl.DataFrame) -> None:
    hostile = audit.with_columns(pl.lit("<script>alert(1)</script>").alias("title"))
    browser = AuditBrowser(hostile, on_confirm=Recorder(), on_restore=Recorder())

    browser.select(hostile["audit_id"][0])

    for html in (browser.table.value, browser.detail.value):
        assert "<script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_new_entries_keep_the_filters_and_the_selection(audit: pl.DataFrame) -> None:
    browser = AuditBrowser(audit, on_confirm=Recorder(), on_restore=Recorder())
    browser.set_filter(tier="session_key")
    chosen = browser.visible["audit_id"][0]
    browser.select(chosen)

    browser.update(
        audit.with_columns(
            pl.when(pl.col("audit_id") == chosen)
            .then(pl.lit("user_confirmed"))
            .otherwise(pl.col("status"))
            .alias("status")
        )
    )

    assert browser.filters["tier"] == "session_key"
    assert browser.selected == chosen
    assert browser.selected_entry is not None
    assert browser.selected_entry["status"] == "user_confirmed"
    assert "user_confirmed" in [v for _, v in browser.dropdowns["status"].options]
