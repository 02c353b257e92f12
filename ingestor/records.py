"""The stream's two other record kinds: dedup audit decisions (``audit.>``) and detection
alerts (``alert.>``).

They share ``MEDIA_EVENTS`` with the media events (``playback.>``) so that the log has one
total order: a replay meets a user's *restore* after the link it undoes and before the
events that follow it, exactly as the live projection did (ARCHITECTURE invariants 2 and 4).
Both have deterministic ids (their JetStream ``Nats-Msg-Id``), a ``schema_version``, and an
``occurred_at`` (UTC), so a replay's "occurred" clock filters them like events.

>>> from datetime import UTC, datetime
>>> d = AuditDecision.make("0123abcd", "confirm", datetime(2026, 1, 5, 21, tzinfo=UTC), by="ana")
>>> d.subject, d.decision_id == AuditDecision.make(
...     "0123abcd", "confirm", datetime(2026, 1, 5, 21, tzinfo=UTC), by="ana").decision_id
('audit.confirm', True)
>>> decode_record("audit.confirm", encode_record(d)) == d
True
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from ingestor.errors import InvalidEvent
from ingestor.events import make_event_id, subject_token

AUDIT_PREFIX = "audit."
ALERT_PREFIX = "alert."
DecisionAction = Literal["confirm", "restore"]
DECISION_ACTIONS: tuple[str, ...] = ("confirm", "restore")
Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")


class AuditDecision(msgspec.Struct, kw_only=True, frozen=True):
    """A user's verdict on one ``dedupe_audit_log`` entry.

    ``confirm``: the drop or link was right (the entry's status becomes ``user_confirmed``).
    ``restore``: it was wrong. A restored *link* splits the linked source's reports off into
    a playback of their own; a restored *session-key drop* puts the dropped report back into
    its playback. An exact duplicate (tier ``event_id``) cannot be restored: the very same
    event is already in the projection.
    """

    decision_id: str
    audit_id: str
    action: DecisionAction
    occurred_at: datetime  # when the user decided (UTC)
    decided_by: str = ""
    notes: str = ""
    schema_version: int = 1

    @classmethod
    def make(
        cls,
        audit_id: str,
        action: DecisionAction,
        at: datetime,
        *,
        by: str = "",
        notes: str = "",
    ) -> AuditDecision:
        if action not in DECISION_ACTIONS:
            raise ValueError(f"action must be 'confirm' or 'restore', got {action!r}")
        at = _utc(at)
        decision_id = make_event_id("audit-decision", audit_id, action, at.isoformat())
        return cls(
            decision_id=decision_id,
            audit_id=audit_id,
            action=action,
            occurred_at=at,
            decided_by=by,
            notes=notes,
        )

    @property
    def record_id(self) -> str:
        return self.decision_id

    @property
    def subject(self) -> str:
        return f"audit.{self.action}"


class Alert(msgspec.Struct, kw_only=True, frozen=True):
    """A detection rule's finding about a user's playback(s).

    ``alert_id`` is deterministic (the rule and the events that triggered it), so running
    detection twice over the same events yields the same ids and the projection keeps one.
    ``occurred_at`` is the event time of the triggering event, never the wall clock.
    """

    alert_id: str
    rule: str
    severity: Severity
    occurred_at: datetime
    user_id: str = ""
    username: str = ""
    server_id: str = ""
    message: str = ""
    event_ids: list[str] = msgspec.field(default_factory=list)
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    schema_version: int = 1

    @property
    def record_id(self) -> str:
        return self.alert_id

    @property
    def subject(self) -> str:
        return f"alert.{subject_token(self.rule)}"


Record = AuditDecision | Alert

_decoders = {
    AuditDecision: msgspec.json.Decoder(AuditDecision),
    Alert: msgspec.json.Decoder(Alert),
}
_encoder = msgspec.json.Encoder()


def record_kind(subject: str) -> type[AuditDecision] | type[Alert] | None:
    """The record type a subject carries; None for media events (``playback.>`` or none)."""
    if subject.startswith(AUDIT_PREFIX):
        return AuditDecision
    if subject.startswith(ALERT_PREFIX):
        return Alert
    return None


def encode_record(record: Record) -> bytes:
    return _encoder.encode(record)


def decode_record(subject: str, data: bytes) -> Record:
    """Decode and check a record; :class:`InvalidEvent` (permanent) when it can never be read."""
    kind = record_kind(subject)
    if kind is None:
        raise InvalidEvent(f"{subject!r} is not an audit or alert subject")
    try:
        record = _decoders[kind].decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidEvent(f"undecodable {kind.__name__}: {exc}") from None
    if record.schema_version != 1:
        version = record.schema_version
        raise InvalidEvent(f"{kind.__name__} schema_version {version} is not supported")
    if record.occurred_at.tzinfo is None:
        raise InvalidEvent(f"{kind.__name__}.occurred_at has no time zone")
    if isinstance(record, AuditDecision) and not record.audit_id:
        raise InvalidEvent("AuditDecision.audit_id is empty")
    if isinstance(record, Alert) and (not record.alert_id or record.severity not in SEVERITIES):
        raise InvalidEvent("Alert needs an alert_id and a known severity")
    return record


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("a decision time must be timezone-aware")
    return at.astimezone(UTC)


__all__ = [
    "ALERT_PREFIX",
    "AUDIT_PREFIX",
    "Alert",
    "AuditDecision",
    "Record",
    "decode_record",
    "encode_record",
    "record_kind",
]
