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

Fetching is a lean pull loop, not nats-py's ``fetch()``: the router sends the JetStream pull
request itself and collects replies in a subscription callback, with one ``AckAll`` per
committed batch. A batch is committed when it holds ``NATS_BATCH_SIZE`` messages, when
``NATS_FLUSH_INTERVAL`` has passed, or as soon as the consumer has caught up (the newest
message says nothing is pending behind it). While a backlog is pending, a batch takes what
has arrived during the previous commit, up to ``BACKLOG_BATCH_FACTOR`` times
``NATS_BATCH_SIZE`` messages or ``BACKLOG_BATCH_BYTES``, so the per-commit costs spread over
more events; once caught up, batches are ``NATS_BATCH_SIZE`` again. The batch is decoded once,
into columns, off the event loop (:func:`ingestor.batch.decode_batch`). The consumer is
(re)created at start from the DuckDB checkpoint, so the checkpoint, not the server's ack
floor, decides where processing resumes, and messages are always applied in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ingestor.batch import Decoded, decode_table
from ingestor.errors import InvalidEvent, PermanentError, TransientError
from ingestor.nats.continuity import NATS_FAILURES, Continuity
from ingestor.nats.dlq import DeadLetters
from ingestor.nats.reader import message_of, pull_status
from ingestor.nats.streams import STREAM
from ingestor.pipeline import Pipeline, Rejected, decode_messages
from ingestor.priority import Priority
from ingestor.projection import PROJECTOR, BatchResult
from ingestor.sources.base import Backoff
from ingestor.waiting import wait_until

log = logging.getLogger(__name__)

MAX_DELIVER = 5  # attempts for an unknown error before a message is dead-lettered
ACK_WAIT_S = 120.0
PULL_EXPIRES_S = 0.5
RETRY_BASE_S = 0.05
RETRY_MAX_S = 5.0
BACKLOG_BATCH_FACTOR = 10  # a batch grows up to this many times NATS_BATCH_SIZE in a backlog
BACKLOG_BATCH_BYTES = 32 * 2**20  # ... and up to this many payload bytes


@dataclass
class RouterStats:
    batches: int = 0
    accepted: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    linked: int = 0
    dead_lettered: int = 0
    transient_retries: int = 0
    redeliveries_skipped: int = 0
    pauses: int = 0
    restarts: int = 0  # consumer recreated: a lost delivery, a reconnect, a NATS failure
    last_error: str | None = None
    last_seq: int = 0
    first_pull_at: float | None = None  # Unix time of the first pull request
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


class _Pause(Exception):
    """Transient failures outlasted the retries: stop fetching for a while."""


class _Restart(Exception):
    """A delivery may have been lost: recreate the consumer from the checkpoint."""


