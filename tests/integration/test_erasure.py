"""Forgetting a user (issue 12, part 4; ingestor/erasure.py), with every part real: a
nats-server whose store is under DATA_DIR, ``ingestor run`` (router, archiver, detector) on a
DuckDB file, sealed archive segments. A simulated feed of several people is projected and
archived; one person's two accounts (Plex and Jellyfin) are erased, one while the ingestor
runs and one while it is down. Then no file under DATA_DIR holds a byte of that person's
name, email, user ids or addresses; the projection equals the one before minus that person,
every other user's figures are unchanged, and a rebuild from the log (``ingestor replay``
and the workbench's replay) gives the same tables (docs/architecture.md, invariant 2)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import msgspec
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from ingestor.app import open_projection, run_service
from ingestor.archive import archive_segments
from ingestor.commands.replay import replay_command
from ingestor.commands.status import status_command
from ingestor.config import Settings
from ingestor.detection.config import DetectionConfig
from ingestor.erasure import account_digest, erase
from ingestor.events import MediaEvent
from ingestor.nats.connection import open_nats
from ingestor.nats.publisher import Publisher
from ingestor.nats.server import EmbeddedServer
from ingestor.records import IdentityRecord, encode_record
from ingestor.simulation import SimulationConfig, simulate
from ingestor.sources.config import SourcesConfig
from tests.conftest import free_port, make_env
from workbench.log import EventLog
from workbench.replay import replay
from workbench.stats import by_user

pytestmark = pytest.mark.integration

TABLES = {
    "media_events": "SELECT * FROM media_events ORDER BY seq",
    "playback_events": "SELECT * FROM playback_events ORDER BY correlation_key",
    "dedupe_audit_log": "SELECT * FROM dedupe_audit_log ORDER BY seq, audit_id",
    "detection_alerts": "SELECT * FROM detection_alerts ORDER BY seq",
    "identity_links": "SELECT * FROM identity_links ORDER BY seq, server_id, user_id",
}


def tables(con, erased: set[tuple[str, str]] = frozenset()) -> dict[str, pl.DataFrame]:
    out = {}
    for name, sql in TABLES.items():
        frame = con.sql(sql).pl()
        if erased and frame.height:
            pairs = list(zip(frame["server_id"], frame["user_id"], strict=True))
            frame = frame.filter(pl.Series([p not in erased for p in pairs]))
        out[name] = frame
    return out


def figures(db) -> pl.DataFrame:
    plays = by_user(db, metric="plays").select("server_id", "user_id", "plays")
    watch = by_user(db, metric="watch_time").select("server_id", "user_id", "watch_time")
    return plays.join(watch, on=["server_id", "user_id"]).sort("server_id", "user_id")


def byte_hits(root: Path, needles: Iterable[bytes]) -> dict[str, list[str]]:
    """Every file under ``root`` that holds a needle (raw bytes, and JSON-escaped UTF-16
    forms are the same for these ASCII needles), by needle."""
    hits: dict[str, list[str]] = {}
    files = [p for p in root.rglob("*") if p.is_file()]
    for needle in needles:
        forms = {needle, needle.decode().encode("utf-16-le")}
        for path in files:
            data = path.read_bytes()
            if any(form in data for form in forms):
                hits.setdefault(needle.decode(), []).append(str(path.relative_to(root)))
    return hits


class Service:
    """``ingestor run`` in this process, stopped cleanly (archive sealed, file closed)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Service:
        # one stream at a time: the simulator's person on two devices at once is alerted
        detection = DetectionConfig.from_env({"DETECTION_CONCURRENT_STREAMS_LIMIT": "1"})
        self.task = asyncio.create_task(
            run_service(
                self.settings,
                SourcesConfig(),
                ready=self.ready.set,
                stop=self.stop,
                detection=detection,
            )
        )
        await asyncio.wait_for(self.ready.wait(), 60)
        return self

    async def caught_up(self, seq: int | None = None) -> dict:
        for _ in range(600):
            status = await status_command(self.settings)
            last = status["stream_last_seq"] or 0
            if status["checkpoint_seq"] == last and last >= (seq or 0):
                await asyncio.sleep(0.5)  # alerts the detector may still publish
                again = await status_command(self.settings)
                if again["stream_last_seq"] == last and again["checkpoint_seq"] == last:
                    return again
            await asyncio.sleep(0.1)
        raise AssertionError(f"the ingestor did not catch up: {status}")

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 60)


