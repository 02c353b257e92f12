"""``/healthz``, ``/readyz`` and ``/metrics`` of a real ``ingestor run`` process, against a real
nats-server that the tests stop and start again, and real DuckDB files."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client.parser import text_string_to_metric_families

from ingestor.config import Settings
from ingestor.metrics import Monitor, ProjectionProbe
from ingestor.nats.connection import open_nats
from ingestor.nats.publisher import Publisher
from ingestor.nats.server import EmbeddedServer
from ingestor.projection import PROJECTOR, Projection
from ingestor.simulation import SimulationConfig, simulate
from tests.conftest import make_env, wait_until
from tests.fakes.plex import multipart_body, webhook_payload
from tests.integration.test_kill9 import start, status

pytestmark = pytest.mark.integration


def get(env: dict[str, str], path: str) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{env['HTTP_PORT']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def readyz(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    code, body = get(env, "/readyz")
    return code, json.loads(body)


def metrics(env: dict[str, str]) -> dict[str, dict[tuple, float]]:
    """``/metrics`` parsed by prometheus_client's own parser: {sample name: {labels: value}}."""
    code, body = get(env, "/metrics")
    assert code == 200
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def outcome(samples: dict[str, dict[tuple, float]], name: str) -> float:
    return samples["mediaevents_events_total"][(("outcome", name),)]


def stop(proc, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]


