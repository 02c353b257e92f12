"""The fuzz harness: a real ingestor and its real peers, and one oracle per target.

:class:`Harness` starts, for a whole fuzz session:

* a real ``nats-server -js`` on a free loopback port;
* a fake Jellyfin server (:class:`tests.fakes.jellyfin.FakeMediaServer`: real REST and
  WebSocket) whose frames the fuzzer writes;
* the real ingestor as a separate process (``python -m ingestor.cli run``) with the Plex
  and Jellyfin webhooks on, its Jellyfin source on the fake server, its router projecting
  the stream into DuckDB; its log goes to a file that is read for tracebacks;
* a fake Tautulli HTTP server answering whatever body the fuzzer sets, and a real
  :class:`~ingestor.sources.tautulli.sync.TautulliSync` (in this process) reading it, its events
  published to the same stream.

An asyncio loop runs in a background thread, so hypothesis drives plain (sync) functions.

Each target (:class:`PlexWebhookTarget`...) feeds one input through the real component and
checks it at once (no hang: a deadline per input; webhooks: never 5xx, a rejection is a 4xx
with a reason; Tautulli: only its own errors escape), and every ``burst`` inputs checks the
whole: the ingestor process alive, ``/healthz`` answering, no new traceback in its log, and
a valid input sent after the burst projected into DuckDB within a deadline (the stream target
also checks that every message it published is projected, audited or dead-lettered, and that
every unreadable one is in ``MEDIA_EVENTS_DLQ`` with its error). Figures go to a
:class:`Tally` per target.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import nats
import pyarrow as pa
from aiohttp import web

from ingestor.nats.dlq import H_ERROR, H_SEQUENCE
from ingestor.nats.publisher import Publisher
from ingestor.nats.server import EmbeddedServer
from ingestor.nats.streams import DLQ_STREAM
from ingestor.sink import StreamSink
from ingestor.sources.base import MAX_EVENT_BYTES, CircuitBreaker, CircuitOpen
from ingestor.sources.http import UpstreamError
from ingestor.sources.tautulli.sync import TautulliSync
from tests.conftest import INGESTOR, free_port, make_env, subprocess_env
from tests.fakes.jellyfin import FakeMediaServer, movie, notification, session
from tests.fakes.plex import multipart_body, webhook_payload
from tests.fuzz.strategies import Fuzzed, Request, tautulli_envelope

T = TypeVar("T")

REQUEST_DEADLINE = 20.0  # seconds an input may take before it counts as a hang
PROJECTED_DEADLINE = 60.0  # seconds for the valid input after a burst to be projected
TAUTULLI_SERVER_ID = "8f2c1a9d4b7e6f3a0c5d2e1b9a8f7c6d5e4b3a21"


class FuzzFailure(AssertionError):
    """An oracle failed (a crash, a hang, a 5xx, a bad message not dead-lettered...)."""


@dataclass
class Tally:
    """What one target saw."""

    target: str
    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    accepted: int = 0  # 2xx / parsed / projected
    rejected_4xx: int = 0  # webhooks: 4xx with a reason; Tautulli: its own error
    server_errors: int = 0  # 5xx: never expected
    dlq: int = 0
    bursts: int = 0
    bursts_projected: int = 0
    mutations: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        projected = "yes" if self.bursts and self.bursts == self.bursts_projected else "NO"
        return (
            f"{self.target:<18} inputs {self.inputs:>6,}  crashes {self.crashes}  "
            f"hangs {self.hangs}  5xx {self.server_errors}  4xx {self.rejected_4xx:>5,}  "
            f"accepted {self.accepted:>5,}  DLQ {self.dlq:>5,}  valid-after-burst projected "
            f"{projected} ({self.bursts_projected}/{self.bursts})"
        )


class LoopThread:
    """An asyncio loop in a daemon thread; :meth:`run` waits for a coroutine from sync code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class FuzzTautulli:
    """Answers ``/api/v2``: valid ``get_server_info`` and ``get_users``, and for
    ``get_history`` / ``get_activity`` whatever :attr:`answers` holds."""

    def __init__(self) -> None:
        self.port = free_port()
        self.api_key = "3234af6a723eabfeeeb0cf7c28d7d1c2"
        self.answers: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v2", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        cmd = request.query.get("cmd", "")
        if cmd in self.answers:
            status, body, headers = self.answers[cmd]
            return web.Response(status=status, body=body, headers=headers)
        if cmd == "get_server_info":
            data: Any = {"pms_identifier": TAUTULLI_SERVER_ID, "pms_name": "fake"}
        elif cmd == "get_users":
            data = [{"user_id": 8312457, "username": "owner", "is_admin": 1, "is_active": 1}]
        elif cmd == "get_history":
            data = {"recordsFiltered": 0, "recordsTotal": 0, "draw": 1, "data": []}
        elif cmd == "get_activity":
            data = {"stream_count": "0", "sessions": []}
        else:
            return web.json_response(
                {"response": {"result": "error", "message": "Unknown command", "data": {}}},
                status=400,
            )
        return web.json_response(tautulli_envelope(data))


