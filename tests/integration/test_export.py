"""An export read back with polars equals the statistic or the query it came from.

The projection is the simulator's feed projected by the real pipeline into a data directory;
every kind is exported in every format (through ``Workbench.export``, and through the
command in a process of its own, on the file and on a running ingestor), read back with
polars alone, typed again from its text where the format is text, and compared with what
the projection says directly: ``playback_events`` and ``media_events_detail`` cut at the
period, and ``workbench.stats.plays`` over the period's playbacks.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ingestor.dedup import DedupIndex
from ingestor.nats.server import EmbeddedServer
from ingestor.pipeline import Pipeline
from ingestor.projection import Projection
from ingestor.simulation import SimulationConfig, simulate
from tests.conftest import free_port, subprocess_env
from tests.factory import messages
from tests.integration.test_live_query import caught_up_ingestor
from workbench import cli, open_data_dir, stats
from workbench.db import scope
from workbench.live import LiveProjection

pytestmark = pytest.mark.integration

WORKBENCH = [sys.executable, "-m", "workbench.cli"]
TZ = "Europe/Berlin"
# three local days in the middle of the simulated week (2026-01-05 on)
SINCE, UNTIL = "2026-01-07", "2026-01-09"
SINCE_AT = datetime(2026, 1, 6, 23, 0, tzinfo=UTC)  # midnight in Berlin (UTC+1)
BEFORE_AT = datetime(2026, 1, 9, 23, 0, tzinfo=UTC)
TEXT_TIME = "%Y-%m-%dT%H:%M:%S%.f%:z"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATA_DIR whose analytics.duckdb the real pipeline wrote from a simulated feed."""
    root = tmp_path_factory.mktemp("export") / "data"
    root.mkdir()
    projection = Projection(root / "analytics.duckdb")
    pipeline = Pipeline(projection, DedupIndex())
    feed = messages(simulate(SimulationConfig(seed=13, users=8, days=6)).events)
    for first in range(0, len(feed), 500):
        pipeline.process(feed[first : first + 500])
    projection.close()
    return root


def local(frame: pl.DataFrame, tz: str) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(name).dt.convert_time_zone(tz)
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Datetime)
    )


