"""Projection snapshots: copies of a replay's projection as of sequences it passed, so a later
replay to an instant starts from the newest copy the log had recorded by then.

A replay visits every event in Python (decode, dedup, fold): about 17,000 events a second on
2 cores, so replaying half a million events takes half a minute. A time slider, or a report
run every morning, replays the same prefix of the log again and again. With a snapshot
directory, :func:`workbench.replay.replay` (recorded clock) saves a copy of its projection
file every ``chunk`` events, and starts the next replay from the newest copy whose last
message the log had recorded by ``until``: it then projects only the messages after it,
with the dedup index loaded from the copy, exactly as a restarted ingestor resumes from its
checkpoint (ARCHITECTURE invariant 1, which the kill -9 test holds the projection to).

A copy is named after what it is valid for: the projection's schema version, the dedup
tolerance, the sequence it ends at, when the log recorded that message, and a hash of that
message. Before a copy is used, the log is read at its sequence and the hash compared, so a
copy made from another log (or an archive rebuilt since) is never used.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingestor.eventlog import EventLog
from ingestor.pipeline import Message
from ingestor.projection import Projection
from ingestor.projection.store import PROJECTION_SCHEMA_VERSION

log = logging.getLogger(__name__)

_NAME = re.compile(
    r"^proj-v(?P<version>\d+)-tol(?P<tolerance>[0-9.]+)-(?P<seq>\d{12})-(?P<recorded>\d+)"
    r"-(?P<digest>[0-9a-f]{16})\.duckdb$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Snapshot:
    seq: int
    recorded_at: datetime
    digest: str
    path: Path


def message_digest(message: Message) -> str:
    """A short hash of a message's subject and bytes (what a snapshot ends at)."""
    content = message.subject.encode() + b"\0" + message.data
    return hashlib.blake2b(content, digest_size=8).hexdigest()


class Snapshots:
    """The snapshots in ``directory`` that a replay with ``tolerance`` may use."""

    def __init__(self, directory: Path, tolerance: float) -> None:
        self.directory = Path(directory)
        self.tolerance = float(tolerance)

    def _name(self, seq: int, recorded_at: datetime, digest: str) -> str:
        micros = (recorded_at - _EPOCH) // timedelta(microseconds=1)
        return (
            f"proj-v{PROJECTION_SCHEMA_VERSION}-tol{self.tolerance:g}-{seq:012d}-{micros}"
            f"-{digest}.duckdb"
        )

    def list(self) -> list[Snapshot]:
        """The usable snapshots (this schema version and tolerance), by sequence."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match is None or int(match["version"]) != PROJECTION_SCHEMA_VERSION:
                continue
            if float(match["tolerance"]) != self.tolerance:
                continue
            recorded = _EPOCH + timedelta(microseconds=int(match["recorded"]))
            found.append(Snapshot(int(match["seq"]), recorded, match["digest"], path))
        return sorted(found, key=lambda s: s.seq)

    async def restore(self, event_log: EventLog, target: Path, until: datetime | None) -> int:
        """Copy the newest snapshot recorded by ``until`` (any, for None) that matches the log
        to ``target``; its sequence, or 0 when there is none."""
        for snapshot in reversed(self.list()):
            if until is not None and snapshot.recorded_at > until:
                continue
            message = await _message_at(event_log, snapshot.seq)
            if message is None or message_digest(message) != snapshot.digest:
                log.warning("snapshot %s does not match this log: not used", snapshot.path.name)
                continue
            await asyncio.to_thread(shutil.copyfile, snapshot.path, target)
            log.info("replay starts from snapshot %s", snapshot.path.name)
            return snapshot.seq
        return 0

    async def save(self, projection: Projection, target: Path, message: Message) -> None:
        """Keep a copy of ``projection`` (the file ``target``), which has just committed
        everything up to ``message``. Written under a temporary name and renamed."""
        name = self._name(message.seq, message.recorded_at, message_digest(message))
        final = self.directory / name
        if final.exists():
            return

        def copy() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            projection.con.execute("CHECKPOINT")  # everything in the file, nothing in the WAL
            partial = final.with_name(final.name + ".tmp")
            shutil.copyfile(target, partial)
            os.replace(partial, final)

        try:
            await asyncio.to_thread(copy)
        except OSError as exc:  # a cache: a full disk must not fail the replay
            log.warning("could not save a replay snapshot in %s: %s", self.directory, exc)


async def _message_at(event_log: EventLog, seq: int) -> Message | None:
    async for batch in event_log.messages(seq, seq):
        for message in batch:
            if message.seq == seq:
                return message
    return None


__all__ = ["Snapshot", "Snapshots", "message_digest"]
