"""The one upstream client and policy (ingestor/sources/http.py): each failure in its words,
over real HTTP on loopback, and what the policy does with it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ingestor.sources.base import Backoff, CircuitBreaker, CircuitOpen
from ingestor.sources.http import (
    CredentialsRefused,
    RetryPolicy,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamMisconfigured,
    UpstreamUnavailable,
)
from tests.conftest import free_port


class Answers:
    """A loopback server answering ``/x`` with the next queued (status, body, headers)."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, bytes, dict[str, str]]] = []
        self.seen: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        status, body, headers = self.queue.pop(0) if self.queue else (200, b"{}", {})
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Answers, UpstreamClient]]:
    answers = Answers()
    app = web.Application()
    app.router.add_get("/x", answers.handle)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        url = str(server.make_url("")).rstrip("/")
        client = UpstreamClient(
            url, http, name="Plex", credentials="PLEX_TOKEN", headers={"X-Plex-Token": "t"}
        )
        yield answers, client


async def test_each_answer_is_said_in_the_shared_vocabulary(
    upstream: tuple[Answers, UpstreamClient],
) -> None:
    answers, client = upstream
    answers.queue = [
        (401, b"", {}),
        (503, b"busy", {"Retry-After": "7"}),
        (404, b"", {}),
        (200, b"<html>", {}),
        (200, b'{"ok": 1}', {}),
    ]
    with pytest.raises(CredentialsRefused) as refused:
        await client.get_json("/x")
    assert str(refused.value) == f"PLEX_TOKEN rejected by {client.url} (HTTP 401)"
    assert refused.value.status == 401
    with pytest.raises(UpstreamUnavailable) as busy:
        await client.get_json("/x")
    assert (busy.value.retry_after, busy.value.status) == (7.0, 503)
    with pytest.raises(UpstreamBadResponse, match="answered HTTP 404 to /x"):
        await client.get_json("/x")
    with pytest.raises(UpstreamBadResponse, match="answered something unreadable"):
        await client.get_json("/x")
    assert await client.get_json("/x") == {"ok": 1}
    assert {h.get("X-Plex-Token") for h in answers.seen} == {"t"}
    assert client.requests == 5


async def test_a_server_that_does_not_listen_is_unavailable_without_a_status() -> None:
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{free_port()}"
        client = UpstreamClient(url, http, name="Tautulli", credentials="TAUTULLI_API_KEY")
        with pytest.raises(UpstreamUnavailable) as info:
            await client.get("/x")
    assert info.value.status is None
    assert str(info.value).startswith(f"cannot reach Tautulli at {url} (unreachable: ")


async def test_transient_failures_are_retried_with_backoff_until_the_answer_comes(
    upstream: tuple[Answers, UpstreamClient],
) -> None:
    answers, client = upstream
    answers.queue = [(500, b"", {}), (429, b"", {"Retry-After": "0"}), (200, b"[1]", {})]
    retries: list[float] = []
    policy = RetryPolicy(
        CircuitBreaker(threshold=5),
        attempts=3,
        backoff=lambda: Backoff(initial=0.01, maximum=0.02, jitter=0),
        on_retry=lambda exc, delay: retries.append(delay),
    )
    assert await policy.call(lambda: client.get_json("/x")) == [1]
    assert retries == [0.01, 0.02] and policy.breaker.state == "closed"


async def test_the_server_retry_after_is_honoured_and_attempts_are_bounded(
    upstream: tuple[Answers, UpstreamClient],
) -> None:
    answers, client = upstream
    answers.queue = [(503, b"", {"Retry-After": "0.2"}), (503, b"", {})]
    policy = RetryPolicy(CircuitBreaker(threshold=5), attempts=2, backoff=lambda: Backoff(0.01))
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await policy.call(lambda: client.get("/x"))
    assert time.monotonic() - started >= 0.2  # waited what the server asked
    assert client.requests == 2


async def test_a_misconfiguration_opens_the_circuit_at_once_only_where_the_policy_says(
    upstream: tuple[Answers, UpstreamClient],
) -> None:
    _, client = upstream

    async def misconfigured() -> None:
        raise UpstreamMisconfigured("the API is switched off")

    tripping = RetryPolicy(CircuitBreaker(threshold=5), open_on_misconfigured=True)
    with pytest.raises(UpstreamMisconfigured):
        await tripping.call(misconfigured)
    assert tripping.breaker.state == "open"
    with pytest.raises(CircuitOpen):
        await tripping.call(lambda: client.get("/x"))
    assert client.requests == 0  # refused before any request

    counting = RetryPolicy(CircuitBreaker(threshold=2))
    for _ in range(2):
        with pytest.raises(UpstreamMisconfigured):
            await counting.call(misconfigured)
    assert counting.breaker.state == "open"  # after threshold failures, not the first


async def test_an_error_that_is_not_the_upstreams_passes_through_uncounted() -> None:
    policy = RetryPolicy(CircuitBreaker(threshold=1))

    async def defect() -> None:
        raise KeyError("a bug, not the server")

    with pytest.raises(KeyError):
        await policy.call(defect)
    assert policy.breaker.state == "closed"
