"""The detector against a real nats-server, a real router and real DuckDB files: its alerts
land in ``detection_alerts``, survive a stop or a kill without loss or doubles, come back
from a replay, and running detection again adds nothing."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client

from ingestor.app import new_pipeline, open_projection
from ingestor.config import Settings
from ingestor.detection.config import DetectionConfig
from ingestor.detection.detector import Detector
from ingestor.detection.geo import GeoIP
from ingestor.detection.rules import Engine
from ingestor.events import MediaEvent, encode_event
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.publisher import Publisher, PublishResult
from ingestor.nats.reader import read_range, stream_bounds
from ingestor.nats.streams import STREAM
from ingestor.projection import Projection
from ingestor.records import Alert
from ingestor.router import Router
from tests.unit.test_detection_rules import LONDON, NEW_YORK, T0, ev, minutes, write_city_db
from workbench.log import EventLog
from workbench.replay import replay

pytestmark = pytest.mark.integration

SELECT_ALERTS = "SELECT * FROM detection_alerts ORDER BY alert_id"


# ----------------------------------------------------------------------------- the feed


def ana(device: int, at: timedelta, **kw) -> MediaEvent:
    """Ana starts a film on one of her devices (at home: a LAN address)."""
    kw.setdefault("ip", f"192.168.1.{10 + device}")
    return ev("play", T0 + at, machine=f"device-{device}", item=str(device), **kw)


def bruno(machine: str, at: timedelta, ip: str) -> MediaEvent:
    return ev("play", T0 + at, user="12", username="bruno", machine=machine, item=machine, ip=ip)


def carols_laptop(i: int) -> MediaEvent:
    """Carol's laptop reports progress from its i-th address, a minute apart."""
    return ev(
        "progress", T0 + minutes(i), user="13", username="carol", machine="laptop",
        item="70", ip=f"81.2.69.{i + 1}", started_at=T0, position_ms=i * 1000,
    )  # fmt: skip


def first_half() -> list[MediaEvent]:
    """Nothing to alert on yet: each finding needs something from the second half."""
    return [
        ana(0, minutes(0)),
        ana(1, minutes(1)),
        bruno("tv", minutes(0), LONDON),
        carols_laptop(0),
        carols_laptop(1),
    ]


def second_half() -> list[MediaEvent]:
    """Completes every finding: four streams, a trip, a device hop, a bot."""
    five_s_late = minutes(2) + timedelta(seconds=5)
    # Tautulli's activity poll reporting ana's third playback again: still three streams
    polled = ana(2, five_s_late + timedelta(seconds=1), source="tautulli_activity",
                 started_at=T0 + five_s_late, ip="")  # fmt: skip
    bot = ev("play", T0 + minutes(5), user="14", username="dave", machine="scraper",
             item="9", product="python-requests", platform="Linux")  # fmt: skip
    summary = ev("summary", T0 + minutes(40), machine="device-0", item="0", source="tautulli",
                 started_at=T0 + timedelta(seconds=4), stopped_at=T0 + minutes(39))  # fmt: skip
    return [
        ana(2, minutes(2)),
        polled,
        ana(3, minutes(3)),
        bruno("phone", minutes(20), NEW_YORK),
        carols_laptop(2),
        carols_laptop(3),
        bot,
        summary,
    ]


EXPECTED_RULES = Counter(
    {
        "concurrent_streams": 1,
        "impossible_travel": 1,
        "simultaneous_locations": 1,
        "device_velocity": 1,
        "user_agent_anomaly": 1,
    }
)


@pytest.fixture
def detection(tmp_path: Path) -> DetectionConfig:
    db = write_city_db(tmp_path / "city.mmdb")
    return DetectionConfig.from_env({"GEOIP_DB": str(db)})


@pytest.fixture
async def handle(settings: Settings) -> AsyncIterator[NatsHandle]:
    opened = await open_nats(settings)
    try:
        yield opened
    finally:
        await opened.close()


def expected_alerts(config: DetectionConfig, events: list[MediaEvent]) -> list[Alert]:
    """What the pure engine says about the events, in stream order."""
    assert config.geoip_db is not None
    with GeoIP(config.geoip_db) as geo:
        return Engine(config, geo=geo).feed_all(events)


# ----------------------------------------------------------------------------- helpers


async def publish(handle: NatsHandle, events: list[MediaEvent]) -> int:
    """Publish ``events``; the last sequence the stream gave them."""
    return max((await publish_each(handle, events)).values())


async def publish_each(handle: NatsHandle, events: list[MediaEvent]) -> dict[str, int]:
    """Publish ``events``; the sequence of each, by event id."""
    results: list[PublishResult] = []
    await Publisher(handle.nc).publish_many(events, on_result=results.append)
    return {r.event_id: r.seq for r in results}


async def publish_again(handle: NatsHandle, event: MediaEvent) -> int:
    """Store an exact re-delivery: the same event again, without a Nats-Msg-Id."""
    ack = await handle.js.publish(event.subject, encode_event(event), stream=STREAM)
    return ack.seq


