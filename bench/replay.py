"""Replay benchmark: how fast does the workbench rebuild the projection from the event log?

What is measured, in one run (issue 4: "with 1,000,000 simulated events archived, replay to a
mid-point timestamp and run a concurrent-streams query; target on 2 cores: replay under 2 s,
the query under 0.5 s; also replay through JetStream alone, at least 100,000 events/s"):

1. **generate** (not a figure): ``--events`` simulated events (``ingestor.sources.simulator``,
   ``--days`` days, fixed seed) are written as archive segments, one message per event, in
   publish order, exactly as :func:`workbench.replay.simulated_log` does at small scale: each
   message's ``recorded_at`` is the latest ``occurred_at`` published so far, and segments are
   cut by the archiver's own default limits (messages and bytes per segment).
2. **archive replay**: ``EventLog(archive_dir)`` and :func:`workbench.replay.replay` to the
   mid-point (the ``recorded_at`` of the middle message, recorded clock), then of the whole
   log. Wall time of the ``await replay(...)`` call, the Replay's opening included.
3. **query**: :func:`workbench.stats.concurrent_streams` and
   :func:`~workbench.stats.max_concurrent_streams` on the mid-point replay, ``until`` = the
   mid-point; the median of ``--query-runs`` runs each.
4. **JetStream replay**: the same messages are published into ``MEDIA_EVENTS`` on the bench's
   own ``nats-server`` (publishing is not a figure), then ``EventLog(nc=...)`` (no archive)
   replays the whole log; ``EventLog.messages()`` alone (no decoding, no projection) gives the
   raw read rate, so the difference between the two is the projection's share.
5. **peak RSS** of this process (``VmHWM``), reset after generating the log (``clear_refs``),
   so it is the high-water mark of the replays and queries.
6. with ``--profile``: one more whole-log archive replay with timers around its stages (read,
   decode, dedup decisions, each part of the projection's transaction, and cyclic GC), whose
   breakdown goes to the ``details:`` block.

The last lines printed are the figures (``name: value unit``); ``--json`` writes them, with the
details, as JSON. The exit status is 0 whenever the measurement completed, targets met or
not, and 1 when something failed.

Run from the project root: ``.venv/bin/python bench/replay.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.metadata
import inspect
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import nats
import polars as pl
import pyarrow as pa

# bench/ is the script's directory, so its sibling is importable: one set of helpers
from ingest import BenchError, free_port, log
from ingest import memory_kb as process_memory_kb
from ingest import versions as ingest_versions
from nats.aio.client import Client

from ingestor.archive import Archiver, archive_segments, read_segment, write_segment
from ingestor.config import Settings
from ingestor.dedup import DedupIndex
from ingestor.errors import IngestorError
from ingestor.events import encode_event
from ingestor.nats.publisher import OutgoingMessage, Publisher
from ingestor.nats.server import EmbeddedServer
from ingestor.nats.streams import STREAM, ensure_streams
from ingestor.pipeline import Message, Pipeline
from ingestor.projection import Projection
from ingestor.sources.simulator import SimulationConfig, simulate
from workbench.log import EventLog
from workbench.replay import Replay, replay
from workbench.snapshots import Snapshots
from workbench.stats import concurrent_streams, max_concurrent_streams

T = TypeVar("T")

# The modules whose functions the profile wraps (by import_module: the ``workbench`` package
# re-exports a function named ``replay``, which ``import workbench.replay as ...`` would give).
store_module = importlib.import_module("ingestor.projection.store")
log_module = importlib.import_module("ingestor.eventlog")
replay_module = importlib.import_module("workbench.replay")

TARGET_REPLAY_S = 2.0  # archive replay to the mid-point
TARGET_QUERY_S = 0.5  # each concurrent-streams query
TARGET_JETSTREAM_RATE = 100_000  # events/s, whole-log replay through JetStream alone
DAYS = 30
SEED = 7
# The simulator makes 19-20 events per user-day; sizing with 19 gives at least --events
# from a few thousand up, and the feed is cut to exactly --events.
EVENTS_PER_USER_DAY = 19
# The archiver's own segment limits (its defaults), so the archive looks like a real one.
_ARCHIVER_DEFAULTS = inspect.signature(Archiver.__init__).parameters
SEGMENT_MAX_MESSAGES: int = _ARCHIVER_DEFAULTS["segment_max_messages"].default
SEGMENT_MAX_BYTES: int = _ARCHIVER_DEFAULTS["segment_max_bytes"].default
SEGMENT_OVERHEAD_BYTES = 24  # per message, as the archiver counts it: seq and timestamp
MiB = 1024 * 1024


# --------------------------------------------------------------------------- helpers


def memory_kb(key: str = "VmHWM") -> int | None:
    """A memory figure of this process, in kB (see ``ingest.memory_kb``)."""
    return process_memory_kb(os.getpid(), key)


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``5`` into ``clear_refs``), so the
    peak read later belongs to what ran since. False when the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages: other work sharing the cores shows here."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def versions() -> dict[str, str]:
    return {**ingest_versions(), "polars": pl.__version__, "pyarrow": pa.__version__}


async def within(awaitable: Awaitable[T], timeout: float, what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise BenchError(f"{what} did not finish within {timeout:.0f}s") from None


# --------------------------------------------------------------------------- results


@dataclass
class LogFacts:
    """The generated log."""

    events: int
    users: int
    days: int
    simulated: int  # events the simulator made (the log holds the first ``events``)
    segments: int
    archive_mb: float
    mid_seq: int
    mid: datetime
    first_recorded: datetime
    last_recorded: datetime
    simulate_seconds: float
    write_seconds: float


@dataclass
class ReplayFigure:
    """One replay: its wall time, what it read and projected, and its peak RSS."""

    label: str
    seconds: float  # the ``await replay(...)`` call, opening the Replay included
    build_seconds: float  # ReplayStats.seconds: read, decode, project, close
    messages: int
    projected: int
    rejected: int
    last_seq: int
    counts: dict[str, int]
    peak_rss_mb: float | None
    cpu_seconds: float  # this process (all threads) during the call

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class ReadFigure:
    """``EventLog.messages()`` alone: how fast the log is read, nothing else."""

    label: str
    seconds: float
    messages: int
    batches: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class QueryFigure:
    name: str
    runs: list[float]
    rows: int
    answer: str

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


@dataclass
class PublishFacts:
    messages: int
    seconds: float
    stream_messages: int


@dataclass
class Profile:
    """Self time per stage of one instrumented replay (a stage's time excludes the stages
    timed inside it), and the cyclic GC's pauses during it."""

    seconds: float
    messages: int
    stages: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    gc_seconds: dict[int, float] = field(default_factory=dict)
    gc_collections: dict[int, int] = field(default_factory=dict)
    untimed: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- generate


