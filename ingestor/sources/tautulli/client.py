"""Tautulli's API v2: ``GET {url}/api/v2?apikey=..&cmd=..``, its envelope, and what each
refusal means.

Every answer is the envelope ``{"response": {"result", "message", "data"}}``, and Tautulli
(``plexpy/api2.py`` ``_api_run``) answers every refusal with HTTP 400 (500 when a command
raised), so a refusal is told by its ``message``, whatever the status, and said in the shared
vocabulary (:mod:`ingestor.sources.http`):

* ``Invalid apikey`` or a missing key: :class:`~ingestor.sources.http.CredentialsRefused`,
  ``TAUTULLI_API_KEY rejected by <url>``;
* ``API not enabled``, Tautulli without a key of its own, an unknown command, and answers
  that are not Tautulli's (no envelope, a proxy's 401, a 404):
  :class:`~ingestor.sources.http.UpstreamMisconfigured`, saying what to fix. These open the
  circuit at once (one trial per ``reset_timeout``, no hammering);
* 5xx and 429 (honouring ``Retry-After``), timeouts and refused connections:
  :class:`~ingestor.sources.http.UpstreamUnavailable`, retried inside the call;
* another ``result: error``, or a ``data`` of the wrong shape:
  :class:`~ingestor.sources.http.UpstreamBadResponse`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import msgspec

from ingestor.sources.base import Backoff, CircuitBreaker
from ingestor.sources.http import (
    CredentialsRefused,
    RetryPolicy,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamError,
    UpstreamMisconfigured,
    UpstreamUnavailable,
)
from ingestor.sources.tautulli.mapping import as_int, as_text

log = logging.getLogger(__name__)

API_PATH = "/api/v2"

# the messages of Tautulli's refusals (plexpy/api2.py _api_validate), all sent with HTTP 400
KEY_REJECTED = ("Invalid apikey", "Parameter apikey is required")
NO_OWN_KEY = "API key not generated"  # ... or "... not generated correctly"
API_OFF = "API not enabled"
UNKNOWN_COMMAND = "Unknown command"


class TautulliClient:
    """Calls one Tautulli's API and unwraps the envelope.

    Transient failures are retried ``attempts`` times in all with backoff; every failure is
    counted by ``breaker`` and configuration errors open it at once (the shared
    :class:`~ingestor.sources.http.RetryPolicy`).
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
        self.api_key = api_key
        self.upstream = UpstreamClient(url, http, name="Tautulli", credentials="TAUTULLI_API_KEY")
        self.url = self.upstream.url
        self.breaker = breaker
        self.policy = RetryPolicy(
            breaker,
            attempts=attempts,
            backoff=backoff,
            open_on_misconfigured=True,
            stop=stop,
            on_retry=lambda exc, delay: log.info("%s; retrying in %.1fs", exc, delay),
        )

    @property
    def requests(self) -> int:
        """HTTP requests sent so far."""
        return self.upstream.requests

    async def call(self, cmd: str, **params: Any) -> Any:
        """The ``data`` of a successful answer; raises an
        :class:`~ingestor.sources.http.UpstreamError` or
        :class:`~ingestor.sources.base.CircuitOpen`."""
        return await self.policy.call(lambda: self._request(cmd, params))

    def trip(self) -> None:
        """Open the circuit now: a configuration error will not heal by itself."""
        self.breaker.trip()

    async def _request(self, cmd: str, params: Mapping[str, Any]) -> Any:
        query = {"apikey": self.api_key, "cmd": cmd}
        query.update({k: str(v) for k, v in params.items() if v is not None})
        answer = await self.upstream.fetch(API_PATH, params=query)
        response = _envelope(answer.body)
        if answer.status != 200 or (response is not None and response.get("result") == "error"):
            raise self._refused(cmd, answer.status, response, answer.retry_after)
        if response is None:
            raise UpstreamMisconfigured(
                f"{self.url}/api/v2 did not answer like Tautulli's API v2 (no response "
                "envelope): is TAUTULLI_URL right?"
            )
        if response.get("result") != "success":
            raise UpstreamBadResponse(f"Tautulli at {self.url} failed {cmd}{_message(response)}")
        return response.get("data")

    def _refused(
        self,
        cmd: str,
        status: int,
        response: Mapping[str, Any] | None,
        retry_after: float | None,
    ) -> UpstreamError:
        """The error for an answer that is not a success: by its message first, since
        Tautulli sends 400 for nearly every refusal (``plexpy/api2.py`` ``_api_run``)."""
        message = as_text(response.get("message")).strip() if response else ""
        said = f": {message}" if message else ""
        if message in KEY_REJECTED or (status == 401 and response is not None):
            return CredentialsRefused(f"TAUTULLI_API_KEY rejected by {self.url}{said}", status)
        if message.startswith(NO_OWN_KEY):
            return UpstreamMisconfigured(
                f"Tautulli at {self.url} has no usable API key of its own{said}: generate one "
                "in Settings > Web Interface > API and set TAUTULLI_API_KEY to it"
            )
        if message == API_OFF:
            return UpstreamMisconfigured(
                f"the API of Tautulli at {self.url} is not enabled: enable it in Settings > "
                "Web Interface > API"
            )
        if message.startswith(UNKNOWN_COMMAND):
            return UpstreamMisconfigured(
                f"Tautulli at {self.url} does not know the command {cmd}: is it Tautulli 2.x?"
            )
        if status == 429 or status >= 500:
            return UpstreamUnavailable(
                f"Tautulli at {self.url} answered {status} to {cmd}{said}", retry_after
            )
        if response is not None:
            reason = said or " (no reason given: see Tautulli's log)"
            return UpstreamBadResponse(f"Tautulli at {self.url} failed {cmd}{reason}")
        if status in (401, 403):
            return UpstreamMisconfigured(
                f"{self.url} answered {status} to {cmd}, and not as Tautulli does: does a proxy "
                "in front of Tautulli ask for credentials? TAUTULLI_URL must reach its API"
            )
        if status in (400, 404):
            return UpstreamMisconfigured(
                f"{self.url}/api/v2 answered {status} to {cmd}, and not as Tautulli does: is "
                "TAUTULLI_URL the Tautulli root (with its HTTP root, if one is set)?"
            )
        return UpstreamMisconfigured(f"Tautulli at {self.url} answered {status} to {cmd}")


def history_page(data: Any, url: str) -> tuple[list[Any], int | None]:
    """The rows of a ``get_history`` answer and its ``recordsFiltered``;
    :class:`~ingestor.sources.http.UpstreamBadResponse` if it has no list of rows."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise UpstreamBadResponse(f"Tautulli at {url}: get_history answered no data list")
    return data["data"], as_int(data.get("recordsFiltered"))


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


__all__ = ["API_PATH", "TautulliClient", "history_page"]
