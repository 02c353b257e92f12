"""Tautulli: finished sessions from ``get_history``, live transitions from ``get_activity``.

:class:`TautulliSync` is a :class:`~ingestor.sources.base.Source`. Each round it

1. asks ``get_server_info`` for the Plex server id (``pms_identifier``; history rows carry
   none) and, once per server, ``get_users`` for the owner's plex.tv id, and reports both to
   ``on_server_info`` (the Plex webhook adapter maps ``Account.id`` 1 to that id);
2. every ``sync_interval``, pages ``get_history`` (``grouping=0``, ``order_column=started``,
   ``order_dir=asc``, ``start``/``length``) until a short page, each finished row becoming one
   ``summary`` event (:mod:`ingestor.sources.tautulli.mapping`);
3. every ``activity_interval``, polls ``get_activity`` and emits ``play``/``pause``/
   ``resume``/``stop`` transitions of live sessions.

The round is sequential: a long backfill (``TAUTULLI_LOOKBACK=all`` over years of history)
delays activity polls until its last page; a session that ends meanwhile is still recorded by
its history row.

**History cursor** (:mod:`.cursor`). A pass asks ``after = date(cursor - 2 days)`` and
emits only rows whose id it has not read before. So a row written late (a long session
ending, a row slipped past an offset because another was inserted before it) is still picked
up by the next pass, as long as it started within the overlap; rows already read are never
re-sent. The state is saved after each page's events were stored by the sink: a restart
mid-backfill resumes at the cursor and re-sends at most the page in flight, which dedup tier
(a) drops. In-progress rows in ``get_history`` (``state`` set) are never summaries: they are
skipped.

**Live sessions**: :mod:`.activity`. **Failures**: the client (:mod:`.client`) says each in
the shared vocabulary (:mod:`ingestor.sources.http`) and retries the transient ones; each
failure counts towards the :class:`~ingestor.sources.base.CircuitBreaker`, so a dead Tautulli
gets ``threshold`` requests per ``reset_timeout``, not a spin. Nothing here raises out of
:meth:`TautulliSync.run`: errors go to the log and :attr:`TautulliSync.health`.

**Server id.** ``get_server_info`` answers an empty ``pms_identifier`` until Tautulli was
connected to Plex once. Then ``server_id`` (``TAUTULLI_SERVER_ID``) names the server; without
it the sync waits with one clear error per ``reset_timeout``. A configured id always wins (the
events' ids depend on it); a different id reported by Tautulli is warned about once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ingestor.errors import InvalidEvent
from ingestor.events import MediaEvent
from ingestor.sink import Sink
from ingestor.sources.base import (
    Backoff,
    CircuitBreaker,
    CircuitOpen,
    SourceHealth,
    StateFile,
    check_event_size,
    receipt_time,
)
from ingestor.sources.config import TautulliConfig
from ingestor.sources.http import UpstreamBadResponse, UpstreamError, UpstreamMisconfigured
from ingestor.sources.tautulli.activity import LiveActivity
from ingestor.sources.tautulli.client import TautulliClient, history_page
from ingestor.sources.tautulli.cursor import HistoryCursor, PassResult
from ingestor.sources.tautulli.mapping import (
    as_bool,
    as_id,
    as_int,
    as_text,
    history_row_id,
    is_grouped,
    is_in_progress,
    summary_from_history_row,
)

log = logging.getLogger(__name__)

KIND = "tautulli"
STATE_VERSION = 1

OnServerInfo = Callable[[str, str | None], None]
"""Called with (Plex server id, the owner's plex.tv user id or None) when they are learned."""


# ---------------------------------------------------------------------------------------
# persisted state


def state_path_for(data_dir: Path, url: str) -> Path:
    """``$DATA_DIR/sources/tautulli-<host>[_<port>].json`` for the Tautulli at ``url``.

    >>> state_path_for(Path("/data"), "http://tautulli.lan:8181").as_posix()
    '/data/sources/tautulli-tautulli.lan_8181.json'
    """
    parts = urlsplit(url)
    host = parts.hostname or "tautulli"
    name = host if parts.port is None else f"{host}_{parts.port}"
    path = parts.path.strip("/")
    if path:
        name += "_" + path
    return Path(data_dir) / "sources" / f"tautulli-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.json"


# ---------------------------------------------------------------------------------------
# the source


class TautulliSync:
    """Syncs one Tautulli instance (see the module docstring)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        sink: Sink,
        state_path: Path | str,
        *,
        sync_interval: float = 300.0,
        lookback: float | None = 86400.0,
        page_size: int = 1000,
        activity_interval: float | None = None,
        poll_activity: bool = True,
        on_server_info: OnServerInfo | None = None,
        breaker: CircuitBreaker | None = None,
        backoff: Callable[[], Backoff] | None = None,
        attempts: int = 3,
        request_timeout: float = 30.0,
        name: str | None = None,
        server_id: str | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.sink = sink
        self.state = StateFile(Path(state_path))
        self.sync_interval = sync_interval
        self.lookback = lookback
        self.page_size = page_size
        self.activity_interval = (
            min(sync_interval, 30.0) if activity_interval is None else activity_interval
        )
        self.poll_activity_enabled = poll_activity
        self.on_server_info = on_server_info
        self.breaker = breaker or CircuitBreaker()
        self._backoff = backoff or Backoff
        self.attempts = attempts
        self.request_timeout = request_timeout
        netloc = urlsplit(self.url).netloc or self.url
        self.health = SourceHealth(name or f"tautulli:{netloc}", KIND)
        self.configured_server_id = server_id or None  # TAUTULLI_SERVER_ID
        self.server_id: str | None = None
        self.owner_user_id: str | None = None
        self._said_server: str | None = None  # what refresh_server_info last said about ids
        self._informed = False  # on_server_info was told about the current server
        self._owner_pending = False  # get_users failed: ask again at the next pass
        self._stop: asyncio.Event | None = None
        self._http: aiohttp.ClientSession | None = None
        self._client: TautulliClient | None = None
        self._data: dict[str, Any] | None = None
        self._cursors: dict[str, HistoryCursor] = {}
        self.activity = LiveActivity(
            self.url, sink, self.health, activity_interval=self.activity_interval
        )
        self._save_lock = asyncio.Lock()
        self._requests_done = 0
        self.rounds = 0  # loop rounds run() started (each waits for the next due work)

    @classmethod
    def from_config(
        cls,
        config: TautulliConfig,
        *,
        data_dir: Path,
        sink: Sink,
        on_server_info: OnServerInfo | None = None,
        **kwargs: Any,
    ) -> TautulliSync:
        """A sync for one configured Tautulli (``TAUTULLI_URL``, ``TAUTULLI_API_KEY``...),
        its state in ``$DATA_DIR/sources/tautulli-<host>.json``; ``TAUTULLI_SERVER_ID`` names
        the Plex server when Tautulli cannot."""
        return cls(
            config.url,
            config.api_key,
            sink,
            state_path_for(data_dir, config.url),
            sync_interval=config.sync_interval,
            lookback=config.lookback,
            page_size=config.page_size,
            on_server_info=on_server_info,
            server_id=config.server_id,
            **kwargs,
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> TautulliSync:
        if self._http is None:
            timeout = aiohttp.ClientTimeout(total=self.request_timeout)
            self._http = aiohttp.ClientSession(timeout=timeout)
            self._client = TautulliClient(
                self.url,
                self.api_key,
                self._http,
                breaker=self.breaker,
                attempts=self.attempts,
                backoff=self._backoff,
                stop=self._stop,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            self._requests_done += self._client.requests
        if self._http is not None:
            await self._http.close()
        self._http = self._client = None

    @property
    def requests(self) -> int:
        """HTTP requests sent so far."""
        return self._requests_done + (self._client.requests if self._client is not None else 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Sync until ``stop`` is set; upstream trouble is recorded in :attr:`health`."""
        self._stop = stop
        loop = asyncio.get_running_loop()
        async with self:
            next_history = loop.time()
            while not stop.is_set():
                self.rounds += 1
                if loop.time() >= next_history:
                    await self._attempt("history sync", self.sync_history)
                    next_history = loop.time() + self.sync_interval
                if stop.is_set():
                    break
                if self.poll_activity_enabled:
                    await self._attempt("activity poll", self.poll_activity)
                    delay = min(self.activity_interval, next_history - loop.time())
                else:
                    delay = next_history - loop.time()
                try:
                    await asyncio.wait_for(stop.wait(), max(delay, 0.01))
                except TimeoutError:
                    pass

    async def _attempt(self, what: str, work: Callable[[], Any]) -> None:
        try:
            await work()
        except CircuitOpen as exc:
            log.debug("%s of %s skipped: %s", what, self.url, exc)
        except UpstreamError as exc:
            log.error("%s of %s failed: %s", what, self.url, exc)
            self.health.failure(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("%s of %s failed: %s", what, self.url, exc, exc_info=True)
            self.health.failure(exc)

    def _api(self) -> TautulliClient:
        if self._client is None:
            raise RuntimeError("use `async with TautulliSync(...)` or run()")
        return self._client

    # ------------------------------------------------------------------ state

    def _loaded(self) -> dict[str, Any]:
        if self._data is None:
            try:
                data = self.state.load()
            except ValueError as exc:
                log.error("%s; starting over (dedup drops what is sent again)", exc)
                self.health.failure(str(exc))
                data = {}
            self._data = data
            self.server_id = self.server_id or data.get("server_id")
            for server, cursor in (data.get("history") or {}).items():
                self._cursors[server] = HistoryCursor.from_json(cursor)
            self.activity.load(data.get("activity") or {})
        return self._data

    async def _save(self) -> None:
        data = self._loaded()
        data.update(
            {
                "version": STATE_VERSION,
                "url": self.url,
                "server_id": self.server_id,
                "history": {s: c.to_json() for s, c in self._cursors.items()},
                "activity": self.activity.dump(),
            }
        )
        async with self._save_lock:
            await asyncio.to_thread(self.state.save, data)

    # ------------------------------------------------------------------ server info

    async def refresh_server_info(self) -> str:
        """Ask the Plex server id (and, per server, the owner's id); report what is new."""
        self._loaded()
        info = await self._api().call("get_server_info")
        reported = as_text(info.get("pms_identifier") if isinstance(info, dict) else "").strip()
        server_id = self._chosen_server_id(reported)
        changed = server_id != self.server_id
        if changed and self.server_id:
            log.warning(
                "Tautulli at %s: the Plex server is now %s (was %s)",
                self.url,
                server_id,
                self.server_id,
                extra={"server_id": server_id, "previous_server_id": self.server_id},
            )
        self.server_id = server_id
        self.health.server_id = server_id
        self.health.name = f"tautulli:{server_id}"
        if changed or not self._informed or self._owner_pending:
            owner = await self._owner_id()
            if changed or not self._informed or owner is not None:
                self.owner_user_id = owner
                self._informed = True
                self._report_server_info(server_id, owner)
        return server_id

    def _chosen_server_id(self, reported: str) -> str:
        """The configured id if there is one (said once when Tautulli reports none or
        another), else the one Tautulli reports; neither: a configuration error."""
        configured = self.configured_server_id
        if configured is None:
            if reported:
                return reported
            self._api().trip()  # nothing to do until someone connects Tautulli or names it
            raise UpstreamMisconfigured(
                f"Tautulli at {self.url} reports no Plex server (empty pms_identifier: it was "
                "never connected to Plex): connect it to Plex (Settings > Plex Media Server), "
                "or set TAUTULLI_SERVER_ID to the Plex server's id (its machineIdentifier, "
                "the Plex webhook's Server.uuid)"
            )
        if reported != configured and self._said_server != reported:
            self._said_server = reported
            if reported:
                log.warning(
                    "Tautulli at %s reports Plex server %s, TAUTULLI_SERVER_ID says %s: "
                    "keeping %s (event ids depend on it); unset TAUTULLI_SERVER_ID to follow "
                    "Tautulli",
                    self.url,
                    reported,
                    configured,
                    configured,
                    extra={"reported_server_id": reported, "server_id": configured},
                )
            else:
                log.info(
                    "Tautulli at %s reports no Plex server yet: using TAUTULLI_SERVER_ID %s",
                    self.url,
                    configured,
                    extra={"server_id": configured},
                )
        return configured

    def _report_server_info(self, server_id: str, owner: str | None) -> None:
        if self.on_server_info is None:
            return
        try:
            self.on_server_info(server_id, owner)
        except Exception as exc:
            log.error("on_server_info callback failed: %s", exc, exc_info=True)

    async def _owner_id(self) -> str | None:
        """The plex.tv id of the server owner (the ``is_admin`` user of ``get_users``)."""
        try:
            users = await self._api().call("get_users")
        except UpstreamBadResponse as exc:
            log.warning("cannot learn the Plex owner's id from %s: %s", self.url, exc)
            self._owner_pending = True
            return None
        self._owner_pending = False
        for user in users if isinstance(users, list) else []:
            if isinstance(user, dict) and as_bool(user.get("is_admin")):
                return as_id(user.get("user_id")) or None
        return None

    async def _server(self) -> str:
        if self.server_id is None or not self._informed:
            return await self.refresh_server_info()
        return self.server_id

    # ------------------------------------------------------------------ history

    async def sync_history(self) -> PassResult:
        """One history pass: every page after the cursor (see the module docstring)."""
        server_id = await self.refresh_server_info()
        cursor = self._cursors.setdefault(server_id, HistoryCursor())
        cursor.begin(self.lookback, receipt_time())
        after = cursor.after()
        result = PassResult()
        start = 0
        while True:
            if self._stop is not None and self._stop.is_set():
                return result
            data = await self._api().call(
                "get_history",
                grouping=0,
                include_activity=0,  # Tautulli's default lists live sessions too
                order_column="started",
                order_dir="asc",
                start=start,
                length=self.page_size,
                after=after,
            )
            rows, filtered = history_page(data, self.url)
            result.pages += 1
            result.rows += len(rows)
            events = self._page_events(rows, server_id, cursor, result)
            if events:
                stats = await self.sink.emit(events)
                result.stored += stats.stored
                result.duplicate += stats.duplicate
                result.events += len(events)
            await self._save()
            start += len(rows)
            if len(rows) < self.page_size or (filtered is not None and start >= filtered):
                break
        cursor.complete()
        await self._save()
        if result.skipped_grouped:
            message = (
                f"Tautulli at {self.url} returned {result.skipped_grouped} grouped history "
                "rows although grouping=0 was asked; they were skipped (import the Tautulli "
                "database to recover their sessions one by one)"
            )
            log.warning(message)
            self.health.failure(message)
        self.health.success(result.stored)
        log.info(
            "Tautulli %s history: %d rows in %d pages, %d new events",
            self.url,
            result.rows,
            result.pages,
            result.stored,
        )
        return result

    def _page_events(
        self,
        rows: list[Any],
        server_id: str,
        cursor: HistoryCursor,
        result: PassResult,
    ) -> list[MediaEvent]:
        events: list[MediaEvent] = []
        for row in rows:
            if not isinstance(row, dict):
                result.invalid += 1
                log.error("Tautulli %s: a history row is not an object: %r", self.url, row)
                continue
            if is_in_progress(row):
                result.skipped_in_progress += 1  # the next pass sees it finished
                continue
            started = as_int(row.get("started"))
            if started is not None:
                cursor.cursor = started if cursor.cursor is None else max(cursor.cursor, started)
            if is_grouped(row):
                result.skipped_grouped += 1
                ids = [as_int(i) for i in as_text(row.get("group_ids")).split(",")]
                cursor.current.update(i for i in ids if i is not None)
                continue
            row_id = history_row_id(row)
            if row_id is None:
                result.invalid += 1
                log.error("Tautulli %s: a history row has no row_id: %s", self.url, row)
                continue
            if cursor.seen(row_id):
                cursor.current.add(row_id)
                continue
            cursor.current.add(row_id)
            if cursor.floor is not None and started is not None and started < cursor.floor:
                continue
            try:
                events.append(check_event_size(summary_from_history_row(row, server_id)))
            except InvalidEvent as exc:  # an InvalidHistoryRow, or an event too large
                result.invalid += 1
                log.error("skipped: %s", exc)
                self.health.failure(str(exc))
        return events

    # ------------------------------------------------------------------ activity

    async def poll_activity(self) -> PassResult:
        """One ``get_activity`` poll: the transitions since the last one (:mod:`.activity`)."""
        server_id = await self._server()
        result = await self.activity.poll(self._api(), server_id)
        if result is None:  # no live activity known: open sessions are left as they are
            return PassResult()
        await self._save()
        self.health.success(result.stored)
        return result


__all__ = ["KIND", "OnServerInfo", "TautulliSync", "state_path_for"]
