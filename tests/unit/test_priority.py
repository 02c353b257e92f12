"""The projection's claim on the event loop never stops the other consumers for long."""

from __future__ import annotations

import asyncio
import time

from ingestor.priority import Priority


async def test_a_waiter_goes_on_when_the_router_releases() -> None:
    priority = Priority(max_hold=30.0)
    priority.claim()
    waiter = asyncio.create_task(priority.turn())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    priority.release()
    await asyncio.wait_for(waiter, 1.0)


async def test_a_waiter_never_waits_longer_than_max_hold() -> None:
    priority = Priority(max_hold=0.2)
    priority.claim()
    started = time.monotonic()
    await asyncio.wait_for(priority.turn(), 2.0)
    assert 0.15 <= time.monotonic() - started < 1.5


async def test_stopping_ends_the_wait_and_an_unclaimed_turn_is_immediate() -> None:
    priority = Priority(max_hold=30.0)
    await asyncio.wait_for(priority.turn(), 0.1)
    priority.claim()
    stopping = asyncio.Event()
    waiter = asyncio.create_task(priority.turn(stopping))
    await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.wait_for(waiter, 1.0)
