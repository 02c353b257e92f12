"""One person, several accounts (Tautulli#2019): identity records decode by subject, the
projection applies merges and unmerges in stream order (history kept, one person per account
at a time), as-of answers see the mapping as of their point, and statistics count by person
exactly as a plain polars computation over the playback rows does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ingestor.batch import decode_batch
from ingestor.dedup import DedupIndex
from ingestor.errors import InvalidEvent
from ingestor.events import encode_event
from ingestor.pipeline import Message, Pipeline
from ingestor.projection import Projection
from ingestor.projection.asof import open_as_of, resolve, write_as_of
from ingestor.projection.store import MIGRATIONS, PROJECTION_SCHEMA_VERSION
from ingestor.records import Account, IdentityRecord, decode_record, encode_record
from tests.factory import T0, plex_playback
from workbench import identities
from workbench.stats import by_person, by_user, plays

DECIDED = datetime(2026, 2, 1, tzinfo=UTC)
ANA = [("plex-1", "1"), ("plex-2", "7"), ("jf", "e1")]


def identity(seq: int, action: str, person: str, accounts=(), *, at=None) -> Message:
    record = IdentityRecord.make(action, person, accounts, at or DECIDED + timedelta(minutes=seq))
    recorded = T0 + timedelta(hours=seq)
    return Message(seq, recorded, encode_record(record), record.subject)


def mapping(con) -> set[tuple[str, str, str]]:
    return set(con.execute("SELECT person, server_id, user_id FROM person_accounts").fetchall())


# --------------------------------------------------------------------------- the record


def test_a_record_is_deterministic_sorted_and_refuses_strings_and_empty_merges() -> None:
    a = IdentityRecord.make("merge", " Ana ", ANA, DECIDED, by="admin")
    b = IdentityRecord.make("merge", "Ana", [*reversed(ANA), ANA[0]], DECIDED, by="admin")
    assert a == b and a.person == "Ana"
    assert a.accounts == (Account("jf", "e1"), Account("plex-1", "1"), Account("plex-2", "7"))
    assert a.record_id != IdentityRecord.make("unmerge", "Ana", ANA, DECIDED).record_id
    assert decode_record("identity.merge", encode_record(a)) == a
    with pytest.raises(ValueError, match=r"\(server_id, user_id\) pair"):
        IdentityRecord.make("merge", "Ana", ["plex-1:1"], DECIDED)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one account"):
        IdentityRecord.make("merge", "Ana", [], DECIDED)
    with pytest.raises(ValueError, match="needs a name"):
        IdentityRecord.make("merge", "  ", ANA, DECIDED)
    with pytest.raises(ValueError, match="timezone-aware"):
        IdentityRecord.make("merge", "Ana", ANA, datetime(2026, 2, 1))


def test_an_unreadable_identity_record_is_permanent_and_the_batch_decoder_routes_it() -> None:
    with pytest.raises(InvalidEvent, match="no accounts"):
        decode_record(
            "identity.merge",
            b'{"record_id":"x","action":"merge","person":"A","occurred_at":"2026-02-01T00:00:00Z"}',
        )
    with pytest.raises(InvalidEvent, match="undecodable"):
        decode_record("identity.merge", b'{"record_id":"x"}')
    good = identity(2, "merge", "Ana", ANA)
    decoded = decode_batch([Message(1, T0, b"{not json", "identity.merge"), good])
    assert [m.seq for m, _ in decoded.records] == [2]
    assert [r.message.seq for r in decoded.rejected] == [1]
    assert decoded.events == 0


# --------------------------------------------------------------------------- projection


def test_merges_and_unmerges_apply_in_order_and_keep_their_history() -> None:
    db = Projection(":memory:")
    pipeline = Pipeline(db, DedupIndex(tolerance=10))
    batch = [
        identity(1, "merge", "Ana", ANA),
        identity(2, "merge", "Bo", [("jf", "e1")]),  # moves jf/e1 from Ana to Bo
        identity(3, "merge", "Bo", [("jf", "e1")]),  # already Bo's: recorded, changes nothing
        identity(4, "unmerge", "Ana", [("jf", "e1")]),  # Bo's, not Ana's: changes nothing
        identity(5, "unmerge", "Ana"),  # all Ana's accounts now: plex-1/1, plex-2/7
    ]
    outcome = pipeline.process(batch)
    assert outcome.rejected == []
    assert db.checkpoint() == 5
    assert [o.applied for o in outcome.result.identities] == [True, True, False, False, True]
    assert mapping(db.con) == {("Bo", "jf", "e1")}
    history = identities.history(db)
    assert history.select("seq", "action", "person", "server_id", "applied", "detail").rows() == [
        (1, "merge", "Ana", "jf", True, "merged"),
        (1, "merge", "Ana", "plex-1", True, "merged"),
        (1, "merge", "Ana", "plex-2", True, "merged"),
        (2, "merge", "Bo", "jf", True, "moved from Ana"),
        (3, "merge", "Bo", "jf", False, "already Bo's"),
        (4, "unmerge", "Ana", "jf", False, "Bo's, not Ana's"),
        (5, "unmerge", "Ana", "plex-1", True, "unmerged"),
        (5, "unmerge", "Ana", "plex-2", True, "unmerged"),
    ]
    # an unmerge of a person without accounts is kept too, and changes nothing
    pipeline.process([identity(6, "unmerge", "Ana")])
    assert identities.history(db).filter(pl.col("seq") == 6)["detail"].to_list() == [
        "Ana has no accounts"
    ]
    assert db.checkpoint() == 6


def test_an_identity_record_inside_a_batch_of_events_commits_at_its_place() -> None:
    events = plex_playback(user_id="1", server_id="plex-1")
    messages = [Message(i + 1, T0, encode_event(e)) for i, e in enumerate(events)]
    merge = identity(3, "merge", "Ana", ANA)
    batch = (
        messages[:2] + [merge] + [Message(m.seq + 1, m.recorded_at, m.data) for m in messages[2:]]
    )
    db = Projection(":memory:")
    outcome = Pipeline(db, DedupIndex(tolerance=10)).process(batch)
    assert outcome.rejected == [] and db.checkpoint() == len(batch)
    assert db.counts()["accepted"] == len(events)
    assert identities.history(db)["seq"].unique().to_list() == [3]


def test_as_of_sees_the_mapping_of_its_point_on_both_clocks(tmp_path: Path) -> None:
    db = Projection(":memory:")
    pipeline = Pipeline(db, DedupIndex(tolerance=10))
    pipeline.process([identity(1, "merge", "Ana", ANA)])
    pipeline.process([identity(2, "unmerge", "Ana", [("jf", "e1")])])
    pipeline.process([identity(3, "merge", "Bo", [("plex-2", "7")])])

    def as_of(until: datetime | None, clock: str = "recorded") -> set:
        cursor, _ = open_as_of(db.con, resolve(db.con, until, clock))
        try:
            return mapping(cursor)
        finally:
            cursor.close()

    everything = {("Ana", "jf", "e1"), ("Ana", "plex-1", "1"), ("Ana", "plex-2", "7")}
    assert as_of(T0) == set()  # before the first record was recorded
    assert as_of(T0 + timedelta(hours=1)) == everything
    assert as_of(T0 + timedelta(hours=2, minutes=30)) == everything - {("Ana", "jf", "e1")}
    now = {("Ana", "plex-1", "1"), ("Bo", "plex-2", "7")}
    assert as_of(T0 + timedelta(hours=3)) == now == as_of(None) == mapping(db.con)
    # occurred clock: what happened by T, as known now (records, like verdicts, as known)
    assert as_of(T0, "occurred") == now
    # the as-of file written from a point carries its mapping
    cursor, _ = open_as_of(db.con, resolve(db.con, T0 + timedelta(hours=1)))
    try:
        write_as_of(cursor, tmp_path / "then.duckdb")
    finally:
        cursor.close()
    then = Projection(tmp_path / "then.duckdb")
    assert mapping(then.con) == everything
    then.close()


def test_an_older_projection_file_gains_the_identity_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    Projection(path).close()
    con = duckdb.connect(str(path))
    con.execute("DROP VIEW person_accounts")
    con.execute("DROP TABLE identity_links")
    con.execute("UPDATE projection_meta SET value = '4' WHERE name = 'schema_version'")
    con.close()
    assert PROJECTION_SCHEMA_VERSION == 5 and MIGRATIONS[5] == []
    db = Projection(path)
    assert db.con.execute("SELECT count(*) FROM person_accounts").fetchall() == [(0,)]
    version = db.con.execute("SELECT value FROM projection_meta WHERE name = 'schema_version'")
    assert version.fetchall() == [("5",)]
    db.close()


# --------------------------------------------------------------------------- statistics


def random_playbacks(seed: int, n: int = 300) -> pl.DataFrame:
    rng = Random(seed)
    accounts = [(s, str(u)) for s in ("plex-1", "plex-2", "jf") for u in range(4)]
    names = {a: rng.choice(["ana", "bo", "cy", ""]) for a in accounts}
    rows = []
    for i in range(n):
        server_id, user_id = rng.choice(accounts)
        start = T0 + timedelta(minutes=rng.randrange(0, 60 * 24 * 20))
        rows.append(
            {
                "correlation_key": f"k{i:04d}",
                "server_id": server_id,
                "user_id": user_id,
                "username": names[(server_id, user_id)],
                "rating_key": str(rng.randrange(30)),
                "started_at": start,
                "stopped_at": start + timedelta(seconds=rng.randrange(0, 7200)),
                "paused_seconds": rng.randrange(0, 300),
                "percent_complete": float(rng.randrange(0, 101)),
            }
        )
    return pl.DataFrame(rows).with_columns(
        pl.col("started_at", "stopped_at").dt.cast_time_unit("us")
    )


def expected_by_person(frame: pl.DataFrame, people: dict[tuple[str, str], str]) -> pl.DataFrame:
    """by_person, grouping off, in plain polars from the playback rows."""
    watch = (
        ((pl.col("stopped_at") - pl.col("started_at")).dt.total_microseconds().clip(0) + 500_000)
        // 1_000_000
        - pl.col("paused_seconds")
    ).clip(0)
    kept = frame.with_columns(watch=watch).filter(pl.col("watch") >= 120)
    latest = kept.sort("started_at").group_by("server_id", "user_id").agg(pl.col("username").last())
    label = {
        (r["server_id"], r["user_id"]): people.get(
            (r["server_id"], r["user_id"]), f"{r['username'] or r['user_id']} on {r['server_id']}"
        )
        for r in latest.iter_rows(named=True)
    }
    kept = kept.with_columns(
        person=pl.struct("server_id", "user_id").map_elements(
            lambda a: label[(a["server_id"], a["user_id"])], return_dtype=pl.String
        )
    )
    return (
        kept.group_by("person")
        .agg(
            accounts=pl.struct("server_id", "user_id").n_unique().cast(pl.Int64),
            plays=pl.len().cast(pl.Int64),
            watch_time=pl.col("watch").sum().cast(pl.Int64),
        )
        .sort("person")
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_by_person_equals_plain_polars_before_and_after_a_merge_and_an_unmerge(seed: int) -> None:
    frame = random_playbacks(seed)
    db = Projection(":memory:")
    db.con.register("rows", frame.to_arrow())
    db.con.execute("INSERT INTO playback_events BY NAME SELECT * FROM rows")
    pipeline = Pipeline(db, DedupIndex(tolerance=10))

    def check(people: dict[tuple[str, str], str]) -> None:
        expected = expected_by_person(frame, people)
        for metric in ("plays", "watch_time"):
            actual = by_person(db, metric=metric, grouping=False).sort("person")
            assert_frame_equal(actual, expected.select("person", "accounts", metric))
        per_play = plays(db, grouping=False)
        assert per_play.columns.index("person") == per_play.columns.index("username") + 1
        assert per_play.group_by("person").len().sort("person")["len"].to_list() == (
            expected["plays"].to_list()
        )
        # grouping on: the same persons, and as many plays as by_user's accounts add up to
        grouped = by_person(db).sort("person")
        assert grouped["plays"].sum() == by_user(db)["plays"].sum() == plays(db).height

    check({})
    pipeline.process([identity(1, "merge", "Ana", [("plex-1", "0"), ("plex-2", "0"), ("jf", "0")])])
    merged = {("plex-1", "0"): "Ana", ("plex-2", "0"): "Ana", ("jf", "0"): "Ana"}
    check(merged)
    pipeline.process([identity(2, "unmerge", "Ana", [("jf", "0")])])
    check({k: v for k, v in merged.items() if k != ("jf", "0")})
    pipeline.process([identity(3, "unmerge", "Ana")])
    check({})


def test_statistics_by_person_read_a_connection_without_identity_tables() -> None:
    """A plain connection holding only playback_events (or a file older than identity
    records, opened read-only): every account is a person of its own."""
    empty = Projection(":memory:").con.sql("SELECT * FROM playback_events").arrow()
    con = duckdb.connect(":memory:")
    con.register("empty", empty)
    con.register("rows", random_playbacks(4, 40).to_arrow())
    con.execute("CREATE TABLE playback_events AS SELECT * FROM empty")
    con.execute("INSERT INTO playback_events BY NAME SELECT * FROM rows")
    people = by_person(con, grouping=False)
    assert people.height > 0 and people["person"].str.contains(" on ").all()
    assert "person" in plays(con).columns
    assert identities.accounts(con).height == 0
    assert identities.history(con).height == 0
