"""The detector: a durable pull consumer that runs the rules over the stream and publishes
what they find back into it.

:class:`Detector` reads ``MEDIA_EVENTS`` through its own durable consumer ``detector``,
filtered to ``playback.>``, in sequence order. For each batch it feeds the media events to
the :class:`~ingestor.detection.rules.Engine`, publishes the alerts to the same stream
(subject ``alert.<rule>``, ``Nats-Msg-Id`` = the alert's deterministic id) and waits for
JetStream to store them, and only then acks the batch (``AckAll``). So delivery is at least
once, and an alert published twice (a crash between publishing and acking) is one alert:
JetStream drops the copy inside its duplicate window, and the projection drops an
``alert_id`` it already has. Because alerts live in the stream, the router projects them into
``detection_alerts`` like any event, every replay reproduces them, and running detection
again over the same events adds nothing.

Restart: the consumer's ack floor is where the detector resumes. Its rules need history (the
streams live at that moment, where a user was, which clients they used), so before resuming
it **warms up**: it re-reads, without publishing anything, the ``playback.>`` messages the
stream recorded within the engine's horizon plus ``DETECTION_MAX_LATENESS`` before the resume
point, and feeds them to a fresh engine. A window that spans the restart therefore still
fires, and nothing it fired before the restart fires again.

With ``PROJECT_SERVERS`` (:mod:`ingestor.servers`) its durable is named for the server set,
filtered to those servers' subjects and the old-form ones, and it judges those servers' events
only (every rule judges a user on one server, so partitions find the same alerts).

Without ``GEOIP_DB`` it logs one line at start saying the location rules are off and why.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ingestor.detection.config import LOCATION_RULES, RULES, DetectionConfig
from ingestor.detection.geo import GeoIP, Locator
from ingestor.detection.rules import Engine
from ingestor.events import MediaEvent
from ingestor.nats.consumer import Consumer, ConsumerStats, Delivery, Handler
from ingestor.nats.publisher import OutgoingMessage, Publisher, PublishOutcome
from ingestor.nats.reader import message_of, read_range, stream_bounds
from ingestor.nats.streams import MEDIA_SUBJECTS, STREAM, consumer_filter_subjects
from ingestor.pipeline import decode_messages
from ingestor.priority import Priority
from ingestor.records import Alert, encode_record
from ingestor.servers import Partition
from ingestor.sources.base import Backoff

log = logging.getLogger(__name__)

DETECTOR = "detector"
PULL_EXPIRES_S = 1.0
ACK_WAIT_S = 120.0
WARMUP_BATCH = 5000
_MEDIA_PREFIX = MEDIA_SUBJECTS.rstrip(">")


@dataclass
class DetectorStats(ConsumerStats):
    """What the detector did since it started."""

    last_seq: int = 0  # the last stream sequence whose alerts are stored (then acked)
    events: int = 0  # media events fed after the warm-up
    skipped: int = 0  # playback messages that are no readable event (the router dead-letters)
    engine_errors: int = 0  # events the engine failed on (logged, skipped)
    alerts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))
    duplicates: int = 0  # alerts the stream already held (a re-run, or after a crash)
    publish_retries: int = 0
    warmup_messages: int = 0
    warmup_events: int = 0
    warmup_from_seq: int | None = None
    warmup_seconds: float = 0.0


class _Stopped(Exception):
    """Stopping while alerts could not be published: leave the batch unacked."""


class Detector(Handler):
    """Run the detection rules over ``MEDIA_EVENTS`` until told to stop.

    Wire it next to the router and the archiver: ``tasks.create_task(detector.run())``, and
    ``detector.stop()`` when stopping; ``run`` finishes the batch in hand and returns.
    ``status()`` says what it did and which rules run. A Detector runs once.

    ``geo``: a locator to use instead of opening ``config.geoip_db`` (tests, notebooks).
    ``consumer``: the durable's name; another name runs detection again from the start of
    the stream (its alerts are the same ids, so ``detection_alerts`` gains nothing).
    ``fault``: a seam for failure tests (see ``__init__``).

    It is a :class:`~ingestor.nats.consumer.Handler` of the one pull consumer, filtered to
    ``playback.>``; its checkpoint is the last sequence whose alerts are stored.
    """

    def __init__(
        self,
        nc: Client,
        config: DetectionConfig,
        *,
        batch_size: int = 1000,
        consumer: str = DETECTOR,
        geo: Locator | None = None,
        fault: Callable[[str], None] | None = None,
        priority: Priority | None = None,
        partition: Partition | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.config = config
        self.batch_size = batch_size
        # PROJECT_SERVERS: the rules judge these servers' events only (a user belongs to one
        # server, so no rule needs another's); ingestor/servers.py
        self.partition = partition if partition is not None and not partition.all else None
        # a seam for failure tests: called with "published" once a batch's alerts are stored
        # and before the batch is acked; it may raise (a crash at the worst moment)
        self.fault = fault
        self._owned_geo: GeoIP | None = None
        if geo is None and config.geoip_db is not None and config.enabled:
            geo = self._owned_geo = GeoIP(config.geoip_db)
        self.engine = Engine(config, geo=geo, vpn=config.vpn_ranges)
        self.publisher = Publisher(nc)
        self.stats = DetectorStats()
        self.consumer = Consumer(
            nc,
            durable=consumer,
            filter_subjects=[MEDIA_SUBJECTS]
            if self.partition is None
            else consumer_filter_subjects(self.partition.servers, records=False),
            description="detection: the rules over playback events",
            batch_size=batch_size,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=max(4 * batch_size, 20_000),
            max_waiting=4,
            expires=PULL_EXPIRES_S,
            yield_to=priority,  # waited for while the router drains a backlog
            stats=self.stats,
        )
        self._warmed = False

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop reading; ``run`` finishes the batch in hand (publish, ack) and returns."""
        self.consumer.stop()

    def location_rules_off_reason(self) -> str | None:
        """Why the location rules do not run, or ``None`` when they can."""
        if self.engine.geo is None:
            return self.config.location_rules_off_reason() or "no location database"
        return None

    def _mine(self, item: object) -> bool:
        """A media event this detector judges (of its servers, when it has some)."""
        if not isinstance(item, MediaEvent):
            return False
        return self.partition is None or self.partition.keeps(item.server_id)

    def status(self) -> dict[str, Any]:
        """What the detector did and which rules run, for ``/status``."""
        s = self.stats
        why_not_located = self.location_rules_off_reason()
        return {
            "enabled": self.config.enabled,
            "consumer": self.consumer.durable,
            "last_seq": s.last_seq,
            "events": s.events,
            "alerts": dict(s.alerts),
            "alerts_total": sum(s.alerts.values()),
            "duplicates": s.duplicates,
            "rules": self.engine.active_rules(),
            "location_rules": {
                "on": why_not_located is None,
                "why_not": why_not_located,
                "geoip_db": str(self.config.geoip_db) if self.config.geoip_db else None,
            },
            "vpn_usage": {
                "on": self.engine.active_rules()["vpn_usage"],
                "why_not": self.config.vpn_off_reason(),
            },
            "warmup": {
                "from_seq": s.warmup_from_seq,
                "messages": s.warmup_messages,
                "events": s.warmup_events,
                "seconds": round(s.warmup_seconds, 3),
                "horizon_seconds": self.engine.horizon.total_seconds(),
            },
            "skipped": s.skipped,
            "engine_errors": s.engine_errors,
            "redeliveries_skipped": s.redeliveries_skipped,
            "publish_retries": s.publish_retries,
            "restarts": s.restarts,
            "last_error": s.last_error,
            "state": self.engine.state_size(),
        }

    async def run(self) -> DetectorStats:
        """Detect until :meth:`stop`; NATS failures are retried with backoff, never raised."""
        if not self.config.enabled:
            log.info("detection is off (DETECTION_ENABLED=false)")
            return self.stats
        self._log_rules()
        try:
            await self.consumer.run(self)
        finally:
            if self._owned_geo is not None:
                self._owned_geo.close()
        log.info(
            "detector stopped at seq %d: %d alerts published",
            self.stats.last_seq,
            sum(self.stats.alerts.values()),
        )
        return self.stats

    async def wait_for_seq(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until every ``playback.>`` message up to ``seq`` is judged and its alerts
        stored; False on timeout."""
        return await self.consumer.wait_for(lambda: self.stats.last_seq >= seq, timeout)

    def _log_rules(self) -> None:
        why = self.location_rules_off_reason()
        if why is not None:
            log.warning(
                "detection: the location rules (%s) are off: %s; set GEOIP_DB to a "
                "MaxMind-format database (.mmdb) to turn them on",
                ", ".join(LOCATION_RULES),
                why,
            )
        vpn_why = self.config.vpn_off_reason()
        if vpn_why is not None and self.config.vpn_usage.enabled:
            log.info("detection: vpn_usage is off: %s", vpn_why)
        running = [rule for rule, on in self.engine.active_rules().items() if on]
        log.info("detection rules running: %s", ", ".join(running) or "none")

    # ------------------------------------------------------------------ start and warm-up

    async def _resume_point(self) -> int:
        """The first sequence not yet judged: after the durable's ack floor (1 if none)."""
        try:
            info = await self.js.consumer_info(STREAM, self.consumer.durable)
        except NotFoundError:
            return 1
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        _, last = await stream_bounds(self.nc)
        if floor > last:
            log.warning(
                "%s ends at seq %d, before the detector's ack floor %d: was the stream "
                "recreated? Detection starts again from its beginning",
                STREAM,
                last,
                floor,
            )
            return 1
        return floor + 1

    async def _warm_up(self, resume: int) -> None:
        """Feed the engine, without publishing, what it needs from before ``resume``."""
        done = resume - 1
        first, last = await stream_bounds(self.nc)
        if last == 0 or done < max(first, 1):
            return
        started = time.perf_counter()
        span = self.engine.horizon + timedelta(seconds=self.config.max_lateness)
        start = first
        with contextlib.suppress(NotFoundError):
            resumed_after = await self.js.get_msg(STREAM, done)
            if resumed_after.time is not None:
                start = max(first, await self._seq_recorded_at(resumed_after.time - span))
        self.stats.warmup_from_seq = start
        async for batch in read_range(self.nc, start, done, batch=WARMUP_BATCH):
            self.stats.warmup_messages += len(batch)
            media = [m for m in batch if m.subject.startswith(_MEDIA_PREFIX)]
            decoded, _ = decode_messages(media)
            for _, item in decoded:
                if self._mine(item):
                    assert isinstance(item, MediaEvent)
                    self.stats.warmup_events += 1
                    with contextlib.suppress(Exception):
                        self.engine.feed(item)  # alerts already published before the restart
            if self.consumer.stopping:
                raise _Stopped
        self.stats.warmup_seconds = time.perf_counter() - started
        log.info(
            "detector: rebuilt its windows from %d events (seq %d..%d) in %.1fs",
            self.stats.warmup_events,
            start,
            done,
            self.stats.warmup_seconds,
        )

    async def _seq_recorded_at(self, at: datetime) -> int:
        """The first sequence the stream recorded at or after ``at`` (stream time)."""
        info = await self.js.add_consumer(
            STREAM,
            ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=at,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=10.0,
                max_waiting=1,
            ),
        )
        try:
            return (info.delivered.stream_seq if info.delivered else 0) + 1
        finally:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(STREAM, info.name)

    # ------------------------------------------------------------------ the handler

    async def resume(self) -> int:
        """The last sequence judged: at the first start, the durable's ack floor, with the
        engine warmed up on what came before it."""
        if not self._warmed:
            resume = await self._resume_point()
            await self._warm_up(resume)
            self._warmed = True
            self.stats.last_seq = resume - 1
        return self.stats.last_seq

    def checkpoint(self) -> int:
        return self.stats.last_seq

    async def handle(self, batch: list[Delivery]) -> None:
        """Judge a batch and store its alerts in the stream (the consumer then acks it)."""
        messages = [message_of(delivery.msg) for delivery in batch]
        decoded, rejected = decode_messages(messages)
        self.stats.skipped += len(rejected)
        alerts: list[Alert] = []
        for message, item in decoded:
            if not self._mine(item):
                continue
            assert isinstance(item, MediaEvent)
            self.stats.events += 1
            try:
                alerts.extend(self.engine.feed(item))
            except Exception:  # a rule's bug must not stop detection
                self.stats.engine_errors += 1
                log.exception("detector: the rules failed on seq %d; skipped", message.seq)
        if alerts:
            await self._publish(alerts)
            if self.fault is not None:
                self.fault("published")
        self.stats.last_seq = messages[-1].seq

    async def _publish(self, alerts: list[Alert]) -> None:
        """Publish ``alerts`` and wait until the stream stored each (retrying until then);
        raise :class:`_Stopped` when stopping before that."""
        outgoing = [OutgoingMessage(a.subject, encode_record(a), a.alert_id) for a in alerts]
        backoff = Backoff(initial=0.2, maximum=15.0)
        while True:
            try:
                results = [r async for r in self.publisher.iter_publish(outgoing)]
                break
            except Exception as exc:
                self.stats.publish_retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("detector: alerts not stored (%s); retrying", exc)
                if await backoff.sleep(self.consumer.stop_event):
                    raise _Stopped from exc
        for alert, result in zip(alerts, results, strict=True):
            self.stats.alerts[alert.rule] = self.stats.alerts.get(alert.rule, 0) + 1
            if result.outcome is PublishOutcome.DUPLICATE:
                self.stats.duplicates += 1
            log.info("alert %s (%s): %s", alert.rule, alert.severity, alert.message)


__all__ = ["DETECTOR", "Detector", "DetectorStats"]
