"""``workbench``: query a projection from the shell.

``workbench sql "SELECT ..."`` runs read-only SQL against the DuckDB file (``DUCKDB_PATH``, or
``--db``) and prints the result as a table. Notebook reports (``workbench report``) arrive
with the notebooks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb
import polars as pl

from ingestor.config import Settings
from ingestor.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sql = sub.add_parser("sql", help="run read-only SQL against the projection")
    sql.add_argument("query")
    sql.add_argument("--db", type=Path, help="DuckDB file (default: DUCKDB_PATH)")
    sql.add_argument("--rows", type=int, default=50, help="rows to show (default 50)")
    args = parser.parse_args(argv)
    try:
        path = args.db or Settings.from_env().duckdb_path
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"workbench: {problem}", file=sys.stderr)
        return 2
    if not path.exists():
        print(f"workbench: {path} does not exist (run `make demo` first?)", file=sys.stderr)
        return 1
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            frame = con.sql(args.query).pl()
    except duckdb.Error as exc:
        print(f"workbench: {exc}", file=sys.stderr)
        return 1
    with pl.Config(tbl_rows=args.rows, tbl_cols=-1, fmt_str_lengths=60):
        print(frame)
    return 0


if __name__ == "__main__":
    sys.exit(main())
