"""Where a Jellyfin or Emby report becomes an observation (ingestor/sources/jellyfin/mapping.py),
on the documented formats: a Sessions entry (SessionInfoDto, upstream-payloads.md sections 3a
and 4) and a webhook plugin notification with "Send All Properties" (section 3b)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ingestor.sources.jellyfin.mapping import (
    MalformedNotification,
    decode_notification,
    observe_notification,
    observe_session,
    observe_sessions,
)

SERVER = "f0e1d2c3b4a5968778695a4b3c2d1e0f"

# A Jellyfin Sessions entry playing an episode, keys as JsonDefaults writes them.
ENTRY: dict[str, Any] = {
    "PlayState": {"PositionTicks": 12_000_000_000, "CanSeek": True, "IsPaused": True,
                  "IsMuted": False, "PlayMethod": "Transcode", "RepeatMode": "RepeatNone",
                  "PlaySessionId": "8d7c6b5a"},
    "RemoteEndPoint": "[2001:db8::7]:51234",
    "Capabilities": {"PlayableMediaTypes": ["Video"], "DeviceProfile": {"Name": "x" * 100}},
    "Id": "6c5e0b2a1f3d4e5f60718293a4b5c6d7", "UserId": "2b1f9c3e4d5a6b7c8d9e0f1a2b3c4d5e",
    "UserName": "alice", "Client": "Android TV", "DeviceName": "Shield", "DeviceType": "Tv",
    "DeviceId": "a8f7e6d5", "ApplicationVersion": "0.16.4", "ServerId": SERVER,
    "NowPlayingItem": {
        "Id": "a1b2c3d4e5f60718293a4b5c6d7e8f90", "Name": "Pilot", "Type": "Episode",
        "RunTimeTicks": 34_800_000_000, "ProductionYear": 2008, "SeriesName": "Breaking Bad",
        "SeasonName": "Season 1", "IndexNumber": 1, "ParentIndexNumber": 1,
        "MediaStreams": [
            {"Type": "Video", "Codec": "hevc", "Height": 2160, "BitRate": 20_000_000},
            {"Type": "Audio", "Codec": "aac", "Channels": 2},
            {"Type": "Audio", "Codec": "eac3", "Channels": 6, "IsDefault": True},
        ],
    },
    "TranscodingInfo": {"Bitrate": 8_000_000, "IsVideoDirect": False},
}  # fmt: skip

# The plugin's PlaybackProgress, "Send All Properties": strings pre-escaped (" -> \").
NOTIFICATION: dict[str, Any] = {
    "ServerId": SERVER, "ServerName": "den", "ServerVersion": "10.10.7",
    "NotificationType": "PlaybackProgress", "UtcTimestamp": "2026-01-05T20:05:00.0000000Z",
    "Name": 'Say \\"When\\"', "ItemId": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
    "ItemType": "Episode", "RunTimeTicks": 34_800_000_000, "Year": 2008,
    "SeriesName": "Breaking Bad", "SeasonNumber": 1, "SeasonNumber00": "01",
    "PlaybackPositionTicks": 600_000_000, "IsPaused": False, "DeviceId": "a8f7e6d5",
    "DeviceName": "Shield", "ClientName": "Android TV", "PlayMethod": "DirectStream",
    "Id": "6c5e0b2a1f3d4e5f60718293a4b5c6d7", "UserId": "2b1f9c3e4d5a6b7c8d9e0f1a2b3c4d5e",
    "NotificationUsername": "alice", "RemoteEndPoint": "192.168.1.20",
    "Video_0_Height": 1080, "Video_0_Codec": "h264", "Audio_0_Codec": "ac3",
    "Audio_0_Channels": 6,
}  # fmt: skip


def test_a_documented_sessions_entry_is_one_observation_with_its_details() -> None:
    seen = observe_session(ENTRY)
    assert seen is not None
    assert (seen.session_id, seen.item_id, seen.play_session_id) == (
        ENTRY["Id"],
        ENTRY["NowPlayingItem"]["Id"],
        "8d7c6b5a",
    )
    assert (seen.position_ms, seen.paused) == (1_200_000, True)
    details = seen.details
    assert (details.user_id, details.username, details.media_type) == (
        ENTRY["UserId"],
        "alice",
        "episode",
    )
    assert (details.title, details.parent_title, details.grandparent_title) == (
        "Pilot",
        "Season 1",
        "Breaking Bad",
    )
    assert (details.media_duration, details.media_duration_ms, details.year) == (
        3480,
        3_480_000,
        2008,
    )
    assert (details.ip_address, details.transcode_decision) == ("2001:db8::7", "transcode")
    assert (details.video_resolution, details.video_codec) == ("4k", "hevc")
    assert (details.audio_codec, details.audio_channels) == ("eac3", 6)  # the default stream
    assert details.stream_bitrate == 8000  # what is sent (transcoding), in kbps
    assert (details.platform, details.player, details.device) == ("Android TV", "Shield", "Tv")
    assert seen.raw is not None and "Capabilities" not in json.loads(seen.raw)


def test_an_emby_entry_with_numeric_ids_reads_the_same_way() -> None:
    emby = {**ENTRY, "NowPlayingItem": {**ENTRY["NowPlayingItem"], "Id": 208431}}
    seen = observe_session(emby)
    assert seen is not None and (seen.item_id, seen.details.rating_key) == ("208431", "208431")


def test_a_push_keeps_idle_sessions_out_and_names_unreadable_ones() -> None:
    idle = {"Id": "idle", "UserId": "u", "PlayState": {}}
    broken = {**ENTRY, "Id": "broken", "UserId": ""}
    playing, unknown, problems = observe_sessions([ENTRY, idle, broken, "junk"])
    assert [seen.session_id for seen in playing] == [ENTRY["Id"]]
    assert unknown == {"broken"}
    assert len(problems) == 2 and "without UserId" in problems[0]


def test_a_documented_webhook_notification_is_the_same_sessions_observation() -> None:
    body = json.dumps(NOTIFICATION).encode()
    server_id, seen = observe_notification(decode_notification(body), body)
    assert server_id == SERVER
    assert (seen.session_id, seen.item_id) == (ENTRY["Id"], ENTRY["NowPlayingItem"]["Id"])
    assert (seen.position_ms, seen.paused) == (60_000, False)
    details = seen.details
    assert details.title == 'Say "When"'  # the plugin's escaping undone
    assert (details.parent_title, details.grandparent_title) == ("Season 1", "Breaking Bad")
    assert (details.media_duration_ms, details.transcode_decision) == (3_480_000, "direct stream")
    assert (details.video_resolution, details.audio_codec, details.audio_channels) == (
        "1080",
        "ac3",
        6,
    )
    assert (details.platform, details.player, details.machine_id) == (
        "Android TV",
        "Shield",
        "a8f7e6d5",
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"Playback started: Pilot", "not JSON"),
        (b"[1]", "not an object"),
    ],
)
def test_a_body_that_is_not_a_notification_is_refused_with_the_reason(
    body: bytes, reason: str
) -> None:
    with pytest.raises(MalformedNotification, match=reason):
        decode_notification(body)


def test_a_notification_without_its_ids_is_refused_naming_them() -> None:
    payload = {k: v for k, v in NOTIFICATION.items() if k not in ("ItemId", "UserId")}
    with pytest.raises(MalformedNotification, match="without ItemId, UserId"):
        observe_notification(payload, json.dumps(payload).encode())
