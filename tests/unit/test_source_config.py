from __future__ import annotations

from pathlib import Path

import pytest

from ingestor.errors import ConfigError
from ingestor.sources.config import SourcesConfig


def test_no_source_variables_means_no_sources() -> None:
    assert SourcesConfig.from_env({}).empty


def test_numbered_variables_configure_several_servers_of_a_kind() -> None:
    config = SourcesConfig.from_env(
        {
            "TAUTULLI_URL": "http://t1:8181/",
            "TAUTULLI_API_KEY": "k1",
            "TAUTULLI_URL_2": "http://t2:8181",
            "TAUTULLI_API_KEY_2": "k2",
            "TAUTULLI_LOOKBACK_2": "all",
            "TAUTULLI_SYNC_INTERVAL_2": "1m",
            "JELLYFIN_URL": "http://jf:8096",
            "JELLYFIN_API_KEY": "j",
            "EMBY_URL_3": "https://emby.example",
            "EMBY_API_KEY_3": "e",
            "PLEX_WEBHOOK_ENABLED": "true",
            "PLEX_WEBHOOK_TOKEN": "secret",
            "PLEX_OWNER_ID": "8312457",
        }
    )
    assert [(t.name, t.url, t.api_key, t.lookback, t.sync_interval) for t in config.tautulli] == [
        ("tautulli", "http://t1:8181", "k1", 86400.0, 300.0),
        ("tautulli_2", "http://t2:8181", "k2", None, 60.0),
    ]
    assert [(m.flavour, m.url) for m in config.media_servers] == [
        ("jellyfin", "http://jf:8096"),
        ("emby", "https://emby.example"),
    ]
    assert config.plex_webhook is not None
    assert (config.plex_webhook.token, config.plex_webhook.owner_id) == ("secret", "8312457")
    assert config.plex_polls == []


def test_a_sources_file_lists_servers(tmp_path: Path) -> None:
    file = tmp_path / "sources.toml"
    file.write_text(
        """
[[tautulli]]
url = "http://t1:8181"
api_key = "k1"
page_size = 200

[[plex]]
url = "http://pms:32400"
token = "tok"
poll_interval = "15s"

[jellyfin_webhook]
enabled = true
"""
    )
    config = SourcesConfig.from_env({"SOURCES_FILE": str(file)})
    assert config.tautulli[0].page_size == 200
    assert (config.plex_polls[0].url, config.plex_polls[0].interval) == ("http://pms:32400", 15.0)
    assert config.jellyfin_webhook is not None


def test_every_problem_is_one_line_naming_where_it_came_from(tmp_path: Path) -> None:
    file = tmp_path / "sources.toml"
    file.write_text(
        '[[jellyfin]]\nurl = "jellyfin.lan"\napi_key = "x"\ncolour = "red"\n'
        '[[tautulli]]\nurl = "http://t2:8181"\napi_key = "k2"\nserver_id = "a/b"\n'
    )
    with pytest.raises(ConfigError) as info:
        SourcesConfig.from_env(
            {
                "TAUTULLI_URL": "http://t1:8181",
                "TAUTULLI_PAGE_SIZE": "lots",
                "TAUTULLI_SERVER_ID": "my server",
                "EMBY_URL_2": "http://emby",
                "SOURCES_FILE": str(file),
            }
        )
    problems = info.value.problems
    assert "TAUTULLI_API_KEY is missing" in problems
    assert "TAUTULLI_PAGE_SIZE='lots' is invalid: expected a whole number, 1-10000" in problems
    assert "EMBY_API_KEY_2 is missing" in problems
    assert any("[jellyfin] #1 has unknown keys ['colour']" in p for p in problems)
    assert any("[jellyfin] #1 url='jellyfin.lan' is invalid" in p for p in problems)
    accepts = (
        "expected the Plex server's id (its machineIdentifier, the Plex webhook's Server.uuid, "
        "e.g. 40 hex digits): 1-128 letters, digits, '.', '_' or '-'"
    )
    assert f"TAUTULLI_SERVER_ID='my server' is invalid: {accepts}" in problems
    assert f"{file} [tautulli] #1 server_id='a/b' is invalid: {accepts}" in problems
    assert len(problems) == 7


def test_tautulli_server_id_comes_from_the_environment_or_the_sources_file(
    tmp_path: Path,
) -> None:
    plex_id = "8f2c1a9d4b7e6f3a0c5d2e1b9a8f7c6d5e4b3a21"
    file = tmp_path / "sources.toml"
    file.write_text(
        f'[[tautulli]]\nurl = "http://t2:8181"\napi_key = "k2"\nserver_id = "{plex_id}"\n'
    )
    config = SourcesConfig.from_env(
        {"TAUTULLI_URL": "http://t1:8181", "TAUTULLI_API_KEY": "k1", "SOURCES_FILE": str(file)}
    )
    assert [t.server_id for t in config.tautulli] == [None, plex_id]
    named = SourcesConfig.from_env(
        {"TAUTULLI_URL": "http://t1:8181", "TAUTULLI_API_KEY": "k1", "TAUTULLI_SERVER_ID": "x-1"}
    )
    assert named.tautulli[0].server_id == "x-1"
