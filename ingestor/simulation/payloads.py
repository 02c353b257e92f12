"""What the simulated servers send, in their own formats: Plex webhook bodies, Tautulli
history records and Jellyfin ``Sessions`` entries.

The formats are the upstreams' own, as their documentation and source describe them: keys,
types and units as the upstream writes them, only fields a real payload of that kind carries,
and nothing the adapters would need that the upstream does not send (Plex webhooks carry no
time, Jellyfin's frames no start, Tautulli's history no server id).

The parts of a payload that stay the same during a playback are built once (the ``*_static``
and ``*_template`` builders) and the moving parts added per report, so a month of a few
hundred users stays fast.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from ingestor.simulation.model import PLEX_SECTIONS, Playback, World

_json = msgspec.json.Encoder()

TICKS_PER_MS = 10_000
PLEX_SERVER_TITLE = "Plex Media Server"
_HEIGHTS = {"4k": 2160, "1080": 1080, "720": 720}
_PLAY_METHODS = {"direct play": "DirectPlay", "copy": "DirectStream", "transcode": "Transcode"}
_LIBRARY_TYPES = {"movie": "movie", "episode": "show"}


# ---------------------------------------------------------------------------------------
# Plex Media Server: the JSON ``payload`` part of a webhook's multipart body


def plex_webhook_static(world: World, pb: Playback) -> dict[str, Any]:
    """The parts of a playback's webhooks that every report repeats."""
    person, device, item = pb.person, pb.device, pb.item
    section_id, section_title = PLEX_SECTIONS[item.media_type]
    metadata: dict[str, Any] = {
        "librarySectionType": _LIBRARY_TYPES[item.media_type],
        "ratingKey": item.rating_key,
        "key": f"/library/metadata/{item.rating_key}",
        "guid": f"plex://{item.media_type}/{_guid24(item.rating_key)}",
        "type": item.media_type,
        "title": item.title,
    }
    if item.media_type == "episode":
        metadata["parentTitle"] = item.parent_title
        metadata["grandparentTitle"] = item.grandparent_title
    metadata |= {
        "librarySectionTitle": section_title,
        "librarySectionID": int(section_id),
        "librarySectionKey": f"/library/sections/{section_id}",
        "year": item.year,
        "duration": item.duration_s * 1000,
    }
    return {
        "user": True,
        "owner": True,
        "Account": {
            "id": int(person.plex_user_id),
            "thumb": person.plex_thumb,
            "title": person.username,
        },
        "Server": {"title": PLEX_SERVER_TITLE, "uuid": world.plex_server_id},
        "Player": {
            "local": device.local,
            "publicAddress": device.public_ip,
            "title": device.player,
            "uuid": device.machine_id,
        },
        "Metadata": metadata,
    }


def plex_webhook(static: dict[str, Any], kind: str, position_ms: int) -> bytes:
    """One webhook's ``payload`` part: ``kind`` (``media.play``...) at the playhead
    ``position_ms``. ``viewOffset`` is absent when a play starts from the beginning, as Plex
    sends it for an item with no saved progress."""
    metadata = static["Metadata"]
    if not (kind == "media.play" and position_ms == 0):
        metadata = {**metadata, "viewOffset": position_ms}
    return _json.encode({"event": kind, **static, "Metadata": metadata})


def _guid24(rating_key: str) -> str:
    return hashlib.blake2b(rating_key.encode(), digest_size=12).hexdigest()


# ---------------------------------------------------------------------------------------
# Tautulli: one finished stream's history, as its database joins it


def tautulli_record(world: World, pb: Playback, row_id: int) -> dict[str, Any]:
    """The ``session_history`` row of ``pb`` joined with its metadata, media info and user,
    under the names the import reads (``session_history.id`` = ``row_id``)."""
    person, device, item, stream = pb.person, pb.device, pb.item, pb.stream
    episode = item.media_type == "episode"
    section_id, section_title = PLEX_SECTIONS[item.media_type]
    return {
        "id": row_id,
        "reference_id": row_id,
        "started": pb.tautulli_started_s,
        "stopped": pb.tautulli_stopped_s,
        "paused_counter": pb.paused_ms // 1000,
        "view_offset": pb.final_ms,
        "user_id": int(person.plex_user_id),
        "user": person.username,
        "ip_address": device.lan_ip if device.local else device.public_ip,
        "player": device.player,
        "product": device.product,
        "product_version": device.product_version,
        "platform": device.platform,
        "platform_version": "",
        "machine_id": device.machine_id,
        "bandwidth": None,
        "location": "lan" if device.local else "wan",
        "secure": 1,
        "relayed": 0,
        "media_type": item.media_type,
        "history_rating_key": int(item.rating_key),
        "rating_key": int(item.rating_key),
        "parent_rating_key": "",
        "grandparent_rating_key": "",
        "title": item.title,
        "parent_title": item.parent_title,
        "grandparent_title": item.grandparent_title,
        "original_title": "",
        "full_title": f"{item.grandparent_title} - {item.title}" if episode else item.title,
        "year": item.year,
        "media_index": "",
        "parent_media_index": "",
        "originally_available_at": f"{item.year}-01-01",
        "guid": f"plex://{item.media_type}/{_guid24(item.rating_key)}",
        "media_duration_ms": item.duration_s * 1000,
        "live": 0,
        "transcode_decision": stream.decision,
        "video_resolution": stream.resolution,
        "video_codec": stream.video_codec,
        "video_dynamic_range": "SDR",
        "audio_codec": stream.audio_codec,
        "audio_channels": None,
        "stream_bitrate": stream.bitrate_kbps,
        "username": person.username,
        "users_friendly_name": person.friendly_name,
        "users_thumb": person.plex_thumb,
        "users_custom_thumb": "",
        "section_id": int(section_id),
        "library_name": section_title,
    }


