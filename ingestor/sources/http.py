"""The one HTTP client of the source adapters: one retry policy and one error vocabulary.

Every adapter that calls an upstream server goes through :class:`UpstreamClient` (Tautulli's
API, Plex's ``/identity``, ``/status/sessions`` and watch history, Jellyfin's and Emby's
``System/Info`` and ``Sessions``). The Jellyfin/Emby WebSocket keeps aiohttp's
``ws_connect`` but raises the same errors and runs under the same :class:`RetryPolicy`.

**What failed** (every error says it in its message; an adapter shows the message in its
health and its log):

* :class:`UpstreamError`: the base. An adapter catches this and records it; it never ends
  the source.
* :class:`UpstreamMisconfigured`: retrying cannot help until someone changes a setting (a
  wrong URL, an API switched off). :class:`CredentialsRefused` is one: the token or API key
  was refused (HTTP 401/403, or the server's own words for it); its message names the
  variable to fix.
* :class:`UpstreamUnavailable`: transient. A refused connection, a timeout, HTTP 5xx, HTTP
  429 (``retry_after``: the server's ``Retry-After``, at most 300 s).
* :class:`UpstreamBadResponse`: the server answered, but not as its protocol says (not
  JSON, the wrong shape, a command that failed).

**What happens next** (:meth:`RetryPolicy.call`, one attempt being one request or a few that
belong together, such as a connect's ``System/Info`` + ``Sessions`` + upgrade):

1. while the :class:`~ingestor.sources.base.CircuitBreaker` is open the attempt is not
   made: :class:`~ingestor.sources.base.CircuitOpen`;
2. :class:`UpstreamUnavailable` counts one failure and is retried after a
   :class:`~ingestor.sources.base.Backoff` delay (exponential, with jitter, at least the
   server's ``Retry-After``), up to ``attempts`` in all, unless the circuit opened or
   ``stop`` was set meanwhile;
3. :class:`UpstreamMisconfigured` opens the circuit at once when the policy says so
   (``open_on_misconfigured``: Tautulli, whose every call is refused the same way until the
   setting changes), else counts one failure like any other :class:`UpstreamError`;
4. a success closes the circuit; any other exception (a defect, the sink) passes through
   uncounted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import msgspec

from ingestor.errors import IngestorError
from ingestor.sources.base import Backoff, CircuitBreaker

T = TypeVar("T")

MAX_RETRY_AFTER = 300.0


# ---------------------------------------------------------------------------------------
# the vocabulary


class UpstreamError(IngestorError):
    """An upstream server did not answer usefully; the message says what and what to do."""


class UpstreamMisconfigured(UpstreamError):
    """Retrying cannot help until someone fixes a setting (the URL, an API switch, a key)."""


class CredentialsRefused(UpstreamMisconfigured):
    """The token or API key was refused; the message names the variable holding it."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamUnavailable(UpstreamError):
    """A transient failure: a refused connection or a timeout (``status`` None), or an
    answer of 5xx or 429 (``retry_after``: its ``Retry-After``)."""

    def __init__(
        self, message: str, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class UpstreamBadResponse(UpstreamError):
    """The server answered, but not as its protocol says: unreadable, or the wrong shape."""


def describe(exc: BaseException) -> str:
    """``Type: message`` (or the type alone when the message is empty), for error lines."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (at most :data:`MAX_RETRY_AFTER`); ``None`` when
    absent or not a number.

    >>> retry_after_seconds("7"), retry_after_seconds("9999"), retry_after_seconds("soon")
    (7.0, 300.0, None)
    """
    try:
        return min(float(value), MAX_RETRY_AFTER) if value else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------
# the policy


class RetryPolicy:
    """The one retry, backoff and circuit-breaker policy (see the module docstring).

    ``backoff`` makes a fresh :class:`~ingestor.sources.base.Backoff` per call; ``stop``
    (when given) cuts a retry's wait short.
    """

    def __init__(
        self,
        breaker: CircuitBreaker | None = None,
        *,
        attempts: int = 1,
        backoff: Callable[[], Backoff] = Backoff,
        open_on_misconfigured: bool = False,
        stop: asyncio.Event | None = None,
        on_retry: Callable[[UpstreamUnavailable, float], None] | None = None,
    ) -> None:
        self.breaker = breaker or CircuitBreaker()
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.open_on_misconfigured = open_on_misconfigured
        self.stop = stop
        self.on_retry = on_retry

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``'s result under the policy; raises an :class:`UpstreamError` or
        :class:`~ingestor.sources.base.CircuitOpen`."""
        backoff = self.backoff()
        tries = 0
        while True:
            self.breaker.check()
            try:
                result = await attempt()
            except UpstreamUnavailable as exc:
                self.breaker.failure()
                tries += 1
                if tries >= self.attempts or self.breaker.state == "open":
                    raise
                delay = max(backoff.next(), exc.retry_after or 0.0)
                if self.on_retry is not None:
                    self.on_retry(exc, delay)
                if await self._sleep(delay):
                    raise
                continue
            except UpstreamMisconfigured:
                if self.open_on_misconfigured:
                    self.breaker.trip()
                else:
                    self.breaker.failure()
                raise
            except UpstreamError:
                self.breaker.failure()
                raise
            self.breaker.success()
            return result

    async def _sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True if ``stop`` was set meanwhile."""
        if self.stop is None:
            await asyncio.sleep(delay)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)
        return self.stop.is_set()


