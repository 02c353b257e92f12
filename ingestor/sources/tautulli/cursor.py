"""Where the history sync of one Tautulli stands, and what a pass did.

Ascending ``started`` order keeps offsets stable while new rows arrive (new rows mostly start
after what was read). The cursor keeps the latest ``started`` read, the lookback floor
(``TAUTULLI_LOOKBACK``: rows starting before ``first sync - lookback`` are never emitted;
``all`` has no floor), and the ids of the rows read by the last complete pass plus the current
one, as ranges. A pass asks ``after = date(cursor - 2 days)`` (day granularity, in Tautulli's
local time zone: two days cover any zone), re-reads that overlap, and emits only rows whose id
it has not read before. It is persisted in the sync's state file (:mod:`.sync`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

HISTORY_OVERLAP = timedelta(days=2)


def id_ranges(ids: Iterable[int]) -> list[list[int]]:
    """A set of ids as sorted inclusive ``[first, last]`` runs (compact in JSON).

    >>> id_ranges({5, 1, 2, 3, 9, 10})
    [[1, 3], [5, 5], [9, 10]]
    """
    runs: list[list[int]] = []
    for value in sorted(ids):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return runs


def ids_from_ranges(runs: Iterable[Iterable[int]]) -> set[int]:
    """The inverse of :func:`id_ranges`.

    >>> sorted(ids_from_ranges([[1, 3], [9, 10]]))
    [1, 2, 3, 9, 10]
    """
    ids: set[int] = set()
    for first, last in runs:
        ids.update(range(int(first), int(last) + 1))
    return ids


@dataclass
class HistoryCursor:
    """Where the history sync of one server stands."""

    cursor: int | None = None  # the latest ``started`` read
    floor: int | None = None  # rows starting before this are outside the lookback
    lookback: float | None = None  # the lookback the floor was set for (None: all)
    initialised: bool = False
    previous: set[int] = field(default_factory=set)  # ids read by the last complete pass
    current: set[int] = field(default_factory=set)  # ids read by the pass under way

    def seen(self, row_id: int) -> bool:
        return row_id in self.current or row_id in self.previous

    def begin(self, lookback: float | None, now: datetime) -> None:
        """Start a pass: set the floor on the first one, widen it if the lookback grew."""
        self.previous |= self.current
        self.current = set()
        wanted = None if lookback is None else int(now.timestamp() - lookback)
        if not self.initialised:
            self.floor, self.lookback, self.initialised = wanted, lookback, True
            return
        widened = lookback is None or (self.lookback is not None and lookback > self.lookback)
        if self.floor is not None and widened and (wanted is None or wanted < self.floor):
            log.info("Tautulli lookback widened: reading history again from the new floor")
            self.floor, self.lookback, self.cursor = wanted, lookback, None

    def after(self) -> str | None:
        """The ``after`` date of the next request (None: no lower bound)."""
        anchor = self.cursor if self.cursor is not None else self.floor
        if anchor is None:
            return None
        return (datetime.fromtimestamp(anchor, UTC) - HISTORY_OVERLAP).strftime("%Y-%m-%d")

    def complete(self) -> None:
        """A pass read everything after its ``after``: later passes only need its ids."""
        self.previous, self.current = self.current, set()

    def to_json(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "floor": self.floor,
            "lookback": self.lookback,
            "initialised": self.initialised,
            "seen": id_ranges(self.previous | self.current),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HistoryCursor:
        return cls(
            cursor=data.get("cursor"),
            floor=data.get("floor"),
            lookback=data.get("lookback"),
            initialised=bool(data.get("initialised")),
            previous=ids_from_ranges(data.get("seen") or []),
        )


@dataclass
class PassResult:
    """What one history pass or activity poll did."""

    rows: int = 0
    events: int = 0
    stored: int = 0
    duplicate: int = 0
    skipped_in_progress: int = 0
    skipped_grouped: int = 0
    invalid: int = 0
    pages: int = 0


__all__ = ["HISTORY_OVERLAP", "HistoryCursor", "PassResult", "id_ranges", "ids_from_ranges"]