class Router:
    """Consume ``MEDIA_EVENTS`` into a :class:`Pipeline` until told to stop."""

    def __init__(
        self,
        nc: Client,
        pipeline: Pipeline,
        *,
        batch_size: int = 1000,
        flush_interval: float = 5.0,
        consumer: str = PROJECTOR,
        retry_attempts: int = 6,
        pause_s: float = 2.0,
        ack_wait: float = ACK_WAIT_S,
        on_batch: Callable[[BatchResult], None] | None = None,
        may_grow: Callable[[], bool] | None = None,
        priority: Priority | None = None,
        filter_subjects: list[str] | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.max_batch = batch_size * BACKLOG_BATCH_FACTOR
        self.flush_interval = flush_interval
        self.consumer = consumer
        self.retry_attempts = retry_attempts
        self.pause_s = pause_s
        self.ack_wait = ack_wait
        self.on_batch = on_batch
        self.may_grow = may_grow  # asked before a batch grows in a backlog (default: yes)
        self.priority = priority  # claimed while draining a backlog (ingestor/priority.py)
        self.dead_letters = DeadLetters(self.js)
        self.stats = RouterStats(last_seq=pipeline.projection.checkpoint())
        self._buffer: deque[Delivery] = deque()
        self._high_water = 0  # highest sequence buffered: anything at or below is a redelivery
        self._arrived = asyncio.Event()
        self._request_done = asyncio.Event()
        self._outstanding = 0
        self._stopping = asyncio.Event()
        self._unknown_attempts: dict[int, int] = {}
        self._committed = asyncio.Condition()
        # PROJECT_SERVERS: the servers' subjects only (streams.consumer_filter_subjects);
        # stream sequences then jump by design, so deliveries are checked by their own
        self.filter_subjects = filter_subjects
        self._continuity = Continuity(nc.stats["reconnects"], by_delivery=bool(filter_subjects))

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop fetching; the run loop flushes what it holds, checkpoints and returns."""
        self._stopping.set()

    async def run(self) -> RouterStats:
        try:
            return await self._run()
        finally:
            if self.priority is not None:
                self.priority.release()

    async def _run(self) -> RouterStats:
        backoff = Backoff(initial=0.2, maximum=10.0)
        while not self._stopping.is_set():
            try:
                await self._run_consumer()
                backoff.reset()
            except _Restart as exc:
                self.stats.restarts += 1
                self.stats.last_error = str(exc)
                log.warning(
                    "consumer %s: %s; reading again from the checkpoint", self.consumer, exc
                )
            except NATS_FAILURES as exc:  # no stream leader, a timeout, not connected
                self.stats.restarts += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("consumer %s: %s; recreating it after a pause", self.consumer, exc)
                if self.priority is not None:
                    self.priority.release()
                if await backoff.sleep(self._stopping):
                    break
            except _Pause:
                if self.priority is not None:
                    self.priority.release()
                self.stats.pauses += 1
                log.warning(
                    "pausing fetch for %.1fs after repeated transient failures", self.pause_s
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.pause_s)
        return self.stats

    async def wait_for_seq(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until the checkpoint reaches ``seq``; False on timeout."""
        return await wait_until(self._committed, lambda: self.stats.last_seq >= seq, timeout)

    # ------------------------------------------------------------------ consumer

    async def _create_consumer(self) -> int:
        """(Re)create the durable consumer to deliver from the checkpoint on; its start."""
        start = self.pipeline.projection.checkpoint() + 1
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(STREAM, self.consumer)
        config = ConsumerConfig(
            durable_name=self.consumer,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None,
            ack_policy=AckPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=max(4 * self.max_batch, 20_000),
            max_waiting=16,
            filter_subjects=self.filter_subjects,
        )
        await self.js.add_consumer(STREAM, config)
        log.info("consumer %s reads %s from sequence %d", self.consumer, STREAM, start)
        return start

    async def _run_consumer(self) -> None:
        start = await self._create_consumer()
        first_seq = (await self.js.stream_info(STREAM)).state.first_seq
        self._buffer.clear()
        self._high_water = self.stats.last_seq
        self._continuity.restart(start, self.nc.stats["reconnects"])
        self._continuity.allow_start_at(first_seq)
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=self._on_message)
        try:
            async with asyncio.TaskGroup() as tasks:
                fetcher = tasks.create_task(self._fetch_loop(inbox))
                try:
                    await self._process_loop()
                finally:
                    fetcher.cancel()
        except* _Pause:
            raise _Pause from None
        except* _Restart as group:
            raise group.exceptions[0] from None
        except* NATS_FAILURES as group:
            raise group.exceptions[0] from None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        status = pull_status(msg)
        if status is not None:
            if status.over:
                self._request_done.set()
            return
        self._outstanding -= 1
        # only the sequence and the pending count are read here, on the event loop; the rest
        # of the metadata is parsed for the whole batch when it is decoded (_decode)
        tokens = msg.reply.split(".")
        offset = 5 if len(tokens) == 9 else 7
        seq, pending = int(tokens[offset]), int(tokens[offset + 3])
        if seq <= self._high_water:
            self.stats.redeliveries_skipped += 1
            return  # redelivered after ack_wait while we still held it: already ours
        checked = int(tokens[offset + 1]) if self.filter_subjects else seq
        if not self._continuity.accept(checked, self.nc.stats["reconnects"]):
            # a delivery before it may be lost: never ack past it (AckAll would), handle what
            # is held and read again from the checkpoint (ingestor/nats/continuity.py)
            self._arrived.set()
            self._request_done.set()
            return
        self._high_water = seq
        self._buffer.append(Delivery(seq, pending, msg))
        if pending == 0:
            self._arrived.set()
        if self._outstanding <= 0:
            self._request_done.set()
        if len(self._buffer) >= self.batch_size:
            self._arrived.set()

    def _waiting(self) -> bool:
        """More than a batch is waiting: in the buffer, or behind the newest message."""
        buffer = self._buffer
        return len(buffer) > self.batch_size or (bool(buffer) and buffer[-1].pending > 0)

    def _backlog(self) -> bool:
        """A backlog is waiting and batches may grow."""
        return self._waiting() and (self.may_grow is None or self.may_grow())

    async def _fetch_loop(self, inbox: str) -> None:
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{self.consumer}"
        while not self._stopping.is_set():
            if self._continuity.lost is not None:
                return  # the process loop handles what it holds, then the consumer restarts
            size = self.max_batch if self._backlog() else self.batch_size
            if len(self._buffer) >= 2 * size:
                self._arrived.set()
                await asyncio.sleep(0.001)
                continue
            want = size
            self._outstanding = want
            self._request_done.clear()
            request = {"batch": want, "expires": int(PULL_EXPIRES_S * 1e9)}
            if self.stats.first_pull_at is None:
                self.stats.first_pull_at = time.time()
            await self.nc.publish(subject, json.dumps(request).encode(), reply=inbox)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._request_done.wait(), PULL_EXPIRES_S + 2)
            if self._buffer:
                self._arrived.set()

    async def _process_loop(self) -> None:
        deadline = time.monotonic() + self.flush_interval
        while True:
            stopping = self._stopping.is_set()
            if not self._buffer and stopping:
                return
            full = len(self._buffer) >= self.batch_size
            due = time.monotonic() >= deadline
            # caught up: the newest message says nothing is pending behind it, so waiting for
            # the flush interval would only add latency
            caught_up = bool(self._buffer) and self._buffer[-1].pending == 0
            lost = self._continuity.lost
            if lost is not None and not self._buffer and not stopping:
                raise _Restart(lost)
            if self.priority is not None:
                if self._waiting() and not stopping:
                    self.priority.claim()
                else:
                    self.priority.release()
            if self._buffer and (full or due or caught_up or stopping or lost is not None):
                batch = self._take()
                await self._handle(batch, batch[-1].msg.reply)
                deadline = time.monotonic() + self.flush_interval
                continue
            if not self._buffer:
                deadline = time.monotonic() + self.flush_interval
            self._arrived.clear()
            wait = max(0.0, deadline - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wait_arrival_or_stop(), wait)

    def _take(self) -> list[Delivery]:
        """The next batch: NATS_BATCH_SIZE messages, or in a backlog what has arrived, up to
        ``max_batch`` messages and BACKLOG_BATCH_BYTES."""
        limit = self.max_batch if self._backlog() else self.batch_size
        batch: list[Delivery] = []
        size = 0
        buffer = self._buffer
        while buffer and len(batch) < limit:
            size += len(buffer[0].msg.data)
            if batch and size > BACKLOG_BATCH_BYTES:
                break
            batch.append(buffer.popleft())
        return batch

    async def _wait_arrival_or_stop(self) -> None:
        arrived = asyncio.ensure_future(self._arrived.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({arrived, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrived.cancel()
            stopping.cancel()

    # ------------------------------------------------------------------ middleware

    async def _handle(self, batch: list[Delivery], ack_subject: str) -> None:
        """recover -> poison queue -> retry -> dedup -> handlers, for one batch."""
        checkpoint = self.stats.last_seq
        fresh = [d for d in batch if d.seq > checkpoint]  # already applied: skip
        if fresh:
            try:
                result = await self._poison_queue(fresh)
            except _Pause:
                raise
            except Exception:  # recover: a bug must not kill the loop
                log.exception("unexpected failure in batch ending at seq %d", fresh[-1].seq)
                raise _Pause from None
            self.stats.add(result)
            if self.on_batch is not None:
                self.on_batch(result)
        await self._ack(ack_subject)
        async with self._committed:
            self._committed.notify_all()

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
                    raise _Pause from exc
                log.info("transient failure (attempt %d): %s", transient, exc)
            except PermanentError:
                raise
            except Exception as exc:
                if _is_transient(exc):
                    transient += 1
                    self.stats.transient_retries += 1
                    if transient >= self.retry_attempts:
                        raise _Pause from exc
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

    async def _ack(self, subject: str) -> None:
        try:
            await self.nc.publish(subject, b"+ACK")
        except Exception as exc:  # a lost ack only means a redelivery, which is skipped
            log.warning("ack %s not sent: %s", subject, exc)


class Delivery(NamedTuple):
    """A message as the router buffers it: its stream sequence, what the consumer had
    pending behind it, and the delivery (data, subject, reply subject)."""

    seq: int
    pending: int
    msg: Msg


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
