"""``workbench``: query a projection and render notebook reports from the shell.

``workbench sql "SELECT ..."`` runs read-only SQL against the projection (``DUCKDB_PATH``, or
``--db``) and prints the result as a table: through the query endpoint of the ingestor that
holds the file while it runs (at ``HTTP_HOST:HTTP_PORT``), else from the file.
``workbench report NOTEBOOK -p NAME VALUE ... --out DIR`` executes a notebook with parameters
and writes the executed ``.ipynb`` and a self-contained HTML page (:mod:`workbench.report`),
reading the running ingestor live when it holds the notebook's data directory.
``workbench export {playbacks,plays,events} --since S --until U --out PATH`` writes a period
of the projection to a Parquet, CSV or JSON file (:mod:`workbench.export`), read like
``workbench sql`` reads it (live from the ingestor that holds the file, else the file, else
the projection of the data directory's archive).

Exit status: 0 done; 1 the work failed (bad SQL, a notebook cell raised, a page that would
need the network); 2 the command line is wrong (no such notebook, a bad parameter).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import duckdb
import polars as pl

from ingestor.config import Settings
from ingestor.errors import ConfigError, IngestorError
from workbench.errors import CellFailed, QueryError, ReportUsageError, WorkbenchError
from workbench.live import ingestor_holding

REPORT_HELP = """\
Execute NOTEBOOK (.ipynb, or a jupytext .py/.md) with papermill and write OUT/NAME.ipynb
(executed) and OUT/NAME.html, a page that opens with no network: charts and images are
embedded, no script is loaded from a CDN.

Parameters replace the assignments of the notebook's cell tagged 'parameters'; a name that
cell does not assign is refused. Values are read like papermill's: True, False, None,
numbers and JSON ([1, 2], {"a": 1}, "07" in quotes for a string), anything else is a string;
-r passes a string as it is. -f reads a YAML mapping; -p and -r override it.

In the HTML, the input of cells tagged hide-input or remove-input is left out (all inputs
with --no-input), the output of cells tagged hide-output or remove-output, and whole cells
tagged remove-cell, parameters or injected-parameters. The .ipynb keeps everything.

The kernel runs this Python (a kernelspec for it is installed in this environment when
none exists) in the notebook's directory unless --cwd says otherwise. Both files are written
under temporary names and renamed, so OUT never holds half a report.

When a cell fails, the command exits with 1 naming the cell (its index from 0 and its first
line) and the exception, and leaves the partly executed notebook as OUT/NAME.failed.ipynb.

Weekly from cron (one crontab line; % is escaped there), Monday 07:00, the week before:
"""
CRON_LINE = (
    "0 7 * * 1 cd /srv/mediaevents && .venv/bin/workbench report notebooks/overview.ipynb"
    " -p data_dir /srv/mediaevents/data -p start $(date -d '7 days ago' +\\%F)"
    " -p end $(date -d yesterday +\\%F) --out /srv/reports/$(date -d yesterday +\\%G-W\\%V) -q"
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit status 2), like the rest."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sql = sub.add_parser("sql", help="run read-only SQL against the projection")
    sql.add_argument("query")
    sql.add_argument("--db", type=Path, help="DuckDB file (default: DUCKDB_PATH)")
    sql.add_argument("--rows", type=int, default=50, help="rows to show (default 50)")
    report = sub.add_parser(
        "report",
        help="execute a notebook with parameters into an .ipynb and an offline HTML page",
        description=REPORT_HELP + CRON_LINE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument(
        "notebook", type=Path, metavar="NOTEBOOK", help="a .ipynb, or a jupytext .py or .md"
    )
    report.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter, value parsed (repeatable)",
    )
    report.add_argument(
        "-r",
        "--raw-parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter to the string VALUE as it is (repeatable)",
    )
    report.add_argument(
        "-f", "--parameters-file", type=Path, metavar="FILE", help="YAML mapping of parameters"
    )
    report.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="where to write (created)"
    )
    report.add_argument(
        "--name", help="file name of both outputs, without extension (default: NOTEBOOK's stem)"
    )
    report.add_argument("--no-input", action="store_true", help="leave every cell's code out")
    report.add_argument(
        "--cwd",
        type=Path,
        metavar="DIR",
        help="the kernel's working directory (default: NOTEBOOK's directory)",
    )
    report.add_argument("--kernel", help="kernelspec to run (default: one that runs this Python)")
    report.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="fail a cell running longer than this"
    )
    report.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    _add_export(sub)
    args = parser.parse_args(argv)
    if args.command == "report":
        return _report(args)
    if args.command == "export":
        return _export(args)
    return _sql(args)


def _sql(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"workbench: {problem}", file=sys.stderr)
        return 2
    path: Path = args.db or settings.duckdb_path
    # a running ingestor holds the file (DuckDB lets no other process open it): ask it
    running = ingestor_holding(path, _http_url(settings), token=settings.query_token)
    if running is not None:
        try:
            frame = running.live.sql(args.query).frame
        except QueryError as exc:
            print(f"workbench: {exc}", file=sys.stderr)
            return 1
    else:
        if not path.exists():
            print(f"workbench: {path} does not exist (run `make demo` first?)", file=sys.stderr)
            return 1
        try:
            with duckdb.connect(str(path), read_only=True) as con:
                frame = con.sql(args.query).pl()
        except duckdb.Error as exc:
            if _held(exc):
                print(
                    f"workbench: {path} is held by another process, and no ingestor holding "
                    f"it answers at {_http_url(settings)} (set HTTP_PORT to its port)",
                    file=sys.stderr,
                )
            else:
                print(f"workbench: {exc}", file=sys.stderr)
            return 1
    with pl.Config(tbl_rows=args.rows, tbl_cols=-1, fmt_str_lengths=60):
        print(frame)
    return 0


EXPORT_HELP = """\
Write WHAT of the period [--since, --until) to --out, and say how many rows went where:

  playbacks  the rows of playback_events that started in the period, every column
  plays      workbench.stats.plays (grouped, playbacks under 120 s left out) over them
  events     the accepted events (media_events_detail, every field typed) that occurred
             in the period, in stream order

