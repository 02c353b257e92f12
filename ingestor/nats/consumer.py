"""One JetStream pull consumer, for every reader of ``MEDIA_EVENTS``.

The router (the projection), the archiver, the detector and :func:`ingestor.nats.reader.read_range`
are each a :class:`Handler`: they say where they stand (the last stream sequence whose effect
is theirs for good, their *checkpoint*) and handle a batch of deliveries. Everything about
JetStream is here, once, as the ``eventsourcing`` library's projection runner keeps its
tracking apart from ``Projection.process_event``:

* **Pulling**: the consumer sends the pull requests itself (``$JS.API.CONSUMER.MSG.NEXT``, a
  batch, an expiry and an idle heartbeat) and collects the replies in a subscription callback,
  about twice as fast as nats-py's ``fetch()``. Status replies end a request (404, 408, 409),
  say the consumer is gone (409 deleted, 503: start over) or are idle heartbeats (100).
* **Batching**: a batch is handed over when it holds ``batch_size`` messages, when the pull
  request that brought it is over, when the newest message says nothing is pending behind it,
  when ``flush_interval`` has passed, or when stopping. While a backlog is pending (and
  ``may_grow`` says yes) a batch takes what has arrived, up to ``max_batch`` messages and
  ``max_bytes`` bytes, so per-batch costs spread over more messages. Fetching stays at most two
  batches ahead of the handler.
* **Ack after handle**: after ``handle(batch)`` returned, the last delivery at or below the
  handler's checkpoint is acknowledged with ``AckAll``; a handler that keeps messages back (the
  archiver until its segment is sealed) simply has a checkpoint behind them.
* **Resume from the handler's checkpoint**: at every start the durable is (re)created to
  deliver from the checkpoint + 1, so the handler, not the server's ack floor, decides where
  reading resumes, and redeliveries at or below what it took are skipped.
* **No acknowledged hole** (:mod:`ingestor.nats.continuity`): deliveries are checked by their
  *delivery* sequence (a filtered consumer's stream sequences jump by design) and against
  NATS reconnects and the heartbeats' ``Nats-Last-Consumer``. When one may be lost, nothing
  more is taken, what is held is handed over, and the consumer is recreated from the
  checkpoint.
* **Failures**: a NATS failure (no stream leader, a timeout, a closed connection) or a handler
  error recreates the consumer after a backoff; a handler raising :class:`Pause` (transient
  failures outlasted its retries) leaves its batch unacked and stops fetching for ``pause_s``.
* **Stop**: :meth:`Consumer.stop` stops fetching; what is held is handed over, the handler
  flushes (``flush(final=True)``), the last acks are sent, and :meth:`Consumer.run` returns.

The invariant this module keeps is docs/architecture.md, invariant 1 (ack after commit).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ingestor.errors import IngestorError
from ingestor.nats.continuity import NATS_FAILURES, Continuity
from ingestor.nats.streams import STREAM
from ingestor.priority import Priority
from ingestor.sources.base import Backoff
from ingestor.waiting import wait_until

log = logging.getLogger(__name__)

PULL_EXPIRES_S = 0.5
"""How long a pull request waits for messages; an idle heartbeat comes at half of it."""
NO_WAIT_TIMEOUT_S = 15.0  # a no_wait request unanswered this long: the connection is gone


class Delivery(NamedTuple):
    """One message as the consumer hands it over: its stream sequence, what the consumer had
    pending behind it, and the delivery itself (data, subject, reply subject)."""

    seq: int
    pending: int
    msg: Msg


class PullStatus(NamedTuple):
    """A status reply to a pull request (``MSG.NEXT``)."""

    code: str  # 100 heartbeat, 404 no messages, 408 expired, 409 ..., 503 no JetStream
    over: bool  # the request is over (404, 408, 409 ...): ask again
    lost: str | None  # the consumer was deleted or JetStream is unavailable: start over
    last_delivered: int | None  # an idle heartbeat's Nats-Last-Consumer


def pull_status(msg: Msg) -> PullStatus | None:
    """The status a reply carries, or None for a message. 100 is an idle heartbeat."""
    if not (msg.headers and "Status" in msg.headers and not msg.data):
        return None
    status = msg.headers.get("Status")
    if status == "100":
        last = msg.headers.get("Nats-Last-Consumer")
        return PullStatus(status, False, None, int(last) if last else None)
    description = msg.headers.get("Description", "")
    gone = status == "503" or (status == "409" and "deleted" in description.lower())
    lost = f"{status} {description}".strip() if gone else None
    return PullStatus(status or "", True, lost, None)


class Pause(IngestorError):
    """Raised by a handler whose transient failures outlasted its retries: its batch stays
    unacked, fetching stops for ``pause_s``, and the consumer starts again from the
    handler's checkpoint."""