def generate(events: int, days: int, archive_dir: Path) -> LogFacts:
    """Simulate the feed and write its first ``events`` events as archive segments."""
    users = max(1, math.ceil(events / (EVENTS_PER_USER_DAY * days)))
    log(f"simulating ~{events:,} events ({users:,} users x {days} days, seed {SEED})")
    started = time.perf_counter()
    sim = simulate(SimulationConfig(seed=SEED, users=users, days=days))
    simulate_seconds = time.perf_counter() - started
    feed = sim.events[:events]
    simulated = len(sim.events)
    del sim
    if len(feed) < events:
        log(f"  note: the simulator made {len(feed):,} events, fewer than the {events:,} asked")
    log(f"  {simulated:,} simulated in {simulate_seconds:.1f}s; writing {len(feed):,} to segments")
    archive_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mid_index = len(feed) // 2
    mid = first = recorded = datetime.min.replace(tzinfo=UTC)
    segment: list[Message] = []
    size = 0
    for index, event in enumerate(feed):
        recorded = max(recorded, event.occurred_at)
        data = encode_event(event)
        subject = event.subject
        message_size = len(data) + len(subject) + SEGMENT_OVERHEAD_BYTES
        if segment and (
            len(segment) >= SEGMENT_MAX_MESSAGES or size + message_size > SEGMENT_MAX_BYTES
        ):
            write_segment(archive_dir, segment)
            segment, size = [], 0
        segment.append(Message(index + 1, recorded, data, subject))
        size += message_size
        if index == 0:
            first = recorded
        if index == mid_index:
            mid = recorded
    if segment:
        write_segment(archive_dir, segment)
    write_seconds = time.perf_counter() - started
    count = len(feed)
    del feed, segment
    gc.collect()
    segments = archive_segments(archive_dir)
    archive_bytes = sum(s.path.stat().st_size for s in segments)
    return LogFacts(
        events=count,
        users=users,
        days=days,
        simulated=simulated,
        segments=len(segments),
        archive_mb=archive_bytes / MiB,
        mid_seq=mid_index + 1,
        mid=mid,
        first_recorded=first,
        last_recorded=recorded,
        simulate_seconds=simulate_seconds,
        write_seconds=write_seconds,
    )


# --------------------------------------------------------------------------- measure


