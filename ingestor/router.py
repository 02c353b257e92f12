"""The router: a durable pull consumer feeding batches through the middleware to DuckDB.

Middleware, outermost first (docs/architecture.md, invariant 5):

1. **recover**: nothing a batch does can kill the loop; an unexpected exception becomes an
   *unknown* error.
2. **poison queue**: permanent errors (undecodable, invalid) go straight to
   ``MEDIA_EVENTS_DLQ``; unknown errors that survived their retries are isolated to the one
   message that causes them and dead-lettered as ``unknown``.
3. **retry**: transient errors (database busy or down, disk full, NATS reconnecting) are
   retried with exponential backoff and jitter; when the attempts run out the batch is left
   unacked, fetching pauses, and the consumer restarts from the checkpoint. Never
   dead-lettered.
4. **dedup**, then 5. **handlers** (the DuckDB projection): :class:`ingestor.pipeline.Pipeline`.

The router is a :class:`~ingestor.nats.consumer.Handler` of the one pull consumer
(``ingestor/nats/consumer.py``: pull requests, statuses, batching, ``AckAll`` after each
committed batch, the loss guard, restarts). A batch is committed when it holds
``NATS_BATCH_SIZE`` messages, when ``NATS_FLUSH_INTERVAL`` has passed, or as soon as the
consumer has caught up (the newest message says nothing is pending behind it). While a
backlog is pending, a batch takes what has arrived during the previous commit, up to
``BACKLOG_BATCH_FACTOR`` times ``NATS_BATCH_SIZE`` messages or ``BACKLOG_BATCH_BYTES``, so the
per-commit costs spread over more events; once caught up, batches are ``NATS_BATCH_SIZE``
again. The batch is decoded once, into columns, off the event loop
(:func:`ingestor.batch.decode_batch`). The consumer is (re)created at start from the DuckDB
checkpoint, so the checkpoint, not the server's ack floor, decides where processing resumes,
and messages are always applied in stream order. While transient failures outlast the
retries the batch stays unacked and fetching pauses (:class:`~ingestor.nats.consumer.Pause`).
After a batch that applied an erasure record, the router rewrites the DuckDB file
(:meth:`~ingestor.projection.Projection.compact`) before it hands the batch on and takes the
next one, so that no byte of the erased rows stays in the file while the service runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from nats.aio.client import Client

from ingestor.batch import Decoded, decode_table
from ingestor.errors import InvalidEvent, PermanentError, TransientError
from ingestor.nats.consumer import PULL_EXPIRES_S, Consumer, ConsumerStats, Delivery, Handler, Pause
from ingestor.nats.dlq import DeadLetters
from ingestor.nats.reader import message_of
from ingestor.pipeline import Pipeline, Rejected, decode_messages
from ingestor.priority import Priority
from ingestor.projection import PROJECTOR, BatchResult

log = logging.getLogger(__name__)

MAX_DELIVER = 5  # attempts for an unknown error before a message is dead-lettered
ACK_WAIT_S = 120.0
RETRY_BASE_S = 0.05
RETRY_MAX_S = 5.0
BACKLOG_BATCH_FACTOR = 10  # a batch grows up to this many times NATS_BATCH_SIZE in a backlog
BACKLOG_BATCH_BYTES = 32 * 2**20  # ... and up to this many payload bytes


@dataclass
class RouterStats(ConsumerStats):
    batches: int = 0
    accepted: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    linked: int = 0
    dead_lettered: int = 0
    transient_retries: int = 0
    last_seq: int = 0
    last_commit_at: float | None = None  # Unix time of the last committed batch

    def add(self, result: BatchResult) -> None:
        self.batches += 1
        self.accepted += result.accepted
        self.linked += result.linked
        for tier, n in result.dropped.items():
            self.dropped[tier] = self.dropped.get(tier, 0) + n
        self.last_seq = max(self.last_seq, result.last_seq)
        self.last_commit_at = time.time()

    def as_dict(self) -> dict[str, object]:
        return {
            "batches": self.batches,
            "accepted": self.accepted,
            "dropped": dict(self.dropped),
            "linked": self.linked,
            "dead_lettered": self.dead_lettered,
            "transient_retries": self.transient_retries,
            "redeliveries_skipped": self.redeliveries_skipped,
            "pauses": self.pauses,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_seq": self.last_seq,
            "first_pull_at": self.first_pull_at,
            "last_commit_at": self.last_commit_at,
        }


class Router(Handler):
    """Consume ``MEDIA_EVENTS`` into a :class:`Pipeline` until told to stop."""

    def __init__(
        self,
        nc: Client,
        pipeline: Pipeline,
        *,
        batch_size: int = 1000,
        flush_interval: float = 5.0,
        consumer: str = PROJECTOR,
        filter_subjects: list[str] | None = None,
        retry_attempts: int = 6,
        pause_s: float = 2.0,
        ack_wait: float = ACK_WAIT_S,
        on_batch: Callable[[BatchResult], None] | None = None,
        may_grow: Callable[[], bool] | None = None,
        priority: Priority | None = None,
    ) -> None:
        self.nc = nc
        self.pipeline = pipeline
        self.retry_attempts = retry_attempts
        self.on_batch = on_batch
        self.dead_letters = DeadLetters(nc.jetstream(timeout=10))
        self.stats = RouterStats(last_seq=pipeline.projection.checkpoint())
        self._unknown_attempts: dict[int, int] = {}
        max_batch = batch_size * BACKLOG_BATCH_FACTOR
        self.consumer = Consumer(
            nc,
            durable=consumer,
            filter_subjects=filter_subjects,
            batch_size=batch_size,
            max_batch=max_batch,
            max_bytes=BACKLOG_BATCH_BYTES,
            # asked before a batch grows in a backlog (default: yes)
            may_grow=may_grow,
            flush_interval=flush_interval,
            ack_wait=ack_wait,
            max_ack_pending=max(4 * max_batch, 20_000),
            max_waiting=16,
            expires=PULL_EXPIRES_S,
            claim=priority,  # claimed while draining a backlog (ingestor/priority.py)
            pause_s=pause_s,
            stats=self.stats,
        )

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop fetching; the run loop flushes what it holds, checkpoints and returns."""
        self.consumer.stop()

    async def run(self) -> RouterStats:
        await self.consumer.run(self)
        return self.stats

    async def wait_for_seq(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until the checkpoint reaches ``seq``; False on timeout."""
        return await self.consumer.wait_for(lambda: self.stats.last_seq >= seq, timeout)

    async def resume(self) -> int:
        """The projection's checkpoint: the durable is recreated to deliver after it."""
        return self.pipeline.projection.checkpoint()

    def checkpoint(self) -> int:
        return self.stats.last_seq

    # ------------------------------------------------------------------ middleware

    async def handle(self, batch: list[Delivery]) -> None:
        """recover -> poison queue -> retry -> dedup -> handlers, for one batch."""
        try:
            result = await self._poison_queue(batch)
        except Pause:
            raise
        except Exception:  # recover: a bug must not kill the loop
            log.exception("unexpected failure in batch ending at seq %d", batch[-1].seq)
            raise Pause from None
        if result.erasures:
            await self._compact()
        self.stats.add(result)
        if self.on_batch is not None:
            self.on_batch(result)

    async def _compact(self) -> None:
        """After a committed erasure record: rewrite the DuckDB file now, so that no byte of
        the erased rows is left in it while the service runs (ingestor/erasure.py). The next
        batch waits; readers read on, and wait only for the swap of the connection. A failure
        is logged, not raised: the batch is committed, and the file stays marked, so the
        next erasure or the next start compacts it."""
        try:
            await asyncio.to_thread(self.pipeline.projection.compact)
        except Exception:
            log.exception("compacting the projection after an erasure failed")

    async def _poison_queue(self, deliveries: list[Delivery]) -> BatchResult:
        decoded = await asyncio.to_thread(_decode_isolating, deliveries)
        for reject in decoded.rejected:
            await self._retry(lambda r=reject: self._dead_letter(r))
        last_seq = deliveries[-1].seq
        try:
            return await self._retry(lambda: self._project(decoded, last_seq))
        except _Unknown as exc:
            log.warning("batch ending at seq %d failed (%s); isolating the message", last_seq, exc)
        # one message at a time, so only the one that fails is dead-lettered (those rejected
        # above are dead letters already, and may not even decode without raising)
        rejected = {r.message.seq for r in decoded.rejected}
        items, _ = decode_messages([message_of(d.msg) for d in deliveries if d.seq not in rejected])
        result = BatchResult(last_seq=last_seq)
        for message, event in items:
            try:
                part = await self._retry(lambda m=message, e=event: self._project([(m, e)], m.seq))
            except _Unknown as exc:
                await self._retry(
                    lambda m=message, x=exc: self._dead_letter(
                        Rejected(m, f"{x.__cause__!r}", "unknown")
                    )
                )
                part = await self._retry(lambda m=message: self._project([], m.seq))
            result.merge(part)
        if not items or items[-1][0].seq != last_seq:
            await self._retry(lambda: self._project([], last_seq))
        return result

    async def _retry(self, attempt_fn: Callable[[], object]) -> BatchResult:
        """Retry transient failures with backoff and jitter; unknown ones up to MAX_DELIVER."""
        delay = RETRY_BASE_S
        transient = unknown = 0
        while True:
            try:
                return await attempt_fn()  # type: ignore[misc]
            except TransientError as exc:
                transient += 1
                self.stats.transient_retries += 1
                if transient >= self.retry_attempts:
                    log.warning("transient failure persists after %d attempts: %s", transient, exc)
                    raise Pause from exc
                log.info("transient failure (attempt %d): %s", transient, exc)
            except PermanentError:
                raise
            except Exception as exc:
                if _is_transient(exc):
                    transient += 1
                    self.stats.transient_retries += 1
                    if transient >= self.retry_attempts:
                        raise Pause from exc
                else:
                    unknown += 1
                    if unknown >= MAX_DELIVER:
                        raise _Unknown(str(exc)) from exc
                    log.warning("unknown failure (attempt %d of %d): %r", unknown, MAX_DELIVER, exc)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, RETRY_MAX_S)

    async def _project(self, decoded: Decoded | list, last_seq: int) -> BatchResult:
        return await asyncio.to_thread(self.pipeline.project, decoded, last_seq)

    async def _dead_letter(self, reject: Rejected) -> None:
        message = reject.message
        await self.dead_letters.put(
            data=message.data,
            error=reject.error,
            category=reject.category,
            subject=message.subject,
            seq=message.seq,
            deliveries=message.num_delivered,
        )
        self.stats.dead_lettered += 1


