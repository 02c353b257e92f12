from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ingestor.config import Settings, parse_duration
from ingestor.errors import ConfigError
from tests.conftest import INGESTOR, subprocess_env


def test_defaults_follow_the_contract() -> None:
    s = Settings.from_env({})
    assert s.nats_enabled and s.nats_event_sourcing and s.nats_embedded
    assert s.nats_retention_days == 7 and s.nats_batch_size == 1000
    assert s.nats_flush_interval == 5.0 and s.dedup_tolerance == 10.0
    assert s.data_dir == Path("data")
    assert s.nats_store_dir == Path("data/nats/jetstream")
    assert s.duckdb_path == Path("data/analytics.duckdb")
    assert s.archive_dir == Path("data/archive")
    assert s.nats_url == "nats://127.0.0.1:4222"
    assert (s.http_host, s.http_port, s.log_level) == ("127.0.0.1", 3857, "info")


def test_paths_follow_data_dir_unless_set() -> None:
    s = Settings.from_env({"DATA_DIR": "/srv/d", "DUCKDB_PATH": "/fast/a.duckdb"})
    assert s.nats_store_dir == Path("/srv/d/nats/jetstream")
    assert s.duckdb_path == Path("/fast/a.duckdb")


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("5s", 5), ("5m", 300), ("24h", 86400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_every_bad_value_gets_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                "NATS_BATCH_SIZE": "lots",
                "NATS_FLUSH_INTERVAL": "5 parsecs",
                "NATS_ENABLED": "maybe",
                "NATS_URL": "http://x",
                "HTTP_PORT": "70000",
            }
        )
    problems = info.value.problems
    assert len(problems) == 5
    for name in ("NATS_BATCH_SIZE", "NATS_FLUSH_INTERVAL", "NATS_ENABLED", "NATS_URL", "HTTP_PORT"):
        assert sum(p.startswith(name + "=") for p in problems) == 1


def test_nats_url_may_list_a_cluster() -> None:
    s = Settings.from_env({"NATS_URL": "nats://a:4222, nats://b:4222"})
    assert s.nats_servers == ["nats://a:4222", "nats://b:4222"]


def test_cli_stops_on_a_bad_value_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [*INGESTOR, "status"],
        env=subprocess_env({"DATA_DIR": str(tmp_path), "NATS_RETENTION_DAYS": "-3"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ingestor: NATS_RETENTION_DAYS='-3' is invalid: expected a whole number of days, 1-3650"
    ]


def test_readiness_lag_and_broadcast_token_have_defaults_and_are_checked() -> None:
    s = Settings.from_env({})
    assert s.ready_max_lag == 10_000 and s.broadcast_token is None
    s = Settings.from_env({"READY_MAX_LAG": "250", "BROADCAST_TOKEN": "  s3cret "})
    assert s.ready_max_lag == 250 and s.broadcast_token == "s3cret"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"READY_MAX_LAG": "-1"})
    assert info.value.problems == [
        "READY_MAX_LAG='-1' is invalid: expected a whole number of messages, 0-1000000000"
    ]


def test_nats_replicas_default_to_one_and_accept_only_odd_cluster_sizes() -> None:
    assert Settings.from_env({}).nats_replicas == 1
    assert Settings.from_env({"NATS_REPLICAS": "5"}).nats_replicas == 5
    with pytest.raises(ConfigError, match=r"NATS_REPLICAS='4' is invalid: expected 1, 3 or 5"):
        Settings.from_env({"NATS_REPLICAS": "4"})
