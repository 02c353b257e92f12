"""The one place the simulator calls the product's source code: upstream payload in,
MediaEvents out, through the mappings and adapter state users run.

Each class below stands for one adapter of a running ingestor, minus its transport (no HTTP
request, no socket, no state file, no sink): what it is given is exactly what the upstream
sends, and what it returns is what the adapter would hand its sink.

* :class:`PlexWebhookReceiver`: ``ingestor/sources/plex_webhook.py``. The adapter's mapping
  is a method of its receiver (``PlexWebhook._event``) behind an aiohttp handler, so this calls
  the module's decoders, its :class:`PlaybackBook` (the transition rules: double fires, late
  and orphan reports) and that method on a receiver built once. A pure entry would be
  ``events_from_webhook(body: bytes, received_at: datetime, book: PlaybackBook,
  owner: OwnerMap) -> list[MediaEvent]``.
* :class:`TautulliHistory`: ``ingestor/sources/tautulli_import.py`` ``event_from_record``
  (a history record -> the shared row mapping of ``tautulli_rows.py``), already pure.
* :class:`JellyfinSocket`: what ``MediaServerSocket`` does with a ``Sessions`` frame:
  ``session_machine.observe_sessions`` then ``SessionMachine.snapshot`` (pure, given ``now``),
  then the tracker's check that each event is valid and small enough.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingestor.events import MediaEvent
from ingestor.sources import plex_webhook, tautulli_import
from ingestor.sources.base import check_event_size
from ingestor.sources.session_machine import SessionMachine, observe_sessions

if TYPE_CHECKING:
    from ingestor.nats.publisher import PublishStats


class SimulationError(Exception):
    """The product's adapter refused what the simulator sent: a defect of the simulator."""


class _NoSink:
    """The receiver is never asked to store: the simulator takes the events it maps."""

    async def emit(self, events: Sequence[MediaEvent]) -> PublishStats:
        raise SimulationError("the simulator maps webhooks; it never stores through a sink")


class PlexWebhookReceiver:
    """One Plex webhook receiver with its open-playback book (the adapter's defaults)."""

    def __init__(self) -> None:
        with tempfile.TemporaryDirectory() as empty:  # no state file: a first start
            self._adapter = plex_webhook.PlexWebhook(_NoSink(), Path(empty) / "plex.json")

    def receive(self, body: bytes, received_at: datetime) -> list[MediaEvent]:
        """The events of one webhook's ``payload`` part received at ``received_at``."""
        try:
            kind = plex_webhook._decode_kind(body)
            if kind not in plex_webhook.KINDS:
                return []
            parsed = plex_webhook._decode_payload(body)
        except plex_webhook.BadRequest as exc:
            raise SimulationError(f"the Plex webhook adapter refused a payload: {exc}") from None
        key = plex_webhook._playback_key(parsed)
        steps = self._adapter._book.apply(parsed.event, key, received_at)
        return [self._adapter._event(step, parsed, body, received_at) for step in steps]


class TautulliHistory:
    """Tautulli's history rows as the ingestor maps them (one ``summary`` each)."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id

    def rows(self, records: Sequence[Mapping[str, Any]]) -> list[MediaEvent]:
        return [tautulli_import.event_from_record(record, self.server_id) for record in records]


class JellyfinSocket:
    """One Jellyfin server's WebSocket, as the adapter follows it (its session machine with
    the product's default progress interval and echo window)."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.machine = SessionMachine("jellyfin")

    def message(self, message: Mapping[str, Any], received_at: datetime) -> list[MediaEvent]:
        """A ``Sessions`` push (``{"MessageType": "Sessions", "Data": [...]}``)."""
        if message.get("MessageType") != "Sessions":
            return []
        return self.sessions(message["Data"], received_at)

    def sessions(self, entries: list[Any], received_at: datetime) -> list[MediaEvent]:
        """A full list of sessions: a push's ``Data``, or ``GET /Sessions`` on a (re)connect."""
        playing, unknown, problems = observe_sessions(entries)
        if problems:
            raise SimulationError(f"the Jellyfin adapter cannot read a session: {problems[0]}")
        events = self.machine.snapshot(self.server_id, playing, received_at, unknown=unknown)
        return [check_event_size(event.validate()) for event in events]
