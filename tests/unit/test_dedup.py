from __future__ import annotations

import itertools
from datetime import timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingestor.dedup import Action, DedupIndex, Tier
from tests.factory import T0, event, plex_playback, tautulli_summary


def decide_all(index: DedupIndex, events: list) -> list:
    decisions = [index.decide(e, seq) for seq, e in enumerate(events, start=1)]
    index.commit()
    return decisions


def test_the_exact_event_again_is_dropped_tier_a() -> None:
    play = plex_playback()[0]
    first, again = decide_all(DedupIndex(), [play, play])
    assert first.action is Action.OPEN
    assert again.action is Action.DROP and again.tier is Tier.EVENT_ID


def test_a_re_reported_step_is_dropped_tier_b() -> None:
    play = event("jellyfin", "play", T0, "ps1", started_at=T0)
    replayed = event("jellyfin", "play", T0 + timedelta(minutes=7), "ps1", started_at=T0)
    _first, again = decide_all(DedupIndex(), [play, replayed])
    assert again.action is Action.DROP and again.tier is Tier.SESSION_KEY
    assert again.kept_event_id == play.event_id


def test_another_source_of_a_known_playback_is_linked_tier_c_both_ways() -> None:
    for order in ("plex first", "tautulli first"):
        lifecycle, summary = plex_playback(), tautulli_summary(late=6)
        events = [*lifecycle, summary] if order == "plex first" else [summary, *lifecycle]
        decisions = decide_all(DedupIndex(tolerance=10), events)
        keys = {d.playback_key for d in decisions}
        assert len(keys) == 1, order
        links = [d for d in decisions if d.action is Action.LINK]
        assert len(links) == 1 and links[0].tier is Tier.CORRELATION, order
        assert 0 < links[0].similarity < 1


def test_a_report_outside_the_tolerance_opens_its_own_playback() -> None:
    decisions = decide_all(DedupIndex(tolerance=10), [*plex_playback(), tautulli_summary(late=11)])
    assert len({d.playback_key for d in decisions}) == 2


def test_the_same_item_on_the_same_device_an_hour_apart_stays_two() -> None:
    first = plex_playback(T0, stop_at=1800)
    second = plex_playback(T0 + timedelta(hours=1), stop_at=1800)
    decisions = decide_all(DedupIndex(), [*first, *second])
    assert len({d.playback_key for d in decisions}) == 2
    assert not [d for d in decisions if d.action is Action.DROP]


def test_two_reports_of_one_source_are_never_merged_even_if_close() -> None:
    a = event("tautulli", "summary", T0, "1", started_at=T0, stopped_at=T0 + timedelta(hours=1))
    b = event("tautulli", "summary", T0, "2", started_at=T0 + timedelta(seconds=3), stopped_at=T0)
    decisions = decide_all(DedupIndex(), [a, b])
    assert [d.action for d in decisions] == [Action.OPEN, Action.OPEN]


def test_rollback_forgets_the_uncommitted_batch() -> None:
    index = DedupIndex()
    lifecycle = plex_playback()
    decide_all(index, lifecycle[:1])
    index.decide(lifecycle[1], 2)
    index.decide(tautulli_summary(), 3)
    index.rollback()
    assert index.decide(lifecycle[1], 2).action is Action.FOLD
    assert index.decide(tautulli_summary(), 3).action is Action.LINK


def test_decisions_see_earlier_events_of_the_same_batch() -> None:
    play = plex_playback()[0]
    index = DedupIndex()
    assert index.decide(play, 1).action is Action.OPEN
    assert index.decide(play, 2).action is Action.DROP


def test_the_index_evicts_old_playbacks_and_stays_bounded() -> None:
    index = DedupIndex(hot_window=3 * 3600)
    for day in range(20):
        decide_all(index, plex_playback(T0 + timedelta(days=day)))
    assert len(index.playbacks) <= 2
    assert index.entries < 20


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(range(40)), min_size=1, max_size=120), st.data())
def test_an_evicting_index_decides_like_an_unbounded_one_given_cold_lookups(picks, data) -> None:
    """Eviction must never change a decision: with the committed keys of cold events loaded
    (as the projection does from DuckDB), a tiny hot window decides like an unbounded one."""
    pool = []
    for i in range(10):
        start = T0 + timedelta(hours=5 * i)
        pool += plex_playback(start, stop_at=1800)[:3]
        pool.append(tautulli_summary(start, row_id=i, stop_at=1800))
    events = [pool[i] for i in sorted(picks)]  # stream order roughly follows time
    big, small = DedupIndex(), DedupIndex(hot_window=3600)
    committed: list = []
    for e in events:
        expected = big.decide(e, len(committed) + 1)
        big.commit()
        if small.is_cold(e):
            _load_committed(small, committed)
        got = small.decide(e, len(committed) + 1)
        small.commit()
        assert (got.action, got.tier) == (expected.action, expected.tier)
        committed.append((e, got))


