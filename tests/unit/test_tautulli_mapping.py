"""Where a Tautulli row or live session becomes an event (ingestor/sources/tautulli/mapping.py),
on the documented formats: a get_history row with its exact key set and a get_activity session
(upstream-payloads.md section 2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ingestor.events import EventType
from ingestor.sources.tautulli.mapping import (
    InvalidHistoryRow,
    activity_event,
    live_fields,
    live_percent,
    live_session_key,
    summary_from_history_row,
)

SERVER = "5d4f5c0a1e2b3c4d5e6f708192a3b4c5d6e7f809"
STARTED = int(datetime(2026, 1, 5, 20, 0, tzinfo=UTC).timestamp())

# get_history's row, every documented key (plexpy/datafactory.py get_datatables_history).
ROW: dict[str, Any] = {
    "reference_id": 5120, "row_id": 5120, "id": 5120, "date": STARTED, "started": STARTED,
    "stopped": STARTED + 2940, "duration": 2340, "play_duration": 2340, "paused_counter": 600,
    "user_id": 8312457, "user": "alice", "friendly_name": "Alice",
    "user_thumb": "interfaces/default/images/gravatar-default-80x80.png",
    "platform": "Roku", "product": "Plex for Roku", "player": "Living Room",
    "ip_address": "192.168.1.20", "live": 0, "machine_id": "k7xq2m9c4vbt8n1pl3wz6hyd",
    "location": "lan", "secure": 1, "relayed": 0, "media_type": "episode", "rating_key": 54321,
    "parent_rating_key": 54300, "grandparent_rating_key": 54299,
    "full_title": "Breaking Bad - Pilot", "title": "Pilot", "parent_title": "Season 1",
    "grandparent_title": "Breaking Bad", "original_title": "", "year": 2008, "media_index": 1,
    "parent_media_index": 1, "thumb": "/library/metadata/54300/thumb/1700000000",
    "originally_available_at": "2008-01-20", "guid": "plex://episode/5d9c0874e98e47001eb0f6a3",
    "transcode_decision": "copy", "percent_complete": 85, "watched_status": 1,
    "group_count": 1, "group_ids": "5120", "state": None, "session_key": None,
}  # fmt: skip

# get_activity's session: values mostly strings copied from PMS's XML, a few ints.
LIVE: dict[str, Any] = {
    "session_key": "12", "session_id": "a1b2", "state": "playing", "user_id": 8312457,
    "user": "alice", "username": "alice", "friendly_name": "Alice", "rating_key": "54321",
    "media_type": "episode", "title": "Pilot", "parent_title": "Season 1",
    "grandparent_title": "Breaking Bad", "full_title": "Breaking Bad - Pilot", "year": "2008",
    "view_offset": "2238300", "duration": "2640000", "progress_percent": "85",
    "section_id": "2", "library_name": "TV Shows", "machine_id": "k7xq2m9c4vbt8n1pl3wz6hyd",
    "player": "Living Room", "product": "Plex for Roku", "platform": "Roku",
    "device": "Roku Ultra", "ip_address": "192.168.1.20", "location": "LAN", "local": 1,
    "relayed": 0, "secure": 1, "transcode_decision": "direct play", "bandwidth": "10400",
    "stream_bitrate": "9800", "video_resolution": "1080", "audio_channels": "6",
}  # fmt: skip


def test_a_documented_history_row_is_one_summary_keyed_on_its_row_id() -> None:
    event = summary_from_history_row(ROW, SERVER)
    assert (event.event_type, event.source, event.session_key) == (
        EventType.SUMMARY,
        "tautulli",
        "5120",
    )
    assert event.started_at == datetime.fromtimestamp(STARTED, UTC)
    assert event.occurred_at == event.stopped_at == event.started_at + timedelta(seconds=2940)
    assert (event.play_duration, event.paused_counter) == (2340, 600)
    assert (event.user_id, event.username, event.friendly_name) == ("8312457", "alice", "Alice")
    assert event.user_thumb == ""  # Tautulli's placeholder avatar is no avatar
    assert (event.rating_key, event.year, event.title) == ("54321", 2008, "Pilot")
    assert event.transcode_decision == "direct stream"  # Tautulli's "copy"
    assert (event.secure, event.relayed, event.local, event.location_type) == (
        True,
        False,
        True,
        "lan",
    )
    assert event.percent_complete == 85.0  # the API's whole-number value, as given
    assert summary_from_history_row(dict(ROW), SERVER).event_id == event.event_id


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"state": "playing", "session_key": 12}, "is in progress"),
        ({"group_count": 2, "group_ids": "5120,5121"}, "groups sessions"),
        ({"started": ""}, "no started time"),
    ],
)
def test_rows_that_are_not_one_finished_session_are_refused(
    change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidHistoryRow, match=reason):
        summary_from_history_row({**ROW, **change}, SERVER)


def test_a_documented_live_session_gives_the_fields_of_its_transitions() -> None:
    assert live_session_key(LIVE) == "12:54321"
    assert live_session_key({**LIVE, "rating_key": ""}) is None
    fields = live_fields(LIVE)
    assert (fields["user_id"], fields["username"], fields["rating_key"]) == (
        "8312457",
        "alice",
        "54321",
    )
    assert (fields["year"], fields["media_duration"], fields["library_id"]) == (2008, 2640, "2")
    assert (fields["location_type"], fields["local"], fields["secure"]) == ("lan", True, True)
    assert (fields["bandwidth"], fields["stream_bitrate"], fields["audio_channels"]) == (
        10400,
        9800,
        6,
    )
    assert "platform_version" not in fields  # not said: left out, not ""
    # the exact share, not the rounded progress_percent: 84.78 % is not 85 %
    assert live_percent(LIVE) == pytest.approx(84.784, abs=1e-3)
    assert live_percent({"progress_percent": "85"}) == 85.0


def test_live_transitions_happen_at_tautullis_start_and_pauses_are_told_apart() -> None:
    fields = live_fields(LIVE)
    key = f"12:54321:{STARTED}"

    def event(kind: EventType, at: datetime | None, offset: int | None) -> Any:
        return activity_event(
            kind,
            SERVER,
            session_key=key,
            started=STARTED,
            fields=fields,
            view_offset=offset,
            percent=live_percent(LIVE),
            raw=LIVE,
            at=at,
        )

    begun = datetime.fromtimestamp(STARTED, UTC)
    play = event(EventType.PLAY, None, 0)
    assert (play.source, play.occurred_at, play.started_at) == ("tautulli_activity", begun, begun)
    first = event(EventType.PAUSE, begun + timedelta(minutes=5), 300_000)
    second = event(EventType.PAUSE, begun + timedelta(minutes=9), 540_000)
    assert first.event_id != second.event_id  # two pauses of one session, two events
    assert event(EventType.PAUSE, begun + timedelta(minutes=6), 300_000).event_id == (
        first.event_id
    )  # the same playhead: the same pause, re-polled
    stop = event(EventType.STOP, begun + timedelta(minutes=49), 2_238_300)
    assert (stop.stopped_at, stop.session_key, stop.title) == (stop.occurred_at, key, "Pilot")
