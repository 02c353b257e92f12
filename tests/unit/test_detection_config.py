"""Detection settings: the reference's defaults, a TOML file, environment overrides, and one
clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestor.detection.config import DEFAULT_SUSPICIOUS_PATTERNS, DetectionConfig, env_name
from ingestor.errors import ConfigError
from tests.unit.test_detection_rules import write_city_db


def problems_of(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        DetectionConfig.from_env(environ)
    return caught.value.problems


def test_the_defaults_are_the_reference_implementations() -> None:
    c = DetectionConfig.from_env({})
    it = c.impossible_travel
    assert (it.enabled, it.severity, it.max_speed_kmh, it.min_distance_km, it.min_time_delta) == (
        True,
        "critical",
        900.0,
        100.0,
        300.0,
    )
    cs = c.concurrent_streams
    assert (cs.enabled, cs.severity, cs.limit, dict(cs.user_limits)) == (True, "warning", 3, {})
    dv = c.device_velocity
    assert (dv.severity, dv.window, dv.max_unique_ips) == ("warning", 300.0, 3)
    gr = c.geo_restriction
    assert (gr.enabled, gr.blocked_countries, gr.allowed_countries) == (False, (), ())
    sl = c.simultaneous_locations
    assert (sl.severity, sl.window, sl.min_distance_km) == ("critical", 1800.0, 50.0)
    ua = c.user_agent_anomaly
    assert (ua.severity, ua.window, ua.min_history) == ("warning", 1800.0, 3)
    assert ua.alert_on_new_user_agent and ua.alert_on_platform_switch
    assert ua.suspicious_patterns == DEFAULT_SUSPICIOUS_PATTERNS
    assert "puppeteer" in ua.suspicious_patterns and "curl" in ua.suspicious_patterns
    assert c.vpn_usage.severity == "info" and c.vpn_ranges is None
    assert c.geoip_db is None and c.enabled and c.max_lateness == 3600.0
    assert c.location_rules_off_reason() == "GEOIP_DB is not set"
    assert c.vpn_off_reason() == "VPN_RANGES_FILE is not set"


def test_the_file_sets_rules_and_the_environment_wins_over_it(tmp_path: Path) -> None:
    path = tmp_path / "detection.toml"
    path.write_text(
        """
[concurrent_streams]
limit = 2
severity = "critical"
user_limits = { "8312457" = 4, "bruno" = 1 }

[geo_restriction]
enabled = true
blocked_countries = ["kp", "RU"]

[user_agent_anomaly]
window = "15m"
suspicious_patterns = ["Curl", "headless"]

[impossible_travel]
max_speed_kmh = 1000
min_time_delta = 600
"""
    )
    c = DetectionConfig.from_env(
        {
            "DETECTION_CONFIG": str(path),
            "DETECTION_CONCURRENT_STREAMS_LIMIT": "5",
            "DETECTION_DEVICE_VELOCITY_WINDOW": "10m",
        }
    )
    assert c.concurrent_streams.limit == 5  # the environment wins
    assert c.concurrent_streams.severity == "critical"  # the file is kept otherwise
    assert dict(c.concurrent_streams.user_limits) == {"8312457": 4, "bruno": 1}
    assert c.geo_restriction.enabled and c.geo_restriction.blocked_countries == ("KP", "RU")
    assert c.user_agent_anomaly.window == 900.0
    assert c.user_agent_anomaly.suspicious_patterns == ("curl", "headless")
    assert c.impossible_travel.max_speed_kmh == 1000.0
    assert c.impossible_travel.min_time_delta == 600.0
    assert c.device_velocity.window == 600.0


def test_every_parameter_has_an_environment_variable() -> None:
    c = DetectionConfig.from_env(
        {
            "DETECTION_CONCURRENT_STREAMS_USER_LIMITS": "8312457=5, bruno=1",
            "DETECTION_GEO_RESTRICTION_ENABLED": "true",
            "DETECTION_GEO_RESTRICTION_ALLOWED_COUNTRIES": "gb,fr",
            "DETECTION_SIMULTANEOUS_LOCATIONS_MIN_DISTANCE_KM": "75.5",
            "DETECTION_USER_AGENT_ANOMALY_ALERT_ON_NEW_USER_AGENT": "false",
            "DETECTION_VPN_USAGE_EXCLUDED_PROVIDERS": "CorpVPN, Acme VPN",
            "DETECTION_IMPOSSIBLE_TRAVEL_ENABLED": "no",
            "DETECTION_MAX_LATENESS": "2h",
        }
    )
    assert dict(c.concurrent_streams.user_limits) == {"8312457": 5, "bruno": 1}
    assert c.geo_restriction.allowed_countries == ("GB", "FR")
    assert c.simultaneous_locations.min_distance_km == 75.5
    assert not c.user_agent_anomaly.alert_on_new_user_agent
    assert c.vpn_usage.excluded_providers == ("CorpVPN", "Acme VPN")
    assert not c.impossible_travel.enabled
    assert c.max_lateness == 7200.0
    assert (
        env_name("device_velocity", "max_unique_ips") == "DETECTION_DEVICE_VELOCITY_MAX_UNIQUE_IPS"
    )


def test_every_bad_value_is_one_line_naming_its_variable() -> None:
    problems = problems_of(
        {
            "DETECTION_CONCURRENT_STREAMS_LIMIT": "0",
            "DETECTION_IMPOSSIBLE_TRAVEL_SEVERITY": "loud",
            "DETECTION_DEVICE_VELOCITY_WINDOW": "five minutes",
            "DETECTION_GEO_RESTRICTION_BLOCKED_COUNTRIES": "Russia",
            "DETECTION_CONCURENT_STREAMS_LIMIT": "2",  # a typo
            "DETECTION_ENABLED": "maybe",
        }
    )
    assert len(problems) == 6, problems
    expected = [
        "DETECTION_CONCURRENT_STREAMS_LIMIT='0'",
        "DETECTION_IMPOSSIBLE_TRAVEL_SEVERITY='loud'",
        "DETECTION_DEVICE_VELOCITY_WINDOW='five minutes'",
        "DETECTION_GEO_RESTRICTION_BLOCKED_COUNTRIES='Russia'",
        "DETECTION_CONCURENT_STREAMS_LIMIT is not a detection setting",
        "DETECTION_ENABLED='maybe'",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert any("info, warning or critical" in p for p in problems)


def test_file_problems_name_the_file_table_and_key(tmp_path: Path) -> None:
    path = tmp_path / "detection.toml"
    path.write_text(
        """
