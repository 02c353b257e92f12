"""No acknowledged hole: a pull consumer's deliveries must come in stream order, one by one.

The router, the archiver and the detector acknowledge with ``AckAll``: an ack of sequence N
acks every earlier delivery too. A delivery that never arrived (sent while the client was
reconnecting, or in flight on a cluster route when the node leading the consumer died) would
then be acked without having been handled, and a stream is never asked for it again. So each
of them checks its deliveries with a :class:`Continuity`: after a reconnect, or when a
sequence jumps past the next expected one, it takes nothing more, handles what it holds and
recreates its consumer from its own checkpoint, which delivers the missing messages again.

The same jump seen again after the restart, from the same place, is no loss: the stream has
no such messages (they aged out, or were deleted), and the consumer goes on from the next one
it has.

>>> guard = Continuity(reconnects=0)
>>> guard.restart(expect=5, reconnects=0)
>>> guard.accept(5, reconnects=0), guard.accept(6, reconnects=0), guard.lost
(True, True, None)
>>> guard.accept(9, reconnects=0), guard.lost
(False, 'deliveries 7-8 did not arrive')
>>> guard.accept(10, reconnects=0)  # nothing more until the restart
False
>>> guard.restart(expect=7, reconnects=0)  # handled up to 6, read again from 7
>>> guard.accept(7, reconnects=0), guard.lost
(True, None)
>>> guard.accept(20, reconnects=0), guard.lost  # 8-19 missing: read again from 8
(False, 'deliveries 8-19 did not arrive')
>>> guard.restart(expect=8, reconnects=0)
>>> guard.accept(20, reconnects=0)  # missing again, from the same place: not in the stream
True

A consumer with filter subjects (``PROJECT_SERVERS``: ingestor/servers.py) skips the stream
sequences of other servers by design, so its guard is made ``by_delivery``: the caller passes
the consumer's delivery sequence (:func:`delivery_seq`), which a new consumer starts at 1 and
never skips; any jump in it is a lost delivery.

>>> guard = Continuity(reconnects=0, by_delivery=True)
>>> guard.restart(expect=40, reconnects=0)  # the stream start does not matter
>>> guard.allow_start_at(45)
>>> guard.accept(1, reconnects=0), guard.accept(2, reconnects=0), guard.accept(4, reconnects=0)
(True, True, False)
>>> guard.lost
'deliveries 3-3 did not arrive'
"""

from __future__ import annotations

import asyncio

import nats.errors

NATS_FAILURES: tuple[type[BaseException], ...] = (nats.errors.Error, asyncio.TimeoutError)
"""What a consumer survives by recreating itself after a pause: no stream leader (a cluster
electing one), a request timeout, a closed or reconnecting connection."""


class Continuity:
    """Tells a consumer when its deliveries may have lost a message."""

    def __init__(self, reconnects: int, *, by_delivery: bool = False) -> None:
        self._reconnects = reconnects
        self.by_delivery = by_delivery  # sequences are delivery sequences (a filtered consumer)
        self._expect: int | None = None
        self._hole_at: int | None = None  # where the last jump was seen
        self.lost: str | None = None  # why nothing more is taken, until restart()

    def restart(self, expect: int, reconnects: int) -> None:
        """The consumer was (re)created to deliver from ``expect`` on."""
        self._expect = 1 if self.by_delivery else expect
        self._hole_at = None if self.by_delivery else self._hole_at
        self._reconnects = reconnects
        self.lost = None

    def allow_start_at(self, first_seq: int) -> None:
        """The stream begins at ``first_seq`` (earlier messages aged out): start there."""
        if not self.by_delivery and self._expect is not None and first_seq > self._expect:
            self._expect = first_seq

    def accept(self, seq: int, reconnects: int) -> bool:
        """May the delivery of ``seq`` (above every one taken so far) be taken?"""
        if self.lost is not None:
            return False
        if reconnects != self._reconnects:
            self.lost = "NATS reconnected, a delivery may have been lost"
            return False
        expect = self._expect
        gap_known = expect == self._hole_at and not self.by_delivery
        if expect is not None and seq > expect and not gap_known:
            self.lost = f"deliveries {expect}-{seq - 1} did not arrive"
            self._hole_at = expect
            return False
        self._expect = seq + 1
        return True


def delivery_seq(reply: str) -> int:
    """The consumer's delivery sequence in a JetStream ack subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<delivery seq>...``, or the form
    with a domain and an account hash before the stream).

    >>> delivery_seq("$JS.ACK.MEDIA_EVENTS.projector-1a.1.907.12.1765100000000000000.0")
    12
    """
    tokens = reply.split(".")
    return int(tokens[6] if len(tokens) == 9 else tokens[8])


__all__ = ["NATS_FAILURES", "Continuity", "delivery_seq"]
