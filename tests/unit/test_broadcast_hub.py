"""The live feed's hub: what it sends, to whom, in which order, and what it does with a
subscriber that falls behind. Batches come from the real pipeline over a real DuckDB file."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request

from ingestor.broadcast import (
    CLOSE_GOING_AWAY,
    CLOSE_TOO_SLOW,
    EVENT_TYPES,
    AlertMessage,
    BroadcastHub,
    EventMessage,
    Filters,
    decode_message,
)
from ingestor.dedup import DedupIndex
from ingestor.http import authorize
from ingestor.pipeline import Message, Pipeline
from ingestor.projection import BatchResult, Projection
from ingestor.records import Alert, encode_record
from tests.factory import T0, event, messages, plex_playback, tautulli_summary


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    projection = Projection(tmp_path / "hub.duckdb")
    yield Pipeline(projection, DedupIndex())
    projection.close()


def alert_message(seq: int, **fields: str) -> Message:
    alert = Alert(
        alert_id=f"a{seq}",
        rule="concurrent_streams",
        severity="warning",
        occurred_at=T0,
        message="two streams at once",
        **fields,
    )
    return Message(seq, T0, encode_record(alert), subject="alert.concurrent_streams")


def batch(pipeline: Pipeline) -> BatchResult:
    """A playback (5 events), its exact repeat (a drop), the Tautulli summary (a link), an
    alert in the middle, and another user's play on another server."""
    playback = plex_playback()
    other = event("plex", "play", T0 + timedelta(minutes=1), "s9", user_id="77", server_id="srv-b")
    other = msgspec.structs.replace(other, username="bob")
    items = [*messages([*playback[:3]]), alert_message(4, user_id="8312457")]
    items += messages([*playback[3:], playback[0], tautulli_summary(), other], first_seq=5)
    return pipeline.process(items).result


class Recorder:
    """What the connection side would be told when a subscription ends."""

    def __init__(self) -> None:
        self.ended: list[tuple[int, str]] = []

    def __call__(self, code: int, reason: str) -> None:
        self.ended.append((code, reason))


def drain(sub) -> list:
    """Everything queued for ``sub``, decoded (the sender's side, without a socket)."""
    out = []
    while sub.behind:
        out.append(decode_message(sub._queue.popleft()))
    return out


def test_accepted_events_and_alerts_arrive_in_stream_order_and_drops_do_not(
    pipeline: Pipeline,
) -> None:
    result = batch(pipeline)
    hub = BroadcastHub()
    sub = hub.subscribe(Filters(), Recorder())
    hub.publish(result)
    received = drain(sub)
    seqs = [m.seq for m in received]
    assert seqs == [1, 2, 3, 4, 5, 6, 8, 9]  # seq 7 is the exact repeat: dropped, not sent
    assert isinstance(received[3], AlertMessage) and received[3].alert.alert_id == "a4"
    events = [m for m in received if isinstance(m, EventMessage)]
    assert [m.action for m in events] == ["open", "fold", "fold", "fold", "fold", "link", "open"]
    assert events[0].event == plex_playback()[0]
    assert events[0].recorded_at == result.applied[0].recorded_at
    assert hub.stats()["events"] == 7 and hub.stats()["alerts"] == 1


@pytest.mark.parametrize(
    ("query", "seqs"),
    [
        ({"server": "srv-b"}, [9]),
        ({"user": "bob"}, [9]),  # username
        ({"user": "8312457"}, [1, 2, 3, 4, 5, 6, 8]),  # user_id; the alert is that user's
        ({"user": "bob,8312457"}, [1, 2, 3, 4, 5, 6, 8, 9]),
        ({"event_type": "play"}, [1, 9]),
        ({"event_type": "alert"}, [4]),
        ({"event_type": "summary,alert"}, [4, 8]),
        ({"event_type": "play", "user": "8312457"}, [1]),
        ({"server": "nowhere"}, []),
    ],
)
def test_filters_select_by_server_user_and_event_type(
    pipeline: Pipeline, query: dict[str, str], seqs: list[int]
) -> None:
    hub = BroadcastHub()
    sub = hub.subscribe(Filters.parse(query), Recorder())
    everyone = hub.subscribe(Filters(), Recorder())
    hub.publish(batch(pipeline))
    assert [m.seq for m in drain(sub)] == seqs
    assert len(drain(everyone)) == 8


