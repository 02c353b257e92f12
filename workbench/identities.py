"""One person, several accounts (Tautulli#2019): merge accounts into a person, and undo it.

A user id belongs to its server, so one person with a Plex account on two servers and a
Jellyfin user is three users to every statistic. :func:`merge` says they are one person;
:func:`unmerge` takes accounts back out. Neither is an ``UPDATE``: each publishes an
:class:`ingestor.records.IdentityRecord` to the stream (``identity.merge``,
``identity.unmerge``, deterministic ``Nats-Msg-Id``), which the ingestor projects in stream
order into ``identity_links`` (every merge and unmerge, never updated) and the view
``person_accounts`` (who is whose now), so a replay of the log gives the same persons and an
as-of answer the persons as of that point. Publishing needs the running ingestor's NATS, as
a verdict does.

An account is a structured ``(server_id, user_id)`` pair, never a string to split. It
belongs to at most one person at a time: merging it into another person moves it.
:func:`workbench.stats.by_person` counts plays by person, and
:func:`workbench.stats.plays` has a ``person`` column.

>>> from datetime import UTC, datetime
>>> from ingestor.projection import Projection
>>> db = Projection(":memory:")
>>> merge_ana = IdentityRecord.make(
...     "merge", "Ana", [("plex-1", "1"), ("jf", "e1")], datetime(2026, 1, 7, tzinfo=UTC))
>>> _ = db.apply_identity(1, merge_ana)
>>> accounts(db).select("person", "server_id", "user_id").rows()
[('Ana', 'jf', 'e1'), ('Ana', 'plex-1', '1')]
>>> check(db, IdentityRecord.make(
...     "unmerge", "Bob", [("jf", "e1")], datetime(2026, 1, 8, tzinfo=UTC)))
Traceback (most recent call last):
...
workbench.errors.IdentityError: jf/e1 is Ana's, not Bob's: nothing to unmerge
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import duckdb
import nats
import polars as pl
from nats.aio.client import Client
from nats.js import JetStreamContext

from ingestor.projection import IDENTITY_LINK_TABLE, empty_frame_sql
from ingestor.records import Account, IdentityAction, IdentityRecord, encode_record
from workbench.audit import publish_record
from workbench.db import ProjectionSource, connection_of
from workbench.errors import IdentityError, WorkbenchError
from workbench.replay import aware_utc
from workbench.stats import _person_accounts  # the stats' own test for person_accounts

if TYPE_CHECKING:
    from workbench.api import Workbench

AccountLike = Account | tuple[str, str]
"""An account: :class:`~ingestor.records.Account` or a ``(server_id, user_id)`` tuple."""


@dataclass(frozen=True)
class IdentityReceipt:
    """An identity record the stream stored, and its stream sequence; ``applied`` says
    whether the live projection showed it when the workbench last looked (``None``: not
    asked).

    >>> r = IdentityRecord.make("merge", "Ana", [("jf", "e1")], datetime(2026, 1, 7, tzinfo=UTC))
    >>> print(IdentityReceipt(r, 812, False))
    the stream stored the merge of 1 account(s) into Ana as message 812; the projection shows it once the ingestor has applied it
    """  # noqa: E501

    record: IdentityRecord
    seq: int
    duplicate: bool  # the stream already held this very record
    applied: bool | None = None

    def __str__(self) -> str:
        r = self.record
        what = (
            f"the merge of {len(r.accounts)} account(s) into {r.person}"
            if r.action == "merge"
            else f"the unmerge of {len(r.accounts) or 'all the'} account(s) from {r.person}"
        )
        stored = (
            f"the stream already held {what} (message {self.seq})"
            if self.duplicate
            else f"the stream stored {what} as message {self.seq}"
        )
        if self.applied is None:
            then = "; the projection shows it once the ingestor has applied it"
        elif self.applied:
            then = ", and the live projection shows it"
        else:
            then = "; the live projection has not applied it yet (it will)"
        return f"{stored}{then}"


# --------------------------------------------------------------------------- reading


def accounts(db: ProjectionSource, person: str | None = None) -> pl.DataFrame:
    """Who is whose now (or as of an as-of answer's point): ``person``, ``server_id``,
    ``user_id``, ``since_seq`` (the record that merged it), ``since`` (when it was decided);
    ordered by person, server, user. Empty when nothing was merged (or the projection
    predates identity records)."""
    relation = _person_accounts(db)
    sql = f"SELECT person, server_id, user_id, since_seq, since FROM {relation}"
    if relation != "person_accounts":
        sql = (
            "SELECT NULL::VARCHAR AS person, NULL::VARCHAR AS server_id, "
            "NULL::VARCHAR AS user_id, NULL::BIGINT AS since_seq, "
            "NULL::TIMESTAMPTZ AS since WHERE false"
        )
    frame = connection_of(db).sql(sql).pl()
    if person is not None:
        frame = frame.filter(pl.col("person") == person)
    return frame.sort("person", "server_id", "user_id")


def history(db: ProjectionSource) -> pl.DataFrame:
    """Every account every identity record named, in stream order (``identity_links``):
    ``seq``, ``recorded_at``, ``record_id``, ``action``, ``person``, ``server_id``,
    ``user_id``, ``applied``, ``detail`` (what it did, or why it changed nothing),
    ``decided_by``, ``decided_at``, ``notes``."""
    con = connection_of(db)
    try:
        return con.sql("SELECT * FROM identity_links ORDER BY seq, server_id, user_id").pl()
    except duckdb.CatalogException:  # a projection older than identity records
        return con.sql(empty_frame_sql(IDENTITY_LINK_TABLE)).pl()


def check(db: ProjectionSource, record: IdentityRecord) -> None:
    """Refuse a record that would change nothing in ``db`` (the projection would keep it
    and ignore it), with the reason."""
    current = {
        Account(row["server_id"], row["user_id"]): row["person"]
        for row in accounts(db).iter_rows(named=True)
    }
    named = list(record.accounts)
    if record.action == "merge":
        if all(current.get(a) == record.person for a in named):
            raise IdentityError(f"every account named is {record.person}'s already")
        return
    if not named:
        if record.person not in current.values():
            raise IdentityError(f"{record.person} has no accounts: nothing to unmerge")
        return
    if all(current.get(a) != record.person for a in named):
        first = named[0]
        owner = current.get(first)
        whose = f"{owner}'s, not {record.person}'s" if owner else "not merged into anyone"
        raise IdentityError(f"{first.server_id}/{first.user_id} is {whose}: nothing to unmerge")


# --------------------------------------------------------------------------- publishing


async def publish_identity(
    stream: Client | JetStreamContext, record: IdentityRecord, *, timeout: float = 10
) -> IdentityReceipt:
    """Publish ``record`` to ``MEDIA_EVENTS`` (``Nats-Msg-Id`` = its id) and return when
    JetStream stored it."""
    data = encode_record(record)
    seq, repeat = await publish_record(
        stream, record.subject, data, record.record_id, timeout=timeout
    )
    return IdentityReceipt(record, seq, repeat)


async def merge(
    wb: Workbench,
    person: str,
    accounts: Iterable[AccountLike],
    *,
    by: str = "",
    notes: str = "",
    at: datetime | str | None = None,
) -> IdentityReceipt:
    """Publish "these accounts are ``person``" (each ``(server_id, user_id)``; an account of
    another person moves to this one). Checked against the workbench's projection first
    (:func:`check`); ``at`` (default now) is when it was decided. Needs the running
    ingestor's NATS (:class:`~workbench.errors.WorkbenchError` says how to start it)."""
    return await _publish(wb, "merge", person, accounts, by=by, notes=notes, at=at)


async def unmerge(
    wb: Workbench,
    person: str,
    accounts: Iterable[AccountLike] = (),
    *,
    by: str = "",
    notes: str = "",
    at: datetime | str | None = None,
) -> IdentityReceipt:
    """Publish "these accounts are not ``person``" (no accounts: none of them are); each
    becomes a person of its own again in the statistics. Checked and published as
    :func:`merge` is."""
    return await _publish(wb, "unmerge", person, accounts, by=by, notes=notes, at=at)


async def _publish(
    wb: Workbench,
    action: IdentityAction,
    person: str,
    named: Iterable[AccountLike],
    *,
    by: str,
    notes: str,
    at: datetime | str | None,
) -> IdentityReceipt:
    from workbench.api import APPLIED_WAIT, INGESTOR_HINT

    when = aware_utc(at, "at") if at is not None else datetime.now(UTC)
    try:
        record = IdentityRecord.make(action, person, list(named), when, by=by, notes=notes)
    except ValueError as exc:
        raise IdentityError(str(exc)) from None
    nc = await wb._verdict_client(f"an identity {action}")
    check(await wb.snapshot(), record)
    try:
        receipt = await publish_identity(nc, record)
    except nats.errors.NoRespondersError:
        raise WorkbenchError(
            "the stream does not take identity records yet: restart the ingestor with this "
            "version (it adds the identity.> subjects to MEDIA_EVENTS), then try again"
        ) from None
    except (nats.errors.ConnectionClosedError, nats.errors.TimeoutError) as exc:
        raise WorkbenchError(
            f"the stream did not take the identity {action} ({type(exc).__name__}); "
            f"{INGESTOR_HINT}, then try again"
        ) from None
    if wb.mode == "live":
        receipt = replace(receipt, applied=await wb._wait_applied(receipt.seq, APPLIED_WAIT))
    return receipt


__all__ = [
    "AccountLike",
    "IdentityError",
    "IdentityReceipt",
    "accounts",
    "check",
    "history",
    "merge",
    "publish_identity",
    "unmerge",
]
