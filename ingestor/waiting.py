"""Waiting for a consumer's progress (the router's checkpoint, the archive's last sealed
sequence, the detector's last judged sequence) without polling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(
    changed: asyncio.Condition, reached: Callable[[], bool], timeout: float | None
) -> bool:
    """Wait until ``reached()`` holds, re-checked each time ``changed`` is notified; False
    when ``timeout`` seconds pass first.

    >>> async def demo():
    ...     changed, state = asyncio.Condition(), {"seq": 0}
    ...     async def advance():
    ...         async with changed:
    ...             state["seq"] = 5
    ...             changed.notify_all()
    ...     asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(advance()))
    ...     done = await wait_until(changed, lambda: state["seq"] >= 5, 5)
    ...     late = await wait_until(changed, lambda: state["seq"] >= 6, 0.01)
    ...     return done, late
    >>> asyncio.run(demo())
    (True, False)
    """

    async def until_reached() -> None:
        async with changed:
            await changed.wait_for(reached)

    try:
        await asyncio.wait_for(until_reached(), timeout)
    except TimeoutError:
        return False
    return True
