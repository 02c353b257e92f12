"""The container's entrypoint, run as the plain process it is (CI has no container engine).

The command, its environment and the health check are read from the Dockerfile itself, so
the image and this test cannot drift apart; only the ports and ``DATA_DIR`` are moved (a
free loopback port each, a temporary directory instead of the ``/data`` volume).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ingestor.archive import archive_segments
from ingestor.commands.replay import replay_command
from ingestor.config import Settings
from ingestor.nats.server import port_answers
from ingestor.projection import Projection
from ingestor.simulation import TRUTH_SQL, read_truth, truth_keys
from tests.conftest import free_port, subprocess_env, wait_until
from tests.integration.test_kill9 import status
from tests.integration.test_router import COMPARED

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def image_command() -> tuple[list[str], dict[str, str], str]:
    """What the image runs: ENTRYPOINT + CMD, the ENV it sets, and its HEALTHCHECK command."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    env: dict[str, str] = {}
    healthcheck = ""
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":  # a later stage starts afresh
            entrypoint, cmd, env, healthcheck = [], [], {}, ""
        elif keyword == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
        elif keyword == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif keyword == "CMD":
            cmd = json.loads(rest)
        elif keyword == "HEALTHCHECK":
            healthcheck = rest.split(" CMD ", 1)[1]
    return entrypoint + cmd, env, healthcheck


def test_the_image_runs_the_documented_command_with_its_data_under_data() -> None:
    command, env, healthcheck = image_command()
    assert command == ["ingestor", "run"]
    assert env["DATA_DIR"] == "/data" and env["HTTP_HOST"] == "0.0.0.0"
    assert "/readyz" in healthcheck
    settings = Settings.from_env(env)  # everything it keeps lands in the volume
    for path in (settings.nats_store_dir, settings.duckdb_path, settings.archive_dir):
        assert path.is_relative_to("/data"), path
    instructions = dockerfile_instructions()
    assert ("VOLUME", "/data") in instructions and ("EXPOSE", "3857") in instructions
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert instructions[0] == ("FROM", "python:3.11-slim")


def test_compose_has_an_embedded_and_an_external_nats_profile() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    by_profile: dict[str, list[str]] = {}
    for name, service in services.items():
        for profile in service.get("profiles", []):
            by_profile.setdefault(profile, []).append(name)
    assert sorted(by_profile) == ["embedded", "external"]
    (embedded,) = by_profile["embedded"]
    assert services[embedded].get("environment", {}).get("NATS_EMBEDDED", "true") != "false"
    external = [n for n in by_profile["external"] if services[n].get("build")]
    (nats,) = [n for n in by_profile["external"] if not services[n].get("build")]
    assert services[nats]["image"].startswith("nats:2") and "-js" in services[nats]["command"]
    (ingestor,) = external
    environment = services[ingestor]["environment"]
    assert environment["NATS_EMBEDDED"] == "false"
    assert environment["NATS_URL"] == f"nats://{nats}:4222"
    for name in (embedded, ingestor):
        assert any(v.endswith(":/data") for v in services[name]["volumes"])


def test_the_entrypoint_ingests_the_demo_feed_and_stops_on_sigterm_losing_nothing(
    tmp_path: Path,
) -> None:
    command, image_env, healthcheck = image_command()
    env = {
        **image_env,
        "DATA_DIR": str(tmp_path / "data"),  # the volume
        "HTTP_PORT": str(free_port()),
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",  # the embedded server, on a free port
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",  # `ingestor` and `python` as installed
    }
    log = tmp_path / "entrypoint.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, env=subprocess_env(env), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # the image's own HEALTHCHECK command says when it is ready
        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            check = subprocess.run(
                healthcheck, shell=True, env=subprocess_env(env), capture_output=True
            )
            return check.returncode == 0

        wait_until(healthy, 60, "the image's health check to pass")
        truth_path = tmp_path / "truth.json"
        fed = subprocess.run(
            ["ingestor", "simulate", "--truth", str(truth_path)],  # the demo's feed
            env=subprocess_env(env),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert fed.returncode == 0, fed.stderr
        assert "starting embedded nats-server" not in fed.stderr  # it used the ingestor's
        wait_until(
            lambda: (
                (s := status(env)) is not None
                and s["stream_last_seq"]
                and s["checkpoint_seq"] == s["stream_last_seq"]
            ),
            120,
            "the checkpoint to reach the stream's last sequence",
        )
        last = status(env)["stream_last_seq"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert f"stopped cleanly at checkpoint {last}" in text
    host, port = Settings.from_env(env).embedded_listen()
    assert not port_answers(host, port)  # its embedded nats-server stopped with it

    settings = Settings.from_env(env)
    live = Projection(settings.duckdb_path, read_only=True)
    try:
        _, truth = read_truth(truth_path)
        assert set(live.con.execute(TRUTH_SQL).fetchall()) == truth_keys(truth)
        assert live.checkpoint() == last
        # everything the stream holds, also rebuilt from the stream alone, gives the same rows
        asyncio.run(replay_command(settings, tmp_path / "replay.duckdb", out=lambda _: None))
        replayed = Projection(tmp_path / "replay.duckdb", read_only=True)
        try:
            for name, sql in COMPARED.items():
                rows = replayed.con.execute(sql).fetchall()
                assert rows == live.con.execute(sql).fetchall(), name
        finally:
            replayed.close()
    finally:
        live.close()
    segments = archive_segments(settings.archive_dir)  # the archiver sealed all it held
    assert segments and segments[0].first_seq == 1 and segments[-1].last_seq == last
