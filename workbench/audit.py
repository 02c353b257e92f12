"""The dedup audit: which reports were dropped or linked, why, and a user's verdict on them.

Every drop (tiers ``event_id`` and ``session_key``) and every link (tier ``correlation``) is a
row of ``dedupe_audit_log`` (docs/architecture.md, invariant 4). Here you filter them
(:func:`entries`), count them (:func:`summary`), look at the dropped or linked report next to
the one that was kept (:func:`side_by_side`), and give a verdict: :func:`confirm` (the
decision was right) or :func:`restore` (it was wrong). A verdict is not an ``UPDATE``: it is
an :class:`ingestor.records.AuditDecision` published to the stream (``audit.confirm``,
``audit.restore``), which the ingestor projects like any event, so the projection changes and a
replay of the log reproduces it.

What a restore does:

* a **link** (two sources reporting one playback) is undone: the linked source's reports
  become a playback of their own;
* a **session-key drop** (a source re-reporting a step) is undone: the dropped report is put
  back into its playback;
* an **exact duplicate** (the same ``event_id`` again) cannot be restored: that very event is
  already in the projection.

Statuses: ``auto_dedupe`` (awaiting review), ``user_confirmed``, ``user_restored``.

>>> import asyncio, tempfile
>>> from pathlib import Path
>>> from workbench.replay import replay, simulated_log
>>> tmp = tempfile.TemporaryDirectory()
>>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
>>> entries(r, tier="correlation").select("source", "kept_source", "status").row(0)
('tautulli', 'plex', 'auto_dedupe')
>>> summary(r).by_tier.rows()
[('correlation', 'link', 5), ('session_key', 'drop', 2)]
>>> r.close(); tmp.cleanup()
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
from nats.aio.client import Client
from nats.js import JetStreamContext

from ingestor.events import MediaEvent
from ingestor.records import AuditDecision, DecisionAction, encode_record
from workbench.db import ProjectionSource
from workbench.db import choices as _choices
from workbench.db import query as _query
from workbench.errors import AuditError
from workbench.replay import aware_utc

Source = ProjectionSource

TIERS = ("event_id", "session_key", "correlation")
STATUSES = ("auto_dedupe", "user_confirmed", "user_restored")

# the columns :func:`entries` returns, in this order (raw_payload is left to side_by_side)
ENTRY_COLUMNS = [
    "audit_id",
    "seq",
    "recorded_at",
    "tier",
    "action",
    "reason",
    "status",
    "source",
    "kept_source",
    "similarity_score",
    "event_type",
    "event_id",
    "kept_event_id",
    "kept_correlation_key",
    "server_id",
    "user_id",
    "username",
    "media_type",
    "title",
    "machine_id",
    "occurred_at",
    "started_at",
    "resolved_by",
    "resolved_at",
    "resolution_notes",
]


# --------------------------------------------------------------------------- reading


def entries(
    db: Source,
    *,
    tier: str | Sequence[str] | None = None,
    reason: str | None = None,
    source: str | None = None,
    user: str | None = None,
    status: str | Sequence[str] | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    payloads: bool = False,
) -> pl.DataFrame:
    """Audit entries, oldest first, filtered.

    ``tier`` and ``status``: one value or several (see :data:`TIERS`, :data:`STATUSES`).
    ``reason``: a case-insensitive substring of the reason. ``source``: the dropped or linked
    report's source, or the kept one's. ``user``: a ``user_id`` or a ``username``. ``since``
    and ``until`` (inclusive, timezone-aware) bound when the log recorded the report.
    ``payloads=True`` adds ``raw_payload`` (the report as JSON) and ``kept_raw_payload``
    (the kept report), as :class:`workbench.widgets.AuditBrowser` shows them side by side.

    >>> import asyncio, tempfile
    >>> from pathlib import Path
    >>> from workbench.replay import replay, simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
    >>> entries(r, tier="session_key", user="bruno").select("source", "event_type").rows()
    [('plex', 'pause')]
    >>> entries(r, reason="apart", status="auto_dedupe")["tier"].unique().to_list()
    ['correlation']
    >>> r.close(); tmp.cleanup()
    """
    tiers = _choices("tier", tier, TIERS)
    statuses = _choices("status", status, STATUSES)
    params: dict[str, Any] = {
        "tiers": tiers,
        "statuses": statuses,
        "reason": f"%{reason.lower()}%" if reason else None,
        "source": source,
        "user": user,
        "since": aware_utc(since, "since") if since is not None else None,
        "until": aware_utc(until, "until") if until is not None else None,
    }
    columns = ", ".join(f"a.{name}" for name in ENTRY_COLUMNS)
    if payloads:
        columns += (
            ", a.raw_payload, (SELECT payload FROM media_events e"
            " WHERE e.event_id = a.kept_event_id ORDER BY seq LIMIT 1) AS kept_raw_payload"
        )
    sql = f"""
        SELECT {columns} FROM dedupe_audit_log a
        WHERE ($tiers IS NULL OR list_contains($tiers, tier))
          AND ($statuses IS NULL OR list_contains($statuses, status))
          AND ($reason IS NULL OR lower(reason) LIKE $reason)
          AND ($source IS NULL OR source = $source OR kept_source = $source)
          AND ($user IS NULL OR user_id = $user OR username = $user)
          AND ($since IS NULL OR recorded_at >= $since)
          AND ($until IS NULL OR recorded_at <= $until)
        ORDER BY a.seq, a.audit_id
    """
    return _query(db, sql, params)


@dataclass(frozen=True)
class AuditSummary:
    """Counts of the audit log: ``by_tier`` (tier, action, entries), ``by_source_pair``
    (source, kept_source, tier, entries), ``by_status`` (status, entries), and the
    reviewed figures: ``confirmed``, ``restored``, ``pending`` and ``accuracy`` =
    confirmed / (confirmed + restored), ``None`` before any review."""

    by_tier: pl.DataFrame
    by_source_pair: pl.DataFrame
    by_status: pl.DataFrame
    confirmed: int
    restored: int
    pending: int

    @property
    def accuracy(self) -> float | None:
        reviewed = self.confirmed + self.restored
        return self.confirmed / reviewed if reviewed else None


def summary(db: Source) -> AuditSummary:
    """Counts by tier, by source pair and by status, and the review accuracy.

    >>> import asyncio, tempfile
    >>> from pathlib import Path
    >>> from workbench.replay import replay, simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
    >>> s = summary(r)
    >>> s.by_source_pair.filter(pl.col("tier") == "correlation").rows()
    [('tautulli', 'plex', 'correlation', 5)]
    >>> s.pending, s.accuracy
    (7, None)
    >>> r.close(); tmp.cleanup()
    """
    by_tier = _query(
        db,
        "SELECT tier, action, count(*) AS entries FROM dedupe_audit_log"
        " GROUP BY ALL ORDER BY tier, action",
        {},
    )
    by_pair = _query(
        db,
        "SELECT source, kept_source, tier, count(*) AS entries FROM dedupe_audit_log"
        " GROUP BY ALL ORDER BY entries DESC, source, kept_source, tier",
        {},
    )
    by_status = _query(
        db,
        "SELECT status, count(*) AS entries FROM dedupe_audit_log GROUP BY ALL ORDER BY status",
        {},
    )
    count = dict(by_status.iter_rows())
    return AuditSummary(
        by_tier=by_tier,
        by_source_pair=by_pair,
        by_status=by_status,
        confirmed=int(count.get("user_confirmed", 0)),
        restored=int(count.get("user_restored", 0)),
        pending=int(count.get("auto_dedupe", 0)),
    )


def side_by_side(db: Source, audit_id: str) -> pl.DataFrame:
    """The dropped or linked report next to the one that was kept: one row per event field
    (``field``, ``reported``, ``kept``, ``differs``), values as text.

    The kept report is the event the entry names (``kept_event_id``): for a drop, the
    earlier report of the same step; for a link, the report that opened the playback.

    Raises :class:`AuditError` for an unknown ``audit_id``.

    >>> import asyncio, tempfile
    >>> from pathlib import Path
    >>> from workbench.replay import replay, simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
    >>> link = entries(r, tier="correlation")["audit_id"][0]
    >>> view = side_by_side(r, link)
    >>> view.filter(pl.col("field").is_in(["source", "user_id"])).rows()
    [('source', 'tautulli', 'plex', True), ('user_id', '29466577', '29466577', False)]
    >>> r.close(); tmp.cleanup()
    """
    rows = _query(
        db,
        """
        SELECT a.raw_payload AS reported,
               (SELECT payload FROM media_events e WHERE e.event_id = a.kept_event_id
                ORDER BY seq LIMIT 1) AS kept
        FROM dedupe_audit_log a WHERE a.audit_id = $id
        """,
        {"id": audit_id},
    )
    if rows.height == 0:
        raise AuditError(f"no audit entry {audit_id!r}")
    reported = _fields(rows["reported"][0])
    kept = _fields(rows["kept"][0])
    names = [name for name in MediaEvent.__struct_fields__ if name != "raw_payload"]
    left = [_text(reported.get(name)) for name in names]
    right = [_text(kept.get(name)) for name in names]
    return pl.DataFrame(
        {
            "field": names,
            "reported": left,
            "kept": right,
            "differs": [a != b for a, b in zip(left, right, strict=True)],
        }
    )


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Receipt:
    """A verdict the stream stored: the decision and its stream sequence; ``applied`` says
    whether the live projection showed it when the workbench last looked (``None``: not
    asked). ``str(receipt)`` says it in words.

    >>> from datetime import UTC, datetime
    >>> decision = AuditDecision.make("3f2a", "confirm", datetime(2026, 1, 9, tzinfo=UTC))
    >>> print(Receipt(decision, 5210, False, applied=True))
    the stream stored the verdict as message 5210, and the live projection shows it
    """

    decision: AuditDecision
    seq: int
    duplicate: bool  # the stream already held this very decision
    applied: bool | None = None

    def __str__(self) -> str:
        stored = (
            f"the stream already held this verdict (message {self.seq})"
            if self.duplicate
            else f"the stream stored the verdict as message {self.seq}"
        )
        if self.applied is None:
            then = "; the projection shows it once the ingestor has applied it"
        elif self.applied:
            then = ", and the live projection shows it"
        else:
            then = "; the live projection has not applied it yet (it will)"
        return f"{stored}{then}"


def check(entry: dict[str, Any] | None, action: DecisionAction, audit_id: str) -> None:
    """Refuse a verdict that cannot apply, with the reason (the projection would ignore
    it); ``entry`` is the audit row (at least ``tier`` and ``status``) or None."""
    if action not in ("confirm", "restore"):
        raise AuditError(f"a verdict is 'confirm' or 'restore', not {action!r}")
    if entry is None:
        raise AuditError(f"no audit entry {audit_id!r}")
    if entry["status"] == "user_restored":
        raise AuditError(f"audit entry {audit_id} was already restored; that cannot be undone")
    if action == "restore" and entry["tier"] == "event_id":
        raise AuditError(
            f"audit entry {audit_id} is an exact duplicate (the same event_id): "
            "the event itself is already in the projection, there is nothing to restore"
        )


def lookup(db: Source, audit_id: str) -> dict[str, Any] | None:
    """The audit row ``audit_id`` as a dict, or None."""
    frame = _query(db, "SELECT * FROM dedupe_audit_log WHERE audit_id = $id", {"id": audit_id})
    return frame.row(0, named=True) if frame.height else None


async def publish_record(
    stream: Client | JetStreamContext,
    subject: str,
    data: bytes,
    record_id: str,
    *,
    timeout: float = 10,
) -> tuple[int, bool]:
    """Publish a user's record (a verdict, an identity record) to ``MEDIA_EVENTS`` with
    ``Nats-Msg-Id`` = ``record_id``; return (its stream sequence, whether JetStream took it
    for a repeat) once JetStream stored it."""
    js = stream.jetstream(timeout=timeout) if isinstance(stream, Client) else stream
    ack = await js.publish(subject, data, timeout=timeout, headers={"Nats-Msg-Id": record_id})
    return ack.seq, bool(ack.duplicate)


async def publish_decision(
    stream: Client | JetStreamContext, decision: AuditDecision, *, timeout: float = 10
) -> Receipt:
    """Publish ``decision`` to ``MEDIA_EVENTS`` (``Nats-Msg-Id`` = its id) and return when
    JetStream stored it."""
    data = encode_record(decision)
    seq, repeat = await publish_record(
        stream, decision.subject, data, decision.decision_id, timeout=timeout
    )
    return Receipt(decision, seq, repeat)


async def confirm(
    stream: Client | JetStreamContext,
    audit_id: str,
    *,
    db: Source | None = None,
    by: str = "",
    notes: str = "",
    at: datetime | None = None,
) -> Receipt:
    """Publish "this drop or link was right" for ``audit_id``.

    With ``db`` (the projection or a replay), the entry is checked first and a verdict that
    cannot apply raises :class:`AuditError` without publishing. ``at`` (default now) is the
    decision's event time. The ingestor sets the entry's status to ``user_confirmed``.
    """
    return await _decide(stream, audit_id, "confirm", db=db, by=by, notes=notes, at=at)


async def restore(
    stream: Client | JetStreamContext,
    audit_id: str,
    *,
    db: Source | None = None,
    by: str = "",
    notes: str = "",
    at: datetime | None = None,
) -> Receipt:
    """Publish "this drop or link was wrong" for ``audit_id``: the ingestor un-links the
    playback or puts the dropped report back (see the module's docstring) and sets the
    entry's status to ``user_restored``. Checked first against ``db`` when given."""
    return await _decide(stream, audit_id, "restore", db=db, by=by, notes=notes, at=at)


async def _decide(
    stream: Client | JetStreamContext,
    audit_id: str,
    action: DecisionAction,
    *,
    db: Source | None,
    by: str,
    notes: str,
    at: datetime | None,
) -> Receipt:
    if db is not None:
        check(lookup(db, audit_id), action, audit_id)
    when = aware_utc(at, "at") if at is not None else datetime.now(UTC)
    decision = AuditDecision.make(audit_id, action, when, by=by, notes=notes)
    return await publish_decision(stream, decision)


SELECT_STALE = """
SELECT correlation_key, server_id, user_id, username, media_type, title, grandparent_title,
       source, sources, started_at, stopped_at AS last_report_at, stale_at, played_seconds,
       percent_complete, event_count
FROM playback_events WHERE state = 'stale' ORDER BY started_at, correlation_key
"""


def stale(db: Source) -> pl.DataFrame:
    """The playbacks whose stop never came, counted as stopped at their last report (the
    stale rule: ``ingestor.projection.fold``, ``STALE_AFTER``): ``correlation_key``, who and
    what, ``source``/``sources``, ``started_at``, ``last_report_at`` (where their watch time
    ends), ``stale_at`` (when the projection's newest event time passed the limit),
    ``played_seconds``, ``percent_complete``, ``event_count``. A later report of one of them
    folds it again: a stop stops it where it says.

    >>> import asyncio, tempfile
    >>> from pathlib import Path
    >>> from workbench.replay import replay, simulated_log
    >>> tmp = tempfile.TemporaryDirectory()
    >>> r = asyncio.run(replay(simulated_log(Path(tmp.name)), progress=False))
    >>> stale(r).columns[:4]
    ['correlation_key', 'server_id', 'user_id', 'username']
    >>> r.close(); tmp.cleanup()
    """
    return _query(db, SELECT_STALE, {})


# --------------------------------------------------------------------------- helpers


def _fields(payload: str | None) -> dict[str, Any]:
    return json.loads(payload) if payload else {}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


__all__ = [
    "STATUSES",
    "TIERS",
    "AuditError",
    "AuditSummary",
    "Receipt",
    "check",
    "confirm",
    "entries",
    "lookup",
    "publish_decision",
    "publish_record",
    "restore",
    "side_by_side",
    "stale",
    "summary",
]
