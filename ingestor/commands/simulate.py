"""``ingestor simulate``: the simulated feed, published or written as JSON lines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ingestor.commands import Out
from ingestor.config import Settings
from ingestor.events import MediaEvent
from ingestor.nats.connection import open_nats
from ingestor.nats.publisher import Publisher, PublishStats

if TYPE_CHECKING:  # loaded by demo and simulate only: `run` never imports the simulator
    from ingestor import simulation as simulator


async def simulate_command(
    settings: Settings,
    config: simulator.SimulationConfig,
    *,
    out_path: Path | None,
    truth_path: Path | None,
    out: Out = print,
) -> int:
    from ingestor import simulation as simulator

    sim = simulator.simulate(config)
    if truth_path is not None:
        simulator.write_truth(truth_path, sim)
        out(f"wrote ground truth ({len(sim.truth):,} playbacks) to {truth_path}")
    if out_path is not None:
        n = simulator.write_jsonl(out_path, sim.events)
        out(f"wrote {n:,} events to {out_path}")
        return 0
    handle = await open_nats(settings)
    try:
        stats = await publish_with_progress(Publisher(handle.nc), sim.events, out)
    finally:
        await handle.close()
    out(
        f"published {stats.total:,} events: {stats.stored:,} stored, {stats.duplicate:,} duplicates"
    )
    return 0


async def publish_with_progress(
    publisher: Publisher, events: Sequence[MediaEvent], out: Out
) -> PublishStats:
    stats = PublishStats()
    step = max(1, len(events) // 5)
    async for result in publisher.iter_publish(events):
        stats.add(result)
        if stats.total % step == 0 and stats.total < len(events):
            out(f"  published {stats.total:,} / {len(events):,}")
    return stats
