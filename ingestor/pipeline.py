"""One batch through decode, dedup and projection: the write side's single code path.

The router (live), ``ingestor replay``, the legacy and NATS-off modes, and the workbench's
replay all push batches of :class:`Message` through :meth:`Pipeline.process`, so every one of
them produces the same rows from the same events.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from ingestor.dedup import DedupIndex
from ingestor.errors import PermanentError
from ingestor.events import MediaEvent, decode_event_versioned, encode_event
from ingestor.projection import PROJECTOR, Applied, BatchResult, Projection

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Message:
    """One stream message: its sequence, when the log recorded it, and its bytes."""

    seq: int
    recorded_at: datetime
    data: bytes
    subject: str = ""
    num_delivered: int = 1
    pending: int = 0  # messages the consumer had left after this one when it was delivered


@dataclass(slots=True)
class Rejected:
    """A message that can never be projected, with why."""

    message: Message
    error: str
    category: str


@dataclass
class Outcome:
    result: BatchResult
    rejected: list[Rejected] = field(default_factory=list)


def decode_messages(
    messages: Sequence[Message],
) -> tuple[list[tuple[Message, MediaEvent]], list[Rejected]]:
    """Decode and validate; permanent failures are returned, not raised."""
    good: list[tuple[Message, MediaEvent]] = []
    bad: list[Rejected] = []
    for message in messages:
        try:
            event, upcast = decode_event_versioned(message.data)
            event.validate()
        except PermanentError as exc:
            bad.append(Rejected(message, str(exc), exc.category))
            continue
        if upcast:  # downstream reads the current version's JSON
            message = replace(message, data=encode_event(event))
        good.append((message, event))
    return good, bad


class Pipeline:
    """Decode, decide and project batches into one :class:`Projection`."""

    def __init__(
        self, projection: Projection, index: DedupIndex, *, load_index: bool = True
    ) -> None:
        self.projection = projection
        self.index = index
        if load_index:
            projection.load_index(index)

    def process(self, messages: Sequence[Message], last_seq: int | None = None) -> Outcome:
        """Decode and project ``messages``; rejects are returned, not dead-lettered."""
        good, rejected = decode_messages(messages)
        if last_seq is None:
            last_seq = messages[-1].seq if messages else self.projection.checkpoint()
        return Outcome(self.project(good, last_seq), rejected)

    def project(
        self,
        decoded: Sequence[tuple[Message, MediaEvent]],
        last_seq: int,
        consumer: str = PROJECTOR,
    ) -> BatchResult:
        """Decide and project decoded events (in sequence order) and checkpoint ``last_seq``
        in one transaction. On any exception the dedup index forgets the batch and nothing
        is committed.
        """
        try:
            self.projection.load_cold([event for _, event in decoded], self.index)
            applied = [
                Applied(m.seq, m.recorded_at, event, self.index.decide(event, m.seq), m.data)
                for m, event in decoded
            ]
            result = self.projection.apply(applied, last_seq, consumer)
        except BaseException:
            self.index.rollback()
            raise
        self.index.commit()
        return result