# ---------------------------------------------------------------------------------------
# Jellyfin: one entry of a ``Sessions`` list (SessionInfoDto)


def jellyfin_session_id(client: str, device_id: str) -> str:
    """Jellyfin's session ``Id``: the MD5 of client name and device id, reused by every
    playback of that client on that device."""
    return hashlib.md5((client + device_id).encode("utf-16-le"), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class SessionTemplate:
    """A playing session's entry without its ``PlayState``, and what goes into it."""

    server_id: str
    entry: dict[str, Any]
    play_method: str
    media_source_id: str


def jellyfin_session_template(world: World, pb: Playback) -> SessionTemplate:
    """The parts of a playing session's entry that stay the same during ``pb``."""
    person, device, item, stream = pb.person, pb.device, pb.item, pb.stream
    server_id = world.jellyfin(person).server_id
    source_stream = {
        "Type": "Video",
        "Codec": item.video_codec,
        "Index": 0,
        "Height": _HEIGHTS[item.resolution],
        "Width": _HEIGHTS[item.resolution] * 16 // 9,
        "BitRate": item.bitrate_kbps * 1000,
    }
    now_playing: dict[str, Any] = {
        "Name": item.title,
        "ServerId": server_id,
        "Id": item.rating_key,
        "Type": "Episode" if item.media_type == "episode" else "Movie",
        "MediaType": "Video",
        "RunTimeTicks": item.duration_s * 1000 * TICKS_PER_MS,
        "ProductionYear": item.year,
    }
    if item.media_type == "episode":
        now_playing["SeriesName"] = item.grandparent_title
        now_playing["SeasonName"] = item.parent_title
    now_playing["MediaStreams"] = [
        source_stream,
        {"Type": "Audio", "Codec": item.audio_codec, "Index": 1, "IsDefault": True},
    ]
    entry: dict[str, Any] = {
        "RemoteEndPoint": device.lan_ip if device.local else device.public_ip,
        "PlayableMediaTypes": ["Audio", "Video"],
        "Id": jellyfin_session_id(device.product, device.machine_id),
        "UserId": person.jellyfin_user_id,
        "UserName": person.username,
        "Client": device.product,
        "DeviceName": device.player,
        "DeviceId": device.machine_id,
        "ApplicationVersion": device.product_version,
        "IsActive": True,
        "SupportsMediaControl": True,
        "SupportsRemoteControl": True,
        "ServerId": server_id,
        "NowPlayingItem": now_playing,
    }
    if stream.decision == "transcode":
        entry["TranscodingInfo"] = {
            "AudioCodec": stream.audio_codec,
            "VideoCodec": stream.video_codec,
            "Container": "ts",
            "IsVideoDirect": False,
            "IsAudioDirect": stream.audio_codec == item.audio_codec,
            "Bitrate": stream.bitrate_kbps * 1000,
            "Height": _HEIGHTS[stream.resolution],
        }
    return SessionTemplate(server_id, entry, _PLAY_METHODS[stream.decision], item.rating_key)


def jellyfin_session(template: SessionTemplate, position_ms: int, paused: bool) -> dict[str, Any]:
    """The session's entry in a list sent while its playhead is at ``position_ms``."""
    return {
        "PlayState": {
            "PositionTicks": position_ms * TICKS_PER_MS,
            "CanSeek": True,
            "IsPaused": paused,
            "IsMuted": False,
            "VolumeLevel": 100,
            "MediaSourceId": template.media_source_id,
            "PlayMethod": template.play_method,
            "RepeatMode": "RepeatNone",
            "PlaybackOrder": "Default",
        },
        **template.entry,
    }


def jellyfin_sessions_message(entries: list[dict[str, Any]], number: int) -> dict[str, Any]:
    """A ``Sessions`` push over the WebSocket (the ``number``-th the server sent)."""
    return {"MessageType": "Sessions", "MessageId": f"{number:032x}", "Data": entries}
