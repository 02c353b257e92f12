"""Where a Plex payload becomes an event (ingestor/sources/plex/mapping.py), on the documented
formats: a webhook document (upstream-payloads.md section 1), a /status/sessions entry
(tautulli-db-and-plex-sessions.md section B) and a watch-history entry."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ingestor.errors import InvalidEvent
from ingestor.events import EventType
from ingestor.sources.history_import import InvalidRow
from ingestor.sources.plex.mapping import (
    SUPERSEDED,
    PlexPayloadError,
    WebhookTransition,
    decode_session,
    decode_webhook,
    history_event,
    read_identity,
    read_sessions,
    session_event,
    webhook_events,
    webhook_kind,
)

T0 = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
SERVER = "5d4f5c0a1e2b3c4d5e6f708192a3b4c5d6e7f809"
OWNER = "8312457"

# The documented webhook document (support-page example, as telegraf's first mock), compact.
WEBHOOK: dict[str, Any] = {
    "event": "media.play",
    "user": True,
    "owner": True,
    "Account": {"id": 1, "thumb": "https://plex.tv/users/1022b120ffbaa/avatar?c=1465525047",
                "title": "elan"},
    "Server": {"title": "Office", "uuid": SERVER},
    "Player": {"local": False, "publicAddress": "200.200.200.200", "title": "Plex Web (Safari)",
               "uuid": "r6yfkdnfggbh2bdnvkffwbms"},
    "Metadata": {
        "librarySectionType": "artist", "ratingKey": "1936545", "key": "/library/metadata/1936545",
        "parentRatingKey": "1936544", "grandparentRatingKey": "1936543",
        "guid": "com.plexapp.agents.plexmusic://gracenote/track/7572499-91016293?lang=en",
        "librarySectionID": 1224, "type": "track", "title": "Love The One You're With",
        "grandparentKey": "/library/metadata/1936543", "parentKey": "/library/metadata/1936544",
        "grandparentTitle": "Stephen Stills", "parentTitle": "Stephen Stills",
        "summary": "", "index": 1, "parentIndex": 1, "ratingCount": 6794,
        "thumb": "/library/metadata/1936544/thumb/1432897518",
        "art": "/library/metadata/1936543/art/1485951497",
        "parentThumb": "/library/metadata/1936544/thumb/1432897518",
        "grandparentThumb": "/library/metadata/1936543/thumb/1485951497",
        "grandparentArt": "/library/metadata/1936543/art/1485951497",
        "addedAt": 1000396126, "updatedAt": 1498770920,
        "librarySectionTitle": "Music", "duration": 184000, "year": 1970,
    },
}  # fmt: skip

# One /status/sessions entry (JSON form) as section B2 describes it; flags as PMS's XML text.
SESSION: dict[str, Any] = {
    "sessionKey": "42", "ratingKey": "54321", "key": "/library/metadata/54321",
    "guid": "plex://episode/5d9c0874e98e47001eb0f6a3", "type": "episode", "title": "Pilot",
    "parentTitle": "Season 1", "grandparentTitle": "Breaking Bad", "index": 1, "parentIndex": 1,
    "duration": "2640000", "viewOffset": "2376000", "year": "2008",
    "librarySectionID": "2", "librarySectionTitle": "TV Shows",
    "User": {"id": "1", "title": "alice", "thumb": "https://plex.tv/users/abc/avatar"},
    "Player": {"address": "192.168.1.20", "machineIdentifier": "k7xq2m9c4vbt8n1pl3wz6hyd",
               "platform": "Roku", "platformVersion": "12.5", "product": "Plex for Roku",
               "title": "Living Room", "version": "8.2", "device": "Roku Ultra",
               "state": "paused", "local": "1", "relayed": "0", "secure": "1"},
    "Session": {"id": "a1b2", "bandwidth": 10400, "location": "lan"},
    "TranscodeSession": {"videoDecision": "copy", "audioDecision": "transcode"},
    "Media": [
        {"videoResolution": "720", "videoCodec": "h264", "audioCodec": "aac",
         "audioChannels": 2, "bitrate": 4000, "selected": False},
        {"videoResolution": "1080", "videoCodec": "hevc", "audioCodec": "eac3",
         "audioChannels": 6, "bitrate": 9800, "selected": True},
    ],
}  # fmt: skip


def play(kind: str = "media.play", event_type: EventType = EventType.PLAY) -> WebhookTransition:
    return WebhookTransition(event_type, kind, f"r6yfkdnfggbh2bdnvkffwbms/1936545/{0}", T0)


def test_a_documented_webhook_play_maps_to_one_play_event_with_every_field() -> None:
    raw = json.dumps(WEBHOOK, separators=(",", ":")).encode()
    assert webhook_kind(raw) == "media.play"
    [event] = webhook_events(decode_webhook(raw), [play()], received_at=T0, raw=raw, owner_id=OWNER)
    assert (event.event_type, event.source, event.server_id) == (EventType.PLAY, "plex", SERVER)
    assert (event.occurred_at, event.started_at, event.stopped_at) == (T0, T0, None)
    assert (event.user_id, event.username) == (OWNER, "elan")  # the owner's 1, mapped
    assert event.user_thumb.startswith("https://plex.tv/users/")
    assert (event.media_type, event.title) == ("track", "Love The One You're With")
    assert (event.parent_title, event.grandparent_title) == ("Stephen Stills", "Stephen Stills")
    assert (event.rating_key, event.year, event.media_duration) == ("1936545", 1970, 184)
    assert (event.library_id, event.library_name) == ("1224", "Music")
    assert (event.position_ms, event.percent_complete) == (0, 0.0)  # no viewOffset on a play
    assert (event.player, event.machine_id) == ("Plex Web (Safari)", "r6yfkdnfggbh2bdnvkffwbms")
    assert (event.ip_address, event.local, event.location_type) == (
        "200.200.200.200",
        False,
        "wan",
    )
    assert event.raw_payload == raw.decode()


def test_webhook_event_ids_depend_on_the_kind_the_playback_and_the_receipt_ms_only() -> None:
    raw = json.dumps(WEBHOOK).encode()
    parsed = decode_webhook(raw)
    first = webhook_events(parsed, [play()], received_at=T0, raw=raw)[0]
    again = webhook_events(parsed, [play()], received_at=T0, raw=b"{}", owner_id=OWNER)[0]
    later = webhook_events(parsed, [play()], received_at=T0 + timedelta(milliseconds=1), raw=raw)
    assert first.event_id == again.event_id  # the same occurrence, the same id
    assert later[0].event_id != first.event_id
    assert first.user_id == "1"  # the owner's local id stays while the owner is unknown


def test_a_superseded_stop_has_no_position_and_a_stop_time() -> None:
    doc = {**WEBHOOK, "Metadata": {**WEBHOOK["Metadata"], "viewOffset": 92000}}
    raw = json.dumps(doc).encode()
    stop = WebhookTransition(EventType.STOP, SUPERSEDED, "r6/1936545/1", T0 - timedelta(hours=1))
    events = webhook_events(decode_webhook(raw), [stop, play()], received_at=T0, raw=raw)
    assert [(e.event_type, e.position_ms, e.stopped_at) for e in events] == [
        (EventType.STOP, None, T0),
        (EventType.PLAY, 92000, None),
    ]
    assert events[1].percent_complete == 50.0
    assert events[0].event_id != events[1].event_id


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.pop("Player"), "field `Player`"),
        (lambda d: d["Metadata"].pop("ratingKey"), "missing required field `ratingKey`"),
        (lambda d: d["Server"].update(uuid=" "), "Server.uuid is empty"),
    ],
)
def test_a_webhook_document_missing_what_an_event_needs_is_refused_with_the_reason(
    change: Any, reason: str
) -> None:
    doc = json.loads(json.dumps(WEBHOOK))
    change(doc)
    with pytest.raises(PlexPayloadError, match=reason):
        decode_webhook(json.dumps(doc).encode())


def test_a_webhook_event_with_an_empty_title_is_an_invalid_event() -> None:
    doc = {**WEBHOOK, "Metadata": {**WEBHOOK["Metadata"], "title": ""}}
    raw = json.dumps(doc).encode()
    with pytest.raises(InvalidEvent, match="title is empty"):
        webhook_events(decode_webhook(raw), [play()], received_at=T0, raw=raw)


def test_a_documented_sessions_entry_maps_to_a_poll_event_with_the_selected_media() -> None:
    text = json.dumps(SESSION)
    entry = decode_session(text)
    assert entry.key == ("42", "54321")
    event = session_event(
        entry,
        EventType.PAUSE,
        server_id=SERVER,
        session_key="42/54321/1767643200000",
        started_at=T0,
        polled_at=T0 + timedelta(minutes=40),
        raw=text,
        owner_id=OWNER,
    )
    assert (event.source, event.event_type, event.user_id) == ("plex_poll", EventType.PAUSE, OWNER)
    assert (event.occurred_at, event.started_at) == (T0 + timedelta(minutes=40), T0)
    assert (event.position_ms, event.percent_complete) == (2_376_000, 90.0)
    assert (event.year, event.media_duration, event.library_id) == (2008, 2640, "2")
    assert (event.video_resolution, event.video_codec, event.audio_channels) == ("1080", "hevc", 6)
    assert (event.stream_bitrate, event.bandwidth) == (9800, 10400)
    assert event.transcode_decision == "transcode"  # audio transcoded, video copied
    assert (event.secure, event.local, event.relayed, event.location_type) == (
        True,
        True,
        False,
        "lan",
    )
    assert (event.platform, event.product, event.device) == ("Roku", "Plex for Roku", "Roku Ultra")
    assert (event.ip_address, event.machine_id) == ("192.168.1.20", "k7xq2m9c4vbt8n1pl3wz6hyd")


def test_webhook_and_poll_map_the_same_item_and_user_the_same_way() -> None:
    """One mapping for both: the item and the user fields agree field by field."""
    raw = json.dumps(WEBHOOK).encode()
    [hooked] = webhook_events(decode_webhook(raw), [play()], received_at=T0, raw=raw)
    entry = {
        **SESSION,
        **{k: WEBHOOK["Metadata"][k] for k in ("ratingKey", "type", "title", "parentTitle")},
        "grandparentTitle": WEBHOOK["Metadata"]["grandparentTitle"],
        "duration": WEBHOOK["Metadata"]["duration"],
        "year": WEBHOOK["Metadata"]["year"],
        "librarySectionID": WEBHOOK["Metadata"]["librarySectionID"],
        "librarySectionTitle": WEBHOOK["Metadata"]["librarySectionTitle"],
        "User": WEBHOOK["Account"],
    }
    polled = session_event(
        decode_session(json.dumps(entry)),
        EventType.PLAY,
        server_id=SERVER,
        session_key="k",
        started_at=T0,
        polled_at=T0,
        raw="{}",
    )
    fields = [
        "user_id",
        "username",
        "user_thumb",
        "media_type",
        "title",
        "parent_title",
        "grandparent_title",
        "rating_key",
        "year",
        "media_duration",
        "library_id",
        "library_name",
    ]
    assert {f: getattr(polled, f) for f in fields} == {f: getattr(hooked, f) for f in fields}


def test_a_sessions_answer_skips_theme_music_and_lists_unreadable_entries() -> None:
    theme = {**SESSION, "sessionKey": "43", "guid": "library://abc/item/123"}
    broken = {k: v for k, v in SESSION.items() if k != "User"}
    body = json.dumps({"MediaContainer": {"size": 3, "Metadata": [SESSION, theme, broken]}})
    snapshot = read_sessions(body.encode())
    assert [s.key for s, _ in snapshot.sessions] == [("42", "54321")]
    assert not snapshot.complete and snapshot.unreadable[0].startswith("Metadata[2]: ")
    assert read_sessions(b'{"MediaContainer":{"size":0}}').sessions == []
    with pytest.raises(PlexPayloadError):
        read_sessions(b"<MediaContainer size='0'/>")


def test_the_identity_answer_gives_the_server_id() -> None:
    assert read_identity(
        json.dumps({"MediaContainer": {"machineIdentifier": SERVER}}).encode()
    ) == (SERVER)
    with pytest.raises(PlexPayloadError, match="empty machineIdentifier"):
        read_identity(b'{"MediaContainer":{"machineIdentifier":""}}')


def test_a_history_entry_is_a_summary_at_viewed_at_and_nothing_invented() -> None:
    entry = {
        "historyKey": "/status/sessions/history/1234", "key": "/library/metadata/54321",
        "ratingKey": "54321", "librarySectionID": "2", "title": "Pilot",
        "grandparentTitle": "Breaking Bad", "type": "episode", "index": 1, "parentIndex": 1,
        "originallyAvailableAt": "2008-01-20", "viewedAt": 1767643200, "accountID": 1,
        "deviceID": 7,
    }  # fmt: skip
    event = history_event(entry, SERVER, OWNER)
    assert (event.event_type, event.source, event.session_key) == (
        EventType.SUMMARY,
        "plex-history",
        "1234",
    )
    assert event.occurred_at == event.started_at == T0
    assert (event.user_id, event.library_id, event.library_name) == (OWNER, "2", "")
    assert (event.stopped_at, event.play_duration, event.machine_id) == (None, None, "")
    assert history_event(entry, SERVER, OWNER).event_id == event.event_id
    with pytest.raises(InvalidRow, match="no viewedAt"):
        history_event({**entry, "viewedAt": None}, SERVER)
