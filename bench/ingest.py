"""End-to-end ingest benchmark: how fast does ``ingestor run`` drain ``MEDIA_EVENTS``?

What is measured, in one run:

1. **publish**: a real ``nats-server -js`` starts on a free loopback port with its store in a
   temporary directory, and ``python -m ingestor.cli simulate`` (a separate process, so the
   publisher's memory is not in the measured process) publishes about ``--events`` simulated
   events to it. The publish rate is the number of stored messages divided by the time between
   the first and the last message's JetStream timestamps (so generating the events, which
   the simulator does before it publishes, is not counted).
2. **ingest**: ``python -m ingestor.cli run`` (a separate process, fresh ``DATA_DIR``, the
   product defaults, detection included, except ``NATS_BATCH_SIZE`` from ``--batch-size`` and
   ``NATS_FLUSH_INTERVAL`` from ``--flush-interval``) projects the stream into DuckDB. The
   detector publishes its alerts into the same stream, after the feed's events that raised
   them, so the stream grows while the ingestor runs. Its ``/status`` endpoint is polled every
   0.2 s until the stream stopped growing (a poll saw the detector past the feed's last
   sequence) and, at a later poll, the checkpoint equals the stream's last sequence; the rate
   is ``messages / (last_commit_at - first_pull_at)``, messages being the feed's events plus
   the alerts, both times taken from the router's own clock, i.e. from its first pull request
   to the commit of the checkpoint of the last message. Its peak RSS is ``VmHWM`` from
   ``/proc/<pid>/status``, read at every poll and once more right before SIGTERM; the
   ingestor must then exit with 0.
   A final partial batch is committed only once the flush interval (default 5 s) has passed,
   and that wait is in the figure; the details also give the rate up to the last full batch.
3. **bare consumer**: in this process, after the ingestor stopped, a durable pull consumer
   ``bench-bare`` on the same stream runs the router's lean loop with nothing else: pull
   requests of the same batch size published with a reply inbox, messages counted in a
   subscription callback, one ``AckAll`` (``+ACK`` on the last message) per batch, over the
   same messages (the stream must still end where the ingestor's checkpoint did; the ack floor
   must reach that sequence). Its rate, from the first request to the last ack, is the ceiling
   the NATS side allows in Python; the ratio ingest/bare shows how much the decode, dedup,
   detection and DuckDB work costs on top.

The last lines printed are the figures (events, publish, ingest, bare consumer, ratio, peak
RSS, and whether the target ingest/bare >= 0.50 is met). ``--json`` writes the same
figures, plus details, as JSON. The exit status is 0 whenever the measurement
completed, met or not, and 1 when something failed (a child crashed, the checkpoint was not
reached in time, the ingestor did not exit cleanly).

Run from the project root: ``.venv/bin/python bench/ingest.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ingestor.config import Settings
from ingestor.errors import IngestorError
from ingestor.nats.server import EmbeddedServer, nats_server_binary
from ingestor.nats.streams import STREAM
from ingestor.router import PULL_EXPIRES_S

TARGET_RATIO = 0.50  # ingest / bare consumer, measured in the same run
DAYS = 30
SEED = 7
# The simulator gives 19-20 events per user-day, about 19.3 of them with distinct event ids
# (JetStream may drop some exact repeats as duplicates); sizing with 19.2 keeps the stored
# count at or just above what was asked for.
EVENTS_PER_USER_DAY = 19.2
POLL_S = 0.2
BARE_CONSUMER = "bench-bare"
# Everything ingestor.config reads: the children get only what the bench sets.
CONFIG_PREFIXES = ("NATS_", "DUCKDB_", "HTTP_")
CONFIG_NAMES = {"DATA_DIR", "ARCHIVE_DIR", "DEDUP_TOLERANCE", "LOG_LEVEL"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """The measurement could not be completed."""


# --------------------------------------------------------------------------- helpers


def log(text: str) -> None:
    """Progress goes to stderr; stdout holds only the header, details and figures."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any ingestor setting, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(CONFIG_PREFIXES) and key not in CONFIG_NAMES
    }
    env.update(extra)
    return env


