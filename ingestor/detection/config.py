"""Detection settings: defaults, then a TOML file (``DETECTION_CONFIG``), then the environment.

Every rule has ``enabled`` and ``severity`` (``info``, ``warning``, ``critical``) and its own
parameters; the defaults are the reference implementation's. The file has one table per rule,
its keys the parameter names::

    [concurrent_streams]
    limit = 2
    user_limits = { "8312457" = 4, "bruno" = 1 }   # by user id or username

    [geo_restriction]
    enabled = true
    blocked_countries = ["KP", "RU"]

    [user_agent_anomaly]
    window = "15m"
    suspicious_patterns = ["curl", "python", "headless"]

Each parameter can also be set in the environment as ``DETECTION_<RULE>_<KEY>`` in upper case
(``DETECTION_CONCURRENT_STREAMS_LIMIT=2``, ``DETECTION_GEO_RESTRICTION_BLOCKED_COUNTRIES=KP,RU``,
``DETECTION_CONCURRENT_STREAMS_USER_LIMITS=8312457=4,bruno=1``), which wins over the file.
Durations read like ``5m``, ``30m``, ``4h``, ``7d``; lists are comma separated.

Other variables: ``DETECTION_ENABLED`` (true), ``GEOIP_DB`` (a MaxMind-format database; the
location rules are off without it), ``VPN_RANGES_FILE`` (an offline list of VPN ranges;
``vpn_usage`` is off without it), ``DETECTION_MAX_LATENESS`` (1h: see
:attr:`DetectionConfig.max_lateness`).

A bad value raises :class:`ingestor.errors.ConfigError` with one line per problem, naming
the variable or the file and key.

>>> config = DetectionConfig.from_env({"DETECTION_CONCURRENT_STREAMS_LIMIT": "2"})
>>> config.concurrent_streams.limit, config.impossible_travel.max_speed_kmh
(2, 900.0)
>>> config.geo_restriction.enabled, config.location_rules_off_reason()
(False, 'GEOIP_DB is not set')
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingestor.config import parse_bool, parse_duration
from ingestor.detection.geo import GeoIP, VpnRanges
from ingestor.errors import ConfigError
from ingestor.records import SEVERITIES, Severity

RULES: tuple[str, ...] = (
    "impossible_travel",
    "concurrent_streams",
    "device_velocity",
    "geo_restriction",
    "simultaneous_locations",
    "user_agent_anomaly",
    "vpn_usage",
)
"""Every rule, by name (the tables of DETECTION_CONFIG, the `rule` of an alert)."""

LOCATION_RULES: tuple[str, ...] = ("impossible_travel", "simultaneous_locations", "geo_restriction")
"""The rules that need ``GEOIP_DB``."""

DEFAULT_SUSPICIOUS_PATTERNS: tuple[str, ...] = (
    "curl",
    "wget",
    "python",
    "bot",
    "crawler",
    "spider",
    "headless",
    "phantom",
    "selenium",
    "puppeteer",
)

ENV_PREFIX = "DETECTION_"
_TOP_LEVEL_VARIABLES = ("DETECTION_ENABLED", "DETECTION_CONFIG", "DETECTION_MAX_LATENESS")


# --------------------------------------------------------------------------- value parsers
# Each takes a value from the environment (text) or from the TOML file (native types) and
# returns the setting, or raises ValueError.


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_bool(value)
    raise ValueError(value)


def _severity(value: object) -> str:
    if isinstance(value, str) and value.strip().lower() in SEVERITIES:
        return value.strip().lower()
    raise ValueError(value)


def _number(low: float, high: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, bool):
            raise ValueError(value)
        number = float(value) if isinstance(value, int | float | str) else None
        if number is None or not low <= number <= high:
            raise ValueError(value)
        return number

    return parse


def _whole(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(value)
        number = int(value.strip()) if isinstance(value, str) else value
        if not low <= number <= high:
            raise ValueError(value)
        return number

    return parse


def _duration(low: float, high: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, bool):
            raise ValueError(value)
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = parse_duration(value)
        else:
            raise ValueError(value)
        if not low <= seconds <= high:
            raise ValueError(value)
        return seconds

    return parse


def _texts(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise ValueError(value)
    return tuple(item for item in items if item)


def _patterns(value: object) -> tuple[str, ...]:
    return tuple(item.lower() for item in _texts(value))


def _countries(value: object) -> tuple[str, ...]:
    codes = tuple(code.upper() for code in _texts(value))
    if any(len(code) != 2 or not code.isalpha() for code in codes):
        raise ValueError(value)
    return codes


def _user_limits(value: object) -> Mapping[str, int]:
    pairs: list[tuple[str, object]]
    if isinstance(value, str):
        pairs = []
        for item in _texts(value):
            user, sep, limit = item.rpartition("=")
            if not sep or not user.strip():
                raise ValueError(value)
            pairs.append((user.strip(), limit))
    elif isinstance(value, dict):
        pairs = [(str(user), limit) for user, limit in value.items()]
    else:
        raise ValueError(value)
    positive = _whole(1, 10_000)
    return {user: positive(limit) for user, limit in pairs}


_BOOL = (_bool, "true or false")
_SEVERITY = (_severity, "info, warning or critical")
_DAY = 86_400.0
_KM = (_number(0.0, 20_000.0), "km, 0-20000")
_WINDOW = (_duration(1.0, _DAY), "a duration 1s-1d, like 5m or 30m")
_HISTORY = (_duration(60.0, 90 * _DAY), "a duration 1m-90d, like 7d")
_COUNTRIES = (_countries, "two-letter country codes, comma separated")


# --------------------------------------------------------------------------- rule settings


@dataclass(frozen=True)
class ImpossibleTravelSettings:
    """Two places of one user further apart than ``max_speed_kmh`` allows in the time
    between them (``min_distance_km`` and ``min_time_delta`` filter out noise)."""

    enabled: bool = True
    severity: Severity = "critical"
    max_speed_kmh: float = 900.0
    min_distance_km: float = 100.0
    min_time_delta: float = 300.0  # seconds


@dataclass(frozen=True)
class ConcurrentStreamsSettings:
    """More streams of one user at once than ``limit`` (or the user's own limit, keyed by
    user id or username)."""

    enabled: bool = True
    severity: Severity = "warning"
    limit: int = 3
    user_limits: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceVelocitySettings:
    """One device (machine id) seen from more than ``max_unique_ips`` addresses within
    ``window``."""

    enabled: bool = True
    severity: Severity = "warning"
    window: float = 300.0  # seconds
    max_unique_ips: int = 3


@dataclass(frozen=True)
class GeoRestrictionSettings:
    """A stream from a blocked country, or from one outside the allowed list (when set).
    Off by default: it needs a list."""

    enabled: bool = False
    severity: Severity = "warning"
    blocked_countries: tuple[str, ...] = ()
    allowed_countries: tuple[str, ...] = ()


@dataclass(frozen=True)
class SimultaneousLocationsSettings:
    """A new stream at least ``min_distance_km`` away from another live stream of the same
    user that was reported within ``window``."""

    enabled: bool = True
    severity: Severity = "critical"
    window: float = 1800.0  # seconds
    min_distance_km: float = 50.0


@dataclass(frozen=True)
class UserAgentAnomalySettings:
    """A client matching a suspicious pattern, or, for a user with at least ``min_history``
    playbacks within ``history``, a platform switch or a client never seen in ``history``
    less than ``window`` after the previous playback."""

    enabled: bool = True
    severity: Severity = "warning"
    window: float = 1800.0  # seconds
    history: float = 7 * _DAY  # seconds
    min_history: int = 3
    alert_on_new_user_agent: bool = True
    alert_on_platform_switch: bool = True
    suspicious_patterns: tuple[str, ...] = DEFAULT_SUSPICIOUS_PATTERNS


@dataclass(frozen=True)
class VpnUsageSettings:
    """A stream from a known VPN range: a user's first within ``history``, or a provider
    new to them. Needs ``VPN_RANGES_FILE``."""

    enabled: bool = True
    severity: Severity = "info"
    history: float = 7 * _DAY  # seconds
    alert_on_first_use: bool = True
    alert_on_new_provider: bool = True
    excluded_providers: tuple[str, ...] = ()
    excluded_users: tuple[str, ...] = ()


Parser = tuple[Callable[[object], Any], str]
"""How a setting is read, and what it accepts (for the error line)."""

_PARAMS: dict[str, dict[str, Parser]] = {
    "impossible_travel": {
        "enabled": _BOOL,
        "severity": _SEVERITY,
        "max_speed_kmh": (_number(1.0, 100_000.0), "km/h, 1-100000"),
        "min_distance_km": _KM,
        "min_time_delta": (_duration(0.0, _DAY), "a duration up to 1d, like 5m"),
    },
    "concurrent_streams": {
        "enabled": _BOOL,
        "severity": _SEVERITY,
        "limit": (_whole(1, 10_000), "a whole number, 1-10000"),
        "user_limits": (_user_limits, "user=limit pairs (user id or username), comma separated"),
    },
    "device_velocity": {
        "enabled": _BOOL,
        "severity": _SEVERITY,
        "window": _WINDOW,
        "max_unique_ips": (_whole(1, 1000), "a whole number, 1-1000"),
    },
    "geo_restriction": {
        "enabled": _BOOL,
        "severity": _SEVERITY,
        "blocked_countries": _COUNTRIES,
        "allowed_countries": _COUNTRIES,
    },
    "simultaneous_locations": {
        "enabled": _BOOL,
        "severity": _SEVERITY,
        "window": _WINDOW,
        "min_distance_km": _KM,
    },
    "user_agent_anomaly": {
        "enabled": _BOOL,
        "severity": _SEVERITY,
        "window": _WINDOW,
        "history": _HISTORY,
        "min_history": (_whole(0, 10_000), "a whole number, 0-10000"),
        "alert_on_new_user_agent": _BOOL,
        "alert_on_platform_switch": _BOOL,
        "suspicious_patterns": (_patterns, "words, comma separated"),
    },
    "vpn_usage": {
        "enabled": _BOOL,
        "severity": _SEVERITY,
        "history": _HISTORY,
        "alert_on_first_use": _BOOL,
        "alert_on_new_provider": _BOOL,
        "excluded_providers": (_texts, "names, comma separated"),
        "excluded_users": (_texts, "user ids or usernames, comma separated"),
    },
}


_RULE_TYPES: dict[str, type] = {
    "impossible_travel": ImpossibleTravelSettings,
    "concurrent_streams": ConcurrentStreamsSettings,
    "device_velocity": DeviceVelocitySettings,
    "geo_restriction": GeoRestrictionSettings,
    "simultaneous_locations": SimultaneousLocationsSettings,
    "user_agent_anomaly": UserAgentAnomalySettings,
    "vpn_usage": VpnUsageSettings,
}


@dataclass(frozen=True)
class DetectionConfig:
    """Everything detection needs, read once at start. Build it with :meth:`from_env`.

    ``max_lateness``: after a restart the detector rebuilds its windows by re-reading the
    stream messages recorded within the longest rule horizon plus this much before where it
    resumes; an event that reaches the stream later than this after it happened may be
    judged without some of its history after a restart.
    """

    enabled: bool = True
    geoip_db: Path | None = None
    vpn_ranges_file: Path | None = None
    vpn_ranges: VpnRanges | None = field(default=None, compare=False, repr=False)
    max_lateness: float = 3600.0
    impossible_travel: ImpossibleTravelSettings = field(default_factory=ImpossibleTravelSettings)
    concurrent_streams: ConcurrentStreamsSettings = field(default_factory=ConcurrentStreamsSettings)
    device_velocity: DeviceVelocitySettings = field(default_factory=DeviceVelocitySettings)
    geo_restriction: GeoRestrictionSettings = field(default_factory=GeoRestrictionSettings)
    simultaneous_locations: SimultaneousLocationsSettings = field(
        default_factory=SimultaneousLocationsSettings
    )
    user_agent_anomaly: UserAgentAnomalySettings = field(default_factory=UserAgentAnomalySettings)
    vpn_usage: VpnUsageSettings = field(default_factory=VpnUsageSettings)

    def rule(self, name: str) -> Any:
        """The settings of rule ``name`` (one of :data:`RULES`)."""
        if name not in _RULE_TYPES:
            raise KeyError(f"no rule {name!r}; rules: {', '.join(RULES)}")
        return getattr(self, name)

    def location_rules_off_reason(self) -> str | None:
        """Why the location rules cannot run, or ``None`` when they can."""
        if self.geoip_db is None:
            return "GEOIP_DB is not set"
        return None

    def vpn_off_reason(self) -> str | None:
        """Why ``vpn_usage`` cannot run, or ``None`` when it can."""
        if not self.vpn_usage.enabled:
            return "vpn_usage is disabled"
        if self.vpn_ranges is None:
            return "VPN_RANGES_FILE is not set"
        return None

    def with_rule(self, name: str, **changes: Any) -> DetectionConfig:
        """A copy with rule ``name``'s settings changed (for notebooks and tests).

        >>> DetectionConfig().with_rule("device_velocity", max_unique_ips=5).device_velocity
        DeviceVelocitySettings(enabled=True, severity='warning', window=300.0, max_unique_ips=5)
        """
        return dataclasses.replace(self, **{name: dataclasses.replace(self.rule(name), **changes)})

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DetectionConfig:
        """Read and validate; raise :class:`ConfigError` listing every problem."""
        problems: list[str] = []
        enabled = _read_env(environ, "DETECTION_ENABLED", True, _bool, "true or false", problems)
        max_lateness = _read_env(
            environ,
            "DETECTION_MAX_LATENESS",
            3600.0,
            _duration(0.0, 30 * _DAY),
            "a duration up to 30d, like 1h",
            problems,
        )
        geoip_db = _geoip_path(environ, problems)
        vpn_file, vpn_ranges = _vpn_ranges(environ, problems)
        file_tables = _read_file(environ, problems)
        rules: dict[str, Any] = {}
        for name, kind in _RULE_TYPES.items():
            rules[name] = _rule_settings(name, kind, file_tables.get(name, {}), environ, problems)
        _check_unknown_env(environ, problems)
        geo = rules["geo_restriction"]
        if geo.blocked_countries and geo.allowed_countries:
            problems.append("geo_restriction: set blocked_countries or allowed_countries, not both")
        elif geo.enabled and not (geo.blocked_countries or geo.allowed_countries):
            problems.append(
                "geo_restriction is enabled but has no blocked_countries or allowed_countries "
                "(DETECTION_GEO_RESTRICTION_BLOCKED_COUNTRIES=KP,RU or the config file)"
            )
        if problems:
            raise ConfigError(problems)
        return cls(
            enabled=enabled,
            geoip_db=geoip_db,
            vpn_ranges_file=vpn_file,
            vpn_ranges=vpn_ranges,
            max_lateness=max_lateness,
            **rules,
        )


# --------------------------------------------------------------------------- reading


def env_name(rule: str, key: str) -> str:
    """The environment variable of one rule parameter.

    >>> env_name("concurrent_streams", "limit")
    'DETECTION_CONCURRENT_STREAMS_LIMIT'
    """
    return f"{ENV_PREFIX}{rule.upper()}_{key.upper()}"


def _read_env(
    environ: Mapping[str, str],
    name: str,
    default: Any,
    parse: Callable[[object], Any],
    accepts: str,
    problems: list[str],
) -> Any:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return parse(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is invalid: expected {accepts}")
        return default


def _geoip_path(environ: Mapping[str, str], problems: list[str]) -> Path | None:
    raw = (environ.get("GEOIP_DB") or "").strip()
    if not raw:
        return None
    path = Path(raw)
    try:
        GeoIP(path).close()
    except OSError as exc:
        problems.append(f"GEOIP_DB={raw!r} cannot be read: {exc.strerror or exc}")
    except Exception as exc:
        problems.append(f"GEOIP_DB={raw!r} is not a MaxMind-format database (.mmdb): {exc}")
    return path


def _vpn_ranges(
    environ: Mapping[str, str], problems: list[str]
) -> tuple[Path | None, VpnRanges | None]:
    raw = (environ.get("VPN_RANGES_FILE") or "").strip()
    if not raw:
        return None, None
    path = Path(raw)
    try:
        return path, VpnRanges.load(path)
    except OSError as exc:
        problems.append(f"VPN_RANGES_FILE={raw!r} cannot be read: {exc.strerror or exc}")
    except ValueError as exc:
        problems.extend(f"VPN_RANGES_FILE {line}" for line in str(exc).splitlines())
    return path, None


def _read_file(environ: Mapping[str, str], problems: list[str]) -> dict[str, dict[str, Any]]:
    raw = (environ.get("DETECTION_CONFIG") or "").strip()
    if not raw:
        return {}
    try:
        with Path(raw).open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        problems.append(f"DETECTION_CONFIG={raw!r} cannot be read: {exc.strerror or exc}")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"DETECTION_CONFIG={raw!r} is not valid TOML: {exc}")
        return {}
    tables: dict[str, dict[str, Any]] = {}
    for name, table in document.items():
        if name not in _RULE_TYPES:
            problems.append(
                f"DETECTION_CONFIG {raw}: unknown table [{name}]; rules: {', '.join(RULES)}"
            )
        elif not isinstance(table, dict):
            problems.append(f"DETECTION_CONFIG {raw}: {name} must be a table ([{name}])")
        else:
            tables[name] = {"__file__": raw, **table}
    return tables


def _rule_settings(
    rule: str,
    kind: type,
    table: dict[str, Any],
    environ: Mapping[str, str],
    problems: list[str],
) -> Any:
    origin = table.pop("__file__", None)
    params = _PARAMS[rule]
    values: dict[str, Any] = {}
    for key, value in table.items():
        spec = params.get(key)
        if spec is None:
            problems.append(
                f"DETECTION_CONFIG {origin}: [{rule}] has no setting {key!r}; "
                f"settings: {', '.join(params)}"
            )
            continue
        parse, accepts = spec
        try:
            values[key] = parse(value)
        except ValueError:
            problems.append(
                f"DETECTION_CONFIG {origin}: [{rule}] {key} = {value!r} is invalid: "
                f"expected {accepts}"
            )
    for key, (parse, accepts) in params.items():
        name = env_name(rule, key)
        raw = environ.get(name)
        if raw is None or not raw.strip():
            continue
        try:
            values[key] = parse(raw)
        except ValueError:
            problems.append(f"{name}={raw!r} is invalid: expected {accepts}")
    return kind(**values)


def _check_unknown_env(environ: Mapping[str, str], problems: list[str]) -> None:
    known = set(_TOP_LEVEL_VARIABLES)
    for rule, params in _PARAMS.items():
        known.update(env_name(rule, key) for key in params)
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            problems.append(
                f"{name} is not a detection setting (they are DETECTION_<RULE>_<KEY>, "
                "e.g. DETECTION_CONCURRENT_STREAMS_LIMIT)"
            )


__all__ = [
    "DEFAULT_SUSPICIOUS_PATTERNS",
    "LOCATION_RULES",
    "RULES",
    "ConcurrentStreamsSettings",
    "DetectionConfig",
    "DeviceVelocitySettings",
    "GeoRestrictionSettings",
    "ImpossibleTravelSettings",
    "SimultaneousLocationsSettings",
    "UserAgentAnomalySettings",
    "VpnUsageSettings",
    "env_name",
]
