"""A notebook queries the projection of an ingestor running in another process: consistent as
of the sequence it reports, while the ingestor keeps committing."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestor.config import Settings
from ingestor.nats.server import EmbeddedServer
from ingestor.simulation import SimulationConfig, simulate
from tests.conftest import free_port, make_env, subprocess_env, wait_until
from tests.integration.test_kill9 import publish_feed, start, status
from workbench import by_user, connect
from workbench.live import LiveProjection, QueryError

pytestmark = pytest.mark.integration

# every message at or below the checkpoint is either an accepted event or a dropped one
CONSISTENCY = """
SELECT
    (SELECT count(*) FROM media_events) AS accepted,
    (SELECT count(*) FROM dedupe_audit_log WHERE action = 'drop') AS dropped,
    (SELECT count(*) FROM range(150000000) t(i) WHERE i % 7 = 3) AS busy
"""


@contextlib.contextmanager
def caught_up_ingestor(
    tmp_path: Path, nats_server: EmbeddedServer, feed: SimulationConfig
) -> Iterator[dict[str, str]]:
    """``ingestor run`` in a process of its own, once it has projected ``feed``: its
    environment; stopped with SIGTERM after (it must exit 0)."""
    env = make_env(tmp_path / "data", nats_server.url, NATS_EMBEDDED="false")
    last = publish_feed(Settings.from_env(env), simulate(feed).events)
    proc = start(env, tmp_path / "run.log")
    try:
        wait_until(lambda: (s := status(env)) is not None and s["checkpoint_seq"] >= last, 60)
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_live_query_is_consistent_while_ingestion_goes_on(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    env = make_env(tmp_path / "data", nats_server.url, NATS_EMBEDDED="false")
    settings = Settings.from_env(env)
    sim = simulate(SimulationConfig(seed=31, users=80, days=30))

    last = publish_feed(settings, sim.events)
    proc = start(env, tmp_path / "run.log")
    live = LiveProjection(f"http://127.0.0.1:{env['HTTP_PORT']}")
    try:
        wait_until(lambda: (s := status(env)) is not None and s["checkpoint_seq"] > 0, 60)
        results = []
        query = threading.Thread(target=lambda: results.append(live.sql(CONSISTENCY)))
        query.start()
        seen = []
        while query.is_alive():
            if (s := status(env)) is not None:
                seen.append(s["checkpoint_seq"])
            query.join(0.05)
        (result,) = results
        row = result.frame.row(0, named=True)
        assert row["accepted"] + row["dropped"] == result.checkpoint_seq  # one snapshot
        assert result.checkpoint_seq < last, "ingestion finished before the query ran"
        assert max(seen) > result.checkpoint_seq  # the ingestor committed during the query

        with pytest.raises(QueryError, match="exactly one SELECT"):
            live.sql("DELETE FROM playback_events")
        with pytest.raises(QueryError, match="400"):
            live.sql("SELECT * FROM no_such_table")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_with_a_token_the_query_endpoint_wants_it(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    env = make_env(tmp_path / "data", nats_server.url, NATS_EMBEDDED="false", QUERY_TOKEN="t0k")
    proc = start(env, tmp_path / "run.log")
    url = f"http://127.0.0.1:{env['HTTP_PORT']}"
    try:
        wait_until(lambda: status(env) is not None, 60)
        with pytest.raises(QueryError, match="401"):
            LiveProjection(url).sql("SELECT 1")
        assert LiveProjection(url, token="t0k").sql("SELECT 42 AS x").frame["x"].to_list() == [42]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_the_workbench_reads_and_reviews_a_running_ingestor_live(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    with caught_up_ingestor(
        tmp_path, nats_server, SimulationConfig(seed=32, users=6, days=2)
    ) as env:
        settings = Settings.from_env(env)

        async def review() -> tuple[str, int, bool, bool]:
            url = f"http://127.0.0.1:{env['HTTP_PORT']}"
            async with await connect(settings.nats_url, http_url=url) as wb:
                snap = await wb.snapshot()
                with await wb.replay() as again:  # the log says the same as the live file
                    same = by_user(snap).equals(by_user(again))
                link = (await wb.audit(tier="correlation"))["audit_id"][0]
                receipt = await wb.restore(link, by="test")
                return wb.mode, receipt.seq, same, link

        mode, seq, same, link = asyncio.run(review())
        assert (mode, same) == ("live", True)
        wait_until(lambda: (s := status(env)) is not None and s["checkpoint_seq"] >= seq, 30)
        live = LiveProjection(f"http://127.0.0.1:{env['HTTP_PORT']}")
        restored = live.sql(f"SELECT status FROM dedupe_audit_log WHERE audit_id = '{link}'")
        assert restored.frame["status"].to_list() == ["user_restored"]


MODE_NOTEBOOK = """\
# %% tags=["parameters"]
data_dir = "data"
# %%
import os
from workbench import open_data_dir
wb = open_data_dir(data_dir, http_url=os.environ.get("WORKBENCH_HTTP_URL") or None)
print(f"read in {wb.mode} mode")
"""


def test_workbench_sql_and_report_ask_the_running_ingestor_that_holds_the_file(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    with caught_up_ingestor(
        tmp_path, nats_server, SimulationConfig(seed=33, users=3, days=1)
    ) as env:
        cli = [sys.executable, "-m", "workbench.cli"]
        query = "SELECT count(*) AS playbacks FROM playback_events"
        answered = subprocess.run(
            [*cli, "sql", query], env=subprocess_env(env), capture_output=True, text=True
        )
        assert answered.returncode == 0, answered.stderr
        assert str(status(env)["playbacks"]) in answered.stdout  # type: ignore[index]
        assert answered.stderr == ""  # the same answer as the file's: nothing to say

        elsewhere = {**env, "HTTP_PORT": str(free_port())}  # nobody answers there
        held = subprocess.run(
            [*cli, "sql", query], env=subprocess_env(elsewhere), capture_output=True, text=True
        )
        assert held.returncode == 1
        assert held.stderr.count("\n") == 1 and "held by another process" in held.stderr

        notebook = tmp_path / "mode.py"
        notebook.write_text(MODE_NOTEBOOK)
        report_env = {k: v for k, v in subprocess_env(env).items() if k[:10] != "WORKBENCH_"}
        rendered = subprocess.run(
            [*cli, "report", str(notebook), "-p", "data_dir", str(tmp_path / "data"),
             "--out", str(tmp_path / "out")],
            env=report_env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        assert "reading the running ingestor's projection at http://127.0.0.1:" in rendered.stderr
        assert "read in live mode" in (tmp_path / "out" / "mode.html").read_text()
