from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
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