--since and --until are ISO 8601 times with a zone (2026-01-05T20:00:00+01:00, ...Z), or
dates read as local days in --tz: a --since date starts at that day's midnight, an --until
date ends at the next one (that day is included). Parquet keeps every type, times as
time-zone-aware timestamps (the instant, with --tz in the column type); CSV and JSON write
times as clocks in --tz with their offset (ISO 8601).

The projection is read like `workbench sql` reads it: through the ingestor that holds the
file while it runs (at HTTP_HOST:HTTP_PORT), else the file (--db, or DATA_DIR/analytics.duckdb
with --data-dir), else the projection of the data directory's archive.
"""


def _add_export(sub: argparse._SubParsersAction) -> None:
    from workbench.export import FORMATS, KINDS

    export = sub.add_parser(
        "export",
        help="write a period's playbacks, plays or events to a Parquet, CSV or JSON file",
        description=EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("what", choices=KINDS, metavar="{" + ",".join(KINDS) + "}")
    export.add_argument("--since", required=True, help="first instant or local day, included")
    export.add_argument("--until", required=True, help="end instant (excluded) or last local day")
    export.add_argument("--tz", default="UTC", help="IANA zone of dates and written times (UTC)")
    export.add_argument("--format", choices=FORMATS, default="parquet", help="(default parquet)")
    export.add_argument("--out", type=Path, required=True, metavar="PATH", help="file to write")
    where = export.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path, metavar="DIR", help="an ingestor's DATA_DIR")
    where.add_argument("--db", type=Path, help="DuckDB file (default: DUCKDB_PATH)")


def _export(args: argparse.Namespace) -> int:
    import asyncio

    from workbench.api import Workbench
    from workbench.export import period
    from workbench.log import EventLog

    try:
        period(args.since, args.until, args.tz)  # a bad period is refused before any reading
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"workbench export: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"workbench: {problem}", file=sys.stderr)
        return 2
    archive: Path | None = None  # --db alone: the file, with no log to project instead
    if args.data_dir is not None:
        path, archive = args.data_dir / "analytics.duckdb", args.data_dir / "archive"
    elif args.db is not None:
        path = args.db
    else:
        path, archive = settings.duckdb_path, settings.archive_dir
    has_log = archive is not None and archive.is_dir()
    running = ingestor_holding(path, _http_url(settings), token=settings.query_token)
    if running is None and not path.exists() and not has_log:
        print(f"workbench export: {path} does not exist (run `make demo` first?)", file=sys.stderr)
        return 1
    if running is None and path.exists() and not has_log and _locked(path):
        print(
            f"workbench export: {path} is held by another process, and no ingestor holding "
            f"it answers at {_http_url(settings)} (set HTTP_PORT to its port)",
            file=sys.stderr,
        )
        return 1

    async def export() -> str:
        log = EventLog(archive) if has_log else None
        live = running.live if running is not None else None
        async with Workbench(log, live=live, db_path=path) as wb:
            done = await wb.export(
                args.what,
                since=args.since,
                until=args.until,
                tz=args.tz,
                format=args.format,
                out=args.out,
            )
            return f"{done} [{wb.mode} projection]"

    try:
        print(asyncio.run(export()))
    except ValueError as exc:
        print(f"workbench export: {exc}", file=sys.stderr)
        return 2
    except (WorkbenchError, IngestorError, duckdb.Error) as exc:
        print(f"workbench export: {exc}", file=sys.stderr)
        return 1
    return 0


def _http_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
    return f"http://{host}:{settings.http_port}"


def _locked(path: Path) -> bool:
    """Whether another process holds the DuckDB file ``path``."""
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.Error as exc:
        return _held(exc)
    return False


def _held(exc: duckdb.Error) -> bool:
    """Whether DuckDB refused to open a file because another process holds its lock."""
    return "lock" in str(exc).lower()


def _point_at_running_ingestor(
    args: argparse.Namespace, parameters: dict[str, object], progress: Callable[[str], None]
) -> None:
    """Let the notebook read a running ingestor live when it holds the notebook's data
    directory (else the notebook would find the file locked and project the whole log
    itself): sets ``WORKBENCH_HTTP_URL`` and ``WORKBENCH_NATS_URL`` for the kernel, unless
    they are set. Says so only then, or when the file is held and nobody answers."""
    if os.environ.get("WORKBENCH_HTTP_URL"):
        return
    try:
        settings = Settings.from_env()
    except ConfigError:
        return  # the notebook reads its own parameters; nothing to point it at
    given = parameters.get("data_dir") or os.environ.get("WORKBENCH_DATA_DIR")
    if given and "," in str(given):
        return  # several data directories, read as one from their files (open_data_dirs)
    cwd = args.cwd or args.notebook.resolve().parent
    data_dir = Path(str(given)) if given else cwd / ".." / "data"
    if not data_dir.is_absolute():
        data_dir = cwd / data_dir
    db_path = data_dir / "analytics.duckdb"
    url = _http_url(settings)
    running = ingestor_holding(db_path, url, token=settings.query_token)
    if running is not None:
        os.environ["WORKBENCH_HTTP_URL"] = running.http_url
        if running.nats_url and not os.environ.get("WORKBENCH_NATS_URL"):
            os.environ["WORKBENCH_NATS_URL"] = running.nats_url
        progress(f"reading the running ingestor's projection at {running.http_url}")
        return
    if db_path.exists():
        try:
            duckdb.connect(str(db_path), read_only=True).close()
        except duckdb.Error:
            progress(
                f"{db_path} is held by another process and no ingestor holding it answers "
                f"at {url}: the notebook projects the event log itself (set HTTP_PORT to "
                "the ingestor's port to read it live)"
            )


def _report(args: argparse.Namespace) -> int:
    from workbench import report

    # papermill logs what this command already says (or refuses) as warnings
    logging.getLogger("papermill").setLevel(logging.CRITICAL)

    def progress(line: str) -> None:
        print(f"workbench: {line}", file=sys.stderr, flush=True)

    try:
        parameters = (
            report.read_parameter_file(args.parameters_file) if args.parameters_file else {}
        )
        parameters.update({name: report.parse_value(value) for name, value in args.parameter})
        parameters.update(dict(args.raw_parameter))
        _point_at_running_ingestor(args, parameters, progress)
        report.render(
            args.notebook,
            args.out,
            parameters,
            name=args.name,
            no_input=args.no_input,
            cwd=args.cwd,
            kernel=args.kernel,
            timeout=args.timeout,
            progress=None if args.quiet else progress,
        )
    except ReportUsageError as exc:
        print(f"workbench report: {exc}", file=sys.stderr)
        return 2
    except CellFailed as exc:
        print(f"workbench report: {exc}", file=sys.stderr)
        if exc.partial is not None:
            print(
                f"workbench report: the partly executed notebook is {exc.partial}", file=sys.stderr
            )
        return 1
    except (WorkbenchError, IngestorError) as exc:
        print(f"workbench report: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