[concurrent_streams]
limt = 2

[device_velocity]
max_unique_ips = -1

[no_such_rule]
x = 1
"""
    )
    problems = problems_of({"DETECTION_CONFIG": str(path)})
    assert len(problems) == 3, problems
    assert all(str(path) in p for p in problems)
    assert any("[concurrent_streams] has no setting 'limt'" in p for p in problems)
    assert any("[device_velocity] max_unique_ips = -1 is invalid" in p for p in problems)
    assert any("unknown table [no_such_rule]" in p for p in problems)
    assert problems_of({"DETECTION_CONFIG": str(tmp_path / "missing.toml")})[0].startswith(
        "DETECTION_CONFIG="
    )
    broken = tmp_path / "broken.toml"
    broken.write_text("[concurrent_streams\nlimit = 2")
    assert "not valid TOML" in problems_of({"DETECTION_CONFIG": str(broken)})[0]


def test_geo_restriction_needs_exactly_one_list_when_enabled() -> None:
    [problem] = problems_of({"DETECTION_GEO_RESTRICTION_ENABLED": "true"})
    assert "geo_restriction is enabled but has no" in problem
    [problem] = problems_of(
        {
            "DETECTION_GEO_RESTRICTION_BLOCKED_COUNTRIES": "RU",
            "DETECTION_GEO_RESTRICTION_ALLOWED_COUNTRIES": "GB",
        }
    )
    assert "not both" in problem


def test_geoip_db_must_be_a_readable_maxmind_database(tmp_path: Path) -> None:
    db = write_city_db(tmp_path / "city.mmdb")
    c = DetectionConfig.from_env({"GEOIP_DB": str(db)})
    assert c.geoip_db == db and c.location_rules_off_reason() is None
    [missing] = problems_of({"GEOIP_DB": str(tmp_path / "nope.mmdb")})
    assert missing.startswith("GEOIP_DB=") and "cannot be read" in missing
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a database")
    [invalid] = problems_of({"GEOIP_DB": str(junk)})
    assert "is not a MaxMind-format database" in invalid


def test_vpn_ranges_file_is_read_and_bad_lines_are_named(tmp_path: Path) -> None:
    good = tmp_path / "vpn.txt"
    good.write_text(
        "# exits\n185.159.156.0/22 ProtonVPN\n\n2a07:b944::/32 Mullvad\n198.54.128.0/24\n"
    )
    c = DetectionConfig.from_env({"VPN_RANGES_FILE": str(good)})
    assert c.vpn_ranges is not None and len(c.vpn_ranges) == 3
    assert c.vpn_ranges.lookup("185.159.157.1") == "ProtonVPN"
    assert c.vpn_ranges.lookup("2a07:b944::1") == "Mullvad"
    assert c.vpn_off_reason() is None
    bad = tmp_path / "bad.txt"
    bad.write_text("185.159.156.0/22 ProtonVPN\nnonsense here\n300.1.1.0/24\n")
    problems = problems_of({"VPN_RANGES_FILE": str(bad)})
    assert [p.split(": ", 1)[0] for p in problems] == [
        f"VPN_RANGES_FILE {bad}:2",
        f"VPN_RANGES_FILE {bad}:3",
    ]
