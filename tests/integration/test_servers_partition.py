"""Two ingestors on one stream, each projecting its own servers (``PROJECT_SERVERS``), and a
workbench reading their files as one: the same report as one ingestor over every server
(docs/architecture.md, "Several ingestors").

A real three-node nats-server cluster (the stream with three replicas); the simulated feed (a
Plex server reported by Plex and Tautulli, and a Jellyfin server) published once, a part of it
under the subjects written before servers were in them (``playback.<source>.<media_type>``);
three in-process ``ingestor run`` services, each with its own ``DATA_DIR``: the Plex server,
the Jellyfin server, and every server. Midway they are stopped, verdicts and an identity
record are published, and they are started again from their checkpoints. The other tests use
one nats-server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import nats
import nbformat
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ingestor.app import run_service
from ingestor.archive import archive_segments, read_segment
from ingestor.commands.replay import replay_command
from ingestor.commands.status import status_command
from ingestor.config import Settings
from ingestor.detection.config import DetectionConfig
from ingestor.detection.detector import DETECTOR
from ingestor.events import (
    MediaEvent,
    decode_event,
    encode_event,
    parse_media_subject,
    subject_token,
)
from ingestor.nats.publisher import OutgoingMessage, Publisher
from ingestor.nats.server import EmbeddedServer
from ingestor.nats.streams import STREAM, ensure_streams
from ingestor.projection import PROJECTOR, Projection
from ingestor.records import AuditDecision, IdentityRecord, encode_record
from ingestor.simulation import SimulationConfig, simulate
from ingestor.sources.config import SourcesConfig
from tests.cluster import NatsCluster, nats_cluster
from tests.conftest import make_env, subprocess_env
from workbench import WorkbenchError, open_data_dir, open_data_dirs, stats

pytestmark = pytest.mark.integration

WORKBENCH = [sys.executable, "-m", "workbench.cli"]
OLD_EVERY = 5  # every fifth event is published under the old three-token subject


def old_subject(event: MediaEvent) -> str:
    return f"playback.{subject_token(event.source)}.{subject_token(event.media_type)}"


def feed() -> tuple[list[MediaEvent], str, str]:
    sim = simulate(SimulationConfig(users=6, days=3))
    servers = {e.server_id: e.source for e in sim.events if e.source != "tautulli"}
    plex = next(s for s, source in servers.items() if source == "plex")
    jellyfin = next(s for s, source in servers.items() if source == "jellyfin")
    return sim.events, plex, jellyfin


async def publish(url: str, messages: list[OutgoingMessage]) -> None:
    nc = await nats.connect(servers=url.split(","))
    try:
        await ensure_streams(nc.jetstream(), 7, 3 if "," in url else 1)
        async for result in Publisher(nc).iter_publish(messages):
            assert result is not None
    finally:
        await nc.close()


async def settle(url: str, durables: list[str], timeout: float = 90.0) -> None:
    """Until every durable has nothing pending or unacked and the stream stopped growing
    (detectors publish alerts, which the projectors then read)."""
    nc = await nats.connect(servers=url.split(","))
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, quiet_since = -1, loop.time()
    try:
        while True:
            assert loop.time() < deadline, "the ingestors did not catch up"
            seq = (await js.stream_info(STREAM)).state.last_seq
            idle = True
            for name in durables:
                try:
                    info = await js.consumer_info(STREAM, name)
                except nats.js.errors.NotFoundError:
                    idle = False
                    break
                if (info.num_pending or 0) + (info.num_ack_pending or 0):
                    idle = False
                    break
            if seq != last or not idle:
                last, quiet_since = seq, loop.time()
            elif loop.time() - quiet_since > 1.5:
                return
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def run_all(all_settings: list[Settings], url: str) -> None:
    """Run the ingestors until they have projected everything, then stop them."""
    stop = asyncio.Event()
    services = []
    for settings in all_settings:
        ready = asyncio.Event()
        services.append(
            asyncio.create_task(
                run_service(
                    settings,
                    SourcesConfig(),
                    ready=ready.set,
                    stop=stop,
                    detection=DetectionConfig(),
                )
            )
        )
        await asyncio.wait_for(ready.wait(), 30)
    try:
        durables = [
            s.partition.durable(base) for s in all_settings for base in (PROJECTOR, DETECTOR)
        ]
        await settle(url, durables)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*services), 60)


Deployment = tuple[dict[str, Settings], list[MediaEvent], str, str]


def deploy(root: Path, url: str, **extra: str) -> Deployment:
    """Settings of the three ingestors (the Plex server, the Jellyfin server, all) on ``url``."""
    events, plex, jellyfin = feed()
    settings = {
        name: Settings.from_env(
            make_env(root / name, url, NATS_EMBEDDED="false", PROJECT_SERVERS=servers, **extra)
        )
        for name, servers in (("plex", plex), ("jellyfin", jellyfin), ("all", ""))
    }
    return settings, events, plex, jellyfin


@pytest.fixture
def deployment(tmp_path: Path, nats_server: EmbeddedServer) -> Deployment:
    return deploy(tmp_path, nats_server.url)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A real three-node nats-server cluster (tests/cluster.py)."""
    with nats_cluster(tmp_path / "cluster") as running:
        yield running


