"""One hypothesis run per target, shared by the default suite (``tests/fuzz/test_fuzz_*.py``,
a few dozen inputs each) and the long run (``bench/fuzz.py``, thousands)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import (
    Harness,
    JellyfinWebhookTarget,
    PlexWebhookTarget,
    SocketTarget,
    StreamTarget,
    Tally,
    TautulliTarget,
)
from tests.fuzz.strategies import (
    Fuzzed,
    Request,
    jellyfin_requests,
    media_event_documents,
    mutated,
    oversized_jellyfin_request,
    plex_requests,
    socket_messages,
    stream_subjects,
    tautulli_activity,
    tautulli_history,
)


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def run_plex_webhook(h: Harness, examples: int) -> Tally:
    target = PlexWebhookTarget(h)

    @_settings(examples)
    @given(plex_requests())
    def run(item: Request) -> None:
        target.feed(item)

    return _finish(target, run)


def run_jellyfin_webhook(h: Harness, examples: int) -> Tally:
    target = JellyfinWebhookTarget(h)

    @_settings(examples)
    @given(jellyfin_requests())
    @example(oversized_jellyfin_request())
    def run(item: Request) -> None:
        target.feed(item)

    return _finish(target, run)


def run_jellyfin_socket(h: Harness, examples: int) -> Tally:
    target = SocketTarget(h)

    @_settings(examples)
    @given(mutated(socket_messages()))
    def run(item: Fuzzed) -> None:
        target.feed(item)

    return _finish(target, run)


# statuses Tautulli (or a proxy in front of it) answers, and Retry-After values
tautulli_statuses = st.sampled_from([200] * 8 + [400, 401, 404, 429, 500, 502, 503])
retry_after = st.sampled_from([None] * 4 + ["1", "-5", "nan", "inf", "1e400", "soon", ""])


def run_tautulli_client(h: Harness, examples: int) -> Tally:
    target = TautulliTarget(h)

    @_settings(examples)
    @given(
        st.sampled_from(["get_history", "get_activity"]).flatmap(
            lambda cmd: st.tuples(
                st.just(cmd),
                mutated(tautulli_history() if cmd == "get_history" else tautulli_activity()),
            )
        ),
        tautulli_statuses,
        retry_after,
    )
    def run(answer: tuple[str, Fuzzed], status: int, after: str | None) -> None:
        cmd, item = answer
        target.feed_answer(cmd, item, status, after)

    return _finish(target, run)


def run_stream(h: Harness, examples: int) -> Tally:
    target = StreamTarget(h)

    @_settings(examples)
    @given(stream_subjects, mutated(media_event_documents()))
    def run(subject: str, item: Fuzzed) -> None:
        target.feed_message(subject, item)

    return _finish(target, run)


def _finish(target, run: Callable[[], None]) -> Tally:  # type: ignore[no-untyped-def]
    try:
        run()
    finally:
        target.finish_burst()
    return target.tally


RUNS: dict[str, Callable[[Harness, int], Tally]] = {
    "plex-webhook": run_plex_webhook,
    "jellyfin-webhook": run_jellyfin_webhook,
    "jellyfin-socket": run_jellyfin_socket,
    "tautulli-client": run_tautulli_client,
    "stream": run_stream,
}
