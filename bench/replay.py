"""Time-travel benchmark: the projection as of an instant, against rebuilding it.

Time travel used to re-run the whole write path up to the instant; it is now answered from
the projection with set-based queries (``ingestor.projection.asof``). What is measured, in
one run, on ``--events`` simulated events archived as segments:

1. **baseline** (the old design, still the verification path): a from-scratch rebuild of the
   log's prefix up to the mid-point (the ``recorded_at`` of the middle message) into a new
   DuckDB file, ``await rebuild(EventLog(archive), Projection(path), tolerance=10.0,
   until_recorded=mid)``, in this process.
2. **rebuild** of the whole log as a user runs it: ``python -m ingestor.cli replay --output
   DATA/analytics.duckdb`` in a subprocess (``ARCHIVE_DIR`` = the archive, ``NATS_URL`` = the
   bench's own nats-server, so the CLI starts none); wall time from spawn to exit, events/s,
   and its peak RSS (``VmHWM`` polled every 0.1 s, and ``ru_maxrss`` of the reaped child).
3. **as-of latency**: ``open_data_dir(DATA)`` (file mode: that rebuilt file beside the
   archive), then ``await wb.as_of(T, clock)`` and closing the answer, at 10 instants on each
   clock (recorded: the ``recorded_at`` of messages at 5 %, 15 %, ... 95 % of the log by
   sequence; occurred: 5 %, 15 %, ... 95 % of the span of ``occurred_at``); median and
   worst per clock. Then one more answer as of the mid-point, checked against the baseline
   (counts and every playback row), and one ``concurrent_streams(answer.con, until=mid)``.
4. **time slider move**: ``TimeSlider(wb, start, end, step=15 min, clock)`` and ``await
   slider.show_at(T)`` at the same instants: what a move in the time_travel notebook runs
   (as-of, ``active_at``, concurrent streams, the chart rendered offline to SVG).
5. **workbench replay from the log alone** (no file): ``replay(EventLog(archive), mid)``,
   whose first call projects the log in this process (events/s, and this process's peak RSS,
   ``VmHWM`` reset before with ``clear_refs``), then a second call at another instant, which
   answers without projecting.

The last lines printed are the figures (``name: value unit``); ``--json`` writes them, with the
details, as JSON. The exit status is 0 whenever the measurement completed, targets met or
not, and 1 when something failed.

Run from the project root: ``.venv/bin/python bench/replay.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl
import pyarrow as pa

# bench/ is the script's directory, so its sibling is importable: one set of helpers
from ingest import BenchError, child_env, free_port, log, spawn, stop_child, tail
from ingest import memory_kb as process_memory_kb
from ingest import versions as ingest_versions
from move_profile import MoveBreakdown, breakdown_line, profile_move

from ingestor.archive import Archiver, archive_segments
from ingestor.errors import IngestorError
from ingestor.nats.server import EmbeddedServer
from ingestor.projection import Projection
from ingestor.rebuild import rebuild
from ingestor.simulation import SimulationConfig, simulate
from workbench.api import open_data_dir
from workbench.errors import WorkbenchError
from workbench.log import EventLog
from workbench.replay import Replay, archive_events, replay
from workbench.stats import concurrent_streams
from workbench.widgets import MAX_SLIDER_STEPS, SliderView, TimeSlider

T = TypeVar("T")

TARGET_AS_OF_S = 1.0  # any instant, either clock
TARGET_SLIDER_S = 1.0  # one slider move
TARGET_REBUILD_RATE = 100_000  # events/s, `ingestor replay` of the whole log
TARGET_RSS_MB = 1024  # its peak RSS (MB = 2^20 bytes)
TOLERANCE = 10.0  # the product default (DEDUP_TOLERANCE, replay(), open_data_dir)
INSTANTS = 10  # per clock
SLIDER_STEP = timedelta(minutes=15)
DAYS = 30
SEED = 7
# The simulator makes 19-20 events per user-day; sizing with 19 gives at least --events
# from a few thousand up, and the feed is cut to exactly --events.
EVENTS_PER_USER_DAY = 19
# The archiver's own segment limits (its defaults), so the archive looks like a real one.
_ARCHIVER_DEFAULTS = inspect.signature(Archiver.__init__).parameters
SEGMENT_MAX_MESSAGES: int = _ARCHIVER_DEFAULTS["segment_max_messages"].default
SEGMENT_MAX_BYTES: int = _ARCHIVER_DEFAULTS["segment_max_bytes"].default
MiB = 1024 * 1024
POLL_S = 0.1
# the CLI's last line: "replayed N messages (A events applied, R undecodable) up to seq S
# into PATH in X.Ys: P playbacks"
CLI_REPORT = re.compile(
    r"replayed (?P<messages>[\d,]+) messages \((?P<applied>[\d,]+) events applied, "
    r"(?P<rejected>[\d,]+) undecodable\) up to seq (?P<last_seq>[\d,]+) into .* "
    r"in (?P<seconds>[\d.]+)s: (?P<playbacks>[\d,]+) playbacks"
)


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


def _mb(kb: int | float | None) -> float | None:
    return kb / 1024 if kb is not None else None


def _fmt_mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _floor(instant: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((instant - epoch) // step) * step


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
    first_occurred: datetime
    last_occurred: datetime
    recorded_instants: list[tuple[int, datetime]]  # (seq, its recorded_at)
    occurred_instants: list[datetime]
    simulate_seconds: float
    write_seconds: float


@dataclass
class Baseline:
    """The from-scratch rebuild of the log's prefix up to the mid-point."""

    seconds: float  # Projection(path) + await rebuild(...)
    close_seconds: float
    messages: int
    projected: int
    rejected: int
    last_seq: int
    counts: dict[str, int]
    cpu_seconds: float
    peak_rss_mb: float | None
    file_mb: float
    load: str

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class CliRebuild:
    """``ingestor replay --output`` of the whole log, in a subprocess."""

    seconds: float  # spawn to exit
    own_seconds: float | None  # what the CLI reports (replay_command: NATS, rebuild, close)
    messages: int
    applied: int
    rejected: int
    last_seq: int
    playbacks: int
    exit_code: int
    peak_rss_mb: float | None  # max of the polled VmHWM and ru_maxrss
    polled_hwm_mb: float | None
    ru_maxrss_mb: float | None
    cpu_seconds: float  # user + system of the child
    file_mb: float
    load: str

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Call:
    """One timed call at one instant."""

    clock: str
    instant: datetime
    seconds: float
    last_seq: int
    refolded: int  # stats.playbacks_refolded
    as_of_seconds: float  # stats.as_of_seconds: the answer's own SQL and refold
    playbacks: int = 0  # as-of: playbacks in the answer; slider: active at the instant
    streams_rows: int = 0  # slider: rows of the concurrent-streams frame


