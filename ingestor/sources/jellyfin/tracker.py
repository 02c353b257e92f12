"""One Jellyfin or Emby source's playbacks: the session machine, its persisted state and its
outbox to the sink.

:class:`PlaybackTracker` owns the state machine of one source name, its :class:`StateFile`
and the sink. The WebSocket clients of that source (one per server,
:mod:`ingestor.sources.jellyfin.websocket`) and the Jellyfin webhook receiver
(:mod:`ingestor.sources.jellyfin.webhook`) share one tracker, so a playback seen by both is
one playback with one event per transition. It persists open playbacks (their
``session_key`` and ``started_at``) and an outbox of events not yet confirmed by the sink:
events are saved to the outbox before ``Sink.emit`` and removed after it returns, so a crash
in between re-emits the same events (same ids: dedup tier a) and never loses or re-derives
them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path

from ingestor.errors import InvalidEvent
from ingestor.events import MediaEvent, decode_event, encode_event
from ingestor.sink import Sink
from ingestor.sources.base import StateFile, check_event_size
from ingestor.sources.jellyfin.mapping import Observation
from ingestor.sources.jellyfin.session_machine import (
    DEFAULT_ECHO_WINDOW,
    DEFAULT_PROGRESS_INTERVAL,
    MachineState,
    SessionMachine,
)

log = logging.getLogger(__name__)


class PlaybackTracker:
    """One source's session state machine, persisted in ``state_path``, emitting to ``sink``.

    Share one instance between every adapter of the source name (the WebSocket clients of
    all Jellyfin servers and the Jellyfin webhook); two trackers over one file would
    overwrite each other.
    """

    def __init__(
        self,
        source: str,
        state_path: Path | str,
        sink: Sink,
        *,
        progress_interval: float | None = DEFAULT_PROGRESS_INTERVAL,
        echo_window: float = DEFAULT_ECHO_WINDOW,
    ) -> None:
        self.source = source
        self.sink = sink
        self.state_file = StateFile(Path(state_path))
        stored = self.state_file.load()
        try:
            state = MachineState.load(stored.get("machine", {}))
            outbox = [str(item) for item in stored.get("outbox", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{self.state_file.path} is not a {source} session state ({exc}); "
                "remove it to start over"
            ) from None
        self.machine = SessionMachine(
            source, progress_interval=progress_interval, echo_window=echo_window, state=state
        )
        self._outbox: list[str] = [item for item in outbox if _readable(item)]
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        """Events saved but not yet confirmed stored by the sink."""
        return len(self._outbox)

    async def snapshot(
        self,
        server_id: str,
        playing: Sequence[Observation],
        now: datetime,
        *,
        unknown: Collection[str] = (),
        refused: dict[str, str] | None = None,
    ) -> int:
        """Apply a full sessions snapshot; return the number of events emitted. Sessions whose
        report is refused are kept as they were and named in ``refused`` (id: reason)."""
        return await self._apply(
            lambda: self.machine.snapshot(server_id, playing, now, unknown=unknown, refused=refused)
        )

    async def report(self, server_id: str, observation: Observation, now: datetime) -> int:
        """Apply one session's state (a webhook notification); return the number of events
        emitted.

        Raise :class:`~ingestor.errors.InvalidEvent`
        (:class:`~ingestor.sources.base.EventTooLarge` when an event
        would be over the size limit), with nothing emitted or saved and the state as it
        was, when the report alone or an event it makes could not be stored.
        """
        self.machine.check_report(server_id, observation, now)
        return await self._apply(lambda: self.machine.report(server_id, observation, now))

    async def end(self, server_id: str, observation: Observation, now: datetime) -> int:
        """Apply one session's stop; return the number of events emitted. Refused as
        :meth:`report` is."""
        self.machine.check_report(server_id, observation, now)
        return await self._apply(lambda: self.machine.end(server_id, observation, now))

    async def flush(self) -> int:
        """Emit what an earlier run (or a failed emit) left in the outbox."""
        async with self._lock:
            return await self._flush()

    async def save(self) -> None:
        async with self._lock:
            await self._save()

    async def _apply(self, step: Callable[[], list[MediaEvent]]) -> int:
        async with self._lock:
            events = [event for event in step() if _valid(event)]
            if not events and not self._outbox:
                return 0
            self._outbox += [encode_event(event).decode() for event in events]
            await self._save()  # the transitions and the new state, before the sink sees them
            return await self._flush()

    async def _flush(self) -> int:
        if not self._outbox:
            return 0
        events = [decode_event(item.encode()) for item in self._outbox]
        await self.sink.emit(events)
        self._outbox = []
        await self._save()
        return len(events)

    async def _save(self) -> None:
        document = {"machine": self.machine.state.dump(), "outbox": list(self._outbox)}
        await asyncio.to_thread(self.state_file.save, document)


def _readable(item: str) -> bool:
    try:
        decode_event(item.encode()).validate()
    except InvalidEvent as exc:
        log.error("dropped an unreadable event from the session state's outbox: %s", exc)
        return False
    return True


def _valid(event: MediaEvent) -> bool:
    """Keep an invalid event out of the outbox, where it would block every later one."""
    try:
        check_event_size(event.validate())
    except InvalidEvent as exc:
        log.error("%s: dropped an event the session machine built: %s", event.source, exc)
        return False
    return True


__all__ = ["PlaybackTracker"]
