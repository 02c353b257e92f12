"""Which media servers one ingestor projects (``PROJECT_SERVERS``), and what follows from it.

Cross-source links never cross servers (the server id is part of every dedup key), so the
write side partitions by server: several ingestors can read one ``MEDIA_EVENTS`` stream, each
projecting the events of its own servers into its own DuckDB file, and the workbench reads
their files as one (:mod:`workbench.union`). docs/architecture.md, "Several ingestors", says
how a deployment is laid out.

A :class:`Partition` is that set of servers (empty: every server, the default). It gives

* the **filter subjects** of the ingestor's durable consumers
  (:func:`ingestor.nats.streams.consumer_filter_subjects`): ``playback.<server>.*.*`` per
  server, the subjects written before servers were in them (``playback.*.*``: every server's,
  read and kept only when the decoded event's ``server_id`` is one of the set), and every
  record subject;
* the **durable names**: ``projector``, ``archiver``, ``detector`` for all servers; with a
  set, the name plus a digest of the set, so two ingestors on one stream never share (and
  so never delete) each other's consumer;
* :meth:`Partition.keeps`, the rule the write path applies to each decoded event and alert
  (events of other servers arrive only under an old subject; an alert without a server is
  kept by every ingestor, the union view keeps one per ``alert_id``). Audit verdicts and
  identity records name no server: every ingestor reads them; a verdict applies in the one
  file that holds its audit entry (the others record it as "no such audit entry"), and
  identity records are kept alike by all.

A DuckDB file remembers the set it was projected for (``projection_meta``:
``project_servers``); starting against a file of another set stops with one line
(:func:`check_projection`), since its checkpoint says nothing about the other servers' events.

>>> p = Partition.parse(" 8f2a, c0de ,8f2a")
>>> p.servers, p.durable("projector") == Partition.parse("c0de,8f2a").durable("projector")
(('8f2a', 'c0de'), True)
>>> Partition.parse("").durable("projector"), Partition.parse("").keeps("anything")
('projector', True)
>>> p.keeps("8f2a"), p.keeps("beef"), p.keeps("")
(True, False, True)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import duckdb

from ingestor.errors import ConfigError

SELECT_PROJECTED_SERVERS = "SELECT value FROM projection_meta WHERE name = 'project_servers'"
WRITE_PROJECTED_SERVERS = "INSERT OR REPLACE INTO projection_meta VALUES ('project_servers', ?)"
SELECT_PROJECTED_ANYTHING = (
    "SELECT (SELECT count(*) FROM projection_checkpoint WHERE last_seq > 0)"
    " + (SELECT count(*) FROM media_events)"
)
_ID_FORBIDDEN = set(" \t\r\n*>")  # spaces, and wildcards (ids are matched exactly)


@dataclass(frozen=True)
class Partition:
    """The media servers one ingestor projects: ``servers`` sorted, without repeats; empty
    means every server."""

    servers: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Partition:
        """``PROJECT_SERVERS``: server ids separated by commas (blank: every server). Raises
        ValueError for an id with a space inside it, or a wildcard (``*``, ``>``: ids are
        exact, not patterns).

        >>> Partition.parse("a b")
        Traceback (most recent call last):
        ...
        ValueError: a b
        """
        ids = [part.strip() for part in text.split(",")]
        if any(_ID_FORBIDDEN & set(i) for i in ids):
            raise ValueError(text)
        return cls(tuple(sorted({i for i in ids if i})))

    @property
    def all(self) -> bool:
        """True when this ingestor projects every server."""
        return not self.servers

    def keeps(self, server_id: str) -> bool:
        """Whether an event or alert of ``server_id`` belongs here (no server: yes)."""
        return self.all or not server_id or server_id in self.servers

    def durable(self, base: str) -> str:
        """The durable consumer name of ``base`` (``projector``...) for this set of servers."""
        if self.all:
            return base
        digest = hashlib.blake2b(json.dumps(self.servers).encode(), digest_size=5).hexdigest()
        return f"{base}-{digest}"

    def filters(self, *, records: bool = True) -> list[str] | None:
        """This set's consumer filter subjects (None: no filter, every server)."""
        from ingestor.nats.streams import consumer_filter_subjects

        return consumer_filter_subjects(self.servers, records=records)

    def describe(self) -> str:
        return "every server" if self.all else "servers " + ",".join(self.servers)

    def stored(self) -> str:
        """The form kept in ``projection_meta`` (a JSON list; ``[]``: every server)."""
        return json.dumps(list(self.servers))


ALL_SERVERS = Partition()
"""No ``PROJECT_SERVERS``: every server."""


def check_projection(con: duckdb.DuckDBPyConnection, partition: Partition, path: object) -> None:
    """Make sure the projection on ``con`` (a writable file at ``path``) is this partition's:
    a new file is marked with the set; a file of another set raises :class:`ConfigError`
    with one line. A file from before ``PROJECT_SERVERS`` that holds anything was projected
    for every server."""
    rows = con.execute(SELECT_PROJECTED_SERVERS).fetchall()
    if rows:
        stored = Partition(tuple(json.loads(rows[0][0])))
    elif con.execute(SELECT_PROJECTED_ANYTHING).fetchall()[0][0]:
        stored = Partition()
    else:
        con.execute(WRITE_PROJECTED_SERVERS, [partition.stored()])
        return
    if stored != partition:
        shown = ",".join(partition.servers) or "(empty: every server)"
        raise ConfigError(
            [
                f"PROJECT_SERVERS={shown} does not match {path}, which holds the projection of "
                f"{stored.describe()}: give each server set its own DATA_DIR (or DUCKDB_PATH "
                "and ARCHIVE_DIR), or rebuild this one with `ingestor replay`"
            ]
        )
    if not rows:
        con.execute(WRITE_PROJECTED_SERVERS, [partition.stored()])


__all__ = ["ALL_SERVERS", "Partition", "check_projection"]