def expected(data_dir: Path, what: str, tz: str = TZ) -> pl.DataFrame:
    """What the projection itself says for ``what`` in [SINCE_AT, BEFORE_AT)."""
    with duckdb.connect(str(data_dir / "analytics.duckdb"), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        if what == "plays":
            period = scope(con, since=SINCE_AT, before=BEFORE_AT)
            return stats.plays(period, tz=tz)
        if what == "playbacks":
            rows = con.sql("SELECT * FROM playback_events").pl()
            cut, order = pl.col("started_at"), ["started_at", "correlation_key"]
        else:
            rows = con.sql("SELECT * FROM media_events_detail").pl()
            cut, order = pl.col("occurred_at"), ["seq"]
    inside = rows.filter((cut >= SINCE_AT) & (cut < BEFORE_AT)).sort(order)
    return local(inside, tz)


def typed(text: pl.DataFrame, schema: pl.Schema, tz: str) -> pl.DataFrame:
    """A CSV or JSON export's columns typed as ``schema`` says, times parsed from their
    ISO 8601 text; each time's text must be its clock in ``tz`` with the offset there."""
    columns = []
    for name, dtype in schema.items():
        column = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            column = column.cast(pl.String)  # a column with no value at all reads as Null
            parsed = column.str.to_datetime(TEXT_TIME, time_unit="us").dt.convert_time_zone(tz)
            clock = column.str.slice(0, 26).str.to_datetime("%Y-%m-%dT%H:%M:%S%.f")
            local_clock = parsed.dt.replace_time_zone(None)
            assert text.select((clock == local_clock) | clock.is_null()).to_series().all(), name
            columns.append(parsed)
        elif isinstance(dtype, pl.List) and text.schema[name] == pl.String:
            columns.append(column.str.json_decode(dtype))
        elif dtype == pl.Boolean and text.schema[name] == pl.String:
            columns.append(pl.when(column.is_not_null()).then(column == "true"))
        else:
            columns.append(column.cast(dtype))
    return text.select(columns)


def read_back(path: Path, format: str, schema: pl.Schema, tz: str = TZ) -> pl.DataFrame:
    if format == "parquet":
        return pl.read_parquet(path)
    if format == "csv":
        return typed(pl.read_csv(path, infer_schema=False), schema, tz)
    return typed(pl.read_json(path, infer_schema_length=None), schema, tz)


# ---------------------------------------------------------------------------------------
# Workbench.export


@pytest.mark.parametrize("format", ["parquet", "csv", "json"])
@pytest.mark.parametrize("what", ["playbacks", "plays", "events"])
def test_an_export_read_back_equals_what_it_came_from(
    data_dir: Path, tmp_path: Path, what: str, format: str
) -> None:
    out = tmp_path / f"{what}.{format}"

    async def run() -> tuple[str, object]:
        async with open_data_dir(data_dir) as wb:
            done = await wb.export(what, since=SINCE, until=UNTIL, tz=TZ, format=format, out=out)
            return wb.mode, done

    mode, done = asyncio.run(run())
    want = expected(data_dir, what)
    assert mode == "file"
    assert want.height > 10  # a period with something in it
    assert (done.rows, done.path, done.since, done.before) == (
        want.height,
        out,
        SINCE_AT,
        BEFORE_AT,
    )
    got = read_back(out, format, want.schema)
    # Parquet keeps every type, the zone included; text is typed back from what it says
    assert_frame_equal(got, want, check_dtypes=True)
    if format == "parquet":
        time_column = "occurred_at" if what == "events" else "started_at"
        assert got.schema[time_column] == pl.Datetime("us", TZ)


def test_times_given_as_instants_cut_where_they_say_and_csv_writes_the_offsets(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "playbacks.csv"

    async def run() -> None:
        async with open_data_dir(data_dir) as wb:
            await wb.export(
                "playbacks",
                since="2026-01-07T00:00:00+01:00",
                until="2026-01-09T23:00:00Z",
                tz="America/New_York",
                format="csv",
                out=out,
            )

    asyncio.run(run())
    text = pl.read_csv(out, infer_schema=False)
    assert text["started_at"].str.ends_with("-05:00").all()
    want = expected(data_dir, "playbacks", "America/New_York")
    assert_frame_equal(typed(text, want.schema, "America/New_York"), want)


def test_the_python_api_refuses_a_naive_time_and_an_unknown_format(
    data_dir: Path, tmp_path: Path
) -> None:
    async def run(**kwargs: object) -> None:
        async with open_data_dir(data_dir) as wb:
            await wb.export("plays", out=tmp_path / "x", **kwargs)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="since has no time zone"):
        asyncio.run(run(since="2026-01-07T10:00:00", until=UNTIL))
    with pytest.raises(ValueError, match="format must be one of"):
        asyncio.run(run(since=SINCE, until=UNTIL, format="xlsx"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# the command


def run_export(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = subprocess_env(env or {"HTTP_PORT": str(free_port())})  # nobody answers
    return subprocess.run(
        [*WORKBENCH, "export", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_writes_the_file_and_says_what_it_wrote(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "plays.parquet"
    result = run_export(
        "plays", "--since", SINCE, "--until", UNTIL, "--tz", TZ,
        "--out", str(out), "--data-dir", str(data_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    want = expected(data_dir, "plays")
    assert result.stdout == (
        f"wrote {want.height:,} plays to {out} (parquet; from 2026-01-07T00:00:00+01:00 "
        "included to 2026-01-10T00:00:00+01:00 excluded) [file projection]\n"
    )
    assert_frame_equal(pl.read_parquet(out), want)
    assert sorted(p.name for p in out.parent.iterdir()) == ["plays.parquet"]  # no leftovers


def test_the_command_reads_the_file_given_by_db(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.json"
    result = run_export(
        "events", "--since", SINCE, "--until", UNTIL, "--tz", TZ, "--format", "json",
        "--out", str(out), "--db", str(data_dir / "analytics.duckdb"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    want = expected(data_dir, "events")
    assert_frame_equal(read_back(out, "json", want.schema), want)


BAD = [
    (["--since", "2026-01-07T10:00:00", "--until", UNTIL], 2, "since has no time zone"),
    (["--since", UNTIL, "--until", SINCE], 2, "is not before until"),
    (["--since", SINCE, "--until", UNTIL, "--tz", "Mars/Olympus"], 2, "IANA time zone"),
    (["--since", "yesterday", "--until", UNTIL], 2, "since must be a date"),
    (["--since", SINCE, "--until", UNTIL, "--format", "xlsx"], 2, "invalid choice: 'xlsx'"),
]


@pytest.mark.parametrize(("args", "status", "words"), BAD)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    status: int,
    words: str,
) -> None:
    out = tmp_path / "out.csv"
    argv = ["export", "plays", *args, "--out", str(out), "--data-dir", str(data_dir)]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == status
    assert err.count("\n") == 1 and words in err, err
    assert not out.exists()


def test_an_unwritable_path_and_a_missing_projection_are_one_line_in_a_process(
    data_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for out in [blocker / "plays.csv", tmp_path]:
        result = run_export(
            "plays", "--since", SINCE, "--until", UNTIL,
            "--out", str(out), "--data-dir", str(data_dir),
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"workbench export: cannot write {out}: ")
        assert "Traceback" not in result.stderr and result.stdout == ""
    nothing = run_export(
        "plays", "--since", SINCE, "--until", UNTIL,
        "--out", str(tmp_path / "x.csv"), "--data-dir", str(tmp_path / "nowhere"),
    )  # fmt: skip
    assert nothing.returncode == 1 and nothing.stderr.count("\n") == 1
    assert "does not exist" in nothing.stderr


def test_the_command_reads_a_running_ingestor_live(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    feed = SimulationConfig(seed=34, users=3, days=2)  # 2026-01-05 and 06
    with caught_up_ingestor(tmp_path, nats_server, feed) as env:
        out = tmp_path / "playbacks.parquet"
        # no --data-dir nor --db: DATA_DIR's file, which the running ingestor holds
        result = run_export(
            "playbacks", "--since", "2026-01-05", "--until", "2026-01-06", "--out", str(out),
            env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.endswith(" [live projection]\n")
        live = LiveProjection(f"http://127.0.0.1:{env['HTTP_PORT']}")
        query = "SELECT * FROM playback_events ORDER BY started_at, correlation_key"
        everything = local(live.sql(query).frame, "UTC")  # the ingestor's answer says Etc/UTC
    since, before = datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 1, 7, tzinfo=UTC)
    want = everything.filter(pl.col("started_at").is_between(since, before, closed="left"))
    assert 0 < want.height < everything.height
    assert_frame_equal(pl.read_parquet(out), want)
