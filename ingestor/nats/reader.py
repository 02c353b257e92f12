"""Read a range of ``MEDIA_EVENTS`` in sequence order, fast, without touching any durable.

An ephemeral pull consumer with no acks, fed by explicit pull requests whose replies are
collected in a subscription callback (the same lean loop as the router's). Used by
``ingestor replay`` and by the workbench's EventLog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ingestor.nats.streams import STREAM
from ingestor.pipeline import Message


class PullStatus(NamedTuple):
    """A status reply to a pull request (``MSG.NEXT``)."""

    over: bool  # the request is over (404 no messages, 408 expired, 409 ...): ask again
    lost: str | None  # the consumer was deleted or JetStream is unavailable: start over


def pull_status(msg: Msg) -> PullStatus | None:
    """The status a reply carries, or None for a message. 100 is an idle heartbeat."""
    if not (msg.headers and "Status" in msg.headers and not msg.data):
        return None
    status = msg.headers.get("Status")
    if status == "100":
        return PullStatus(over=False, lost=None)
    description = msg.headers.get("Description", "")
    gone = status == "503" or (status == "409" and "deleted" in description.lower())
    return PullStatus(over=True, lost=f"{status} {description}".strip() if gone else None)


async def stream_bounds(nc: Client, stream: str = STREAM) -> tuple[int, int]:
    """(first_seq, last_seq) of the stream; (0, 0) when it is empty."""
    info = await nc.jetstream().stream_info(stream)
    if info.state.messages == 0:
        return 0, 0
    return info.state.first_seq, info.state.last_seq


async def read_range(
    nc: Client,
    start_seq: int = 1,
    stop_seq: int | None = None,
    *,
    batch: int = 5000,
    stream: str = STREAM,
) -> AsyncIterator[list[Message]]:
    """Yield lists of messages with ``start_seq <= seq <= stop_seq`` (default: the current
    last sequence), in order. Messages already aged out of the stream are simply absent.
    Never waits for more messages: it ends as soon as it reached stop_seq or the stream's end.
    """
    js = nc.jetstream(timeout=10)
    first, last = await stream_bounds(nc, stream)
    if stop_seq is None:
        stop_seq = last
    start_seq = max(start_seq, first, 1)
    if last == 0 or start_seq > stop_seq:
        return
    info = await js.add_consumer(
        stream,
        ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            max_waiting=1,
        ),
    )
    name = info.name
    # replies are collected in the callback and handed over once per pull request (an
    # asyncio wait per message cost more than the rest of the read: 14k -> 35k messages/s)
    arrived: list[Msg] = []
    request_over = asyncio.Event()
    wanted = 0

    async def on_message(msg: Msg) -> None:
        status = pull_status(msg)
        if status is not None:
            if status.over:
                request_over.set()
            return
        arrived.append(msg)
        if len(arrived) >= wanted:
            request_over.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_message)
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
    try:
        done = False
        next_seq = start_seq
        while not done:
            # Never more than the sequences left up to stop_seq (with gaps fewer arrive), and
            # no_wait without expires: the server delivers what it has, up to the batch, and
            # answers "404 No Messages" as soon as it reaches the stream's end, instead of
            # holding the request until it expires (which cost 2 s per read of the tail).
            # With expires as well, a no_wait request finding nothing pending would be held
            # until it expired (nats-server consumer.go, processNextMsgReq / processWaiting).
            wanted = min(batch, stop_seq - next_seq + 1)
            request_over.clear()
            request = {"batch": wanted, "no_wait": True}
            await nc.publish(subject, json.dumps(request).encode(), reply=inbox)
            await asyncio.wait_for(request_over.wait(), 15)
            received, arrived[:] = arrived[:], []
            out: list[Message] = []
            for msg in received:
                message = message_of(msg)
                next_seq = message.seq + 1
                if message.seq > stop_seq:
                    done = True
                    break
                out.append(message)
                if message.seq == stop_seq:
                    done = True
                    break
            if out:
                yield out
            if not received:
                done = True  # 404: nothing more is there (or the request was refused)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)


def message_of(msg: Msg) -> Message:
    """A pipeline Message from a JetStream delivery, its metadata parsed from the reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``, or with a
    domain and account hash after ``ACK`` in the newer form.
    """
    tokens = msg.reply.split(".")
    offset = 4 if len(tokens) == 9 else 6
    delivered, sseq, _cseq, ns, pending = tokens[offset : offset + 5]
    return Message(
        seq=int(sseq),
        recorded_at=datetime.fromtimestamp(int(ns) / 1e9, UTC),
        data=msg.data,
        subject=msg.subject,
        num_delivered=int(delivered),
        pending=int(pending),
    )
