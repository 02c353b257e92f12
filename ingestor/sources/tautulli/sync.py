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

**History cursor.** Ascending ``started`` order keeps offsets stable while new rows arrive
(new rows mostly start after what was read). The state file keeps the latest ``started``
read (the cursor), the lookback floor (``TAUTULLI_LOOKBACK``: rows starting before
``first sync - lookback`` are never emitted; ``all`` has no floor), and the ids of the rows
read by the last complete pass plus the current one, as ranges. A pass asks
``after = date(cursor - 2 days)`` (day granularity, in Tautulli's local time zone: two days
cover any zone), re-reads that overlap, and emits only rows whose id it has not read before.
So a row written late (a long session ending, a row slipped past an offset because another
was inserted before it) is still picked up by the next pass, as long as it started within the
overlap; rows already read are never re-sent. The state is saved after each page's events
were stored by the sink: a restart mid-backfill resumes at the cursor and re-sends at most
the page in flight, which dedup tier (a) drops.

**Live sessions.** ``get_activity`` has no start time. A session's start is Tautulli's own
``started`` for it, read from ``get_history&include_activity=1`` (the in-progress row with the
same ``session_key``). That is exactly the ``started`` of the history row Tautulli writes when
the session ends, so the transitions and the final summary meet within the dedup tolerance
whatever the poll interval. A new session whose start Tautulli does not list yet is held back
to the next poll (if it ends first, only its summary is recorded). Transitions are emitted
under the source ``tautulli_activity`` with ``session_key``
``"<session_key>:<rating_key>:<started>"`` (Plex reuses session keys), so the summary (source
``tautulli``) *links* to the playback they opened instead of opening a second one; the dedup
links reports of different sources only. Open sessions (state, playhead, last seen) are kept
in the state file: an unchanged session is never reported twice, across restarts too. A
session missing from ``get_activity`` stopped: its stop time is the history row's
``stopped`` when Tautulli already wrote it, else the detection time (or the last time it was
seen, after a long gap such as a restart). ``buffering`` is neither playing nor paused.
In-progress rows in ``get_history`` (``state`` set) are never summaries: they are skipped.

**Failures.** Every answer is the envelope ``{"response": {"result", "message", "data"}}``,
and Tautulli (``plexpy/api2.py`` ``_api_run``) answers every refusal with HTTP 400 (500 when
a command raised), so a refusal is told by its ``message``, whatever the status: ``Invalid
apikey`` or a missing key: ``TAUTULLI_API_KEY rejected by <url>``; ``API not enabled``,
Tautulli without a key of its own, an unknown command, and answers that are not Tautulli's:
a clear error saying what to fix. These open the circuit at once (one trial per
``reset_timeout``, no hammering). Another ``result: error`` is a failed command. 5xx, 429
(honouring ``Retry-After``), timeouts and refused connections are retried with
:class:`~ingestor.sources.base.Backoff` inside the call; each failure counts towards the
:class:`~ingestor.sources.base.CircuitBreaker`, so a dead Tautulli gets ``threshold``
requests per ``reset_timeout``, not a spin. Nothing here raises out of
:meth:`TautulliSync.run`: errors go to the log and :attr:`TautulliSync.health`.

**Plex unreachable.** Tautulli still answers ``get_activity``, with success and ``data: {}``
(no ``sessions``): no live activity is known. That is a state of the source
(``health.state`` ``no_live_activity``, in ``/status``), not an error: one warning when it
begins, one info when it ends; open sessions are left as they are until activity is known
again. History keeps syncing.