def _exit_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(args: Sequence[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a child that writes stdout and stderr to ``log_path`` and dies with the bench."""
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            list(args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_exit_with_parent if sys.platform.startswith("linux") else None,
        )


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty)"


def run_env(
    server: EmbeddedServer,
    data_dir: Path,
    port: int,
    batch_size: int | None,
    flush_interval: str | None,
) -> dict[str, str]:
    """The environment of an ``ingestor run`` child reading the bench's own nats-server
    (``NATS_EMBEDDED=false``), its data in ``data_dir``, HTTP on ``127.0.0.1:port``; the
    batch size and flush interval the product's defaults unless given."""
    extra = {
        "DATA_DIR": str(data_dir),
        "NATS_URL": server.url,
        "NATS_EMBEDDED": "false",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "LOG_LEVEL": "warning",
    }
    if batch_size is not None:
        extra["NATS_BATCH_SIZE"] = str(batch_size)
    if flush_interval is not None:
        extra["NATS_FLUSH_INTERVAL"] = flush_interval
    return child_env(extra)


def stop_child(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def memory_kb(pid: int, key: str = "VmHWM") -> int | None:
    """A memory figure of a live process from ``/proc/<pid>/status``, in kB: by default
    ``VmHWM``, the resident set's high-water mark (peak RSS); ``VmRSS`` is the current one."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_seconds(stat_path: Path) -> float | None:
    try:
        fields = stat_path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after "pid (comm)": state is fields[0], utime fields[11], stime fields[12]
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a whole process (all its threads)."""
    return _cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds per thread of a live process: ``{tid: (name, seconds)}``."""
    threads: dict[int, tuple[str, float]] = {}
    try:
        tids = [int(p.name) for p in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return threads
    for tid in tids:
        base = Path(f"/proc/{pid}/task/{tid}")
        seconds = _cpu_seconds(base / "stat")
        if seconds is None:
            continue
        try:
            name = (base / "comm").read_text().strip()
        except OSError:
            name = "?"
        threads[tid] = (name, seconds)
    return threads


def cpu_split(
    pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two snapshots: the main thread (the asyncio loop) and the
    other threads grouped by name (``to_thread`` workers, DuckDB's own threads)."""
    split: dict[str, float] = {}
    for tid, (name, seconds) in after.items():
        spent = seconds - before.get(tid, (name, 0.0))[1]
        if spent <= 0:
            continue
        key = "main thread (event loop)" if tid == pid else f"thread {name}"
        split[key] = split.get(key, 0.0) + spent
    return dict(sorted(split.items(), key=lambda kv: -kv[1]))


def versions() -> dict[str, str]:
    try:
        server = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        server = "?"
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "nats-py": importlib.metadata.version("nats-py"),
        "nats-server": server,
    }


# --------------------------------------------------------------------------- results


@dataclass
class PublishResult:
    users: int
    days: int
    events: int  # messages stored in the stream
    first_seq: int
    last_seq: int
    store_seconds: float  # first to last message timestamp
    process_seconds: float  # the whole simulate process, generation included
    rate: float


@dataclass
class IngestResult:
    batch_size: int
    flush_interval: float
    messages: int  # the stream's messages the router read: the feed and the detector's alerts
    alerts: int  # of which published by the detector while ingesting
    detection: bool
    seconds: float  # first pull to last commit
    rate: float
    startup_seconds: float  # process start to first pull (imports, DuckDB, index, consumer)
    peak_rss_mb: float
    start_rss_mb: float  # when the HTTP server first answered, before the router pulled much
    exit_code: int | None
    router: dict[str, Any]
    status_polls: int
    # The final batch is partial unless the event count is a multiple of the batch size; the
    # router commits a partial batch only when NATS_FLUSH_INTERVAL has passed since the last
    # commit, so that wait is part of ``seconds``. ``full_batches_seconds`` is when the last
    # full batch was seen committed (first pull to that status poll, so at most ~0.2 s late).
    final_batch: int = 0
    full_batches_seconds: float | None = None
    full_batches_rate: float | None = None
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    nats_server_cpu_seconds: float | None = None


@dataclass
class BareResult:
    batch_size: int
    seconds: float
    rate: float
    requests: int
    acks: int
    ack_floor: int
    cpu_seconds: float
    nats_server_cpu_seconds: float | None = None


# --------------------------------------------------------------------------- publish


def publish(server: EmbeddedServer, events: int, workdir: Path, timeout: float) -> PublishResult:
    users = max(1, math.ceil(events / (EVENTS_PER_USER_DAY * DAYS)))
    log(f"publishing ~{events:,} simulated events ({users} users x {DAYS} days, seed {SEED})")
    env = child_env(
        {
            "DATA_DIR": str(workdir / "publisher"),
            "NATS_URL": server.url,
            "NATS_EMBEDDED": "false",
            "LOG_LEVEL": "warning",
        }
    )
    args = [sys.executable, "-m", "ingestor.cli", "simulate"]
    args += ["--users", str(users), "--days", str(DAYS), "--seed", str(SEED)]
    log_path = workdir / "simulate.log"
    started = time.monotonic()
    proc = spawn(args, env, log_path)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"the simulate process did not finish within {timeout:.0f}s:\n{tail(log_path)}"
        ) from None
    finally:
        stop_child(proc)
    process_seconds = time.monotonic() - started
    if code != 0:
        raise BenchError(f"the simulate process exited with {code}:\n{tail(log_path)}")
    first_seq, last_seq, messages, store_seconds = asyncio.run(stream_facts(server.url))
    if messages != last_seq - first_seq + 1:
        raise BenchError(f"the stream has gaps: {messages} messages in {first_seq}..{last_seq}")
    if first_seq != 1:
        raise BenchError(f"the stream starts at sequence {first_seq}, expected 1")
    rate = messages / store_seconds if store_seconds > 0 else float("nan")
    return PublishResult(
        users=users,
        days=DAYS,
        events=messages,
        first_seq=first_seq,
        last_seq=last_seq,
        store_seconds=store_seconds,
        process_seconds=process_seconds,
        rate=rate,
    )


async def stream_facts(url: str) -> tuple[int, int, int, float]:
    """(first_seq, last_seq, messages, seconds between the first and last stored message)."""
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(STREAM)
        state = info.state
        if state.messages == 0:
            raise BenchError(f"{STREAM} is empty after publishing")
        first = await js.get_msg(STREAM, seq=state.first_seq)
        last = await js.get_msg(STREAM, seq=state.last_seq)
        assert first.time is not None and last.time is not None
        seconds = (last.time - first.time).total_seconds()
        return state.first_seq, state.last_seq, state.messages, seconds
    finally:
        await nc.close()


# --------------------------------------------------------------------------- ingest


def get_status(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def ingest(
    server: EmbeddedServer,
    feed_last_seq: int,
    batch_size: int | None,
    flush_interval: str | None,
    workdir: Path,
    timeout: float,
) -> IngestResult:
    port = free_port()
    env = run_env(server, workdir / "ingestor", port, batch_size, flush_interval)
    settings = Settings.from_env(env)  # what the child will run with (and a sanity check)
    log(
        f"ingesting with `ingestor run` (batch {settings.nats_batch_size}, "
        f"flush interval {settings.nats_flush_interval:g}s, http port {port})"
    )
    url = f"http://127.0.0.1:{port}/status"
    log_path = workdir / "ingestor.log"
    spawned_at = time.time()
    proc = spawn([sys.executable, "-m", "ingestor.cli", "run"], env, log_path)
    server_pid = server.process.pid if server.process is not None else None
    peak_kb = 0
    polls = 0
    threads_start: dict[int, tuple[str, float]] = {}
    start_kb = 0
    server_cpu_start: float | None = None
    status: dict[str, Any] | None = None
    checkpoints: list[tuple[float, int]] = []  # (time of the poll, checkpoint seen)
    # Detection (on by default) publishes alerts into the stream after the events that raised
    # them: the stream has stopped growing once a status poll saw the detector past the feed's
    # last sequence. The stream's last sequence is final from the next poll on, whose
    # stream_info is read after that one (a poll reads the stream before the detector).
    stream_final = False
    try:
        deadline = time.monotonic() + timeout
        next_report = time.monotonic() + 5
        while True:
            code = proc.poll()
            if code is not None:
                raise BenchError(
                    f"the ingestor exited with {code} while ingesting:\n{tail(log_path)}"
                )
            peak_kb = max(peak_kb, memory_kb(proc.pid) or 0)
            status = get_status(url)
            if status is not None:
                polls += 1
                if not threads_start:  # the HTTP server answers just before the router starts
                    threads_start = thread_cpu(proc.pid)
                    start_kb = memory_kb(proc.pid, "VmRSS") or 0
                    server_cpu_start = process_cpu(server_pid) if server_pid else None
                checkpoints.append((time.time(), status.get("checkpoint_seq") or 0))
                if stream_final and _caught_up(status, feed_last_seq):
                    break
                stream_final = stream_final or _detector_done(status, feed_last_seq)
            now = time.monotonic()
            if now > deadline:
                seen = status.get("checkpoint_seq") if status else None
                last = status.get("stream_last_seq") if status else None
                raise BenchError(
                    f"the checkpoint did not reach the stream's last sequence ({last}) with the"
                    f" stream no longer growing within {timeout:.0f}s (last seen: {seen};"
                    f" feed {feed_last_seq:,}):\n{tail(log_path)}"
                )
            if now >= next_report and status is not None:
                log(
                    f"  checkpoint {status.get('checkpoint_seq') or 0:,}"
                    f" of {status.get('stream_last_seq') or 0:,}"
                )
                next_report = now + 5
            time.sleep(POLL_S)
        threads_end = thread_cpu(proc.pid)
        server_cpu_end = process_cpu(server_pid) if server_pid else None
        peak_kb = max(peak_kb, memory_kb(proc.pid) or 0)
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code: int | None = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            exit_code = None
    finally:
        stop_child(proc)
    assert status is not None
    router: dict[str, Any] = status.get("router") or {}
    messages = int(status["stream_last_seq"])  # the feed and the alerts: all the router read
    detection: dict[str, Any] = status.get("detection") or {}
    first_pull = float(router["first_pull_at"])
    last_commit = float(router["last_commit_at"])
    seconds = last_commit - first_pull
    full_boundary = messages - messages % settings.nats_batch_size
    full_seen_at = next((t for t, seq in checkpoints if seq >= full_boundary), None)
    full_seconds = full_rate = None
    if full_boundary > 0 and full_seen_at is not None:
        full_seconds = min(full_seen_at, last_commit) - first_pull
        full_rate = full_boundary / full_seconds if full_seconds > 0 else None
    server_cpu = (
        server_cpu_end - server_cpu_start
        if server_cpu_start is not None and server_cpu_end is not None
        else None
    )
    return IngestResult(
        batch_size=settings.nats_batch_size,
        flush_interval=settings.nats_flush_interval,
        messages=messages,
        alerts=messages - feed_last_seq,
        detection=bool(detection.get("enabled")),
        seconds=seconds,
        rate=messages / seconds if seconds > 0 else float("nan"),
        startup_seconds=first_pull - spawned_at,
        peak_rss_mb=peak_kb / 1024,
        start_rss_mb=start_kb / 1024,
        exit_code=exit_code,
        router=router,
        status_polls=polls,
        final_batch=messages - full_boundary,
        full_batches_seconds=full_seconds,
        full_batches_rate=full_rate,
        cpu_seconds=cpu_split(proc.pid, threads_start, threads_end),
        nats_server_cpu_seconds=server_cpu,
    )


def _caught_up(status: dict[str, Any], feed_last_seq: int) -> bool:
    checkpoint = status.get("checkpoint_seq")
    last = status.get("stream_last_seq")
    router = status.get("router") or {}
    return (
        checkpoint is not None
        and last is not None
        and checkpoint == last
        and checkpoint >= feed_last_seq
        and router.get("first_pull_at") is not None
        and router.get("last_commit_at") is not None
    )


def _detector_done(status: dict[str, Any], feed_last_seq: int) -> bool:
    """No more alerts will come: detection is off, or the detector has judged the whole feed
    (it stores a batch's alerts before it counts the batch as done)."""
    detection = status.get("detection")
    if not detection or not detection.get("enabled"):
        return True
    return (detection.get("last_seq") or 0) >= feed_last_seq


# --------------------------------------------------------------------------- bare consumer


class _BarePuller:
    """Counts one pull request's replies and acks the last message of each batch."""

    def __init__(self, nc: Client, total: int, batch: int) -> None:
        self.nc = nc
        self.total = total
        self.batch = batch
        self.received = 0
        self.acks = 0
        self.in_request = 0
        self.unacked: Msg | None = None
        self.request_done = asyncio.Event()
        self.finished = asyncio.Event()
        self.finished_at = 0.0

    def begin_request(self) -> None:
        self.in_request = 0
        self.request_done.clear()

    async def ack(self, msg: Msg) -> None:
        await self.nc.publish(msg.reply, b"+ACK")
        self.acks += 1
        self.unacked = None

    async def on_message(self, msg: Msg) -> None:
        if msg.headers and "Status" in msg.headers and not msg.data:
            if msg.headers.get("Status") != "100":  # the request is over (timeout, no messages)
                if self.unacked is not None:
                    await self.ack(self.unacked)
                self.request_done.set()
            return
        if self.finished.is_set():
            return
        self.received += 1
        self.in_request += 1
        self.unacked = msg
        if self.received >= self.total:
            await self.ack(msg)
            self.finished_at = time.perf_counter()
            self.finished.set()
            self.request_done.set()
        elif self.in_request >= self.batch:
            await self.ack(msg)
            self.request_done.set()


async def bare_consumer(
    server: EmbeddedServer, last_seq: int, batch: int, timeout: float
) -> BareResult:
    """Pull and ack the whole stream, which must still end at ``last_seq`` (what the ingestor
    read: nothing publishes once it stopped) and hold every sequence from 1."""
    log(f"bare consumer {BARE_CONSUMER!r}: pull and ack only (batch {batch})")
    nc = await nats.connect(server.url, connect_timeout=5, allow_reconnect=False)
    server_pid = server.process.pid if server.process is not None else None
    try:
        js = nc.jetstream(timeout=10)
        state = (await js.stream_info(STREAM)).state
        if (state.first_seq, state.last_seq, state.messages) != (1, last_seq, last_seq):
            raise BenchError(
                f"the stream holds {state.messages:,} messages in {state.first_seq:,}.."
                f"{state.last_seq:,}, expected 1..{last_seq:,} as the ingestor read it"
            )
        events = state.messages
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(STREAM, BARE_CONSUMER)
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=BARE_CONSUMER,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.ALL,
                ack_wait=120.0,
                max_deliver=-1,
                max_ack_pending=max(4 * batch, 20_000),
                max_waiting=16,
            ),
        )
        puller = _BarePuller(nc, events, batch)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=puller.on_message)
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{BARE_CONSUMER}"
        request = json.dumps({"batch": batch, "expires": int(PULL_EXPIRES_S * 1e9)}).encode()
        requests = 0
        cpu_start = time.process_time()
        server_cpu_start = process_cpu(server_pid) if server_pid else None
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        while not puller.finished.is_set():
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the bare consumer received {puller.received:,} of {events:,} messages "
                    f"within {timeout:.0f}s"
                )
            puller.begin_request()
            await nc.publish(subject, request, reply=inbox)
            requests += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(puller.request_done.wait(), PULL_EXPIRES_S + 2)
        seconds = puller.finished_at - started
        cpu = time.process_time() - cpu_start
        server_cpu_end = process_cpu(server_pid) if server_pid else None
        await nc.flush()
        ack_floor = await _wait_ack_floor(nc, last_seq)
        await sub.unsubscribe()
    finally:
        await nc.close()
    if ack_floor != last_seq:
        raise BenchError(f"the bare consumer's ack floor is {ack_floor}, expected {last_seq}")
    return BareResult(
        batch_size=batch,
        seconds=seconds,
        rate=events / seconds if seconds > 0 else float("nan"),
        requests=requests,
        acks=puller.acks,
        ack_floor=ack_floor,
        cpu_seconds=cpu,
        nats_server_cpu_seconds=(
            server_cpu_end - server_cpu_start
            if server_cpu_start is not None and server_cpu_end is not None
            else None
        ),
    )


