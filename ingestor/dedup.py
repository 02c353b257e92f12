"""Where every dedup decision is made: three tiers, all audited (docs/architecture.md, invariant 4).

For each event, in stream order:

(a) ``event_id`` seen before: the exact event again. Dropped.
(b) its session step seen before (:func:`ingestor.events.step_key`): the source re-reporting a
    step it already reported for that session (after a restart, a reconnect, an overlapping
    poll). Dropped.
(c) no playback knows its source session yet, but a playback of the same server, user, item
    and device started within ``DEDUP_TOLERANCE`` and no report from this source is in it:
    another source reporting a known playback. Linked: the event is kept and folds into that
    playback, never opening a second one.

Otherwise the event folds into its source session's playback, or opens a new one.

Keys are structured values (tuples of their fields, never strings split on a separator). The
index is exact (dicts, never a Bloom filter) and bounded: it holds the keys of playbacks that
started within ``hot_window`` of the newest start seen, at most ``max_entries`` keys. Events
about older playbacks are *cold*: before a batch is decided, their keys are loaded from the
committed projection (``Projection.load_cold``), so eviction never causes a false negative.
Decisions see every earlier event, including those earlier in the same batch; keys become
durable only with the commit: :meth:`DedupIndex.rollback` undoes an uncommitted batch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import msgspec

from ingestor.events import (
    CorrelationKey,
    CrossKey,
    MediaEvent,
    SessionKey,
    StepKey,
    cross_key,
    session_key,
    step_key,
)

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()

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


@dataclass(slots=True, eq=False)
class PlaybackRef:
    """What the index knows of one playback, and the keys it holds for it."""

    key: str  # CorrelationKey.encode() of the report that opened it
    cross: CrossKey
    start: float  # epoch seconds of the opening report's start
    sources: set[str]
    first_seq: int
    opening_event_id: str
    event_ids: list[str] = field(default_factory=list)
    steps: list[StepKey] = field(default_factory=list)
    sessions: list[SessionKey] = field(default_factory=list)

    @property
    def opening_source(self) -> str:
        return CorrelationKey.decode(self.key).source


class Decision(NamedTuple):
    action: Action
    playback_key: str
    tier: Tier | None = None
    reason: str = ""
    kept_event_id: str = ""
    kept_source: str = ""
    similarity: float = 1.0
    first_seq: int = 0  # the playback's first stream sequence (0: unknown, read everything)


_EVENT, _STEP, _SESSION, _REF, _SOURCE, _BATCH = range(6)


@dataclass(slots=True)
class BatchKeys:
    """What the dedup reads of a batch's events, one list entry per event, in stream order
    (the columns of :class:`ingestor.batch.Decoded`'s frame)."""

    seq: list[int]
    event_id: list[str]
    event_type: list[str]
    source: list[str]
    server_id: list[str]
    session_key: list[str]
    step: list[int]
    user_id: list[str]
    item: list[str]  # rating_key, or the title
    machine_id: list[str]
    start: list[float]  # playback_start, epoch seconds
    start_text: list[str]  # playback_start as msgspec writes it

    def __len__(self) -> int:
        return len(self.seq)

    def opening_key(self, i: int) -> str:
        """The CorrelationKey encoding of event ``i`` (as ``event.correlation.encode()``)."""
        values = [
            self.source[i],
            self.server_id[i],
            self.user_id[i],
            self.item[i],
            self.machine_id[i],
            self.start_text[i],
        ]
        return _json.encode(values).decode()


@dataclass(slots=True)
class BatchDecisions:
    """The decisions of one batch, as columns; audited ones (drops, links) in full."""

    action: list[Action]
    playback_key: list[str]
    first_seq: list[int]
    audited: dict[int, Decision]  # index in the batch -> its decision (tier set)

    def __len__(self) -> int:
        return len(self.action)

    def decision(self, i: int) -> Decision:
        audited = self.audited.get(i)
        if audited is not None:
            return audited
        return Decision(self.action[i], self.playback_key[i], first_seq=self.first_seq[i])


@dataclass
class DedupIndex:
    """The exact, bounded in-memory dedup index."""

    tolerance: float = 10.0
    hot_window: float = DEFAULT_HOT_WINDOW_S
    max_entries: int = DEFAULT_MAX_ENTRIES
    event_ids: dict[str, PlaybackRef] = field(default_factory=dict)
    steps: dict[StepKey, str] = field(default_factory=dict)  # step -> event_id that made it
    sessions: dict[SessionKey, PlaybackRef] = field(default_factory=dict)
    playbacks: dict[str, PlaybackRef] = field(default_factory=dict)
    by_cross: dict[CrossKey, list[PlaybackRef]] = field(default_factory=dict)
    newest_start: float = float("-inf")
    _buckets: dict[int, list[PlaybackRef]] = field(default_factory=lambda: defaultdict(list))
    _undo: list[tuple] = field(default_factory=list)

    # ------------------------------------------------------------------ horizon

    @property
    def horizon(self) -> float:
        """Playbacks starting before this are cold: their keys may have been evicted."""
        return self.newest_start - self.hot_window

    def is_cold(self, event: MediaEvent) -> bool:
        # A margin of the tolerance (and a minute) keeps a link partner that started a few
        # seconds before the horizon from being missed.
        return event.playback_start.timestamp() < self.horizon + self.tolerance + 60

    def cold_rows(self, keys: BatchKeys) -> list[int]:
        """The events of a batch that :meth:`is_cold` would call cold."""
        bound = self.horizon + self.tolerance + 60
        return [i for i, start in enumerate(keys.start) if start < bound]

    @property
    def entries(self) -> int:
        return len(self.event_ids) + len(self.steps) + len(self.sessions) + len(self.playbacks)

    # ------------------------------------------------------------------ decisions

    def decide(self, event: MediaEvent, seq: int) -> Decision:
        """Decide one event and record its keys (undoable until :meth:`commit`)."""
        event_id = event.event_id
        known = self.event_ids.get(event_id)
        if known is not None:
            return Decision(
                Action.DROP,
                known.key,
                Tier.EVENT_ID,
                "the exact event was already recorded",
                event_id,
                event.source,
                1.0,
                known.first_seq,
            )
        step = step_key(event)
        earlier = self.steps.get(step)
        if earlier is not None:
            ref = self.sessions.get(step[0])
            return Decision(
                Action.DROP,
                ref.key if ref is not None else "",
                Tier.SESSION_KEY,
                f"{event.source} re-reported the {event.event_type} step of session "
                f"{event.session_key}",
                earlier,
                event.source,
                1.0,
                ref.first_seq if ref is not None else 0,
            )
        session = step[0]
        ref = self.sessions.get(session)
        if ref is not None:
            decision = Decision(Action.FOLD, ref.key, first_seq=ref.first_seq)
        else:
            ref, decision = self._open_or_link(event, seq)
            self._add(_SESSION, ref, session)
        self._add(_EVENT, ref, event_id)
        self._add(_STEP, ref, step, event_id)
        return decision

    def decide_batch(self, keys: BatchKeys) -> BatchDecisions:
        """Decide a batch's events in stream order, exactly as :meth:`decide` would one by
        one, and record their keys (undoable until :meth:`commit`).

        Most events are settled by two dict look-ups (an exact repeat, a re-reported step)
        or a third (a session the index knows: fold); only the first event of an unknown
        session looks for link candidates. Keys are added in bulk after the pass.
        """
        n = len(keys)
        event_ids, steps, sessions = self.event_ids, self.steps, self.sessions
        session_keys = list(zip(keys.source, keys.server_id, keys.session_key, strict=True))
        step_keys = list(zip(session_keys, keys.event_type, keys.step, strict=True))
        action: list[Action] = [Action.DROP] * n
        playback_key: list[str] = [""] * n
        first_seq: list[int] = [0] * n
        audited: dict[int, Decision] = {}
        added: list[tuple[PlaybackRef, str, StepKey]] = []
        fold, drop = Action.FOLD, Action.DROP
        for i in range(n):
            event_id = keys.event_id[i]
            known = event_ids.get(event_id)
            if known is not None:
                playback_key[i] = known.key
                first_seq[i] = known.first_seq
                audited[i] = Decision(
                    drop,
                    known.key,
                    Tier.EVENT_ID,
                    "the exact event was already recorded",
                    event_id,
                    keys.source[i],
                    1.0,
                    known.first_seq,
                )
                continue
            step = step_keys[i]
            earlier = steps.get(step)
            if earlier is not None:
                ref = sessions.get(step[0])
                key = ref.key if ref is not None else ""
                seq0 = ref.first_seq if ref is not None else 0
                playback_key[i] = key
                first_seq[i] = seq0
                audited[i] = Decision(
                    drop,
                    key,
                    Tier.SESSION_KEY,
                    f"{keys.source[i]} re-reported the {keys.event_type[i]} step of session "
                    f"{keys.session_key[i]}",
                    earlier,
                    keys.source[i],
                    1.0,
                    seq0,
                )
                continue
            session = step[0]
            ref = sessions.get(session)
            if ref is not None:
                action[i] = fold
            else:
                ref, decision = self._open_or_link_at(keys, i)
                self._add(_SESSION, ref, session)
                action[i] = decision.action
                if decision.tier is not None:
                    audited[i] = decision
            playback_key[i] = ref.key
            first_seq[i] = ref.first_seq
            event_ids[event_id] = ref
            steps[step] = event_id
            added.append((ref, event_id, step))
        for ref, event_id, step in added:
            ref.event_ids.append(event_id)
            ref.steps.append(step)
        if added:
            self._undo.append((_BATCH, None, added))
        return BatchDecisions(action, playback_key, first_seq, audited)

    def _open_or_link_at(self, keys: BatchKeys, i: int) -> tuple[PlaybackRef, Decision]:
        cross = (keys.server_id[i], keys.user_id[i], keys.item[i], keys.machine_id[i])
        return self._open_or_link_keys(
            cross,
            keys.start[i],
            keys.source[i],
            keys.seq[i],
            keys.event_id[i],
            lambda: keys.opening_key(i),
        )

    def _open_or_link(self, event: MediaEvent, seq: int) -> tuple[PlaybackRef, Decision]:
        return self._open_or_link_keys(
            cross_key(event),
            event.playback_start.timestamp(),
            event.source,
            seq,
            event.event_id,
            lambda: event.correlation.encode(),
        )

    def _open_or_link_keys(
        self,
        cross: CrossKey,
        start: float,
        source: str,
        seq: int,
        event_id: str,
        opening_key: Callable[[], str],
    ) -> tuple[PlaybackRef, Decision]:
        best: PlaybackRef | None = None
        best_delta = 0.0
        for candidate in self.by_cross.get(cross, ()):
            delta = abs(candidate.start - start)
            if delta > self.tolerance or source in candidate.sources:
                continue
            if best is None or delta < best_delta:
                best, best_delta = candidate, delta
        if best is not None:
            best.sources.add(source)
            self._undo.append((_SOURCE, best, source))
            opener = best.opening_source
            return best, Decision(
                Action.LINK,
                best.key,
                Tier.CORRELATION,
                f"{source} reported a playback that {opener} opened, "
                f"starts {best_delta:.1f}s apart",
                best.opening_event_id,
                opener,
                round(1.0 - best_delta / self.tolerance, 4) if self.tolerance else 1.0,
                best.first_seq,
            )
        key = opening_key()
        ref = PlaybackRef(key, cross, start, {source}, seq, event_id)
        self._add_ref(ref, undoable=True)
        return ref, Decision(Action.OPEN, key, first_seq=seq)

    # ------------------------------------------------------------------ recording keys

    def remember_playback(self, ref: PlaybackRef) -> PlaybackRef:
        """Record a committed playback (used when loading from the database)."""
        existing = self.playbacks.get(ref.key)
        if existing is not None:
            existing.sources |= ref.sources
            return existing
        self._add_ref(ref, undoable=False)
        return ref

    def remember_event(self, event_id: str, step: StepKey, playback_key: str) -> None:
        """Record a committed event's keys (used when loading from the database)."""
        ref = self.playbacks.get(playback_key)
        if ref is None:
            return  # its playback is not loaded: the cold path will load both together
        if event_id not in self.event_ids:
            self.event_ids[event_id] = ref
            ref.event_ids.append(event_id)
        if step not in self.steps:
            self.steps[step] = event_id
            ref.steps.append(step)
        if step[0] not in self.sessions:
            self.sessions[step[0]] = ref
            ref.sessions.append(step[0])

    def forget_playback(self, key: str) -> None:
        """Drop a playback and all its keys (a restore refolded it: reload it after)."""
        ref = self.playbacks.get(key)
        if ref is not None:
            self._drop_ref(ref)

    def _add_ref(self, ref: PlaybackRef, *, undoable: bool) -> None:
        self.playbacks[ref.key] = ref
        self.by_cross.setdefault(ref.cross, []).append(ref)
        self._buckets[int(ref.start // _BUCKET_S)].append(ref)
        if ref.start > self.newest_start:
            self.newest_start = ref.start
        if undoable:
            self._undo.append((_REF, ref, None))

    def _add(self, family: int, ref: PlaybackRef, key, event_id: str = "") -> None:
        if family == _EVENT:
            self.event_ids[key] = ref
            ref.event_ids.append(key)
        elif family == _STEP:
            self.steps[key] = event_id
            ref.steps.append(key)
        else:
            self.sessions[key] = ref
            ref.sessions.append(key)
        self._undo.append((family, ref, key))

    # ------------------------------------------------------------------ transactions

    def commit(self) -> None:
        """The batch is durable: its keys stay. Then evict what fell out of the window."""
        self._undo.clear()
        self._evict()

    def rollback(self) -> None:
        """The batch did not commit: forget every key it added."""
        for family, ref, key in reversed(self._undo):
            if family == _EVENT:
                self.event_ids.pop(key, None)
                ref.event_ids.pop()
            elif family == _STEP:
                self.steps.pop(key, None)
                ref.steps.pop()
            elif family == _SESSION:
                self.sessions.pop(key, None)
                ref.sessions.pop()
            elif family == _SOURCE:
                ref.sources.discard(key)
            elif family == _BATCH:
                for added_ref, event_id, step in reversed(key):
                    self.event_ids.pop(event_id, None)
                    added_ref.event_ids.pop()
                    self.steps.pop(step, None)
                    added_ref.steps.pop()
            else:
                self._drop_ref(ref)
        self._undo.clear()
        self.newest_start = max((r.start for r in self.playbacks.values()), default=float("-inf"))

    def _evict(self) -> None:
        if not self.playbacks:
            return
        horizon_bucket = int(self.horizon // _BUCKET_S)
        newest_bucket = int(self.newest_start // _BUCKET_S)
        for bucket in sorted(self._buckets):
            over_cap = self.entries > self.max_entries
            if (bucket >= horizon_bucket and not over_cap) or bucket >= newest_bucket:
                break  # never evict the newest hour
            for ref in self._buckets.pop(bucket):
                self._forget(ref)
            if over_cap:
                # the horizon moves forward with the cap so cold events reach the database
                self.hot_window = min(self.hot_window, self.newest_start - (bucket + 1) * _BUCKET_S)

    def _forget(self, ref: PlaybackRef) -> None:
        for event_id in ref.event_ids:
            if self.event_ids.get(event_id) is ref:
                del self.event_ids[event_id]
        for step in ref.steps:
            self.steps.pop(step, None)
        for session in ref.sessions:
            if self.sessions.get(session) is ref:
                del self.sessions[session]
        if self.playbacks.get(ref.key) is ref:
            del self.playbacks[ref.key]
        peers = self.by_cross.get(ref.cross)
        if peers is not None:
            peers[:] = [p for p in peers if p is not ref]
            if not peers:
                del self.by_cross[ref.cross]

    def _drop_ref(self, ref: PlaybackRef) -> None:
        self._forget(ref)
        bucket = self._buckets.get(int(ref.start // _BUCKET_S))
        if bucket is not None and ref in bucket:
            bucket.remove(ref)


__all__ = [
    "Action",
    "BatchDecisions",
    "BatchKeys",
    "Decision",
    "DedupIndex",
    "PlaybackRef",
    "Tier",
    "session_key",
]
