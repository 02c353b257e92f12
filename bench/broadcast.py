"""Live-feed benchmark: does a WebSocket client that stops reading slow ingestion down?

The hub promises that publishing to the live feed never waits for a client: a client that
falls behind is dropped, and ingestion goes on at full speed. This measures it, end to end:

For each round, for each mode (``none``: no feed client; ``stalled``: one client that
connects and never reads; ``reading``: one client that reads everything), on a fresh
``nats-server -js`` (free loopback port, store in a temporary directory) and a fresh
``python -m ingestor.cli run`` (fresh ``DATA_DIR``, product defaults except ``--batch-size``
and ``--flush-interval``, ``LOG_LEVEL=warning``):

1. the client connects to ``/ws/events`` (this process, aiohttp) and ``/status`` is polled
   until the ingestor counts it;
2. ``--events`` simulated events (generated once, before the first round) are published to
   ``MEDIA_EVENTS`` by this process with the product's publisher, while the ingestor
   projects them;
3. ``/status`` is polled every 0.1 s until the checkpoint equals the stream's last sequence.

**rate = stored events / (router.last_commit_at - t0)**, t0 being the moment publishing
started: both ends are on this machine's clock, and the publisher is the same in every mode,
so the modes compare like for like. Modes alternate within each round, and each round starts
with the next mode, so that drift of the machine's speed (other load, caches) falls on all of
them alike; the figure per mode is the median over the rounds.

The last lines printed are the figures: the rate per mode, when the stalled client was
dropped, whether the reading client received every accepted event, and the ratio
stalled/none against the target (>= 0.90: within 10 %). ``--json`` writes them with the
per-run details. Exit status 0 when the measurement completed, met or not; 1 when something
failed.

Run from the project root: ``.venv/bin/python bench/broadcast.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats

# bench/ is the script's directory, so its sibling is importable: one set of helpers
from ingest import (
    BenchError,
    free_port,
    get_status,
    log,
    run_env,
    spawn,
    stop_child,
    tail,
    versions,
)

from ingestor.errors import IngestorError
from ingestor.events import MediaEvent
from ingestor.nats.publisher import Publisher
from ingestor.nats.server import EmbeddedServer
from ingestor.nats.streams import STREAM, ensure_streams
from ingestor.simulation import SimulationConfig, simulate

MODES = ("none", "stalled", "reading")
TARGET_RATIO = 0.90  # stalled / none
DAYS = 30
SEED = 7
EVENTS_PER_USER_DAY = 18.7  # see bench/ingest.py
POLL_S = 0.1


@dataclass
class Run:
    mode: str
    round: int
    events: int  # stored in the stream
    seconds: float  # publish start -> last commit
    rate: float
    batches: int
    accepted: int
    broadcast: dict[str, Any] = field(default_factory=dict)
    client_received: int | None = None  # messages the feed client read (reading mode)
    exit_code: int | None = None


def make_events(count: int) -> list[MediaEvent]:
    users = max(1, math.ceil(count / (EVENTS_PER_USER_DAY * DAYS)))
    events = simulate(SimulationConfig(seed=SEED, users=users, days=DAYS)).events
    return list(events[:count])


async def publish_events(url: str, events: Sequence[MediaEvent]) -> int:
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        await Publisher(nc).publish_many(events)
        info = await nc.jetstream(timeout=10).stream_info(STREAM)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def provision(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        await ensure_streams(nc.jetstream(timeout=10), 7)
    finally:
        await nc.close()


class _Client:
    """One feed client: ``stalled`` connects and never reads; ``reading`` counts messages."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.received = 0
        self.close: tuple[Any, Any] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None

    async def connect(self, base: str) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"{base}/ws/events")
        if self.mode == "reading":
            self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        while True:
            frame = await self.ws.receive()
            if frame.type is not aiohttp.WSMsgType.TEXT:
                self.close = (frame.data, frame.extra)
                return
            self.received += 1

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.session is not None:
            await self.session.close()


