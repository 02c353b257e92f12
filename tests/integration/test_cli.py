"""The console script as a user runs it: demo, run, status, dlq, replay, simulate."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest

from ingestor.archive import archive_segments
from ingestor.config import Settings
from ingestor.nats.connection import open_nats
from ingestor.nats.server import EmbeddedServer, port_answers
from ingestor.simulation import read_truth
from tests.conftest import INGESTOR, free_port, make_env, subprocess_env, wait_until
from tests.integration.test_kill9 import start, status

pytestmark = pytest.mark.integration

SMALL = ["--users", "6", "--days", "2"]


def ingestor(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*INGESTOR, *args],
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_on_the_embedded_default_matches_the_truth_twice(tmp_path: Path) -> None:
    port = free_port()
    env = make_env(tmp_path / "data", f"nats://127.0.0.1:{port}")
    first = ingestor(env, "demo", *SMALL)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "OK: projected playbacks equal the ground truth" in first.stdout
    assert "starting embedded nats-server" in first.stderr
    second = ingestor(env, "demo", *SMALL)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "on the data an earlier run left" in second.stdout
    assert "OK: projected playbacks equal the ground truth" in second.stdout
    assert not port_answers("127.0.0.1", port)  # the embedded server stopped with the demo
    _, truth = read_truth(tmp_path / "data" / "demo-truth.json")
    (line,) = [line for line in first.stdout.splitlines() if "playbacks projected" in line]
    assert line.split()[-1] == f"{len(truth):,}"


@pytest.mark.parametrize(
    "mode",
    [{"NATS_EVENT_SOURCING": "false"}, {"NATS_ENABLED": "false"}],
    ids=["legacy", "nats-off"],
)
def test_demo_in_legacy_and_nats_off_modes_matches_the_truth(tmp_path: Path, mode: dict) -> None:
    env = make_env(tmp_path / "data", f"nats://127.0.0.1:{free_port()}", **mode)
    result = ingestor(env, "demo", *SMALL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: projected playbacks equal the ground truth" in result.stdout


def test_run_answers_status_and_stops_cleanly_on_sigterm(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    env = make_env(tmp_path / "data", nats_server.url, NATS_EMBEDDED="false")
    published = ingestor(env, "simulate", *SMALL)
    assert published.returncode == 0, published.stderr
    proc = start(env, tmp_path / "run.log")
    try:
        wait_until(lambda: (s := status(env)) and s["checkpoint_seq"] == s["stream_last_seq"], 60)
        live = json.loads(ingestor(env, "status", "--json").stdout)
        assert live["running"] is True and live["mode"] == "event-sourcing"
        for key in (
            "stream_last_seq",
            "checkpoint_seq",
            "consumer_pending",
            "dlq_messages",
            "playbacks",
        ):
            assert live[key] is not None, key
        assert live["consumer_pending"] == 0 and live["playbacks"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert "stopped cleanly at checkpoint" in (tmp_path / "run.log").read_text()
    # the archiver sealed everything it held on the way out
    segments = archive_segments(Path(env["DATA_DIR"]) / "archive")
    assert segments and segments[0].first_seq == 1
    assert segments[-1].last_seq == live["stream_last_seq"]
    assert live["archive"]["archive_dir"]
    offline = json.loads(ingestor(env, "status", "--json").stdout)
    assert offline["running"] is False
    assert offline["checkpoint_seq"] == live["checkpoint_seq"]
    assert offline["playbacks"] == live["playbacks"]
    text = ingestor(env, "status")
    assert "checkpoint_seq" in text.stdout and text.returncode == 0


def test_dlq_list_retry_and_purge(tmp_path: Path, nats_server: EmbeddedServer) -> None:
    env = make_env(tmp_path / "data", nats_server.url, NATS_EMBEDDED="false")
    settings = Settings.from_env(env)

    async def publish_garbage() -> None:
        handle = await open_nats(settings)
        try:
            await handle.js.publish("playback.plex.movie", b"not an event")
            await handle.js.publish("playback.plex.movie", b"[]")
        finally:
            await handle.close()

    asyncio.run(publish_garbage())
    proc = start(env, tmp_path / "run.log")
    try:
        wait_until(lambda: (s := status(env)) and s["dlq_messages"] == 2, 60, "dead letters")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    listed = [json.loads(line) for line in ingestor(env, "dlq", "list").stdout.splitlines()]
    assert [(d["original_sequence"], d["category"]) for d in listed] == [
        (1, "invalid_event"),
        (2, "invalid_event"),
    ]
    assert listed[0]["payload"] == "not an event"
    retried = ingestor(env, "dlq", "retry", "--seq", str(listed[0]["dlq_seq"]))
    assert "republished 1" in retried.stdout
    after = json.loads(ingestor(env, "status", "--json").stdout)
    assert after["dlq_messages"] == 1 and after["stream_last_seq"] == 3
    purged = ingestor(env, "dlq", "purge")
    assert "purged 1" in purged.stdout
    empty = ingestor(env, "dlq", "list")
    assert empty.stdout == "" and "empty" in empty.stderr


def test_replay_writes_a_new_file_and_refuses_to_overwrite(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    env = make_env(tmp_path / "data", nats_server.url, NATS_EMBEDDED="false")
    assert ingestor(env, "simulate", *SMALL).returncode == 0
    out = tmp_path / "replay.duckdb"
    result = ingestor(env, "replay", "--output", str(out), "--until", "2026-01-05T23:59:59Z")
    assert result.returncode == 0, result.stderr
    assert "playbacks" in result.stdout and out.exists()
    again = ingestor(env, "replay", "--output", str(out))
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    bad = ingestor(env, "replay", "--output", str(tmp_path / "x.duckdb"), "--until", "yesterday")
    assert bad.returncode == 2 and "not an ISO 8601 time" in bad.stderr


def test_simulate_writes_jsonl_and_truth_without_nats(tmp_path: Path) -> None:
    env = make_env(tmp_path / "data", "nats://127.0.0.1:9")
    out, truth = tmp_path / "feed.jsonl", tmp_path / "truth.json"
    result = ingestor(env, "simulate", *SMALL, "--out", str(out), "--truth", str(truth))
    assert result.returncode == 0, result.stderr
    expected, playbacks = read_truth(truth)
    assert len(out.read_text().splitlines()) == expected.published
    assert len(playbacks) == expected.playbacks > 0


def test_an_unreachable_external_nats_is_one_clear_line(tmp_path: Path) -> None:
    env = make_env(tmp_path / "data", f"nats://127.0.0.1:{free_port()}", NATS_EMBEDDED="false")
    result = ingestor(env, "dlq", "list")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("ingestor: no NATS server answers")
    assert "Traceback" not in result.stderr


def test_a_database_held_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    env = make_env(tmp_path / "data", f"nats://127.0.0.1:{port}")
    proc = start(env, tmp_path / "run.log")
    try:
        wait_until(lambda: status(env) is not None, 60, "ready")
        other = dict(env, HTTP_PORT=str(free_port()))
        result = ingestor(other, "demo", *SMALL)
        assert result.returncode == 1
        assert "in use by another process" in result.stderr and "Traceback" not in result.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_importing_a_tautulli_database_twice_adds_nothing(tmp_path: Path) -> None:
    from tests.fakes.tautulli import Play, TautulliDb

    db = TautulliDb(tmp_path / "tautulli.db")
    for hour in range(3):
        start = 1_767_643_200 + hour * 3600
        db.add(Play(start, start + 1800, paused_counter=60))
    db.close()
    env = make_env(tmp_path / "data", f"nats://127.0.0.1:{free_port()}", NATS_ENABLED="false")
    first = ingestor(env, "import", "tautulli-db", str(tmp_path / "tautulli.db"))
    assert first.returncode == 0, first.stderr
    assert "3 new events" in first.stdout
    again = ingestor(env, "import", "tautulli-db", str(tmp_path / "tautulli.db"))
    assert again.returncode == 0, again.stderr
    status = json.loads(ingestor(env, "status", "--json").stdout)
    assert status["playbacks"] == 3 and status["accepted"] == 3
    missing = ingestor(env, "import", "tautulli-db", str(tmp_path / "nope.db"))
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_importing_a_jellystat_backup_twice_adds_nothing_and_bad_input_is_one_line(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.fakes.history_sources import jellystat_activity, jellystat_backup

    ended = datetime(2026, 1, 5, 21, 0, tzinfo=UTC)
    rows = [
        jellystat_activity(
            f"0a1b2c3d-0000-4000-8000-{i:012d}",
            ended=ended + timedelta(hours=i),
            seconds=1800,
            item_id=f"{i:032x}",
        )
        for i in range(3)
    ]
    backup = jellystat_backup(tmp_path / "backup.json", rows)
    env = make_env(tmp_path / "data", f"nats://127.0.0.1:{free_port()}", NATS_ENABLED="false")
    first = ingestor(env, "import", "jellystat", str(backup))
    assert first.returncode == 0, first.stderr
    assert "3 new events" in first.stdout
    again = ingestor(env, "import", "jellystat", str(backup))
    assert again.returncode == 0 and "0 new events" in again.stdout, again.stdout
    status = json.loads(ingestor(env, "status", "--json").stdout)
    assert status["playbacks"] == 3 and status["accepted"] == 3
    (tmp_path / "broken.json").write_text("{not json")
    for bad in ("broken.json", "nope.json"):
        result = ingestor(env, "import", "jellystat", str(tmp_path / bad))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        said = [line for line in result.stderr.splitlines() if line.startswith("ingestor:")]
        assert len(said) == 1 and bad in said[0], result.stderr


def test_a_bad_tautulli_server_id_stops_the_start_with_one_line(tmp_path: Path) -> None:
    env = make_env(
        tmp_path / "data",
        f"nats://127.0.0.1:{free_port()}",
        TAUTULLI_URL="http://127.0.0.1:8181",
        TAUTULLI_API_KEY="k",
        TAUTULLI_SERVER_ID="not an id",
    )
    result = ingestor(env, "run", timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ingestor: TAUTULLI_SERVER_ID='not an id' is invalid: expected ")


def test_identity_merge_list_unmerge_and_bad_input_is_one_line(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    env = make_env(tmp_path / "data", nats_server.url, NATS_EMBEDDED="false")
    merged = ingestor(
        env, "identity", "merge", "--person", "Ana", "--account", "plex-1", "1",
        "--account", "jf:2", "e1:x", "--by", "admin",
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    assert "identity merge of Ana (jf:2/e1:x, plex-1/1)" in merged.stdout
    assert "as message 1" in merged.stdout
    nothing = ingestor(env, "identity", "list")
    assert nothing.returncode == 1 and nothing.stderr.startswith("ingestor: no projection at")

    def listed(name: str, *args: str) -> subprocess.CompletedProcess:
        out = tmp_path / f"{name}.duckdb"
        assert ingestor(env, "replay", "--output", str(out)).returncode == 0
        return ingestor(dict(env, DUCKDB_PATH=str(out)), "identity", "list", *args)

    shown = listed("merged")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "Ana\tjf:2\te1:x\tsince seq 1",
        "Ana\tplex-1\t1\tsince seq 1",
    ]
    rows = [json.loads(line) for line in listed("json", "--json").stdout.splitlines()]
    assert [(r["person"], r["server_id"], r["user_id"]) for r in rows] == [
        ("Ana", "jf:2", "e1:x"),
        ("Ana", "plex-1", "1"),
    ]
    unmerged = ingestor(env, "identity", "unmerge", "--person", "Ana")
    assert unmerged.returncode == 0 and "(all accounts)" in unmerged.stdout
    gone = listed("unmerged")
    assert gone.returncode == 0 and gone.stdout == ""
    assert "no accounts are merged" in gone.stderr

    for args, message in [
        (["merge", "--person", "Ana"], "needs at least one --account SERVER_ID USER_ID"),
        (["merge", "--person", "Ana", "--account", "plex-1", " "], "needs a server_id and a user"),
        (["merge", "--person", " ", "--account", "plex-1", "1"], "a person needs a name"),
    ]:
        bad = ingestor(env, "identity", *args)
        assert bad.returncode == 1, bad.stderr
        assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
        assert message in bad.stderr and "Traceback" not in bad.stderr
    half = ingestor(env, "identity", "merge", "--person", "Ana", "--account", "plex-1")
    assert half.returncode == 2 and "expected 2 arguments" in half.stderr
