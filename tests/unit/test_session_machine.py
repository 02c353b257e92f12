"""The Jellyfin/Emby session state machine: Sessions snapshots in, transitions out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ingestor.events import EventType, MediaEvent
from ingestor.sources.base import EventTooLarge
from ingestor.sources.jellyfin.mapping import (
    Observation,
    UnreadableSession,
    observe_session,
    observe_sessions,
)
from ingestor.sources.jellyfin.session_machine import MachineState, SessionMachine
from tests.fakes.jellyfin import episode, movie, session

T0 = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
SERVER = "f0e1d2c3b4a5968778695a4b3c2d1e0f"
SESSION = "6c5e0b2a1f3d4e5f60718293a4b5c6d7"
USER = "2b1f9c3e4d5a6b7c8d9e0f1a2b3c4d5e"
ITEM = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def playing(
    position_s: float = 0.0,
    *,
    paused: bool = False,
    item: dict[str, Any] | None = None,
    session_id: str = SESSION,
    **kw: Any,
) -> dict[str, Any]:
    return session(
        server_id=SERVER,
        session_id=session_id,
        user_id=USER,
        item=item or movie(ITEM),
        position_s=position_s,
        paused=paused,
        **kw,
    )


def idle(session_id: str = SESSION) -> dict[str, Any]:
    return session(server_id=SERVER, session_id=session_id, user_id=USER)


def feed(machine: SessionMachine, entries: list[dict[str, Any]], now: datetime) -> list[MediaEvent]:
    observed, unknown, problems = observe_sessions(entries)
    assert not problems
    return machine.snapshot(SERVER, observed, now, unknown=unknown)


def kinds(events: list[MediaEvent]) -> list[str]:
    return [e.event_type.value for e in events]


def test_twenty_identical_snapshots_are_one_play() -> None:
    machine = SessionMachine("jellyfin")
    events: list[MediaEvent] = []
    for i in range(20):
        events += feed(machine, [playing(0), idle("ffffffffffffffffffffffffffffffff")], at(i))
    assert kinds(events) == ["play"]
    play = events[0]
    assert play.validate() is play
    assert play.session_key == f"{SESSION}:{ITEM}:{int(T0.timestamp() * 1000)}"
    assert play.started_at == T0 and play.occurred_at == T0
    assert (play.server_id, play.user_id, play.rating_key) == (SERVER, USER, ITEM)


def test_pause_and_resume_follow_is_paused() -> None:
    machine = SessionMachine("jellyfin")
    events = feed(machine, [playing(0)], at(0))
    events += feed(machine, [playing(600, paused=True)], at(600))
    events += feed(machine, [playing(600, paused=True)], at(650))  # still paused: nothing
    events += feed(machine, [playing(600)], at(720))
    assert kinds(events) == ["play", "pause", "resume"]
    assert [e.position_ms for e in events] == [0, 600_000, 600_000]
    assert [e.occurred_at for e in events] == [at(0), at(600), at(720)]
    assert len({e.session_key for e in events}) == 1
    assert {e.started_at for e in events} == {T0}


def test_a_session_first_seen_paused_plays_then_pauses() -> None:
    machine = SessionMachine("jellyfin")
    events = feed(machine, [playing(1200, paused=True)], at(0))
    assert kinds(events) == ["play", "pause"]
    assert events[0].started_at == at(-1200)


def test_a_new_item_in_the_session_stops_the_old_playback_and_plays_the_new() -> None:
    machine = SessionMachine("jellyfin")
    first = feed(machine, [playing(0)], at(0))
    feed(machine, [playing(2400)], at(2400))
    second_item = episode("0f" * 16)
    events = feed(machine, [playing(5, item=second_item)], at(2405))
    assert kinds(events) == ["stop", "play"]
    stop, play = events
    assert stop.session_key == first[0].session_key and stop.position_ms == 2_400_000
    assert stop.stopped_at == at(2405)
    assert play.session_key != stop.session_key and play.rating_key == "0f" * 16
    assert play.media_type == "episode"
    assert (play.grandparent_title, play.parent_title) == ("Northern Harbor", "Season 1")


def test_a_new_play_session_id_is_a_new_playback_of_the_same_item() -> None:
    machine = SessionMachine("jellyfin")
    first = playing(0)
    first["PlayState"]["PlaySessionId"] = "play-1"
    again = playing(0)
    again["PlayState"]["PlaySessionId"] = "play-2"
    events = feed(machine, [first], at(0)) + feed(machine, [again], at(100))
    assert kinds(events) == ["play", "stop", "play"]
    assert [e.session_key for e in events] == ["play-1", "play-1", "play-2"]


def test_a_session_that_disappears_or_goes_idle_is_stopped() -> None:
    machine = SessionMachine("jellyfin")
    other = "11111111111111111111111111111111"
    feed(machine, [playing(0), playing(0, session_id=other)], at(0))
    feed(machine, [playing(300), playing(300, session_id=other)], at(300))
    events = feed(machine, [idle()], at(310))  # one goes idle, the other is gone
    assert kinds(events) == ["stop", "stop"]
    assert {e.position_ms for e in events} == {300_000}
    assert feed(machine, [idle()], at(320)) == []


def test_an_unreadable_session_keeps_its_playback_open() -> None:
    machine = SessionMachine("jellyfin")
    feed(machine, [playing(0)], at(0))
    broken = playing(10)
    del broken["NowPlayingItem"]["Id"]
    observed, unknown, problems = observe_sessions([broken])
    assert problems == [f"session {SESSION}: NowPlayingItem has no Id"]
    assert machine.snapshot(SERVER, observed, at(10), unknown=unknown) == []
    assert kinds(feed(machine, [idle()], at(20))) == ["stop"]


def test_a_restarted_machine_recognises_the_open_playback() -> None:
    machine = SessionMachine("jellyfin")
    play = feed(machine, [playing(0)], at(0))
    feed(machine, [playing(600, paused=True)], at(600))
    saved = MachineState.dump(machine.state)
    restarted = SessionMachine("jellyfin", state=MachineState.load(saved))
    assert feed(restarted, [playing(600, paused=True)], at(900)) == []  # no second play
    events = feed(restarted, [playing(600)], at(960)) + feed(restarted, [], at(1000))
    assert kinds(events) == ["resume", "stop"]
    assert {e.session_key for e in events} == {play[0].session_key}
    assert {e.started_at for e in events} == {T0}


def test_the_same_snapshots_give_the_same_event_ids() -> None:
    script = [
        ([playing(0)], at(0)),
        ([playing(300, paused=True)], at(300)),
        ([playing(300)], at(400)),
        ([playing(1000)], at(1100)),
        ([], at(1200)),
    ]

    def run() -> list[str]:
        machine = SessionMachine("jellyfin", progress_interval=300)
        return [e.event_id for entries, now in script for e in feed(machine, entries, now)]

    ids = run()
    assert ids == run()
    assert len(ids) == len(set(ids)) == 5  # play, pause, resume, progress, stop


def test_progress_is_reported_at_most_every_interval_while_playing() -> None:
    machine = SessionMachine("jellyfin", progress_interval=300)
    events = feed(machine, [playing(0)], at(0))
    for second in range(10, 1210, 10):
        events += feed(machine, [playing(second)], at(second))
    progress = [e for e in events if e.event_type is EventType.PROGRESS]
    assert [e.occurred_at for e in progress] == [at(300), at(600), at(900), at(1200)]
    assert [e.position_ms for e in progress] == [300_000, 600_000, 900_000, 1_200_000]
    quiet = SessionMachine("jellyfin", progress_interval=None)
    assert kinds(feed(quiet, [playing(0)], at(0)) + feed(quiet, [playing(900)], at(900))) == [
        "play"
    ]


def test_positions_are_ticks_converted_to_ms_and_fields_are_mapped() -> None:
    entry = playing(5025.5, play_method="Transcode", remote="10.0.0.7:51234")
    entry["PlayState"]["PositionTicks"] = 50_255_001_234
    seen = observe_session(entry)
    assert seen is not None and seen.position_ms == 5_025_500
    details = seen.details
    assert details.media_duration == 170 * 60
    assert (details.platform, details.player, details.machine_id) == (
        "Jellyfin Web",
        "Chrome",
        entry["DeviceId"],
    )
    assert details.ip_address == "10.0.0.7"
    assert details.transcode_decision == "transcode"
    assert (details.video_codec, details.video_resolution, details.audio_codec) == (
        "hevc",
        "4k",
        "eac3",
    )
    assert details.audio_channels == 6 and details.stream_bitrate == 8000
    assert details.year == 1995 and details.username == "alice"
    assert "Capabilities" not in (seen.raw or "")


@pytest.mark.parametrize(("method", "decision"), [("DirectPlay", "direct play"),
                                                  ("DirectStream", "direct stream"),
                                                  ("Transcode", "transcode")])  # fmt: skip
def test_play_methods_map_to_transcode_decisions(method: str, decision: str) -> None:
    seen = observe_session(playing(0, play_method=method))
    assert seen is not None and seen.details.transcode_decision == decision


def test_emby_numeric_item_ids_become_string_rating_keys() -> None:
    machine = SessionMachine("emby")
    as_text = playing(0, item=movie("208431"), emby=True)
    as_number = playing(30, item={**movie(), "Id": 208431}, emby=True)
    events = feed(machine, [as_text], at(0)) + feed(machine, [as_number], at(30))
    assert kinds(events) == ["play"]  # "208431" and 208431 are the same item
    assert events[0].rating_key == "208431" and events[0].source == "emby"
    assert events[0].session_key.startswith(f"{SESSION}:208431:")


def test_a_late_echo_of_a_stopped_playback_does_not_open_another() -> None:
    machine = SessionMachine("jellyfin", echo_window=30)
    first = feed(machine, [playing(0)], at(0))
    feed(machine, [playing(600)], at(600))
    assert kinds(feed(machine, [], at(601))) == ["stop"]
    assert feed(machine, [playing(600)], at(602)) == []  # the in-flight push, ignored
    again = feed(machine, [playing(700)], at(700))
    assert kinds(again) == ["play"]  # a real new playback: the same item resumed
    assert again[0].started_at == at(0) and again[0].session_key != first[0].session_key


def test_a_stop_report_closes_once() -> None:
    machine = SessionMachine("jellyfin")
    seen = observe_session(playing(0))
    assert seen is not None
    assert kinds(machine.report(SERVER, seen, at(0))) == ["play"]
    last = observe_session(playing(300))
    assert last is not None
    stop = machine.end(SERVER, last, at(300))
    assert kinds(stop) == ["stop"] and stop[0].position_ms == 300_000
    assert machine.end(SERVER, last, at(301)) == []  # the same stop again


def test_a_stop_of_a_playback_never_seen_is_reported_alone() -> None:
    machine = SessionMachine("jellyfin")
    seen = observe_session(playing(1800))
    assert seen is not None
    events = machine.end(SERVER, seen, at(1800))
    assert kinds(events) == ["stop"] and events[0].started_at == T0
    assert machine.open_playbacks(SERVER) == {}


BIG = "x" * 600_000  # over MAX_EVENT_BYTES (512 KiB) once in an event


def observed(entry: dict[str, Any]) -> Observation:
    seen = observe_session(entry)
    assert seen is not None
    return seen


def test_a_report_whose_events_cannot_be_stored_is_refused_leaving_the_session_as_it_was() -> None:
    machine = SessionMachine("jellyfin")
    assert kinds(feed(machine, [playing(0)], at(0))) == ["play"]
    before = machine.state.dump()
    refusals = [
        ("report", playing(10, paused=True, item=movie(ITEM, name=BIG))),  # a pause
        ("report", playing(20, item=movie(ITEM, name=BIG))),  # no event, but a stop to come
        ("report", playing(5, item=movie(name=BIG))),  # a stop and a play of another item
        ("end", playing(30, item=movie(ITEM, name=BIG))),  # the stop
    ]
    for method, entry in refusals:
        with pytest.raises(EventTooLarge, match=r"over the limit of 524,288 bytes") as refused:
            getattr(machine, method)(SERVER, observed(entry), at(40))
        assert refused.value.size > 600_000 and refused.value.limit == 524_288
        assert machine.state.dump() == before, (method, entry["PlayState"])
    # the next reports are taken as if the refused ones never came
    assert kinds(feed(machine, [playing(50, paused=True)], at(50))) == ["pause"]
    stop = feed(machine, [idle()], at(60))
    assert kinds(stop) == ["stop"] and stop[0].title == "Heat"


def test_a_snapshot_keeps_a_refused_session_as_it_was_and_names_it() -> None:
    machine = SessionMachine("jellyfin")
    other = "0a" * 16
    huge = playing(0, item=movie(name=BIG))
    refused: dict[str, str] = {}
    seen, unknown, _ = observe_sessions([huge, playing(0, session_id=other)])
    events = machine.snapshot(SERVER, seen, at(0), unknown=unknown, refused=refused)
    assert kinds(events) == ["play"] and events[0].session_key.startswith(other)
    assert list(refused) == [SESSION] and "a play event of" in refused[SESSION]
    assert set(machine.open_playbacks(SERVER)) == {other}
    # an open playback whose next report carries a name too large keeps the name it had
    assert kinds(feed(machine, [playing(0), playing(0, session_id=other)], at(10))) == ["play"]
    refused.clear()
    entries = [playing(20, item=movie(ITEM, name=BIG)), playing(20, session_id=other)]
    seen, unknown, _ = observe_sessions(entries)
    assert machine.snapshot(SERVER, seen, at(20), unknown=unknown, refused=refused) == []
    assert list(refused) == [SESSION] and "a stop event of" in refused[SESSION]
    assert machine.open_playbacks(SERVER)[SESSION].details.title == "Heat"
    stops = feed(machine, [], at(30))
    assert kinds(stops) == ["stop", "stop"] and {e.title for e in stops} == {"Heat"}


def test_unreadable_sessions_raise_with_a_reason() -> None:
    with pytest.raises(UnreadableSession, match="not an object"):
        observe_session(["not", "a", "session"])
    no_user = playing(0)
    del no_user["UserId"]
    with pytest.raises(UnreadableSession, match="without UserId"):
        observe_session(no_user)
    bad_ticks = playing(0)
    bad_ticks["PlayState"]["PositionTicks"] = "soon"
    with pytest.raises(UnreadableSession, match="ticks must be a number"):
        observe_session(bad_ticks)
    assert observe_session(idle()) is None


def test_state_round_trips_through_json() -> None:
    machine = SessionMachine("jellyfin")
    feed(machine, [playing(42, paused=True)], at(0))
    text = json.dumps(machine.state.dump())
    loaded = MachineState.load(json.loads(text))
    playback = loaded.open[SERVER][SESSION]
    assert playback.started_at == at(-42) and playback.paused is True
    assert isinstance(playback, type(machine.state.open[SERVER][SESSION]))
    with pytest.raises(ValueError, match="unreadable session state"):
        MachineState.load({"open": {"srv": {"s": {"session_key": 5}}}})