async def status_until(url: str, done: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = await asyncio.to_thread(get_status, url)
        if status is not None and done(status):
            return status
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def one_run(
    mode: str,
    round_no: int,
    events: Sequence[MediaEvent],
    workdir: Path,
    batch_size: int | None,
    flush_interval: str | None,
    timeout: float,
) -> Run:
    run_dir = workdir / f"round{round_no}-{mode}"
    server = EmbeddedServer("127.0.0.1", free_port(), run_dir / "nats")
    proc: subprocess.Popen[bytes] | None = None
    client = _Client(mode) if mode != "none" else None
    try:
        await asyncio.to_thread(server.start)
        await provision(server.url)
        port = free_port()
        env = run_env(server, run_dir / "ingestor", port, batch_size, flush_interval)
        log_path = run_dir / "ingestor.log"
        proc = spawn([sys.executable, "-m", "ingestor.cli", "run"], env, log_path)
        base = f"http://127.0.0.1:{port}"
        status_url = f"{base}/status"
        await status_until(status_url, lambda s: True, 120, "the ingestor to answer")
        clients = 0
        if client is not None:
            await client.connect(base)
            clients = 1
        await status_until(
            status_url, lambda s: s["broadcast"]["clients"] == clients, 30, "the feed client"
        )
        started = time.time()
        last = await publish_events(server.url, events)

        def caught_up(s: dict[str, Any]) -> bool:
            if proc is not None and proc.poll() is not None:
                raise BenchError(f"the ingestor exited while ingesting:\n{tail(log_path)}")
            # >=: the detector's alerts, published into the stream meanwhile, come after it
            return (s.get("checkpoint_seq") or 0) >= last

        status = await status_until(status_url, caught_up, timeout, "the checkpoint")
        router = status["router"]
        if client is not None and client.mode == "reading":
            accepted = status["broadcast"]["events"]
            await status_until(
                status_url, lambda s: client.received >= accepted, 60, "the reading client"
            )
        seconds = float(router["last_commit_at"]) - started
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code: int | None = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            exit_code = None
        return Run(
            mode=mode,
            round=round_no,
            events=last,
            seconds=seconds,
            rate=last / seconds if seconds > 0 else float("nan"),
            batches=int(router["batches"]),
            accepted=int(router["accepted"]),
            broadcast=status["broadcast"],
            client_received=client.received if client is not None else None,
            exit_code=exit_code,
        )
    finally:
        if client is not None:
            await client.aclose()
        stop_child(proc)
        await asyncio.to_thread(server.stop)


def report(runs: list[Run], env: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    by_mode: dict[str, list[Run]] = {}
    for run in runs:
        by_mode.setdefault(run.mode, []).append(run)
    median = {mode: statistics.median(r.rate for r in rs) for mode, rs in by_mode.items()}
    details = ["details:"]
    for run in runs:
        b = run.broadcast
        extra = ""
        if run.mode == "stalled":
            extra = f"; dropped {b.get('dropped_slow')} ({b.get('last_drop')})"
        elif run.mode == "reading":
            extra = f"; client read {run.client_received:,} of {run.accepted:,} accepted"
        details.append(
            f"  round {run.round} {run.mode:<8} {run.rate:>9,.0f} events/s"
            f" ({run.events:,} events in {run.seconds:.2f}s, {run.batches:,} batches,"
            f" exit {run.exit_code}){extra}"
        )
    figures = [f"events: {runs[0].events:,}"]
    for mode in MODES:
        if mode in median:
            rates = ", ".join(f"{r.rate:,.0f}" for r in by_mode[mode])
            figures.append(
                f"ingest, {_label(mode)}: {median[mode]:,.0f} events/s (median; runs: {rates})"
            )
    ratio = None
    if "none" in median and "stalled" in median:
        ratio = median["stalled"] / median["none"]
        dropped = all(r.broadcast.get("dropped_slow") == 1 for r in by_mode["stalled"])
        figures.append(f"stalled client dropped in every run: {'yes' if dropped else 'NO'}")
        figures.append(
            f"ratio stalled/none: {ratio:.3f}   (target >= {TARGET_RATIO:.2f}: "
            + ("met" if ratio >= TARGET_RATIO else "NOT met")
            + ")"
        )
    if "reading" in median:
        # the feed carries the detector's alerts too: at least every accepted event
        complete = all((r.client_received or 0) >= r.accepted for r in by_mode["reading"])
        figures.append(f"ratio reading/none: {median['reading'] / median['none']:.3f}")
        figures.append(f"reading client got every accepted event: {'yes' if complete else 'NO'}")
    data = {
        "environment": env,
        "median_events_per_s": {mode: round(rate, 1) for mode, rate in median.items()},
        "ratio_stalled_none": None if ratio is None else round(ratio, 4),
        "target_ratio": TARGET_RATIO,
        "runs": [asdict(run) for run in runs],
    }
    return [*details, "", *figures], data


def _label(mode: str) -> str:
    return {
        "none": "no feed client",
        "stalled": "one stalled client",
        "reading": "one reading client",
    }[mode]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/broadcast.py",
        description="Ingest speed with no live-feed client, a stalled one, and a reading one.",
    )
    parser.add_argument("--events", type=int, default=50_000, help="events (default 50000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all modes (default 3)")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma separated, of {', '.join(MODES)} (default: all)",
    )
    parser.add_argument("--batch-size", type=int, help="NATS_BATCH_SIZE (default: product's)")
    parser.add_argument("--flush-interval", help="NATS_FLUSH_INTERVAL (default: product's)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"--modes takes {', '.join(MODES)}")
    if args.events < 1 or args.rounds < 1:
        parser.error("--events and --rounds must be at least 1")
    return args


async def run(args: argparse.Namespace) -> int:
    env = versions()
    print(
        f"bench/broadcast.py: {env['cores']} cores ({env['cpu']}), python {env['python']}, "
        f"duckdb {env['duckdb']}, nats-py {env['nats-py']}, {env['nats-server']}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-broadcast-"))
    runs: list[Run] = []
    try:
        log(f"generating {args.events:,} simulated events")
        events = make_events(args.events)
        for round_no in range(1, args.rounds + 1):
            # each round starts with another mode, so no mode always runs first
            shift = (round_no - 1) % len(args.modes)
            for mode in args.modes[shift:] + args.modes[:shift]:
                log(f"round {round_no}: {mode}")
                result = await one_run(
                    mode,
                    round_no,
                    events,
                    workdir,
                    args.batch_size,
                    args.flush_interval,
                    args.timeout,
                )
                log(f"  {result.rate:,.0f} events/s")
                runs.append(result)
                if not args.keep:  # a run's store and database are not needed any more
                    shutil.rmtree(workdir / f"round{round_no}-{mode}", ignore_errors=True)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    lines, data = report(runs, env)
    print("\n".join(lines), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    failed = [r for r in runs if r.exit_code != 0]
    if failed:
        print(f"bench: error: {len(failed)} ingestor run(s) did not exit 0", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except (BenchError, IngestorError, OSError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