def with_emails(events: list[MediaEvent]) -> list[MediaEvent]:
    """The simulator's events, each user given an email (the simulator has none)."""
    return [
        msgspec.structs.replace(e, email=f"{e.username}.{e.user_id[:6]}@mail.example")
        for e in events
    ]


async def publish(settings: Settings, events: list[MediaEvent]) -> None:
    handle = await open_nats(settings)
    try:
        await Publisher(handle.nc).publish_many(events)
    finally:
        await handle.close()


async def test_an_erased_user_leaves_no_byte_under_data_dir_and_a_replay_agrees(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = EmbeddedServer("127.0.0.1", free_port(), data / "nats" / "jetstream")
    server.start()
    env = make_env(data, server.url, NATS_EMBEDDED="false")
    settings = Settings.from_env(env)
    try:
        feed = with_emails(simulate(SimulationConfig(seed=12, users=6, days=4)).events)
        await publish(settings, feed)
        async with Service(settings) as service:
            await service.caught_up()
        segments = archive_segments(settings.archive_dir)
        assert segments, "the archive sealed segments on stop"
        projection = open_projection(settings.duckdb_path, read_only=True)
        try:
            before = tables(projection.con)
            before_figures = figures(projection)
        finally:
            projection.close()
        alerts = before["detection_alerts"]
        # a notebook's replay of the log, kept while its log lives (workbench.replay)
        notebook = await open_nats(settings)
        notebook_log = EventLog(settings.archive_dir, nc=notebook.nc)
        with await replay(notebook_log, progress=False) as answer:
            assert_frame_equal(figures(answer), before_figures)
        assert alerts.height > 0 and before["dedupe_audit_log"].height > 0

        # the person to forget: one an alert names, with an account on each server
        name = alerts["username"].mode().sort()[0]
        theirs = [e for e in feed if e.username == name]
        accounts = sorted({(e.server_id, e.user_id) for e in theirs})
        assert len(accounts) == 2, accounts  # a Plex and a Jellyfin account
        others = [e for e in feed if e.username != name]
        assert not {(e.server_id, e.user_id) for e in others} & set(accounts)
        # what must be gone: values of theirs that no other user's event holds
        mine = {e.username for e in theirs} | {e.friendly_name for e in theirs}
        mine |= {e.email for e in theirs} | {u for _, u in accounts}
        mine |= {e.ip_address for e in theirs}
        other_bytes = b"\n".join(msgspec.json.encode(e) for e in others)
        needles = sorted(v.encode() for v in mine if v and v.encode() not in other_bytes)
        assert {name.encode(), *(u.encode() for _, u in accounts)} <= set(needles)
        assert any(b"@" in n for n in needles) and any(n.count(b".") == 3 for n in needles)
        # the search finds each of them before the erasure
        assert byte_hits(data, needles).keys() == {n.decode() for n in needles}

        # more copies of them: a report the router dead-letters (cut short: undecodable), and
        # an identity record merging their two accounts under their name
        (plex, jelly) = sorted(accounts, key=lambda a: len(a[1]))
        broken = next(e for e in theirs if e.user_id == plex[1] and e.ip_address)
        merge = IdentityRecord.make("merge", name, accounts, datetime.now(UTC), by="admin")
        handle = await open_nats(settings)
        try:
            await handle.js.publish(broken.subject, msgspec.json.encode(broken)[:-40])
            await handle.js.publish(merge.subject, encode_record(merge))
        finally:
            await handle.close()

        # one account erased while the ingestor runs: it applies the record at once
        async with Service(settings) as service:
            status = await service.caught_up()
            assert status["dlq_messages"] == 1
            while status["archive"]["buffered_messages"] < 2:  # read, not sealed yet
                await asyncio.sleep(0.05)
                status = await status_command(settings)
            said: list[str] = []
            report = await erase(settings, plex[1], out=said.append)
            assert report.dead_letters == 1
            assert not any("warning" in line for line in said), said
            assert report.record is not None and report.record.events > 0
            assert report.record.accounts == (account_digest(*plex),)
            await service.caught_up(report.record_seq)
            # the running archiver had read the identity record and the cut-short report
            # before erase deleted them from the stream: it leaves them out of its segment
            async with asyncio.timeout(30):
                while status["archive"]["erased_unsealed"] < 2:
                    await asyncio.sleep(0.05)
                    status = await status_command(settings)
        # the other while it is down, without --server: the next run applies it
        report = await erase(settings, jelly[1], out=lambda _: None)
        assert report.servers == [jelly[0]] and report.stream_deleted > 0
        async with Service(settings) as service:
            await service.caught_up(report.record_seq)
        # erase is idempotent: the log holds nothing of them any more
        for _, user in accounts:
            assert (await erase(settings, user, out=lambda _: None)).record is None

        projection = open_projection(settings.duckdb_path, read_only=True)
        try:
            after = tables(projection.con)
            after_figures = figures(projection)
            log_rows = projection.con.sql("SELECT * FROM erasure_log ORDER BY seq").pl()
        finally:
            projection.close()
        erased = set(accounts)
        expected = tables_minus(before, erased)
        for table in TABLES:
            assert_frame_equal(after[table], expected[table], check_row_order=True)
        # every other user's figures unchanged; the erased accounts have none
        assert_frame_equal(
            after_figures,
            before_figures.filter(
                ~pl.struct("server_id", "user_id").is_in(
                    [{"server_id": s, "user_id": u} for s, u in accounts]
                )
            ),
        )
        assert log_rows.height == 2 and set(log_rows["accounts"]) == {1}
        # the records count what erase deleted: every stored event of theirs (JetStream kept
        # one message per event id) and the cut-short report, the alerts naming them and
        # the identity record (once: the archiver never sealed it); no identifying column
        assert log_rows["log_events"].sum() == len({e.event_id for e in theirs}) + 1
        named = alerts.filter(pl.col("username") == name).height
        assert list(log_rows["log_records"]) == [named + 1, 0]
        assert log_rows["dead_letters"].sum() == 1

        # the notebook's kept projection applies the erasure records when it catches up
        with await replay(notebook_log, progress=False) as answer:
            assert answer.stats.messages > 0  # only what the log gained: the records
            assert_frame_equal(figures(answer), after_figures)
        await notebook.close()

        # the byte search: stream store (the server stopped: its blocks flushed), archive,
        # the DuckDB file (compacted when the ingestor closed it), everything else
        server.stop()
        leftovers = byte_hits(data, needles)
        assert leftovers == {}, leftovers
        assert [s.path.name for s in archive_segments(settings.archive_dir)][: len(segments)] == [
            s.path.name for s in segments
        ], "rewritten segments keep their names and ranges"

        # a rebuild from the log gives the same projection
        server.start()
        out = tmp_path / "replayed.duckdb"
        await replay_command(settings, out, out=lambda _: None)
        replayed = open_projection(out, read_only=True)
        try:
            rebuilt = tables(replayed.con)
            rebuilt_figures = figures(replayed)
            replay_log = replayed.con.sql("SELECT * FROM erasure_log ORDER BY seq").pl()
        finally:
            replayed.close()
        for table in TABLES:
            assert_frame_equal(rebuilt[table], after[table], check_row_order=True)
        assert_frame_equal(rebuilt_figures, after_figures)
        assert_frame_equal(replay_log, log_rows)
        handle = await open_nats(settings)
        try:
            log_ = EventLog(settings.archive_dir, nc=handle.nc)
            with await replay(log_, progress=False) as answer:
                assert_frame_equal(figures(answer), after_figures)
                assert answer.counts()["playbacks"] == after["playback_events"].height
        finally:
            await handle.close()
    finally:
        server.stop()


def tables_minus(
    frames: dict[str, pl.DataFrame], erased: set[tuple[str, str]]
) -> dict[str, pl.DataFrame]:
    out = {}
    for name, frame in frames.items():
        pairs = list(zip(frame["server_id"], frame["user_id"], strict=True))
        out[name] = frame.filter(pl.Series([p not in erased for p in pairs], dtype=pl.Boolean))
    return out


# --------------------------------------------------------------------------- IP_ANONYMIZE


async def test_ip_anonymize_stores_a_truncated_address_located_from_the_full_one(
    tmp_path: Path,
) -> None:
    import aiohttp
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    from ingestor.sources.config import PlexWebhookConfig
    from tests.fakes.plex import multipart_body, webhook_payload

    # a globally routable address (the geo database ignores documentation ranges)
    address = "81.2.69.142"
    # the full address is in London, its /24's network address in Paris: the stored place
    # says which one was looked up
    truncated = "81.2.69.0"
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-City", languages=["en"])
    for network, (country, city, point) in {
        address: ("GB", "London", (51.5, -0.12)),
        truncated: ("FR", "Paris", (48.86, 2.35)),
    }.items():
        record = {
            "country": {"iso_code": country},
            "city": {"names": {"en": city}},
            "location": {"latitude": point[0], "longitude": point[1]},
        }
        writer.insert_network(IPSet([f"{network}/32"]), record)
    geoip = tmp_path / "city.mmdb"
    writer.to_db_file(str(geoip))

    data = tmp_path / "data"
    server = EmbeddedServer("127.0.0.1", free_port(), data / "nats" / "jetstream")
    server.start()
    try:
        settings = Settings.from_env(
            make_env(data, server.url, NATS_EMBEDDED="false", IP_ANONYMIZE="true")
        )
        assert settings.ip_anonymize
        detection = DetectionConfig.from_env({"GEOIP_DB": str(geoip)})
        stop, ready = asyncio.Event(), asyncio.Event()
        service = asyncio.create_task(
            run_service(
                settings,
                SourcesConfig(plex_webhook=PlexWebhookConfig()),
                ready=ready.set,
                stop=stop,
                detection=detection,
            )
        )
        await asyncio.wait_for(ready.wait(), 60)
        url = f"http://{settings.http_host}:{settings.http_port}/webhooks/plex"
        async with aiohttp.ClientSession() as http:
            for kind, offset in (("media.play", None), ("media.stop", 60_000)):
                payload = webhook_payload(kind, view_offset=offset, local=False)
                payload["Player"]["publicAddress"] = address
                body, content_type = multipart_body(payload)
                async with http.post(
                    url, data=body, headers={"Content-Type": content_type}
                ) as response:
                    assert response.status == 200, await response.text()
        for _ in range(300):
            status = await status_command(settings)
            if status["stream_last_seq"] and status["checkpoint_seq"] == status["stream_last_seq"]:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(service, 60)
    finally:
        server.stop()

    projection = open_projection(settings.duckdb_path, read_only=True)
    try:
        events = projection.con.sql(
            "SELECT ip_address, geo_country, geo_city, geo_latitude, raw_payload"
            " FROM media_events_detail ORDER BY seq"
        ).fetchall()
        playbacks = projection.con.sql("SELECT ip_address FROM playback_events").fetchall()
    finally:
        projection.close()
    assert len(events) == 2
    for ip, country, city, latitude, raw in events:
        assert (ip, country, city, latitude) == (truncated, "GB", "London", 51.5)
        assert address not in raw and truncated in raw
    assert playbacks == [(truncated,)]
    assert byte_hits(data, [address.encode()]) == {}


def test_a_bad_ip_anonymize_value_is_one_line(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import INGESTOR, subprocess_env

    env = subprocess_env({"DATA_DIR": str(tmp_path), "IP_ANONYMIZE": "maybe"})
    done = subprocess.run(
        [*INGESTOR, "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr == "ingestor: IP_ANONYMIZE='maybe' is invalid: expected true or false\n"


async def test_a_segment_whose_every_message_is_erased_still_covers_its_range(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    from ingestor.archive import write_segment
    from ingestor.erasure import Target, rewrite_segments
    from ingestor.messages import Message

    events = simulate(SimulationConfig(seed=3, users=2, days=1)).events[:40]
    gone = events[0]
    at = datetime(2026, 1, 5, tzinfo=UTC)
    messages = [Message(i + 1, at, msgspec.json.encode(e), e.subject) for i, e in enumerate(events)]
    archive = tmp_path / "archive"
    archive.mkdir()
    theirs = [m for m, e in zip(messages, events, strict=True) if e.user_id == gone.user_id]
    rest = [m for m, e in zip(messages, events, strict=True) if e.user_id != gone.user_id]
    assert theirs and rest
    # one segment of only theirs, one mixed
    only = write_segment(archive, theirs[:1])
    mixed = write_segment(archive, [m for m in messages if m.seq > only.last_seq])
    segments, rows = rewrite_segments(archive, Target(gone.user_id, gone.server_id))
    assert (segments, rows) == (2, len(theirs))
    assert [s.path.name for s in archive_segments(archive)] == [only.path.name, mixed.path.name]
    log_ = EventLog(archive)
    bounds = await log_.bounds()
    assert (bounds.first_seq, bounds.last_seq) == (1, messages[-1].seq)
    read = [m.seq for chunk in [c async for c in log_.messages()] for m in chunk]
    assert read == [m.seq for m in rest]
    assert rewrite_segments(archive, Target(gone.user_id, gone.server_id)) == (0, 0)


async def test_erase_on_the_command_line_asks_for_the_server_when_the_id_is_on_two(
    env: dict[str, str], settings: Settings
) -> None:
    import subprocess

    from tests.conftest import INGESTOR, subprocess_env

    events = simulate(SimulationConfig(seed=5, users=2, days=1)).events
    one = events[0]
    twin = msgspec.structs.replace(
        one, event_id="f" * 32, server_id="other-server", session_key="s-twin"
    )
    await publish(settings, [one, twin])

    def erase_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*INGESTOR, "erase", *args],
            env=subprocess_env(env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = await asyncio.to_thread(erase_cli, "--user", one.user_id)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "name one with --server" in done.stderr
    assert one.server_id in done.stderr and "other-server" in done.stderr
    done = await asyncio.to_thread(erase_cli, "--user", one.user_id, "--server", "other-server")
    assert done.returncode == 0, done.stderr
    assert "erased user" in done.stdout and "1 messages deleted" in done.stdout
    handle = await open_nats(settings)
    try:
        left = [
            m for chunk in [c async for c in EventLog(None, nc=handle.nc).messages()] for m in chunk
        ]
    finally:
        await handle.close()
    assert [m.subject.split(".")[0] for m in left] == ["playback", "erasure"]
    assert msgspec.json.decode(left[0].data)["server_id"] == one.server_id


async def test_a_running_ingestor_compacts_its_file_after_an_erasure_while_readers_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``ingestor run`` stays up: once it has applied an erasure record, no byte of the
    erased account is in its DuckDB file or WAL. Meanwhile readers hammer ``/status``,
    ``/query`` and ``/readyz``: every answer is a 200 through the swap of the connection;
    afterwards the projection answers queries and projects new events."""
    data = tmp_path / "data"
    db = tmp_path / "db"  # the DuckDB file and its WAL alone, for the byte search
    server = EmbeddedServer("127.0.0.1", free_port(), data / "nats" / "jetstream")
    server.start()
    env = make_env(
        data, server.url, NATS_EMBEDDED="false", DUCKDB_PATH=str(db / "analytics.duckdb")
    )
    settings = Settings.from_env(env)
    base = f"http://{settings.http_host}:{settings.http_port}"
    try:
        feed = with_emails(simulate(SimulationConfig(seed=12, users=6, days=4)).events)
        # the account to forget: a Jellyfin one (32-hex id); its owner's Plex account stays
        gone = next(e for e in feed if len(e.user_id) == 32)
        account = (gone.server_id, gone.user_id)
        theirs = [e for e in feed if (e.server_id, e.user_id) == account]
        others = [e for e in feed if (e.server_id, e.user_id) != account]
        other_bytes = b"\n".join(msgspec.json.encode(e) for e in others)
        mine = {e.email for e in theirs} | {e.ip_address for e in theirs} | {gone.user_id}
        needles = sorted(v.encode() for v in mine if v and v.encode() not in other_bytes)
        assert gone.user_id.encode() in needles and any(b"@" in n for n in needles)
        # the last events of the other accounts come after the erasure
        later = [e for e in others if e.occurred_at >= feed[-1].occurred_at - timedelta(hours=6)]
        assert later
        later_ids = {e.event_id for e in later}
        first = [e for e in feed if e.event_id not in later_ids]

        await publish(settings, first)

        async with Service(settings) as service:
            await service.caught_up()
            # the search can fail: the running ingestor's file holds them before the erasure
            assert byte_hits(db, needles), "the DuckDB file holds none of the needles"

            answers: list[tuple[str, int]] = []
            failures: list[str] = []
            hammering = asyncio.Event()

            async def hammer(method: str, path: str, body: str | None = None) -> None:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(10)) as http:
                    while not hammering.is_set():
                        try:
                            async with http.request(method, base + path, data=body) as r:
                                payload = await r.read()
                                answers.append((path, r.status))
                                if r.status != 200:
                                    failures.append(f"{path}: {r.status} {payload[:200]!r}")
                                elif path == "/query":
                                    table = pa.ipc.open_stream(payload).read_all()
                                    assert table.num_rows == 1
                        except Exception as exc:  # an exception is a failure too
                            failures.append(f"{path}: {exc!r}")

            query = "SELECT count(*) AS n FROM media_events"
            with caplog.at_level(logging.INFO, logger="ingestor.projection.store"):
                readers = [
                    asyncio.create_task(hammer("GET", "/status")),
                    asyncio.create_task(hammer("POST", "/query", query)),
                    asyncio.create_task(hammer("POST", "/query", query)),
                    asyncio.create_task(hammer("GET", "/readyz")),
                ]
                await asyncio.sleep(0.3)
                report = await erase(settings, gone.user_id, out=lambda _: None)
                assert report.record is not None and report.servers == [gone.server_id]
                await service.caught_up(report.record_seq)
                # the service is still up: the file and its WAL hold no byte of the account
                leftovers = byte_hits(db, needles)
                assert leftovers == {}, leftovers
                await asyncio.sleep(0.3)
                hammering.set()
                await asyncio.gather(*readers)
            compacted = [r.getMessage() for r in caplog.records if "compacted" in r.getMessage()]
            assert len(compacted) == 1 and "after an erasure in" in compacted[0], compacted
            assert failures == [], failures[:5]
            assert {p for p, _ in answers} == {"/status", "/query", "/readyz"}
            assert len(answers) > 20

            # afterwards: queries are answered and new events projected
            await publish(settings, later)
            await service.caught_up()
            async with (
                aiohttp.ClientSession() as http,
                http.post(base + "/query", data="SELECT event_id FROM media_events") as r,
            ):
                assert r.status == 200, await r.text()
                ids = set(pa.ipc.open_stream(await r.read()).read_all()["event_id"].to_pylist())
            assert later_ids <= ids
            assert not {e.event_id for e in theirs} & ids
        assert byte_hits(db, needles) == {}
    finally:
        server.stop()
