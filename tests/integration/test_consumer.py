"""The one pull consumer against a real nats-server: a server restart in the middle of a pull,
a filtered consumer whose stream sequences jump, and deliveries that never reach it.

What is proved each time: no message is acked without having been handled (the server's ack
floor, polled all along, never passes what the handler applied), nothing is lost and nothing
is handled twice past the handler's checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ingestor.app import new_pipeline, open_projection
from ingestor.config import Settings
from ingestor.nats.connection import NatsHandle, open_nats
from ingestor.nats.consumer import Consumer, Delivery, Handler
from ingestor.nats.publisher import Publisher
from ingestor.nats.reader import stream_bounds
from ingestor.nats.server import EmbeddedServer
from ingestor.nats.streams import STREAM
from ingestor.router import Router
from ingestor.simulation import TRUTH_SQL, SimulationConfig, simulate, truth_keys

pytestmark = pytest.mark.integration


class Recorder(Handler):
    """Records every sequence it applies; its checkpoint is the last one. ``hold_at``: the
    batch that reaches this many applied messages is held until :attr:`release` is set
    (meanwhile :attr:`holding` is set and the consumer's next pull is in flight);
    ``first``: run once, inside the first batch, before it is applied; ``delay``: how long
    applying a batch takes."""

    def __init__(
        self, hold_at: int | None = None, first: Callable | None = None, delay: float = 0.0
    ) -> None:
        self.handled: list[int] = []
        self.delay = delay
        self.hold_at = hold_at
        self.first = first
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.resumed: list[int] = []

    async def resume(self) -> int:
        self.resumed.append(self.checkpoint())
        return self.checkpoint()

    def checkpoint(self) -> int:
        return self.handled[-1] if self.handled else 0

    async def handle(self, batch: list[Delivery]) -> None:
        seqs = [d.seq for d in batch]
        assert seqs == sorted(seqs) and seqs[0] > self.checkpoint(), "handed twice"
        if self.first is not None:
            first, self.first = self.first, None
            await first()
        if self.hold_at is not None and len(self.handled) + len(seqs) >= self.hold_at:
            self.hold_at = None
            self.holding.set()
            await asyncio.wait_for(self.release.wait(), 60)
        await asyncio.sleep(self.delay)
        self.handled.extend(seqs)


@pytest.fixture
async def handle(settings: Settings) -> AsyncIterator[NatsHandle]:
    handle = await open_nats(settings)
    try:
        yield handle
    finally:
        await handle.close()


@contextlib.asynccontextmanager
async def ack_floor_watch(
    js: JetStreamContext, durable: str, applied: Callable[[], int]
) -> AsyncIterator[list[tuple[int, int]]]:
    """Poll the durable's ack floor all along: (floor, what the handler had applied once the
    answer came). The floor may never be above the second figure."""
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def watch() -> None:
        # ends by itself rather than by cancellation: Python 3.11's wait_for (inside the
        # client's request) can swallow a cancel, and the loop would go on forever
        while not done.is_set():
            with contextlib.suppress(Exception):  # the server is down, the durable recreated
                info = await js.consumer_info(STREAM, durable, timeout=1)
                floor = info.ack_floor.stream_seq if info.ack_floor else 0
                seen.append((floor, applied()))
            await asyncio.sleep(0.01)

    watching = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        done.set()
        await asyncio.wait_for(watching, 10)


@contextlib.asynccontextmanager
async def running(work: Consumer | Router, *args: Handler) -> AsyncIterator[asyncio.Task]:
    """Run a consumer (or a router) for the block; stopped at its end, whatever happened."""
    task = asyncio.create_task(work.run(*args))
    try:
        yield task
    finally:
        work.stop()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            task.cancel()


async def eventually(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def publish_raw(handle: NatsHandle, subjects: Sequence[str]) -> list[int]:
    """Publish one message on each subject (no message id); their stream sequences."""
    return [(await handle.js.publish(s, b"x", stream=STREAM)).seq for s in subjects]


async def restart_server(server: EmbeddedServer, handle: NatsHandle) -> None:
    """Stop the real nats-server (same store, same port) and start it again."""
    await asyncio.to_thread(server.stop)
    await eventually(lambda: not handle.nc.is_connected, "the client to see the server gone")
    await asyncio.to_thread(server.start)
    await eventually(lambda: handle.nc.is_connected, "the client to reconnect")


def never_ahead(seen: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(floor, applied) for floor, applied in seen if floor > applied]


async def test_a_server_restart_mid_pull_acks_nothing_that_was_not_handled(
    handle: NatsHandle, nats_server: EmbeddedServer
) -> None:
    first = await publish_raw(handle, ["audit.test"] * 1500)
    recorder = Recorder(hold_at=300, delay=0.01)
    consumer = Consumer(handle.nc, durable="recorder", batch_size=50, flush_interval=0.05)
    async with (
        ack_floor_watch(handle.js, "recorder", recorder.checkpoint) as seen,
        running(consumer, recorder),
    ):
        # a batch in hand, unacked, and the next pull request in flight (the consumer reads
        # up to two batches ahead): the server goes away under both
        await asyncio.wait_for(recorder.holding.wait(), 30)
        await eventually(lambda: len(seen) >= 3, "the ack floor seen while a batch is held")
        await restart_server(nats_server, handle)
        await eventually(lambda: len(seen) >= 6, "the ack floor seen after the restart")
        recorder.release.set()
        then = await publish_raw(handle, ["audit.test"] * 500)
        await eventually(lambda: recorder.checkpoint() == then[-1], "all handled", 60)
        await eventually(lambda: seen and seen[-1][0] == then[-1], "the last ack")
    assert recorder.handled == [*first, *then]  # nothing lost, nothing twice
    assert consumer.stats.restarts >= 1 and len(recorder.resumed) >= 2
    assert recorder.resumed[1] > 0  # the restart read on from the handler's checkpoint
    # ack floors were seen before, during and after the restart (the waits above)
    assert len(seen) >= 6 and never_ahead(seen) == []


async def test_the_router_rides_out_a_server_restart_mid_pull(
    settings: Settings, handle: NatsHandle, nats_server: EmbeddedServer
) -> None:
    sim = simulate(SimulationConfig(seed=8, users=20, days=5))
    commits, holding, release = [], threading.Event(), threading.Event()

    def commit_held_at_the_tenth(_items: Sequence) -> None:
        commits.append(1)
        if len(commits) == 10:  # in the worker thread, in the middle of the commit
            holding.set()
            release.wait(60)

    projection = open_projection(settings.duckdb_path, fault=commit_held_at_the_tenth)
    router = Router(
        handle.nc,
        new_pipeline(settings, projection),
        batch_size=50,
        flush_interval=0.05,
        may_grow=lambda: False,  # batches of 50: many commits, pulls in flight between
    )
    await Publisher(handle.nc).publish_many(sim.events)
    _, last = await stream_bounds(handle.nc)
    async with (
        ack_floor_watch(handle.js, "projector", lambda: router.stats.last_seq) as seen,
        running(router),
    ):
        assert await asyncio.to_thread(holding.wait, 30)
        await restart_server(nats_server, handle)
        release.set()
        assert await router.wait_for_seq(last, timeout=60)
        await eventually(lambda: seen and seen[-1][0] == last, "the last ack")
    assert router.stats.restarts >= 1
    # ack floors were seen before, during and after the restart (the waits above)
    assert len(seen) >= 6 and never_ahead(seen) == []
    assert set(projection.con.execute(TRUTH_SQL).fetchall()) == truth_keys(sim.truth)
    assert projection.con.execute(
        "SELECT count(*) = count(DISTINCT event_id) FROM media_events"
    ).fetchall() == [(True,)]
    assert projection.checkpoint() == last
    projection.close()


async def test_a_filtered_consumer_takes_its_jumping_stream_sequences_without_a_restart(
    handle: NatsHandle,
) -> None:
    """The detector's case: ``playback.>`` only, with audit and alert messages between. The
    stream sequences it receives jump at every one of those; its deliveries never do."""
    subjects = ["playback.plex.movie", "alert.test", "audit.test", "playback.jellyfin.episode"]
    seqs = await publish_raw(handle, subjects * 60)
    wanted = [s for s, subject in zip(seqs, subjects * 60, strict=True) if subject[0] == "p"]
    recorder = Recorder()
    consumer = Consumer(
        handle.nc,
        durable="filtered",
        filter_subjects=["playback.>"],
        batch_size=7,
        flush_interval=0.05,
    )
    async with running(consumer, recorder):
        await eventually(lambda: recorder.checkpoint() == wanted[-1], "every playback message")
    assert recorder.handled == wanted
    assert consumer.stats.restarts == 0 and consumer.stats.last_error is None


async def test_deliveries_taken_by_another_puller_are_read_again_never_acked_over(
    handle: NatsHandle,
) -> None:
    """Deliveries the consumer never receives (here another client pulls them from the same
    durable; in production a reconnect or a dead route loses them): the delivery sequence
    jumps, the consumer hands over what it holds, acks nothing past it, and reads again from
    the handler's checkpoint, so the missing messages are handled after all."""
    subjects = ["playback.plex.movie", "alert.test"]
    seqs = await publish_raw(handle, subjects * 150)
    wanted = [s for s, subject in zip(seqs, subjects * 150, strict=True) if subject[0] == "p"]
    stolen: list[int] = []

    async def steal() -> None:
        got = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            if msg.data:
                stolen.append(int(msg.reply.split(".")[5]))
                if len(stolen) == 3:
                    got.set()

        inbox = handle.nc.new_inbox()
        sub = await handle.nc.subscribe(inbox, cb=on_message)
        request = {"batch": 3, "expires": int(2e9)}
        await handle.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.taken", json.dumps(request).encode(), inbox
        )
        await asyncio.wait_for(got.wait(), 10)
        await sub.unsubscribe()

    recorder = Recorder(first=steal)
    consumer = Consumer(
        handle.nc,
        durable="taken",
        filter_subjects=["playback.>"],
        batch_size=10,
        flush_interval=0.05,
    )
    async with (
        ack_floor_watch(handle.js, "taken", recorder.checkpoint) as seen,
        running(consumer, recorder),
    ):
        await eventually(lambda: recorder.checkpoint() == wanted[-1], "every playback message")
        await eventually(lambda: seen and seen[-1][0] == wanted[-1], "the last ack")
    assert len(stolen) == 3 and set(stolen) <= set(wanted)
    assert recorder.handled == wanted  # the stolen ones too, each once
    assert consumer.stats.restarts >= 1 and "did not arrive" in (consumer.stats.last_error or "")
    assert never_ahead(seen) == []