class Harness:
    def __init__(self, workdir: Path, *, burst: int = 50, strict: bool = True) -> None:
        self.workdir = workdir
        self.burst = burst
        self.strict = strict  # raise on the first failure (pytest); else record and go on
        self.loop = LoopThread()
        self.nats = EmbeddedServer("127.0.0.1", free_port(), workdir / "nats-store")
        self.jellyfin = FakeMediaServer("jellyfin")
        self.tautulli = FuzzTautulli()
        self.http_port = free_port()
        self.log_path = workdir / "ingestor.log"
        self._log_offset = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.nc: Any = None
        self.js: Any = None
        self.sync: TautulliSync | None = None
        self.tallies: dict[str, Tally] = {}
        self._sentinels = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Harness:
        self.nats.start()
        self.loop.run(self.jellyfin.start(), 30)
        self.loop.run(self.tautulli.start(), 30)
        env = make_env(
            self.workdir / "data",
            self.nats.url,
            NATS_EMBEDDED="false",
            HTTP_PORT=str(self.http_port),
            PLEX_WEBHOOK_ENABLED="true",
            JELLYFIN_WEBHOOK_ENABLED="true",
            JELLYFIN_URL=self.jellyfin.url,
            JELLYFIN_API_KEY=self.jellyfin.api_key,
            NATS_BATCH_SIZE="200",
        )
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*INGESTOR, "run"],
            env=subprocess_env(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        self.loop.run(self._connect(), 120)
        return self

    async def _connect(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_DEADLINE))
        deadline = time.monotonic() + 90
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the ingestor exited: {self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self.http.get(self.url("/healthz")) as response:
                    if response.status == 200 and self.jellyfin.subscribed:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ingestor did not come up: {self.log_tail()}")
            await asyncio.sleep(0.1)
        self.nc = await nats.connect(self.nats.url)
        self.js = self.nc.jetstream()
        self.sync = TautulliSync(
            self.tautulli.url,
            self.tautulli.api_key,
            StreamSink(Publisher(self.nc)),
            self.workdir / "tautulli-state.json",
            lookback=None,
            attempts=1,
            breaker=CircuitBreaker(threshold=5, reset_timeout=0.0),
            request_timeout=REQUEST_DEADLINE,
        )
        await self.sync.__aenter__()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self._disconnect(), 30)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        with contextlib.suppress(Exception):
            self.loop.run(self.jellyfin.close(), 10)
        with contextlib.suppress(Exception):
            self.loop.run(self.tautulli.close(), 10)
        self.loop.close()
        self.nats.stop()
        self._log.close()

    async def _disconnect(self) -> None:
        if self.sync is not None:
            await self.sync.__aexit__(None, None, None)
        if self.nc is not None:
            await self.nc.close()
        if self.http is not None:
            await self.http.close()

    # ------------------------------------------------------------------ helpers

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def tally(self, target: str) -> Tally:
        return self.tallies.setdefault(target, Tally(target))

    def fail(self, tally: Tally, what: str) -> None:
        tally.failures.append(what)
        if self.strict:
            raise FuzzFailure(f"{tally.target}: {what}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def new_tracebacks(self) -> list[str]:
        """Tracebacks (and aiohttp's 'Error handling request') logged since the last call."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            text = f.read().decode(errors="replace")
        self._log_offset += len(text.encode(errors="replace"))
        found = []
        for marker in ("Traceback (most recent call last)", "Error handling request"):
            at = text.find(marker)
            while at != -1:
                start = text.rfind("\n", 0, max(0, at - 1)) + 1
                found.append(text[start : at + 1500])
                at = text.find(marker, at + 1)
        return found

    async def query(self, sql: str) -> tuple[list[dict[str, Any]], int]:
        assert self.http is not None
        async with self.http.post(self.url("/query"), data=sql.encode()) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"/query answered {response.status}: {body[:300]!r}")
            seq = int(response.headers.get("X-Checkpoint-Seq", "0"))
        table = pa.ipc.open_stream(body).read_all()
        return table.to_pylist(), seq

    async def projected(self, token: str, deadline: float = PROJECTED_DEADLINE) -> bool:
        """Whether an event carrying ``token`` reaches ``media_events`` before ``deadline``."""
        sql = f"SELECT count(*) AS n FROM media_events WHERE strpos(payload, '{token}') > 0"
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            with contextlib.suppress(aiohttp.ClientError, RuntimeError, TimeoutError):
                rows, _ = await self.query(sql)
                if rows[0]["n"] > 0:
                    return True
            await asyncio.sleep(0.1)
        return False

    async def healthy(self) -> str | None:
        """None when the ingestor runs and answers ``/healthz``, else what is wrong."""
        assert self.process is not None and self.http is not None
        if self.process.poll() is not None:
            return f"the ingestor exited with {self.process.returncode}"
        try:
            async with self.http.get(self.url("/healthz")) as response:
                if response.status != 200:
                    return f"/healthz answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"/healthz did not answer: {exc!r}"
        return None

    def token(self, target: str) -> str:
        self._sentinels += 1
        return f"sentinel{target.replace('-', '')}{self._sentinels}x{uuid.uuid4().hex[:8]}"

    def end_burst(self, tally: Tally, send_valid: Any) -> None:
        """The checks after a burst: a valid input projected, the ingestor healthy and
        without a new traceback."""
        tally.bursts += 1
        token = self.token(tally.target)
        try:
            ok = self.loop.run(self._valid_after(send_valid, token), PROJECTED_DEADLINE + 30)
        except TimeoutError:
            ok = False
        if ok:
            tally.bursts_projected += 1
        problem = self.loop.run(self.healthy(), 30)
        tracebacks = self.new_tracebacks()
        if tracebacks:
            tally.crashes += len(tracebacks)
            self.fail(tally, "traceback in the ingestor's log:\n" + "\n---\n".join(tracebacks))
        if problem is not None:
            tally.crashes += 1
            self.fail(tally, f"{problem}\n{self.log_tail()}")
        if not ok:
            tally.hangs += 1
            self.fail(tally, f"the valid input {token} after the burst was not projected")

    async def _valid_after(self, send_valid: Any, token: str) -> bool:
        await send_valid(token)
        return await self.projected(token)


# ---------------------------------------------------------------------------------------
# the targets


class Target(abc.ABC):
    name = "target"

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.tally = harness.tally(self.name)
        self._in_burst = 0

    def feed(self, item: Any) -> None:
        self.tally.inputs += 1
        mutation = getattr(item, "mutation", None) or getattr(item.fuzzed, "mutation", "?")
        envelope = getattr(item, "envelope", "none")
        key = mutation if envelope == "none" else f"{mutation}+{envelope}"
        self.tally.mutations[key] = self.tally.mutations.get(key, 0) + 1
        self._feed(item)
        self._in_burst += 1
        if self._in_burst >= self.h.burst:
            self.finish_burst()

    def finish_burst(self) -> None:
        if self._in_burst:
            self._in_burst = 0
            self.h.end_burst(self.tally, self.send_valid)

    @abc.abstractmethod
    def _feed(self, item: Any) -> None:
        """Send one input to the component under test and record what it did."""

    @abc.abstractmethod
    async def send_valid(self, token: str) -> None:
        """Send one valid input marked with ``token`` (it must then be projected)."""


class WebhookTarget(Target):
    path = "/"

    def _feed(self, item: Request) -> None:
        try:
            status, text = self.h.loop.run(self._post(item), REQUEST_DEADLINE + 5)
        except TimeoutError:
            self.tally.hangs += 1
            self.h.fail(self.tally, f"no answer within {REQUEST_DEADLINE}s to {item!r}")
            return
        except aiohttp.ClientError as exc:
            self.tally.crashes += 1
            self.h.fail(self.tally, f"connection failed ({exc!r}) for {item!r}")
            return
        if status >= 500:
            self.tally.server_errors += 1
            self.h.fail(self.tally, f"HTTP {status} {text[:500]!r} for {item!r}")
        elif 400 <= status < 500:
            self.tally.rejected_4xx += 1
            if not text.strip():
                self.h.fail(self.tally, f"HTTP {status} without a reason for {item!r}")
        elif 200 <= status < 300:
            self.tally.accepted += 1
            if item.broken:
                self.h.fail(self.tally, f"HTTP {status} {text[:200]!r} for broken {item!r}")
        else:
            self.h.fail(self.tally, f"unexpected HTTP {status} for {item!r}")
        if item.fuzzed.mutation == "none" and item.envelope == "none" and status != 200:
            self.h.fail(self.tally, f"a valid input got HTTP {status} {text[:300]!r}: {item!r}")
        if 200 <= status < 300:
            self._check_accepted(item, text)

    def _check_accepted(self, item: Request, text: str) -> None:
        """What a target demands of an input it answered 2xx, beyond the status."""

    async def _post(self, item: Request) -> tuple[int, str]:
        assert self.h.http is not None
        headers = {"Content-Type": item.content_type} if item.content_type else {}
        # aiohttp would set a Content-Type of its own for bytes: skip it explicitly
        skip = [] if item.content_type else ["Content-Type"]
        async with asyncio.timeout(REQUEST_DEADLINE):
            async with self.h.http.post(
                self.h.url(self.path), data=item.body, headers=headers, skip_auto_headers=skip
            ) as response:
                return response.status, await response.text(errors="replace")


class PlexWebhookTarget(WebhookTarget):
    name = "plex-webhook"
    path = "/webhooks/plex"

    async def send_valid(self, token: str) -> None:
        doc = webhook_payload("media.play", rating_key=token, player_uuid=token)
        doc["Metadata"]["title"] = token
        body, content_type = multipart_body(doc)
        assert self.h.http is not None
        async with self.h.http.post(
            self.h.url(self.path), data=body, headers={"Content-Type": content_type}
        ) as response:
            text = await response.text()
            if response.status != 200:
                raise FuzzFailure(f"the valid play {token} got {response.status}: {text}")


class JellyfinWebhookTarget(WebhookTarget):
    name = "jellyfin-webhook"
    path = "/webhooks/jellyfin"

    def _check_accepted(self, item: Request, text: str) -> None:
        # every event of a playback notification carries its text (raw_payload), so a body
        # over MAX_EVENT_BYTES can never be stored: a 413, not a 200, whatever the state
        # (only a notification that is not about playback is answered 200, "ignored")
        if len(item.body) > MAX_EVENT_BYTES and '"ignored"' not in text[:20]:
            self.h.fail(
                self.tally,
                f"a body of {len(item.body):,} bytes, over the event limit, got 2xx "
                f"{text[:200]!r}: {item!r}",
            )

    async def send_valid(self, token: str) -> None:
        body = notification(
            "PlaybackStart",
            server_id="f" * 32,
            session_id=uuid.uuid4().hex,
            user_id=uuid.uuid4().hex,
            item_id=uuid.uuid4().hex,
            name=token,
        )
        assert self.h.http is not None
        async with self.h.http.post(
            self.h.url(self.path), data=json.dumps(body), headers={"Content-Type": "text/plain"}
        ) as response:
            text = await response.text()
            if response.status != 200:
                raise FuzzFailure(f"the valid start {token} got {response.status}: {text}")


class SocketTarget(Target):
    """Frames written by the fake Jellyfin server to the ingestor's WebSocket client."""

    name = "jellyfin-socket"

    def _feed(self, item: Fuzzed) -> None:
        try:
            sent = self.h.loop.run(self._send(item.data), REQUEST_DEADLINE)
        except TimeoutError:
            self.tally.hangs += 1
            self.h.fail(self.tally, f"the frame could not be sent within {REQUEST_DEADLINE}s")
            return
        if sent:
            self.tally.accepted += 1

    async def _send(self, data: bytes) -> int:
        server = self.h.jellyfin
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None  # a text frame cannot carry it: it goes as a binary frame
        targets = server.open_connections
        for connection in targets:
            with contextlib.suppress(ConnectionError, RuntimeError):
                if text is None:
                    await connection.ws.send_bytes(data)
                else:
                    await connection.ws.send_str(text)
        return len(targets)

    async def send_valid(self, token: str) -> None:
        server = self.h.jellyfin
        entry = session(
            server_id=server.server_id,
            session_id=uuid.uuid4().hex,
            user_id=uuid.uuid4().hex,
            item=movie(item_id=uuid.uuid4().hex, name=token),
        )
        until = time.monotonic() + PROJECTED_DEADLINE
        while time.monotonic() < until:  # after a dropped socket, wait for the reconnect
            if await server.push([entry]) >= 1:
                return
            await asyncio.sleep(0.2)
        raise FuzzFailure("no subscribed socket to push the valid session to")


class TautulliTarget(Target):
    """Mutated ``get_history`` / ``get_activity`` answers read by the real TautulliSync."""

    name = "tautulli-client"

    def __init__(self, harness: Harness) -> None:
        super().__init__(harness)
        self._row_id = 2_000_000_000

    def feed_answer(self, cmd: str, item: Fuzzed, status: int, retry_after: str | None) -> None:
        self._cmd, self._status, self._retry_after = cmd, status, retry_after
        self.feed(item)

    def _feed(self, item: Fuzzed) -> None:
        headers = {"Retry-After": self._retry_after} if self._retry_after is not None else {}
        self.h.tautulli.answers = {self._cmd: (self._status, item.data, headers)}
        try:
            outcome = self.h.loop.run(self._call(), REQUEST_DEADLINE + 5)
        except TimeoutError:
            self.tally.hangs += 1
            self.h.fail(self.tally, f"{self._cmd} not parsed within {REQUEST_DEADLINE}s: {item!r}")
            return
        finally:
            self.h.tautulli.answers = {}
        if outcome is None:
            self.tally.accepted += 1
            if item.broken and self._status == 200:
                self.h.fail(self.tally, f"{self._cmd} accepted a broken answer: {item!r}")
        elif isinstance(outcome, UpstreamError | CircuitOpen):
            self.tally.rejected_4xx += 1
            if not str(outcome).strip():
                self.h.fail(self.tally, f"{type(outcome).__name__} without a reason: {item!r}")
        else:
            self.tally.crashes += 1
            self.h.fail(
                self.tally,
                f"{self._cmd} raised {type(outcome).__name__}: {outcome} for "
                f"HTTP {self._status} {item!r}",
            )

    async def _call(self) -> BaseException | None:
        sync = self.h.sync
        assert sync is not None
        sync.breaker.success()  # every input reaches the parser, whatever the last did
        try:
            async with asyncio.timeout(REQUEST_DEADLINE):
                if self._cmd == "get_history":
                    await sync.sync_history()
                else:
                    await sync.poll_activity()
        except TimeoutError:
            raise
        except Exception as exc:
            return exc
        return None

    async def send_valid(self, token: str) -> None:
        self._row_id += 1
        started = int(datetime.now(UTC).timestamp()) - 3600
        row = {
            "reference_id": self._row_id,
            "row_id": self._row_id,
            "id": self._row_id,
            "date": started,
            "started": started,
            "stopped": started + 600,
            "duration": 600,
            "play_duration": 600,
            "paused_counter": 0,
            "user_id": 8312457,
            "user": "alice",
            "friendly_name": "Alice",
            "platform": "Roku",
            "product": "Plex for Roku",
            "player": "Living Room",
            "ip_address": "192.168.1.20",
            "live": 0,
            "machine_id": token,
            "location": "lan",
            "secure": 1,
            "relayed": 0,
            "media_type": "movie",
            "rating_key": self._row_id,
            "parent_rating_key": "",
            "grandparent_rating_key": "",
            "full_title": token,
            "title": token,
            "year": 1995,
            "transcode_decision": "direct play",
            "percent_complete": 100,
            "watched_status": 1,
            "group_count": 1,
            "group_ids": str(self._row_id),
            "state": None,
            "session_key": None,
        }
        body = tautulli_envelope(
            {"recordsFiltered": 1, "recordsTotal": 1, "draw": 1, "data": [row]}
        )
        self.h.tautulli.answers = {"get_history": (200, json.dumps(body).encode(), {})}
        try:
            assert self.h.sync is not None
            self.h.sync.breaker.success()
            await self.h.sync.sync_history()
        finally:
            self.h.tautulli.answers = {}


class StreamTarget(Target):
    """Raw messages published to ``MEDIA_EVENTS``, consumed by the ingestor's router."""

    name = "stream"

    def __init__(self, harness: Harness) -> None:
        super().__init__(harness)
        self.published: dict[int, Fuzzed] = {}
        self._dlq_next = 1

    def feed_message(self, subject: str, item: Fuzzed) -> None:
        self._subject = subject
        self.feed(item)

    def _feed(self, item: Fuzzed) -> None:
        data = item.data
        limit = self.h.nc.max_payload - 1024
        if len(data) > limit:  # NATS refuses it before the stream sees it: cut it
            item = Fuzzed(data[:limit], item.mutation + "+cut", True)
        try:
            ack = self.h.loop.run(self.h.js.publish(self._subject, item.data), REQUEST_DEADLINE)
        except TimeoutError:
            self.tally.hangs += 1
            self.h.fail(self.tally, "publish not acknowledged")
            return
        self.published[ack.seq] = item

    def finish_burst(self) -> None:
        if not self._in_burst:
            return
        super().finish_burst()
        self.h.loop.run(self._account(), 120)

    async def send_valid(self, token: str) -> None:
        doc = {
            "schema_version": 1,
            "event_id": uuid.uuid4().hex,
            "event_type": "play",
            "occurred_at": datetime.now(UTC).isoformat(),
            "source": "fuzz",
            "server_id": "fuzz-server",
            "session_key": token,
            "user_id": "1",
            "media_type": "movie",
            "title": token,
        }
        await self.h.js.publish("playback.fuzz.movie", json.dumps(doc).encode())

    async def _account(self) -> None:
        """Every published message is projected, audited or dead-lettered; every broken one
        is dead-lettered with its error."""
        if not self.published:
            return
        lo, hi = min(self.published), max(self.published)
        sql = (
            f"SELECT seq FROM media_events WHERE seq BETWEEN {lo} AND {hi} UNION "
            f"SELECT seq FROM dedupe_audit_log WHERE seq BETWEEN {lo} AND {hi} UNION "
            f"SELECT seq FROM detection_alerts WHERE seq BETWEEN {lo} AND {hi}"
        )
        rows, checkpoint = await self.h.query(sql)
        if checkpoint < hi:
            self.h.fail(self.tally, f"checkpoint {checkpoint} behind the burst's last seq {hi}")
        projected = {row["seq"] for row in rows}
        letters = await self._dead_letters()
        for seq, item in sorted(self.published.items()):
            if seq in letters:
                self.tally.dlq += 1
                if not letters[seq]:
                    self.h.fail(self.tally, f"dead letter of seq {seq} without an error")
            elif seq in projected:
                self.tally.accepted += 1
                if item.broken:
                    self.h.fail(self.tally, f"broken message seq {seq} was projected: {item!r}")
            else:
                self.h.fail(self.tally, f"seq {seq} neither projected nor dead-lettered: {item!r}")
        self.published.clear()

    async def _dead_letters(self) -> dict[int, str]:
        """Original sequence -> error of the dead letters stored since the last call."""
        info = await self.h.js.stream_info(DLQ_STREAM)
        found: dict[int, str] = {}
        for dlq_seq in range(max(self._dlq_next, info.state.first_seq), info.state.last_seq + 1):
            msg = await self.h.js.get_msg(DLQ_STREAM, dlq_seq)
            headers = msg.headers or {}
            found[int(headers.get(H_SEQUENCE, "0"))] = headers.get(H_ERROR, "")
        self._dlq_next = info.state.last_seq + 1
        return found


def examples(default: int) -> int:
    """Examples per target: ``FUZZ_EXAMPLES`` when set, else ``default``."""
    return int(os.environ.get("FUZZ_EXAMPLES", default))