async def measure_replay(
    label: str,
    log_: EventLog,
    until: datetime | None,
    timeout: float,
    snapshot_dir: Path | None = None,
) -> tuple[Replay, ReplayFigure]:
    """One replay, timed; the caller closes the returned Replay."""
    log(f"{label} ...")
    gc.collect()
    peak_reset = reset_peak_rss()
    cpu_start = time.process_time()
    started = time.perf_counter()
    result = await within(
        replay(log_, until=until, clock="recorded", progress=False, snapshot_dir=snapshot_dir),
        timeout,
        label,
    )
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_start
    peak = memory_kb() if peak_reset else None
    counts = result.counts()
    figure = ReplayFigure(
        label=label,
        seconds=seconds,
        build_seconds=result.stats.seconds,
        messages=result.stats.messages,
        projected=result.stats.projected,
        rejected=result.stats.rejected,
        last_seq=result.last_seq,
        counts=counts,
        peak_rss_mb=peak / 1024 if peak is not None else None,
        cpu_seconds=cpu,
    )
    log(f"  {seconds:.2f}s, {figure.rate:,.0f} events/s, {counts['playbacks']:,} playbacks")
    return result, figure


async def measure_snapshots(
    results: Results, archive: EventLog, snapshot_dir: Path, timeout: float
) -> None:
    """Replays with a snapshot directory (``replay(..., snapshot_dir=...)``): the whole log
    once, saving snapshots every chunk; then to the mid-point, which starts from the newest
    snapshot recorded by then; then to just before the next snapshot (the most a replay from
    snapshots has to project). Each must equal the replay from the start."""
    saving, results.snapshot_save = await measure_replay(
        "snapshots: replay of the whole log, saving them", archive, None, timeout, snapshot_dir
    )
    await asyncio.to_thread(saving.close)
    saved = Snapshots(snapshot_dir, 10.0).list()  # replay()'s default tolerance
    log(f"  {len(saved)} snapshots at seq {', '.join(f'{s.seq:,}' for s in saved)}")
    from_snapshot, results.snapshot_mid = await measure_replay(
        "snapshots: replay to the mid-point", archive, results.facts.mid, timeout, snapshot_dir
    )
    await asyncio.to_thread(from_snapshot.close)
    if results.snapshot_mid.counts != results.mid.counts:
        raise BenchError("the replay from a snapshot differs from the replay from the start")
    later = [s for s in saved if s.recorded_at > results.facts.mid]
    if later:
        until = later[0].recorded_at - timedelta(milliseconds=1)
        far, results.snapshot_far = await measure_replay(
            "snapshots: replay to just before the next snapshot",
            archive,
            until,
            timeout,
            snapshot_dir,
        )
        await asyncio.to_thread(far.close)


async def measure_read(label: str, log_: EventLog, timeout: float) -> ReadFigure:
    """Iterate ``EventLog.messages()`` to the end, counting only."""
    log(f"{label} ...")

    async def read() -> tuple[int, int]:
        messages = batches = 0
        async with contextlib.aclosing(log_.messages()) as chunks:
            async for chunk in chunks:
                messages += len(chunk)
                batches += 1
        return messages, batches

    started = time.perf_counter()
    messages, batches = await within(read(), timeout, label)
    seconds = time.perf_counter() - started
    figure = ReadFigure(label, seconds, messages, batches)
    log(f"  {messages:,} messages in {seconds:.2f}s ({figure.rate:,.0f}/s)")
    return figure


def measure_query(
    name: str, run: Callable[[], pl.DataFrame], runs: int, describe: Callable[[pl.DataFrame], str]
) -> QueryFigure:
    times: list[float] = []
    frame = pl.DataFrame()
    for _ in range(runs):
        started = time.perf_counter()
        frame = run()
        times.append(time.perf_counter() - started)
    figure = QueryFigure(name, times, frame.height, describe(frame))
    log(f"  {name}: median {figure.median * 1000:.1f} ms ({frame.height:,} rows)")
    return figure


async def publish_log(nc: Client, archive_dir: Path, timeout: float) -> PublishFacts:
    """Publish the archive's messages, in order, into a fresh ``MEDIA_EVENTS``.

    Each message's ``Nats-Msg-Id`` is its archive sequence (not the event id, as sources use):
    the simulated feed holds exact re-deliveries, which JetStream would drop as duplicates
    inside its window, and the stream must hold the very log the archive holds.
    """
    await ensure_streams(nc.jetstream(timeout=10), Settings.from_env({}).nats_retention_days)

    def outgoing() -> Iterator[OutgoingMessage]:
        for segment in archive_segments(archive_dir):
            table = read_segment(segment.path)
            for seq, subject, data in zip(
                table.column("seq").to_pylist(),
                table.column("subject").to_pylist(),
                table.column("data").to_pylist(),
                strict=True,
            ):
                yield OutgoingMessage(subject, data, f"bench-{seq}")

    started = time.perf_counter()
    stats = await within(Publisher(nc).publish_many(outgoing()), timeout, "publishing")
    seconds = time.perf_counter() - started
    info = await nc.jetstream(timeout=10).stream_info(STREAM)
    return PublishFacts(stats.total, seconds, info.state.messages)


