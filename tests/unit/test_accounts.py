"""Which account a stored message names (ingestor/accounts.py): the matcher erase and the
archiver share, with the byte test that lets erase skip most messages unread."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ingestor.accounts import Digests, Target, account_digest, names_account
from ingestor.messages import Message


def message(subject: str, payload: object, *, ascii_only: bool = False) -> Message:
    data = json.dumps(payload, ensure_ascii=ascii_only).encode()
    return Message(1, datetime.now(UTC), data, subject)


@pytest.mark.parametrize("ascii_only", [False, True])
@pytest.mark.parametrize("user", ["17", "zoë", 'quo"te', "back\\slash"])
def test_an_event_of_the_account_is_found_however_its_id_is_written(
    user: str, ascii_only: bool
) -> None:
    event = message(
        "playback.s1.plex.movie", {"server_id": "s1", "user_id": user}, ascii_only=ascii_only
    )
    assert names_account(event, Target(user))
    assert names_account(event, Target(user, "s1"))
    assert not names_account(event, Target(user, "s2"))
    assert names_account(event, Digests(frozenset({account_digest("s1", user)})))
    other = message("playback.s1.plex.movie", {"server_id": "s1", "user_id": user + "0"})
    assert not names_account(other, Target(user))


def test_alerts_identity_records_and_a_cut_short_event_name_it_erasure_records_do_not() -> None:
    target = Target("8312457", "s1")
    alert = message("alert.concurrent_streams", {"server_id": "s1", "user_id": "8312457"})
    identity = message("identity.merge", {"accounts": [["s1", "8312457"], ["s2", "9"]]})
    cut = Message(3, datetime.now(UTC), b'{"server_id":"s1","user_id":"8312457","ti', "playback.x")
    erasure = message("erasure.user", {"note": "8312457", "server_id": "s1", "user_id": "8312457"})
    assert all(names_account(m, target) for m in (alert, identity, cut))
    assert not names_account(erasure, target)
    assert not names_account(message("audit.decision", {"user_id": "8312457"}), target)


def test_the_byte_test_skips_a_message_without_the_id_and_digests_skip_nothing() -> None:
    assert not Target("8312457").may_name(b'{"user_id":"99"}')
    assert Target("8312457").may_name(b'{"user_id":"8312457"}')
    assert Target("zo\u00eb").may_name(b'{"user_id":"zo\\u00eb"}')  # escaped: looked at
    assert Digests(frozenset()).may_name(b"anything")
