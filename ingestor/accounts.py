"""Which account a stored message names: the matching that erasure needs in two places.

``ingestor erase`` (:mod:`ingestor.erasure`) finds a user's messages in the stream, the
dead-letter stream and the archive by a :class:`Target` (a user id, and a server id when
known); the archiver (:mod:`ingestor.archive`) drops the messages it holds unsealed of the
accounts an erasure record names, and it only has their digests (:class:`Digests`). Both
ask the same question of a message, :func:`names_account`, so what erase deletes from the
log and what the archiver keeps out of a segment cannot differ.

A message names an account when it is a media event of that account (decoded, or what is
left of one: a truncated payload the router dead-lettered), an alert about it, or an
identity record listing it. Erasure records name accounts only by digest and name no one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from ingestor.messages import Message
from ingestor.records import ALERT_PREFIX, ERASURE_PREFIX, IDENTITY_PREFIX

_DIGEST_DOMAIN = b"ingestor-erasure-v1"


def account_digest(server_id: str, user_id: str) -> str:
    """The digest that names an account in an erasure record: 64 hex digits.

    >>> account_digest("plex-1", "17") == account_digest("plex-1", "17")
    True
    >>> account_digest("plex-1", "17") == account_digest("plex-11", "7")
    False
    """
    material = json.dumps([server_id, user_id], ensure_ascii=False).encode()
    return hashlib.sha256(_DIGEST_DOMAIN + b"\0" + material).hexdigest()


class Accounts(Protocol):
    """A set of accounts a message may name."""

    def matches(self, server_id: str, user_id: str) -> bool: ...

    def may_name(self, data: bytes) -> bool:
        """False when ``data`` cannot name one of the accounts (a cheap test, before the
        JSON is read); True when it may."""
        ...


@dataclass
class Target:
    """Whom to erase: a user id, on one server or (``server_id`` None) on whichever server
    the log holds it."""

    user_id: str
    server_id: str | None = None

    def matches(self, server_id: str, user_id: str) -> bool:
        return user_id == self.user_id and (self.server_id is None or server_id == self.server_id)

    def may_name(self, data: bytes) -> bool:
        """The id as a JSON string holds it (``\\u`` escapes aside, which are looked at)."""
        return self._needle in data or b"\\u" in data

    @cached_property
    def _needle(self) -> bytes:
        return json.dumps(self.user_id, ensure_ascii=False).encode()[1:-1]


@dataclass(frozen=True)
class Digests:
    """The accounts an erasure record names, by :func:`account_digest`.

    >>> Digests(frozenset({account_digest("plex-1", "17")})).matches("plex-1", "17")
    True
    """

    digests: frozenset[str]

    def matches(self, server_id: str, user_id: str) -> bool:
        return account_digest(server_id, user_id) in self.digests

    def may_name(self, data: bytes) -> bool:
        return True  # a digest says nothing about the bytes


def names_account(message: Message, accounts: Accounts) -> bool:
    """Does ``message`` name one of ``accounts`` (so an erasure of them removes it)?"""
    return bool(accounts_in(message, accounts)[0])


def accounts_in(message: Message, accounts: Accounts) -> tuple[str, list[str]]:
    """("event" | "record" | "", the servers of the matching accounts it names)."""
    subject = message.subject
    if subject.startswith(ERASURE_PREFIX) or not accounts.may_name(message.data):
        return "", []
    if subject.startswith(ALERT_PREFIX):
        payload = _json(message.data)
        if payload is not None and accounts.matches(
            str(payload.get("server_id", "")), str(payload.get("user_id", ""))
        ):
            return "record", [str(payload.get("server_id", ""))]
        return "", []
    if subject.startswith(IDENTITY_PREFIX):
        payload = _json(message.data)
        servers = [
            server
            for server, user in map(_account_pair, (payload or {}).get("accounts") or [])
            if accounts.matches(server, user)
        ]
        return ("record", servers) if servers else ("", [])
    if record_subject(subject):
        return "", []
    server = media_account(message.data, accounts)  # even one the router could not decode
    return ("event", [server]) if server is not None else ("", [])


def media_account(data: bytes, accounts: Accounts) -> str | None:
    """The server id if ``data`` is a media event (or what is left of one: a truncated,
    undecodable payload in the dead-letter stream) of one of ``accounts``, else None."""
    payload = _json(data)
    if payload is not None:
        server = str(payload.get("server_id", ""))
        return server if accounts.matches(server, str(payload.get("user_id", ""))) else None
    # not JSON: the account's fields as the encoder writes them, if both are there
    text = data.decode("utf-8", "replace")
    user = re.search(r'"user_id"\s*:\s*"?([^",}]*)', text)
    server_match = re.search(r'"server_id"\s*:\s*"([^"]*)"', text)
    if user is None or server_match is None:
        return None
    server = server_match.group(1)
    return server if accounts.matches(server, user.group(1)) else None


def record_subject(subject: str) -> bool:
    return subject.startswith(("audit.", ALERT_PREFIX, IDENTITY_PREFIX, ERASURE_PREFIX))


def _account_pair(value: object) -> tuple[str, str]:
    if isinstance(value, dict):
        return str(value.get("server_id", "")), str(value.get("user_id", ""))
    if isinstance(value, list | tuple) and len(value) == 2:
        return str(value[0]), str(value[1])
    return "", ""


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


__all__ = [
    "Accounts",
    "Digests",
    "Target",
    "account_digest",
    "accounts_in",
    "media_account",
    "names_account",
    "record_subject",
]