# ---------------------------------------------------------------------------------------
# the client


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, whatever its status."""

    status: int
    body: bytes
    retry_after: float | None = None


class UpstreamClient:
    """GET requests to one upstream server, their failures in the vocabulary above.

    ``name`` says what the server is in messages (``Plex``, ``Tautulli``, ``jellyfin``);
    ``credentials`` names the setting holding the token or key (``PLEX_TOKEN``,
    ``JELLYFIN_API_KEY_2``); ``headers`` go with every request. The client sends each
    request once: retries are the :class:`RetryPolicy`'s.
    """

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        name: str,
        credentials: str,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.name = name
        self.credentials = credentials
        self.headers = dict(headers or {})
        self.timeout = aiohttp.ClientTimeout(total=timeout) if timeout is not None else None
        self.requests = 0  # requests sent

    async def fetch(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """One GET of ``url + path``, whatever the status it answers; a refused connection
        or a timeout is :class:`UpstreamUnavailable`."""
        self.requests += 1
        kwargs: dict[str, Any] = {"params": params, "headers": {**self.headers, **(headers or {})}}
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        try:
            async with self.session.get(self.url + path, **kwargs) as response:
                body = await response.read()
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                return Answer(response.status, body, retry_after)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamUnavailable(
                f"cannot reach {self.name} at {self.url} (unreachable: {describe(exc)})"
            ) from None

    def refused(self, status: int) -> CredentialsRefused:
        """The error for a 401/403: the setting that holds the refused token or key."""
        return CredentialsRefused(
            f"{self.credentials} rejected by {self.url} (HTTP {status})", status
        )

    async def get(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """The body of a 200 answer. 401/403: :class:`CredentialsRefused`; 429 and 5xx:
        :class:`UpstreamUnavailable`; any other status: :class:`UpstreamBadResponse`."""
        answer = await self.fetch(path, params=params, headers=headers)
        if answer.status in (401, 403):
            raise self.refused(answer.status)
        if answer.status == 429 or answer.status >= 500:
            raise UpstreamUnavailable(
                f"{self.name} at {self.url} answered HTTP {answer.status} to {path}",
                answer.retry_after,
                answer.status,
            )
        if answer.status != 200:
            raise UpstreamBadResponse(
                f"{self.name} at {self.url} answered HTTP {answer.status} to {path}"
            )
        return answer.body

    async def get_json(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The JSON document of a 200 answer (as :meth:`get`); a body that is not JSON is
        :class:`UpstreamBadResponse`."""
        body = await self.get(path, params=params, headers=headers)
        return decode_json(body, f"{self.name} at {self.url}: {path}")


def decode_json(body: bytes, where: str) -> Any:
    """``body`` as JSON, or :class:`UpstreamBadResponse` saying ``where`` answered it."""
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: deep nesting
        detail = str(exc) if isinstance(exc, msgspec.DecodeError) else "nested too deeply"
        raise UpstreamBadResponse(f"{where} answered something unreadable: {detail}") from None


__all__ = [
    "Answer",
    "CredentialsRefused",
    "RetryPolicy",
    "UpstreamBadResponse",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamMisconfigured",
    "UpstreamUnavailable",
    "decode_json",
    "describe",
    "retry_after_seconds",
]