async def detect(handle: NatsHandle, config: DetectionConfig, last_seq: int, **kwargs) -> Detector:
    """Run a detector until it judged everything up to ``last_seq``, then stop it."""
    detector = Detector(handle.nc, config, **kwargs)
    task = asyncio.create_task(detector.run())
    reached = await detector.wait_for_seq(last_seq, timeout=30)
    detector.stop()
    await asyncio.wait_for(task, 30)
    assert reached, f"the detector stopped at seq {detector.stats.last_seq} of {last_seq}"
    return detector


async def project(settings: Settings, handle: NatsHandle) -> Projection:
    """Run a router over a fresh projection until it has applied the whole stream."""
    projection = open_projection(settings.duckdb_path)
    router = Router(handle.nc, new_pipeline(settings, projection), flush_interval=0.05)
    task = asyncio.create_task(router.run())
    _, last = await stream_bounds(handle.nc)
    reached = await router.wait_for_seq(last, timeout=30)
    router.stop()
    await asyncio.wait_for(task, 30)
    assert reached, f"the router is stuck at {router.stats.last_seq} of {last}"
    return projection


async def run_live(
    settings: Settings, handle: NatsHandle, config: DetectionConfig, last_seq: int
) -> tuple[Projection, Detector]:
    """Run a router and a detector side by side, as ``ingestor run`` does, until the
    detector judged ``last_seq`` and the router projected everything (alerts included)."""
    projection = open_projection(settings.duckdb_path)
    router = Router(handle.nc, new_pipeline(settings, projection), flush_interval=0.05)
    detector = Detector(handle.nc, config, batch_size=4)
    routing = asyncio.create_task(router.run())
    detecting = asyncio.create_task(detector.run())
    try:
        assert await detector.wait_for_seq(last_seq, timeout=30)
        _, stream_last = await stream_bounds(handle.nc)
        assert await router.wait_for_seq(stream_last, timeout=30)
    finally:
        detector.stop()
        router.stop()
        await asyncio.gather(routing, detecting)
    return projection, detector


async def alerts_in_stream(handle: NatsHandle) -> list[Alert]:
    decoder = msgspec.json.Decoder(Alert)
    found = []
    async for batch in read_range(handle.nc):
        found += [decoder.decode(m.data) for m in batch if m.subject.startswith("alert.")]
    return found


