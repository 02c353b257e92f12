"""read_range reaches the end of its range without waiting for a pull request to expire.

A pull request lasts 2 s when the server holds it; a read that waited for it once would take at
least that long, so a bound of 1 s tells the two apart without being a tight timing check.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from ingestor.config import Settings
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.reader import read_range
from ingestor.nats.streams import STREAM

pytestmark = pytest.mark.integration

PUBLISHED = 1500
AGED_OUT = 10  # 1..10 purged, as if aged out by max_age
DELETED = {11, 250, 251, 999, 1000, 1001, 1244, 1500}  # 1244: the end of a read below
PROMPT_S = 1.0  # a held pull request expires after 2 s


@pytest.fixture
async def handle(settings: Settings) -> AsyncIterator[NatsHandle]:
    handle = await open_nats(settings)
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def stream(handle: NatsHandle) -> NatsHandle:
    """MEDIA_EVENTS with sequences 1..1500 stored; the aged-out and deleted ones are gone."""
    for seq in range(1, PUBLISHED + 1):
        ack = await handle.js.publish("audit.test", str(seq).encode(), stream=STREAM)
        assert ack.seq == seq
    await handle.js.purge_stream(STREAM, seq=AGED_OUT + 1)
    for seq in sorted(DELETED):
        assert await handle.js.delete_msg(STREAM, seq)
    return handle


def present(start: int, stop: int) -> list[int]:
    return [s for s in range(start, stop + 1) if s > AGED_OUT and s not in DELETED]


async def timed_read(
    handle: NatsHandle, start: int, stop: int | None, batch: int
) -> tuple[list[list[int]], float]:
    began = time.monotonic()
    batches = [
        [m.seq for m in part]
        async for part in read_range(handle.nc, start, stop, batch=batch, stream=STREAM)
    ]
    return batches, time.monotonic() - began


@pytest.mark.parametrize(
    ("start", "stop"),
    [
        (700, 700),  # one message inside the stream
        (1499, 1499),  # the stream's last stored message
        (1499, None),  # the same, up to the stream's last sequence (1500, deleted)
        (1, 1),  # aged out: nothing
        (1500, 1500),  # deleted: nothing
    ],
)
async def test_a_read_of_one_message_is_prompt(
    stream: NatsHandle, start: int, stop: int | None
) -> None:
    batches, took = await timed_read(stream, start, stop, batch=5000)
    assert [s for b in batches for s in b] == present(start, stop or PUBLISHED)
    assert took < PROMPT_S, f"read of {start}..{stop} took {took:.2f} s"


@pytest.mark.parametrize(
    ("start", "stop"),
    [
        (11, 1244),  # 1,234 sequences ending on a deleted one, more messages after it
        (267, 1500),  # 1,234 sequences up to the stream's end (itself deleted)
        (1, None),  # everything, from before the first stored sequence
    ],
)
async def test_a_range_is_read_once_in_order_and_promptly_despite_gaps(
    stream: NatsHandle, start: int, stop: int | None
) -> None:
    batches, took = await timed_read(stream, start, stop, batch=1000)
    seqs = [s for b in batches for s in b]
    assert seqs == present(start, stop or PUBLISHED)  # every one, once, in order
    assert all(len(b) <= 1000 for b in batches)
    assert took < PROMPT_S, f"read of {start}..{stop} took {took:.2f} s"
