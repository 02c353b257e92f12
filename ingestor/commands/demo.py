"""``ingestor demo``: embedded server, simulator and projection, checked against the truth."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingestor.app import new_pipeline, open_projection
from ingestor.archive import Archiver
from ingestor.commands import Out
from ingestor.commands.simulate import publish_with_progress
from ingestor.config import Settings
from ingestor.errors import ConfigError
from ingestor.gctune import tune_gc
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.publisher import Publisher
from ingestor.nats.reader import stream_bounds
from ingestor.projection import Projection
from ingestor.router import Router
from ingestor.sink import DirectSink

if TYPE_CHECKING:  # loaded by demo and simulate only: `run` never imports the simulator
    from ingestor import simulation as simulator


@dataclass
class DemoReport:
    published: int
    stored: int
    jetstream_duplicates: int
    accepted: int
    dropped_event_id: int
    dropped_session_key: int
    linked: int
    dead_lettered: int
    playbacks: int
    truth_playbacks: int
    missing: list[tuple]
    unexpected: list[tuple]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected and self.playbacks == self.truth_playbacks


async def run_demo(
    settings: Settings, config: simulator.SimulationConfig, out: Out = print
) -> DemoReport:
    """Embedded server + simulator + projection, checked against the simulator's truth."""
    if not settings.partition.all:
        raise ConfigError(["PROJECT_SERVERS is for `ingestor run`: the demo projects every server"])
    from ingestor import simulation as simulator

    started = time.monotonic()
    tune_gc()
    sim = simulator.simulate(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    truth_path = settings.data_dir / "demo-truth.json"
    simulator.write_truth(truth_path, sim)
    out(
        f"simulated {len(sim.events):,} events for {config.users} users over {config.days} days "
        f"(seed {config.seed}); ground truth: {len(sim.truth):,} playbacks -> {truth_path}"
    )
    projection = await asyncio.to_thread(
        open_projection, settings.duckdb_path, stale_after=settings.stale_after
    )
    handle: NatsHandle | None = None
    try:
        before = await asyncio.to_thread(projection.counts)
        pipeline = await asyncio.to_thread(new_pipeline, settings, projection)
        dead = 0
        if settings.nats_enabled:
            handle = await open_nats(settings)
            where = handle.server.url + " (embedded)" if handle.server else settings.nats_url
            out(f"NATS JetStream at {where}; DuckDB at {settings.duckdb_path}")
        if settings.event_sourcing:
            assert handle is not None
            publish = await publish_with_progress(Publisher(handle.nc), sim.events, out)
            _, target = await stream_bounds(handle.nc)
            router = Router(
                handle.nc,
                pipeline,
                batch_size=settings.nats_batch_size,
                flush_interval=min(settings.nats_flush_interval, 0.2),
            )
            task = asyncio.create_task(router.run())
            # the archive too, so the data directory can be replayed offline afterwards
            archiver = Archiver(
                handle.nc,
                settings.archive_dir,
                batch_size=settings.nats_batch_size,
                segment_max_age=0.5,  # seal promptly: the demo ends when the feed is in
            )
            archiving = asyncio.create_task(archiver.run())
            while not await router.wait_for_seq(target, timeout=2):
                if task.done():
                    break
                out(f"  projected up to seq {router.stats.last_seq:,} of {target:,}")
            router.stop()
            stats = await task
            dead = stats.dead_lettered
            await archiver.wait_for_seq(target, timeout=60)
            archiver.stop()  # seals what it holds
            await archiving
            out(f"archived up to seq {archiver.stats.last_sealed_seq:,} in {settings.archive_dir}")
        else:
            sink = DirectSink(
                pipeline,
                Publisher(handle.nc) if handle is not None else None,
                batch_size=settings.nats_batch_size,
            )
            publish = await sink.emit(sim.events)
        after = await asyncio.to_thread(projection.counts)
        projected = await asyncio.to_thread(_playback_keys, projection)
    finally:
        projection.close()
        if handle is not None:
            await handle.close()
    truth = simulator.truth_keys(sim.truth)
    report = DemoReport(
        published=len(sim.events),
        stored=publish.stored,
        jetstream_duplicates=publish.duplicate if settings.event_sourcing else 0,
        accepted=after["accepted"] - before["accepted"],
        dropped_event_id=after["dropped_event_id"] - before["dropped_event_id"],
        dropped_session_key=after["dropped_session_key"] - before["dropped_session_key"],
        linked=after["linked"] - before["linked"],
        dead_lettered=dead,
        playbacks=after["playbacks"],
        truth_playbacks=len(sim.truth),
        missing=sorted(truth - projected),
        unexpected=sorted(projected - truth),
        seconds=time.monotonic() - started,
    )
    out(format_demo(report, sim.expected, first_run=before["accepted"] == 0))
    return report


def _playback_keys(projection: Projection) -> set[tuple]:
    """The projected playbacks, comparable with ``simulator.truth_keys``."""
    from ingestor.simulation import TRUTH_SQL

    return set(projection.con.execute(TRUTH_SQL).fetchall())


def format_demo(report: DemoReport, expected: simulator.ExpectedCounts, *, first_run: bool) -> str:
    def line(label: str, value: int, want: int | None = None) -> str:
        tail = f"   (simulator injected {want:,})" if want is not None and first_run else ""
        return f"  {label:<34}{value:>10,}{tail}"

    verdict = (
        "OK: projected playbacks equal the ground truth"
        if report.ok
        else (
            f"MISMATCH: {len(report.missing)} truth playbacks missing, "
            f"{len(report.unexpected)} projected playbacks not in the truth"
        )
    )
    lines = [
        "",
        "demo results" + ("" if first_run else " (on the data an earlier run left)"),
        line("events published", report.published),
        line("  stored by JetStream", report.stored),
        line("  JetStream duplicates (2 min window)", report.jetstream_duplicates),
        line(
            "exact repeats (JetStream + tier a)",
            report.jetstream_duplicates + report.dropped_event_id,
            expected.dropped_event_id,
        ),
        line("events accepted", report.accepted),
        line("dropped, tier a (event_id)", report.dropped_event_id),
        line(
            "dropped, tier b (session key)",
            report.dropped_session_key,
            expected.dropped_session_key,
        ),
        line("linked, tier c (correlation)", report.linked, expected.linked),
        line("dead-lettered", report.dead_lettered),
        line("playbacks projected", report.playbacks),
        line("playbacks in the ground truth", report.truth_playbacks),
        f"  took {report.seconds:.1f}s",
        verdict,
    ]
    for label, rows in (("missing", report.missing), ("unexpected", report.unexpected)):
        for row in rows[:5]:
            lines.append(f"  {label}: {row}")
    return "\n".join(lines)