async def _wait_ack_floor(nc: Client, last_seq: int, timeout: float = 10.0) -> int:
    """The consumer's ack floor once the server has applied the final ack (or the timeout)."""
    js = nc.jetstream(timeout=10)
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(STREAM, BARE_CONSUMER)
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        if floor >= last_seq or time.monotonic() > deadline:
            return floor
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- report


def report(
    env: dict[str, str],
    pub: PublishResult,
    ing: IngestResult,
    bare: BareResult,
) -> tuple[list[str], dict[str, Any]]:
    ratio = ing.rate / bare.rate
    met = ratio >= TARGET_RATIO
    router = ing.router
    dropped = router.get("dropped") or {}
    details = [
        "details:",
        f"  published by `ingestor simulate`: {pub.users} users x {pub.days} days, seed {SEED};"
        f" stream seq {pub.first_seq:,}..{pub.last_seq:,}; stored in {pub.store_seconds:.2f}s"
        f" (the process took {pub.process_seconds:.1f}s including generation)",
        f"  ingestor: first pull {ing.startup_seconds:.2f}s after spawn, RSS then"
        f" {ing.start_rss_mb:,.0f} MB;"
        f" {ing.seconds:.2f}s first pull -> last commit; {router.get('batches', 0):,} batches,"
        f" flush interval {ing.flush_interval:g}s",
        f"  messages read by the router and by the bare consumer (both rates count them):"
        f" {ing.messages:,} = {pub.events:,} events + {ing.alerts:,} alerts published by the"
        f" detector (detection {'on' if ing.detection else 'off'})",
        _final_batch_line(ing),
        f"  ingestor outcome: {router.get('accepted', 0):,} accepted,"
        f" {sum(dropped.values()):,} dropped {dropped}, {router.get('linked', 0):,} linked,"
        f" {router.get('dead_lettered', 0):,} dead-lettered;"
        f" exit code {ing.exit_code} after SIGTERM; {ing.status_polls} status polls",
        "  ingestor CPU while ingesting: "
        + (
            ", ".join(f"{k} {v:.2f}s" for k, v in ing.cpu_seconds.items())
            if ing.cpu_seconds
            else "n/a"
        ),
        f"  nats-server CPU: {_seconds(ing.nats_server_cpu_seconds)} while ingesting,"
        f" {_seconds(bare.nats_server_cpu_seconds)} during the bare consumer",
        f"  bare consumer: {bare.seconds:.2f}s, {bare.requests:,} pull requests,"
        f" {bare.acks:,} acks, ack floor {bare.ack_floor:,}, {bare.cpu_seconds:.2f}s CPU",
    ]
    figures = [
        f"events: {pub.events:,}",
        f"publish: {pub.rate:,.0f} events/s",
        f"ingest: {ing.rate:,.0f} events/s   (batch {ing.batch_size:,})",
        f"bare consumer: {bare.rate:,.0f} events/s",
        f"ratio ingest/bare: {ratio:.2f}",
        f"ingestor peak RSS: {ing.peak_rss_mb:,.0f} MB",
        f"target: ingest/bare >= {TARGET_RATIO:.2f}: " + ("met" if met else "NOT met"),
    ]
    data = {
        "environment": env,
        "events": pub.events,
        "messages": ing.messages,
        "alerts": ing.alerts,
        "publish_events_per_s": round(pub.rate, 1),
        "ingest_events_per_s": round(ing.rate, 1),
        "batch_size": ing.batch_size,
        "bare_events_per_s": round(bare.rate, 1),
        "ratio_ingest_bare": round(ratio, 4),
        "ingestor_peak_rss_mb": round(ing.peak_rss_mb, 1),
        "target": {"ratio_ingest_bare": TARGET_RATIO, "met": met},
        "publish": asdict(pub),
        "ingest": asdict(ing),
        "bare": asdict(bare),
    }
    return [*details, "", *figures], data