@dataclass
class Series:
    """The calls of one clock."""

    clock: str
    calls: list[Call] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [c.seconds for c in self.calls]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def worst(self) -> float:
        return max(self.times)


@dataclass
class MidCheck:
    """The as-of answer at the mid-point, against the baseline's file."""

    as_of_seconds: float
    counts: dict[str, int]
    baseline_counts: dict[str, int]
    playbacks_equal: bool
    playbacks_differing: int  # rows in one frame and not in the other
    concurrent_seconds: float
    concurrent_rows: int
    concurrent_peak: int | None

    @property
    def equal(self) -> bool:
        return self.counts == self.baseline_counts and self.playbacks_equal


@dataclass
class LogReplay:
    """``workbench.replay.replay`` from the log alone."""

    first_seconds: float
    first_messages: int
    first_as_of_seconds: float
    first_counts: dict[str, int]
    first_peak_rss_mb: float | None
    rss_before_mb: float | None
    first_cpu_seconds: float
    second_instant: datetime
    second_seconds: float
    second_messages: int
    load: str

    @property
    def rate(self) -> float:
        if self.first_seconds <= 0:
            return float("nan")
        return self.first_messages / self.first_seconds


@dataclass
class Results:
    facts: LogFacts
    baseline: Baseline
    cli: CliRebuild
    as_of: list[Series]
    mid_check: MidCheck
    slider: list[Series]
    slider_range: tuple[datetime, datetime, int]  # start, end, positions
    breakdown: list[MoveBreakdown]
    log_replay: LogReplay
    loads: dict[str, str]


# --------------------------------------------------------------------------- generate


