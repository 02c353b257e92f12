"""What the running ingestor says about itself: Prometheus metrics and readiness.

Two kinds of figures, kept apart on purpose:

* **Counted** as batches commit (:meth:`Monitor.observe_batch`, called by the router after
  each commit, on its loop): events by outcome, flush duration, batch size. Plain integer
  additions and two histogram observations per batch; nothing that could slow ingestion.
* **Read at scrape time** (:meth:`Monitor.render`, :meth:`Monitor.readiness`): consumer lag
  (the durable consumer's pending plus unacked messages), dead-letter depth (the message count
  of ``MEDIA_EVENTS_DLQ``), the stream's last sequence, each source's last success, broadcast
  clients. NATS is asked with a short timeout, so a scrape or a health check never hangs on
  a NATS outage: it reports it.

The metrics live in a :class:`~prometheus_client.CollectorRegistry` of their own, never the
global one, so several ingestors (tests) in one process do not collide.

``events_total`` outcomes: ``projected`` (every accepted event, links included: equals the
rows of ``media_events``), ``dropped_event_id`` and ``dropped_session_key`` (dedup tiers a and
b), ``linked`` (tier c: the accepted events that joined another source's playback, a subset of
``projected``), ``dead_lettered``.

>>> from ingestor.projection import BatchResult
>>> monitor = Monitor(mode="nats-off", handle=None, consumer=None, probe=None, max_lag=10)
>>> monitor.observe_batch(BatchResult(last_seq=3, accepted=2, dropped={"event_id": 1}))
>>> monitor.outcomes()["projected"], monitor.outcomes()["dropped_event_id"]
(2, 1)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingestor.broadcast import BroadcastHub
from ingestor.nats.connection import NatsHandle
from ingestor.nats.streams import DLQ_STREAM, STREAM
from ingestor.projection import BatchResult, Projection
from ingestor.router import RouterStats
from ingestor.sources.base import SourceHealth

PREFIX = "mediaevents"
NATS_TIMEOUT_S = 2.0  # per NATS request made by a scrape or a health check
PROBE_TIMEOUT_S = 2.0
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000)
OUTCOMES = ("projected", "dropped_event_id", "dropped_session_key", "linked", "dead_lettered")
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

PROBE_TABLE = "ingestor_readiness_probe"
CREATE_PROBE = f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (id INTEGER, probed_at TIMESTAMPTZ)"
SEED_PROBE = (
    f"INSERT INTO {PROBE_TABLE} SELECT 1, now() WHERE NOT EXISTS (SELECT 1 FROM {PROBE_TABLE})"
)
TOUCH_PROBE = f"UPDATE {PROBE_TABLE} SET probed_at = now() WHERE id = 1"


# ---------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """One readiness check: ``ok`` is None when the check does not apply in this mode."""

    ok: bool | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, Check]

    @property
    def ready(self) -> bool:
        return all(check.ok is not False for check in self.checks.values())

    @property
    def failing(self) -> list[str]:
        return [name for name, check in self.checks.items() if check.ok is False]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "failing": self.failing,
            "checks": {name: check.as_dict() for name, check in self.checks.items()},
        }


class ProjectionProbe:
    """Is the projection writable? A one-row UPDATE on a scratch table, committed on a cursor
    of its own (its own connection to the same database, taken through
    :meth:`Projection.reading` at each probe: the connection is swapped after an erasure,
    and a probe during the swap waits for it), in a worker thread.

    DuckDB's MVCC lets it commit beside the router's batch transaction: they touch different
    tables, so neither waits for nor conflicts with the other. At most one probe is in flight;
    a write that has not committed within ``timeout`` reports unwritable (a stalled disk)
    without starting a second one.
    """

    def __init__(self, projection: Projection, timeout: float = PROBE_TIMEOUT_S) -> None:
        self.projection = projection
        self.timeout = timeout
        self._task: asyncio.Future[float] | None = None
        self._started = 0.0

    def prepare(self) -> None:
        """Create the scratch table (blocking: call off the event loop, once, at start)."""
        with self.projection.reading() as cursor:
            cursor.execute(CREATE_PROBE)
            cursor.execute(SEED_PROBE)

    def _touch(self) -> float:
        started = time.perf_counter()
        with self.projection.reading() as cursor:
            cursor.execute(TOUCH_PROBE)
        return time.perf_counter() - started

    async def check(self) -> Check:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(asyncio.to_thread(self._touch))
            self._started = time.monotonic()
        try:
            seconds = await asyncio.wait_for(asyncio.shield(self._task), self.timeout)
        except TimeoutError:
            waited = time.monotonic() - self._started
            return Check(False, f"a one-row write has not committed after {waited:.1f}s")
        except duckdb.Error as exc:
            return Check(False, f"a one-row write failed: {str(exc).splitlines()[0]}")
        return Check(True, f"a one-row write committed in {seconds * 1000:.1f} ms")


@dataclass
class NatsState:
    """What NATS said just now; ``None`` fields could not be read (see the errors)."""

    connected: bool = False
    stream_last_seq: int | None = None
    stream_error: str | None = None
    consumer_lag: int | None = None
    consumer_error: str | None = None
    dlq_messages: int | None = None


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {NATS_TIMEOUT_S:g}s"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


async def read_nats(handle: NatsHandle, consumer: str | None) -> NatsState:
    """Stream, consumer and dead-letter figures, each with a short timeout, concurrently."""
    state = NatsState(connected=handle.nc.is_connected)
    if not state.connected:
        state.stream_error = state.consumer_error = "NATS is not connected"
        return state
    js = handle.js

    async def ask(coro: Any) -> Any:
        return await asyncio.wait_for(coro, NATS_TIMEOUT_S)

    stream, dlq, info = await asyncio.gather(
        ask(js.stream_info(STREAM)),
        ask(js.stream_info(DLQ_STREAM)),
        ask(js.consumer_info(STREAM, consumer)) if consumer else asyncio.sleep(0),
        return_exceptions=True,
    )
    if isinstance(stream, BaseException):
        state.stream_error = _why(stream)
    else:
        state.stream_last_seq = stream.state.last_seq
    if not isinstance(dlq, BaseException):
        state.dlq_messages = dlq.state.messages
    if consumer:
        if isinstance(info, BaseException):
            state.consumer_error = _why(info)
        else:
            state.consumer_lag = (info.num_pending or 0) + (info.num_ack_pending or 0)
    return state


# ---------------------------------------------------------------------- monitor


class Monitor:
    """The ingestor's metrics registry and readiness checks.

    ``mode`` is ``event-sourcing``, ``legacy`` or ``nats-off``; ``consumer`` the durable
    consumer whose lag counts (None when nothing consumes the stream). After the service has
    built them, set :attr:`sources` (their health), :attr:`router_stats` and :attr:`hub`.
    """

    def __init__(
        self,
        *,
        mode: str,
        handle: NatsHandle | None,
        consumer: str | None,
        probe: ProjectionProbe | None,
        max_lag: int,
    ) -> None:
        self.mode = mode
        self.handle = handle
        self.consumer = consumer
        self.probe = probe
        self.max_lag = max_lag
        self.sources: Sequence[SourceHealth] = ()
        self.router_stats: RouterStats | None = None
        self.hub: BroadcastHub | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self._outcomes = dict.fromkeys(OUTCOMES[:-1], 0)
        self._nats: NatsState | None = None
        self.flush_seconds = Histogram(
            f"{PREFIX}_flush_seconds",
            "Time to decide and commit one batch (dedup + DuckDB transaction)",
            buckets=FLUSH_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Records (events, alerts, audit decisions) decided per committed batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(self))

    # ------------------------------------------------------------------ counted

    def observe_batch(self, result: BatchResult) -> None:
        """Count one committed batch (the router's ``on_batch``; cheap, synchronous)."""
        outcomes = self._outcomes
        outcomes["projected"] += result.accepted
        outcomes["linked"] += result.linked
        for tier, n in result.dropped.items():
            key = f"dropped_{tier}"
            outcomes[key] = outcomes.get(key, 0) + n
        self.flush_seconds.observe(result.seconds)
        self.batch_size.observe(len(result.applied) + len(result.alerts) + len(result.decisions))

    def outcomes(self) -> dict[str, int]:
        """Events by outcome since start (``dead_lettered`` from the router's count)."""
        dead = self.router_stats.dead_lettered if self.router_stats is not None else 0
        return {**self._outcomes, "dead_lettered": dead}

    # ------------------------------------------------------------------ read live

    async def _read_nats(self) -> NatsState | None:
        if self.handle is None:
            return None
        consumer = self.consumer if self.mode == "event-sourcing" else None
        return await read_nats(self.handle, consumer)

    async def render(self) -> bytes:
        """The Prometheus text exposition, with live figures read just now."""
        self._nats = await self._read_nats()
        return generate_latest(self.registry)

    async def readiness(self) -> Readiness:
        """``/readyz``: NATS connected, stream reachable, projection writable, lag bounded."""
        nats, writable = await asyncio.gather(
            self._read_nats(),
            self.probe.check() if self.probe is not None else _not_used("no projection"),
        )
        self._nats = nats
        checks: dict[str, Check] = {}
        if nats is None:
            off = Check(None, "not used (NATS_ENABLED=false)")
            checks["nats_connected"] = checks["stream_reachable"] = off
        else:
            assert self.handle is not None
            url = self.handle.nc.connected_url
            checks["nats_connected"] = Check(
                nats.connected,
                f"connected to {url.geturl()}" if nats.connected and url else "not connected",
            )
            checks["stream_reachable"] = (
                Check(True, f"{STREAM} last sequence {nats.stream_last_seq}")
                if nats.stream_error is None
                else Check(False, f"{STREAM}: {nats.stream_error}")
            )
        checks["projection_writable"] = writable
        if self.mode != "event-sourcing":
            checks["consumer_lag"] = Check(None, f"not used ({self.mode} mode: no consumer)")
        elif nats is None or nats.consumer_lag is None:
            why = nats.consumer_error if nats is not None else "no NATS"
            checks["consumer_lag"] = Check(False, f"consumer {self.consumer}: {why}")
        else:
            lag = nats.consumer_lag
            checks["consumer_lag"] = Check(
                lag <= self.max_lag, f"{lag} messages behind (READY_MAX_LAG {self.max_lag})"
            )
        return Readiness(checks)


async def _not_used(why: str) -> Check:
    return Check(None, f"not used ({why})")


class _LiveCollector(Collector):
    """Everything not kept in a prometheus_client metric object: outcome counters (so the
    router's dead-letter count is read, not copied) and figures read at scrape time."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families vary with the mode and the sources: not described

    def collect(self) -> Iterator[Metric]:
        m = self.monitor
        events = CounterMetricFamily(
            f"{PREFIX}_events",
            "Events by outcome since start: projected (every accepted event, links included), "
            "dropped per dedup tier, linked (tier c, a subset of projected), dead_lettered",
            labels=["outcome"],
        )
        for outcome, n in m.outcomes().items():
            events.add_metric([outcome], n)
        yield events
        nats = m._nats
        if nats is not None:
            yield _gauge("nats_connected", "1 when connected to NATS", float(nats.connected))
            if nats.consumer_lag is not None:
                yield _gauge(
                    "consumer_lag",
                    "Messages of MEDIA_EVENTS the projector has not committed yet",
                    nats.consumer_lag,
                )
            if nats.dlq_messages is not None:
                yield _gauge(
                    "dlq_messages", "Messages in the dead-letter stream", nats.dlq_messages
                )
            if nats.stream_last_seq is not None:
                yield _gauge(
                    "stream_last_seq", "Last sequence of MEDIA_EVENTS", nats.stream_last_seq
                )
        if m.router_stats is not None:
            yield _gauge(
                "checkpoint_seq", "Last stream sequence committed", m.router_stats.last_seq
            )
        last_success = GaugeMetricFamily(
            f"{PREFIX}_source_last_success_timestamp_seconds",
            "Unix time of each source's last successful contact (absent: none yet)",
            labels=["source", "kind"],
        )
        published = CounterMetricFamily(
            f"{PREFIX}_source_events_published",
            "Events each source has handed to the sink since start",
            labels=["source", "kind"],
        )
        for health in m.sources:
            if health.last_success is not None:
                last_success.add_metric([health.name, health.kind], health.last_success.timestamp())
            published.add_metric([health.name, health.kind], health.events_published)
        yield last_success
        yield published
        if m.hub is not None:
            yield _gauge("broadcast_clients", "Connected live-feed clients", m.hub.clients)
            dropped = CounterMetricFamily(
                f"{PREFIX}_broadcast_dropped_clients",
                "Live-feed clients dropped for falling too far behind",
            )
            dropped.add_metric([], m.hub.dropped_slow)
            yield dropped


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)
