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

import polars as pl

from ingestor.batch import Decoded, decode_batch, dedup_keys
from ingestor.dedup import DedupIndex
from ingestor.errors import InvalidEvent, PermanentError
from ingestor.events import MediaEvent, decode_event_versioned, encode_event
from ingestor.messages import Message, Rejected
from ingestor.projection import PROJECTOR, AlertRow, BatchResult, Projection
from ingestor.records import (
    Alert,
    AuditDecision,
    ErasureRecord,
    IdentityRecord,
    decode_record,
    record_kind,
)
from ingestor.servers import Partition

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    result: BatchResult
    rejected: list[Rejected] = field(default_factory=list)


Item = MediaEvent | AuditDecision | Alert | IdentityRecord | ErasureRecord
"""What a stream message decodes to: a media event, a user's audit decision, an alert, an
identity record (accounts merged into a person, or unmerged), or an erasure."""


def decode_messages(
    messages: Sequence[Message],
) -> tuple[list[tuple[Message, Item]], list[Rejected]]:
    """Decode and validate by subject (``playback.>`` or none: a media event; ``audit.>``,
    ``alert.>``, ``identity.>``: a record); permanent failures are returned, not raised."""
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
        self,
        projection: Projection,
        index: DedupIndex,
        *,
        load_index: bool = True,
        partition: Partition | None = None,
    ) -> None:
        self.projection = projection
        self.index = index
        # PROJECT_SERVERS: the events and alerts of other servers are passed over (they
        # arrive under subjects written before servers were in them: ingestor/servers.py)
        self.partition = partition if partition is not None and not partition.all else None
        if load_index:
            projection.load_index(index)

    def process(self, messages: Sequence[Message], last_seq: int | None = None) -> Outcome:
        """Decode and project ``messages``; rejects are returned, not dead-lettered."""
        decoded = decode_batch(messages)
        if last_seq is None:
            last_seq = messages[-1].seq if messages else self.projection.checkpoint()
        return Outcome(self.project(decoded, last_seq), decoded.rejected)

    def decode(self, messages: Sequence[Message]) -> Decoded:
        """Decode a batch once, into columns (:func:`ingestor.batch.decode_batch`)."""
        return decode_batch(messages)

    def project(
        self,
        decoded: Decoded | Sequence[tuple[Message, Item]],
        last_seq: int,
        consumer: str = PROJECTOR,
    ) -> BatchResult:
        """Decide and project a decoded batch (in sequence order) and checkpoint ``last_seq``.

        ``decoded`` is a :class:`Decoded` batch (its rejects are the caller's), or decoded
        items as :func:`decode_messages` returns them. Events and alerts commit in one
        transaction. A user's audit decision changes what later events of the batch are
        decided against, so the batch is cut at each decision: the events before it commit,
        then the decision (each with its own checkpoint), then the rest. An identity record
        and an erasure cut the batch the same way (their own transaction and checkpoint), so
        every record commits at its own place in the stream's order. On any exception the
        dedup index forgets the uncommitted part and nothing of it is committed.
        """
        started = time.perf_counter()
        if not isinstance(decoded, Decoded):
            decoded = _decoded_items(decoded)
        events = decoded.frame()
        partition = self.partition
        if partition is not None:
            events = events.filter(pl.col("server_id").is_in(list(partition.servers)))
        result = BatchResult(last_seq=last_seq)
        seqs = events["seq"]
        lo = 0
        alerts: list[AlertRow] = []
        committed: int | None = None  # the last record committed in a transaction of its own
        for message, record in decoded.records:
            if isinstance(record, Alert):
                if partition is not None and not partition.keeps(record.server_id):
                    continue
                alerts.append(AlertRow(message.seq, message.recorded_at, record))
                continue
            hi = seqs.search_sorted(message.seq)
            if hi > lo or alerts:
                part_seq = max([a.seq for a in alerts] + ([seqs[hi - 1]] if hi > lo else []))
                result.merge(self._project_part(events[lo:hi], alerts, part_seq, consumer))
            lo, alerts = hi, []
            committed = message.seq
            if isinstance(record, ErasureRecord):  # ingestor.erasure: its own transaction
                from ingestor.erasure import apply_erasure

                apply_erasure(
                    self.projection, self.index, message.seq, record, consumer, message.recorded_at
                )
                result.erasures += 1  # the file still holds the rows' bytes: compact
                continue
            if isinstance(record, IdentityRecord):  # changes no playback: no fold state goes
                result.identities.append(
                    self.projection.apply_identity(
                        message.seq, record, consumer, message.recorded_at
                    )
                )
                continue
            # a restore rewrites playback rows outside apply_batch: their fold states go
            self.projection.forget_fold_states()
            outcome = self.projection.apply_decision(
                message.seq, record, self.index, consumer, message.recorded_at
            )
            result.decisions.append(outcome)
        rest = events[lo:]
        if rest.height or alerts or committed is None or committed < last_seq:
            result.merge(self._project_part(rest, alerts, last_seq, consumer))
        result.last_seq = last_seq
        result.seconds = time.perf_counter() - started
        return result

    def _project_part(
        self,
        events: pl.DataFrame,
        alerts: Sequence[AlertRow],
        last_seq: int,
        consumer: str = PROJECTOR,
    ) -> BatchResult:
        keys = dedup_keys(events)
        try:
            self.projection.load_cold(keys, self.index)
            decisions = self.index.decide_batch(keys)
            result = self.projection.apply_batch(events, decisions, last_seq, consumer, alerts)
        except BaseException:
            self.index.rollback()
            raise
        self.index.commit()
        return result


def _decoded_items(items: Sequence[tuple[Message, Item]]) -> Decoded:
    """A :class:`Decoded` batch of already decoded items (their media events decoded again
    into columns: the same values, by construction)."""
    media = [m for m, item in items if isinstance(item, MediaEvent)]
    decoded = decode_batch(media)
    if decoded.rejected:  # an item the per-event decoder accepted: never, unless altered
        first = decoded.rejected[0]
        raise InvalidEvent(f"message {first.message.seq} no longer decodes: {first.error}")
    decoded.records = [(m, item) for m, item in items if not isinstance(item, MediaEvent)]
    return decoded
