"""Where every dedup decision is made: three tiers, all audited (ARCHITECTURE invariant 4).

For each event, in stream order:

(a) ``event_id`` seen before: the exact event again. Dropped.
(b) its :class:`SessionStepKey` seen before: the source re-reporting a step it already
    reported for that session (after a restart, a reconnect, an overlapping poll). Dropped.
(c) no playback knows its source session yet, but a playback of the same server, user, item
    and device started within ``DEDUP_TOLERANCE`` and no report from this source is in it:
    another source reporting a known playback. Linked: the event is kept and folds into that
    playback, never opening a second one.

Otherwise the event folds into its source session's playback, or opens a new one.

The index is exact (dicts, never a Bloom filter) and bounded: it holds the keys of playbacks
that started within ``hot_window`` of the newest start seen, at most ``max_entries`` keys.
Events about older playbacks are *cold*: before a batch is decided, their keys are loaded from
the committed projection through a :class:`ColdLookup`, so eviction never causes a false
negative. Decisions see every earlier event, including those earlier in the same batch; keys
become durable only with the commit: :meth:`DedupIndex.rollback` undoes an uncommitted batch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from ingestor.events import (
    CorrelationKey,
    CrossSourceKey,
    MediaEvent,
    SessionStepKey,
    SourceSession,
)

log = logging.getLogger(__name__)

DEFAULT_HOT_WINDOW_S = 2 * 86400.0
DEFAULT_MAX_ENTRIES = 2_000_000
_BUCKET_S = 3600


class Tier(StrEnum):
    EVENT_ID = "event_id"
    SESSION_KEY = "session_key"
    CORRELATION = "correlation"


class Action(StrEnum):
    OPEN = "open"  # first report of a new playback
    FOLD = "fold"  # another event of a source session already in a playback
    LINK = "link"  # tier (c): another source's report of a known playback
    DROP = "drop"  # tier (a) or (b)


@dataclass(slots=True)
class PlaybackRef:
    """What the index knows of one playback."""

    key: str  # CorrelationKey.encode() of the report that opened it
    cross: CrossSourceKey
    start: float  # epoch seconds of the opening report's start
    sources: set[str]
    first_seq: int
    opening_event_id: str


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    playback_key: str
    tier: Tier | None = None
    reason: str = ""
    kept_event_id: str = ""
    kept_source: str = ""
    similarity: float = 1.0
    first_seq: int = 0  # the playback's first stream sequence (0: unknown, read everything)


class ColdLookup(Protocol):
    """Committed keys for events about playbacks older than the hot window."""

    def load(self, events: Sequence[MediaEvent], index: DedupIndex) -> None: ...


@dataclass
class DedupIndex:
    """The exact, bounded in-memory dedup index."""

    tolerance: float = 10.0
    hot_window: float = DEFAULT_HOT_WINDOW_S
    max_entries: int = DEFAULT_MAX_ENTRIES
    event_ids: dict[str, str] = field(default_factory=dict)  # event_id -> playback key
    steps: dict[SessionStepKey, str] = field(default_factory=dict)  # step -> event_id
    sessions: dict[SourceSession, str] = field(default_factory=dict)  # -> playback key
    playbacks: dict[str, PlaybackRef] = field(default_factory=dict)
    by_cross: dict[CrossSourceKey, list[PlaybackRef]] = field(default_factory=dict)
    newest_start: float = float("-inf")
    _buckets: dict[int, list[tuple[int, object]]] = field(default_factory=lambda: defaultdict(list))
    _undo: list[Callable[[], None]] = field(default_factory=list)
    _added: list[tuple[int, tuple[int, object]]] = field(default_factory=list)

    # ------------------------------------------------------------------ horizon

    @property
    def horizon(self) -> float:
        """Playbacks starting before this are cold: their keys may have been evicted."""
        return self.newest_start - self.hot_window

    def is_cold(self, event: MediaEvent) -> bool:
        # A margin of the tolerance (and a minute) keeps a link partner that started a few
        # seconds before the horizon from being missed.
        return event.playback_start.timestamp() < self.horizon + self.tolerance + 60

    @property
    def entries(self) -> int:
        return len(self.event_ids) + len(self.steps) + len(self.sessions) + len(self.playbacks)

    # ------------------------------------------------------------------ decisions

    def decide(self, event: MediaEvent, seq: int) -> Decision:
        """Decide one event and record its keys (undoable until :meth:`commit`)."""
        kept = self.event_ids.get(event.event_id)
        if kept is not None:
            return Decision(
                Action.DROP,
                kept,
                Tier.EVENT_ID,
                "the exact event was already recorded",
                kept_event_id=event.event_id,
                kept_source=event.source,
            )
        step = SessionStepKey.of(event)
        earlier = self.steps.get(step)
        if earlier is not None:
            playback_key = self.event_ids.get(earlier) or self.sessions.get(
                SourceSession(event.source, event.server_id, event.session_key), ""
            )
            return Decision(
                Action.DROP,
                playback_key,
                Tier.SESSION_KEY,
                f"{event.source} re-reported the {event.event_type} step of session "
                f"{event.session_key}",
                kept_event_id=earlier,
                kept_source=event.source,
            )
        session = SourceSession(event.source, event.server_id, event.session_key)
        playback_key = self.sessions.get(session)
        if playback_key is not None:
            known = self.playbacks.get(playback_key)
            decision = Decision(
                Action.FOLD, playback_key, first_seq=known.first_seq if known else 0
            )
        else:
            decision = self._open_or_link(event, seq)
            self._add_session(session, decision.playback_key, self.playbacks[decision.playback_key])
        ref = self.playbacks.get(decision.playback_key)
        self._add_event(event.event_id, step, decision.playback_key, ref)
        return decision

    def _open_or_link(self, event: MediaEvent, seq: int) -> Decision:
        correlation = event.correlation
        cross = correlation.cross_source
        start = correlation.started_at.timestamp()
        best: PlaybackRef | None = None
        for candidate in self.by_cross.get(cross, ()):
            delta = abs(candidate.start - start)
            if delta > self.tolerance or event.source in candidate.sources:
                continue
            if best is None or delta < abs(best.start - start):
                best = candidate
        if best is not None:
            best.sources.add(event.source)
            self._undo.append(lambda ref=best, source=event.source: ref.sources.discard(source))
            delta = abs(best.start - start)
            return Decision(
                Action.LINK,
                best.key,
                Tier.CORRELATION,
                f"{event.source} reported a playback that "
                f"{CorrelationKey.decode(best.key).source} opened, starts {delta:.1f}s apart",
                kept_event_id=best.opening_event_id,
                kept_source=CorrelationKey.decode(best.key).source,
                similarity=round(1.0 - delta / self.tolerance, 4) if self.tolerance else 1.0,
                first_seq=best.first_seq,
            )
        key = correlation.encode()
        ref = PlaybackRef(key, cross, start, {event.source}, seq, event.event_id)
        self.remember_playback(ref, undoable=True)
        return Decision(Action.OPEN, key, first_seq=seq)

    # ------------------------------------------------------------------ recording keys

    def remember_playback(self, ref: PlaybackRef, *, undoable: bool = False) -> None:
        if ref.key in self.playbacks:
            return
        self.playbacks[ref.key] = ref
        self.by_cross.setdefault(ref.cross, []).append(ref)
        self._track(_PLAYBACK, ref.key, ref, undoable)
        self.newest_start = max(self.newest_start, ref.start)

    def remember_event(self, event_id: str, step: SessionStepKey, playback_key: str) -> None:
        """Record committed keys (used when loading from the database)."""
        ref = self.playbacks.get(playback_key)
        self._add_event(event_id, step, playback_key, ref, undoable=False)

    def remember_session(self, session: SourceSession, playback_key: str) -> None:
        ref = self.playbacks.get(playback_key)
        self._add_session(session, playback_key, ref, undoable=False)

    def _add_event(
        self,
        event_id: str,
        step: SessionStepKey,
        playback_key: str,
        ref: PlaybackRef | None,
        *,
        undoable: bool = True,
    ) -> None:
        if event_id not in self.event_ids:
            self.event_ids[event_id] = playback_key
            self._track(_EVENT, event_id, ref, undoable)
        if step not in self.steps:
            self.steps[step] = event_id
            self._track(_STEP, step, ref, undoable)

    def _add_session(
        self,
        session: SourceSession,
        playback_key: str,
        ref: PlaybackRef | None,
        *,
        undoable: bool = True,
    ) -> None:
        if session not in self.sessions:
            self.sessions[session] = playback_key
            self._track(_SESSION, session, ref, undoable)

    def _track(self, family: int, key: object, ref: PlaybackRef | None, undoable: bool) -> None:
        bucket = (
            int(ref.start // _BUCKET_S) if ref is not None else int(self.newest_start // _BUCKET_S)
        )
        entry = (family, key)
        if undoable:
            self._added.append((bucket, entry))
        else:
            self._buckets[bucket].append(entry)

    # ------------------------------------------------------------------ transactions

    def commit(self) -> None:
        """The batch is durable: its keys stay. Then evict what fell out of the window."""
        for bucket, entry in self._added:
            self._buckets[bucket].append(entry)
        self._added.clear()
        self._undo.clear()
        self._evict()

    def rollback(self) -> None:
        """The batch did not commit: forget every key it added."""
        for _bucket, (family, key) in reversed(self._added):
            self._forget(family, key)
        self._added.clear()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self.newest_start = max(
            (ref.start for ref in self.playbacks.values()), default=float("-inf")
        )

    def _evict(self) -> None:
        horizon_bucket = int(self.horizon // _BUCKET_S) if self.playbacks else None
        for bucket in sorted(self._buckets):
            over_cap = self.entries > self.max_entries
            if horizon_bucket is not None and bucket >= horizon_bucket and not over_cap:
                break
            if bucket >= int(self.newest_start // _BUCKET_S):
                break  # never evict the newest hour
            for family, key in self._buckets.pop(bucket):
                self._forget(family, key)
            if over_cap:
                # the horizon moves forward with the cap so cold events reach the database
                self.hot_window = min(self.hot_window, self.newest_start - (bucket + 1) * _BUCKET_S)

    def _forget(self, family: int, key: object) -> None:
        if family == _EVENT:
            self.event_ids.pop(key, None)  # type: ignore[call-overload]
        elif family == _STEP:
            self.steps.pop(key, None)  # type: ignore[call-overload]
        elif family == _SESSION:
            self.sessions.pop(key, None)  # type: ignore[call-overload]
        else:
            ref = self.playbacks.pop(key, None)  # type: ignore[call-overload]
            if ref is not None:
                peers = self.by_cross.get(ref.cross, [])
                peers[:] = [p for p in peers if p is not ref]
                if not peers:
                    self.by_cross.pop(ref.cross, None)


_EVENT, _STEP, _SESSION, _PLAYBACK = range(4)


def decide_batch(
    index: DedupIndex,
    events: Iterable[tuple[MediaEvent, int]],
) -> list[Decision]:
    """Decide a batch of (event, seq) pairs in order."""
    return [index.decide(event, seq) for event, seq in events]
