"""Jellyfin and Emby: the WebSocket client.

:class:`MediaServerSocket` (one class, ``flavour`` ``"jellyfin"`` or ``"emby"``) follows a
server's sessions the way the official clients do: it opens ``/socket`` (Jellyfin) or
``/embywebsocket`` (Emby) with ``?api_key=...&deviceId=...`` (and the token in the
``Authorization: MediaBrowser Token="..."`` and ``X-Emby-Token`` headers, which newer
Jellyfin servers require), subscribes with ``{"MessageType":"SessionsStart","Data":"0,1500"}``
and turns every ``Sessions`` push into transitions through the session state machine
(:mod:`ingestor.sources.jellyfin.session_machine`).

On each connect it first asks ``GET /System/Info`` (Emby: ``/emby/System/Info``) for the
server id (a rejected key stops here with "JELLYFIN_API_KEY rejected by <url>"), then
``GET /Sessions`` for the current sessions, so playbacks that ended while it was away are
stopped and those still running are recognised (the snapshot is read *before* subscribing,
so no push processed after it is older than it). It sends ``KeepAlive`` every
``keepalive_interval`` seconds, and at once when the server sends ``ForceKeepAlive`` (then at
least every half of the server's timeout); it gives up on a socket silent for
``read_timeout`` seconds, and reconnects with :class:`Backoff` (1 s doubling to 32 s; reset
once the new socket delivers a message). Connect failures feed a :class:`CircuitBreaker`, so
a dead server is not hammered.

Its REST calls go through the shared client (:mod:`ingestor.sources.http`); the socket keeps
aiohttp's ``ws_connect`` but says its failures in the same words, and one connect (the two
calls and the upgrade) is one attempt of the shared
:class:`~ingestor.sources.http.RetryPolicy`. What a ``Sessions`` entry says is read in
:mod:`ingestor.sources.jellyfin.mapping`; the playbacks are the shared
:class:`~ingestor.sources.jellyfin.tracker.PlaybackTracker`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from ingestor.sink import Sink
from ingestor.sources.base import (
    Backoff,
    CircuitBreaker,
    CircuitOpen,
    SourceHealth,
    receipt_time,
)
from ingestor.sources.http import (
    CredentialsRefused,
    RetryPolicy,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamError,
    UpstreamUnavailable,
    describe,
)
from ingestor.sources.jellyfin.mapping import observe_sessions
from ingestor.sources.jellyfin.session_machine import DEFAULT_PROGRESS_INTERVAL
from ingestor.sources.jellyfin.tracker import PlaybackTracker

log = logging.getLogger(__name__)

FLAVOURS = ("jellyfin", "emby")
SOCKET_PATHS = {"jellyfin": "socket", "emby": "embywebsocket"}
# Emby's clients address the REST API under /emby (its socket stays at /embywebsocket).
API_PREFIXES = {"jellyfin": "", "emby": "emby/"}
SESSIONS_START = {"MessageType": "SessionsStart", "Data": "0,1500"}
KEEPALIVE = {"MessageType": "KeepAlive"}
CLIENT_NAME = "mediaevents"
CLIENT_VERSION = "0.1.0"


# ---------------------------------------------------------------------------------------
# the WebSocket client


class MediaServerSocket:
    """Follows one Jellyfin or Emby server's sessions over its WebSocket (a ``Source``).

    Give either ``state_path`` and ``sink`` (the client builds its own tracker) or a shared
    ``tracker`` (whose source must be ``flavour``). ``name`` is the configured source name
    (``jellyfin``, ``jellyfin_2``, ``emby``...), used in health and in the name of the
    variable an error points at.
    """

    def __init__(
        self,
        flavour: str,
        url: str,
        api_key: str,
        state_path: Path | str | None = None,
        sink: Sink | None = None,
        *,
        tracker: PlaybackTracker | None = None,
        name: str | None = None,
        keepalive_interval: float = 30.0,
        read_timeout: float = 120.0,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        progress_interval: float | None = DEFAULT_PROGRESS_INTERVAL,
        backoff: Backoff | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], datetime] = receipt_time,
        device_id: str | None = None,
    ) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
        if tracker is None:
            if state_path is None or sink is None:
                raise ValueError("give a tracker, or a state_path and a sink")
            tracker = PlaybackTracker(
                flavour, state_path, sink, progress_interval=progress_interval
            )
        elif tracker.source != flavour:
            raise ValueError(f"a {flavour} socket needs a {flavour} tracker, not {tracker.source}")
        self.flavour = flavour
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.tracker = tracker
        self.name = name or flavour
        self.keepalive_interval = keepalive_interval
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.backoff = backoff or Backoff(1.0, 32.0)
        self.breaker = breaker or CircuitBreaker(threshold=5, reset_timeout=60.0)
        self.policy = RetryPolicy(self.breaker)  # one connect is one attempt
        self._client: UpstreamClient | None = None
        self.clock = clock
        self.device_id = device_id or _device_id(self.url)
        self.health = SourceHealth(name=self.name, kind=flavour)
        self.server_id = ""
        self.connections = 0  # sockets opened
        self.snapshots = 0  # Sessions snapshots applied (the REST one at connect included)

    # ------------------------------------------------------------------ identity

    @property
    def key_variable(self) -> str:
        """The variable holding this server's API key (``JELLYFIN_API_KEY``, ``EMBY_API_KEY_2``)."""
        match = re.fullmatch(rf"{self.flavour}_(\d+)", self.name)
        suffix = f"_{match.group(1)}" if match else ""
        return f"{self.flavour.upper()}_API_KEY{suffix}"

    @property
    def socket_url(self) -> URL:
        base = URL(self.url)
        scheme = "wss" if base.scheme == "https" else "ws"
        path = base.path.rstrip("/") + "/" + SOCKET_PATHS[self.flavour]
        return (
            base.with_scheme(scheme)
            .with_path(path)
            .with_query(api_key=self.api_key, deviceId=self.device_id)
        )

    @property
    def headers(self) -> dict[str, str]:
        authorization = (
            f'MediaBrowser Client="{CLIENT_NAME}", Device="ingestor", '
            f'DeviceId="{self.device_id}", Version="{CLIENT_VERSION}", Token="{self.api_key}"'
        )
        return {
            "Authorization": authorization,
            "X-Emby-Token": self.api_key,
            "Accept": "application/json",
        }

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the server until ``stop`` is set; upstream trouble goes to ``health``."""
        timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await self._flush_outbox()
                while not stop.is_set():
                    await self._attempt(http, stopped)
                    if stop.is_set() or await self.backoff.sleep(stop):
                        break
            finally:
                stopped.cancel()
                with contextlib.suppress(Exception):
                    await self.tracker.save()

    async def _attempt(self, http: aiohttp.ClientSession, stopped: asyncio.Future[Any]) -> None:
        try:
            ws = await self.policy.call(lambda: self._connect(http))
        except CircuitOpen as exc:
            self._failed(f"{self.url}: {exc}")
            return
        except CredentialsRefused as exc:  # the policy counted it, as every upstream error
            self._failed(str(exc), level=logging.ERROR)
            return
        except UpstreamError as exc:
            self._failed(f"cannot connect to {self.url}: {exc}")
            return
        except Exception as exc:  # a defect, not upstream trouble: log it, keep the source up
            self.breaker.failure()
            log.exception("%s: connecting to %s failed", self.health.name, self.url)
            self._failed(f"cannot connect to {self.url}: {describe(exc)}")
            return
        self.connections += 1
        try:
            await self._follow(ws, stopped)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._failed(f"connection to {self.url} lost: {describe(exc)}; reconnecting")
        except Exception as exc:
            log.exception("%s: reading %s failed", self.health.name, self.url)
            self._failed(f"connection to {self.url} abandoned: {describe(exc)}; reconnecting")
        finally:
            await ws.close()

    async def _connect(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        rest = self._upstream(http)
        prefix = "/" + API_PREFIXES[self.flavour]
        info = await rest.get_json(prefix + "System/Info")
        server_id = info.get("Id") if isinstance(info, dict) else None
        if not isinstance(server_id, str) or not server_id.strip():
            raise UpstreamBadResponse(f"{self.url}: System/Info has no server Id")
        self._set_server(server_id.strip())
        sessions = await rest.get_json(prefix + "Sessions")
        if not isinstance(sessions, list):
            raise UpstreamBadResponse(f"{self.url}: Sessions did not answer a list of sessions")
        try:
            async with asyncio.timeout(self.request_timeout):  # the upgrade answer, too
                ws = await http.ws_connect(
                    self.socket_url,
                    headers=self.headers,
                    autoping=True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise rest.refused(exc.status) from None
            raise UpstreamUnavailable(describe(exc), status=exc.status) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamUnavailable(describe(exc)) from None
        try:
            await ws.send_json(SESSIONS_START)
            await self._apply_sessions(sessions)
        except BaseException:
            await ws.close()
            raise
        log.info(
            "%s connected: server_id=%s url=%s",
            self.flavour,
            self.server_id,
            self.socket_url.with_query(None),
        )
        return ws

    def _upstream(self, http: aiohttp.ClientSession) -> UpstreamClient:
        """The shared client for the REST calls over ``http`` (one per session)."""
        if self._client is None or self._client.session is not http:
            self._client = UpstreamClient(
                self.url,
                http,
                name=self.flavour,
                credentials=self.key_variable,
                headers=self.headers,
                timeout=self.request_timeout,
            )
        return self._client

    async def _follow(
        self, ws: aiohttp.ClientWebSocketResponse, stopped: asyncio.Future[Any]
    ) -> None:
        """Read frames until the socket closes, goes silent, or ``stop`` is set."""
        timer = _KeepAliveTimer(self.keepalive_interval)
        keepalive = asyncio.create_task(self._keep_alive(ws, timer))
        first = True
        try:
            while True:
                receive = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait(
                    {receive, stopped},
                    timeout=self.read_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if receive not in done:
                    receive.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await receive
                    if stopped.done():
                        return
                    raise TimeoutError(f"no message in {self.read_timeout:g}s")
                message = receive.result()
                if message.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    code = ws.close_code
                    self._failed(
                        f"{self.url} closed the connection (code {code}); reconnecting",
                        level=logging.WARNING,
                    )
                    return
                if first:
                    self.backoff.reset()  # the connection works: the next drop retries soon
                    first = False
                if message.type is aiohttp.WSMsgType.TEXT:
                    await self._on_text(ws, message.data, timer)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _keep_alive(
        self, ws: aiohttp.ClientWebSocketResponse, timer: _KeepAliveTimer
    ) -> None:
        while not ws.closed:
            timer.restarted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(timer.restarted.wait(), timer.interval)
            if timer.restarted.is_set():
                continue  # a KeepAlive was just sent: count the interval from it
            if ws.closed:
                return
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await ws.send_json(KEEPALIVE)

    async def _on_text(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        text: str,
        timer: _KeepAliveTimer,
    ) -> None:
        try:
            message = json.loads(text)
        except RecursionError:
            self._failed(f"{self.url} sent a frame nested too deeply to read; skipped")
            return
        except ValueError as exc:  # JSONDecodeError, or an integer past 4,300 digits
            self._failed(f"{self.url} sent a frame that is not JSON ({exc}); skipped")
            return
        if not isinstance(message, dict):
            self._failed(f"{self.url} sent a JSON {type(message).__name__} frame; skipped")
            return
        kind = message.get("MessageType")
        if kind == "Sessions":
            data = message.get("Data")
            if not isinstance(data, list):
                self._failed(f"{self.url} sent a Sessions frame without a list of sessions")
                return
            await self._apply_sessions(data)
        elif kind == "ForceKeepAlive":
            timeout = message.get("Data")
            if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
                timer.interval = min(self.keepalive_interval, timeout / 2)
            await ws.send_json(KEEPALIVE)
            timer.restarted.set()
        elif kind in ("ServerShuttingDown", "ServerRestarting"):
            log.info("%s %s: %s", self.flavour, self.server_id, kind)

    async def _apply_sessions(self, entries: list[Any]) -> None:
        now = self.clock()
        playing, unknown, problems = observe_sessions(entries)
        for problem in problems:
            self._failed(f"{self.url}: unreadable session skipped: {problem}")
        refused: dict[str, str] = {}
        try:
            emitted = await self.tracker.snapshot(
                self.server_id, playing, now, unknown=unknown, refused=refused
            )
        except Exception as exc:  # the sink is down: the events wait in the outbox
            self._refused(refused)
            self._failed(
                f"{self.flavour} events not stored yet ({describe(exc)}); "
                f"{self.tracker.pending} kept for the next attempt",
                level=logging.ERROR,
            )
            return
        self._refused(refused)
        self.snapshots += 1
        self.health.success(emitted)

    async def _flush_outbox(self) -> None:
        try:
            emitted = await self.tracker.flush()
        except Exception as exc:
            self._failed(f"{self.flavour} outbox not stored yet: {describe(exc)}")
            return
        if emitted:
            self.health.success(emitted)

    # ------------------------------------------------------------------ health

    def _set_server(self, server_id: str) -> None:
        self.server_id = server_id
        self.health.server_id = server_id
        self.health.name = f"{self.name}:{server_id}"

    def _refused(self, refused: dict[str, str]) -> None:
        """Sessions whose events could not be stored: no one to answer, so log and health."""
        for session_id, reason in refused.items():
            self._failed(f"{self.url}: session {session_id} skipped, kept as it was: {reason}")

    def _failed(self, error: str, *, level: int = logging.WARNING) -> None:
        if self.api_key:  # aiohttp errors quote the socket URL, whose query holds the key
            error = error.replace(self.api_key, "***")
        self.health.failure(error)
        log.log(level, "%s: %s", self.health.name, error)


class _KeepAliveTimer:
    """When the next KeepAlive is due on one connection."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.restarted = asyncio.Event()  # set when a KeepAlive was sent out of turn


def _device_id(url: str) -> str:
    """A stable device id for this ingestor and server, so the server sees one device."""
    return "mediaevents-" + hashlib.blake2b(url.encode(), digest_size=8).hexdigest()


__all__ = ["FLAVOURS", "MediaServerSocket"]