# --------------------------------------------------------------------------- profile


class Stages:
    """Self time per named stage. Stages nest (a stage's time excludes those timed inside
    it); the replay runs its stages one after another (the loop awaits each ``to_thread``),
    so one stack serves every thread."""

    def __init__(self) -> None:
        self.self_time: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[float]] = []
        self._lock = threading.Lock()
        self.untimed: list[str] = []  # calls the profile could not wrap

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        frame = [0.0]  # time spent in stages nested inside this one
        with self._lock:
            self._stack.append(frame)
        started = time.perf_counter()
        try:
            yield
        finally:
            total = time.perf_counter() - started
            with self._lock:
                self._stack.pop()
                self.self_time[name] += total - frame[0]
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][0] += total

    def wrap(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        def timed(*args: Any, **kwargs: Any) -> T:
            with self.stage(name):
                return fn(*args, **kwargs)

        return timed


class _GcTimer:
    """Cyclic GC pauses per generation, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = defaultdict(float)
        self.collections: dict[int, int] = defaultdict(int)
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.collections[generation] += 1


# What the DuckDB connection's statements are, for the profile's names.
# (Looked up leniently: the profile names what it could not time rather than break the bench
# when the store's internals change.)
_STATEMENT_STAGES = {
    getattr(store_module, constant, constant): stage
    for constant, stage in [
        ("DELETE_PLAYBACKS", "apply: delete touched playback rows"),
        ("SELECT_PRIOR_EVENTS", "apply: read back earlier events of touched playbacks"),
        ("UPDATE_CHECKPOINT", "apply: checkpoint row"),
        ("INSERT_CHECKPOINT", "apply: checkpoint row"),
    ]
}


class _TimedRelation:
    def __init__(self, relation: duckdb.DuckDBPyRelation, stages: Stages, name: str) -> None:
        self._relation = relation
        self._stages = stages
        self._name = name

    def insert_into(self, table: str) -> None:
        with self._stages.stage(f"apply: insert into {table}"):
            self._relation.insert_into(table)

    def pl(self) -> pl.DataFrame:
        with self._stages.stage(self._name):
            return self._relation.pl()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._relation, name)


class _TimedConnection:
    """The projection's connection, timing the statements of a batch's transaction."""

    def __init__(self, con: duckdb.DuckDBPyConnection, stages: Stages) -> None:
        self._con = con
        self._stages = stages

    def from_arrow(self, table: Any) -> _TimedRelation:
        return _TimedRelation(self._con.from_arrow(table), self._stages, "apply: from_arrow")

    def sql(self, query: str, **kwargs: Any) -> _TimedRelation:
        name = _STATEMENT_STAGES.get(query, "apply: other SQL")
        with self._stages.stage(name):
            relation = self._con.sql(query, **kwargs)
        return _TimedRelation(relation, self._stages, name)

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        name = _STATEMENT_STAGES.get(query)
        if name is None:
            return self._con.execute(query, *args, **kwargs)
        with self._stages.stage(name):
            return self._con.execute(query, *args, **kwargs)

    def begin(self) -> Any:
        with self._stages.stage("apply: begin + commit"):
            return self._con.begin()

    def commit(self) -> Any:
        with self._stages.stage("apply: begin + commit"):
            return self._con.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


# Per-batch calls of the replay timed by the profile: (where the name is looked up, the
# name, the stage it is counted in).
_TIMED_CALLS: list[tuple[Any, str, str]] = [
    (log_module, "read_segment", "read: Parquet segments"),
    (log_module, "_messages_of", "read: Message objects"),
    (replay_module, "decode_messages", "decode + validate"),
    (Pipeline, "project", "dedup: decide each event (Python)"),
    (Projection, "load_cold", "dedup: load cold keys"),
    (DedupIndex, "commit", "dedup: index commit + eviction"),
    (Projection, "apply", "apply: batch bookkeeping (Python)"),
    (Projection, "close", "close the DuckDB file"),
    (store_module, "media_events_frame", "apply: tracking columns (Python lists)"),
    (store_module, "parse_events", "apply: parse JSON payloads (polars)"),
    (store_module, "fold_playbacks", "apply: fold playbacks (polars)"),
    (store_module, "audit_table", "apply: audit rows (Python)"),
]


@contextlib.contextmanager
def instrumented(stages: Stages) -> Iterator[None]:
    """Timers around the replay's stages, in this process only, removed on exit.

    Per-batch calls are wrapped (reading, decoding, each part of ``Projection.apply``);
    the per-event dedup decisions are not (a timer per event would cost as much as they do):
    they are ``Pipeline.project``'s own time, the building of each ``Applied`` included.
    """
    patches: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, value: Any) -> None:
        patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    original_messages = EventLog.messages

    async def messages(self: EventLog, *args: Any, **kwargs: Any) -> AsyncIterator[list[Message]]:
        source = original_messages(self, *args, **kwargs)
        try:
            while True:
                with stages.stage("read: other (stream pulls, bounds)"):
                    try:
                        batch = await source.__anext__()
                    except StopAsyncIteration:
                        return
                yield batch
        finally:
            await source.aclose()

    original_projection = replay_module.Projection

    def projection(path: Path | str, **kwargs: Any) -> Projection:
        made = original_projection(path, **kwargs)
        made.con = _TimedConnection(made.con, stages)  # type: ignore[assignment]
        return made

    patch(EventLog, "messages", messages)
    if hasattr(replay_module, "Projection"):
        patch(replay_module, "Projection", projection)
    else:
        stages.untimed.append("the projection's DuckDB statements")
    for owner, name, stage in _TIMED_CALLS:
        if hasattr(owner, name):
            patch(owner, name, stages.wrap(stage, getattr(owner, name)))
        else:  # renamed since this bench was written: its time lands in the caller's stage
            stages.untimed.append(f"{getattr(owner, '__name__', owner)}.{name}")
    try:
        yield
    finally:
        for owner, name, value in reversed(patches):
            setattr(owner, name, value)


async def profile_replay(archive_dir: Path, timeout: float) -> Profile:
    """One more whole-log archive replay, with the stage timers and the GC timer on."""
    log("profile: whole-log archive replay with stage timers ...")
    stages = Stages()
    gc_timer = _GcTimer()
    gc.collect()
    gc.callbacks.append(gc_timer)
    try:
        with instrumented(stages):
            started = time.perf_counter()
            result = await within(
                replay(EventLog(archive_dir), progress=False), timeout, "the profiled replay"
            )
            seconds = time.perf_counter() - started
    finally:
        gc.callbacks.remove(gc_timer)
    messages = result.stats.messages
    await asyncio.to_thread(result.close)
    timed = sum(stages.self_time.values())
    stages.self_time["other (event loop, threads, prefix cut, Replay open)"] = seconds - timed
    log(f"  {seconds:.2f}s instrumented")
    return Profile(
        seconds=seconds,
        messages=messages,
        stages=dict(stages.self_time),
        calls=dict(stages.calls),
        gc_seconds=dict(gc_timer.seconds),
        gc_collections=dict(gc_timer.collections),
        untimed=stages.untimed,
    )


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    facts: LogFacts
    archive_read: ReadFigure
    mid: ReplayFigure
    whole: ReplayFigure
    concurrent: QueryFigure
    peak: QueryFigure
    publish: PublishFacts | None = None
    stream_read: ReadFigure | None = None
    stream: ReplayFigure | None = None
    profile: Profile | None = None
    peak_rss_mb: float | None = None
    peak_rss_scope: str = ""
    baseline_rss_mb: float | None = None  # RSS when the peak was reset, the log generated
    load_before: str = ""  # /proc/loadavg once the log is generated, and at the end
    load_after: str = ""
    snapshot_save: ReplayFigure | None = None  # whole log, saving snapshots every chunk
    snapshot_mid: ReplayFigure | None = None  # to the mid-point from the nearest snapshot
    snapshot_far: ReplayFigure | None = None  # to just before the snapshot after that one


async def measure(args: argparse.Namespace, workdir: Path, server: EmbeddedServer) -> Results:
    archive_dir = workdir / "archive"
    facts = generate(args.events, args.days, archive_dir)
    log(
        f"  {facts.events:,} messages in {facts.segments} segments ({facts.archive_mb:,.0f} MB);"
        f" mid-point seq {facts.mid_seq:,} recorded {facts.mid.isoformat()}"
    )
    scope = "the replays and queries (reset after generating the log)"
    load_before = load_average()
    baseline = memory_kb("VmRSS")
    if not reset_peak_rss():
        scope = "the whole bench process, generating the log included (no clear_refs)"
    archive = EventLog(archive_dir)
    archive_read = await measure_read("archive: EventLog.messages() alone", archive, args.timeout)

    mid_replay, mid = await measure_replay(
        "archive: replay to the mid-point", archive, facts.mid, args.timeout
    )
    try:
        log(f"queries on the mid-point replay ({args.query_runs} runs each)")
        concurrent = measure_query(
            "concurrent_streams",
            lambda: concurrent_streams(mid_replay, until=facts.mid),
            args.query_runs,
            lambda frame: f"{frame.height:,} changes, peak {frame['streams'].max()}",
        )
        peak = measure_query(
            "max_concurrent_streams",
            lambda: max_concurrent_streams(mid_replay, until=facts.mid),
            args.query_runs,
            lambda frame: f"{frame['streams'].item()} streams at {frame['at'].item()}",
        )
    finally:
        await asyncio.to_thread(mid_replay.close)
    whole_replay, whole = await measure_replay(
        "archive: replay of the whole log", archive, None, args.timeout
    )
    await asyncio.to_thread(whole_replay.close)
    results = Results(facts, archive_read, mid, whole, concurrent, peak, peak_rss_scope=scope)
    await measure_snapshots(results, archive, workdir / "snapshots", args.timeout)
    results.baseline_rss_mb = baseline / 1024 if baseline is not None else None
    results.load_before = load_before

    if not args.no_jetstream:
        nc = await nats.connect(server.url, connect_timeout=5, allow_reconnect=False)
        try:
            log(f"publishing the log into {STREAM} (not a figure) ...")
            results.publish = await publish_log(nc, archive_dir, args.timeout)
            log(
                f"  {results.publish.stream_messages:,} stored in {results.publish.seconds:.1f}s"
                f" ({results.publish.messages / results.publish.seconds:,.0f}/s)"
            )
            if results.publish.stream_messages != facts.events:
                raise BenchError(
                    f"{STREAM} holds {results.publish.stream_messages:,} messages, expected "
                    f"{facts.events:,}"
                )
            stream = EventLog(nc=nc)
            results.stream_read = await measure_read(
                "JetStream: EventLog.messages() alone", stream, args.timeout
            )
            stream_replay, results.stream = await measure_replay(
                "JetStream: replay of the whole log", stream, None, args.timeout
            )
            await asyncio.to_thread(stream_replay.close)
        finally:
            await nc.close()

    peaks = [f.peak_rss_mb for f in (mid, whole, results.stream) if f and f.peak_rss_mb]
    if scope.startswith("the replays"):
        results.peak_rss_mb = max(peaks, default=None)
    else:
        hwm = memory_kb()
        results.peak_rss_mb = hwm / 1024 if hwm is not None else None
    if args.profile:
        results.profile = await profile_replay(archive_dir, args.timeout)
    results.load_after = load_average()
    return results


# --------------------------------------------------------------------------- report


def report(env: dict[str, str], r: Results) -> tuple[list[str], dict[str, Any]]:
    f = r.facts
    details = [
        "details:",
        f"  log: {f.events:,} events ({f.users:,} users x {f.days} days, seed {SEED};"
        f" the simulator made {f.simulated:,}, the first {f.events:,} in publish order kept),"
        f" recorded {f.first_recorded:%Y-%m-%d %H:%M} .. {f.last_recorded:%Y-%m-%d %H:%M} UTC;"
        f" {f.segments} archive segments, {f.archive_mb:,.0f} MB; generated in"
        f" {f.simulate_seconds:.1f}s + written in {f.write_seconds:.1f}s (not figures)",
        f"  mid-point: {f.mid.isoformat()} (recorded clock), the recorded_at of message"
        f" {f.mid_seq:,}",
        _read_line(r.archive_read),
        _replay_line(r.mid),
        _replay_line(r.whole),
    ]
    if r.stream_read is not None and r.stream is not None and r.publish is not None:
        same = r.stream.counts == r.whole.counts
        details += [
            f"  JetStream: {r.publish.stream_messages:,} messages published in"
            f" {r.publish.seconds:.1f}s (not a figure; Nats-Msg-Id = archive sequence)",
            _read_line(r.stream_read),
            _replay_line(r.stream),
            "  JetStream replay gives the same counts as the archive replay: "
            + ("yes" if same else f"NO ({r.stream.counts} vs {r.whole.counts})"),
        ]
    for query in (r.concurrent, r.peak):
        runs = ", ".join(f"{t * 1000:.1f}" for t in query.runs)
        details.append(f"  {query.name}(until=mid-point): {query.answer}; runs (ms): {runs}")
    details.append(
        f"  peak RSS: VmHWM over {r.peak_rss_scope}; RSS before the replays (modules loaded,"
        f" the log generated and freed) {_mb(r.baseline_rss_mb)} MB"
    )
    details.append(
        f"  load average (1, 5, 15 min) before the replays {r.load_before}, at the end"
        f" {r.load_after}" + _load_note(r.load_before, r.load_after, env["cores"])
    )
    if r.profile is not None:
        details += _profile_lines(r.profile)

    figures = [
        f"events: {f.events:,}",
        f"archive replay to mid-point: {r.mid.seconds:.2f} s"
        f"   ({r.mid.messages:,} messages, {r.mid.rate:,.0f} events/s)",
        f"projected at mid-point: {r.mid.counts['accepted']:,} events,"
        f" {r.mid.counts['playbacks']:,} playbacks",
        f"archive replay of whole log: {r.whole.seconds:.2f} s   ({r.whole.rate:,.0f} events/s)",
        f"concurrent_streams query: {r.concurrent.median:.3f} s   (median of"
        f" {len(r.concurrent.runs)})",
        f"max_concurrent_streams query: {r.peak.median:.3f} s   (median of {len(r.peak.runs)})",
    ]
    if r.stream is not None and r.stream_read is not None:
        figures += [
            f"JetStream replay of whole log: {r.stream.rate:,.0f} events/s"
            f"   ({r.stream.seconds:.2f} s)",
            f"JetStream read alone: {r.stream_read.rate:,.0f} events/s",
        ]
    if r.snapshot_mid is not None and r.snapshot_save is not None:
        figures.append(
            f"snapshots: whole-log replay saving them: {r.snapshot_save.seconds:.2f} s;"
            f" replay to mid-point from one: {r.snapshot_mid.seconds:.2f} s"
            f"   ({r.snapshot_mid.messages:,} messages after it)"
        )
    if r.snapshot_far is not None:
        figures.append(
            f"snapshots: replay to just before the next one: {r.snapshot_far.seconds:.2f} s"
            f"   ({r.snapshot_far.messages:,} messages after the snapshot)"
        )
    figures.append(f"peak RSS: {_mb(r.peak_rss_mb)} MB")
    verdicts = {
        "replay": r.mid.seconds < TARGET_REPLAY_S,
        **(
            {"replay from a snapshot": r.snapshot_mid.seconds < TARGET_REPLAY_S}
            if r.snapshot_mid is not None
            else {}
        ),
        "query": max(r.concurrent.median, r.peak.median) < TARGET_QUERY_S,
    }
    if r.stream is not None:
        verdicts["jetstream"] = r.stream.rate >= TARGET_JETSTREAM_RATE
    figures.append(
        f"target: replay < {TARGET_REPLAY_S:g} s, query < {TARGET_QUERY_S:g} s"
        + (f", JetStream >= {TARGET_JETSTREAM_RATE:,} events/s" if r.stream else "")
        + ": "
        + ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in verdicts.items())
    )
    data = {
        "environment": env,
        "events": f.events,
        "mid_point": f.mid.isoformat(),
        "archive_replay_mid_seconds": round(r.mid.seconds, 3),
        "archive_replay_mid_events_per_s": round(r.mid.rate, 1),
        "projected_mid": r.mid.counts,
        "archive_replay_whole_seconds": round(r.whole.seconds, 3),
        "snapshot_replay_mid_seconds": round(r.snapshot_mid.seconds, 3) if r.snapshot_mid else None,
        "snapshot_replay_far_seconds": round(r.snapshot_far.seconds, 3) if r.snapshot_far else None,
        "archive_replay_whole_events_per_s": round(r.whole.rate, 1),
        "concurrent_streams_seconds": round(r.concurrent.median, 4),
        "max_concurrent_streams_seconds": round(r.peak.median, 4),
        "jetstream_replay_events_per_s": round(r.stream.rate, 1) if r.stream else None,
        "jetstream_read_events_per_s": round(r.stream_read.rate, 1) if r.stream_read else None,
        "peak_rss_mb": round(r.peak_rss_mb, 1) if r.peak_rss_mb is not None else None,
        "load_average": {"before": r.load_before, "after": r.load_after},
        "target": {
            "replay_seconds": TARGET_REPLAY_S,
            "query_seconds": TARGET_QUERY_S,
            "jetstream_events_per_s": TARGET_JETSTREAM_RATE,
            "met": verdicts,
        },
        "log": asdict(f),
        "archive_read": asdict(r.archive_read),
        "mid": asdict(r.mid),
        "whole": asdict(r.whole),
        "queries": [asdict(r.concurrent), asdict(r.peak)],
        "publish": asdict(r.publish) if r.publish else None,
        "stream_read": asdict(r.stream_read) if r.stream_read else None,
        "stream": asdict(r.stream) if r.stream else None,
        "profile": asdict(r.profile) if r.profile else None,
    }
    return [*details, "", *figures], data


def _read_line(figure: ReadFigure) -> str:
    return (
        f"  {figure.label}: {figure.messages:,} messages in {figure.batches:,} batches,"
        f" {figure.seconds:.2f}s, {figure.rate:,.0f} messages/s"
    )


def _replay_line(figure: ReplayFigure) -> str:
    c = figure.counts
    return (
        f"  {figure.label}: {figure.seconds:.2f}s ({figure.build_seconds:.2f}s building,"
        f" the rest opening the Replay), {figure.cpu_seconds:.2f}s CPU;"
        f" read {figure.messages:,} to seq {figure.last_seq:,}, projected {figure.projected:,}"
        f" ({figure.rejected:,} rejected): {c['accepted']:,} events, {c['playbacks']:,}"
        f" playbacks, {c['dropped_event_id']:,} + {c['dropped_session_key']:,} dropped"
        f" (event id + session key), {c['linked']:,} linked; peak RSS"
        f" {_mb(figure.peak_rss_mb)} MB"
    )


def _profile_lines(p: Profile) -> list[str]:
    lines = [
        f"  profile of one more whole-log archive replay ({p.messages:,} messages,"
        f" {p.seconds:.2f}s with the timers on); self time per stage, largest first:"
    ]
    for name, seconds in sorted(p.stages.items(), key=lambda kv: -kv[1]):
        share = 100 * seconds / p.seconds if p.seconds else 0.0
        per_event = 1e6 * seconds / p.messages if p.messages else 0.0
        calls = p.calls.get(name)
        lines.append(
            f"    {name:<58} {seconds:7.2f}s {share:5.1f}% {per_event:6.2f} us/event"
            + (f"  ({calls:,} calls)" if calls else "")
        )
    total_gc = sum(p.gc_seconds.values())
    per_gen = ", ".join(
        f"gen{g} {p.gc_collections.get(g, 0):,} x {p.gc_seconds.get(g, 0.0):.2f}s"
        for g in sorted(p.gc_collections)
    )
    lines.append(
        f"    of which cyclic GC pauses (inside the stages above): {total_gc:.2f}s"
        f" ({100 * total_gc / p.seconds if p.seconds else 0:.1f}%): {per_gen or 'none'}"
    )
    if p.untimed:
        lines.append(
            "    not found, so not timed apart (their time is in their callers' stages): "
            + ", ".join(p.untimed)
        )
    return lines


def _load_note(before: str, after: str, cores: str) -> str:
    try:
        busiest = max(float(v) for v in (before.split() + after.split())[::3])
        busy = busiest > float(cores)  # the bench itself accounts for about 1
    except ValueError:
        return ""
    if not busy:
        return ""
    return (
        f": {busiest:.1f} runnable on {cores} cores, other work shared them (compare each"
        " replay's CPU seconds with its wall seconds)"
    )


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/replay.py",
        description="Time the workbench's replay of an archived simulated log (and through "
        "JetStream), and a concurrent-streams query on the mid-point replay.",
    )
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="events in the log (default 1000000)"
    )
    parser.add_argument(
        "--days", type=int, default=DAYS, help=f"days the simulated feed spans (default {DAYS})"
    )
    parser.add_argument(
        "--query-runs",
        type=int,
        default=5,
        help="runs of each query; the median is the figure (default 5)",
    )
    parser.add_argument(
        "--no-jetstream",
        action="store_true",
        help="skip publishing into JetStream and the JetStream figures",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more whole-log archive replay with stage timers; breakdown in the details",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1200.0,
        help="seconds each phase may take before the bench gives up (default 1200)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.events < 2:
        parser.error("--events must be at least 2")
    if args.days < 1:
        parser.error("--days must be at least 1")
    if args.query_runs < 1:
        parser.error("--query-runs must be at least 1")
    return args


def run(args: argparse.Namespace) -> int:
    env = versions()
    print(
        f"bench/replay.py: {env['cores']} cores ({env['cpu']}), python {env['python']}, "
        f"duckdb {env['duckdb']}, polars {env['polars']}, pyarrow {env['pyarrow']}, "
        f"nats-py {env['nats-py']}, {env['nats-server']}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    # the replays' DuckDB files go to the bench's directory too, not the system's temp
    previous_tempdir = tempfile.tempdir
    tempfile.tempdir = str(workdir)
    server = EmbeddedServer("127.0.0.1", free_port(), workdir / "nats")
    try:
        if not args.no_jetstream:
            server.start()
            log(f"nats-server at {server.url}, work directory {workdir}")
        else:
            log(f"work directory {workdir}")
        results = asyncio.run(measure(args, workdir, server))
    finally:
        server.stop()
        tempfile.tempdir = previous_tempdir
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    lines, data = report(env, results)
    print("\n".join(lines), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
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
