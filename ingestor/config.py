"""Settings, read from the environment once, validated once, passed down.

Every variable of the README's configuration table is here with its default. A bad value stops the
start with one line per problem naming the variable and what it accepts.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ingestor.errors import ConfigError
from ingestor.servers import ALL_SERVERS, Partition

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
LOG_LEVELS = ("debug", "info", "warning", "error")
REPLICA_COUNTS = (1, 3, 5)  # NATS_REPLICAS: an odd count, so a majority survives a lost node


def parse_duration(text: str) -> float:
    """Parse ``500ms``, ``5s``, ``5m``, ``24h`` or ``7d`` into seconds.

    >>> parse_duration("500ms"), parse_duration("5m")
    (0.5, 300.0)
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


@dataclass(frozen=True)
class Settings:
    """The ingestor's configuration. Build it with :meth:`from_env`."""

    data_dir: Path
    nats_enabled: bool
    nats_event_sourcing: bool
    nats_retention_days: int
    nats_batch_size: int
    nats_flush_interval: float
    nats_embedded: bool
    nats_store_dir: Path
    nats_url: str
    duckdb_path: Path
    archive_dir: Path
    dedup_tolerance: float
    http_host: str
    http_port: int
    log_level: str
    query_token: str | None = None
    ready_max_lag: int = 10_000
    broadcast_token: str | None = None
    nats_replicas: int = 1
    stale_after: float = 1800.0
    ip_anonymize: bool = False
    partition: Partition = ALL_SERVERS  # PROJECT_SERVERS (ingestor/servers.py)

    @property
    def nats_servers(self) -> list[str]:
        """``NATS_URL`` may list a cluster, comma separated."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def event_sourcing(self) -> bool:
        """True when the stream is the source of truth (the default)."""
        return self.nats_enabled and self.nats_event_sourcing

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read and validate every variable; raise :class:`ConfigError` listing all problems.

        >>> s = Settings.from_env({"DATA_DIR": "/tmp/d", "NATS_FLUSH_INTERVAL": "500ms"})
        >>> str(s.duckdb_path), s.nats_flush_interval, s.nats_batch_size
        ('/tmp/d/analytics.duckdb', 0.5, 1000)
        """
        env = os.environ if env is None else env
        reader = _Reader(env)
        data_dir = Path(reader.get("DATA_DIR", "./data", str))
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "nats_enabled": reader.get("NATS_ENABLED", "true", parse_bool, "true or false"),
            "nats_event_sourcing": reader.get(
                "NATS_EVENT_SOURCING", "true", parse_bool, "true or false"
            ),
            "nats_retention_days": reader.get(
                "NATS_RETENTION_DAYS", "7", _int_between(1, 3650), "a whole number of days, 1-3650"
            ),
            "nats_batch_size": reader.get(
                "NATS_BATCH_SIZE", "1000", _int_between(1, 100_000), "a whole number, 1-100000"
            ),
            "nats_flush_interval": reader.get(
                "NATS_FLUSH_INTERVAL",
                "5s",
                _duration_between(0.01, 3600),
                "a duration between 10ms and 1h, like 500ms, 5s, 1m",
            ),
            "nats_embedded": reader.get("NATS_EMBEDDED", "true", parse_bool, "true or false"),
            "nats_store_dir": Path(
                reader.get("NATS_STORE_DIR", str(data_dir / "nats" / "jetstream"), str)
            ),
            "nats_url": reader.get(
                "NATS_URL",
                "nats://127.0.0.1:4222",
                _nats_url,
                "nats://HOST:PORT, or several separated by commas",
            ),
            "duckdb_path": Path(reader.get("DUCKDB_PATH", str(data_dir / "analytics.duckdb"), str)),
            "archive_dir": Path(reader.get("ARCHIVE_DIR", str(data_dir / "archive"), str)),
            "dedup_tolerance": reader.get(
                "DEDUP_TOLERANCE",
                "10s",
                _duration_between(0, 3600),
                "a duration up to 1h, like 10s",
            ),
            "http_host": reader.get("HTTP_HOST", "127.0.0.1", _nonempty, "a host name or address"),
            "http_port": reader.get(
                "HTTP_PORT", "3857", _int_between(0, 65535), "a port number, 0-65535"
            ),
            "log_level": reader.get(
                "LOG_LEVEL", "info", _one_of(LOG_LEVELS), "one of " + ", ".join(LOG_LEVELS)
            ),
            "query_token": (env.get("QUERY_TOKEN") or "").strip() or None,
            "ready_max_lag": reader.get(
                "READY_MAX_LAG",
                "10000",
                _int_between(0, 1_000_000_000),
                "a whole number of messages, 0-1000000000",
            ),
            "broadcast_token": (env.get("BROADCAST_TOKEN") or "").strip() or None,
            "stale_after": reader.get(
                "STALE_AFTER",
                "30m",
                _duration_between(60, 7 * 86400),
                "a duration from 1m to 7d, like 30m",
            ),
            "nats_replicas": reader.get(
                "NATS_REPLICAS", "1", _int_in(REPLICA_COUNTS), "1, 3 or 5 (JetStream replicas)"
            ),
            "ip_anonymize": reader.get("IP_ANONYMIZE", "false", parse_bool, "true or false"),
            "partition": reader.get(
                "PROJECT_SERVERS",
                "",
                Partition.parse,
                "media server ids separated by commas, without spaces or wildcards (empty: all)",
            ),
        }
        if not values["partition"].all and not (
            values["nats_enabled"] and values["nats_event_sourcing"]
        ):
            reader.problems.append(
                "PROJECT_SERVERS is set, but it partitions the stream: it needs "
                "NATS_ENABLED=true and NATS_EVENT_SOURCING=true (or leave it empty)"
            )
        if reader.problems:
            raise ConfigError(reader.problems)
        values.update(overrides)
        return cls(**values)

    def embedded_listen(self) -> tuple[str, int]:
        """Host and port the embedded server listens on: the first URL of ``NATS_URL``."""
        parts = urlsplit(self.nats_servers[0])
        return parts.hostname or "127.0.0.1", parts.port or 4222

    def configure_logging(self) -> None:
        logging.basicConfig(
            level=getattr(logging, self.log_level.upper()),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def get(
        self,
        name: str,
        default: str,
        parse: Callable[[str], Any],
        accepts: str = "a value",
    ) -> Any:
        raw = self.env.get(name)
        text = default if raw is None or raw.strip() == "" else raw
        try:
            return parse(text)
        except ValueError:
            self.problems.append(f"{name}={text!r} is invalid: expected {accepts}")
            return parse(default)


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def _int_in(choices: tuple[int, ...]) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if value not in choices:
            raise ValueError(text)
        return value

    return parse


def _duration_between(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = parse_duration(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(text)
        return value

    return parse


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text.strip()


def _nats_url(text: str) -> str:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise ValueError(text)
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ValueError(text)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(text) from None
    return ",".join(urls)
