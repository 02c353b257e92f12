"""An erasure record applied to a DuckDB projection (ingestor/erasure.py): the rows go at
once, the bytes go when the file is compacted, on close or, after a kill, at the next open."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from ingestor.dedup import DedupIndex
from ingestor.erasure import COMPACT_DUE, account_digest
from ingestor.messages import Message
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.records import ErasureRecord, encode_record
from ingestor.simulation import SimulationConfig, simulate
from ingestor.sink import DIRECT, DirectSink


def test_erased_rows_go_at_once_and_their_bytes_at_the_next_open_after_a_kill(
    tmp_path: Path,
) -> None:
    events = simulate(SimulationConfig(seed=4, users=4, days=2)).events
    gone = events[0]
    needle = gone.user_id.encode()  # the username is on the person's other account too
    assert all(needle not in e.session_key.encode() for e in events)
    path = tmp_path / "analytics.duckdb"
    projection = Projection(path)
    pipeline = Pipeline(projection, DedupIndex())
    asyncio.run(DirectSink(pipeline).emit(events))
    before = projection.con.sql(
        "SELECT count(*) FROM media_events WHERE server_id = ? AND user_id = ?",
        params=[gone.server_id, gone.user_id],
    ).fetchall()[0][0]
    others = projection.con.sql(
        "SELECT count(*) FROM media_events WHERE NOT (server_id = ? AND user_id = ?)",
        params=[gone.server_id, gone.user_id],
    ).fetchall()[0][0]
    assert before > 0 and others > 0

    at = datetime(2026, 2, 1, tzinfo=UTC)
    record = ErasureRecord.make([account_digest(gone.server_id, gone.user_id)], at, events=9)
    seq = projection.checkpoint(DIRECT) + 1
    message = Message(seq, at, encode_record(record), record.subject)
    pipeline.project([(message, record)], seq, consumer=DIRECT)
    con = projection.con
    assert con.sql(
        "SELECT count(*) FROM media_events WHERE user_id = ?", params=[gone.user_id]
    ).fetchall() == [(0,)]
    assert con.sql("SELECT count(*) FROM media_events").fetchall() == [(others,)]
    assert con.sql("SELECT log_events, accounts FROM erasure_log").fetchall() == [(9, 1)]
    assert con.sql("SELECT count(*) FROM playback_events WHERE user_id = ?",
                   params=[gone.user_id]).fetchall() == [(0,)]  # fmt: skip
    # killed before it closed the file: the rows are gone, their bytes are not
    con.execute("CHECKPOINT")
    con.close()
    assert needle in path.read_bytes()

    reopened = Projection(path)  # compacts: the erasure left its mark
    try:
        assert needle not in path.read_bytes()
        rows = reopened.con.sql("SELECT count(*) FROM media_events").fetchall()
        assert rows == [(others,)]
        assert reopened.con.sql(
            "SELECT count(*) FROM projection_meta WHERE name = ?", params=[COMPACT_DUE]
        ).fetchall() == [(0,)]
        assert reopened.checkpoint(DIRECT) == seq
    finally:
        reopened.close()
