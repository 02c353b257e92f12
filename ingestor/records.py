"""The stream's other record kinds: dedup audit decisions (``audit.>``), detection alerts
(``alert.>``), identity records (``identity.>``: one person's accounts, merged or unmerged)
and erasures (``erasure.>``: a user forgotten, named by digest only).

They share ``MEDIA_EVENTS`` with the media events (``playback.>``) so that the log has one
total order: a replay meets a user's *restore* after the link it undoes and before the
events that follow it, exactly as the live projection did (docs/architecture.md,
invariants 2 and 4).
Both have deterministic ids (their JetStream ``Nats-Msg-Id``), a ``schema_version``, and an
``occurred_at`` (UTC), so a replay's "occurred" clock filters them like events.

>>> from datetime import UTC, datetime
>>> d = AuditDecision.make("0123abcd", "confirm", datetime(2026, 1, 5, 21, tzinfo=UTC), by="ana")
>>> d.subject, d.decision_id == AuditDecision.make(
...     "0123abcd", "confirm", datetime(2026, 1, 5, 21, tzinfo=UTC), by="ana").decision_id
('audit.confirm', True)
>>> decode_record("audit.confirm", encode_record(d)) == d
True
>>> m = IdentityRecord.make("merge", "Ana", [("plex-1", "17"), ("jf-2", "a9")],
...                         datetime(2026, 1, 6, 9, tzinfo=UTC), by="admin")
>>> m.subject, [(a.server_id, a.user_id) for a in m.accounts]
('identity.merge', [('jf-2', 'a9'), ('plex-1', '17')])
>>> decode_record("identity.merge", encode_record(m)) == m
True
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from ingestor.errors import InvalidEvent
from ingestor.events import make_event_id, subject_token

AUDIT_PREFIX = "audit."
ALERT_PREFIX = "alert."
IDENTITY_PREFIX = "identity."
ERASURE_PREFIX = "erasure."
DecisionAction = Literal["confirm", "restore"]
DECISION_ACTIONS: tuple[str, ...] = ("confirm", "restore")
IdentityAction = Literal["merge", "unmerge"]
IDENTITY_ACTIONS: tuple[str, ...] = ("merge", "unmerge")
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


class Account(msgspec.Struct, frozen=True, order=True):
    """One user account on one media server: a structured pair, never a string to split
    (user ids belong to their server, so ``user_id`` alone names no one)."""

    server_id: str
    user_id: str


class IdentityRecord(msgspec.Struct, kw_only=True, frozen=True):
    """A user's statement that several accounts are one person (``merge``), or no longer
    (``unmerge``); Tautulli#2019: one person as a Plex account on two servers and a
    Jellyfin user.

    ``merge``: each account now belongs to ``person`` (an account belongs to at most one
    person at a time, so merging it moves it from any other). ``unmerge``: each account
    leaves ``person``; no accounts means all the accounts ``person`` has when the record is
    applied. A person is named by ``person`` (its name is its id). ``accounts`` are kept
    sorted and without repeats, so the same statement always has the same ``record_id``.
    """

    record_id: str
    action: IdentityAction
    person: str
    accounts: tuple[Account, ...] = ()
    occurred_at: datetime  # when the user decided (UTC)
    decided_by: str = ""
    notes: str = ""
    schema_version: int = 1

    @classmethod
    def make(
        cls,
        action: IdentityAction,
        person: str,
        accounts: Iterable[Account | tuple[str, str]],
        at: datetime,
        *,
        by: str = "",
        notes: str = "",
    ) -> IdentityRecord:
        """Raises ValueError for an unknown action, an empty person, an account that is not
        a ``(server_id, user_id)`` pair of non-empty strings, or a merge of no accounts."""
        if action not in IDENTITY_ACTIONS:
            raise ValueError(f"action must be 'merge' or 'unmerge', got {action!r}")
        person = person.strip() if isinstance(person, str) else ""
        if not person:
            raise ValueError("a person needs a name")
        pairs = tuple(sorted({_account(a) for a in accounts}))
        if action == "merge" and not pairs:
            raise ValueError("a merge needs at least one account")
        at = _utc(at)
        material = [[a.server_id, a.user_id] for a in pairs]
        record_id = make_event_id("identity", action, person, material, at.isoformat())
        return cls(
            record_id=record_id,
            action=action,
            person=person,
            accounts=pairs,
            occurred_at=at,
            decided_by=by,
            notes=notes,
        )

    @property
    def subject(self) -> str:
        return f"identity.{self.action}"


def _account(value: Account | tuple[str, str]) -> Account:
    if isinstance(value, Account):
        server_id, user_id = value.server_id, value.user_id
    elif isinstance(value, tuple | list) and len(value) == 2:
        server_id, user_id = value
    else:
        raise ValueError(f"an account is a (server_id, user_id) pair, got {value!r}")
    if not (isinstance(server_id, str) and isinstance(user_id, str) and server_id and user_id):
        raise ValueError(f"an account needs a server_id and a user_id, got {value!r}")
    return Account(server_id, user_id)


class ErasureRecord(msgspec.Struct, kw_only=True, frozen=True):
    """``ingestor erase``: forget one user's accounts (:mod:`ingestor.erasure`).

    It names the accounts only by digest (:func:`ingestor.erasure.account_digest`, SHA-256
    of the server id and the user id), never by name, email, address or id: the record stays
    in the log for good, and the log must keep no byte of the person. Applying it removes
    from the projection every row of an account whose digest it lists, as of its place in
    the stream (events of the account recorded later are kept: a new report is new
    consent). The counts say what ``erase`` removed from the log, so the projection's
    ``erasure_log`` row is the same live and at a replay.
    """

    record_id: str
    accounts: tuple[str, ...]  # digests of (server_id, user_id), sorted, no repeats
    occurred_at: datetime  # when erase ran (UTC)
    events: int = 0  # media events deleted from the stream and the archive
    records: int = 0  # alerts and identity records naming the accounts, deleted
    dead_letters: int = 0  # dead letters holding their payloads, deleted
    schema_version: int = 1

    @classmethod
    def make(
        cls,
        accounts: Iterable[str],
        at: datetime,
        *,
        events: int = 0,
        records: int = 0,
        dead_letters: int = 0,
    ) -> ErasureRecord:
        digests = tuple(sorted(set(accounts)))
        if not digests or not all(isinstance(d, str) and len(d) == 64 for d in digests):
            raise ValueError("an erasure names at least one account digest (64 hex digits)")
        at = _utc(at)
        record_id = make_event_id("erasure", "", list(digests), at.isoformat())
        return cls(
            record_id=record_id,
            accounts=digests,
            occurred_at=at,
            events=events,
            records=records,
            dead_letters=dead_letters,
        )

    @property
    def subject(self) -> str:
        return "erasure.user"


Record = AuditDecision | Alert | IdentityRecord | ErasureRecord

_decoders = {
    AuditDecision: msgspec.json.Decoder(AuditDecision),
    Alert: msgspec.json.Decoder(Alert),
    IdentityRecord: msgspec.json.Decoder(IdentityRecord),
    ErasureRecord: msgspec.json.Decoder(ErasureRecord),
}
_encoder = msgspec.json.Encoder()


RECORD_PREFIXES: tuple[str, ...] = (AUDIT_PREFIX, ALERT_PREFIX, IDENTITY_PREFIX, ERASURE_PREFIX)
"""Subject prefixes of the records (every other subject carries a media event)."""


def record_kind(
    subject: str,
) -> type[AuditDecision] | type[Alert] | type[IdentityRecord] | type[ErasureRecord] | None:
    """The record type a subject carries; None for media events (``playback.>`` or none)."""
    if subject.startswith(AUDIT_PREFIX):
        return AuditDecision
    if subject.startswith(ALERT_PREFIX):
        return Alert
    if subject.startswith(IDENTITY_PREFIX):
        return IdentityRecord
    if subject.startswith(ERASURE_PREFIX):
        return ErasureRecord
    return None


def encode_record(record: Record) -> bytes:
    return _encoder.encode(record)


def decode_record(subject: str, data: bytes) -> Record:
    """Decode and check a record; :class:`InvalidEvent` (permanent) when it can never be read."""
    kind = record_kind(subject)
    if kind is None:
        raise InvalidEvent(f"{subject!r} is not an audit, alert, identity or erasure subject")
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
    if isinstance(record, IdentityRecord):
        _check_identity(record)
    if isinstance(record, ErasureRecord) and (
        not record.record_id or not record.accounts or any(len(a) != 64 for a in record.accounts)
    ):
        raise InvalidEvent("ErasureRecord needs a record_id and account digests")
    return record


def _check_identity(record: IdentityRecord) -> None:
    if not record.record_id or not record.person.strip():
        raise InvalidEvent("IdentityRecord needs a record_id and a person")
    if any(not a.server_id or not a.user_id for a in record.accounts):
        raise InvalidEvent("IdentityRecord has an account without a server_id or user_id")
    if record.action == "merge" and not record.accounts:
        raise InvalidEvent("IdentityRecord merge has no accounts")


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("a decision time must be timezone-aware")
    return at.astimezone(UTC)


__all__ = [
    "ALERT_PREFIX",
    "AUDIT_PREFIX",
    "ERASURE_PREFIX",
    "IDENTITY_ACTIONS",
    "IDENTITY_PREFIX",
    "RECORD_PREFIXES",
    "Account",
    "Alert",
    "AuditDecision",
    "ErasureRecord",
    "IdentityAction",
    "IdentityRecord",
    "Record",
    "decode_record",
    "encode_record",
    "record_kind",
]
