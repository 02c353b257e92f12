"""Priority: the projection drains a backlog before the archiver and the detector read on.

The router, the archiver and the detector are three consumers of ``MEDIA_EVENTS`` on one
event loop, and parsing a NATS delivery costs the loop about as much for each of them as the
projection's own work per event. While the router has a backlog (after a restart, an
import, a burst), it claims the loop: the archiver and the detector wait before their next
pull request until the router has caught up, so the projection users query is current first.
Neither waits longer than ``max_hold`` seconds at a time: under a backlog that never ends
they still read a batch every ``max_hold`` seconds. Nothing is lost or reordered: each is a
durable consumer that resumes where it stopped.
"""

from __future__ import annotations

import asyncio

DEFAULT_MAX_HOLD_S = 10.0


class Priority:
    """Held by the router while it drains a backlog; awaited by the other consumers.

    >>> import asyncio
    >>> async def demo() -> bool:
    ...     priority = Priority(max_hold=5.0)
    ...     priority.claim()
    ...     waiter = asyncio.create_task(priority.turn())
    ...     await asyncio.sleep(0)
    ...     held = not waiter.done()
    ...     priority.release()
    ...     await waiter
    ...     return held
    >>> asyncio.run(demo())
    True
    """

    def __init__(self, max_hold: float = DEFAULT_MAX_HOLD_S) -> None:
        self.max_hold = max_hold
        self._free = asyncio.Event()
        self._free.set()

    @property
    def claimed(self) -> bool:
        return not self._free.is_set()

    def claim(self) -> None:
        """The router has a backlog: the others hold off."""
        self._free.clear()

    def release(self) -> None:
        """The router has caught up (or stopped, or paused): the others read on."""
        self._free.set()

    async def turn(self, stopping: asyncio.Event | None = None) -> None:
        """Return when the router releases, ``stopping`` is set, or ``max_hold`` passed."""
        if self._free.is_set():
            return
        waits = [asyncio.ensure_future(self._free.wait())]
        if stopping is not None:
            waits.append(asyncio.ensure_future(stopping.wait()))
        try:
            await asyncio.wait(waits, timeout=self.max_hold, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


__all__ = ["DEFAULT_MAX_HOLD_S", "Priority"]
