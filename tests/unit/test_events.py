from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestor.errors import InvalidEvent
from ingestor.events import (
    SCHEMA_VERSION,
    CorrelationKey,
    EventType,
    decode_event,
    encode_event,
    make_event_id,
    step_key,
    subject_token,
    upcaster,
)
from tests.factory import T0, event, plex_playback

DATA = Path(__file__).parent / "data"


def test_event_id_is_deterministic_and_never_zero() -> None:
    a = make_event_id("plex", "srv", "media.play", "session", 1767643200000)
    assert a == make_event_id("plex", "srv", "media.play", "session", 1767643200000)
    assert a != make_event_id("plex", "srv", "media.play", "session", 1767643200001)
    assert len(a) == 32 and a.strip("0") != ""


def test_event_id_parts_cannot_collide_by_concatenation() -> None:
    assert make_event_id("plex", "a:b", "c") != make_event_id("plex", "a", "b:c")


def test_encode_decode_round_trip_keeps_every_field() -> None:
    for original in plex_playback():
        decoded = decode_event(encode_event(original))
        assert decoded == original
        assert decoded.schema_version == SCHEMA_VERSION


def test_stored_version_0_snapshot_is_upcast_to_a_summary() -> None:
    stored = (DATA / "v0_snapshot_event.json").read_bytes()
    event = decode_event(stored).validate()
    assert event.schema_version == 1
    assert event.event_type is EventType.SUMMARY
    assert event.user_id == "8312457" and event.rating_key == "54321"
    assert event.occurred_at == datetime(2026, 1, 5, 22, 3, tzinfo=UTC)
    assert event.play_duration == 110 * 60  # the reference stored Tautulli minutes
    assert event.server_id == "default"


def test_registering_a_second_upcaster_for_a_version_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        upcaster(0)(lambda payload: payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "undecodable"),
        (b"[1, 2]", "not an object"),
        (b'{"schema_version": 99}', "unknown schema_version"),
        (b'{"schema_version": 1, "event_id": "x"}', "invalid event payload"),
    ],
)
def test_unreadable_payloads_raise_invalid_event(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        decode_event(payload)


def test_validate_names_every_problem() -> None:
    bad = msgspec.structs.replace(event("plex", "play", T0, "s"), event_id="0000-0000", title="")
    with pytest.raises(InvalidEvent) as info:
        bad.validate()
    assert "event_id is empty or all zero" in str(info.value)
    assert "title is empty" in str(info.value)


def test_naive_times_are_rejected() -> None:
    naive = msgspec.structs.replace(event("plex", "play", T0, "s"), started_at=datetime(2026, 1, 5))
    with pytest.raises(InvalidEvent, match="started_at has no time zone"):
        naive.validate()


def test_subject_is_playback_server_source_media_type_with_safe_tokens() -> None:
    played = event("plex", "play", T0, "s")
    assert played.subject == f"playback.{played.server_id}.plex.movie"
    assert subject_token("tautulli import.v2") == "tautulli_import_v2"


def test_session_steps_distinguish_pauses_by_position() -> None:
    first = event("jellyfin", "pause", T0, "s", position_ms=1000)
    again = event("jellyfin", "pause", T0 + timedelta(seconds=30), "s", position_ms=1000)
    later = event("jellyfin", "pause", T0 + timedelta(minutes=5), "s", position_ms=5000)
    assert step_key(first) == step_key(again)
    assert step_key(first) != step_key(later)


@given(
    st.text(min_size=1, max_size=12),
    st.text(max_size=12),
    st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1)),
)
def test_correlation_keys_with_separators_round_trip(
    user: str, device: str, start: datetime
) -> None:
    key = CorrelationKey("plex", "srv:1", user + ":x", "webhook:abc:1", device, start)
    assert CorrelationKey.decode(key.encode()) == key


def test_times_in_other_zones_are_the_same_instant() -> None:
    paris = T0.astimezone(timezone(timedelta(hours=1)))
    assert decode_event(encode_event(event("plex", "play", paris, "s"))).occurred_at == T0


def test_an_archived_v1_payload_decodes_with_an_unknown_library() -> None:
    """Bytes as encode_event wrote them before events carried libraries (no schema_version
    key: it was the default): still version 1, libraries empty, nothing else changed."""
    stored = (DATA / "v1_log.jsonl").read_bytes().splitlines()[0]
    assert b"schema_version" not in stored and b"library" not in stored
    event = decode_event(stored).validate()
    assert event.schema_version == SCHEMA_VERSION == 1
    assert (event.library_id, event.library_name) == ("", "")
    assert encode_event(event) == stored  # empty libraries are left out, as before


def test_a_library_survives_the_round_trip() -> None:
    original = event("plex", "play", T0, "s", library_id="1", library_name="Movies")
    wire = encode_event(original)
    assert b'"library_id":"1","library_name":"Movies"' in wire
    assert decode_event(wire) == original