def generate(events: int, days: int, archive_dir: Path) -> LogFacts:
    """Simulate the feed and write its first ``events`` events as archive segments with
    ``workbench.replay.archive_events`` (``recorded_at`` when the simulator's ingestor
    received it), segments cut at the archiver's defaults."""
    users = max(1, math.ceil(events / (EVENTS_PER_USER_DAY * days)))
    log(f"simulating ~{events:,} events ({users:,} users x {days} days, seed {SEED})")
    started = time.perf_counter()
    sim = simulate(SimulationConfig(seed=SEED, users=users, days=days))
    simulate_seconds = time.perf_counter() - started
    feed = sim.events[:events]
    received = sim.received[:events]
    simulated = len(sim.events)
    del sim
    if len(feed) < events:
        log(f"  note: the simulator made {len(feed):,} events, fewer than the {events:,} asked")
    count = len(feed)
    if count < 2:
        raise BenchError(f"the simulator made {count} events; the bench needs at least 2")
    log(f"  {simulated:,} simulated in {simulate_seconds:.1f}s; writing {count:,} to segments")
    started = time.perf_counter()
    archive_events(
        archive_dir,
        feed,
        segment_messages=SEGMENT_MAX_MESSAGES,
        segment_bytes=SEGMENT_MAX_BYTES,
        received=received,
    )
    write_seconds = time.perf_counter() - started
    mid_index = count // 2
    # the recorded clock's instants: messages at 5 %, 15 %, ... 95 % of the log by sequence
    wanted = {(count * (2 * i + 1)) // (2 * INSTANTS) + 1: i for i in range(INSTANTS)}
    recorded_instants: list[tuple[int, datetime]] = []
    mid = first = recorded = datetime.min.replace(tzinfo=UTC)
    first_occurred = last_occurred = feed[0].occurred_at
    for index, event in enumerate(feed):
        occurred = event.occurred_at
        recorded = max(recorded, received[index])  # as archive_events records it
        first_occurred = min(first_occurred, occurred)
        last_occurred = max(last_occurred, occurred)
        if index == 0:
            first = recorded
        if index == mid_index:
            mid = recorded
        if index + 1 in wanted:
            recorded_instants.append((index + 1, recorded))
    del feed, received
    gc.collect()
    span = last_occurred - first_occurred
    occurred_instants = [
        first_occurred + span * (2 * i + 1) / (2 * INSTANTS) for i in range(INSTANTS)
    ]
    segments = archive_segments(archive_dir)
    return LogFacts(
        events=count,
        users=users,
        days=days,
        simulated=simulated,
        segments=len(segments),
        archive_mb=sum(s.path.stat().st_size for s in segments) / MiB,
        mid_seq=mid_index + 1,
        mid=mid,
        first_recorded=first,
        last_recorded=recorded,
        first_occurred=first_occurred,
        last_occurred=last_occurred,
        recorded_instants=recorded_instants,
        occurred_instants=occurred_instants,
        simulate_seconds=simulate_seconds,
        write_seconds=write_seconds,
    )


def _file_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / MiB


# --------------------------------------------------------------------------- 1. baseline


async def measure_baseline(
    archive_dir: Path, path: Path, mid: datetime, timeout: float
) -> Baseline:
    log("baseline: from-scratch rebuild of the log's prefix up to the mid-point ...")
    load = load_average()
    reported = [0]

    def progress(done: int, total: int) -> None:
        if done - reported[0] >= 100_000:
            reported[0] = done
            log(f"  read {done:,} of at most {total:,} messages")

    gc.collect()
    peak_reset = reset_peak_rss()
    cpu_start = time.process_time()
    started = time.perf_counter()
    projection = await asyncio.to_thread(Projection, path)
    try:
        stats = await within(
            rebuild(
                EventLog(archive_dir),
                projection,
                tolerance=TOLERANCE,
                until_recorded=mid,
                progress=progress,
            ),
            timeout,
            "the baseline rebuild",
        )
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_start
        peak = memory_kb() if peak_reset else None
        counts = await asyncio.to_thread(projection.counts)
    finally:
        closing = time.perf_counter()
        await asyncio.to_thread(projection.close)
        close_seconds = time.perf_counter() - closing
    figure = Baseline(
        seconds=seconds,
        close_seconds=close_seconds,
        messages=stats.messages,
        projected=stats.projected,
        rejected=stats.rejected,
        last_seq=stats.last_seq,
        counts=counts,
        cpu_seconds=cpu,
        peak_rss_mb=_mb(peak),
        file_mb=_file_mb(path),
        load=load,
    )
    log(
        f"  {seconds:.2f}s ({figure.rate:,.0f} events/s) to seq {stats.last_seq:,}:"
        f" {counts['playbacks']:,} playbacks"
    )
    return figure


# --------------------------------------------------------------------------- 2. the CLI


def measure_cli(
    server: EmbeddedServer, archive_dir: Path, output: Path, workdir: Path, timeout: float
) -> CliRebuild:
    """``python -m ingestor.cli replay --output OUTPUT`` with the archive as ARCHIVE_DIR and
    the bench's nats-server as NATS_URL (NATS_EMBEDDED=false: the CLI starts no server, so
    its peak RSS is its own)."""
    home = workdir / "cli"
    env = child_env(
        {
            "DATA_DIR": str(home),
            "ARCHIVE_DIR": str(archive_dir),
            "NATS_URL": server.url,
            "NATS_EMBEDDED": "false",
            "NATS_STORE_DIR": str(home / "nats"),
            "DUCKDB_PATH": str(home / "unused.duckdb"),
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(free_port()),
            "LOG_LEVEL": "warning",
        }
    )
    home.mkdir(parents=True, exist_ok=True)
    log(f"rebuild: `python -m ingestor.cli replay --output {output}` ...")
    load = load_average()
    log_path = workdir / "cli-replay.log"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = spawn(
        [sys.executable, "-m", "ingestor.cli", "replay", "--output", str(output)], env, log_path
    )
    polled = 0
    try:
        deadline = time.monotonic() + timeout
        next_report = time.monotonic() + 10
        while proc.poll() is None:
            polled = max(polled, process_memory_kb(proc.pid) or 0)
            now = time.monotonic()
            if now > deadline:
                raise BenchError(
                    f"`ingestor replay` did not finish within {timeout:.0f}s:\n{tail(log_path)}"
                )
            if now >= next_report:
                running = time.perf_counter() - started
                log(f"  running for {running:.0f}s, VmHWM {polled / 1024:,.0f} MB")
                next_report = now + 10
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
    finally:
        stop_child(proc)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    code = proc.returncode
    if code != 0:
        raise BenchError(f"`ingestor replay` exited with {code}:\n{tail(log_path)}")
    text = log_path.read_text(errors="replace")
    found = CLI_REPORT.search(text)
    if found is None:
        raise BenchError(f"`ingestor replay` printed no report line:\n{tail(log_path)}")

    def number(name: str) -> int:
        return int(found[name].replace(",", ""))

    # ru_maxrss (kB on Linux) is the largest of the children reaped so far: the CLI, and
    # before it only `nats-server --version` (the bench's own server is reaped at the end)
    maxrss = after.ru_maxrss if after.ru_maxrss > before.ru_maxrss else None
    peaks = [v for v in (polled or None, maxrss) if v]
    figure = CliRebuild(
        seconds=seconds,
        own_seconds=float(found["seconds"]),
        messages=number("messages"),
        applied=number("applied"),
        rejected=number("rejected"),
        last_seq=number("last_seq"),
        playbacks=number("playbacks"),
        exit_code=code,
        peak_rss_mb=_mb(max(peaks)) if peaks else None,
        polled_hwm_mb=_mb(polled or None),
        ru_maxrss_mb=_mb(maxrss),
        cpu_seconds=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        file_mb=_file_mb(output),
        load=load,
    )
    log(
        f"  {seconds:.2f}s, {figure.rate:,.0f} events/s, peak RSS"
        f" {_fmt_mb(figure.peak_rss_mb)} MB, {figure.playbacks:,} playbacks"
    )
    return figure


# --------------------------------------------------------------------------- 3. as-of


def _instants(facts: LogFacts) -> list[tuple[str, list[datetime]]]:
    return [
        ("recorded", [at for _, at in facts.recorded_instants]),
        ("occurred", facts.occurred_instants),
    ]


async def measure_as_of(
    data_dir: Path, facts: LogFacts, baseline_path: Path, timeout: float
) -> tuple[list[Series], MidCheck]:
    """``wb.as_of(T, clock)`` + closing the answer, from the rebuilt file (file mode)."""
    wb = open_data_dir(data_dir, tolerance=TOLERANCE)
    try:
        if wb.mode != "file":
            raise BenchError(f"open_data_dir({data_dir}) is in {wb.mode!r} mode, not 'file'")
        series: list[Series] = []
        for clock, instants in _instants(facts):
            log(f"as-of, {clock} clock: wb.as_of(T) at {len(instants)} instants ...")
            line = Series(clock)
            for instant in instants:
                started = time.perf_counter()
                answer = await within(wb.as_of(instant, clock), timeout, "wb.as_of")
                seconds = time.perf_counter() - started
                playbacks = answer.counts()["playbacks"]  # not timed
                closing = time.perf_counter()
                answer.close()
                seconds += time.perf_counter() - closing
                line.calls.append(
                    Call(
                        clock,
                        instant,
                        seconds,
                        answer.last_seq,
                        answer.stats.playbacks_refolded,
                        answer.stats.as_of_seconds,
                        playbacks,
                    )
                )
            log(f"  median {line.median:.3f}s, worst {line.worst:.3f}s")
            series.append(line)
        log("as-of at the mid-point, against the baseline; concurrent_streams on it ...")
        started = time.perf_counter()
        answer = await within(wb.as_of(facts.mid, "recorded"), timeout, "wb.as_of")
        as_of_seconds = time.perf_counter() - started
        try:
            check = await asyncio.to_thread(_mid_check, answer, baseline_path, facts.mid)
        finally:
            answer.close()
        check.as_of_seconds = as_of_seconds
        log(
            f"  as-of == baseline: {'yes' if check.equal else 'NO'};"
            f" concurrent_streams {check.concurrent_seconds:.3f}s"
        )
        return series, check
    finally:
        await wb.close()


_PLAYBACK_ROWS = "SELECT * FROM playback_events ORDER BY correlation_key"


def _mid_check(answer: Replay, baseline_path: Path, mid: datetime) -> MidCheck:
    started = time.perf_counter()
    streams = concurrent_streams(answer.con, until=mid)
    concurrent_seconds = time.perf_counter() - started
    counts = answer.counts()
    mine = answer.con.sql(_PLAYBACK_ROWS).pl()
    con = duckdb.connect(str(baseline_path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        theirs = con.sql(_PLAYBACK_ROWS).pl()
        baseline_counts = Projection.over(con).counts()
    finally:
        con.close()
    equal = mine.columns == theirs.columns and mine.equals(theirs)
    differing = 0
    if not equal and mine.columns == theirs.columns:
        keys = [c for c in mine.columns if mine.schema[c] != pl.List(pl.String)]
        differing = mine.join(theirs, on=keys, how="anti", nulls_equal=True).height
        differing += theirs.join(mine, on=keys, how="anti", nulls_equal=True).height
    elif not equal:
        differing = max(mine.height, theirs.height)
    return MidCheck(
        as_of_seconds=0.0,
        counts=counts,
        baseline_counts=baseline_counts,
        playbacks_equal=equal,
        playbacks_differing=differing,
        concurrent_seconds=concurrent_seconds,
        concurrent_rows=streams.height,
        concurrent_peak=int(streams["streams"].max()) if streams.height else None,
    )


# --------------------------------------------------------------------------- 4. slider


async def measure_slider(
    data_dir: Path, facts: LogFacts, timeout: float
) -> tuple[list[Series], tuple[datetime, datetime, int]]:
    """``await slider.show_at(T)`` on a ``TimeSlider`` over the file-mode Workbench."""
    every = [at for _, instants in _instants(facts) for at in instants]
    start, end = _floor(min(every), SLIDER_STEP), max(every)
    positions = int((end - start) / SLIDER_STEP) + 1
    wb = open_data_dir(data_dir, tolerance=TOLERANCE)
    series: list[Series] = []
    try:
        for clock, instants in _instants(facts):
            log(f"time slider, {clock} clock: show_at(T) at {len(instants)} instants ...")
            slider = TimeSlider(
                wb, start=start, end=end, step=SLIDER_STEP, clock=clock, tolerance=TOLERANCE
            )
            line = Series(clock)
            try:
                for instant in instants:
                    started = time.perf_counter()
                    shown = await within(slider.show_at(instant), timeout, "slider.show_at")
                    seconds = time.perf_counter() - started
                    if shown is None:
                        raise BenchError(f"slider.show_at({instant}) drew nothing")
                    view = slider.view_result
                    active = view.active.height if isinstance(view, SliderView) else 0
                    rows = view.streams.height if isinstance(view, SliderView) else 0
                    line.calls.append(
                        Call(
                            clock,
                            instant,
                            seconds,
                            shown.last_seq,
                            shown.stats.playbacks_refolded,
                            shown.stats.as_of_seconds,
                            active,
                            rows,
                        )
                    )
            finally:
                slider.close()
            log(f"  median {line.median:.3f}s, worst {line.worst:.3f}s")
            series.append(line)
        breakdown = []
        for line in series:
            slowest = max(line.calls[1:] or line.calls, key=lambda c: c.seconds)  # warm moves
            breakdown.append(
                await profile_move(
                    wb,
                    slowest.instant,
                    slowest.clock,  # type: ignore[arg-type]
                    slowest.seconds,
                    tolerance=TOLERANCE,
                    step=SLIDER_STEP,
                )
            )
    finally:
        await wb.close()
    return series, (start, end, positions), breakdown


# --------------------------------------------------------------------------- 5. replay()


async def measure_log_replay(
    archive_dir: Path, facts: LogFacts, baseline: Baseline, timeout: float
) -> LogReplay:
    """``replay(EventLog(archive), T)``: the first call projects the whole log in this
    process, a second one at another instant answers from that projection."""
    log("workbench replay from the log alone: first call (projects the log) ...")
    load = load_average()
    event_log = EventLog(archive_dir)
    gc.collect()
    rss_before = memory_kb("VmRSS")
    peak_reset = reset_peak_rss()
    cpu_start = time.process_time()
    started = time.perf_counter()
    first = await within(
        replay(event_log, facts.mid, "recorded", progress=False, tolerance=TOLERANCE),
        timeout,
        "the first replay()",
    )
    first_seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_start
    peak = memory_kb() if peak_reset else None
    try:
        counts = await asyncio.to_thread(first.counts)
    finally:
        first.close()
    if counts != baseline.counts:
        log(f"  note: replay(mid) counts {counts} differ from the baseline's {baseline.counts}")
    log(f"  {first_seconds:.2f}s ({first.stats.messages:,} messages projected)")
    second_instant = facts.recorded_instants[1][1]
    started = time.perf_counter()
    second = await within(
        replay(event_log, second_instant, "recorded", progress=False, tolerance=TOLERANCE),
        timeout,
        "the second replay()",
    )
    second_seconds = time.perf_counter() - started
    second.close()
    log(f"  second call {second_seconds:.3f}s ({second.stats.messages:,} messages projected)")
    figure = LogReplay(
        first_seconds=first_seconds,
        first_messages=first.stats.messages,
        first_as_of_seconds=first.stats.as_of_seconds,
        first_counts=counts,
        first_peak_rss_mb=_mb(peak),
        rss_before_mb=_mb(rss_before),
        first_cpu_seconds=cpu,
        second_instant=second_instant,
        second_seconds=second_seconds,
        second_messages=second.stats.messages,
        load=load,
    )
    await event_log.close()
    del event_log, first, second
    gc.collect()  # the log's projection (a temporary directory) goes with the log
    return figure


# --------------------------------------------------------------------------- the run


async def measure(args: argparse.Namespace, workdir: Path, server: EmbeddedServer) -> Results:
    data_dir = workdir / "data"
    archive_dir = data_dir / "archive"
    loads = {"start": load_average()}
    facts = generate(args.events, args.days, archive_dir)
    log(
        f"  {facts.events:,} messages in {facts.segments} segments ({facts.archive_mb:,.0f} MB);"
        f" mid-point seq {facts.mid_seq:,} recorded {facts.mid.isoformat()}"
    )
    baseline_path = workdir / "baseline.duckdb"
    baseline = await measure_baseline(archive_dir, baseline_path, facts.mid, args.timeout)
    output = data_dir / "analytics.duckdb"
    cli = await asyncio.to_thread(measure_cli, server, archive_dir, output, workdir, args.timeout)
    if cli.messages != facts.events or cli.last_seq != facts.events:
        raise BenchError(
            f"`ingestor replay` read {cli.messages:,} messages to seq {cli.last_seq:,}; the log"
            f" holds {facts.events:,}"
        )
    loads["as-of"] = load_average()
    as_of, mid_check = await measure_as_of(data_dir, facts, baseline_path, args.timeout)
    loads["slider"] = load_average()
    slider, slider_range, breakdown = await measure_slider(data_dir, facts, args.timeout)
    log_replay = await measure_log_replay(archive_dir, facts, baseline, args.timeout)
    loads["end"] = load_average()
    return Results(
        facts, baseline, cli, as_of, mid_check, slider, slider_range, breakdown, log_replay, loads
    )


# --------------------------------------------------------------------------- report


def _series_line(s: Series, what: str) -> str:
    times = ", ".join(f"{t:.3f}" for t in s.times)
    refolded = [c.refolded for c in s.calls]
    own = [c.as_of_seconds for c in s.calls]
    line = (
        f"  {what}, {s.clock} clock: seconds per instant {times};"
        f" playbacks refolded {min(refolded):,}..{max(refolded):,};"
        f" the answer's own SQL and refold (stats.as_of_seconds) {min(own):.3f}..{max(own):.3f}s"
    )
    if what == "as-of":
        sizes = [c.playbacks for c in s.calls]
        line += f"; playbacks in the answers {min(sizes):,}..{max(sizes):,}"
    else:
        active = [c.playbacks for c in s.calls]
        rows = [c.streams_rows for c in s.calls]
        line += (
            f"; active playbacks {min(active):,}..{max(active):,}, concurrent-streams rows"
            f" {min(rows):,}..{max(rows):,}; the first move (cold: chart engine) took"
            f" {s.times[0]:.3f}s"
        )
    return line


def _instants_line(s: Series) -> str:
    return f"  {s.clock} instants: " + ", ".join(f"{c.instant:%m-%d %H:%M}" for c in s.calls)


def report(env: dict[str, str], r: Results) -> tuple[list[str], dict[str, Any]]:
    f, b, cli, m, lr = r.facts, r.baseline, r.cli, r.mid_check, r.log_replay
    as_of = {s.clock: s for s in r.as_of}
    slider_times = [t for s in r.slider for t in s.times]
    slider_median, slider_worst = statistics.median(slider_times), max(slider_times)
    start, end, positions = r.slider_range
    details = [
        "details:",
        f"  log: {f.events:,} events ({f.users:,} users x {f.days} days, seed {SEED};"
        f" the simulator made {f.simulated:,}, the first {f.events:,} in publish order kept);"
        f" recorded {f.first_recorded:%Y-%m-%d %H:%M} .. {f.last_recorded:%Y-%m-%d %H:%M} UTC,"
        f" occurred {f.first_occurred:%Y-%m-%d %H:%M} .. {f.last_occurred:%Y-%m-%d %H:%M};"
        f" {f.segments} archive segments, {f.archive_mb:,.0f} MB; generated in"
        f" {f.simulate_seconds:.1f}s + written in {f.write_seconds:.1f}s (not figures)",
        f"  mid-point: {f.mid.isoformat()} (recorded clock), the recorded_at of message"
        f" {f.mid_seq:,}",
        f"  baseline: rebuild(until_recorded=mid) read {b.messages:,} messages to seq"
        f" {b.last_seq:,} ({b.rate:,.0f} events/s, {b.cpu_seconds:.1f}s CPU), projected"
        f" {b.projected:,} ({b.rejected:,} rejected): {b.counts['accepted']:,} events,"
        f" {b.counts['playbacks']:,} playbacks; closing the file {b.close_seconds:.2f}s more"
        f" ({b.file_mb:,.0f} MB); this process's peak RSS {_fmt_mb(b.peak_rss_mb)} MB;"
        f" load {b.load}",
        f"  ingestor replay: {cli.seconds:.2f}s spawn to exit ({cli.own_seconds:.1f}s by its"
        f" own report), {cli.cpu_seconds:.1f}s CPU; {cli.messages:,} messages to seq"
        f" {cli.last_seq:,}, {cli.applied:,} applied, {cli.rejected:,} undecodable,"
        f" {cli.playbacks:,} playbacks; file {cli.file_mb:,.0f} MB; peak RSS: VmHWM polled"
        f" {_fmt_mb(cli.polled_hwm_mb)} MB, ru_maxrss {_fmt_mb(cli.ru_maxrss_mb)} MB"
        f" (NATS_URL = the bench's nats-server, so no server is in it); load {cli.load}",
        _instants_line(as_of["recorded"]),
        _instants_line(as_of["occurred"]),
        *[_series_line(s, "as-of") for s in r.as_of],
        f"  as-of at the mid-point: {m.as_of_seconds:.3f}s; equals the baseline's from-scratch"
        " file: "
        + (
            "yes (counts and every playback row)"
            if m.equal
            else f"NO (counts {m.counts} vs {m.baseline_counts}; {m.playbacks_differing:,}"
            " playback rows differ)"
        ),
        f"  concurrent_streams(answer.con, until=mid): {m.concurrent_seconds:.3f}s,"
        f" {m.concurrent_rows:,} change points, peak {m.concurrent_peak}",
        f"  time slider: {positions:,} positions {start:%m-%d %H:%M} .. {end:%m-%d %H:%M} UTC"
        f" every {SLIDER_STEP}; Workbench in file mode",
        *[_series_line(s, "slider") for s in r.slider],
        *[breakdown_line(x) for x in r.breakdown],
        f"  replay(EventLog(archive), mid): first call {lr.first_seconds:.2f}s projecting"
        f" {lr.first_messages:,} messages ({lr.rate:,.0f} events/s, {lr.first_cpu_seconds:.1f}s"
        f" CPU; answering {lr.first_as_of_seconds:.3f}s of it), counts "
        + (
            "= the baseline's"
            if lr.first_counts == b.counts
            else f"{lr.first_counts} (NOT the baseline's)"
        )
        + f"; peak RSS {_fmt_mb(lr.first_peak_rss_mb)} MB (VmHWM reset at"
        f" {_fmt_mb(lr.rss_before_mb)} MB); second call at {lr.second_instant:%m-%d %H:%M}:"
        f" {lr.second_seconds:.3f}s, {lr.second_messages:,} messages projected; load {lr.load}",
        "  load average (1, 5, 15 min): "
        + "; ".join(f"{phase} {value}" for phase, value in r.loads.items())
        + f" on {env['cores']} cores",
    ]

    def ratio(series: Series) -> float:
        return b.seconds / series.median if series.median > 0 else float("inf")

    verdicts = {
        f"as-of < {TARGET_AS_OF_S:g} s": max(s.worst for s in r.as_of) < TARGET_AS_OF_S,
        f"slider < {TARGET_SLIDER_S:g} s": slider_worst < TARGET_SLIDER_S,
        f"rebuild >= {TARGET_REBUILD_RATE:,}/s": cli.rate >= TARGET_REBUILD_RATE,
        "RSS < 1 GB": cli.peak_rss_mb is not None and cli.peak_rss_mb < TARGET_RSS_MB,
    }
    figures = [
        f"events: {f.events:,}",
        f"baseline from-scratch replay to the mid-point: {b.seconds:.1f} s",
        *[
            f"as-of {s.clock} clock: median {s.median:.2f} s, worst {s.worst:.2f} s"
            f" ({ratio(s):,.0f}x faster than the baseline)"
            for s in r.as_of
        ],
        f"concurrent_streams on an as-of answer: {m.concurrent_seconds:.3f} s",
        f"time slider move: median {slider_median:.2f} s, worst {slider_worst:.2f} s",
        f"rebuild (ingestor replay): {cli.rate:,.0f} events/s, peak RSS"
        f" {_fmt_mb(cli.peak_rss_mb)} MB",
        f"workbench replay from the log: first call {lr.first_seconds:.1f} s"
        f" ({lr.rate:,.0f} events/s, peak RSS {_fmt_mb(lr.first_peak_rss_mb)} MB),"
        f" second call {lr.second_seconds:.2f} s",
        "as-of at the mid-point equals the baseline: " + ("yes" if m.equal else "NO"),
        "targets: "
        + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in verdicts.items()),
    ]
    data = {
        "environment": env,
        "events": f.events,
        "mid_point": f.mid.isoformat(),
        "baseline_seconds": round(b.seconds, 3),
        "as_of": {
            s.clock: {
                "median_seconds": round(s.median, 4),
                "worst_seconds": round(s.worst, 4),
                "baseline_ratio": round(ratio(s), 1),
            }
            for s in r.as_of
        },
        "concurrent_streams_seconds": round(m.concurrent_seconds, 4),
        "slider_median_seconds": round(slider_median, 4),
        "slider_worst_seconds": round(slider_worst, 4),
        "rebuild_events_per_s": round(cli.rate, 1),
        "rebuild_peak_rss_mb": round(cli.peak_rss_mb, 1) if cli.peak_rss_mb else None,
        "log_replay_first_seconds": round(lr.first_seconds, 3),
        "log_replay_events_per_s": round(lr.rate, 1),
        "log_replay_peak_rss_mb": round(lr.first_peak_rss_mb, 1) if lr.first_peak_rss_mb else None,
        "log_replay_second_seconds": round(lr.second_seconds, 4),
        "mid_point_equals_baseline": m.equal,
        "targets": {
            "as_of_seconds": TARGET_AS_OF_S,
            "slider_seconds": TARGET_SLIDER_S,
            "rebuild_events_per_s": TARGET_REBUILD_RATE,
            "rebuild_rss_mb": TARGET_RSS_MB,
            "met": verdicts,
        },
        "load_average": r.loads,
        "log": asdict(f),
        "baseline": asdict(b),
        "rebuild": asdict(cli),
        "as_of_calls": [asdict(s) for s in r.as_of],
        "mid_check": asdict(m),
        "slider_calls": [asdict(s) for s in r.slider],
        "slider_range": {"start": start, "end": end, "positions": positions},
        "slider_breakdown": [asdict(x) for x in r.breakdown],
        "log_replay": asdict(lr),
    }
    return [*details, "", *figures], data


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/replay.py",
        description="Time the projection as of an instant (as-of answers, slider moves) "
        "against a from-scratch rebuild, and `ingestor replay` of the whole log.",
    )
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="events in the log (default 1000000)"
    )
    parser.add_argument(
        "--days", type=int, default=DAYS, help=f"days the simulated feed spans (default {DAYS})"
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
    if args.events < 2 * INSTANTS:
        parser.error(f"--events must be at least {2 * INSTANTS}")
    # the slider spans the instants (about 90 % of the feed) every 15 minutes
    most_days = int(MAX_SLIDER_STEPS * SLIDER_STEP / timedelta(days=1) / 0.95) - 1
    if not 1 <= args.days <= most_days:
        parser.error(f"--days must be between 1 and {most_days} (the slider's positions)")
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
    # the workbench's temporary projection goes to the bench's directory too
    previous_tempdir = tempfile.tempdir
    tempfile.tempdir = str(workdir)
    server = EmbeddedServer("127.0.0.1", free_port(), workdir / "nats")
    try:
        server.start()
        log(f"nats-server at {server.url}, work directory {workdir}")
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
    except (BenchError, IngestorError, WorkbenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