def _final_batch_line(ing: IngestResult) -> str:
    if not ing.final_batch:
        return "  ingestor: the message count is a multiple of the batch size (no partial batch)"
    if ing.flush_interval <= 2 * POLL_S:
        return (
            f"  ingestor: final partial batch of {ing.final_batch:,} messages (no separate rate:"
            " the flush interval is shorter than the status polls can resolve)"
        )
    return (
        f"  ingestor without the final partial batch ({ing.final_batch:,} messages, committed"
        f" only after the flush interval): {_rate(ing.full_batches_rate)} events/s"
        f" ({_seconds(ing.full_batches_seconds)}, to the status poll that saw the last full"
        " batch)"
    )


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}s"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/ingest.py",
        description="Time `ingestor run` draining simulated events, against a bare consumer.",
    )
    parser.add_argument(
        "--events", type=int, default=200_000, help="events to publish (default 200000)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="NATS_BATCH_SIZE for the ingestor and the bare consumer's batch "
        "(default: the product default)",
    )
    parser.add_argument(
        "--flush-interval",
        help="NATS_FLUSH_INTERVAL for the ingestor, like 100ms (default: the product default)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds each phase may take before the bench gives up (default 900)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be at least 1")
    if args.batch_size is not None and not 1 <= args.batch_size <= 100_000:
        parser.error("--batch-size must be between 1 and 100000")
    return args