def _decode(deliveries: list[Delivery]) -> Decoded:
    """Decode a batch of deliveries once, into columns, their metadata parsed from the reply
    subjects in one pass (a :class:`Message` is built only for a message that needs one)."""
    msgs = [d.msg for d in deliveries]
    tokens = pl.Series("reply", [m.reply for m in msgs], dtype=pl.String).str.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>, or with a domain
    # and an account hash after ACK (message_of reads the same tokens)
    ns = (
        pl.when(tokens.list.len() == 9)
        .then(tokens.list.get(7))
        .otherwise(tokens.list.get(9, null_on_oob=True))
    )
    nanos = pl.select(ns.cast(pl.Int64)).to_series().to_arrow()
    frame = pl.DataFrame(
        {
            "seq": pl.Series([d.seq for d in deliveries], dtype=pl.Int64),
            "recorded_at": pl.Series(_recorded_micros(nanos), dtype=pl.Int64),
            "subject": pl.Series([m.subject for m in msgs], dtype=pl.String),
            "data": pl.Series([m.data for m in msgs], dtype=pl.Binary),
        }
    ).with_columns(pl.col("recorded_at").cast(pl.Datetime("us", "UTC")))
    return decode_table(frame, message=lambda row: message_of(msgs[row]))


def _decode_isolating(deliveries: list[Delivery]) -> Decoded:
    """:func:`_decode`; if decoding the batch raises (a payload a decoder chokes on, such as
    JSON nested past msgspec's recursion limit, which raises RecursionError rather than a
    decode error), each message is decoded alone and those that raise are rejected as
    undecodable, so one message can never hold up the stream."""
    try:
        return _decode(deliveries)
    except Exception as exc:
        log.warning("decoding a batch raised %r; decoding its messages one by one", exc)
    good: list[Delivery] = []
    bad: list[Rejected] = []
    for delivery in deliveries:
        try:
            _decode([delivery])
        except Exception as exc:
            message = message_of(delivery.msg)
            bad.append(Rejected(message, f"undecodable payload: {exc!r}", InvalidEvent.category))
        else:
            good.append(delivery)
    decoded = _decode(good)
    decoded.rejected = sorted([*decoded.rejected, *bad], key=lambda r: r.message.seq)
    return decoded


def _recorded_micros(nanos: pa.Array) -> pa.Array:
    """Microseconds since the epoch of the stream's nanosecond timestamps, exactly as
    ``message_of`` (``datetime.fromtimestamp(ns / 1e9)``: the same float operations, then
    half to even) gives them, so the live projection and the archive agree."""
    seconds = pc.divide(pc.cast(nanos, pa.float64(), safe=False), 1e9)
    whole = pc.floor(seconds)
    fraction = pc.multiply(pc.subtract(seconds, whole), 1e6)
    micros = pc.cast(pc.round(fraction, round_mode="half_to_even"), pa.int64())
    return pc.add(pc.multiply(pc.cast(whole, pa.int64()), 1_000_000), micros)


class _Unknown(Exception):
    """An unclassified failure that outlasted its attempts."""


def _is_transient(exc: BaseException) -> bool:
    from nats.errors import ConnectionClosedError, ConnectionReconnectingError, TimeoutError

    return isinstance(
        exc,
        (
            ConnectionReconnectingError,
            ConnectionClosedError,
            TimeoutError,
            asyncio.TimeoutError,
            OSError,
        ),
    )
