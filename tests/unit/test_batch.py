"""The columnar decode accepts, rejects and reads exactly what the per-event decoder does."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestor.batch import FRAME_COLUMNS, decode_batch, decode_table
from ingestor.eventlog import messages_frame
from ingestor.events import MediaEvent, encode_event, step_of
from ingestor.messages import Message
from ingestor.pipeline import decode_messages
from ingestor.records import AuditDecision, encode_record
from tests.factory import T0, event, plex_playback, tautulli_summary

AT = datetime(2026, 1, 6, 9, tzinfo=UTC)
V0 = (Path(__file__).parent / "data" / "v0_snapshot_event.json").read_bytes().strip()
STRING_FIELDS = ["title", "username", "user_id", "platform", "raw_payload", "event_id"]


def base_events() -> list[MediaEvent]:
    quoted = msgspec.structs.replace(
        event("plex", "play", T0, "q1", started_at=T0), title='He said "hi" \\ \t\n'
    )
    raw = tautulli_summary(raw_payload=json.dumps({"a": None, "b": [1, "x\u00e9"], "c": "\\"}))
    unicode = msgspec.structs.replace(
        event("jellyfin", "progress", T0, "u1", position_ms=5), title="Amélie 😀"
    )
    return [*plex_playback(), raw, quoted, unicode]


def mutations(payload: bytes) -> list[bytes]:
    """Spellings of the same event other producers might write, valid or not."""
    obj = json.loads(payload)
    out = [
        json.dumps(obj).encode(),  # whitespace after separators
        json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode(),  # \\u escapes
        json.dumps({**obj, "schema_version": 1}, separators=(",", ":")).encode(),
        json.dumps({**obj, "schema_version": 2}, separators=(",", ":")).encode(),
        json.dumps({**obj, "extra": {"title": 5}}, separators=(",", ":")).encode(),
        json.dumps({"zzz": "a", **obj}, separators=(",", ":")).encode(),
        payload[:-1] + b',"title":"again"}',  # a repeated key (msgspec keeps the last)
        payload[:-1] + b',"year":null}',
        payload.replace(b'"event_type":"', b'"event_type" :"'),
        payload.replace(b'"title":"', b'"titl\\u0065":"'),
        payload + b"\n",
        b" " + payload,
        payload[:-1],
        b"",
        b"[]",
        b"null",
        b'{"a":1}',
        V0,
    ]
    for name in STRING_FIELDS:
        for value in (5, True, None, "", {"x": 1}, [1], "\ud800"):
            changed = {**obj, name: value}
            out.append(json.dumps(changed, separators=(",", ":")).encode())
    for name in ("occurred_at", "started_at"):
        if name in obj:
            for spelled in (
                obj[name].replace("Z", "+00:00"),
                obj[name].replace("Z", "+02:00"),
                obj[name].replace("Z", ""),
                obj[name].replace("T", " "),
                obj[name][:-1] + ".000000Z" if "." not in obj[name] else obj[name],
                "2026-02-30T00:00:00Z",
                "0000-01-01T00:00:00Z",
                12345,
            ):
                out.append(json.dumps({**obj, name: spelled}, separators=(",", ":")).encode())
    for name, value in (("year", "1999"), ("year", 1.5), ("local", 1), ("year", 2**40)):
        out.append(json.dumps({**obj, name: value}, separators=(",", ":")).encode())
    out.append(json.dumps({**obj, "event_type": "bogus"}, separators=(",", ":")).encode())
    out.append(json.dumps({**obj, "event_id": "0000-00"}, separators=(",", ":")).encode())
    return out


def corpus() -> list[bytes]:
    payloads = [encode_event(e) for e in base_events()]
    return payloads + [m for p in payloads for m in mutations(p)]


CORPUS = corpus()


def expected_row(message: Message, event: MediaEvent) -> dict:
    row = {name: getattr(event, name) for name in MediaEvent.__struct_fields__}
    row["seq"] = message.seq
    row["recorded_at"] = message.recorded_at
    row["payload"] = message.data.decode()
    row["step"] = step_of(event)
    row["start"] = event.playback_start.timestamp()
    row["item"] = event.rating_key or event.title
    row["start_text"] = encode_event(event.playback_start)[1:-1].decode()  # type: ignore[arg-type]
    return row


def assert_same_as_per_event(batch: list[Message]) -> None:
    good, bad = decode_messages(batch)
    try:
        decoded = decode_batch(batch)
        frame = decoded.frame()
    except Exception as exc:  # a number out of its column's range: the old path failed too
        assert any(str(2**40).encode() in m.data for m in batch), exc
        return
    assert [(r.message.seq, r.error, r.category) for r in decoded.rejected] == [
        (r.message.seq, r.error, r.category) for r in bad
    ]
    media = [(m, e) for m, e in good if isinstance(e, MediaEvent)]
    assert frame.columns == list(FRAME_COLUMNS)
    assert frame.height == len(media)
    for row, (message, decoded_event) in zip(frame.iter_rows(named=True), media, strict=True):
        expected = expected_row(message, decoded_event)
        assert row == expected
    records = [(m.seq, r) for m, r in good if not isinstance(r, MediaEvent)]
    assert [(m.seq, r) for m, r in decoded.records] == records


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(len(CORPUS))), min_size=1, max_size=40))
def test_the_columnar_decode_decides_and_reads_like_the_per_event_decoder(picks) -> None:
    batch = [
        Message(seq, AT + timedelta(seconds=seq), CORPUS[i], "playback.x.movie")
        for seq, i in enumerate(picks, start=1)
    ]
    assert_same_as_per_event(batch)


def test_every_spelling_alone_is_decoded_like_the_per_event_decoder() -> None:
    for i, payload in enumerate(CORPUS):
        assert_same_as_per_event([Message(i + 1, AT, payload, "playback.x.movie")])


def test_what_the_ingestor_writes_takes_the_fast_path() -> None:
    events = base_events()
    decoded = decode_batch([Message(i + 1, AT, encode_event(e)) for i, e in enumerate(events)])
    assert decoded.fast.height == len(events) and not decoded.slow


def test_records_and_media_events_are_told_apart_by_subject() -> None:
    decision = AuditDecision.make("abc", "confirm", AT)
    batch = [
        Message(1, AT, encode_event(plex_playback()[0]), "playback.plex.movie"),
        Message(2, AT, encode_record(decision), decision.subject),
        Message(3, AT, b"not json", "alert.x"),
    ]
    decoded = decode_batch(batch)
    assert decoded.fast.height == 1
    assert [(m.seq, r) for m, r in decoded.records] == [(2, decision)]
    assert [r.message.seq for r in decoded.rejected] == [3]


def test_an_archive_table_decodes_like_its_messages() -> None:
    batch = [Message(i + 1, AT, p, "playback.x.movie") for i, p in enumerate(CORPUS[:40])]
    from_table = decode_table(messages_frame(batch))
    from_messages = decode_batch(batch)
    assert from_table.frame().equals(from_messages.frame())
    assert [r.error for r in from_table.rejected] == [r.error for r in from_messages.rejected]


def test_the_router_reads_recorded_times_as_message_of_does() -> None:
    import random

    import pyarrow as pa

    from ingestor.router import _recorded_micros

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rng = random.Random(3)
    nanos = [rng.randrange(1_700_000_000 * 10**9, 1_900_000_000 * 10**9) for _ in range(20_000)]
    nanos += [1_767_571_245_999_999_500 + k for k in range(-600, 600)]
    got = _recorded_micros(pa.array(nanos, pa.int64())).to_pylist()
    expected = [
        (datetime.fromtimestamp(ns / 1e9, UTC) - epoch) // timedelta(microseconds=1) for ns in nanos
    ]
    assert got == expected


def test_an_archived_v1_log_takes_the_fast_path_with_empty_libraries() -> None:
    lines = (Path(__file__).parent / "data" / "v1_log.jsonl").read_bytes().splitlines()
    now = datetime(2026, 12, 1, tzinfo=UTC)
    decoded = decode_batch([Message(i + 1, now, line) for i, line in enumerate(lines)])
    assert decoded.fast.height == len(lines) and not decoded.slow and not decoded.rejected
    assert set(decoded.frame()["library_id"]) == {""}
    assert set(decoded.frame()["library_name"]) == {""}


def test_events_with_libraries_take_the_fast_path() -> None:
    events = plex_playback(library_id="2", library_name="TV Shows")
    decoded = decode_batch([Message(i + 1, T0, encode_event(e)) for i, e in enumerate(events)])
    assert decoded.fast.height == len(events) and not decoded.slow
    assert set(decoded.frame()["library_name"]) == {"TV Shows"}
