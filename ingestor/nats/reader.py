"""Read a range of ``MEDIA_EVENTS`` in sequence order, fast, without touching any durable.

An ephemeral :class:`~ingestor.nats.consumer.Consumer` with no acks whose handler hands each
batch to the caller: the same pull loop, statuses and loss guard as the router's. Used by
``ingestor replay``, the detector's warm-up and the workbench's EventLog.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg

from ingestor.nats.consumer import Consumer, Delivery, Handler
from ingestor.nats.streams import STREAM
from ingestor.pipeline import Message


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
    first, last = await stream_bounds(nc, stream)
    if stop_seq is None:
        stop_seq = last
    start_seq = max(start_seq, first, 1)
    if last == 0 or start_seq > stop_seq:
        return
    reader = _Range(after=start_seq - 1)
    consumer = Consumer(
        nc,
        durable=None,
        stream=stream,
        batch_size=batch,
        ack=False,
        max_waiting=1,
        no_wait=True,
        stop_seq=stop_seq,
        retries=2,
    )
    running = asyncio.create_task(consumer.run(reader))
    try:
        while True:
            taking = asyncio.ensure_future(reader.ready.get())
            await asyncio.wait({taking, running}, return_when=asyncio.FIRST_COMPLETED)
            if taking.done():
                yield taking.result()
                continue
            taking.cancel()
            running.result()  # raises what ended the read
            while not reader.ready.empty():
                yield reader.ready.get_nowait()
            return
    finally:
        consumer.stop()
        running.cancel()
        with contextlib.suppress(BaseException):
            await running


class _Range(Handler):
    """Hands each batch to the generator, one at a time: the next is fetched meanwhile."""

    def __init__(self, after: int) -> None:
        self.last = after
        self.ready: asyncio.Queue[list[Message]] = asyncio.Queue(maxsize=1)

    async def resume(self) -> int:
        return self.last

    def checkpoint(self) -> int:
        return self.last

    async def handle(self, batch: list[Delivery]) -> None:
        await self.ready.put([message_of(d.msg) for d in batch])
        self.last = batch[-1].seq


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
