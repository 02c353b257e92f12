"""A playback's fold state merged batch by batch equals the fold of all its events."""

from __future__ import annotations

import itertools
from datetime import timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestor.batch import decode_batch
from ingestor.events import MediaEvent, encode_event
from ingestor.messages import Message
from ingestor.projection.fold import fold_playbacks, fold_state, merge_states, playback_rows
from tests.factory import T0, event

KEYS = ["k1", "k2"]
TYPES = ["play", "pause", "resume", "progress", "stop", "scrobble", "summary"]


@st.composite
def reports(draw) -> list[tuple[str, MediaEvent]]:
    """Reports of two playbacks from two sources: any types, times out of order, equal
    times, pauses at every position, summaries saying some fields and not others."""
    out = []
    for _n in range(draw(st.integers(min_value=1, max_value=30))):
        key = draw(st.sampled_from(KEYS))
        source = draw(st.sampled_from(["plex", "jellyfin"]))
        kind = draw(st.sampled_from(TYPES))
        at = T0 + timedelta(seconds=draw(st.integers(min_value=0, max_value=40)) * 7.25)
        fields = {}
        if draw(st.booleans()):
            fields["position_ms"] = draw(st.integers(min_value=0, max_value=10_000_000))
        if draw(st.booleans()):
            # whole numbers (Tautulli's) and exact shares, equal after rounding or not
            fields["percent_complete"] = draw(
                st.integers(min_value=0, max_value=100).map(float)
                | st.integers(min_value=0, max_value=10_000).map(lambda n: n / 100)
            )
        if draw(st.booleans()):
            fields["transcode_decision"] = draw(st.sampled_from(["", "direct play", "copy"]))
        if draw(st.booleans()):
            fields["player"] = draw(st.sampled_from(["", "Roku", "TV"]))
        if kind == "summary":
            fields["play_duration"] = draw(st.none() | st.integers(min_value=0, max_value=9000))
            fields["paused_counter"] = draw(st.none() | st.integers(min_value=0, max_value=900))
        stopped = at + timedelta(seconds=30) if kind in ("stop", "summary") else None
        started = at - timedelta(seconds=draw(st.integers(min_value=0, max_value=5)))
        e = event(
            source,
            kind,
            at,
            f"{key}-{source}",
            started_at=started if kind == "summary" or draw(st.booleans()) else None,
            stopped_at=stopped if draw(st.booleans()) or kind == "summary" else None,
            **fields,
        )
        out.append((key, e))
    return out


def frame_of(items: list[tuple[str, MediaEvent]]) -> pl.DataFrame:
    messages = [Message(i + 1, T0, encode_event(e)) for i, (_, e) in enumerate(items)]
    frame = decode_batch(messages).frame()
    return frame.with_columns(correlation_key=pl.Series([k for k, _ in items]))


@settings(max_examples=200, deadline=None)
@given(reports(), st.lists(st.integers(min_value=1, max_value=29), max_size=6, unique=True))
def test_merged_states_fold_like_all_the_events_at_once(items, cuts) -> None:
    events = frame_of(items)
    expected = fold_playbacks(events).sort("correlation_key")
    states: pl.DataFrame | None = None
    bounds = [0, *sorted(c for c in cuts if c < events.height), events.height]
    for lo, hi in itertools.pairwise(bounds):
        if hi == lo:
            continue
        part = events[lo:hi]
        new = fold_state(part)
        if states is None:
            states = new
            continue
        key = pl.col("correlation_key")
        seen = states["correlation_key"].to_list()
        old = states.filter(key.is_in(new["correlation_key"].to_list()))
        merged, unmergeable = merge_states(old, new.filter(key.is_in(seen)))
        # what the projection does for those: fold again from all their events
        again = fold_state(events[:hi].filter(key.is_in(unmergeable)))
        merged = pl.concat([merged.filter(~key.is_in(unmergeable)), again])
        fresh = new.filter(~key.is_in(seen))
        untouched = states.filter(~key.is_in(new["correlation_key"].to_list()))
        states = pl.concat([untouched, merged, fresh])
    assert states is not None
    assert playback_rows(states).sort("correlation_key").equals(expected)


def test_a_pause_whose_resume_arrives_in_a_later_batch_counts_its_time() -> None:
    items = [
        ("k1", event("plex", "play", T0, "s", position_ms=0)),
        ("k1", event("plex", "pause", T0 + timedelta(seconds=60), "s", position_ms=1)),
        ("k1", event("plex", "resume", T0 + timedelta(seconds=150), "s", position_ms=2)),
    ]
    events = frame_of(items)
    merged, unmergeable = merge_states(fold_state(events[:2]), fold_state(events[2:]))
    assert not unmergeable
    assert playback_rows(merged)["paused_seconds"].to_list() == [90]


def test_an_event_before_the_last_known_one_of_its_session_asks_for_a_full_fold() -> None:
    items = [
        ("k1", event("plex", "pause", T0 + timedelta(seconds=60), "s", position_ms=1)),
        ("k1", event("plex", "resume", T0 + timedelta(seconds=150), "s", position_ms=2)),
        ("k1", event("plex", "progress", T0 + timedelta(seconds=100), "s", position_ms=3)),
    ]
    events = frame_of(items)
    _, unmergeable = merge_states(fold_state(events[:2]), fold_state(events[2:]))
    assert unmergeable == ["k1"]


def _completion(*items: tuple[str, MediaEvent]) -> float:
    (percent,) = fold_playbacks(frame_of(list(items)))["percent_complete"].to_list()
    return percent


def test_a_summary_s_whole_number_gives_way_to_the_exact_reading_it_rounds() -> None:
    """Tautulli's history says 85 for a play the lifecycle saw stop at 84.79 %: the same
    reading, rounded. The exact one is kept (or the play would count as watched); a summary
    that is not that reading rounded stays authoritative."""
    stop = T0 + timedelta(minutes=90)
    lifecycle = ("k1", event("plex", "stop", stop, "s", percent_complete=84.79))
    summary = event("tautulli", "summary", stop, "t", started_at=T0, percent_complete=85.0)
    assert _completion(lifecycle, ("k1", summary)) == 84.79
    assert _completion(("k1", summary), lifecycle) == 84.79
    other = event("tautulli", "summary", stop, "t", started_at=T0, percent_complete=91.0)
    assert _completion(lifecycle, ("k1", other)) == 91.0
    exact = event("tautulli", "summary", stop, "t", started_at=T0, percent_complete=84.5)
    assert _completion(lifecycle, ("k1", exact)) == 84.5
