"""The one place the simulator calls the product's source code: upstream payload in,
MediaEvents out, through the mappings and adapter state users run.

Each class below stands for one adapter of a running ingestor, minus its transport (no HTTP
request, no socket, no state file, no sink): what it is given is exactly what the upstream
sends, and what it returns is what the adapter would hand its sink.

* :class:`PlexWebhookReceiver`: the webhook's playback book (``sources/plex/webhook.py``:
  double fires, late and orphan reports) and the pure mapping ``webhook_events``
  (``sources/plex/mapping.py``).
* :class:`TautulliHistory`: ``sources/tautulli/db_import.py`` ``event_from_record`` (a
  history record -> the row mapping of ``sources/tautulli/mapping.py``).
* :class:`JellyfinSocket`: what the WebSocket does with a ``Sessions`` frame:
  ``observe_sessions`` (``sources/jellyfin/mapping.py``), ``SessionMachine.snapshot``, then
  the tracker's check that each event is valid and small enough.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ingestor.errors import IngestorError
from ingestor.events import MediaEvent
from ingestor.sources.base import check_event_size
from ingestor.sources.jellyfin.mapping import observe_sessions
from ingestor.sources.jellyfin.session_machine import SessionMachine
from ingestor.sources.plex import mapping as plex
from ingestor.sources.plex.webhook import (
    DEFAULT_DUPLICATE_WINDOW,
    DEFAULT_STALE_AFTER,
    PlaybackBook,
    _playback_key,
)
from ingestor.sources.tautulli import db_import


class SimulationError(IngestorError):
    """The product's adapter refused what the simulator sent: a defect of the simulator."""


class PlexWebhookReceiver:
    """One Plex webhook receiver's open-playback book (the adapter's defaults)."""

    def __init__(self) -> None:
        self.book = PlaybackBook(DEFAULT_DUPLICATE_WINDOW, DEFAULT_STALE_AFTER)

    def receive(self, body: bytes, received_at: datetime) -> list[MediaEvent]:
        """The events of one webhook's ``payload`` part received at ``received_at``."""
        try:
            if plex.webhook_kind(body) not in plex.KINDS:
                return []
            parsed = plex.decode_webhook(body)
        except plex.PlexPayloadError as exc:
            raise SimulationError(f"the Plex webhook adapter refused a payload: {exc}") from None
        steps = self.book.apply(parsed.event, _playback_key(parsed), received_at)
        transitions = [
            plex.WebhookTransition(
                s.event_type, s.kind, s.playback.session_key, s.playback.started_at
            )
            for s in steps
        ]
        return plex.webhook_events(parsed, transitions, received_at=received_at, raw=body)


class TautulliHistory:
    """Tautulli's history rows as the ingestor maps them (one ``summary`` each)."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id

    def rows(self, records: Sequence[Mapping[str, Any]]) -> list[MediaEvent]:
        return [db_import.event_from_record(record, self.server_id) for record in records]


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