def _load_committed(index: DedupIndex, committed: list) -> None:
    """What Projection.load_cold does, from an in-memory list instead of DuckDB."""
    from ingestor.dedup import PlaybackRef
    from ingestor.events import CorrelationKey, step_key

    for e, d in committed:
        if d.action is Action.DROP:
            continue
        if d.action is Action.OPEN:
            key = CorrelationKey.decode(d.playback_key)
            ref = PlaybackRef(
                d.playback_key,
                key.cross_source,
                key.started_at.timestamp(),
                {e.source},
                d.first_seq,
                e.event_id,
            )
            index.remember_playback(ref)
        elif d.action is Action.LINK and d.playback_key in index.playbacks:
            index.playbacks[d.playback_key].sources.add(e.source)
        index.remember_event(e.event_id, step_key(e), d.playback_key)
    index.commit()


# ------------------------------------------------------------------ the columnar decisions


def _pool() -> list:
    """Reports that meet each other in every way the tiers tell apart."""
    from tests.factory import SERVER

    pool = []
    for i in range(6):
        start = T0 + timedelta(hours=7 * i) + timedelta(days=3 * (i % 2))
        lifecycle = plex_playback(start, stop_at=1800)
        pool += lifecycle[:4]
        pool.append(tautulli_summary(start, row_id=i, late=4 + 3 * i, stop_at=1800))
        # a re-report of the play step under a new event id (tier b), and a Jellyfin report
        # of the same viewing (a link, or outside the tolerance)
        pool.append(
            event(
                "plex",
                "play",
                start + timedelta(seconds=40),
                lifecycle[0].session_key,
                started_at=start,
                position_ms=0,
            )
        )
        pool.append(
            event(
                "jellyfin",
                "progress",
                start + timedelta(seconds=60),
                f"j{i}",
                started_at=start + timedelta(seconds=2 * i),
                position_ms=60_000,
            )
        )
        pool.append(
            event(
                "jellyfin",
                "pause",
                start + timedelta(seconds=90),
                f"j{i}",
                started_at=start + timedelta(seconds=2 * i),
                position_ms=90_000,
            )
        )
        # another user on the same device: never merged
        pool.append(event("emby", "play", start, f"e{i}", started_at=start, user_id="other"))
    pool.append(event("plex", "play", T0, "x", started_at=T0, server_id=SERVER[::-1]))
    return pool


_POOL = _pool()


def _keys(events: list, first_seq: int):
    from ingestor.batch import decode_batch, dedup_keys
    from ingestor.events import encode_event
    from ingestor.messages import Message

    messages = [Message(first_seq + i, T0, encode_event(e)) for i, e in enumerate(events)]
    return dedup_keys(decode_batch(messages).frame())


@settings(max_examples=80, deadline=None)
# a step re-reported in a later batch, and twice within one batch of a known session
@example(picks=[0, 5], cuts=[1], hot_window=None, failed=set())
@example(picks=[1, 0, 5], cuts=[1], hot_window=None, failed=set())
@example(picks=[1, 0, 5, 0], cuts=[1], hot_window=None, failed={1})
@given(
    st.lists(st.sampled_from(range(len(_POOL))), min_size=1, max_size=60),
    st.lists(st.integers(min_value=1, max_value=59), max_size=8, unique=True),
    st.sampled_from([None, 3600.0]),
    st.sets(st.integers(min_value=0, max_value=8), max_size=3),
)
def test_batch_decisions_equal_the_per_event_decisions(picks, cuts, hot_window, failed) -> None:
    """decide_batch decides every event as decide() does, whatever the batch cuts, with
    repeats, re-reports, links within and outside the tolerance, out-of-order arrival, cold
    events past a small hot window (their keys loaded from what was committed) and batches
    that fail and are decided again after a rollback."""
    events = [_POOL[i] for i in picks]
    window = {} if hot_window is None else {"hot_window": hot_window}
    reference, columnar = DedupIndex(**window), DedupIndex(**window)
    committed: list = []
    bounds = [0, *sorted(c for c in cuts if c < len(events)), len(events)]
    for number, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        batch = events[lo:hi]
        if not batch:
            continue
        keys = _keys(batch, lo + 1)
        for index in (reference, columnar):
            if any(index.is_cold(e) for e in batch):
                _load_committed(index, committed)
        attempts = 2 if number in failed else 1
        for attempt in range(attempts):
            expected = [reference.decide(e, lo + 1 + j) for j, e in enumerate(batch)]
            decided = columnar.decide_batch(keys)
            got = [decided.decision(j) for j in range(len(batch))]
            assert got == expected
            if attempt + 1 < attempts:
                reference.rollback()
                columnar.rollback()
        reference.commit()
        columnar.commit()
        assert columnar.event_ids.keys() == reference.event_ids.keys()
        assert columnar.steps == reference.steps
        assert columnar.sessions.keys() == reference.sessions.keys()
        committed += list(zip(batch, expected, strict=True))
