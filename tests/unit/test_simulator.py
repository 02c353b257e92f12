"""The simulator: deterministic, valid, and its injected duplicates are exactly as counted."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import msgspec
import pytest

from ingestor.events import EventType, MediaEvent, decode_event, encode_event, step_key
from ingestor.simulation import (
    Simulation,
    SimulationConfig,
    TruthPlayback,
    iter_events_jsonl,
    read_truth,
    simulate,
    write_jsonl,
    write_truth,
)

CONFIG = SimulationConfig(seed=11, users=12, days=5)
HEX32 = re.compile(r"[0-9a-f]{32}")
HEX40 = re.compile(r"[0-9a-f]{40}")
JELLYFIN_SESSION = re.compile(r"[0-9a-f]{32}:[0-9a-f]{32}:[0-9]{13}")  # session:item:first seen


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(CONFIG)


def unique_events(events: list[MediaEvent]) -> list[MediaEvent]:
    """The feed without its exact re-deliveries (first occurrence of each event_id)."""
    seen: set[str] = set()
    out = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out


def feed_bytes(sim: Simulation) -> bytes:
    return b"".join(iter_events_jsonl(sim.events))


def overlapping_pairs(truth: list[TruthPlayback]) -> list[tuple[TruthPlayback, TruthPlayback]]:
    by_user: dict[tuple[str, str], list[TruthPlayback]] = defaultdict(list)
    for playback in truth:
        by_user[playback.server_id, playback.user_id].append(playback)
    pairs = []
    for playbacks in by_user.values():
        for i, a in enumerate(playbacks):
            for b in playbacks[i + 1 :]:
                if a.started_at < b.stopped_at and b.started_at < a.stopped_at:
                    pairs.append((a, b))
    return pairs


def test_same_seed_gives_byte_identical_events_and_truth(sim: Simulation) -> None:
    again = simulate(CONFIG)
    assert feed_bytes(again) == feed_bytes(sim)
    assert msgspec.json.encode(again.truth) == msgspec.json.encode(sim.truth)
    assert again.expected == sim.expected


def test_different_seed_gives_a_different_feed(sim: Simulation) -> None:
    other = simulate(SimulationConfig(seed=12, users=CONFIG.users, days=CONFIG.days))
    assert feed_bytes(other) != feed_bytes(sim)
    assert other.truth != sim.truth


def test_every_event_validates_with_utc_times(sim: Simulation) -> None:
    for event in sim.events:
        event.validate()
        for value in (event.occurred_at, event.started_at, event.stopped_at):
            assert value is None or value.utcoffset() == timedelta(0)
        assert decode_event(encode_event(event)) == event


def test_ids_have_the_upstream_shapes(sim: Simulation) -> None:
    by_source: dict[str, list[MediaEvent]] = defaultdict(list)
    for event in sim.events:
        by_source[event.source].append(event)
    assert set(by_source) == {"plex", "tautulli", "jellyfin"}
    plex_servers = {e.server_id for e in by_source["plex"] + by_source["tautulli"]}
    jellyfin_servers = {e.server_id for e in by_source["jellyfin"]}
    assert len(plex_servers) == 1 and HEX40.fullmatch(plex_servers.pop())
    assert len(jellyfin_servers) == 2  # one per 10 people
    assert all(HEX32.fullmatch(server) for server in jellyfin_servers)
    for event in by_source["plex"] + by_source["tautulli"]:
        assert event.user_id.isdigit() and event.rating_key.isdigit()
    for event in by_source["jellyfin"]:
        assert HEX32.fullmatch(event.user_id)
        assert HEX32.fullmatch(event.rating_key)
        assert JELLYFIN_SESSION.fullmatch(event.session_key)
    for event in by_source["tautulli"]:
        assert event.event_type is EventType.SUMMARY and event.session_key.isdigit()
        assert event.transcode_decision in {"direct play", "direct stream", "transcode"}


def test_expected_counts_describe_the_lists(sim: Simulation) -> None:
    expected = sim.expected
    assert expected.published == len(sim.events)
    assert expected.playbacks == len(sim.truth)
    both = [t for t in sim.truth if {"plex", "tautulli"} <= set(t.sources)]
    assert expected.linked == len(both) > 0


def test_event_ids_are_unique_except_the_injected_redeliveries(sim: Simulation) -> None:
    counts = Counter(event.event_id for event in sim.events)
    extra = sum(n - 1 for n in counts.values())
    assert sim.expected.dropped_event_id == extra > 0
    encoded: dict[str, bytes] = {}
    for event in sim.events:
        data = encode_event(event)
        assert encoded.setdefault(event.event_id, data) == data  # a re-delivery is identical


def test_redeliveries_arrive_1s_to_10min_after_the_original(sim: Simulation) -> None:
    last_first_seen = None
    seen: set[str] = set()
    for index, event in enumerate(sim.events):
        if event.event_id not in seen:
            seen.add(event.event_id)
            last_first_seen = event.occurred_at
            continue
        # The original (and so its occurred_at) came earlier; the copy is emitted within
        # 1 s-10 min of it, so the events around it are inside that window.
        assert last_first_seen is not None
        assert last_first_seen <= event.occurred_at + timedelta(minutes=10)
        later = next((e for e in sim.events[index + 1 :] if e.event_id not in seen), None)
        if later is not None:
            assert later.occurred_at >= event.occurred_at + timedelta(seconds=1)


def test_events_are_in_non_decreasing_emission_order(sim: Simulation) -> None:
    originals = unique_events(sim.events)
    received = [event for event in originals if event.source != "tautulli"]
    times = [event.occurred_at for event in received]
    assert times == sorted(times)  # webhooks and pushes are timed by their receipt
    # A Tautulli row happens at its stop and is read at the first 5-minute poll after it:
    # after every report received before the stop, before every one received 5 minutes on.
    for index, event in enumerate(originals):
        if event.source != "tautulli":
            continue
        assert event.stopped_at is not None and event.occurred_at == event.stopped_at
        poll = datetime.fromtimestamp((event.stopped_at.timestamp() // 300 + 1) * 300, UTC)
        assert all(e.occurred_at <= poll for e in originals[:index] if e.source != "tautulli")
        assert all(e.occurred_at >= poll for e in originals[index:] if e.source != "tautulli")


def test_tautulli_row_ids_increase_in_emission_order(sim: Simulation) -> None:
    rows = [int(e.session_key) for e in unique_events(sim.events) if e.source == "tautulli"]
    assert rows == sorted(rows) and len(set(rows)) == len(rows)


def test_tautulli_summaries_start_2_to_8_seconds_after_the_plex_play(sim: Simulation) -> None:
    summaries: dict[tuple[str, str, str], list[MediaEvent]] = defaultdict(list)
    plays: set[tuple[str, str, str, object]] = set()
    for event in unique_events(sim.events):
        key = (event.user_id, event.rating_key, event.machine_id)
        if event.source == "tautulli":
            summaries[key].append(event)
        elif event.source == "plex" and event.event_type is EventType.PLAY:
            assert event.started_at == event.occurred_at
            plays.add((*key, event.started_at))
    linked = 0
    for playback in sim.truth:
        key = (playback.user_id, playback.rating_key, playback.machine_id)
        if "plex" in playback.sources:
            assert (*key, playback.started_at) in plays
        if playback.sources == ("plex", "tautulli"):
            deltas = [
                (s.started_at - playback.started_at).total_seconds()
                for s in summaries[key]
                if s.started_at is not None
            ]
            assert len([d for d in deltas if 2 <= d <= 8]) == 1, deltas
            linked += 1
        elif playback.sources == ("tautulli",):
            assert playback.started_at in {s.started_at for s in summaries[key]}
    assert linked == sim.expected.linked


def test_tautulli_durations_are_consistent(sim: Simulation) -> None:
    for event in sim.events:
        if event.source != "tautulli":
            continue
        assert event.started_at is not None and event.stopped_at is not None
        assert event.started_at.microsecond == 0 and event.stopped_at.microsecond == 0
        span = int((event.stopped_at - event.started_at).total_seconds())
        assert event.paused_counter is not None
        assert event.play_duration == span - event.paused_counter > 0


def test_rereported_steps_share_session_key_with_their_original(sim: Simulation) -> None:
    steps: dict[object, list[MediaEvent]] = defaultdict(list)
    for event in unique_events(sim.events):
        steps[step_key(event)].append(event)
    rereports = paused_rereports = 0
    for reports in steps.values():
        if len(reports) == 1:
            continue
        original, *again = reports
        for event in again:  # a Plex pause webhook delivered again after the resume
            assert event.source == "plex"
            assert event.session_key == original.session_key
            assert event.event_type is EventType.PAUSE
            assert event.position_ms == original.position_ms
            assert event.occurred_at > original.occurred_at
            assert event.event_id != original.event_id
        rereports += len(again)
        paused_rereports += sum(e.event_type is EventType.PAUSE for e in again)
    assert rereports == sim.expected.dropped_session_key > 0
    assert paused_rereports > 0


def test_rereports_are_never_redelivered() -> None:
    # Large enough that ~3 % re-deliveries would hit some of its ~150 re-reports.
    big = simulate(SimulationConfig(seed=5, users=60, days=10))
    counts = Counter(event.event_id for event in big.events)
    first_of_step: dict[object, str] = {}
    rereports = 0
    for event in unique_events(big.events):
        original = first_of_step.setdefault(step_key(event), event.event_id)
        if original != event.event_id:
            assert counts[event.event_id] == 1
            rereports += 1
    assert rereports == big.expected.dropped_session_key > 100


def test_pauses_have_distinct_positions_and_positions_move_forward(sim: Simulation) -> None:
    sessions: dict[tuple[str, str], list[MediaEvent]] = defaultdict(list)
    for event in unique_events(sim.events):
        if event.source != "tautulli":
            sessions[event.source, event.session_key].append(event)
    paused_sessions = 0
    for events in sessions.values():
        positions = [e.position_ms for e in events]
        assert all(p is not None for p in positions)
        assert positions == sorted(positions)  # type: ignore[type-var]
        pauses = {e.position_ms for e in events if e.event_type is EventType.PAUSE}
        resumes = [e.position_ms for e in events if e.event_type is EventType.RESUME]
        assert len(set(resumes)) == len(resumes)
        assert pauses == set(resumes)
        paused_sessions += bool(resumes)
    assert paused_sessions > 0


def test_truth_is_sorted_and_every_playback_has_a_source(sim: Simulation) -> None:
    keys = [(t.started_at, t.server_id, t.user_id, t.machine_id, t.rating_key) for t in sim.truth]
    assert keys == sorted(keys)
    order = ("plex", "tautulli", "jellyfin")
    for playback in sim.truth:
        assert playback.sources
        assert list(playback.sources) == sorted(playback.sources, key=order.index)
        assert playback.started_at < playback.stopped_at
        assert playback.started_at.tzinfo is not None


def test_one_user_streams_two_playbacks_at_once_on_two_days(sim: Simulation) -> None:
    # Jellyfin playbacks resumed part-way start before they were first seen (the adapter's
    # rule: first sighting minus position), so they can overlap the one before: not the
    # generation model's overlaps, which are Plex playbacks
    pairs = [(a, b) for a, b in overlapping_pairs(sim.truth) if "jellyfin" not in a.sources]
    assert len({(a.server_id, a.user_id) for a, _ in pairs}) == 1
    assert all(a.machine_id != b.machine_id for a, b in pairs)
    days = {a.started_at.astimezone(UTC).date() for a, _ in pairs}
    assert len(days) >= 2
    assert any(a.rating_key == b.rating_key for a, b in pairs)


def test_a_rewatch_on_the_same_device_is_two_playbacks(sim: Simulation) -> None:
    by_key: dict[tuple[str, str, str, str], list[TruthPlayback]] = defaultdict(list)
    for playback in sim.truth:
        by_key[
            playback.server_id, playback.user_id, playback.rating_key, playback.machine_id
        ].append(playback)
    rewatches = [
        (a, b)
        for playbacks in by_key.values()
        for a, b in pairwise(playbacks)
        if timedelta(minutes=50) <= b.started_at - a.started_at <= timedelta(minutes=70)
    ]
    assert rewatches
    for a, b in rewatches:
        assert a.stopped_at < b.started_at


def test_write_truth_and_read_truth_round_trip(sim: Simulation, tmp_path: Path) -> None:
    path = tmp_path / "truth.json"
    write_truth(path, sim)
    expected, truth = read_truth(path)
    assert expected == sim.expected
    assert truth == sim.truth
    document = msgspec.json.decode(path.read_bytes())
    assert document["config"]["seed"] == CONFIG.seed
    assert document["playbacks"][0]["started_at"].endswith("Z")


def test_write_jsonl_writes_one_line_per_event(sim: Simulation, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert write_jsonl(path, sim.events) == len(sim.events)
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(sim.events)
    assert [decode_event(line) for line in lines[:50]] == sim.events[:50]


def test_event_volume_grows_linearly_with_user_days() -> None:
    small = simulate(SimulationConfig(seed=3, users=10, days=4))
    large = simulate(SimulationConfig(seed=3, users=20, days=8))
    ratio = len(large.events) / len(small.events)
    assert 3.2 <= ratio <= 4.8
    per_user_day = len(large.events) / (20 * 8)
    assert 14 <= per_user_day <= 26


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError):
        simulate(SimulationConfig(users=0))


def test_plex_and_tautulli_reports_name_the_items_library_and_jellyfin_ones_none() -> None:
    """Every Plex-server item is in one section, whichever source reports it; the Jellyfin
    adapter cannot read a library, so simulated Jellyfin events have none either."""
    sim = simulate(SimulationConfig(seed=1, users=3, days=2))
    seen: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for e in sim.events:
        seen.setdefault((e.server_id, e.rating_key), set()).add((e.library_id, e.library_name))
        if e.source == "jellyfin":
            assert (e.library_id, e.library_name) == ("", "")
        else:
            expected = {"movie": ("1", "Movies"), "episode": ("2", "TV Shows")}[e.media_type]
            assert (e.library_id, e.library_name) == expected
    assert all(len(libraries) == 1 for libraries in seen.values())
    assert {e.library_name for e in sim.events} == {"Movies", "TV Shows", ""}


# The production ingestor must not load the simulator: every module of the ``ingestor``
# package but the simulation's own, and the ``run`` command's parser, imported in a fresh
# interpreter, leave no simulation module in ``sys.modules``.
_IMPORT_ALL_BUT_THE_SIMULATION = """
import importlib, pathlib, sys
import ingestor
from ingestor import cli
cli.build_parser().parse_args(["run"])
root = pathlib.Path(ingestor.__file__).parent
for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(root.parent).with_suffix("").parts
    if "simulation" not in parts:
        importlib.import_module(".".join(p for p in parts if p != "__init__"))
print(sorted(name for name in sys.modules if name.startswith("ingestor.simulation")))
"""


def test_the_production_ingestor_never_imports_the_simulator() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL_BUT_THE_SIMULATION],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"
