"""The ground truth of a simulation: the playbacks the model produced, and what a correct
pipeline must count for the feed.

The truth never comes from any de-duplication logic: :func:`truth_of` reads a
:class:`~ingestor.simulation.model.Playback` of the generation model. Where an upstream does
not carry a value, the truth holds what the product's documented rule makes of what the
upstream does carry:

* Plex webhooks carry no time: a playback starts when its ``media.play`` is received and
  stops when its ``media.stop`` is (``ingestor/sources/plex_webhook.py``).
* A Plex playback only Tautulli reported starts and stops at its history row's ``started``
  and ``stopped`` (whole seconds, Tautulli's own clock).
* Jellyfin's ``Sessions`` frames carry no start either: the adapter takes the first frame
  showing the playback, minus the position it shows (``ingestor/sources/session_machine.py``).
  A playback resumed part-way therefore starts ``offset`` earlier than it was first seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ingestor.events import utc
from ingestor.simulation.model import JELLYFIN, PLEX, TAUTULLI, Playback, World, from_ms

if TYPE_CHECKING:
    from ingestor.simulation.feed import Simulation


class TruthPlayback(msgspec.Struct, frozen=True):
    """One playback the simulator generated, as the generation model knows it."""

    server_id: str
    user_id: str
    rating_key: str
    machine_id: str
    media_type: str
    title: str
    started_at: datetime
    stopped_at: datetime
    paused_seconds: int
    sources: tuple[str, ...]


class ExpectedCounts(msgspec.Struct, frozen=True):
    """What a correct pipeline must count for the simulated feed."""

    published: int
    playbacks: int
    dropped_event_id: int
    dropped_session_key: int
    linked: int


# what a projected playback is compared on (a column of playback_events each)
TRUTH_KEY_FIELDS = (
    "server_id",
    "user_id",
    "rating_key",
    "machine_id",
    "started_at",
    "stopped_at",
    "paused_seconds",
)

TRUTH_SQL = "SELECT " + ", ".join(TRUTH_KEY_FIELDS) + " FROM playback_events"
"""The projected playbacks as rows comparable with :func:`truth_keys`."""


def truth_keys(truth: Iterable[TruthPlayback]) -> set[tuple]:
    """The playbacks as comparable tuples of :data:`TRUTH_KEY_FIELDS`."""
    return {tuple(getattr(t, name) for name in TRUTH_KEY_FIELDS) for t in truth}


def truth_of(world: World, pb: Playback) -> TruthPlayback:
    """What a correct pipeline must project for the playback ``pb`` (module docstring)."""
    if pb.server == PLEX:
        sources = tuple(name for name, on in ((PLEX, pb.webhooks), (TAUTULLI, pb.tautulli)) if on)
        if pb.webhooks:
            started, stopped = from_ms(pb.t0_ms), from_ms(pb.stop_ms)
        else:
            started = from_ms(pb.tautulli_started_s * 1000)
            stopped = from_ms(pb.tautulli_stopped_s * 1000)
        server_id, user_id = world.plex_server_id, pb.person.plex_user_id
    else:
        sources = (JELLYFIN,)
        started, stopped = from_ms(pb.t0_ms - pb.offset_ms), from_ms(pb.stop_ms)
        server_id, user_id = world.jellyfin(pb.person).server_id, pb.person.jellyfin_user_id
    return TruthPlayback(
        server_id=server_id,
        user_id=user_id,
        rating_key=pb.item.rating_key,
        machine_id=pb.device.machine_id,
        media_type=pb.item.media_type,
        title=pb.item.title,
        started_at=started,
        stopped_at=stopped,
        paused_seconds=pb.paused_ms // 1000,
        sources=sources,
    )


# ---------------------------------------------------------------------------------------
# the truth file


class _TruthFile(msgspec.Struct):
    config: dict[str, Any]
    expected: ExpectedCounts
    playbacks: list[TruthPlayback]


def write_truth(path: str | os.PathLike[str], sim: Simulation) -> None:
    """Write the config, the expected counts and the truth playbacks as one JSON document."""
    config = sim.config
    document = _TruthFile(
        config={
            "seed": config.seed,
            "users": config.users,
            "days": config.days,
            "base_date": utc(config.base_date),
        },
        expected=sim.expected,
        playbacks=sim.truth,
    )
    with open(path, "wb") as out:
        out.write(msgspec.json.encode(document))
        out.write(b"\n")


def read_truth(path: str | os.PathLike[str]) -> tuple[ExpectedCounts, list[TruthPlayback]]:
    """Read what :func:`write_truth` wrote."""
    with open(path, "rb") as source:
        document = msgspec.json.decode(source.read(), type=_TruthFile)
    return document.expected, document.playbacks
