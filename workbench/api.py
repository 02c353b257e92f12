"""One handle on everything a notebook needs: :func:`connect` to a running ingestor, or
:func:`open_data_dir` to read a data directory offline.

A :class:`Workbench` holds the event log (:class:`~workbench.log.EventLog`: archive plus
stream tail) and a way to read the current projection:

* **live**: a running ingestor answers SQL on its HTTP port (``POST /query``, see
  :mod:`workbench.live`), consistent as of a stream sequence, while it keeps ingesting;
* **file**: no ingestor holds the DuckDB file, so it is opened read-only;
* **replay**: neither (the file is held by an ingestor that cannot be asked, or there is no
  file): the log is projected into a temporary projection, once; later calls project only
  what the log gained.

:meth:`Workbench.snapshot` returns a DuckDB connection with the projection's tables as of one
stream sequence; every function of :mod:`workbench.stats`, :mod:`workbench.temporal` and
:mod:`workbench.audit` takes it. :meth:`Workbench.as_of` returns the same tables as of any
instant on either clock, read from the projection (:mod:`ingestor.projection.asof`).
Verdicts (:meth:`Workbench.confirm`, :meth:`Workbench.restore`) are published to the stream,
so they need NATS.

Offline, over a data directory (here a simulated one)::

    >>> import asyncio, tempfile
    >>> from pathlib import Path
    >>> from workbench.replay import simulated_log
    >>> from workbench.stats import by_user
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = simulated_log(Path(tmp.name) / "archive")
    >>> async def offline():
    ...     async with open_data_dir(tmp.name) as wb:
    ...         events = await wb.events()
    ...         snap = await wb.snapshot()
    ...         return wb.mode, events.height, sorted(set(by_user(snap)["username"]))
    >>> asyncio.run(offline())
    ('replay', 55, ['bruno', 'dana'])
    >>> tmp.cleanup()

Connected to a running ingestor's NATS (here a bare ``nats-server`` holding the same feed)::

    >>> from ingestor.nats.publisher import Publisher
    >>> from ingestor.nats.server import EmbeddedServer
    >>> from ingestor.nats.streams import ensure_streams
    >>> from ingestor.simulation import SimulationConfig, simulate
    >>> import socket
    >>> tmp = tempfile.TemporaryDirectory()
    >>> with socket.socket() as s:  # a free port for the example's server
    ...     s.bind(("127.0.0.1", 0))
    ...     port = s.getsockname()[1]
    >>> server = EmbeddedServer("127.0.0.1", port, Path(tmp.name) / "nats")
    >>> server.start()
    >>> async def connected():
    ...     async with await connect(server.url, http_url=None) as wb:
    ...         await ensure_streams(wb.nc.jetstream(), 7)
    ...         feed = simulate(SimulationConfig(users=2, days=1)).events
    ...         _ = await Publisher(wb.nc).publish_many(feed)
    ...         r = await wb.as_of("2026-01-05T21:00:00Z", clock="occurred")
    ...         with r:
    ...             return wb.mode, r.counts()["playbacks"]
    >>> asyncio.run(connected())
    ('replay', 4)
    >>> server.stop(); tmp.cleanup()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
import weakref
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, Self

import duckdb
import nats
import polars as pl
from nats.aio.client import Client

from ingestor.nats.connection import connect_reader
from ingestor.projection import DUCKDB_MEMORY_LIMIT, create_views
from workbench import audit as _audit
from workbench import export as _export
from workbench.errors import QueryError, WorkbenchError
from workbench.live import LiveProjection
from workbench.log import EventLog
from workbench.replay import (
    Clock,
    Replay,
    ReplayStats,
    answer_as_of,
    aware_utc,
    log_as_of,
    projection_of,
    replay,
)

log = logging.getLogger(__name__)

Mode = Literal["live", "file", "replay"]
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_HTTP_URL = "http://127.0.0.1:3857"
INGESTOR_HINT = (
    "start it in a terminal, from the project's directory, with `.venv/bin/ingestor run` "
    "(it serves ./data; DATA_DIR, NATS_URL and HTTP_PORT say otherwise)"
)
APPLIED_WAIT = 10.0
"""Seconds a verdict given live waits for the live projection to show it."""
# the projection's tables a snapshot copies, and how each is cut at the snapshot's sequence
SNAPSHOT_TABLES = {
    "playback_events": None,
    "media_events": "seq <= {seq}",
    "dedupe_audit_log": "seq <= {seq}",
    "detection_alerts": "seq <= {seq}",
    "playback_moves": "seq <= {seq}",
    "audit_decisions": "seq <= {seq}",
    "projection_meta": "true",  # the settings its rows were folded with (STALE_AFTER)
    "identity_links": "seq <= {seq}",
}


class Workbench:
    """The event log and the projection of one ingestor; made by :func:`connect` or
    :func:`open_data_dir`. Close it (or use ``async with``) to release what it opened."""

    def __init__(
        self,
        log: EventLog | None,
        *,
        nc: Client | None = None,
        owns_nc: bool = False,
        live: LiveProjection | None = None,
        db_path: Path | None = None,
        tolerance: float = 10.0,
        verdict_url: str | None = None,
    ) -> None:
        self.log = log
        self.nc = nc
        self.verdict_url = verdict_url
        """The NATS a verdict is published to when no connection is open (yet)."""
        self._owns_nc = owns_nc
        self.live = live
        self.db_path = db_path
        self.tolerance = tolerance
        self._replay: Replay | None = None
        self._file: duckdb.DuckDBPyConnection | None = None
        self._live: tuple[int, _Closing] | None = None  # (checkpoint, copy) of the live state

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._replay is not None:
            self._replay.close()
            self._replay = None
        if self._file is not None:
            self._file.close()
            self._file = None
        self._live = None
        if self.log is not None:
            await self.log.close()
        if self._owns_nc and self.nc is not None:
            await self.nc.close()
            self.nc = None

    @property
    def mode(self) -> Mode:
        """Where :meth:`snapshot` and :meth:`sql` read the projection from."""
        if self.live is not None and _answers(self.live.url):
            return "live"
        if self._file is not None:
            return "file"  # opened read-only already: no need to probe the file again
        if self.db_path is not None and self.db_path.exists() and self._file_readable():
            return "file"
        return "replay"

    # ------------------------------------------------------------------ the log

    async def events(
        self,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> pl.DataFrame:
        """Every media event of the log (duplicates included: the log, not the projection),
        ``occurred_at`` within ``[since, until]`` when given: ``seq``, ``recorded_at`` and one
        column per event field."""
        frame = await self._log().events_frame()
        if since is not None:
            frame = frame.filter(pl.col("occurred_at") >= aware_utc(since, "since"))
        if until is not None:
            frame = frame.filter(pl.col("occurred_at") <= aware_utc(until, "until"))
        return frame

    async def replay(
        self,
        until: datetime | str | None = None,
        clock: Clock = "recorded",
        **kwargs: Any,
    ) -> Replay:
        """The log's own projection as of ``until`` on ``clock``
        (:func:`workbench.replay.replay`: from the log, whatever the mode; close the result
        when done). :meth:`as_of` answers from the projection this workbench reads."""
        kwargs.setdefault("tolerance", self.tolerance)
        kwargs.setdefault("progress", False)
        return await replay(self._log(), until, clock, **kwargs)

    async def as_of(self, until: datetime | str | None = None, clock: Clock = "recorded") -> Replay:
        """The projection as of ``until`` on ``clock`` (``None``: now), answered from the
        projection this workbench reads (live, the file, or the log's projection) without
        replaying: see :mod:`ingestor.projection.asof` for what each clock means. Close the
        result when done.

        ``clock="recorded"``: what the projection held once the log had recorded everything
        up to ``until``. ``clock="occurred"``: what had happened by ``until``, as known now.
        """
        cut = aware_utc(until) if until is not None else None
        if clock not in ("recorded", "occurred"):
            raise ValueError(f"clock must be 'recorded' or 'occurred', got {clock!r}")
        started = time.perf_counter()
        mode = self.mode
        if mode == "replay":
            return await log_as_of(self._log(), cut, clock, tolerance=self.tolerance)
        # the live copy (fetched again only when the ingestor has committed since) or the
        # file; each answer reads through a cursor of its own, so a move still finishing in
        # a worker thread never shares one with the next
        shared = (await self._live_copy()) if mode == "live" else None
        con = shared.con if shared is not None else await self._snapshot("file")
        base = _Closing(con.cursor())
        return await asyncio.to_thread(
            answer_as_of, base.con, cut, clock, keep=(shared, base), started=started
        )

    # ------------------------------------------------------------------ the projection

    async def snapshot(self) -> duckdb.DuckDBPyConnection:
        """The current projection as a DuckDB connection (read it, don't write it).

        Live, the tables are fetched from the ingestor: ``playback_events`` first, then the
        other tables cut at the sequence that answer was consistent as of. From a file or a
        replay, the connection is the projection itself.
        """
        return await self._snapshot(self.mode)

    async def _snapshot(self, mode: Mode) -> duckdb.DuckDBPyConnection:
        if mode == "live":  # a copy of its own: the caller keeps it as long as it likes
            assert self.live is not None
            return await asyncio.to_thread(_live_snapshot, self.live)
        if mode == "file":
            if self._file is None:
                assert self.db_path is not None
                self._file = duckdb.connect(str(self.db_path), read_only=True)
                self._file.execute("SET TimeZone = 'UTC'")
            return self._file
        # the log's projection, brought up to the log's end (only what it gained is projected)
        rebuilt, _ = await projection_of(self._log(), tolerance=self.tolerance, progress=False)
        current = await asyncio.to_thread(rebuilt.projection.checkpoint)
        if self._replay is not None:
            if self._replay.last_seq == current:
                return self._replay.con  # the log has not grown: still the current state
            self._replay.close()
        self._replay = Replay(
            rebuilt.projection.con.cursor(),
            as_of=None,
            clock="recorded",
            last_seq=current,
            stats=ReplayStats(0, 0, 0, 0.0),
            keep=rebuilt,
        )
        return self._replay.con

    async def sql(self, query: str) -> pl.DataFrame:
        """One SELECT over the current projection, as a polars frame."""
        mode = self.mode  # probes the HTTP port and the file: once per call
        if mode == "live":
            assert self.live is not None
            try:
                return (await asyncio.to_thread(self.live.sql, query)).frame
            except QueryError as exc:
                raise WorkbenchError(str(exc)) from None
        con = await self._snapshot(mode)
        return con.sql(query).pl()

    async def export(
        self,
        what: _export.Kind,
        *,
        since: datetime | date | str,
        until: datetime | date | str,
        tz: str = "UTC",
        format: _export.Format = "parquet",
        out: Path | str,
    ) -> _export.Exported:
        """Write the ``playbacks``, ``plays`` or ``events`` of the period ``[since, until)``
        of the current projection to ``out`` as ``parquet``, ``csv`` or ``json``; a date is a
        local day in ``tz``, an ``until`` date included (:mod:`workbench.export` says what
        each kind holds and how each format writes types and times). The period and the
        format are checked before the projection is read."""
        _export.period(since, until, tz)  # a bad period fails before any reading
        if format not in _export.FORMATS:
            raise ValueError(f"format must be one of {_export.FORMATS}, got {format!r}")
        db = await self.snapshot()
        return _export.export(db, what, since=since, until=until, tz=tz, format=format, out=out)

    async def audit(self, **filters: Any) -> pl.DataFrame:
        """Dedup audit entries (:func:`workbench.audit.entries` filters)."""
        return _audit.entries(await self.snapshot(), **filters)

    async def alerts(self, **filters: Any) -> pl.DataFrame:
        """Detection alerts (:func:`workbench.alerts.alerts` filters: rule, severity, user,
        since, until)."""
        from workbench.alerts import alerts

        return alerts(await self.snapshot(), **filters)

    async def audit_browser(
        self, *, by: str = "", page_size: int = 20, tz: str = "UTC", **filters: Any
    ) -> Any:
        """An :class:`workbench.widgets.AuditBrowser` over the entries (``filters`` as for
        :func:`workbench.audit.entries`), each next to the report it was matched to, whose
        Confirm and Restore buttons publish verdicts through this workbench (recorded as
        given ``by``). Offline, a button says that a verdict needs the running ingestor and
        how to start it."""
        from workbench.widgets import AuditBrowser

        frame = _audit.entries(await self.snapshot(), payloads=True, **filters)
        return AuditBrowser(
            frame,
            on_confirm=lambda audit_id: self.confirm(audit_id, by=by),
            on_restore=lambda audit_id: self.restore(audit_id, by=by),
            page_size=page_size,
            tz=tz,
        )

    # ------------------------------------------------------------------ verdicts

    async def confirm(self, audit_id: str, *, by: str = "", notes: str = "") -> _audit.Receipt:
        """Publish "this drop or link was right" (see :func:`workbench.audit.confirm`)."""
        return await self._verdict(_audit.confirm, audit_id, by, notes)

    async def restore(self, audit_id: str, *, by: str = "", notes: str = "") -> _audit.Receipt:
        """Publish "this drop or link was wrong" (see :func:`workbench.audit.restore`)."""
        return await self._verdict(_audit.restore, audit_id, by, notes)

    async def _verdict(self, fn: Any, audit_id: str, by: str, notes: str) -> _audit.Receipt:
        nc = await self._verdict_client()
        try:
            receipt = await fn(nc, audit_id, db=await self.snapshot(), by=by, notes=notes)
        except (nats.errors.ConnectionClosedError, nats.errors.TimeoutError) as exc:
            raise WorkbenchError(
                f"the stream did not take the verdict ({type(exc).__name__}); "
                f"{INGESTOR_HINT}, then try again"
            ) from None
        if self.mode == "live":  # say whether the live projection shows it yet
            applied = await self._wait_applied(receipt.seq, APPLIED_WAIT)
            receipt = dataclasses.replace(receipt, applied=applied)
        return receipt

    async def _verdict_client(self, what: str = "a verdict") -> Client:
        """The NATS connection a verdict (or another record: ``what`` names it in errors) is
        published on: kept open for the workbench's lifetime, opened again when it was
        closed, and opened late when the ingestor was started after the notebook."""
        if self.nc is not None and not self.nc.is_closed:
            return self.nc
        url = self.verdict_url
        if url is None and self.log is not None and self.log.has_stream:
            self.nc = await self.log.client()  # open_data_dir(..., nats_url=...)
            if self.nc is not None and not self.nc.is_closed:
                return self.nc
        if url is None:
            raise WorkbenchError(
                f"{what} is an event in the stream, so it needs the running ingestor: "
                f"{INGESTOR_HINT}, and give this notebook its NATS (the nats_url parameter, "
                "or WORKBENCH_NATS_URL; `make lab` sets it)"
            )
        try:
            self.nc = await connect_reader(url, connect_timeout=2)
        except Exception:  # nats-py raises several kinds for "nobody there"
            raise WorkbenchError(
                f"{what} is an event in the stream, so it needs the running ingestor, and "
                f"none answers at {url}: {INGESTOR_HINT}, then try again"
            ) from None
        self._owns_nc = True
        return self.nc

    async def _wait_applied(self, seq: int, timeout: float) -> bool:
        """Whether the live projection reaches ``seq`` within ``timeout`` seconds."""
        assert self.live is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await asyncio.to_thread(self.live.checkpoint) >= seq:
                    return True
            except QueryError:
                return False
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def _live_copy(self) -> _Closing:
        """The live projection copied into memory, kept while the ingestor's checkpoint
        stays where it was (one small query asks), so a slider move against an idle
        ingestor copies nothing."""
        assert self.live is not None
        live = self.live
        kept = self._live
        if kept is not None and kept[0] == await asyncio.to_thread(live.checkpoint):
            return kept[1]
        con = await asyncio.to_thread(_live_snapshot, live)
        seq = con.execute("SELECT last_seq FROM projection_checkpoint").fetchall()[0][0]
        holder = _Closing(con)
        self._live = (int(seq), holder)
        return holder

    def _log(self) -> EventLog:
        if self.log is None:
            where = (
                "several data directories read as one have no common archive"
                if self.db_path is None and self._file is not None
                else "this data directory has no archive/"
            )
            raise WorkbenchError(f"no event log here: {where} (give nats_url to read the stream)")
        return self.log

    def _file_readable(self) -> bool:
        assert self.db_path is not None
        try:
            duckdb.connect(str(self.db_path), read_only=True).close()
        except duckdb.Error:
            return False  # an ingestor holds it
        return True


# --------------------------------------------------------------------------- constructors


async def connect(
    nats_url: str = DEFAULT_NATS_URL,
    *,
    archive_dir: Path | str | None = None,
    http_url: str | None = DEFAULT_HTTP_URL,
    token: str | None = None,
    tolerance: float = 10.0,
) -> Workbench:
    """Connect to a running ingestor: its NATS (``NATS_URL``; a comma-separated cluster
    works), optionally its ``ARCHIVE_DIR`` (the log before the stream's retention), and its
    HTTP port for live queries (``None`` for none; ``token`` is its ``QUERY_TOKEN``).

    Raises :class:`WorkbenchError` when no NATS server answers.
    """
    try:
        nc = await connect_reader(nats_url)
    except Exception as exc:  # nats-py raises several kinds for "nobody there"
        raise WorkbenchError(f"no NATS server answers at {nats_url}: {exc}") from None
    archive = Path(archive_dir) if archive_dir is not None else None
    live = LiveProjection(http_url, token=token) if http_url else None
    return Workbench(
        EventLog(archive, nc=nc),
        nc=nc,
        owns_nc=True,
        live=live,
        tolerance=tolerance,
        verdict_url=nats_url,
    )


def open_data_dir(
    path: Path | str | Sequence[Path | str] = "data",
    *,
    http_url: str | None = None,
    nats_url: str | None = None,
    tolerance: float = 10.0,
) -> Workbench:
    """Read an ingestor's ``DATA_DIR``: its archive (``archive/``) and, when no ingestor
    holds it, its DuckDB file (``analytics.duckdb``) offline; ``http_url`` reads the
    projection live whenever that ingestor runs. ``nats_url`` (that ingestor's NATS) adds
    the stream's tail to the log when it answers now, and is where verdicts are published
    (connected when the first one is given, so an ingestor started later serves it).

    Several directories (a list, or one string separated by commas, as
    ``WORKBENCH_DATA_DIR=dir1,dir2`` gives it): the data directories of ingestors that
    partition the servers (``PROJECT_SERVERS``), read as one by :func:`open_data_dirs`.

    Raises :class:`WorkbenchError` when the directory holds neither an archive nor a file.
    """
    if not isinstance(path, str | Path) or "," in str(path):
        paths = path.split(",") if isinstance(path, str) else list(path)  # type: ignore[union-attr]
        return open_data_dirs(paths, nats_url=nats_url, tolerance=tolerance)
    root = Path(path)
    archive = root / "archive"
    db_path = root / "analytics.duckdb"
    if not archive.is_dir() and not db_path.exists() and nats_url is None:
        raise WorkbenchError(f"{root} holds no archive/ and no analytics.duckdb: not a DATA_DIR")
    live = LiveProjection(http_url) if http_url else None
    has_archive = archive.is_dir()
    # a stream that does not answer now is left out of the log (offline, the archive is the
    # log), but stays the place verdicts go once the ingestor runs
    stream = nats_url if nats_url and (not has_archive or _any_answers(nats_url)) else None
    event_log = (
        EventLog(archive if has_archive else None, nats_url=stream)
        if has_archive or stream
        else None
    )
    return Workbench(
        event_log,
        live=live,
        db_path=db_path,
        tolerance=tolerance,
        verdict_url=nats_url,
    )


def open_data_dirs(
    paths: Sequence[Path | str],
    *,
    nats_url: str | None = None,
    tolerance: float = 10.0,
) -> Workbench:
    """Read the ``DATA_DIR`` of several ingestors that partition the servers
    (``PROJECT_SERVERS``) as one: their DuckDB files, attached read-only, as one projection
    (:func:`workbench.union.attach_union`), so statistics, audit, alerts and as-of answers
    read every server's rows. No ingestor may hold a file (stop them, or read each one
    live on its own). The log, when ``nats_url`` answers, is the whole stream (every
    server's events); the archives of the directories are not merged into one log, so
    without ``nats_url`` there is no log (:meth:`Workbench.events` and ``replay`` say so).

    Raises :class:`WorkbenchError` when a directory has no ``analytics.duckdb`` or a file
    cannot be opened.
    """
    roots = [Path(str(p).strip()) for p in paths if str(p).strip()]
    if len(roots) == 1:
        return open_data_dir(roots[0], nats_url=nats_url, tolerance=tolerance)
    from workbench.union import attach_union

    try:
        con = attach_union([root / "analytics.duckdb" for root in roots])
    except (ValueError, duckdb.Error) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "lock" in first.lower():
            first = (
                "a file is held by a running ingestor (DuckDB lets nobody read next to its "
                "writer): stop it, or read that directory live with open_data_dir(dir, "
                f"http_url=...) ({first})"
            )
        raise WorkbenchError(f"cannot read {', '.join(map(str, roots))} as one: {first}") from None
    stream = nats_url if nats_url and _any_answers(nats_url) else None
    wb = Workbench(
        EventLog(None, nats_url=stream) if stream else None,
        tolerance=tolerance,
        verdict_url=nats_url,
    )
    wb._file = con
    return wb


# --------------------------------------------------------------------------- helpers


def _any_answers(urls: str) -> bool:
    """Whether a server of a comma-separated list answers."""
    return any(_answers(url.strip()) for url in urls.split(",") if url.strip())


def _answers(url: str) -> bool:
    host_port = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 80)), timeout=0.5):
            return True
    except OSError:
        return False


class _Closing:
    """Holds a connection (``.con``) and closes it once nothing holds this any more (the
    workbench's live copy, and every Replay answered from it)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._finalizer = weakref.finalize(self, _close_quietly, con)


def _close_quietly(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):
        con.close()


def _live_snapshot(live: LiveProjection) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
    first = live.sql("SELECT * FROM playback_events")
    seq = first.checkpoint_seq
    tables = {"playback_events": first.frame}
    for name, cut in SNAPSHOT_TABLES.items():
        if cut is not None:
            tables[name] = live.sql(f"SELECT * FROM {name} WHERE {cut.format(seq=seq)}").frame
    for name, frame in tables.items():
        con.register(f"_{name}", frame.to_arrow())
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM _{name}")
        con.unregister(f"_{name}")
    con.execute(
        "CREATE TABLE projection_checkpoint AS SELECT 'projector' AS consumer, "
        f"{seq}::BIGINT AS last_seq, now() AS updated_at"
    )
    create_views(con)
    return con


__all__ = ["Workbench", "WorkbenchError", "connect", "open_data_dir", "open_data_dirs"]
