"""Fuzzing every way bad input enters the ingestor (issue 12), a few dozen inputs per target
in the default suite; ``bench/fuzz.py`` runs thousands. See ``tests/fuzz/harness.py`` for the
oracles: no crash, no hang, every rejected webhook a 4xx with a reason, every bad stream
message dead-lettered, and a valid input after each burst projected."""

from __future__ import annotations

import pytest

from tests.fuzz.harness import Harness, examples
from tests.fuzz.runs import (
    run_jellyfin_socket,
    run_jellyfin_webhook,
    run_plex_webhook,
    run_stream,
    run_tautulli_client,
)

pytestmark = pytest.mark.integration

EXAMPLES = examples(60)


def test_plex_webhook_answers_mutated_requests_with_2xx_or_a_4xx_reason(harness: Harness) -> None:
    tally = run_plex_webhook(harness, EXAMPLES)
    assert tally.failures == [] and tally.bursts == tally.bursts_projected > 0


def test_jellyfin_webhook_answers_mutated_bodies_with_2xx_or_a_4xx_reason(
    harness: Harness,
) -> None:
    tally = run_jellyfin_webhook(harness, EXAMPLES)
    assert tally.failures == [] and tally.bursts == tally.bursts_projected > 0


def test_jellyfin_socket_survives_mutated_frames_and_projects_the_next_session(
    harness: Harness,
) -> None:
    tally = run_jellyfin_socket(harness, EXAMPLES)
    assert tally.failures == [] and tally.bursts == tally.bursts_projected > 0


def test_tautulli_client_turns_mutated_answers_into_its_own_errors(harness: Harness) -> None:
    tally = run_tautulli_client(harness, EXAMPLES)
    assert tally.failures == [] and tally.bursts == tally.bursts_projected > 0


def test_every_unreadable_stream_message_is_dead_lettered_and_the_stream_goes_on(
    harness: Harness,
) -> None:
    tally = run_stream(harness, EXAMPLES)
    assert tally.failures == [] and tally.bursts == tally.bursts_projected > 0
    assert tally.dlq > 0
