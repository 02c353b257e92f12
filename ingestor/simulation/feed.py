"""The simulated feed: every upstream delivery on one simulated clock, through the product's
adapters, into MediaEvents in publish order, with the counts a correct pipeline must reach.

What each server sends, and when (receipt times are integer milliseconds of the simulated
clock, never the wall clock, so event ids are stable and one config gives byte-identical
events):

* **Plex webhooks** (``plex``): ``media.play``, ``media.pause``/``media.resume`` pairs,
  ``media.scrobble`` past 90 %, ``media.stop``, each received when it happens. Plex sometimes
  fires a webhook twice: ~3 % are delivered again 20 ms-2 s later, and the adapter drops the
  copy as a double fire (no event). For ~25 % of the playbacks that pause, a copy of the
  last ``media.pause`` arrives late, after the playback resumed: the adapter cannot tell it
  from a new pause at the same position and passes it on, so the dedup drops it as a
  re-reported step (``expected.dropped_session_key``). Only the last pause is copied late: a
  late copy of an earlier one would make the adapter drop the next real pause as a double
  fire, a limit of the adapter the feed does not exercise.
* **Tautulli** (``tautulli``): every 5 minutes the finished sessions' history rows, numbered
  in stop order. An interrupted pass reads its rows again at the next one (~5 % of the
  passes, the overlapping poll): same rows, same event ids (``expected.dropped_event_id``).
* **Jellyfin WebSocket** (``jellyfin``): a ``Sessions`` push (the full list of the server's
  playing sessions) whenever a playback starts, pauses, resumes or stops, at a client's
  progress report every ~10 minutes of playing and at its last report a few seconds before
  the stop. During ~15 % of the playbacks the socket reconnects, and the adapter reads
  ``GET /Sessions`` again: the session machine knows every session in it already, so the
  list sent again adds nothing but progress that was due.

A Plex playback reported by webhooks and Tautulli is one playback with a link
(``expected.linked``). Volume, with the adapters' own rules: about 19-20 events per user-day
(about 2.5 playbacks per user-day; about 6.4 events per Plex playback counting its Tautulli
row, 10 per Jellyfin playback), so ``users=300, days=30`` gives about 175k events. It grows
linearly with ``users * days``: a Jellyfin push lists only its server's sessions, and a
Jellyfin server holds 10 people.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from random import Random
from typing import Any

import msgspec

from ingestor.events import MediaEvent, encode_event
from ingestor.simulation import payloads
from ingestor.simulation.model import (
    JELLYFIN,
    PLEX,
    SCROBBLE_FRACTION,
    Playback,
    Scheduler,
    SimulationConfig,
    World,
    build_world,
    from_ms,
    to_ms,
)
from ingestor.simulation.through_sources import (
    JellyfinSocket,
    PlexWebhookReceiver,
    TautulliHistory,
)
from ingestor.simulation.truth import ExpectedCounts, TruthPlayback, truth_of

DOUBLE_FIRE_SHARE = 0.03  # Plex webhooks delivered twice at once
LATE_COPY_SHARE = 0.25  # Plex playbacks that pause whose last pause arrives again, late
REPOLL_SHARE = 0.05  # Tautulli passes read again by the next one
TAUTULLI_POLL_MS = 300_000  # Tautulli's history is read every 5 minutes
JELLYFIN_PROGRESS_MS = 600_000  # what a client reports at least every ~10 minutes of playing

# what a delivery is, in the order deliveries of one millisecond are handled
_PLEX, _TAUTULLI, _JELLYFIN, _RECONNECT = range(4)
# Jellyfin moments: a playback's session appears, changes, or goes away
_APPEARS, _CHANGES, _LEAVES = range(3)


class Simulation(msgspec.Struct, frozen=True):
    """The feed in publish order, its ground truth and the expected counts."""

    events: list[MediaEvent]
    truth: list[TruthPlayback]
    expected: ExpectedCounts
    config: SimulationConfig = msgspec.field(default_factory=SimulationConfig)
    # when each event's upstream delivery reached the ingestor (the simulated clock): a
    # Tautulli row is received at the pass after its stop, so it is recorded later than it
    # happened, which is what makes the two clocks of a replay disagree
    received: list[datetime] = msgspec.field(default_factory=list)


def simulate(config: SimulationConfig) -> Simulation:
    """Generate the feed and its ground truth for ``config`` (deterministic)."""
    if config.users < 1 or config.days < 1:
        raise ValueError(f"need at least one user and one day, got {config!r}")
    rng = Random(config.seed)
    world = build_world(rng, config.users)
    playbacks = Scheduler(rng, world).run(config, to_ms(config.base_date))
    deliveries = _Deliveries(rng, world)
    for pb in playbacks:
        if pb.server == JELLYFIN:
            deliveries.jellyfin(pb)
        elif pb.webhooks:
            deliveries.plex(pb)
    deliveries.tautulli([pb for pb in playbacks if pb.server == PLEX and pb.tautulli])
    events, received = deliveries.through_sources()
    truth = sorted(
        (truth_of(world, pb) for pb in playbacks),
        key=lambda t: (t.started_at, t.server_id, t.user_id, t.machine_id, t.rating_key),
    )
    expected = ExpectedCounts(
        published=len(events),
        playbacks=len(truth),
        dropped_event_id=deliveries.rows_read_again,
        dropped_session_key=deliveries.late_copies,
        linked=sum(1 for pb in playbacks if pb.server == PLEX and pb.webhooks and pb.tautulli),
    )
    return Simulation(
        events=events, truth=truth, expected=expected, config=config, received=received
    )


class _Deliveries:
    """Every upstream delivery, with its receipt moment; then all of them through the
    adapters in receipt order.

    A delivery is ``(ms, sequence, kind, payload)``: the sequence number (generation order)
    breaks ties between equal moments, so the order never depends on anything but the seed.
    """

    def __init__(self, rng: Random, world: World) -> None:
        self.rng = rng
        self.world = world
        self.queue: list[tuple[int, int, int, Any]] = []
        self.late_copies = 0
        self.rows_read_again = 0

    def _at(self, ms: int, kind: int, payload: Any) -> None:
        self.queue.append((ms, len(self.queue), kind, payload))

    # -- what each server sends

    def plex(self, pb: Playback) -> None:
        rng = self.rng
        static = payloads.plex_webhook_static(self.world, pb)
        steps = [(pb.t0_ms, "media.play", pb.offset_ms)]
        for position, duration in pb.pauses:
            at = pb.wall_ms(position)
            steps.append((at, "media.pause", position))
            steps.append((at + duration, "media.resume", position))
        lead = pb.scrobble_lead_ms
        if pb.final_ms - lead >= SCROBBLE_FRACTION * pb.duration_ms:
            steps.append((pb.stop_ms - lead, "media.scrobble", pb.final_ms - lead))
        steps.append((pb.stop_ms, "media.stop", pb.final_ms))
        for at, kind, position in steps:
            body = payloads.plex_webhook(static, kind, position)
            self._at(at, _PLEX, body)
            if rng.random() < DOUBLE_FIRE_SHARE:
                self._at(at + rng.randint(20, 2_000), _PLEX, body)
        if pb.pauses and rng.random() < LATE_COPY_SHARE:
            position, duration = pb.pauses[-1]
            resumed = pb.wall_ms(position) + duration
            late = resumed + rng.randint(2_500, 60_000)  # after a double fire's copy
            if late < pb.stop_ms:
                self._at(late, _PLEX, payloads.plex_webhook(static, "media.pause", position))
                self.late_copies += 1

    def tautulli(self, playbacks: list[Playback]) -> None:
        """Rows numbered in the order Tautulli writes them (by stop), read by the next pass."""
        rng = self.rng
        playbacks = sorted(
            playbacks,
            key=lambda pb: (pb.tautulli_stopped_s, pb.tautulli_started_s, pb.device.machine_id,
                            pb.item.rating_key),
        )  # fmt: skip
        passes: dict[int, list[dict[str, Any]]] = {}
        row_id = rng.randint(1_000, 9_000)
        for pb in playbacks:
            row_id += 1 if rng.random() < 0.9 else rng.randint(2, 4)
            at = (pb.tautulli_stopped_s * 1000 // TAUTULLI_POLL_MS + 1) * TAUTULLI_POLL_MS
            passes.setdefault(at, []).append(payloads.tautulli_record(self.world, pb, row_id))
        for at, rows in passes.items():
            self._at(at, _TAUTULLI, rows)
            if rng.random() < REPOLL_SHARE:
                self._at(at + TAUTULLI_POLL_MS, _TAUTULLI, rows)
                self.rows_read_again += len(rows)

    def jellyfin(self, pb: Playback) -> None:
        """The moments ``pb`` changes the server's session list (and a reconnect's)."""
        rng = self.rng
        moments = [pb.t0_ms]
        for position, duration in pb.pauses:
            at = pb.wall_ms(position)
            moments += [at, at + duration]
        pause_positions = [p for p, _ in pb.pauses]
        played = JELLYFIN_PROGRESS_MS
        while True:
            position = pb.offset_ms + played + rng.randint(-3_500, 3_500)
            if position >= pb.final_ms - 5_000:
                break
            if all(abs(position - p) > 1_000 for p in pause_positions):
                moments.append(pb.wall_ms(position))
            played += JELLYFIN_PROGRESS_MS
        last = pb.stop_ms - rng.randint(1_000, 10_000)
        if last > max(moments):
            moments.append(last)
        template = payloads.jellyfin_session_template(self.world, pb)
        for at in sorted(set(moments)):
            kind = _APPEARS if at == pb.t0_ms else _CHANGES
            self._at(at, _JELLYFIN, (kind, pb, template))
        self._at(pb.stop_ms, _JELLYFIN, (_LEAVES, pb, template))
        if pb.reconnect_ms is not None:
            self._at(pb.reconnect_ms, _RECONNECT, (_CHANGES, pb, template))

    # -- through the adapters

    def through_sources(self) -> tuple[list[MediaEvent], list[datetime]]:
        """The events in publish order, and when each one's delivery was received."""
        plex = PlexWebhookReceiver()
        tautulli = TautulliHistory(self.world.plex_server_id)
        sockets = {s.server_id: JellyfinSocket(s.server_id) for s in self.world.jellyfin_servers}
        playing: dict[str, dict[int, tuple[Playback, payloads.SessionTemplate]]] = {
            server_id: {} for server_id in sockets
        }
        pushes = 0
        events: list[MediaEvent] = []
        received: list[datetime] = []
        at: datetime | None = None
        heapq.heapify(self.queue)
        while self.queue:
            if at is not None:  # the previous delivery's events were received at its moment
                received += [at] * (len(events) - len(received))
            ms, _, kind, payload = heapq.heappop(self.queue)
            at = from_ms(ms)
            if kind == _PLEX:
                events += plex.receive(payload, at)
            elif kind == _TAUTULLI:
                events += tautulli.rows(payload)
            else:
                change, pb, template = payload
                sessions = playing[template.server_id]
                if change == _APPEARS:
                    sessions[id(pb)] = (pb, template)
                elif change == _LEAVES:
                    del sessions[id(pb)]
                entries = [
                    payloads.jellyfin_session(template, *pb.position_at(ms))
                    for pb, template in sessions.values()
                ]
                socket = sockets[template.server_id]
                if kind == _RECONNECT:  # GET /Sessions before the new socket subscribes
                    events += socket.sessions(entries, at)
                else:
                    pushes += 1
                    message = payloads.jellyfin_sessions_message(entries, pushes)
                    events += socket.message(message, at)
        if at is not None:
            received += [at] * (len(events) - len(received))
        return events, received


# ---------------------------------------------------------------------------------------
# files


def iter_events_jsonl(events: Iterable[MediaEvent]) -> Iterator[bytes]:
    """One JSON line per event, in the given order."""
    for event in events:
        yield encode_event(event) + b"\n"


def write_jsonl(path: str | os.PathLike[str], events: Iterable[MediaEvent]) -> int:
    """Write ``events`` as JSON lines to ``path``; return how many were written."""
    count = 0
    with open(path, "wb") as out:
        for line in iter_events_jsonl(events):
            out.write(line)
            count += 1
    return count
