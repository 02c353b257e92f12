"""No acknowledged hole: a pull consumer's deliveries must come one by one, none missing.

Every consumer acknowledges with ``AckAll`` (:mod:`ingestor.nats.consumer`): an ack of one
delivery acks every earlier one too. A delivery that never arrived (sent while the client was
reconnecting, or in flight on a cluster route when the node leading the consumer died) would
then be acked without having been handled, and the stream is never asked for it again. So
the consumer checks its deliveries with a :class:`Continuity`: after a NATS reconnect, or when
a *delivery* sequence jumps past the next expected one, it takes nothing more, hands over what
it holds and recreates the consumer from the handler's checkpoint, which delivers the missing
messages again.

Delivery sequences, not stream sequences: a filtered consumer (the detector reads
``playback.>`` only) skips the stream's other subjects, and messages aged out or deleted are
never delivered, so its stream sequences jump by design; its delivery sequences count every
delivery (redeliveries included) and never jump. An idle heartbeat names the last delivery
the server sent (``Nats-Last-Consumer``), so a delivery lost at the very end of a burst is
seen too, without waiting for the next message.

>>> guard = Continuity()
>>> guard.restart(reconnects=0)  # a new consumer delivers from 1
>>> guard.accept(1, reconnects=0), guard.accept(2, reconnects=0), guard.lost
(True, True, None)
>>> guard.heard(2, reconnects=0) is None  # a heartbeat: the server sent up to 2, all here
True
>>> guard.accept(5, reconnects=0), guard.lost
(False, 'deliveries 3-4 did not arrive')
>>> guard.accept(6, reconnects=0)  # nothing more until the restart
False
>>> guard.restart(reconnects=0)
>>> guard.accept(1, reconnects=0), guard.heard(3, reconnects=0)
(True, 'deliveries 2-3 did not arrive')
>>> guard.restart(reconnects=0)
>>> guard.accept(1, reconnects=1), guard.lost
(False, 'NATS reconnected, a delivery may have been lost')
"""

from __future__ import annotations

import asyncio

import nats.errors

NATS_FAILURES: tuple[type[BaseException], ...] = (nats.errors.Error, asyncio.TimeoutError)
"""What a consumer survives by recreating itself after a pause: no stream leader (a cluster
electing one), a request timeout, a closed or reconnecting connection."""


class Continuity:
    """Tells a consumer when its deliveries may have lost a message."""

    def __init__(self) -> None:
        self._reconnects = 0
        self._expect = 1  # the next delivery sequence
        self.lost: str | None = None  # why nothing more is taken, until restart()

    def restart(self, reconnects: int) -> None:
        """The consumer was (re)created (its deliveries count from 1), with ``reconnects``
        NATS reconnects seen so far."""
        self._expect = 1
        self._reconnects = reconnects
        self.lost = None

    def accept(self, delivery: int, reconnects: int) -> bool:
        """May the delivery numbered ``delivery`` be taken?"""
        if self.lost is not None:
            return False
        if reconnects != self._reconnects:
            self.lost = "NATS reconnected, a delivery may have been lost"
            return False
        if delivery != self._expect:
            if delivery < self._expect:
                self.lost = f"delivery {delivery} came again after {self._expect - 1}"
            else:
                self.lost = f"deliveries {self._expect}-{delivery - 1} did not arrive"
            return False
        self._expect = delivery + 1
        return True

    def heard(self, last_delivered: int, reconnects: int) -> str | None:
        """An idle heartbeat says the server sent deliveries up to ``last_delivered``: why
        one may be lost, or None."""
        if self.lost is None and reconnects != self._reconnects:
            self.lost = "NATS reconnected, a delivery may have been lost"
        elif self.lost is None and last_delivered >= self._expect:
            self.lost = f"deliveries {self._expect}-{last_delivered} did not arrive"
        return self.lost


__all__ = ["NATS_FAILURES", "Continuity"]
