"""A seeded, deterministic simulation of a realistic playback feed, with its ground truth.

It is not a source: the production ingestor (``ingestor run``) never imports it; ``ingestor
demo``, ``ingestor simulate``, the workbench's demo data, the benches and the tests do. The
simulated servers write what real ones send (Plex webhook bodies, Tautulli history rows,
Jellyfin ``Sessions`` lists), and the product's own adapters turn that into events, so the
demo's truth check runs the code users run.

* :mod:`~ingestor.simulation.model`: the world and its playbacks (the generation model);
* :mod:`~ingestor.simulation.truth`: the ground truth and the expected counts;
* :mod:`~ingestor.simulation.payloads`: the upstream payloads;
* :mod:`~ingestor.simulation.through_sources`: the one place the product's adapters are called;
* :mod:`~ingestor.simulation.feed`: the deliveries on a simulated clock, through the adapters.

>>> sim = simulate(SimulationConfig(seed=1, users=2, days=1))
>>> sim.expected.published == len(sim.events) and sim.expected.playbacks == len(sim.truth)
True
"""

from ingestor.simulation.feed import Simulation, iter_events_jsonl, simulate, write_jsonl
from ingestor.simulation.model import DEFAULT_BASE_DATE, SimulationConfig
from ingestor.simulation.truth import (
    TRUTH_KEY_FIELDS,
    TRUTH_SQL,
    ExpectedCounts,
    TruthPlayback,
    read_truth,
    truth_keys,
    write_truth,
)

__all__ = [
    "DEFAULT_BASE_DATE",
    "TRUTH_KEY_FIELDS",
    "TRUTH_SQL",
    "ExpectedCounts",
    "Simulation",
    "SimulationConfig",
    "TruthPlayback",
    "iter_events_jsonl",
    "read_truth",
    "simulate",
    "truth_keys",
    "write_jsonl",
    "write_truth",
]
