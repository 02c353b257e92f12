"""Erasure benchmark: how long does forgetting a user take while the ingestor runs, and do
its readers notice?

On a fresh ``nats-server -js`` (free loopback port, store in a temporary directory) and a
fresh ``python -m ingestor.cli run`` (fresh ``DATA_DIR``, product defaults, detection off so
the log holds only the feed):

1. ``--events`` simulated events are published and projected (``/status`` polled until the
   checkpoint reaches the stream's end);
2. three readers start against the running ingestor, each in a loop: ``GET /status``,
   ``GET /readyz``, ``POST /query`` (a count over ``playback_events``);
3. ``python -m ingestor.cli erase --user ID`` (the real command, a child process) forgets
   the account with the most events; its wall time is **erase**;
4. ``/status`` is polled until the checkpoint passes the erasure record: from the end of
   ``erase`` to then is **applied** (the router's batch plus the online compaction of the
   DuckDB file, whose breakdown the ingestor logs);
5. with the ingestor still running, the DuckDB file and its WAL are searched for the
   account's id (**left in file**: must be no);
6. after the ingestor stopped, the **baseline**: a bare ``COPY FROM DATABASE`` of the same
   file into a new one under the product's memory limit, the copy the compaction is made
   of. The figure is compaction / baseline, from the same run.

The last lines printed are the figures. Exit status 0 when the measurement completed; 1
when something failed (the ingestor died, a reader got an error, the id is left in the
file).

Run from the project root: ``.venv/bin/python bench/erase.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import duckdb

# bench/ is the script's directory, so its siblings are importable: one set of helpers
from broadcast import make_events, provision, publish_events, status_until
from ingest import (
    BenchError,
    child_env,
    free_port,
    log,
    spawn,
    stop_child,
    tail,
    versions,
)

from ingestor.events import MediaEvent
from ingestor.nats.server import EmbeddedServer
from ingestor.projection import DUCKDB_MEMORY_LIMIT

READERS = 3
ERASE = [sys.executable, "-m", "ingestor.cli", "erase"]
COMPACTED = re.compile(
    r"after an erasure in (?P<total>[\d.]+) s \((?P<mb>[\d.]+) MB; copy (?P<copy>[\d.]+) s"
    r".*?(?P<wait>[\d.]+) s waiting for the reads in flight, swap (?P<swap>[\d.]+) s"
)


def running(proc: subprocess.Popen[bytes], what: str) -> bool:
    if proc.poll() is not None:
        raise BenchError(f"the ingestor exited while waiting for {what}")
    return True


class Readers:
    """``READERS`` clients reading the running ingestor in a loop; every answer recorded."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: collections.Counter[str] = collections.Counter()
        self.slowest = 0.0
        self.slowest_by_path: dict[str, float] = {}
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Readers:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        self._tasks = [asyncio.create_task(self._read()) for _ in range(READERS)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def _read(self) -> None:
        requests = [
            ("GET", "/status", None),
            ("GET", "/readyz", None),
            ("POST", "/query", "SELECT count(*) FROM playback_events"),
        ]
        while not self._stop.is_set():
            for method, path, body in requests:
                started = time.perf_counter()
                try:
                    async with self._session.request(method, self.base + path, data=body) as r:
                        text = (await r.read()).decode("utf-8", "replace")
                        self.answers[f"{path} {r.status}"] += 1
                        if r.status != 200:
                            why = _failed_checks(text) if path == "/readyz" else text[:200]
                            self.errors.append(f"{method} {path}: HTTP {r.status} {why}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
                took = time.perf_counter() - started
                self.slowest = max(self.slowest, took)
                self.slowest_by_path[path] = max(self.slowest_by_path.get(path, 0.0), took)


def _failed_checks(text: str) -> str:
    try:
        checks = json.loads(text)["checks"]
    except (ValueError, KeyError, TypeError):
        return text[:200]
    return "; ".join(
        f"{name}: {check.get('detail', check)}"
        for name, check in checks.items()
        if isinstance(check, dict) and check.get("ok") is False
    )


def bare_copy(path: Path, workdir: Path) -> float:
    """Seconds for ``COPY FROM DATABASE`` of ``path`` into a new file, product memory limit."""
    copy = workdir / "baseline.duckdb"
    con = duckdb.connect(str(path))
    try:
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        started = time.perf_counter()
        con.execute(f"ATTACH '{copy}' AS baseline")
        (name,) = con.execute("SELECT current_database()").fetchone() or ("",)
        con.execute(f'COPY FROM DATABASE "{name}" TO baseline')
        con.execute("DETACH baseline")
        return time.perf_counter() - started
    finally:
        con.close()


async def one_run(events: Sequence[MediaEvent], workdir: Path, timeout: float) -> dict[str, Any]:
    server = EmbeddedServer("127.0.0.1", free_port(), workdir / "nats")
    proc: subprocess.Popen[bytes] | None = None
    data = workdir / "ingestor"
    port = free_port()
    env = child_env(
        {
            "DATA_DIR": str(data),
            "NATS_URL": "",  # set below
            "NATS_EMBEDDED": "false",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(port),
            "LOG_LEVEL": "info",  # the compaction's breakdown is an info line
            "DETECTION_ENABLED": "false",
        }
    )
    try:
        await asyncio.to_thread(server.start)
        env["NATS_URL"] = server.url
        log(f"publishing {len(events):,} events")
        await provision(server.url)
        last = await publish_events(server.url, events)
        log_path = workdir / "ingestor.log"
        proc = spawn([sys.executable, "-m", "ingestor.cli", "run"], env, log_path)
        base = f"http://127.0.0.1:{port}"
        status_url = f"{base}/status"
        started = time.perf_counter()
        status = await status_until(
            status_url,
            lambda s: running(proc, "the feed") and (s.get("checkpoint_seq") or 0) >= last,
            timeout,
            "the projection of the feed",
        )
        projected = time.perf_counter() - started
        log(f"projected {last:,} messages in {projected:.1f} s")
        counts = collections.Counter((e.server_id, e.user_id) for e in events)
        (server_id, user_id), theirs = counts.most_common(1)[0]
        duckdb_path = data / "analytics.duckdb"
        size_before = duckdb_path.stat().st_size
        async with Readers(base) as readers:
            await asyncio.sleep(1.0)  # readers in full swing
            log(f"erasing user {user_id} ({theirs:,} events) while {READERS} readers read")
            started = time.perf_counter()
            erase = await asyncio.to_thread(
                subprocess.run,
                [*ERASE, "--user", user_id, "--server", server_id],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            erased = time.perf_counter()
            if erase.returncode != 0:
                raise BenchError(f"erase failed ({erase.returncode}):\n{erase.stderr[-2000:]}")
            match = re.search(r"stored as message (\d+)", erase.stdout)
            if match is None:
                raise BenchError(f"erase did not say where its record is:\n{erase.stdout}")
            record_seq = int(match.group(1))
            await status_until(
                status_url,
                lambda s: (
                    running(proc, "the record") and (s.get("checkpoint_seq") or 0) >= record_seq
                ),
                timeout,
                "the erasure record to be applied",
            )
            applied = time.perf_counter()
            await asyncio.sleep(1.0)  # readers after the swap too
        needle = user_id.encode()
        left = [
            p.name
            for p in (duckdb_path, duckdb_path.with_name(duckdb_path.name + ".wal"))
            if p.exists() and needle in p.read_bytes()
        ]
        logged = COMPACTED.search(log_path.read_text())
        if logged is None:
            raise BenchError(f"the ingestor logged no compaction:\n{tail(log_path)}")
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 60)
        baseline = await asyncio.to_thread(bare_copy, duckdb_path, workdir)
        return {
            "messages": last,
            "projected_s": projected,
            "file_mb_before": size_before / 1e6,
            "erased_events": theirs,
            "erase_s": erased - started,
            "applied_s": applied - erased,
            "compaction": {k: float(v) for k, v in logged.groupdict().items()},
            "baseline_copy_s": baseline,
            "readers": dict(readers.answers),
            "reader_errors": readers.errors[:20],
            "slowest_read_s": readers.slowest,
            "slowest_by_path_s": readers.slowest_by_path,
            "left_in_file": left,
            "checkpoint_before": status.get("checkpoint_seq"),
        }
    finally:
        stop_child(proc)
        await asyncio.to_thread(server.stop)


def report(run: dict[str, Any], env: dict[str, str]) -> list[str]:
    c = run["compaction"]
    answers = sum(run["readers"].values())
    ratio = c["total"] / run["baseline_copy_s"] if run["baseline_copy_s"] > 0 else float("nan")
    return [
        f"machine: {env['cores']} cores, {env['cpu']}; duckdb {env['duckdb']}, "
        f"{env['nats-server']}",
        f"log: {run['messages']:,} messages, projected in {run['projected_s']:.1f} s; "
        f"DuckDB file {run['file_mb_before']:.1f} MB",
        f"erase (the command, {run['erased_events']:,} events of one account): "
        f"{run['erase_s']:.2f} s",
        f"applied by the running ingestor: {run['applied_s']:.2f} s after erase returned",
        f"compaction: {c['total']:.2f} s (copy {c['copy']:.2f} s while readers read, "
        f"{c['wait']:.3f} s waiting for reads in flight, swap {c['swap']:.3f} s), "
        f"file {c['mb']:.1f} MB",
        f"baseline (bare COPY FROM DATABASE of the same file): {run['baseline_copy_s']:.2f} s; "
        f"compaction / baseline = {ratio:.2f}",
        f"readers: {answers:,} answers, {len(run['reader_errors'])} errors, slowest "
        f"{run['slowest_read_s']:.3f} s ("
        + ", ".join(f"{p} {t:.3f}" for p, t in run["slowest_by_path_s"].items())
        + ")",
        *(f"  reader error: {error}" for error in run["reader_errors"][:5]),
        f"user id left in the DuckDB file while running: "
        f"{'yes: ' + ', '.join(run['left_in_file']) if run['left_in_file'] else 'no'}",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Forget one user while the ingestor runs: erase, apply, compact (issue 12)."
    )
    parser.add_argument("--events", type=int, default=150_000, help="events (default 150000)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per wait")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    env = versions()
    workdir = Path(tempfile.mkdtemp(prefix="bench-erase-"))
    try:
        log(f"generating {args.events:,} simulated events")
        events = make_events(args.events)
        result = await one_run(events, workdir, args.timeout)
    except BenchError as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for line in report(result, env):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps({"env": env, **result}, indent=2))
    return 1 if result["reader_errors"] or result["left_in_file"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