**Server id.** ``get_server_info`` answers an empty ``pms_identifier`` until Tautulli was
connected to Plex once. Then ``server_id`` (``TAUTULLI_SERVER_ID``) names the server; without
it the sync waits with one clear error per ``reset_timeout``. A configured id always wins (the
events' ids depend on it); a different id reported by Tautulli is warned about once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from ingestor.errors import IngestorError, InvalidEvent
from ingestor.events import EventType, MediaEvent, make_event_id, percent_of
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
from ingestor.sources.tautulli.mapping import (
    as_bool,
    as_float,
    as_id,
    as_int,
    as_text,
    encode_raw,
    history_row_id,
    is_grouped,
    is_in_progress,
    summary_from_history_row,
    transcode_decision,
)

log = logging.getLogger(__name__)

KIND = "tautulli"
ACTIVITY_SOURCE = "tautulli_activity"
HISTORY_OVERLAP = timedelta(days=2)
STATE_VERSION = 1
NO_LIVE_ACTIVITY = "no_live_activity"  # health state: get_activity knows no sessions

# the messages of Tautulli's refusals (plexpy/api2.py _api_validate), all sent with HTTP 400
KEY_REJECTED = ("Invalid apikey", "Parameter apikey is required")
NO_OWN_KEY = "API key not generated"  # ... or "... not generated correctly"
API_OFF = "API not enabled"
UNKNOWN_COMMAND = "Unknown command"

OnServerInfo = Callable[[str, str | None], None]
"""Called with (Plex server id, the owner's plex.tv user id or None) when they are learned."""


# ---------------------------------------------------------------------------------------
# errors


class TautulliError(IngestorError):
    """Tautulli did not answer a command usefully; the message says what to do."""


class TautulliConfigError(TautulliError):
    """Retrying cannot help until someone fixes the configuration (key, URL, API switch)."""


class TautulliAuthError(TautulliConfigError):
    """The API key was rejected (Tautulli says so with HTTP 400 and ``Invalid apikey``)."""


class TautulliUnavailable(TautulliError):
    """A transient failure: 5xx, 429, a timeout, a refused connection."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TautulliCommandError(TautulliError):
    """The command answered ``result: error`` (or a payload of the wrong shape)."""


# ---------------------------------------------------------------------------------------
# the API client


class TautulliClient:
    """Calls ``GET {url}/api/v2?apikey=..&cmd=..`` and unwraps the envelope.

    Transient failures are retried ``attempts`` times in all with backoff; every failure is
    counted by ``breaker`` and configuration errors open it at once.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        http: aiohttp.ClientSession,
        *,
        breaker: CircuitBreaker,
        attempts: int = 3,
        backoff: Callable[[], Backoff] = Backoff,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.http = http
        self.breaker = breaker
        self.attempts = max(1, attempts)
        self._backoff = backoff
        self._stop = stop
        self.requests = 0

    async def call(self, cmd: str, **params: Any) -> Any:
        """The ``data`` of a successful answer; raises a :class:`TautulliError` or
        :class:`~ingestor.sources.base.CircuitOpen`."""
        backoff = self._backoff()
        attempt = 0
        while True:
            self.breaker.check()
            try:
                data = await self._request(cmd, params)
            except TautulliUnavailable as exc:
                self.breaker.failure()
                attempt += 1
                if attempt >= self.attempts or self.breaker.state == "open":
                    raise
                delay = max(backoff.next(), exc.retry_after or 0.0)
                log.info("%s; retrying in %.1fs", exc, delay)
                if await self._sleep(delay):
                    raise
                continue
            except TautulliConfigError:
                self.trip()
                raise
            except TautulliCommandError:
                self.breaker.failure()
                raise
            self.breaker.success()
            return data

    async def _request(self, cmd: str, params: Mapping[str, Any]) -> Any:
        query = {"apikey": self.api_key, "cmd": cmd}
        query.update({k: str(v) for k, v in params.items() if v is not None})
        self.requests += 1
        try:
            async with self.http.get(f"{self.url}/api/v2", params=query) as resp:
                status = resp.status
                body = await resp.read()
                retry_after = _seconds(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise TautulliUnavailable(f"Tautulli at {self.url} unreachable: {reason}") from None
        response = _envelope(body)
        if status != 200 or (response is not None and response.get("result") == "error"):
            raise self._refused(cmd, status, response, retry_after)
        if response is None:
            raise TautulliConfigError(
                f"{self.url}/api/v2 did not answer like Tautulli's API v2 (no response "
                "envelope): is TAUTULLI_URL right?"
            )
        if response.get("result") != "success":
            raise TautulliCommandError(f"Tautulli at {self.url} failed {cmd}{_message(response)}")
        return response.get("data")

    def _refused(
        self,
        cmd: str,
        status: int,
        response: Mapping[str, Any] | None,
        retry_after: float | None,
    ) -> TautulliError:
        """The error for an answer that is not a success: by its message first, since
        Tautulli sends 400 for nearly every refusal (``plexpy/api2.py`` ``_api_run``)."""
        message = as_text(response.get("message")).strip() if response else ""
        said = f": {message}" if message else ""
        if message in KEY_REJECTED or (status == 401 and response is not None):
            return TautulliAuthError(f"TAUTULLI_API_KEY rejected by {self.url}{said}")
        if message.startswith(NO_OWN_KEY):
            return TautulliConfigError(
                f"Tautulli at {self.url} has no usable API key of its own{said}: generate one "
                "in Settings > Web Interface > API and set TAUTULLI_API_KEY to it"
            )
        if message == API_OFF:
            return TautulliConfigError(
                f"the API of Tautulli at {self.url} is not enabled: enable it in Settings > "
                "Web Interface > API"
            )
        if message.startswith(UNKNOWN_COMMAND):
            return TautulliConfigError(
                f"Tautulli at {self.url} does not know the command {cmd}: is it Tautulli 2.x?"
            )
        if status == 429 or status >= 500:
            return TautulliUnavailable(
                f"Tautulli at {self.url} answered {status} to {cmd}{said}", retry_after
            )
        if response is not None:
            reason = said or " (no reason given: see Tautulli's log)"
            return TautulliCommandError(f"Tautulli at {self.url} failed {cmd}{reason}")
        if status in (401, 403):
            return TautulliConfigError(
                f"{self.url} answered {status} to {cmd}, and not as Tautulli does: does a proxy "
                "in front of Tautulli ask for credentials? TAUTULLI_URL must reach its API"
            )
        if status in (400, 404):
            return TautulliConfigError(
                f"{self.url}/api/v2 answered {status} to {cmd}, and not as Tautulli does: is "
                "TAUTULLI_URL the Tautulli root (with its HTTP root, if one is set)?"
            )
        return TautulliConfigError(f"Tautulli at {self.url} answered {status} to {cmd}")

    def trip(self) -> None:
        """Open the circuit now: a configuration error will not heal by itself."""
        for _ in range(self.breaker.threshold):
            self.breaker.failure()

    async def _sleep(self, delay: float) -> bool:
        if self._stop is None:
            await asyncio.sleep(delay)
            return False
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            return False
        return True


def _envelope(body: bytes) -> dict[str, Any] | None:
    try:
        payload = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # msgspec's answer to deep nesting
        return None
    if isinstance(payload, dict) and isinstance(payload.get("response"), dict):
        return payload["response"]
    return None


def _message(response: Mapping[str, Any] | None) -> str:
    text = as_text(response.get("message")).strip() if response else ""
    return f": {text}" if text else ""


def _seconds(value: str | None) -> float | None:
    try:
        return min(float(value), 300.0) if value else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------
# persisted state


def id_ranges(ids: Iterable[int]) -> list[list[int]]:
    """A set of ids as sorted inclusive ``[first, last]`` runs (compact in JSON).

    >>> id_ranges({5, 1, 2, 3, 9, 10})
    [[1, 3], [5, 5], [9, 10]]
    """
    runs: list[list[int]] = []
    for value in sorted(ids):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return runs


def ids_from_ranges(runs: Iterable[Iterable[int]]) -> set[int]:
    """The inverse of :func:`id_ranges`.

    >>> sorted(ids_from_ranges([[1, 3], [9, 10]]))
    [1, 2, 3, 9, 10]
    """
    ids: set[int] = set()
    for first, last in runs:
        ids.update(range(int(first), int(last) + 1))
    return ids


@dataclass
class HistoryCursor:
    """Where the history sync of one server stands."""

    cursor: int | None = None  # the latest ``started`` read
    floor: int | None = None  # rows starting before this are outside the lookback
    lookback: float | None = None  # the lookback the floor was set for (None: all)
    initialised: bool = False
    previous: set[int] = field(default_factory=set)  # ids read by the last complete pass
    current: set[int] = field(default_factory=set)  # ids read by the pass under way

    def seen(self, row_id: int) -> bool:
        return row_id in self.current or row_id in self.previous

    def begin(self, lookback: float | None, now: datetime) -> None:
        """Start a pass: set the floor on the first one, widen it if the lookback grew."""
        self.previous |= self.current
        self.current = set()
        wanted = None if lookback is None else int(now.timestamp() - lookback)
        if not self.initialised:
            self.floor, self.lookback, self.initialised = wanted, lookback, True
            return
        widened = lookback is None or (self.lookback is not None and lookback > self.lookback)
        if self.floor is not None and widened and (wanted is None or wanted < self.floor):
            log.info("Tautulli lookback widened: reading history again from the new floor")
            self.floor, self.lookback, self.cursor = wanted, lookback, None

    def after(self) -> str | None:
        """The ``after`` date of the next request (None: no lower bound)."""
        anchor = self.cursor if self.cursor is not None else self.floor
        if anchor is None:
            return None
        return (datetime.fromtimestamp(anchor, UTC) - HISTORY_OVERLAP).strftime("%Y-%m-%d")

    def complete(self) -> None:
        """A pass read everything after its ``after``: later passes only need its ids."""
        self.previous, self.current = self.current, set()

    def to_json(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "floor": self.floor,
            "lookback": self.lookback,
            "initialised": self.initialised,
            "seen": id_ranges(self.previous | self.current),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HistoryCursor:
        return cls(
            cursor=data.get("cursor"),
            floor=data.get("floor"),
            lookback=data.get("lookback"),
            initialised=bool(data.get("initialised")),
            previous=ids_from_ranges(data.get("seen") or []),
        )


class OpenSession(msgspec.Struct):
    """A live session the activity poll reported a play for and no stop yet."""

    key: str  # Tautulli's live identity, "<session_key>:<rating_key>"
    session: str  # our session_key, "<session_key>:<rating_key>:<started>"
    started: int  # Tautulli's ``started`` (epoch seconds)
    state: str  # playing | paused
    last_seen: float  # epoch seconds
    fields: dict[str, Any]  # the MediaEvent fields every transition of it carries
    view_offset: int | None = None
    percent: float | None = None


@dataclass
class PassResult:
    """What one history pass or activity poll did."""

    rows: int = 0
    events: int = 0
    stored: int = 0
    duplicate: int = 0
    skipped_in_progress: int = 0
    skipped_grouped: int = 0
    invalid: int = 0
    pages: int = 0


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
        self._rejected_live: set[str] = set()
        self._stop: asyncio.Event | None = None
        self._http: aiohttp.ClientSession | None = None
        self._client: TautulliClient | None = None
        self._data: dict[str, Any] | None = None
        self._cursors: dict[str, HistoryCursor] = {}
        self._open: dict[str, dict[str, OpenSession]] = {}
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
        except TautulliError as exc:
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
            for server, sessions in (data.get("activity") or {}).items():
                self._open[server] = {
                    key: msgspec.convert(value, OpenSession) for key, value in sessions.items()
                }
        return self._data

    async def _save(self) -> None:
        data = self._loaded()
        data.update(
            {
                "version": STATE_VERSION,
                "url": self.url,
                "server_id": self.server_id,
                "history": {s: c.to_json() for s, c in self._cursors.items()},
                "activity": {
                    s: {k: msgspec.to_builtins(v) for k, v in sessions.items()}
                    for s, sessions in self._open.items()
                },
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
            raise TautulliConfigError(
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
        except TautulliCommandError as exc:
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
            rows, filtered = _history_page(data, self.url)
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
        """One ``get_activity`` poll: the transitions since the last one."""
        server_id = await self._server()
        data = await self._api().call("get_activity")
        if isinstance(data, dict) and not data:
            self._activity_unknown()
            return PassResult()
        sessions = data.get("sessions") if isinstance(data, dict) else None
        if not isinstance(sessions, list):
            raise TautulliCommandError(f"Tautulli at {self.url}: get_activity has no sessions")
        if self.health.set_state(None):
            log.info(
                "Tautulli at %s knows its live activity again",
                self.url,
                extra={"source": self.health.name},
            )
        now = receipt_time()
        live: dict[str, dict[str, Any]] = {}
        for session in sessions:
            key = _live_key(session)
            if key is not None:
                live[key] = session
        known = self._open.get(server_id, {})
        opened: dict[str, OpenSession] = {}
        events: list[MediaEvent] = []
        for key, session in known.items():
            if key not in live:
                events.append(await self._stop_event(server_id, session, now))
        new = [live[key] for key in live if key not in known]
        starts = await self._starts(new) if new else {}
        for key, raw in live.items():
            previous = known.get(key)
            if previous is None:
                started = starts.get(key)
                if started is None:
                    log.info("Tautulli %s: start of live session %s not known yet", self.url, key)
                    continue
                session = _open_session(key, raw, started, now)
                try:
                    first = [_transition(EventType.PLAY, server_id, session, raw, at=None)]
                    if as_text(raw.get("state")) == "paused":
                        session.state = "paused"
                        first.append(_transition(EventType.PAUSE, server_id, session, raw, at=now))
                except InvalidEvent as exc:
                    if session.session not in self._rejected_live:
                        self._rejected_live.add(session.session)
                        log.error("Tautulli %s: live session skipped: %s", self.url, exc)
                        self.health.failure(str(exc))
                    continue
                events += first
                opened[key] = session
                continue
            session = msgspec.structs.replace(
                previous,
                view_offset=as_int(raw.get("view_offset")),
                percent=_live_percent(raw),
                last_seen=now.timestamp(),
            )
            state = as_text(raw.get("state"))
            if state == "paused" and previous.state == "playing":
                session.state = "paused"
                events.append(_transition(EventType.PAUSE, server_id, session, raw, at=now))
            elif state == "playing" and previous.state == "paused":
                session.state = "playing"
                events.append(_transition(EventType.RESUME, server_id, session, raw, at=now))
            opened[key] = session
        result = PassResult(rows=len(live), events=len(events))
        if events:
            stats = await self.sink.emit(events)
            result.stored, result.duplicate = stats.stored, stats.duplicate
        self._open[server_id] = opened
        await self._save()
        self.health.success(result.stored)
        return result

    def _activity_unknown(self) -> None:
        """``get_activity`` answered success with ``data: {}``: Tautulli cannot reach Plex
        (``plexpy/webserve.py`` ``get_activity`` when ``get_current_activity`` got nothing).
        Open sessions stay open: whether they went on is not known."""
        detail = (
            "Tautulli answers get_activity without sessions: its Plex server does not answer, "
            "so live sessions are not followed (history still syncs)"
        )
        if self.health.set_state(NO_LIVE_ACTIVITY, detail):
            log.warning(
                "Tautulli at %s: %s",
                self.url,
                detail,
                extra={"source": self.health.name, "state": NO_LIVE_ACTIVITY},
            )
        self.health.success(0)

    async def _starts(self, sessions: list[dict[str, Any]]) -> dict[str, int]:
        """Tautulli's ``started`` of new live sessions, from its in-progress history rows."""
        starts: dict[str, int] = {}
        asked: set[tuple[str, str]] = set()
        for session in sessions:
            query = (as_id(session.get("user_id")), as_id(session.get("rating_key")))
            if query in asked:
                continue
            asked.add(query)
            rows = await self._history_rows(*query, include_activity=True)
            for row in rows:
                if not is_in_progress(row):
                    continue
                key = f"{as_id(row.get('session_key'))}:{as_id(row.get('rating_key'))}"
                started = as_int(row.get("started"))
                if started:
                    starts[key] = started
        return starts

    async def _history_rows(
        self, user_id: str, rating_key: str, *, include_activity: bool
    ) -> list[dict[str, Any]]:
        data = await self._api().call(
            "get_history",
            grouping=0,
            include_activity=1 if include_activity else 0,
            user_id=user_id or None,
            rating_key=rating_key or None,
            order_column="started",
            order_dir="desc",
            start=0,
            length=25,
        )
        rows, _ = _history_page(data, self.url)
        return [row for row in rows if isinstance(row, dict)]

    async def _stop_event(self, server_id: str, session: OpenSession, now: datetime) -> MediaEvent:
        """The stop of a session gone from ``get_activity``, timed by its history row."""
        stopped: datetime | None = None
        raw: dict[str, Any] | None = None
        try:
            rows = await self._history_rows(
                session.fields.get("user_id", ""),
                session.fields.get("rating_key", ""),
                include_activity=False,
            )
        except TautulliCommandError as exc:
            log.warning("cannot time the stop of %s: %s", session.session, exc)
            rows = []
        for row in rows:
            if not is_in_progress(row) and as_int(row.get("started")) == session.started:
                stop_s = as_int(row.get("stopped"))
                if stop_s:
                    stopped, raw = datetime.fromtimestamp(stop_s, UTC), row
                    break
        if stopped is None:
            gap = now.timestamp() - session.last_seen
            if gap <= 2 * self.activity_interval + 5:
                stopped = now
            else:
                stopped = datetime.fromtimestamp(session.last_seen, UTC)
        return _transition(EventType.STOP, server_id, session, raw, at=stopped)


# ---------------------------------------------------------------------------------------
# activity sessions to events


def _live_key(session: Any) -> str | None:
    if not isinstance(session, dict):
        return None
    key, item = as_id(session.get("session_key")), as_id(session.get("rating_key"))
    if not key or not item:
        return None
    return f"{key}:{item}"


def _open_session(key: str, raw: Mapping[str, Any], started: int, now: datetime) -> OpenSession:
    length_ms = as_int(raw.get("duration"))
    fields = {
        "user_id": as_id(raw.get("user_id")),
        "username": as_text(raw.get("username") or raw.get("user")),
        "friendly_name": as_text(raw.get("friendly_name")),
        "user_thumb": as_text(raw.get("user_thumb")),
        "media_type": as_text(raw.get("media_type")),
        "title": as_text(raw.get("title") or raw.get("full_title")),
        "parent_title": as_text(raw.get("parent_title")),
        "grandparent_title": as_text(raw.get("grandparent_title")),
        "rating_key": as_id(raw.get("rating_key")),
        "year": as_int(raw.get("year")) or None,
        "media_duration": length_ms // 1000 if length_ms else None,
        # PMS's librarySectionID / librarySectionTitle, as get_activity flattens them
        "library_id": as_id(raw.get("section_id")),
        "library_name": as_text(raw.get("library_name")),
        "platform": as_text(raw.get("platform")),
        "platform_name": as_text(raw.get("platform_name")),
        "platform_version": as_text(raw.get("platform_version")),
        "player": as_text(raw.get("player")),
        "product": as_text(raw.get("product")),
        "product_version": as_text(raw.get("product_version")),
        "device": as_text(raw.get("device")),
        "machine_id": as_text(raw.get("machine_id")),
        "ip_address": as_text(raw.get("ip_address")),
        "location_type": as_text(raw.get("location")).lower(),
        "transcode_decision": transcode_decision(raw.get("transcode_decision")),
        "video_resolution": as_text(raw.get("video_resolution")),
        "video_codec": as_text(raw.get("video_codec")),
        "video_dynamic_range": as_text(raw.get("video_dynamic_range")),
        "audio_codec": as_text(raw.get("audio_codec")),
        "audio_channels": as_int(raw.get("audio_channels")),
        "stream_bitrate": as_int(raw.get("stream_bitrate")),
        "bandwidth": as_int(raw.get("bandwidth")),
        "secure": as_bool(raw.get("secure")),
        "local": as_bool(raw.get("local")),
        "relayed": as_bool(raw.get("relayed")),
    }
    session_key = key.split(":", 1)[0]
    return OpenSession(
        key=key,
        session=f"{session_key}:{fields['rating_key']}:{started}",
        started=started,
        state="playing",
        last_seen=now.timestamp(),
        fields={k: v for k, v in fields.items() if v not in (None, "")},
        view_offset=as_int(raw.get("view_offset")),
        percent=_live_percent(raw),
    )


def _live_percent(raw: Mapping[str, Any]) -> float | None:
    """The exact share reached (``progress_percent`` is rounded to a whole number)."""
    exact = percent_of(as_int(raw.get("view_offset")), as_int(raw.get("duration")))
    return exact if exact is not None else as_float(raw.get("progress_percent"))


def _transition(
    kind: EventType,
    server_id: str,
    session: OpenSession,
    raw: Mapping[str, Any] | None,
    *,
    at: datetime | None,
) -> MediaEvent:
    """One transition of a live session. A play happens at Tautulli's ``started``; a pause
    or resume is told apart from others of its session by the playhead."""
    started = datetime.fromtimestamp(session.started, UTC)
    occurred = at or started
    identity: tuple[Any, ...] = (session.session, kind.value)
    if kind in (EventType.PAUSE, EventType.RESUME):
        playhead = session.view_offset
        identity += (playhead if playhead is not None else int(occurred.timestamp() * 1000),)
    event = MediaEvent(
        event_id=make_event_id(ACTIVITY_SOURCE, server_id, *identity),
        event_type=kind,
        occurred_at=occurred,
        source=ACTIVITY_SOURCE,
        server_id=server_id,
        session_key=session.session,
        started_at=started,
        stopped_at=occurred if kind is EventType.STOP else None,
        position_ms=session.view_offset,
        percent_complete=session.percent,
        raw_payload=encode_raw(raw) if raw is not None else None,
        **session.fields,
    )
    return event.validate()


def _history_page(data: Any, url: str) -> tuple[list[Any], int | None]:
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise TautulliCommandError(f"Tautulli at {url}: get_history answered no data list")
    return data["data"], as_int(data.get("recordsFiltered"))


__all__ = [
    "ACTIVITY_SOURCE",
    "NO_LIVE_ACTIVITY",
    "HistoryCursor",
    "OnServerInfo",
    "OpenSession",
    "PassResult",
    "TautulliAuthError",
    "TautulliClient",
    "TautulliCommandError",
    "TautulliConfigError",
    "TautulliError",
    "TautulliSync",
    "TautulliUnavailable",
    "id_ranges",
    "ids_from_ranges",
    "state_path_for",
]