def test_filter_values_may_repeat_and_an_unknown_event_type_names_the_accepted_ones() -> None:
    request = make_mocked_request("GET", "/ws/events?user=a&user=b,c&event_type=play")
    filters = Filters.parse(request.query)
    assert filters.users == {"a", "b", "c"} and filters.event_types == {"play"}
    with pytest.raises(ValueError, match="unknown event_type plays") as info:
        Filters.parse({"event_type": "plays"})
    assert all(kind in str(info.value) for kind in EVENT_TYPES)


def test_a_subscriber_that_falls_behind_is_dropped_and_the_others_keep_everything(
    pipeline: Pipeline,
) -> None:
    result = batch(pipeline)  # 8 messages per batch for an unfiltered subscriber
    hub = BroadcastHub(queue_limit=10)
    slow_told, fast_told = Recorder(), Recorder()
    slow = hub.subscribe(Filters(), slow_told)
    fast = hub.subscribe(Filters(), fast_told)
    hub.publish(result)
    fast_seen = len(drain(fast))
    hub.publish(result)  # the slow one now holds 8 and is offered 8 more: over its limit
    fast_seen += len(drain(fast))
    too_slow = [(CLOSE_TOO_SLOW, "too slow: 11 messages behind")]
    assert slow_told.ended == too_slow
    assert slow.behind == 0  # its queue is freed at once
    assert hub.clients == 1 and hub.stats()["dropped_slow"] == 1
    hub.publish(result)
    assert fast_seen + len(drain(fast)) == 24 and fast_told.ended == []
    assert slow.behind == 0 and slow_told.ended == [
        (CLOSE_TOO_SLOW, "too slow: 11 messages behind")
    ]


async def test_next_waits_for_messages_in_order_and_returns_none_once_ended(
    pipeline: Pipeline,
) -> None:
    hub = BroadcastHub()
    told = Recorder()
    sub = hub.subscribe(Filters.parse({"event_type": "play"}), told)
    waiting = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    hub.publish(batch(pipeline))
    first = decode_message(await asyncio.wait_for(waiting, 5))
    second = decode_message(await asyncio.wait_for(sub.next(), 5))
    assert (first.seq, second.seq) == (1, 9) and sub.sent == 2
    pending = asyncio.ensure_future(sub.next())
    await asyncio.sleep(0)
    hub.close_all()
    assert await asyncio.wait_for(pending, 5) is None
    assert told.ended == [(CLOSE_GOING_AWAY, "ingestor stopping")] and hub.clients == 0


def test_publishing_without_subscribers_only_counts(pipeline: Pipeline) -> None:
    hub = BroadcastHub()
    hub.publish(batch(pipeline))
    assert hub.stats()["messages_queued"] == 0 and hub.stats()["events"] == 7


def test_unsubscribed_clients_are_offered_nothing(pipeline: Pipeline) -> None:
    hub = BroadcastHub()
    sub = hub.subscribe(Filters(), Recorder())
    hub.unsubscribe(sub)
    hub.publish(batch(pipeline))
    assert sub.behind == 0 and hub.clients == 0


@pytest.mark.parametrize(
    ("remote", "token", "headers", "query", "status"),
    [
        ("127.0.0.1", None, {}, "", None),
        ("::1", None, {}, "", None),
        ("192.0.2.7", None, {}, "", 403),  # from afar without a configured token
        ("192.0.2.7", "s3cret", {}, "", 401),
        ("192.0.2.7", "s3cret", {"Authorization": "Bearer nope"}, "", 401),
        ("127.0.0.1", "s3cret", {}, "?token=nope", 401),  # a token binds loopback too
        ("192.0.2.7", "s3cret", {"Authorization": "Bearer s3cret"}, "", None),
        ("192.0.2.7", "s3cret", {}, "?token=s3cret", None),
    ],
)
def test_the_live_feed_is_for_loopback_or_token_holders_only(
    remote: str, token: str | None, headers: dict[str, str], query: str, status: int | None
) -> None:
    request = make_mocked_request("GET", f"/ws/events{query}", headers=headers)
    request = request.clone(remote=remote)
    refused = authorize(request, token, "BROADCAST_TOKEN", "the live feed", query_param=True)
    assert (refused.status if refused is not None else None) == status
    if refused is not None:
        assert "BROADCAST_TOKEN" in refused.text
