"""What the history importers share (``ingestor import plex-history | playback-reporting |
jellystat``): the result they report, their error classes, a resume cursor kept in a
:class:`~ingestor.sources.base.StateFile`, a read-only SQLite opener, and the batch step that
turns rows into events, skips bad ones and sends the rest through the one sink.

Every importer follows ``import tautulli-db`` (:mod:`ingestor.sources.tautulli.db_import`):

* each row becomes one ``summary`` event whose ``event_id`` is a hash of the row's upstream
  identity (:func:`ingestor.events.make_event_id`), so a second import adds nothing (tier a);
* batches go through the sink; after each stored batch the importer's cursor is saved, so an
  interrupted import resumes after the last stored batch (at most one batch is sent again,
  and tier a drops it);
* ``progress(done, total)`` is called after each stored batch;
* bad input as a whole (no such file, not the expected format, server id unknown) raises a
  :class:`HistoryImportError` naming the file and what is wrong; one bad row is skipped,
  counted as ``invalid`` and logged, and the rest is imported.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from ingestor.errors import IngestorError, InvalidEvent
from ingestor.events import MediaEvent
from ingestor.sink import Sink
from ingestor.sources.base import StateFile

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (rows done, rows in total) after each stored batch."""

Row = TypeVar("Row")


class HistoryImportError(IngestorError):
    """The input cannot be imported at all: the message names the file (or server) and what
    is wrong with it."""


class InvalidRow(InvalidEvent):
    """One row that cannot become an event: skipped and counted, the import goes on."""

    category = "invalid_history_row"


@dataclass
class ImportResult:
    """What one import run did."""

    source: str  # the importer: plex-history, playback-reporting, jellystat
    origin: str  # the file or the server URL read
    server_id: str
    total_rows: int = 0  # rows the input holds
    rows_read: int = 0  # rows read by this run (after the resume point)
    stored: int = 0  # events the sink stored as new
    duplicate: int = 0  # events the sink already had
    invalid: int = 0  # rows skipped
    resumed: bool = False  # this run started after a saved cursor


class Cursor:
    """An importer's resume point for one input, kept under ``section``/``key`` of a state
    file (``None``: no state, every run starts at the beginning). A cursor saved for another
    server id does not apply."""

    def __init__(self, state_path: Path | str | None, section: str, key: str) -> None:
        self.state = StateFile(Path(state_path)) if state_path is not None else None
        self.section, self.key = section, key
        self._saved: dict[str, Any] = self.state.load() if self.state is not None else {}

    def load(self, server_id: str) -> Any:
        entry = self._saved.get(self.section, {}).get(self.key, {})
        return entry.get("cursor") if entry.get("server_id") == server_id else None

    def save(self, server_id: str, cursor: Any) -> None:
        if self.state is None:
            return
        self._saved.setdefault(self.section, {})[self.key] = {
            "cursor": cursor,
            "server_id": server_id,
        }
        self.state.save(self._saved)


def open_sqlite_readonly(
    path: Path, what: str, error: type[HistoryImportError] = HistoryImportError
) -> sqlite3.Connection:
    """Open ``path`` read-only (a WAL database in a read-only directory is opened immutable);
    :class:`HistoryImportError` if it is missing or not SQLite. ``what`` names the expected
    file in the message (e.g. "a Playback Reporting database")."""
    if not path.is_file():
        raise error(f"{path}: no such file")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    first: sqlite3.DatabaseError | None = None
    for suffix in ("", "&immutable=1"):
        try:
            con = sqlite3.connect(uri + suffix, uri=True, check_same_thread=False)
            con.execute("SELECT name FROM sqlite_master").fetchall()
        except sqlite3.DatabaseError as exc:
            first = first or exc
            continue
        if suffix:
            log.warning(
                "%s opened immutable (%s): copy it first if it is being written", path, first
            )
        return con
    raise error(f"{path} is not {what} (not a readable SQLite file: {first})")


class PagedSqlite:
    """A read-only SQLite history read in key order, a page at a time, with the counts a
    progress bar needs; used from a worker thread. A subclass opens :attr:`con` (rows as
    :class:`sqlite3.Row`) and names its three queries, each taking the resume key (the
    page query also the page size)."""

    con: sqlite3.Connection
    select_total: str  # all rows
    select_done: str  # rows at or before the key
    select_page: str  # the next rows after the key

    def counts(self, after: Any) -> tuple[int, int]:
        """(rows in total, rows at or before ``after``)."""
        total = self.con.execute(self.select_total).fetchall()[0][0]
        done = self.con.execute(self.select_done, [after]).fetchall()[0][0]
        return int(total), int(done)

    def page(self, after: Any, size: int) -> list[dict[str, Any]]:
        """The next ``size`` rows after ``after``, as dicts."""
        return [dict(row) for row in self.con.execute(self.select_page, [after, size]).fetchall()]

    def close(self) -> None:
        self.con.close()


def sqlite_tables(con: sqlite3.Connection) -> set[str]:
    rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


async def emit_rows(
    rows: Sequence[Row],
    to_event: Callable[[Row], MediaEvent],
    sink: Sink,
    result: ImportResult,
) -> None:
    """Turn ``rows`` into events (a row raising :class:`InvalidRow` or
    :class:`~ingestor.errors.InvalidEvent` is skipped, counted and logged) and send them
    through ``sink`` in one call."""
    events = list(_events(rows, to_event, result))
    if events:
        stats = await sink.emit(events)
        result.stored += stats.stored
        result.duplicate += stats.duplicate
    result.rows_read += len(rows)


def _events(
    rows: Iterable[Row], to_event: Callable[[Row], MediaEvent], result: ImportResult
) -> Iterable[MediaEvent]:
    for row in rows:
        try:
            yield to_event(row).validate()
        except InvalidEvent as exc:
            result.invalid += 1
            log.error("%s: skipped a row of %s: %s", result.source, result.origin, exc)


__all__ = [
    "Cursor",
    "HistoryImportError",
    "ImportResult",
    "InvalidRow",
    "PagedSqlite",
    "Progress",
    "emit_rows",
    "open_sqlite_readonly",
    "sqlite_tables",
]