class Handler(ABC):
    """What a consumer feeds: a projection in the ``eventsourcing`` sense."""

    @abstractmethod
    async def resume(self) -> int:
        """Called before the consumer is (re)created: the last stream sequence applied for
        good (0: none). Reading resumes after it; a handler drops what it holds unapplied."""

    @abstractmethod
    def checkpoint(self) -> int:
        """The last stream sequence whose effect is durable: acks go up to it."""

    @abstractmethod
    async def handle(self, batch: list[Delivery]) -> None:
        """Apply ``batch`` (in stream order, every sequence after the checkpoint)."""

    def due(self) -> float | None:
        """When (``time.monotonic()``) :meth:`flush` is due without new messages, if ever."""
        return None

    async def flush(self, *, final: bool) -> None:  # noqa: B027 - optional hook
        """Apply what is held back once it is due; everything when ``final`` (stopping)."""


@dataclass
class ConsumerStats:
    """What a consumer did since it started (each handler's stats extend these)."""

    redeliveries_skipped: int = 0
    pauses: int = 0
    restarts: int = 0  # consumer recreated: a lost delivery, a reconnect, a NATS failure
    last_error: str | None = None
    first_pull_at: float | None = None  # Unix time of the first pull request


class _Restart(Exception):
    """A delivery may have been lost: recreate the consumer from the checkpoint."""


