"""Several ingestors' projections read as one.

Ingestors that partition the servers (``PROJECT_SERVERS``, :mod:`ingestor.servers`) each
write a DuckDB file of their own. :func:`attach_union` attaches every file ``READ_ONLY`` to
one in-memory database and names, in it, each table of the projection as a view over all of
them, so every query function of the workbench (:mod:`workbench.stats`, ``audit``,
``temporal``, ``alerts``, ``identities``, the as-of answers) reads the union unchanged.

How each table combines (a server's rows are in exactly one file):

* ``playback_events``, ``media_events``, ``dedupe_audit_log``, ``playback_moves``: every
  file's rows (``UNION ALL BY NAME``: files of the same tables version have the same
  columns).
* ``detection_alerts``: one row per ``alert_id`` (an alert without a server is kept by each).
* ``audit_decisions``: one row per verdict (its stream sequence), the file where it applied
  first: every ingestor reads every verdict, and only the one holding its audit entry can
  apply it (the others say "no such audit entry").
* ``identity_links``: one row per (sequence, account): every ingestor keeps every identity
  record alike.
* ``projection_checkpoint``: the highest sequence of any file (each one's checkpoint stops
  at the last message of its own servers); ``projection_meta``: the first file's.

>>> import tempfile
>>> from pathlib import Path
>>> from ingestor.projection import Projection
>>> tmp = Path(tempfile.mkdtemp())
>>> for name, server in (("a", "srv1"), ("b", "srv2")):
...     db = Projection(tmp / f"{name}.duckdb")
...     _ = db.con.execute(
...         "INSERT INTO playback_events (correlation_key, server_id) VALUES (?, ?)",
...         [name, server])
...     db.close()
>>> con = attach_union([tmp / "a.duckdb", tmp / "b.duckdb"])
>>> con.sql("SELECT server_id FROM playback_events ORDER BY 1").fetchall()
[('srv1',), ('srv2',)]
>>> con.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb

from ingestor.projection import CHECKPOINT_TABLE, DUCKDB_MEMORY_LIMIT, create_views

_ALL_ROWS = ("playback_events", "media_events", "dedupe_audit_log", "playback_moves")
# one row per key, which every file may hold (the ORDER BY says which copy is kept)
_ONE_ROW_PER = {
    "detection_alerts": ("alert_id", "seq"),
    "audit_decisions": ("seq", "applied DESC"),
    "identity_links": ("seq, record_id, server_id, user_id", "seq"),
}
_CHECKPOINT = (
    "CREATE VIEW {table} AS SELECT consumer, max(last_seq) AS last_seq, "
    "max(updated_at) AS updated_at FROM ({rows}) GROUP BY consumer"
)


def attach_union(paths: Sequence[Path | str]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose projection tables are views over the files at
    ``paths``, each attached ``READ_ONLY``. Raises ValueError for no paths, a path given
    twice, or a file that is missing (DuckDB's own error when one cannot be opened: held
    by a running ingestor, or not a projection)."""
    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("no projection files to read")
    if len({f.resolve() for f in files}) != len(files):
        raise ValueError(f"a projection file is named twice: {[str(f) for f in files]}")
    for f in files:
        if not f.is_file():
            raise ValueError(f"{f} does not exist (no analytics.duckdb in that DATA_DIR?)")
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        names = []
        for i, f in enumerate(files):
            name = f"part{i}"
            quoted = str(f).replace("'", "''")  # ATTACH takes no bound parameter
            con.execute(f"ATTACH '{quoted}' AS {name} (READ_ONLY)")
            names.append(name)

        def rows(table: str) -> str:
            return " UNION ALL BY NAME ".join(f"SELECT * FROM {n}.{table}" for n in names)

        for table in _ALL_ROWS:
            con.execute(f"CREATE VIEW {table} AS {rows(table)}")
        for table, (key, order) in _ONE_ROW_PER.items():
            con.execute(
                f"CREATE VIEW {table} AS SELECT * FROM ({rows(table)}) "
                f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order}) = 1"
            )
        con.execute(_CHECKPOINT.format(table=CHECKPOINT_TABLE, rows=rows(CHECKPOINT_TABLE)))
        con.execute(f"CREATE VIEW projection_meta AS SELECT * FROM {names[0]}.projection_meta")
        create_views(con)
    except BaseException:
        con.close()
        raise
    return con


__all__ = ["attach_union"]
