"""Binder's launch, done the way Binder does it: ``binder/postBuild`` prepares the demo data,
``binder/start`` runs with the notebook server's command after it, hands over to that
command at once, and the notebooks then run against the live ingestor it started.

The command after ``start`` is a small Python session (:data:`SESSION`) standing in for
JupyterLab: it says it has started, then runs notebooks with papermill when asked, in the
environment ``start`` handed it (as a Jupyter server's kernels would).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path
from typing import IO, Any

import nbformat
import pytest

from tests.conftest import free_port, subprocess_env, wait_until
from tests.integration.test_kill9 import checkpoint_of, status

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"
NOTEBOOKS = ROOT / "notebooks"
DEMO_LAST_DAY = date(2026, 1, 11)  # postBuild simulates 2026-01-05 .. 2026-01-11
# what a user would pass: other zones, filters, one user (the defaults run in make test)
PARAMETERS: dict[str, dict[str, str]] = {
    "overview": {"tz": "America/New_York", "start": "2026-01-07"},
    "time_travel": {"tz": "Europe/Berlin", "instant": "2026-01-10T20:30:00+01:00"},
    "dedup_audit": {"tz": "Europe/Berlin", "tier": "correlation"},
    "year_in_review": {"tz": "Asia/Tokyo", "user": "bruno"},
}

SESSION = """\
import json, os, subprocess, sys
seen = {k: v for k, v in sorted(os.environ.items()) if k.startswith("WORKBENCH_")}
print("handed over " + json.dumps(seen), flush=True)
for line in sys.stdin:  # one JSON list of notebook runs per line
    runs = [
        (job, subprocess.Popen(
            [sys.executable, "-m", "papermill", job["notebook"], job["output"],
             "--kernel", "python3", "--cwd", job["cwd"], "--no-progress-bar",
             *[arg for name, value in job["parameters"].items()
               for arg in ("-p", name, str(value))]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for job in json.loads(line)
    ]
    results = [
        {"notebook": job["notebook"], "returncode": run.wait(), "log": run.stdout.read()[-4000:]}
        for job, run in runs
    ]
    print(json.dumps(results), flush=True)
"""


class Lines:
    """The lines a process writes, read by a thread so a test can wait for the next one
    with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self, timeout: float, what: str) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
        if line is None:
            raise AssertionError(f"the process ended before {what}")
        return line


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_group(pgid: int) -> None:
    """SIGTERM the whole process group, SIGKILL what is left after a while, and wait until
    none of it remains."""
    for sig, patience in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            wait_until(lambda: not group_members(pgid), patience, "the process group to end")
            return
        except AssertionError:
            if sig == signal.SIGKILL:
                raise


def binder_env(tmp_path: Path) -> dict[str, str]:
    """The environment Binder would give: a home of its own, the project's scripts on PATH,
    free ports (which start honours) and a data directory of this test's own."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = str(Path(sys.executable).parent)
    env = subprocess_env(
        {
            "HOME": str(home),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHON": sys.executable,
            "DATA_DIR": str(tmp_path / "data"),
            "NATS_URL": f"nats://127.0.0.1:{free_port()}",
            "HTTP_PORT": str(free_port()),
            "NATS_FLUSH_INTERVAL": "100ms",
        }
    )
    for name in list(env):
        if name.startswith("WORKBENCH_") or name in ("ARCHIVE_DIR", "JUPYTER_PATH"):
            del env[name]
    return env


def outputs_text(path: Path) -> str:
    """Everything an executed notebook printed."""
    notebook = nbformat.read(path, as_version=4)
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def test_start_hands_over_at_once_and_the_notebooks_run_on_the_live_ingestor(
    tmp_path: Path,
) -> None:
    env = binder_env(tmp_path)
    data_dir = Path(env["DATA_DIR"])
    built = subprocess.run(
        [str(BINDER / "postBuild")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "OK: projected playbacks equal the ground truth" in built.stdout
    demo_seq = checkpoint_of(data_dir / "analytics.duckdb")
    assert demo_seq > 0

    session = tmp_path / "session.py"
    session.write_text(SESSION)
    proc = subprocess.Popen(
        [str(BINDER / "start"), sys.executable, str(session)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # start's background jobs share this group: one kill stops all
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        lines = Lines(proc.stdout)
        first = lines.next(10, "the command after start to run")
        # handed over before the feed was published: start does not wait for it
        feed_log = data_dir / "logs" / "simulate.log"
        assert "published" not in (feed_log.read_text() if feed_log.exists() else "")
        assert first.startswith("handed over "), first
        seen = json.loads(first.removeprefix("handed over "))
        assert seen == {
            "WORKBENCH_DATA_DIR": str(data_dir),
            "WORKBENCH_HTTP_URL": f"http://127.0.0.1:{env['HTTP_PORT']}",
            "WORKBENCH_NATS_URL": env["NATS_URL"],
        }

        # the ingestor runs and projects the live feed start started in the background
        def fed() -> bool:
            now = status(env)
            return bool(
                now
                and now["stream_last_seq"] > demo_seq
                and now["checkpoint_seq"] == now["stream_last_seq"]
                and "published" in feed_log.read_text()
            )

        wait_until(fed, 120, "the live feed to be projected")

        runs: list[dict[str, Any]] = [
            {
                "notebook": str(path),
                "output": str(tmp_path / path.name),
                "cwd": str(NOTEBOOKS),
                "parameters": PARAMETERS.get(path.stem, {}),
            }
            for path in sorted(NOTEBOOKS.glob("*.ipynb"))
        ]
        assert {Path(run["notebook"]).stem for run in runs} >= {
            "overview",
            "time_travel",
            "dedup_audit",
            "year_in_review",
        }
        proc.stdin.write(json.dumps(runs) + "\n")
        proc.stdin.flush()
        results = json.loads(lines.next(300, "the notebooks to run"))
        for result in results:
            assert result["returncode"] == 0, result["log"]

        printed = {Path(run["notebook"]).stem: outputs_text(Path(run["output"])) for run in runs}
        for name, text in printed.items():
            assert "read in live mode" in text, (name, text[:500])
        overview = printed["overview"].splitlines()
        period = next(line for line in overview if line.startswith("Period"))
        last_day = date.fromisoformat(period.split(" to ")[1].split()[1])
        assert last_day > DEMO_LAST_DAY, period  # the live feed is in the figures
        assert "Verdict: every injected repeat caught" in printed["dedup_audit"]
        assert "2026 in review: user bruno" in printed["year_in_review"]
    finally:
        proc.stdin.close()
        stop_group(proc.pid)
        proc.wait(timeout=10)
    assert not group_members(proc.pid)
    assert "ingestor running" in (data_dir / "logs" / "ingestor.log").read_text()
