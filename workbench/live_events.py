"""Follow a running ingestor's live feed from a notebook: every accepted event and every
alert, as it is committed, over the ingestor's WebSocket (``GET /ws/events``).

:func:`subscribe` yields typed messages (:class:`~ingestor.broadcast.EventMessage`,
:class:`~ingestor.broadcast.AlertMessage`) in stream order; :class:`LiveTable` keeps the last
N of them in a polars frame and redraws an ipywidgets ``Output`` with it.

The feed is live only: it starts at the moment you connect (for history, replay the log with
:mod:`workbench.replay`). A client that stops reading is dropped by the ingestor, never
allowed to slow ingestion; :func:`subscribe` then raises :class:`FeedClosed` with the reason.

Examples (with an ingestor running)::

    from workbench.live_events import LiveTable, subscribe

    async for message in subscribe("http://127.0.0.1:3857", user="ana", event_type="play"):
        print(message.seq, message.event.title)

    table = LiveTable(limit=20)
    display(table.output)                   # in a notebook cell
    task = asyncio.create_task(table.follow("http://127.0.0.1:3857", server="5d4f..."))
    table.frame                             # the last 20 rows, newest last
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import polars as pl

from ingestor.broadcast import AlertMessage, EventMessage, Message, decode_message
from workbench.errors import FeedClosed

NORMAL_CLOSES = (1000, 1001)  # the client or the ingestor ended the feed on purpose
_TIME = pl.Datetime("us", "UTC")
SCHEMA: dict[str, Any] = {
    "seq": pl.Int64,
    "recorded_at": _TIME,
    "kind": pl.String,  # event | alert
    "action": pl.String,  # open | fold | link; an alert's severity
    "event_type": pl.String,  # an alert's rule
    "occurred_at": _TIME,
    "source": pl.String,
    "server_id": pl.String,
    "user_id": pl.String,
    "username": pl.String,
    "title": pl.String,
    "detail": pl.String,  # the device or player; an alert's message
}
COLUMNS = tuple(SCHEMA)


def feed_url(
    url: str,
    *,
    server: str | Iterable[str] | None = None,
    user: str | Iterable[str] | None = None,
    event_type: str | Iterable[str] | None = None,
    token: str | None = None,
) -> str:
    """The feed's WebSocket URL for an ingestor's base URL and filters.

    >>> feed_url("http://127.0.0.1:3857", user=["ana", "bob"], event_type="play")
    'ws://127.0.0.1:3857/ws/events?user=ana%2Cbob&event_type=play'
    """
    from urllib.parse import urlencode

    base = url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[len("http") :]
    if not base.endswith("/ws/events"):
        base += "/ws/events"
    params: dict[str, str] = {}
    for name, value in (("server", server), ("user", user), ("event_type", event_type)):
        if value:
            params[name] = value if isinstance(value, str) else ",".join(value)
    if token:
        params["token"] = token
    return f"{base}?{urlencode(params)}" if params else base


async def subscribe(
    url: str = "http://127.0.0.1:3857",
    *,
    server: str | Iterable[str] | None = None,
    user: str | Iterable[str] | None = None,
    event_type: str | Iterable[str] | None = None,
    token: str | None = None,
    session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[Message]:
    """Yield the live feed's messages in stream order until the ingestor stops.

    ``user`` matches a user id or a username; ``event_type`` takes event types and ``alert``;
    several values of one filter mean "any of them". ``token`` is the ingestor's
    ``BROADCAST_TOKEN`` (not needed on the same machine when none is set).

    Raises :class:`FeedClosed` when the ingestor drops the feed (e.g. the consumer fell too
    far behind), and ``aiohttp.WSServerHandshakeError`` when it refuses the connection
    (401: wrong token; 403: not loopback and no token configured; 400: a bad filter).
    """
    target = feed_url(url, server=server, user=user, event_type=event_type, token=token)
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        async with client.ws_connect(target, autoping=True, max_msg_size=0) as ws:
            while True:
                frame = await ws.receive()
                if frame.type is aiohttp.WSMsgType.TEXT:
                    yield decode_message(frame.data)
                elif frame.type is aiohttp.WSMsgType.CLOSE:  # the ingestor closed, with why
                    if frame.data not in NORMAL_CLOSES:
                        raise FeedClosed(frame.data, frame.extra or "")
                    return
                elif frame.type is aiohttp.WSMsgType.ERROR:
                    raise FeedClosed(None, str(ws.exception()))
                elif frame.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    if ws.close_code not in NORMAL_CLOSES:
                        raise FeedClosed(ws.close_code, "connection lost")
                    return
    finally:
        if own:
            await client.close()


def message_row(message: Message) -> dict[str, Any]:
    """One message as a flat row of :data:`COLUMNS`."""
    if isinstance(message, EventMessage):
        e = message.event
        return {
            "seq": message.seq,
            "recorded_at": message.recorded_at,
            "kind": "event",
            "action": message.action,
            "event_type": e.event_type.value,
            "occurred_at": e.occurred_at,
            "source": e.source,
            "server_id": e.server_id,
            "user_id": e.user_id,
            "username": e.username,
            "title": e.title,
            "detail": e.device or e.player,
        }
    assert isinstance(message, AlertMessage)
    a = message.alert
    return {
        "seq": message.seq,
        "recorded_at": message.recorded_at,
        "kind": "alert",
        "action": a.severity,
        "event_type": a.rule,
        "occurred_at": a.occurred_at,
        "source": "",
        "server_id": a.server_id,
        "user_id": a.user_id,
        "username": a.username,
        "title": "",
        "detail": a.message,
    }


class LiveTable:
    """The last ``limit`` messages of the feed as a polars frame, shown in a widget.

    Redraws at most every ``redraw_every`` seconds, so a burst of events costs one redraw.
    """

    def __init__(self, limit: int = 50, redraw_every: float = 0.5) -> None:
        import ipywidgets

        self.limit = limit
        self.redraw_every = redraw_every
        self.rows: deque[dict[str, Any]] = deque(maxlen=limit)
        self.output = ipywidgets.Output()
        self.received = 0
        self._drawn_at = 0.0

    @property
    def frame(self) -> pl.DataFrame:
        """The rows held now, oldest first (see :data:`SCHEMA`)."""
        return pl.DataFrame(list(self.rows), schema=SCHEMA)

    def add(self, message: Message) -> None:
        self.rows.append(message_row(message))
        self.received += 1
        now = time.monotonic()
        if now - self._drawn_at >= self.redraw_every:
            self.redraw()

    def redraw(self) -> None:
        from IPython.display import display

        self._drawn_at = time.monotonic()
        with self.output:
            self.output.clear_output(wait=True)
            display(self.frame)

    async def follow(self, url: str = "http://127.0.0.1:3857", **filters: Any) -> None:
        """Add every message of :func:`subscribe` (same arguments) until the feed ends."""
        try:
            async for message in subscribe(url, **filters):
                self.add(message)
        finally:
            self.redraw()