def media_ids(path: Path) -> set[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT event_id FROM media_events").fetchall()}
    finally:
        con.close()


def table(con: duckdb.DuckDBPyConnection, name: str, key: str) -> pl.DataFrame:
    frame = con.sql(f"SELECT * FROM {name}").pl()
    return frame.select(sorted(frame.columns)).sort(key.split(","))


async def test_two_partitioned_ingestors_read_as_one_equal_one_ingestor_over_all(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    url = cluster.url  # every node: the stream has three replicas
    settings, events, plex, jellyfin = deploy(tmp_path, url, NATS_REPLICAS="3")
    tmp = tmp_path
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    old = {e.event_id for i, e in enumerate(events) if i % OLD_EVERY == 0}
    assert {e.server_id for e in events if e.event_id in old} == {plex, jellyfin}

    def outgoing(part: list[MediaEvent]) -> list[OutgoingMessage]:
        return [
            OutgoingMessage(old_subject(e), encode_event(e), e.event_id)
            if e.event_id in old
            else OutgoingMessage.of(e)
            for e in part
        ]

    await publish(url, outgoing(first))
    everyone = list(settings.values())
    await run_all(everyone, url)

    # while they are stopped: a verdict on an audit entry of each server, an identity record
    # joining a Plex account and a Jellyfin account, and the rest of the feed
    con = duckdb.connect(str(settings["all"].duckdb_path), read_only=True)
    entries = con.execute(
        "SELECT server_id, min(audit_id) FROM dedupe_audit_log GROUP BY server_id ORDER BY 1"
    ).fetchall()
    accounts = con.execute(
        "SELECT server_id, min(user_id) FROM playback_events GROUP BY server_id ORDER BY 1"
    ).fetchall()
    con.close()
    at = datetime(2026, 12, 7, 12, tzinfo=UTC)
    records: list[OutgoingMessage] = [
        OutgoingMessage(d.subject, encode_record(d), d.record_id)
        for d in (AuditDecision.make(audit_id, "confirm", at, by="t") for _, audit_id in entries)
    ]
    merge = IdentityRecord.make("merge", "Ana", accounts, at, by="t")
    records.append(OutgoingMessage(merge.subject, encode_record(merge), merge.record_id))
    assert len(entries) >= 1 and {s for s, _ in accounts} == {plex, jellyfin}
    await publish(url, records + outgoing(second))
    await run_all(everyone, url)  # again, each from its own checkpoint

    # every event is projected exactly once across the two, by the ingestor of its server
    parts = {name: media_ids(settings[name].duckdb_path) for name in ("plex", "jellyfin")}
    single = media_ids(settings["all"].duckdb_path)
    assert parts["plex"].isdisjoint(parts["jellyfin"])
    assert parts["plex"] | parts["jellyfin"] == single
    by_id = {e.event_id: e for e in events}
    assert {by_id[i].server_id for i in parts["plex"]} == {plex}
    assert {by_id[i].server_id for i in parts["jellyfin"]} == {jellyfin}
    # the old-subject messages were taken by the ingestor of the server in their payload
    for name, server in (("plex", plex), ("jellyfin", jellyfin)):
        olds = {i for i in old if by_id[i].server_id == server}
        assert olds and olds & single <= parts[name]
    # the partitions read through filter subjects; detection ran per server and found some
    nc = await nats.connect(servers=url.split(","))
    try:
        info = await nc.jetstream().consumer_info(
            STREAM, settings["plex"].partition.durable(PROJECTOR)
        )
        assert info.config.filter_subjects == settings["plex"].partition.filters()
    finally:
        await nc.close()
    subjects = await stream_subjects(url)
    assert any(parse_media_subject(s).server is None for s in subjects if s.startswith("play"))

    # each partition's archive holds its servers' messages, and its log replays to its file
    for name, server in (("plex", plex), ("jellyfin", jellyfin)):
        named, archived = archived_events(settings[name].archive_dir)
        assert named and {by_id[i].server_id for i in named} == {server}
        assert parts[name] <= archived
        output = settings[name].data_dir / "replayed.duckdb"
        await replay_command(settings[name], output, out=lambda _: None)
        live, rebuilt = (duckdb.connect(str(p), read_only=True) for p in
                         (settings[name].duckdb_path, output))  # fmt: skip
        for what, key in (("playback_events", "correlation_key"), ("dedupe_audit_log", "audit_id")):
            assert_frame_equal(table(rebuilt, what, key), table(live, what, key))
        live.close()
        rebuilt.close()

    union = open_data_dirs([settings["plex"].data_dir, settings["jellyfin"].data_dir])
    one = open_data_dir(settings["all"].data_dir)
    async with union, one:
        assert (union.mode, one.mode) == ("file", "file")
        u, s = await union.snapshot(), await one.snapshot()
        for name, key in (
            ("playback_events", "correlation_key"),
            ("media_events", "event_id"),
            ("dedupe_audit_log", "audit_id"),
            ("detection_alerts", "alert_id"),
            ("audit_decisions", "seq"),
            ("identity_links", "seq,server_id"),
            ("person_accounts", "server_id,user_id"),
        ):
            assert_frame_equal(table(u, name, key), table(s, name, key))
        assert u.sql("SELECT count(*) FROM audit_decisions WHERE applied").fetchall()[0][0] == (
            len(entries)
        )
        # the report's figures, through the statistics functions unchanged
        assert_frame_equal(stats.plays(u), stats.plays(s))
        assert_frame_equal(stats.by_user(u), stats.by_user(s))
        assert_frame_equal(stats.by_server(u), stats.by_server(s))
        assert_frame_equal(stats.by_person(u), stats.by_person(s))
        assert_frame_equal(stats.max_concurrent_streams(u), stats.max_concurrent_streams(s))
        audit = "SELECT tier, status, count(*) FROM dedupe_audit_log GROUP BY ALL ORDER BY ALL"
        assert u.sql(audit).fetchall() == s.sql(audit).fetchall()
        assert u.sql(audit).fetchall()  # the feed has drops and links to compare
        playbacks = "SELECT count(*) FROM playback_events"
        assert u.sql(playbacks).fetchall() == s.sql(playbacks).fetchall() != [(0,)]
        # an as-of answer over the union equals the single one's
        cut = "2026-01-06T12:00:00Z"
        with await union.as_of(cut, clock="occurred") as ua, await one.as_of(cut, "occurred") as sa:
            assert ua.counts() == sa.counts()

    # the overview report, unchanged, over the two directories as one and over the single one
    both = f"{settings['plex'].data_dir},{settings['jellyfin'].data_dir}"
    texts = [
        await asyncio.to_thread(report_text, data_dir, out)
        for data_dir, out in ((both, tmp / "union"), (str(settings["all"].data_dir), tmp / "one"))
    ]
    assert texts[0] == texts[1] and "plays" in texts[0].lower()


def archived_events(archive_dir: Path) -> tuple[set[str], set[str]]:
    """The ids of the media events in an archive's sealed segments: those under a subject
    naming their server, and all (an old-form subject is every server's: kept as stored)."""
    named, every = set(), set()
    for segment in archive_segments(archive_dir):
        for row in read_segment(segment.path).to_pylist():
            subject = parse_media_subject(row["subject"])
            if subject is not None:
                event_id = decode_event(row["data"]).event_id
                every.add(event_id)
                if subject.server is not None:
                    named.add(event_id)
    return named, every


def report_text(data_dir: str, out: Path) -> str:
    """The plain-text outputs of the overview notebook run by ``workbench report``."""
    notebook = Path(__file__).parents[2] / "notebooks" / "overview.ipynb"
    result = subprocess.run(
        [*WORKBENCH, "report", str(notebook), "-p", "data_dir", data_dir, "--out", str(out)],
        env=subprocess_env({"WORKBENCH_HTTP_URL": "", "WORKBENCH_NATS_URL": ""}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    executed = nbformat.read(out / "overview.ipynb", as_version=4)
    return "".join(
        output.get("text", "")
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def dropped(projection: object) -> set[str]:
    con = projection.con  # type: ignore[attr-defined]
    return {r[0] for r in con.execute("SELECT event_id FROM dedupe_audit_log").fetchall()}


async def stream_subjects(url: str) -> set[str]:
    nc = await nats.connect(servers=url.split(","))
    try:
        info = await nc.jetstream().stream_info(STREAM, subjects_filter=">")
        return set((info.state.subjects or {}).keys())
    finally:
        await nc.close()


async def test_a_restart_with_another_server_set_stops_with_one_line(
    deployment: Deployment,
    nats_server: EmbeddedServer,
) -> None:
    settings, events, plex, jellyfin = deployment
    # the stream ends with another server's message
    end = next(i for i, e in enumerate(events) if i > 50 and e.server_id != plex)
    feed_part = events[: end + 1]
    await publish(nats_server.url, [OutgoingMessage.of(e) for e in feed_part])
    await run_all([settings["plex"]], nats_server.url)
    # `ingestor status` asks the partition's own durable: nothing pending for it
    status = await status_command(settings["plex"])
    assert status["consumer_pending"] == 0 and status["checkpoint_seq"] < status["stream_last_seq"]
    moved = Settings.from_env(
        make_env(
            settings["plex"].data_dir,
            nats_server.url,
            NATS_EMBEDDED="false",
            PROJECT_SERVERS=f"{plex},{jellyfin}",
        )
    )
    from ingestor.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        await run_service(moved, SourcesConfig(), stop=asyncio.Event())
    (line,) = info.value.problems
    assert f"holds the projection of servers {plex}" in line


async def test_a_filtered_router_reads_its_servers_without_restarts_and_resumes(
    deployment: Deployment,
    nats_server: EmbeddedServer,
) -> None:
    """Stream sequences of one server jump over the other's by design: the router checks
    its deliveries by delivery sequence, so it never takes a jump for a lost message."""
    from ingestor.app import new_pipeline, open_projection
    from ingestor.router import Router

    settings, events, plex, _ = deployment
    jelly = settings["jellyfin"]
    half = len(events) // 2
    await publish(nats_server.url, [OutgoingMessage.of(e) for e in events[:half]])
    mine = {e.event_id for e in events if e.server_id == jelly.partition.servers[0]}
    nc = await nats.connect(servers=nats_server.url.split(","))
    projection = open_projection(jelly.duckdb_path)
    try:
        for part in (events[:half], events[half:]):
            if part is not events[:half]:
                await publish(nats_server.url, [OutgoingMessage.of(e) for e in part])
            router = Router(
                nc,
                new_pipeline(jelly, projection),
                batch_size=7,  # many batches, each acked with AckAll
                flush_interval=0.05,
                consumer=jelly.partition.durable(PROJECTOR),
                filter_subjects=jelly.partition.filters(),
            )
            task = asyncio.create_task(router.run())
            await settle(nats_server.url, [jelly.partition.durable(PROJECTOR)])
            router.stop()
            stats = await task
            assert stats.restarts == 0, stats.last_error
            assert stats.batches >= 1
        rows = projection.con.execute("SELECT event_id FROM media_events").fetchall()
        ids = {r[0] for r in rows}
        assert ids and ids <= mine  # the Jellyfin server's events only
        assert plex not in {e.server_id for e in events if e.event_id in ids}
        later = {e.event_id for e in events[half:] if e.event_id in mine}
        assert ids >= later - dropped(projection)  # resumed from its checkpoint
    finally:
        projection.close()
        await nc.close()


def two_data_dirs(root: Path) -> list[Path]:
    dirs = [root / "a", root / "b"]
    for d in dirs:
        Projection(d / "analytics.duckdb").close()
    return dirs


async def test_the_union_says_in_one_line_what_it_cannot_read(tmp_path: Path) -> None:
    dirs = two_data_dirs(tmp_path)
    with pytest.raises(WorkbenchError, match=r"nowhere/analytics.duckdb does not exist"):
        open_data_dirs([dirs[0], tmp_path / "nowhere"])
    async with open_data_dirs(dirs) as wb:  # no log offline: said, not a traceback
        assert wb.mode == "file"
        with pytest.raises(WorkbenchError, match="several data directories read as one"):
            await wb.events()


def test_a_file_held_by_a_running_ingestor_is_named_in_one_line(tmp_path: Path) -> None:
    dirs = two_data_dirs(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(dirs[1] / "analytics.duckdb")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(WorkbenchError) as info:
            open_data_dir(f"{dirs[0]},{dirs[1]}")  # WORKBENCH_DATA_DIR's form
        assert "held by a running ingestor" in str(info.value)
        assert len(str(info.value).splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(60)
"""
