"""Invariant 1: kill -9 at any moment, restart: nothing lost, nothing doubled, and no orphan
nats-server blocks the restart."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

from ingestor.commands.replay import replay_command
from ingestor.config import Settings
from ingestor.events import MediaEvent
from ingestor.nats.connection import open_nats
from ingestor.nats.publisher import Publisher
from ingestor.nats.server import EmbeddedServer, port_answers
from ingestor.projection import Projection
from ingestor.simulation import TRUTH_SQL, SimulationConfig, simulate, truth_keys
from tests.conftest import INGESTOR, free_port, make_env, subprocess_env, wait_until
from tests.integration.test_router import COMPARED

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def status(env: dict[str, str]) -> dict | None:
    url = f"http://127.0.0.1:{env['HTTP_PORT']}/status"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)
    except OSError:
        return None


def start(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*INGESTOR, "run"], env=subprocess_env(env), stdout=out, stderr=subprocess.STDOUT
        )


def publish_feed(settings: Settings, events: Sequence[MediaEvent]) -> int:
    """Publish ``events`` to the stream ``settings`` name; the stream's last sequence."""

    async def publish() -> int:
        handle = await open_nats(settings)
        try:
            await Publisher(handle.nc).publish_many(events)
            return (await handle.js.stream_info("MEDIA_EVENTS")).state.last_seq
        finally:
            await handle.close()

    return asyncio.run(publish())


def checkpoint_of(path: Path) -> int:
    projection = Projection(path, read_only=True)
    try:
        return projection.checkpoint()
    finally:
        projection.close()


def test_kill_9_at_random_points_loses_nothing_and_doubles_nothing(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    sim = simulate(SimulationConfig(seed=21, users=120, days=10))
    env = make_env(
        tmp_path / "data",
        nats_server.url,
        NATS_EMBEDDED="false",
        NATS_BATCH_SIZE="100",
        NATS_FLUSH_INTERVAL="20ms",
    )
    settings = Settings.from_env(env)

    last = publish_feed(settings, sim.events)
    rng = random.Random(20261127)
    log = tmp_path / "ingestor.log"
    checkpoints = []
    for _ in range(12):
        proc = start(env, log)
        try:
            wait_until(lambda p=proc: status(env) is not None or p.poll() is not None, 60, "ready")
            assert proc.poll() is None, log.read_text()[-3000:]
            # let it ingest up to a random point of the next twelfth of the feed (whatever
            # its speed), then kill it mid-flight, a random moment later
            target = int(last * (len(checkpoints) + rng.random()) / 13)
            wait_until(
                lambda p=proc, t=target: (
                    (s := status(env)) is None
                    or (s["checkpoint_seq"] or 0) >= t
                    or p.poll() is not None
                ),
                60,
                f"the checkpoint to pass {target}",
            )
            try:
                proc.wait(timeout=rng.uniform(0.0, 0.05))
            except subprocess.TimeoutExpired:
                pass
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        checkpoints.append(checkpoint_of(settings.duckdb_path))
    mid_ingest = [c for c in checkpoints if 0 < c < last]
    assert len(mid_ingest) >= 10, f"kills did not land mid-ingest: {checkpoints} of {last}"
    assert checkpoints == sorted(checkpoints)

    proc = start(env, log)
    try:
        wait_until(
            lambda: (s := status(env)) is not None and s["checkpoint_seq"] == last, 180, "catch-up"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]

    live = Projection(settings.duckdb_path, read_only=True)
    assert set(live.con.execute(TRUTH_SQL).fetchall()) == truth_keys(sim.truth)
    (distinct,) = live.con.execute(
        "SELECT count(*) = count(DISTINCT event_id) FROM media_events"
    ).fetchall()
    assert distinct == (True,)
    asyncio.run(replay_command(settings, tmp_path / "replay.duckdb", out=lambda _: None))
    replayed = Projection(tmp_path / "replay.duckdb", read_only=True)
    for name, sql in COMPARED.items():
        assert replayed.con.execute(sql).fetchall() == live.con.execute(sql).fetchall(), name
    live.close()
    replayed.close()


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_killed_ingestor_takes_its_embedded_server_along_and_restarts(tmp_path: Path) -> None:
    port = free_port()
    env = make_env(tmp_path / "data", f"nats://127.0.0.1:{port}")
    log = tmp_path / "ingestor.log"
    pid_file = Path(env["DATA_DIR"]) / "nats" / "jetstream" / "nats-server.pid"
    proc = start(env, log)
    try:
        wait_until(lambda: status(env) is not None, 60, "ready")
        server_pid = int(pid_file.read_text())
        assert _pid_alive(server_pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_until(lambda: not _pid_alive(server_pid), 10, "the embedded nats-server to die")
    wait_until(lambda: not port_answers("127.0.0.1", port), 10, "the port to be released")

    proc = start(env, log)
    try:
        wait_until(lambda: status(env) is not None, 60, "ready after restart")
        assert status(env)["stream_last_seq"] is not None
    finally:
        restarted_pid = int(pid_file.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert not _pid_alive(restarted_pid)  # a clean stop stops the server it started


def test_a_server_that_still_answers_is_adopted_not_duplicated(tmp_path: Path) -> None:
    port = free_port()
    env = make_env(tmp_path / "data", f"nats://127.0.0.1:{port}")
    leftover = EmbeddedServer("127.0.0.1", port, Path(env["DATA_DIR"]) / "nats" / "jetstream")
    leftover.start()
    log = tmp_path / "ingestor.log"
    try:
        proc = start(env, log)
        try:
            wait_until(lambda: status(env) is not None, 60, "ready")
            assert "starting embedded nats-server" not in log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        assert leftover.process is not None and leftover.process.poll() is None
    finally:
        leftover.stop()