def run(args: argparse.Namespace) -> int:
    env = versions()
    print(
        f"bench/ingest.py: {env['cores']} cores ({env['cpu']}), python {env['python']}, "
        f"duckdb {env['duckdb']}, nats-py {env['nats-py']}, {env['nats-server']}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    server = EmbeddedServer("127.0.0.1", free_port(), workdir / "nats")
    try:
        server.start()
        log(f"nats-server at {server.url}, work directory {workdir}")
        pub = publish(server, args.events, workdir, args.timeout)
        log(f"  {pub.events:,} events stored ({pub.rate:,.0f} events/s)")
        if pub.events < args.events:
            log(f"  note: {pub.events:,} stored, fewer than the {args.events:,} asked for")
        ing = ingest(
            server, pub.last_seq, args.batch_size, args.flush_interval, workdir, args.timeout
        )
        log(
            f"  {ing.rate:,.0f} events/s ({ing.messages:,} messages, {ing.alerts:,} of them"
            f" alerts), peak RSS {ing.peak_rss_mb:,.0f} MB"
        )
        bare = asyncio.run(bare_consumer(server, ing.messages, ing.batch_size, args.timeout))
        log(f"  {bare.rate:,.0f} events/s")
    finally:
        server.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    lines, data = report(env, pub, ing, bare)
    print("\n".join(lines), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    if ing.exit_code != 0:
        what = "did not exit within 60s" if ing.exit_code is None else f"exited {ing.exit_code}"
        print(f"bench: error: the ingestor {what} after SIGTERM", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (BenchError, IngestorError, OSError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