class Consumer:
    """Feed ``MEDIA_EVENTS`` (or ``stream``) to a :class:`Handler` until stopped.

    ``durable``: the consumer's name, or None for an ephemeral one. ``filter_subjects``:
    deliver only these subjects. ``ack=False``: no acks at all (a reader). ``no_wait``: end
    once the stream's end is reached; ``stop_seq``: end after this sequence. ``claim``: a
    :class:`Priority` claimed while a backlog is pending (the router); ``yield_to``: one
    waited for before each pull request (the archiver, the detector). ``retries``: failed
    starts in a row before :meth:`run` raises (None: never gives up).
    """

    def __init__(
        self,
        nc: Client,
        *,
        durable: str | None,
        stream: str = STREAM,
        filter_subjects: list[str] | None = None,
        description: str | None = None,
        batch_size: int = 1000,
        max_batch: int | None = None,
        max_bytes: int | None = None,
        may_grow: Callable[[], bool] | None = None,
        flush_interval: float = 5.0,
        ack: bool = True,
        ack_wait: float = 120.0,
        max_ack_pending: int | None = None,
        max_waiting: int = 4,
        expires: float = PULL_EXPIRES_S,
        no_wait: bool = False,
        stop_seq: int | None = None,
        claim: Priority | None = None,
        yield_to: Priority | None = None,
        pause_s: float = 2.0,
        retries: int | None = None,
        stats: ConsumerStats | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.durable = durable
        self.stream = stream
        self.filter_subjects = list(filter_subjects or [])
        self.description = description
        self.batch_size = batch_size
        self.max_batch = max(max_batch or batch_size, batch_size)
        self.max_bytes = max_bytes
        self.may_grow = may_grow
        self.flush_interval = flush_interval
        self.ack = ack
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending or max(4 * self.max_batch, 20_000)
        self.max_waiting = max_waiting
        self.expires = expires
        self.no_wait = no_wait
        self.stop_seq = stop_seq
        self.claim = claim
        self.yield_to = yield_to
        self.pause_s = pause_s
        self.retries = retries
        self.stats = stats if stats is not None else ConsumerStats()
        self._stopping = asyncio.Event()
        self._progress = asyncio.Condition()
        self._guard = Continuity()
        self._buffer: deque[Delivery] = deque()
        # handed over but kept back by the handler: (sequences, ack subjects) of each batch
        self._held: deque[tuple[list[int], list[str]]] = deque()
        self._handed = 0  # batches handed over, ever (progress, for the backoff)
        self._reconnects = 0  # NATS reconnects seen when this consumer was created
        self._high_water = 0  # highest sequence taken: anything at or below is a redelivery
        self._wake = asyncio.Event()  # something for the batching loop to look at
        self._room = asyncio.Event()  # the buffer has room for another request
        self._request_over = asyncio.Event()
        self._request_ended = False  # a request ended since the last batch: hand it over
        self._outstanding = 0
        self._in_request = 0  # messages the current request brought
        self._lost: str | None = None  # why nothing more is taken, until the restart
        self._failure: BaseException | None = None  # the fetch loop's, to raise
        self._ended = False  # no_wait reached the end, or stop_seq was taken
        self._name = durable or ""

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop fetching; :meth:`run` hands over what it holds, flushes, acks and returns."""
        self._stopping.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def stop_event(self) -> asyncio.Event:
        """Set once :meth:`stop` was called (for a handler's own waits)."""
        return self._stopping

    async def wait_for(self, reached: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``reached()`` holds, checked after every batch; False on timeout."""
        return await wait_until(self._progress, reached, timeout)

    async def run(self, handler: Handler) -> None:
        """Feed ``handler`` until :meth:`stop` (or the end, for ``no_wait`` / ``stop_seq``).

        NATS failures and handler errors are retried (``retries`` times in a row, or
        forever); what the handler raises while stopping ends the run with its batch
        unacked. Exceptions that are no ``Exception`` (cancellation, a crash) propagate.
        """
        backoff = Backoff(initial=0.2, maximum=10.0)
        failures = 0
        try:
            while not self._stopping.is_set() and not self._ended:
                handed = self.stats.redeliveries_skipped, self._handed
                try:
                    await self._run_once(handler)
                except Pause:
                    self._release()
                    self.stats.pauses += 1
                    log.warning(
                        "consumer %s: pausing fetch for %.1fs after repeated transient failures",
                        self._name,
                        self.pause_s,
                    )
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self.pause_s)
                except _Restart as exc:
                    self.stats.restarts += 1
                    self.stats.last_error = str(exc)
                    log.warning("consumer %s: %s; reading again from the checkpoint", self._name,
                                exc)  # fmt: skip
                except Exception as exc:
                    if self._stopping.is_set():
                        log.warning("consumer %s: %r while stopping; left unacked", self._name,
                                    exc)  # fmt: skip
                        return
                    self._release()
                    self.stats.restarts += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    if (self.stats.redeliveries_skipped, self._handed) != handed:
                        backoff.reset()
                        failures = 0
                    failures += 1
                    if self.retries is not None and failures > self.retries:
                        raise
                    if not isinstance(exc, NATS_FAILURES):
                        log.exception("consumer %s failed; recreating it after a pause",
                                      self._name)  # fmt: skip
                    else:
                        log.warning("consumer %s: %s; recreating it after a pause", self._name,
                                    self.stats.last_error)  # fmt: skip
                    if await backoff.sleep(self._stopping):
                        break
            if self._stopping.is_set():
                await handler.flush(final=True)  # stopped between two starts: nothing to ack
        finally:
            self._release()

    # ------------------------------------------------------------------ one consumer

    async def _run_once(self, handler: Handler) -> None:
        self._buffer.clear()
        self._held.clear()
        self._lost = None
        self._failure = None
        self._request_ended = False
        after = await handler.resume()
        self._high_water = after
        self._reconnects = self.nc.stats["reconnects"]
        self._name = await self._create(after + 1)
        self._guard.restart(self._reconnects)
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=self._on_message)
        fetcher = asyncio.create_task(self._fetch_loop(inbox))
        fetcher.add_done_callback(self._fetch_ended)
        try:
            await self._batch_loop(handler)
        finally:
            fetcher.cancel()
            with contextlib.suppress(BaseException):
                await fetcher
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            self._held.clear()  # their ack subjects name this consumer: never ack them later
            if self.durable is None:
                with contextlib.suppress(Exception):
                    await self.js.delete_consumer(self.stream, self._name)

    async def _create(self, start: int) -> str:
        """(Re)create the consumer to deliver from ``start`` on; its name."""
        if self.durable is not None:
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(self.stream, self.durable)
        from_seq = start > 1
        config = ConsumerConfig(
            durable_name=self.durable,
            description=self.description,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if from_seq else DeliverPolicy.ALL,
            opt_start_seq=start if from_seq else None,
            ack_policy=AckPolicy.ALL if self.ack else AckPolicy.NONE,
            ack_wait=self.ack_wait if self.ack else None,
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending if self.ack else None,
            max_waiting=self.max_waiting,
            inactive_threshold=30.0 if self.durable is None else None,
        )
        if len(self.filter_subjects) == 1:
            config.filter_subject = self.filter_subjects[0]
        elif self.filter_subjects:
            config.filter_subjects = self.filter_subjects
        info = await self.js.add_consumer(self.stream, config)
        if self.durable is not None:
            subjects = f" ({', '.join(self.filter_subjects)})" if self.filter_subjects else ""
            log.info("consumer %s reads %s%s from sequence %d", self.durable, self.stream,
                     subjects, start)  # fmt: skip
        return info.name

    # ------------------------------------------------------------------ arrivals

    async def _on_message(self, msg: Msg) -> None:
        status = pull_status(msg)
        if status is not None:
            if status.lost is not None:
                self._lose(status.lost)
            elif status.last_delivered is not None:
                gap = self._guard.heard(status.last_delivered, self.nc.stats["reconnects"])
                if gap is not None:
                    self._lose(gap)
            if status.over:
                if self.no_wait and self._in_request == 0 and status.code in ("404", "408"):
                    self._ended = True  # nothing more in the stream
                self._end_request()
            return
        self._in_request += 1
        self._outstanding -= 1
        if self._lost is not None:
            return
        # only the sequences and the pending count are read here, on the event loop; the
        # rest of the metadata is parsed when a handler needs it
        tokens = msg.reply.split(".")
        offset = 5 if len(tokens) == 9 else 7  # $JS.ACK.<stream>... or with domain and hash
        seq, pending = int(tokens[offset]), int(tokens[offset + 3])
        if not self._guard.accept(int(tokens[offset + 1]), self.nc.stats["reconnects"]):
            # a delivery before it may be lost: never ack past it (AckAll would); hand over
            # what is held and read again from the checkpoint
            self._lose(self._guard.lost or "a delivery was lost")
            return
        if seq <= self._high_water:
            self.stats.redeliveries_skipped += 1  # redelivered while we held it: ours already
        elif self.stop_seq is not None and seq > self.stop_seq:
            self._ended = True
            self._end_request()
            return
        else:
            self._high_water = seq
            self._buffer.append(Delivery(seq, pending, msg))
            if pending == 0 or len(self._buffer) >= self.batch_size or seq == self.stop_seq:
                self._wake.set()
            if seq == self.stop_seq:
                self._ended = True
        if self._outstanding <= 0:
            self._end_request()

    def _end_request(self) -> None:
        self._request_over.set()
        self._request_ended = bool(self._buffer)
        self._wake.set()

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
        self._request_over.set()
        self._room.set()
        self._wake.set()

    def _fetch_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()
            self._lose(f"{type(self._failure).__name__}: {self._failure}")

    def _waiting(self) -> bool:
        """More than a batch is waiting: in the buffer, or behind the newest message."""
        buffer = self._buffer
        return len(buffer) > self.batch_size or (bool(buffer) and buffer[-1].pending > 0)

    def _backlog(self) -> bool:
        """A backlog is waiting and batches may grow."""
        return self._waiting() and (self.may_grow is None or self.may_grow())

    async def _fetch_loop(self, inbox: str) -> None:
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._name}"
        while not self._stopping.is_set() and self._lost is None and not self._ended:
            if self.nc.stats["reconnects"] != self._reconnects:
                self._lose("NATS reconnected, a delivery may have been lost")
                return
            size = self.max_batch if self._backlog() else self.batch_size
            if len(self._buffer) >= 2 * size:  # the handler is behind: wait for room
                self._room.clear()
                self._wake.set()
                await _wait_any(self._room, self._stopping, timeout=1.0)
                continue
            if self.yield_to is not None and self.yield_to.claimed:
                await self.yield_to.turn(self._stopping)  # the projection drains first
                if self._stopping.is_set():
                    return
            if self.stop_seq is not None:
                size = min(size, self.stop_seq - self._high_water)
            request: dict[str, object] = {"batch": size}
            if self.no_wait:
                # no expires: the server answers "404 No Messages" at the stream's end at
                # once (with an expiry it would hold the request until it expired)
                request["no_wait"] = True
                timeout = NO_WAIT_TIMEOUT_S
            else:
                request["expires"] = int(self.expires * 1e9)
                request["idle_heartbeat"] = int(self.expires / 2 * 1e9)
                timeout = self.expires + 2.0
            self._outstanding = size
            self._in_request = 0
            self._request_over.clear()
            if self.stats.first_pull_at is None:
                self.stats.first_pull_at = time.time()
            await self.nc.publish(subject, json.dumps(request).encode(), reply=inbox)
            await _wait_any(self._request_over, self._stopping, timeout=timeout)
            if not self._request_over.is_set() and not self._stopping.is_set():
                if self.no_wait:
                    raise TimeoutError(f"no answer to a pull request in {timeout:.0f}s")
                self._end_request()  # unanswered: ask again (a reconnect is caught above)

    # ------------------------------------------------------------------ batches

    async def _batch_loop(self, handler: Handler) -> None:
        deadline = time.monotonic() + self.flush_interval
        while True:
            buffer = self._buffer
            stopping = self._stopping.is_set()
            lost = self._lost
            if not buffer:
                if stopping or self._ended:
                    if stopping:
                        await handler.flush(final=True)
                        await self._ack_to(handler.checkpoint())
                    return
                if lost is not None:
                    if self._failure is not None:
                        raise self._failure
                    raise _Restart(lost)
            if self.claim is not None:
                if self._waiting() and not stopping:
                    self.claim.claim()
                else:
                    self.claim.release()
            now = time.monotonic()
            if buffer and (
                len(buffer) >= self.batch_size
                or buffer[-1].pending == 0  # caught up: waiting would only add latency
                or self._request_ended
                or now >= deadline
                or stopping
                or self._ended
                or lost is not None
            ):
                self._request_ended = False
                await self._hand(handler, self._take())
                deadline = time.monotonic() + self.flush_interval
                continue
            due = handler.due()
            if due is not None and now >= due:
                await handler.flush(final=False)
                await self._ack_to(handler.checkpoint())
                continue
            if not buffer:
                deadline = now + self.flush_interval
            self._wake.clear()
            wait = deadline - now if due is None else min(deadline, due) - now
            await _wait_any(self._wake, timeout=max(0.0, wait))

    def _take(self) -> list[Delivery]:
        """The next batch: ``batch_size`` messages, or in a backlog what has arrived, up to
        ``max_batch`` messages and ``max_bytes``."""
        limit = self.max_batch if self._backlog() else self.batch_size
        batch: list[Delivery] = []
        size = 0
        buffer = self._buffer
        while buffer and len(batch) < limit:
            if self.max_bytes is not None:
                size += len(buffer[0].msg.data)
                if batch and size > self.max_bytes:
                    break
            batch.append(buffer.popleft())
        self._room.set()
        return batch

    async def _hand(self, handler: Handler, batch: list[Delivery]) -> None:
        """Hand a batch over, then ack what the handler's checkpoint covers."""
        checkpoint = handler.checkpoint()
        if batch[0].seq <= checkpoint:  # already applied: never handed over again
            skipped = len(batch)
            batch = [d for d in batch if d.seq > checkpoint]
            self.stats.redeliveries_skipped += skipped - len(batch)
        if batch:
            await handler.handle(batch)
        self._handed += 1
        checkpoint = handler.checkpoint()
        if not self.ack:
            await self._acked(None)
        elif batch and batch[-1].seq <= checkpoint:  # all applied (the router, the detector)
            self._held.clear()  # earlier batches, all below this one
            await self._acked(batch[-1].msg.reply)
        else:  # the handler keeps some back (the archiver, until it seals a segment)
            if batch:
                self._held.append(([d.seq for d in batch], [d.msg.reply for d in batch]))
            await self._ack_to(checkpoint)

    async def _ack_to(self, checkpoint: int) -> None:
        """``AckAll`` the last held delivery at or below ``checkpoint``."""
        held = self._held
        reply: str | None = None
        while held and held[0][0][-1] <= checkpoint:
            reply = held.popleft()[1][-1]
        if held and held[0][0][0] <= checkpoint:
            seqs, replies = held[0]
            cut = bisect.bisect_right(seqs, checkpoint)
            reply, held[0] = replies[cut - 1], (seqs[cut:], replies[cut:])
        await self._acked(reply)

    async def _acked(self, reply: str | None) -> None:
        """Send the ack (if any) and wake whoever waits for progress."""
        if reply is not None:
            try:
                await self.nc.publish(reply, b"+ACK")
            except Exception as exc:  # a lost ack only means a redelivery, which is skipped
                log.warning("consumer %s: ack %s not sent: %s", self._name, reply, exc)
        async with self._progress:
            self._progress.notify_all()

    def _release(self) -> None:
        if self.claim is not None:
            self.claim.release()


async def _wait_any(*events: asyncio.Event, timeout: float | None) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


__all__ = [
    "PULL_EXPIRES_S",
    "Consumer",
    "ConsumerStats",
    "Delivery",
    "Handler",
    "Pause",
    "PullStatus",
    "pull_status",
]