def test_readyz_turns_unready_when_nats_stops_and_ready_again_when_it_returns(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    env = make_env(tmp_path / "data", nats_server.url, NATS_EMBEDDED="false")
    log = tmp_path / "run.log"
    proc = start(env, log)
    try:
        wait_until(lambda: status(env) is not None, 60, "the ingestor")
        wait_until(lambda: readyz(env)[0] == 200, 30, "ready")
        _, body = readyz(env)
        assert body["ready"] is True and body["failing"] == []
        checks = body["checks"]
        assert set(checks) == {
            "nats_connected",
            "stream_reachable",
            "projection_writable",
            "consumer_lag",
        }
        assert all(check["ok"] is True for check in checks.values())

        nats_server.stop()
        wait_until(lambda: readyz(env)[0] == 503, 30, "unready without NATS")
        _, body = readyz(env)
        assert body["ready"] is False
        assert {"nats_connected", "stream_reachable", "consumer_lag"} <= set(body["failing"])
        assert body["checks"]["projection_writable"]["ok"] is True
        assert get(env, "/healthz")[0] == 200  # the process is up: only readiness changed
        assert metrics(env)["mediaevents_nats_connected"][()] == 0

        nats_server.start()
        wait_until(lambda: readyz(env)[0] == 200, 60, "ready again once NATS is back")
        # and it does its job again: what is published now is projected
        sim = simulate(SimulationConfig(seed=4, users=3, days=1))
        last = asyncio.run(_publish(env, sim.events))
        wait_until(lambda: status(env)["checkpoint_seq"] == last, 60, "the checkpoint")
    finally:
        stop(proc, log)


async def _publish(env: dict[str, str], events: list, garbage: int = 0) -> int:
    handle = await open_nats(Settings.from_env(env))
    try:
        await Publisher(handle.nc).publish_many(events)
        for i in range(garbage):
            await handle.js.publish("playback.plex.movie", f"not an event {i}".encode())
        return (await handle.js.stream_info("MEDIA_EVENTS")).state.last_seq
    finally:
        await handle.close()


def test_metrics_parse_and_the_counters_equal_the_projections_counts(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    env = make_env(
        tmp_path / "data", nats_server.url, NATS_EMBEDDED="false", DETECTION_ENABLED="true"
    )
    log = tmp_path / "run.log"
    sim = simulate(SimulationConfig(seed=9, users=8, days=3))
    proc = start(env, log)
    try:
        wait_until(lambda: status(env) is not None, 60, "the ingestor")
        published = asyncio.run(_publish(env, sim.events, garbage=2))
        # the detector may add alerts to the stream after the feed: wait for those too
        wait_until(
            lambda: (
                (s := status(env))["checkpoint_seq"] == s["stream_last_seq"] >= published
                and s["detection"]["last_seq"] >= published
            ),
            60,
            "the checkpoint",
        )
        wait_until(lambda: status(env)["dlq_messages"] == 2, 30, "the dead letters")
        last = status(env)["stream_last_seq"]
        samples = metrics(env)
        router = status(env)["router"]
    finally:
        stop(proc, log)
    projection = Projection(Settings.from_env(env).duckdb_path, read_only=True)
    try:
        counts = projection.counts()
        (alerts,) = projection.con.execute("SELECT count(*) FROM detection_alerts").fetchone()
    finally:
        projection.close()
    assert counts["accepted"] > 0 and counts["linked"] > 0 and counts["dropped_session_key"] > 0
    assert outcome(samples, "projected") == counts["accepted"]
    assert outcome(samples, "linked") == counts["linked"]
    assert outcome(samples, "dropped_event_id") == counts["dropped_event_id"]
    assert outcome(samples, "dropped_session_key") == counts["dropped_session_key"]
    assert outcome(samples, "dead_lettered") == 2
    assert samples["mediaevents_dlq_messages"][()] == 2
    assert samples["mediaevents_consumer_lag"][()] == 0
    assert samples["mediaevents_stream_last_seq"][()] == last
    assert samples["mediaevents_checkpoint_seq"][()] == last
    # one flush and one batch-size observation per committed batch; every decided event counted
    assert samples["mediaevents_flush_seconds_count"][()] == router["batches"]
    assert samples["mediaevents_batch_size_count"][()] == router["batches"]
    decided = counts["accepted"] + counts["dropped_event_id"] + counts["dropped_session_key"]
    assert samples["mediaevents_batch_size_sum"][()] == decided + alerts
    assert samples["mediaevents_flush_seconds_sum"][()] > 0
    assert samples["mediaevents_broadcast_clients"][()] == 0


def test_nats_off_mode_is_ready_without_nats_and_counts_webhook_events(tmp_path: Path) -> None:
    """No NATS at all: its checks say "not used"; the sources' batches still reach the
    metrics (through the direct sink), and the Plex webhook's last success is exported."""
    env = make_env(
        tmp_path / "data",
        "nats://127.0.0.1:1",
        NATS_ENABLED="false",
        PLEX_WEBHOOK_ENABLED="true",
    )
    log = tmp_path / "run.log"
    proc = start(env, log)
    before = time.time()
    try:
        wait_until(lambda: status(env) is not None, 60, "the ingestor")
        code, body = readyz(env)
        assert code == 200, body
        checks = body["checks"]
        assert checks["nats_connected"]["ok"] is None
        assert "not used" in checks["nats_connected"]["detail"]
        assert checks["consumer_lag"]["ok"] is None
        assert checks["projection_writable"]["ok"] is True
        asyncio.run(_send_webhooks(env, ["media.play", "media.pause", "media.resume"]))
        samples = metrics(env)
    finally:
        stop(proc, log)
    projection = Projection(Settings.from_env(env).duckdb_path, read_only=True)
    try:
        counts = projection.counts()
    finally:
        projection.close()
    assert counts["accepted"] == 3
    assert outcome(samples, "projected") == 3
    assert "mediaevents_consumer_lag" not in samples and "mediaevents_nats_connected" not in samples
    (stamp,) = samples["mediaevents_source_last_success_timestamp_seconds"].values()
    assert before <= stamp <= time.time()
    (published,) = samples["mediaevents_source_events_published_total"].items()
    assert published == ((("kind", "plex_webhook"), ("source", "plex-webhook")), 3)


async def _send_webhooks(env: dict[str, str], kinds: list[str]) -> None:
    url = f"http://127.0.0.1:{env['HTTP_PORT']}/webhooks/plex"
    async with aiohttp.ClientSession() as http:
        for i, kind in enumerate(kinds):
            body, content_type = multipart_body(webhook_payload(kind, view_offset=i * 60_000))
            async with http.post(url, data=body, headers={"Content-Type": content_type}) as r:
                assert r.status == 200, await r.text()


async def test_readiness_fails_when_the_consumer_lags_more_than_allowed(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    """The lag check against a real durable consumer that nothing reads: 12 pending."""
    settings = Settings.from_env(make_env(tmp_path / "data", nats_server.url))
    sim = simulate(SimulationConfig(seed=2, users=1, days=1))
    handle = await open_nats(settings)
    projection = Projection(tmp_path / "lag.duckdb")
    try:
        await handle.js.add_consumer(
            "MEDIA_EVENTS", ConsumerConfig(durable_name=PROJECTOR, ack_policy=AckPolicy.ALL)
        )
        await Publisher(handle.nc).publish_many(sim.events[:12])
        probe = ProjectionProbe(projection)
        await asyncio.to_thread(probe.prepare)

        def monitor(max_lag: int) -> Monitor:
            return Monitor(
                mode="event-sourcing",
                handle=handle,
                consumer=PROJECTOR,
                probe=probe,
                max_lag=max_lag,
            )

        lagging = await monitor(11).readiness()
        assert not lagging.ready and lagging.failing == ["consumer_lag"]
        assert lagging.checks["consumer_lag"].detail == "12 messages behind (READY_MAX_LAG 11)"
        assert (await monitor(12).readiness()).ready
    finally:
        projection.close()
        await handle.close()


async def test_an_unwritable_projection_is_reported_not_ready(tmp_path: Path) -> None:
    path = tmp_path / "probe.duckdb"
    writable = Projection(path)
    await asyncio.to_thread(ProjectionProbe(writable).prepare)
    assert (await ProjectionProbe(writable).check()).ok is True
    writable.close()
    read_only = Projection(path, read_only=True)
    try:
        check = await ProjectionProbe(read_only).check()
    finally:
        read_only.close()
    assert check.ok is False and "failed" in check.detail
