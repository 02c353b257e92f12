"""Past one machine: the ingestor on a real three-node NATS cluster, nodes killed under load.

``NATS_REPLICAS=3`` keeps ``MEDIA_EVENTS`` on all three nodes. Killing the node that leads
the stream (``kill -9``) loses nothing: the other two elect a leader and the ingest goes on.
Killing a second one leaves no majority: nothing can be written, ``/readyz`` says so, and
once the nodes are back the ingestor catches up by itself, every event projected once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import nats
import pytest

from ingestor.archive import archive_segments
from ingestor.commands.demo import TRUTH_SQL
from ingestor.config import Settings
from ingestor.events import MediaEvent
from ingestor.nats.publisher import Publisher
from ingestor.nats.streams import DLQ_STREAM, STREAM, ensure_streams
from ingestor.projection import Projection
from ingestor.sources.simulator import SimulationConfig, simulate, truth_keys
from tests.cluster import nats_cluster
from tests.conftest import INGESTOR, make_env, subprocess_env, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _get(env: dict[str, str], path: str) -> tuple[int, dict] | None:
    url = f"http://127.0.0.1:{env['HTTP_PORT']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except OSError:
        return None


def _checkpoint(env: dict[str, str]) -> int:
    answer = _get(env, "/status")
    return -1 if answer is None else (answer[1]["checkpoint_seq"] or 0)


def _archived(env: dict[str, str]) -> int:
    """The last sequence the archiver sealed or holds (it seals what it holds at stop)."""
    answer = _get(env, "/status")
    if answer is None:
        return -1
    archive = answer[1]["archive"]
    return archive["last_sealed_seq"] + archive["buffered_messages"]


def _ready(env: dict[str, str]) -> bool | None:
    answer = _get(env, "/readyz")
    return None if answer is None else answer[0] == 200


async def _stream(url: str, name: str = STREAM):
    nc = await nats.connect(servers=url.split(","), connect_timeout=2)
    try:
        return await nc.jetstream(timeout=5).stream_info(name)
    finally:
        await nc.close()


class _Feed(threading.Thread):
    """Publishes the feed in parts, each once its gate opens, through the product's
    publisher; a part that fails (no stream leader yet) is published again, as a source's
    retry would (JetStream's ``Nats-Msg-Id`` window and the router's tier (a) drop the
    repeats)."""

    def __init__(self, url: str, parts: Sequence[Sequence[MediaEvent]]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.parts = parts
        self.gates = [threading.Event() for _ in parts]
        self.published = [threading.Event() for _ in parts]
        self.sent = 0
        self.failures = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _run(self) -> None:
        nc = await nats.connect(
            servers=self.url.split(","),
            connect_timeout=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
        )
        publisher = Publisher(nc, ack_timeout=2.0, max_attempts=2)
        try:
            for part, gate, published in zip(self.parts, self.gates, self.published, strict=True):
                await asyncio.to_thread(gate.wait)
                for lo in range(0, len(part), 100):
                    chunk = part[lo : lo + 100]
                    while True:
                        try:
                            await publisher.publish_many(chunk)
                            break
                        except Exception:
                            self.failures += 1
                            await asyncio.sleep(0.3)
                    self.sent += len(chunk)
                    await asyncio.sleep(0.02)  # a continuous feed, not one burst
                published.set()
        finally:
            await nc.close()


def test_the_stream_leader_killed_and_quorum_lost_under_load_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    sim = simulate(SimulationConfig(seed=33, users=40, days=4))
    events = list(sim.events)
    third = len(events) // 3
    parts = [events[:third], events[third : 2 * third], events[2 * third :]]
    with nats_cluster(tmp_path / "cluster") as cluster:
        env = make_env(
            tmp_path / "data",
            cluster.url,
            NATS_EMBEDDED="false",
            NATS_REPLICAS="3",
            NATS_BATCH_SIZE="200",
            NATS_FLUSH_INTERVAL="50ms",
        )

        async def one_replica() -> None:  # a stream made before NATS_REPLICAS was set
            nc = await nats.connect(servers=cluster.url.split(","))
            try:
                await ensure_streams(nc.jetstream(timeout=10), 7, 1)
            finally:
                await nc.close()

        asyncio.run(one_replica())
        assert asyncio.run(_stream(cluster.url)).config.num_replicas == 1

        log = tmp_path / "ingestor.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*INGESTOR, "run"], env=subprocess_env(env), stdout=out, stderr=subprocess.STDOUT
            )
        feed = _Feed(cluster.url, parts)
        try:
            wait_until(lambda: _ready(env) or proc.poll() is not None, 60, "ready")
            assert proc.poll() is None, log.read_text()[-3000:]
            # the existing streams were brought up to three replicas at start
            for name in (STREAM, DLQ_STREAM):
                info = asyncio.run(_stream(cluster.url, name))
                assert info.config.num_replicas == 3, name
                assert info.cluster is not None and len(info.cluster.replicas or []) == 2, name

            feed.start()
            feed.gates[0].set()
            wait_until(feed.published[0].is_set, 60, "the first part published")

            # kill -9 the stream's leader while the second part is being published
            feed.gates[1].set()
            wait_until(lambda: feed.sent > third + 200, 30, "the second part under way")
            info = asyncio.run(_stream(cluster.url))
            assert info.cluster is not None
            leader = info.cluster.leader
            assert leader is not None
            before = _checkpoint(env)
            cluster.kill(leader)
            wait_until(feed.published[1].is_set, 90, "the second part published on a new leader")
            new_leader = asyncio.run(_stream(cluster.url)).cluster.leader  # type: ignore[union-attr]
            assert new_leader not in (None, leader)
            wait_until(lambda: _checkpoint(env) > before, 60, "the ingest going on")

            # a second node gone: no majority, nothing can be written
            second = next(
                n.server_name for n in cluster.nodes if n.server_name not in (leader, new_leader)
            )
            survivor = new_leader
            cluster.kill(second)
            cluster.kill(survivor)  # type: ignore[arg-type]
            feed.gates[2].set()
            wait_until(lambda: _ready(env) is False, 60, "/readyz unready without a quorum")
            assert proc.poll() is None, log.read_text()[-3000:]

            for name in (leader, second, survivor):
                cluster.restart(name)  # type: ignore[arg-type]
            wait_until(lambda: _ready(env) is True, 90, "/readyz ready again")
            wait_until(feed.published[2].is_set, 120, "the last part published")
            last = asyncio.run(_stream(cluster.url)).state.last_seq
            wait_until(lambda: _checkpoint(env) == last, 120, f"the checkpoint to reach {last}")
            wait_until(lambda: _archived(env) == last, 120, f"the archiver to hold up to {last}")
        finally:
            for gate in feed.gates:
                gate.set()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            if feed.is_alive():
                feed.join(timeout=30)
        assert code == 0, log.read_text()[-3000:]
        assert feed.error is None, feed.error
        assert feed.failures > 0  # the outage was felt by the publisher, not skipped

    settings = Settings.from_env(env)
    # the archive has no hole either: its segments follow each other from sequence 1
    segments = archive_segments(settings.archive_dir)
    assert segments and segments[0].first_seq == 1
    for before, after in itertools.pairwise(segments):
        assert after.first_seq == before.last_seq + 1, (before, after)
    assert segments[-1].last_seq == last

    projection = Projection(settings.duckdb_path, read_only=True)
    try:
        assert set(projection.con.execute(TRUTH_SQL).fetchall()) == truth_keys(sim.truth)
        (distinct,) = projection.con.execute(
            "SELECT count(*) = count(DISTINCT event_id) FROM media_events"
        ).fetchall()
        assert distinct == (True,)
    finally:
        projection.close()


def test_an_exact_repeat_in_flight_is_a_duplicate_on_a_cluster_not_a_stall(
    tmp_path: Path,
) -> None:
    """A replicated stream answers a message id it is still copying with an error, not
    "duplicate"; the publisher waits for the first copy's ack and gets "duplicate"."""
    event = simulate(SimulationConfig(seed=5, users=2, days=1)).events[0]

    async def publish(url: str) -> list[str]:
        nc = await nats.connect(servers=url.split(","))
        try:
            await ensure_streams(nc.jetstream(timeout=10), 7, 3)
            publisher = Publisher(nc, ack_timeout=30.0, max_attempts=1)
            outcomes = []
            async for result in publisher.iter_publish([event, event, event]):
                outcomes.append(str(result.outcome))
            return outcomes
        finally:
            await nc.close()

    with nats_cluster(tmp_path / "cluster") as cluster:
        outcomes = asyncio.run(asyncio.wait_for(publish(cluster.url), 20))
    assert outcomes == ["stored", "duplicate", "duplicate"]


@pytest.mark.parametrize(
    ("replicas", "says"),
    [
        ("3", "NATS_REPLICAS=3 needs a NATS cluster"),  # the embedded server is one node
        ("2", "NATS_REPLICAS='2' is invalid: expected 1, 3 or 5"),
    ],
)
def test_replicas_one_server_cannot_hold_or_no_cluster_size_stop_with_one_line(
    tmp_path: Path, replicas: str, says: str
) -> None:
    env = make_env(tmp_path / "data", "nats://127.0.0.1:1", NATS_REPLICAS=replicas)
    done = subprocess.run(
        [*INGESTOR, "status"], env=subprocess_env(env), capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert says in done.stderr
    assert "Traceback" not in done.stderr
