"""One batch through decode, dedup and projection: the write side's single code path.

The router (live), ``ingestor replay``, the legacy and NATS-off modes, and the workbench's
replay all push batches of :class:`Message` through :meth:`Pipeline.process`, so every one of
them produces the same rows from the same events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ingestor.dedup import DedupIndex
from ingestor.errors import PermanentError
from ingestor.events import MediaEvent, decode_event_versioned, encode_event
from ingestor.messages import Message, Rejected
from ingestor.projection import PROJECTOR, AlertRow, Applied, BatchResult, Projection
from ingestor.records import Alert, AuditDecision, decode_record, record_kind

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    result: BatchResult
    rejected: list[Rejected] = field(default_factory=list)


Item = MediaEvent | AuditDecision | Alert
"""What a stream message decodes to: a media event, a user's audit decision, or an alert."""


def decode_messages(
    messages: Sequence[Message],
) -> tuple[list[tuple[Message, Item]], list[Rejected]]:
    """Decode and validate by subject (``playback.>`` or none: a media event; ``audit.>``,
    ``alert.>``: a record); permanent failures are returned, not raised."""
    good: list[tuple[Message, Item]] = []
    bad: list[Rejected] = []
    for message in messages:
        if record_kind(message.subject) is not None:
            try:
                good.append((message, decode_record(message.subject, message.data)))
            except PermanentError as exc:
                bad.append(Rejected(message, str(exc), exc.category))
            continue
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
        decoded: Sequence[tuple[Message, Item]],
        last_seq: int,
        consumer: str = PROJECTOR,
    ) -> BatchResult:
        """Decide and project decoded items (in sequence order) and checkpoint ``last_seq``.

        Events and alerts commit in one transaction. A user's audit decision changes what
        later events of the batch are decided against, so the batch is cut at each decision:
        the events before it commit, then the decision (each with its own checkpoint), then
        the rest. On any exception the dedup index forgets the uncommitted part and nothing
        of it is committed.
        """
        started = time.perf_counter()
        result = BatchResult(last_seq=last_seq)
        part: list[tuple[Message, Item]] = []
        for message, item in decoded:
            if isinstance(item, AuditDecision):
                if part:
                    result.merge(self._project_part(part, part[-1][0].seq, consumer))
                    part = []
                outcome = self.projection.apply_decision(message.seq, item, self.index, consumer)
                result.decisions.append(outcome)
            else:
                part.append((message, item))
        if part or not result.decisions or result.decisions[-1].seq < last_seq:
            result.merge(self._project_part(part, last_seq, consumer))
        result.last_seq = last_seq
        result.seconds = time.perf_counter() - started
        return result

    def _project_part(
        self, decoded: Sequence[tuple[Message, Item]], last_seq: int, consumer: str
    ) -> BatchResult:
        events = [(m, item) for m, item in decoded if isinstance(item, MediaEvent)]
        alerts = [
            AlertRow(m.seq, m.recorded_at, item) for m, item in decoded if isinstance(item, Alert)
        ]
        try:
            self.projection.load_cold([event for _, event in events], self.index)
            applied = [
                Applied(m.seq, m.recorded_at, event, self.index.decide(event, m.seq), m.data)
                for m, event in events
            ]
            result = self.projection.apply(applied, last_seq, consumer, alerts)
        except BaseException:
            self.index.rollback()
            raise
        self.index.commit()
        return result