async def kill(task: asyncio.Task, nc: Client) -> None:
    """End a detector as a crash would: no stop, no flush, its connection gone.

    Cancelled until it is done (Python 3.11's ``wait_for`` can swallow one cancellation),
    and its connection closed, so nothing it started can still publish or ack."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    await nc.close()


def rows(projection: Projection) -> list[tuple]:
    return projection.con.execute(SELECT_ALERTS).fetchall()


# ----------------------------------------------------------------------------- tests


async def test_the_detector_puts_the_rules_findings_in_detection_alerts(
    settings: Settings, handle: NatsHandle, detection: DetectionConfig
) -> None:
    events = [*first_half(), *second_half()]
    expected = expected_alerts(detection, events)
    assert Counter(a.rule for a in expected) == EXPECTED_RULES
    last = await publish(handle, events)
    last = await publish_again(handle, events[-5])  # bruno's trip again: judged once
    projection, detector = await run_live(settings, handle, detection, last)
    got = projection.con.execute(
        "SELECT alert_id, rule, severity, occurred_at, user_id, event_ids FROM detection_alerts"
    ).fetchall()
    assert sorted(got) == sorted(
        (a.alert_id, a.rule, a.severity, a.occurred_at, a.user_id, a.event_ids) for a in expected
    )
    status = detector.status()
    assert status["alerts"] == {**dict.fromkeys(status["alerts"], 0), **EXPECTED_RULES}
    assert status["location_rules"]["on"] and status["last_seq"] == last
    assert detector.engine.stats.redelivered == 1
    projection.close()


async def test_a_detector_stopped_between_two_halves_resumes_with_its_windows(
    settings: Settings, handle: NatsHandle, detection: DetectionConfig
) -> None:
    first, second = first_half(), second_half()
    expected = expected_alerts(detection, [*first, *second])
    before = await detect(handle, detection, await publish(handle, first))
    assert sum(before.stats.alerts.values()) == 0  # every finding spans the restart
    after = await detect(handle, detection, await publish(handle, second))
    assert after.stats.warmup_events == len(first)  # rebuilt from what it had judged
    assert Counter(after.stats.alerts) == EXPECTED_RULES and after.stats.duplicates == 0
    projection = await project(settings, handle)
    assert {r[0] for r in rows(projection)} == {a.alert_id for a in expected}
    stored = await alerts_in_stream(handle)
    assert sorted(a.alert_id for a in stored) == sorted(a.alert_id for a in expected)
    projection.close()


async def test_a_detector_killed_mid_way_loses_and_doubles_nothing(
    settings: Settings, handle: NatsHandle, detection: DetectionConfig
) -> None:
    events = [*first_half(), *second_half()]
    expected = expected_alerts(detection, events)
    seqs = await publish_each(handle, events)
    last = max(seqs.values())
    first_finding = seqs[expected[0].event_ids[0]]
    own = await nats.connect(settings.nats_url)
    killed = Detector(own, detection, batch_size=1)
    task = asyncio.create_task(killed.run())
    assert await killed.wait_for_seq(first_finding, timeout=30)
    await kill(task, own)  # wherever it was: mid-batch, between a publish and its ack...
    assert 0 < sum(killed.stats.alerts.values()) < len(expected)
    assert killed.stats.last_seq < last
    restarted = await detect(handle, detection, last, batch_size=1)
    assert restarted.stats.warmup_events > 0
    projection = await project(settings, handle)
    assert sorted(r[0] for r in rows(projection)) == sorted(a.alert_id for a in expected)
    stored = Counter(a.alert_id for a in await alerts_in_stream(handle))
    assert set(stored) == {a.alert_id for a in expected} and set(stored.values()) == {1}
    projection.close()


class Crash(BaseException):
    """The process dies: nothing in the detector may catch it."""


async def test_a_crash_after_publishing_before_acking_doubles_no_alert(
    settings: Settings, handle: NatsHandle, detection: DetectionConfig
) -> None:
    events = [*first_half(), *second_half()]
    expected = expected_alerts(detection, events)
    last = await publish(handle, events)

    def crash(point: str) -> None:
        assert point == "published"
        raise Crash

    own = await nats.connect(settings.nats_url)
    crashed = Detector(own, detection, batch_size=1, fault=crash)
    with pytest.raises(Crash):
        await crashed.run()
    await own.close()
    stored_then = sum(crashed.stats.alerts.values())
    assert stored_then >= 1 and crashed.stats.last_seq < last
    restarted = await detect(handle, detection, last, batch_size=1)
    assert restarted.stats.duplicates == stored_then  # the unacked batch's alerts again
    projection = await project(settings, handle)
    assert sorted(r[0] for r in rows(projection)) == sorted(a.alert_id for a in expected)
    stored = Counter(a.alert_id for a in await alerts_in_stream(handle))
    assert set(stored.values()) == {1}
    projection.close()


async def test_a_replay_of_the_stream_reproduces_detection_alerts(
    settings: Settings, handle: NatsHandle, detection: DetectionConfig
) -> None:
    last = await publish(handle, [*first_half(), *second_half()])
    projection, _ = await run_live(settings, handle, detection, last)
    live = rows(projection)
    assert len(live) == sum(EXPECTED_RULES.values())
    async with EventLog(nc=handle.nc) as log:
        with await replay(log, progress=False) as again:
            assert again.con.execute(SELECT_ALERTS).fetchall() == live
    projection.close()


async def test_running_detection_again_over_the_same_events_adds_no_rows(
    settings: Settings, handle: NatsHandle, detection: DetectionConfig
) -> None:
    last = await publish(handle, [*first_half(), *second_half()])
    await detect(handle, detection, last)
    projection = await project(settings, handle)
    live = rows(projection)
    projection.close()
    # outside JetStream's duplicate window the stream stores the same alerts again: only the
    # projection's alert_id check keeps them out of the table
    info = await handle.js.stream_info(STREAM)
    info.config.duplicate_window = 0.1
    await handle.js.update_stream(info.config)
    _, before = await stream_bounds(handle.nc)
    again = await detect(handle, detection, last, consumer="detector-again")
    assert Counter(again.stats.alerts) == EXPECTED_RULES
    _, after = await stream_bounds(handle.nc)
    assert after - before == sum(EXPECTED_RULES.values()) - again.stats.duplicates
    projection = await project(settings, handle)
    assert rows(projection) == live
    projection.close()


async def test_without_geoip_db_the_location_rules_say_why_and_stay_off(
    handle: NatsHandle, caplog: pytest.LogCaptureFixture
) -> None:
    config = DetectionConfig.from_env({})
    last = await publish(handle, [*first_half(), *second_half()])
    with caplog.at_level(logging.INFO, logger="ingestor.detection.detector"):
        detector = await detect(handle, config, last)
    lines = [r.getMessage() for r in caplog.records if "location rules" in r.getMessage()]
    assert lines == [
        "detection: the location rules (impossible_travel, simultaneous_locations, "
        "geo_restriction) are off: GEOIP_DB is not set; set GEOIP_DB to a MaxMind-format "
        "database (.mmdb) to turn them on"
    ]
    status = detector.status()
    assert status["location_rules"] == {
        "on": False,
        "why_not": "GEOIP_DB is not set",
        "geoip_db": None,
    }
    assert Counter(detector.stats.alerts) == Counter(
        {"concurrent_streams": 1, "device_velocity": 1, "user_agent_anomaly": 1}
    )
