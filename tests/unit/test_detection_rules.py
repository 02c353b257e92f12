"""The detection rules engine: for every rule a scenario that must fire and a near miss that
must not, against a small MaxMind database written here with mmdb-writer."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from ingestor.detection.config import DetectionConfig
from ingestor.detection.geo import (
    EARTH_RADIUS_KM,
    GeoIP,
    Place,
    VpnRanges,
    haversine_km,
    is_local,
)
from ingestor.detection.rules import Engine, platform_family
from ingestor.events import EventType, MediaEvent, make_event_id
from ingestor.records import Alert

T0 = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
SERVER = "srv-1"

# -------------------------------------------------------------------- the test database


def north_of(base: tuple[float, float], km: float) -> tuple[float, float]:
    """The point ``km`` due north of ``base``: along a meridian the haversine distance is
    exactly R * the latitude difference, so these distances are known without the code
    under test."""
    return (base[0] + math.degrees(km / EARTH_RADIUS_KM), base[1])


BASE = (50.0, 10.0)
# network -> (country, city, (latitude, longitude)) or (country, city, None) for no location
PLACES: dict[str, tuple[str, str, tuple[float, float] | None]] = {
    "11.1.0.0/16": ("GB", "London", (51.5074, -0.1278)),
    "11.2.0.0/16": ("FR", "Paris", (48.8566, 2.3522)),
    "11.3.0.0/16": ("US", "New York", (40.7128, -74.0060)),
    "11.4.0.0/16": ("RU", "Moscow", (55.7558, 37.6173)),
    "11.10.0.0/16": ("DE", "Base", BASE),
    "11.11.0.0/16": ("DE", "900 km north", north_of(BASE, 900.0)),
    "11.12.0.0/16": ("DE", "49 km north", north_of(BASE, 49.0)),
    "11.13.0.0/16": ("DE", "51 km north", north_of(BASE, 51.0)),
    "11.20.0.0/16": ("KP", "", None),  # a country-only record
    "11.50.0.0/16": ("NL", "Amsterdam", (52.37, 4.89)),  # a VPN exit (see VPN below)
    "11.51.0.0/16": ("SE", "Stockholm", (59.33, 18.07)),  # another VPN exit
}
LONDON, PARIS, NEW_YORK, MOSCOW = "11.1.0.10", "11.2.0.10", "11.3.0.10", "11.4.0.10"
AT_BASE, AT_900, AT_49, AT_51 = "11.10.0.1", "11.11.0.1", "11.12.0.1", "11.13.0.1"
IN_KP, NOT_IN_DB = "11.20.0.1", "11.99.0.1"
VPN = ["11.50.0.0/16 ProtonVPN", "11.51.0.0/16 Mullvad"]


def write_city_db(
    path: Path, places: Mapping[str, tuple[str, str, tuple[float, float] | None]] = PLACES
) -> Path:
    """Write a City-style MaxMind database (country.iso_code, city.names.en,
    location.latitude/longitude) that ``maxminddb`` reads like GeoLite2-City."""
    writer = MMDBWriter(
        ip_version=4, database_type="GeoLite2-City", languages=["en"], description="test"
    )
    for network, (country, city, point) in places.items():
        record: dict = {"country": {"iso_code": country}}
        if city:
            record["city"] = {"names": {"en": city}}
        if point is not None:
            record["location"] = {"latitude": point[0], "longitude": point[1]}
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture
def geo(tmp_path: Path) -> Iterable[GeoIP]:
    with GeoIP(write_city_db(tmp_path / "city.mmdb")) as db:
        yield db


# -------------------------------------------------------------------- events


def ev(
    kind: str,
    at: datetime,
    *,
    user: str = "7",
    username: str = "ana",
    machine: str = "tv",
    item: str = "100",
    ip: str = "",
    source: str = "plex",
    started_at: datetime | None = None,
    stopped_at: datetime | None = None,
    platform: str = "Roku",
    product: str = "Plex for Roku",
    player: str = "Living Room",
    device: str = "Roku Ultra",
    **fields,
) -> MediaEvent:
    """One report; ``started_at`` defaults to ``at`` for a play and to nothing otherwise."""
    if started_at is None and kind == "play":
        started_at = at
    return MediaEvent(
        event_id=make_event_id(source, SERVER, kind, user, machine, item, at.isoformat()),
        event_type=EventType(kind),
        occurred_at=at,
        source=source,
        server_id=SERVER,
        session_key=f"{machine}/{item}",
        user_id=user,
        username=username,
        media_type="movie",
        title=f"Movie {item}",
        rating_key=item,
        machine_id=machine,
        ip_address=ip,
        started_at=started_at,
        stopped_at=stopped_at,
        platform=platform,
        product=product,
        player=player,
        device=device,
        **fields,
    )


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def config(**rules: Mapping[str, object]) -> DetectionConfig:
    c = DetectionConfig()
    for rule, changes in rules.items():
        c = c.with_rule(rule, **changes)
    return c


def run(events: Iterable[MediaEvent], cfg: DetectionConfig | None = None, **kw) -> list[Alert]:
    return Engine(cfg or DetectionConfig(), **kw).feed_all(events)


def fired(alerts: list[Alert], rule: str) -> list[Alert]:
    return [a for a in alerts if a.rule == rule]


# -------------------------------------------------------------------- geo


def test_haversine_along_a_meridian_is_the_radius_times_the_angle() -> None:
    for km in (1.0, 49.0, 900.0, 5000.0):
        assert haversine_km(BASE, north_of(BASE, km)) == pytest.approx(km, rel=1e-9)
    assert haversine_km((51.5074, -0.1278), (40.7128, -74.0060)) == pytest.approx(5570, abs=5)


def test_the_test_database_reads_like_a_city_database(geo: GeoIP) -> None:
    london = geo.locate(LONDON)
    assert london == Place("GB", "London", 51.5074, -0.1278)
    assert geo.locate(IN_KP) == Place("KP", "", None, None)
    assert geo.locate(NOT_IN_DB) is None


def test_local_addresses_are_never_a_place_even_if_the_database_lists_them(
    tmp_path: Path,
) -> None:
    places = {
        "192.168.0.0/16": ("GB", "London", (51.5, -0.1)),
        "11.1.0.0/16": PLACES["11.1.0.0/16"],
    }
    with GeoIP(write_city_db(tmp_path / "lan.mmdb", places)) as db:
        assert db.locate("192.168.1.20") is None
        assert db.locate("127.0.0.1") is None
        assert db.locate("::ffff:192.168.1.20") is None
        assert db.locate("") is None and db.locate("not-an-ip") is None
        assert db.locate("::1") is None  # IPv6 in an IPv4 database: unknown, no error
        assert db.locate("11.1.2.3") is not None
    assert all(is_local(a) for a in ("10.0.0.1", "172.16.5.4", "169.254.0.9", "100.64.1.1"))


# -------------------------------------------------------------------- impossible travel


def test_impossible_travel_fires_at_901_km_h(geo: GeoIP) -> None:
    hours = 900.0 / 901.0
    events = [
        ev("play", T0, machine="tv", ip=AT_BASE),
        ev("play", T0 + timedelta(hours=hours), machine="phone", item="200", ip=AT_900),
    ]
    alerts = fired(run(events, geo=geo), "impossible_travel")
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.severity == "critical"
    assert alert.details["speed_kmh"] == pytest.approx(901, abs=0.01)
    assert alert.details["distance_km"] == pytest.approx(900, abs=0.01)
    assert alert.occurred_at == events[1].occurred_at  # event time, not the wall clock
    assert alert.event_ids == [events[1].event_id, events[0].event_id]
    assert alert.alert_id == make_event_id("alert", "impossible_travel", events[1].event_id, "")


def test_impossible_travel_stays_quiet_at_899_km_h(geo: GeoIP) -> None:
    events = [
        ev("play", T0, machine="tv", ip=AT_BASE),
        ev("play", T0 + timedelta(hours=900 / 899), machine="phone", item="200", ip=AT_900),
    ]
    assert fired(run(events, geo=geo), "impossible_travel") == []


def test_impossible_travel_measures_from_the_last_report_not_the_last_start(geo: GeoIP) -> None:
    """Watching in London until 04:00 and starting in New York at 04:30 is impossible, even
    though the London playback *started* eight hours earlier."""
    london = [
        ev("play", T0, ip=LONDON),
        ev("stop", T0 + timedelta(hours=8), ip=LONDON, started_at=T0),
    ]
    flight = ev("play", T0 + timedelta(hours=8, minutes=30), machine="phone", item="2", ip=NEW_YORK)
    assert len(fired(run([*london, flight], geo=geo), "impossible_travel")) == 1
    later = ev("play", T0 + timedelta(hours=15), machine="phone", item="2", ip=NEW_YORK)
    assert fired(run([*london, later], geo=geo), "impossible_travel") == []  # 743 km/h


def test_impossible_travel_ignores_hops_shorter_than_the_minimum_time(geo: GeoIP) -> None:
    events = [
        ev("play", T0, ip=LONDON),
        ev("play", T0 + minutes(4), machine="p", item="2", ip=NEW_YORK),
    ]
    assert fired(run(events, geo=geo), "impossible_travel") == []


def test_a_private_ip_never_travels(geo: GeoIP) -> None:
    events = [
        ev("play", T0, machine="tv", ip=LONDON),
        ev("play", T0 + minutes(10), machine="laptop", item="2", ip="192.168.1.20"),
        ev("play", T0 + minutes(20), machine="phone", item="3", ip="10.0.0.7"),
    ]
    assert run(events, geo=geo) == []
    # nor does a private address become the place a later report is measured from
    events = [
        ev("play", T0, machine="tv", ip="192.168.1.20"),
        ev("play", T0 + minutes(20), machine="phone", item="3", ip=NEW_YORK),
    ]
    assert run(events, geo=geo) == []


def test_an_address_outside_the_database_or_without_coordinates_is_no_place(geo: GeoIP) -> None:
    for elsewhere in (NOT_IN_DB, IN_KP):
        events = [
            ev("play", T0, ip=LONDON),
            ev("play", T0 + minutes(20), machine="phone", item="2", ip=elsewhere),
        ]
        assert run(events, geo=geo) == [], elsewhere


def test_a_report_marked_lan_is_no_place_whatever_its_address(geo: GeoIP) -> None:
    events = [
        ev("play", T0, ip=LONDON),
        ev("play", T0 + minutes(20), machine="phone", item="2", ip=NEW_YORK, location_type="lan"),
    ]
    assert run(events, geo=geo) == []


def test_without_a_database_the_location_rules_are_off() -> None:
    events = [
        ev("play", T0, ip=LONDON),
        ev("play", T0 + minutes(20), machine="phone", item="2", ip=NEW_YORK),
    ]
    engine = Engine(config(geo_restriction={"enabled": True, "blocked_countries": ("US",)}))
    assert engine.feed_all(events) == []
    on = engine.active_rules()
    assert not on["impossible_travel"] and not on["simultaneous_locations"]
    assert not on["geo_restriction"] and on["concurrent_streams"]


# -------------------------------------------------------------------- concurrent streams


def four_streams(n: int = 4) -> list[MediaEvent]:
    return [ev("play", T0 + minutes(i), machine=f"device-{i}", item=str(i)) for i in range(n)]


def test_concurrent_streams_fires_on_the_fourth_stream() -> None:
    events = four_streams(4)
    alerts = run(events)
    assert [a.rule for a in alerts] == ["concurrent_streams"]
    assert alerts[0].severity == "warning"
    assert alerts[0].details["active_streams"] == 4 and alerts[0].details["limit"] == 3
    assert alerts[0].event_ids[0] == events[3].event_id
    assert set(alerts[0].event_ids) == {e.event_id for e in events}


def test_three_streams_are_within_the_default_limit() -> None:
    assert run(four_streams(3)) == []


def test_several_reports_of_one_playback_count_once() -> None:
    """Each of three playbacks is reported by the Plex webhook, by Tautulli's activity
    poll (a few seconds later), re-reported by pause/resume, delivered twice, and summarised
    by Tautulli: still three streams."""
    events: list[MediaEvent] = []
    for i in range(3):
        start = T0 + minutes(i)
        machine, item = f"device-{i}", str(i)
        play = ev("play", start, machine=machine, item=item)
        events += [
            play,
            ev("play", start + timedelta(seconds=7), machine=machine, item=item,
               source="tautulli_activity", started_at=start + timedelta(seconds=5)),
            ev("pause", start + minutes(5), machine=machine, item=item, started_at=start),
            play,  # an exact re-delivery
            ev("resume", start + minutes(6), machine=machine, item=item, started_at=start),
        ]  # fmt: skip
    events.append(
        ev("summary", T0 + minutes(30), machine="device-9", item="9", source="tautulli",
           started_at=T0, stopped_at=T0 + minutes(29))
    )  # fmt: skip
    assert run(events) == []


def test_a_summary_closes_a_stream_but_never_opens_one() -> None:
    three = four_streams(3)
    closed = ev(
        "summary", T0 + minutes(10), machine="device-0", item="0", source="tautulli",
        started_at=T0 + timedelta(seconds=4), stopped_at=T0 + minutes(9),
    )  # fmt: skip
    fourth = ev("play", T0 + minutes(11), machine="device-3", item="3")
    assert run([*three, closed, fourth]) == []
    # a summary of a playback never seen live, spanning now, does not make a fourth stream
    unseen = ev(
        "summary", T0 + minutes(12), machine="device-9", item="9", source="tautulli",
        started_at=T0, stopped_at=T0 + minutes(30),
    )  # fmt: skip
    third = ev("play", T0 + minutes(13), machine="device-4", item="4")
    assert run([*four_streams(2), unseen, third]) == []


def test_a_stopped_stream_no_longer_counts() -> None:
    three = four_streams(3)
    stop = ev("stop", T0 + minutes(10), machine="device-1", item="1", started_at=T0 + minutes(1))
    fourth = ev("play", T0 + minutes(11), machine="device-3", item="3")
    assert run([*three, stop, fourth]) == []
    assert len(run([*three, fourth])) == 1


def test_a_stream_started_more_than_four_hours_ago_is_not_live() -> None:
    old = ev("play", T0 - timedelta(hours=4, minutes=1), machine="old", item="old")
    assert run([old, *four_streams(3)]) == []


def test_per_user_limits_apply_by_user_id_or_username() -> None:
    two = four_streams(2)
    strict = config(concurrent_streams={"user_limits": {"7": 1}})
    assert len(run(two, strict)) == 1
    by_name = config(concurrent_streams={"user_limits": {"ana": 1}})
    assert len(run(two, by_name)) == 1
    generous = config(concurrent_streams={"user_limits": {"7": 4}})
    assert run(four_streams(4), generous) == []


def test_a_redelivered_opening_does_not_fire_again() -> None:
    events = four_streams(4)
    engine = Engine(DetectionConfig())
    assert len(engine.feed_all(events)) == 1
    assert engine.feed(events[3]) == []
    assert engine.stats.redelivered == 1


# -------------------------------------------------------------------- device velocity


def hops(addresses: list[str], spacing: timedelta) -> list[MediaEvent]:
    return [
        ev("progress", T0 + spacing * i, ip=ip, started_at=T0, position_ms=i * 1000)
        for i, ip in enumerate(addresses)
    ]


def test_device_velocity_fires_on_a_fourth_address_within_five_minutes() -> None:
    events = hops(["81.2.69.1", "81.2.69.2", "81.2.69.3", "81.2.69.4"], minutes(1))
    alerts = fired(run(events), "device_velocity")
    assert len(alerts) == 1
    assert alerts[0].details["unique_ips"] == 4
    assert alerts[0].event_ids[0] == events[3].event_id


def test_three_addresses_or_four_spread_over_six_minutes_are_fine() -> None:
    assert run(hops(["81.2.69.1", "81.2.69.2", "81.2.69.3"], minutes(1))) == []
    assert run(hops(["81.2.69.1", "81.2.69.2", "81.2.69.3", "81.2.69.4"], minutes(2))) == []
    back_and_forth = hops(["81.2.69.1", "81.2.69.2", "81.2.69.3", "81.2.69.1"], minutes(1))
    assert run(back_and_forth) == []


def test_local_addresses_count_as_one_network_for_device_velocity() -> None:
    """Tautulli reports a device's LAN address, the Plex webhook its public one, DHCP moves
    it around the LAN: that is two networks, not five addresses."""
    lan = ["192.168.1.20", "192.168.1.21", "10.0.0.4", "81.2.69.1", "192.168.1.22"]
    assert run(hops(lan, minutes(1))) == []
    assert len(run(hops([*lan, "81.2.69.2", "81.2.69.3"], minutes(0.5)))) == 1


# -------------------------------------------------------------------- geo restriction


def test_geo_restriction_fires_for_a_blocked_country_when_enabled(geo: GeoIP) -> None:
    blocking = config(geo_restriction={"enabled": True, "blocked_countries": ("RU", "KP")})
    moscow = [ev("play", T0, ip=MOSCOW)]
    alerts = run(moscow, blocking, geo=geo)
    assert [(a.rule, a.details["country"]) for a in alerts] == [("geo_restriction", "RU")]
    assert run([ev("play", T0, ip=IN_KP)], blocking, geo=geo)[0].details["country"] == "KP"
    assert run([ev("play", T0, ip=LONDON)], blocking, geo=geo) == []
    assert run(moscow, geo=geo) == []  # off by default


def test_geo_restriction_allowlist_fires_outside_it_and_never_for_unknown_places(
    geo: GeoIP,
) -> None:
    allowing = config(geo_restriction={"enabled": True, "allowed_countries": ("GB",)})
    assert len(run([ev("play", T0, ip=PARIS)], allowing, geo=geo)) == 1
    assert run([ev("play", T0, ip=LONDON)], allowing, geo=geo) == []
    assert run([ev("play", T0, ip="192.168.1.2")], allowing, geo=geo) == []
    assert run([ev("play", T0, ip=NOT_IN_DB)], allowing, geo=geo) == []


# -------------------------------------------------------------------- simultaneous locations


def test_simultaneous_locations_fires_51_km_apart(geo: GeoIP) -> None:
    events = [
        ev("play", T0, machine="tv", ip=AT_BASE),
        ev("play", T0 + minutes(10), machine="phone", item="2", ip=AT_51),
    ]
    alerts = fired(run(events, geo=geo), "simultaneous_locations")
    assert len(alerts) == 1 and alerts[0].severity == "critical"
    assert alerts[0].details["max_distance_km"] == pytest.approx(51, abs=0.01)


def test_simultaneous_locations_is_quiet_49_km_apart_or_after_a_stop(geo: GeoIP) -> None:
    near = [
        ev("play", T0, machine="tv", ip=AT_BASE),
        ev("play", T0 + minutes(10), machine="phone", item="2", ip=AT_49),
    ]
    assert run(near, geo=geo) == []
    stopped = [
        ev("play", T0, machine="tv", ip=AT_BASE),
        ev("stop", T0 + minutes(5), machine="tv", ip=AT_BASE, started_at=T0),
        ev("play", T0 + minutes(10), machine="phone", item="2", ip=AT_51),
    ]
    assert fired(run(stopped, geo=geo), "simultaneous_locations") == []


def test_simultaneous_locations_only_looks_at_streams_reported_within_the_window(
    geo: GeoIP,
) -> None:
    quiet_since = [
        ev("play", T0, machine="tv", ip=AT_BASE),
        ev("play", T0 + minutes(31), machine="phone", item="2", ip=AT_51),
    ]
    assert fired(run(quiet_since, geo=geo), "simultaneous_locations") == []
    still_reporting = [
        ev("play", T0, machine="tv", ip=AT_BASE),
        ev("progress", T0 + minutes(25), machine="tv", ip=AT_BASE, started_at=T0),
        ev("play", T0 + minutes(31), machine="phone", item="2", ip=AT_51),
    ]
    assert len(fired(run(still_reporting, geo=geo), "simultaneous_locations")) == 1


# -------------------------------------------------------------------- user agent anomaly


def test_a_client_matching_a_suspicious_pattern_fires() -> None:
    bot = ev("play", T0, product="python-requests", platform="Linux")
    alerts = run([bot])
    assert [a.details["anomaly"] for a in alerts] == ["suspicious_pattern"]
    assert alerts[0].details["pattern"] == "python"
    assert run([ev("play", T0)]) == []


def history(n: int, **client: str) -> list[MediaEvent]:
    """``n`` earlier playbacks of one client, an hour apart and each finished."""
    events = []
    for i in range(n):
        start = T0 + timedelta(hours=i)
        events += [
            ev("play", start, machine="ipad", item=f"h{i}", **client),
            ev("stop", start + minutes(20), machine="ipad", item=f"h{i}", started_at=start,
               **client),
        ]  # fmt: skip
    return events


IPAD = {"platform": "iOS", "product": "Plex for iOS", "player": "iPad", "device": "iPad"}
PIXEL = {"platform": "Android", "product": "Plex for Android", "player": "Pixel", "device": "Pixel"}
IPHONE = {"platform": "iOS", "product": "Plex for iOS", "player": "iPhone", "device": "iPhone"}


def test_a_platform_switch_within_the_window_fires_after_enough_history() -> None:
    before = history(3, **IPAD)
    switch = ev("play", before[-1].occurred_at + minutes(10), machine="pixel", item="x", **PIXEL)
    alerts = run([*before, switch])
    assert [a.details["anomaly"] for a in alerts] == ["platform_switch"]
    assert alerts[0].event_ids == [switch.event_id, before[-2].event_id]


def test_a_platform_switch_without_enough_history_or_after_the_window_is_fine() -> None:
    short = history(2, **IPAD)
    switch = ev("play", short[-1].occurred_at + minutes(10), machine="pixel", item="x", **PIXEL)
    assert run([*short, switch]) == []
    before = history(3, **IPAD)
    late = ev("play", before[-2].occurred_at + minutes(31), machine="pixel", item="x", **PIXEL)
    assert run([*before, late]) == []


def test_a_new_client_of_the_same_platform_fires_as_new_user_agent() -> None:
    before = history(3, **IPAD)
    new = ev("play", before[-1].occurred_at + minutes(5), machine="iphone", item="x", **IPHONE)
    assert [a.details["anomaly"] for a in run([*before, new])] == ["new_user_agent"]


def test_a_client_already_seen_in_the_history_is_not_new() -> None:
    seen = history(3, **IPHONE)
    same = ev("play", seen[-1].occurred_at + minutes(5), machine="iphone2", item="x", **IPHONE)
    assert run([*seen, same]) == []
    mixed = [*history(1, **IPAD), *history(3, **IPHONE)[2:]]
    back = ev("play", mixed[-1].occurred_at + minutes(5), machine="ipad", item="y", **IPAD)
    assert run([*mixed, back]) == []


# -------------------------------------------------------------------- vpn usage


def test_vpn_usage_fires_on_first_use_and_on_a_new_provider_only() -> None:
    ranges = VpnRanges.parse(VPN)
    events = [
        ev("play", T0, machine="a", item="1", ip="11.50.1.1"),
        ev("play", T0 + timedelta(hours=1), machine="a", item="2", ip="11.50.9.9"),
        ev("play", T0 + timedelta(hours=2), machine="a", item="3", ip="11.51.0.1"),
        ev("play", T0 + timedelta(hours=3), machine="a", item="4", ip="81.2.69.1"),
    ]
    alerts = fired(run(events, vpn=ranges), "vpn_usage")
    assert [(a.details["reason"], a.details["provider"]) for a in alerts] == [
        ("first_use", "ProtonVPN"),
        ("new_provider", "Mullvad"),
    ]
    assert {a.severity for a in alerts} == {"info"}


def test_vpn_usage_is_off_without_ranges_and_skips_excluded_providers_and_lan() -> None:
    first = [ev("play", T0, ip="11.50.1.1")]
    assert run(first) == []
    ranges = VpnRanges.parse(VPN)
    excluded = config(vpn_usage={"excluded_providers": ("ProtonVPN",)})
    assert run(first, excluded, vpn=ranges) == []
    assert run([ev("play", T0, ip="11.50.1.1", location_type="lan")], vpn=ranges) == []
    assert len(run(first, vpn=ranges)) == 1


# -------------------------------------------------------------------- determinism


def mixed_feed() -> list[MediaEvent]:
    """Three days of one busy household: overlapping streams, travel, device hops."""
    events: list[MediaEvent] = []
    ips = [LONDON, PARIS, NEW_YORK, AT_BASE, AT_51, "192.168.1.5", "81.2.69.7", "11.50.1.1"]
    clients = [IPAD, PIXEL, IPHONE, {"platform": "Roku"}]
    for day in range(3):
        for slot in range(12):
            start = T0 + timedelta(days=day, minutes=37 * slot)
            machine, item = f"m{slot % 5}", f"{day}-{slot}"
            ip = ips[(day + slot) % len(ips)]
            client = clients[slot % len(clients)]
            user = str(7 + (slot // 6) % 2)
            kw = {"machine": machine, "item": item, "ip": ip, "user": user, **client}
            events += [
                ev("play", start, **kw),
                ev("progress", start + minutes(3), started_at=start, position_ms=1, **kw),
                ev("stop", start + minutes(50), started_at=start, **kw),
            ]
    return events


BUSY = config(
    concurrent_streams={"limit": 1},
    device_velocity={"window": 8 * 3600.0, "max_unique_ips": 2},
    user_agent_anomaly={"window": 3600.0, "history": 7200.0},
    vpn_usage={"history": 7200.0},  # so the horizon is ~22 h (impossible travel), not 7 d
)
"""Settings under which :func:`mixed_feed` makes every rule but geo_restriction fire."""


def test_the_same_events_always_give_the_same_alerts(geo: GeoIP) -> None:
    events = mixed_feed()
    ranges = VpnRanges.parse(VPN)
    first = run(events, BUSY, geo=geo, vpn=ranges)
    second = run(events, BUSY, geo=geo, vpn=ranges)
    assert first and first == second
    assert len({a.alert_id for a in first}) == len(first)
    assert {a.rule for a in first} == {
        "impossible_travel",
        "concurrent_streams",
        "device_velocity",
        "simultaneous_locations",
        "user_agent_anomaly",
        "vpn_usage",
    }


def test_pruning_the_state_changes_no_decision(geo: GeoIP) -> None:
    events = mixed_feed()
    plain = Engine(BUSY, geo=geo, vpn=VpnRanges.parse(VPN))
    pruned = Engine(BUSY, geo=geo, vpn=VpnRanges.parse(VPN))
    a = plain.feed_all(events)
    b: list[Alert] = []
    for event in events:
        b += pruned.feed(event)
        pruned.prune()
    assert a == b
    assert pruned.state_size()["event_ids"] < plain.state_size()["event_ids"]


def test_an_engine_fed_only_the_horizon_before_a_point_decides_the_rest_the_same(
    geo: GeoIP,
) -> None:
    """What the detector's warm-up relies on after a restart."""
    events = mixed_feed()
    cut = len(events) // 2 + 1
    whole = Engine(BUSY, geo=geo, vpn=VpnRanges.parse(VPN))
    whole.feed_all(events[:cut])
    expected = whole.feed_all(events[cut:])
    warmed = Engine(BUSY, geo=geo, vpn=VpnRanges.parse(VPN))
    newest = max(e.occurred_at for e in events[:cut])
    kept = [e for e in events[:cut] if e.occurred_at >= newest - warmed.horizon]
    assert len(kept) < cut  # the warm-up really leaves the older events out
    warmed.feed_all(kept)
    assert expected and warmed.feed_all(events[cut:]) == expected


def test_platform_families() -> None:
    assert platform_family("iPhone") == platform_family("iOS") == "iOS"
    assert platform_family("Android TV") == "Android"
    assert platform_family("Windows 11") == "Windows"
