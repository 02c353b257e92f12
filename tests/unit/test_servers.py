"""The server in the subject, PROJECT_SERVERS, and the guard against a changed server set
(docs/architecture.md, "Several ingestors")."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestor.config import Settings
from ingestor.errors import ConfigError
from ingestor.events import media_subject, parse_media_subject, subject_token
from ingestor.nats.streams import consumer_filter_subjects
from ingestor.projection import Projection
from ingestor.records import AUDIT_PREFIX, record_kind
from ingestor.servers import Partition, check_projection
from tests.conftest import INGESTOR, subprocess_env

PLEX = "5d4f5c0a1e2b3c4d5e6f708192a3b4c5d6e7f809"  # a Plex machine id: 40 hex
JELLYFIN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # a Jellyfin server id: 32 hex
# a NATS subject token: no separator, wildcard or white space
TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def test_a_media_subject_names_the_server_first_and_reads_back() -> None:
    subject = media_subject(PLEX, "plex", "episode")
    assert subject == f"playback.{PLEX}.plex.episode"
    parsed = parse_media_subject(subject)
    assert parsed is not None and (parsed.server, parsed.source, parsed.media_type) == (
        PLEX,
        "plex",
        "episode",
    )
    assert str(parsed) == subject


def test_an_old_subject_without_server_reads_and_upcasts_to_the_current_form() -> None:
    old = parse_media_subject("playback.tautulli.movie")
    assert old is not None and old.server is None
    assert (old.source, old.media_type) == ("tautulli", "movie")
    assert str(old) == "playback.tautulli.movie"
    assert str(old.upcast(JELLYFIN)) == f"playback.{JELLYFIN}.tautulli.movie"
    # a subject that names its server keeps it, whatever the payload says
    new = parse_media_subject(f"playback.{PLEX}.plex.movie")
    assert new is not None and new.upcast(JELLYFIN) == new


@pytest.mark.parametrize(
    "subject",
    ["audit.confirm", "alert.concurrent_streams", "identity.merge", "playback", "playback.a",
     "playback.a.b.c.d", "playback..plex.movie", "dlq.media_events.invalid_event"],
)  # fmt: skip
def test_anything_else_is_no_media_subject(subject: str) -> None:
    assert parse_media_subject(subject) is None


def test_record_subjects_are_told_apart_from_both_media_forms() -> None:
    assert record_kind(media_subject(PLEX, "plex", "movie")) is None
    assert record_kind("playback.plex.movie") is None
    assert record_kind(AUDIT_PREFIX + "confirm") is not None


@given(st.text(max_size=30), st.text(max_size=12), st.text(max_size=12))
def test_no_server_source_or_type_can_break_a_subject(
    server: str, source: str, media_type: str
) -> None:
    subject = media_subject(server, source, media_type)
    tokens = subject.split(".")
    assert len(tokens) == 4 and tokens[0] == "playback"
    assert all(TOKEN.match(t) for t in tokens[1:]), subject
    parsed = parse_media_subject(subject)
    assert parsed is not None and parsed.server == subject_token(server)


def test_a_missing_server_gets_a_fixed_token() -> None:
    assert media_subject("", "plex", "movie") == "playback.unknown.plex.movie"
    assert media_subject("a.b *>", "plex", "movie") == "playback.a_b_.plex.movie"


def test_filter_subjects_take_each_server_the_old_form_and_every_record_family() -> None:
    filters = consumer_filter_subjects([JELLYFIN, PLEX, PLEX])
    assert filters is not None
    assert filters[:3] == [f"playback.{JELLYFIN}.*.*", f"playback.{PLEX}.*.*", "playback.*.*"]
    assert {"audit.>", "alert.>", "identity.>"} <= set(filters)
    assert consumer_filter_subjects([]) is None
    # JetStream refuses overlapping filters: a server's have four tokens, the old form three
    assert all(f.count(".") == 3 for f in filters[:2]) and filters[2].count(".") == 2


def test_project_servers_is_a_comma_separated_set_and_empty_means_all() -> None:
    assert Settings.from_env({}).partition.all
    assert Settings.from_env({"PROJECT_SERVERS": " , "}).partition.all
    partition = Settings.from_env({"PROJECT_SERVERS": f"{PLEX}, {JELLYFIN},{PLEX}"}).partition
    assert partition.servers == (JELLYFIN, PLEX)
    assert partition.keeps(PLEX) and not partition.keeps("another")


@pytest.mark.parametrize("value", [f"{PLEX} {JELLYFIN}", "plex*", "playback.>", "a,b c"])
def test_a_bad_project_servers_value_is_one_line_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PROJECT_SERVERS": value})
    assert info.value.problems == [
        f"PROJECT_SERVERS={value!r} is invalid: expected media server ids separated by "
        "commas, without spaces or wildcards (empty: all)"
    ]


def test_the_cli_refuses_a_bad_project_servers_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*INGESTOR, "status"],
        env=subprocess_env({"DATA_DIR": str(tmp_path), "PROJECT_SERVERS": "plex*"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ingestor: PROJECT_SERVERS='plex*' is invalid: expected media server ids separated "
        "by commas, without spaces or wildcards (empty: all)"
    ]


def test_durable_names_differ_per_server_set_and_are_valid_names() -> None:
    plex, jellyfin, both = (Partition.parse(s) for s in (PLEX, JELLYFIN, f"{JELLYFIN},{PLEX}"))
    names = {p.durable("projector") for p in (plex, jellyfin, both, Partition())}
    assert len(names) == 4 and "projector" in names
    assert all(TOKEN.match(n) for n in names)
    assert Partition.parse(f"{PLEX},{JELLYFIN}").durable("archiver") == both.durable("archiver")


def test_a_file_projected_for_one_server_set_refuses_another(tmp_path: Path) -> None:
    path = tmp_path / "analytics.duckdb"
    db = Projection(path)
    check_projection(db.con, Partition.parse(PLEX), path)  # a new file takes the set
    check_projection(db.con, Partition.parse(PLEX), path)  # the same set again: fine
    for other in (Partition.parse(JELLYFIN), Partition.parse(f"{PLEX},{JELLYFIN}"), Partition()):
        with pytest.raises(ConfigError) as info:
            check_projection(db.con, other, path)
        (line,) = info.value.problems
        assert line.startswith("PROJECT_SERVERS=") and f"servers {PLEX}" in line
        assert "its own DATA_DIR" in line
    db.close()


def test_a_file_from_before_project_servers_holding_rows_counts_as_every_server(
    tmp_path: Path,
) -> None:
    path = tmp_path / "analytics.duckdb"
    db = Projection(path)
    db.con.execute("INSERT INTO projection_checkpoint VALUES ('projector', 42, now())")
    with pytest.raises(ConfigError, match="holds the projection of every server"):
        check_projection(db.con, Partition.parse(PLEX), path)
    check_projection(db.con, Partition(), path)
    db.close()


@pytest.mark.parametrize("mode", [{"NATS_ENABLED": "false"}, {"NATS_EVENT_SOURCING": "false"}])
def test_project_servers_needs_the_stream_it_partitions(mode: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PROJECT_SERVERS": PLEX, **mode})
    assert info.value.problems == [
        "PROJECT_SERVERS is set, but it partitions the stream: it needs NATS_ENABLED=true "
        "and NATS_EVENT_SOURCING=true (or leave it empty)"
    ]
    assert Settings.from_env(mode).partition.all  # without it, every mode is as before


async def test_the_demo_refuses_a_partition(tmp_path: Path) -> None:
    from ingestor.commands.demo import run_demo
    from ingestor.simulation import SimulationConfig

    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "PROJECT_SERVERS": PLEX})
    with pytest.raises(ConfigError, match="PROJECT_SERVERS is for `ingestor run`"):
        await run_demo(settings, SimulationConfig(users=1, days=1), out=lambda _: None)
    assert not list(tmp_path.iterdir())  # refused before anything was written
