"""Which sources to run, from the environment or a TOML file: several servers of every kind.

One server of a kind is configured with the plain variables (``TAUTULLI_URL``,
``TAUTULLI_API_KEY``...). More servers of the same kind add a number: ``TAUTULLI_URL_2``,
``TAUTULLI_API_KEY_2``, up to ``_9``; every variable of a kind accepts the suffix. Or list
them in a TOML file named by ``SOURCES_FILE``::

    [[tautulli]]
    url = "http://tautulli.lan:8181"
    api_key = "..."
    sync_interval = "5m"
    server_id = "..."   # only if Tautulli was never connected to Plex (TAUTULLI_SERVER_ID)

    [[jellyfin]]
    url = "http://jellyfin.lan:8096"
    api_key = "..."

Keys in the file are the variable names without the kind prefix, in lower case. Values are
validated like the environment: one line per problem, naming where it came from.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ingestor.config import parse_bool, parse_duration
from ingestor.errors import ConfigError

MAX_SERVERS = 9


@dataclass(frozen=True)
class PlexWebhookConfig:
    token: str | None = None
    owner_id: str | None = None


@dataclass(frozen=True)
class PlexPollConfig:
    name: str
    url: str
    token: str
    interval: float = 5.0
    owner_id: str | None = None


@dataclass(frozen=True)
class TautulliConfig:
    name: str
    url: str
    api_key: str
    sync_interval: float = 300.0
    lookback: float | None = 86400.0  # None: backfill everything
    page_size: int = 1000
    server_id: str | None = None  # the Plex server's id, when Tautulli reports none


@dataclass(frozen=True)
class MediaServerConfig:
    name: str
    flavour: str  # jellyfin | emby
    url: str
    api_key: str


@dataclass(frozen=True)
class JellyfinWebhookConfig:
    token: str | None = None


@dataclass(frozen=True)
class SourcesConfig:
    plex_webhook: PlexWebhookConfig | None = None
    plex_polls: list[PlexPollConfig] = field(default_factory=list)
    tautulli: list[TautulliConfig] = field(default_factory=list)
    media_servers: list[MediaServerConfig] = field(default_factory=list)
    jellyfin_webhook: JellyfinWebhookConfig | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.plex_webhook
            or self.plex_polls
            or self.tautulli
            or self.media_servers
            or self.jellyfin_webhook
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SourcesConfig:
        """Read every source from the environment (and ``SOURCES_FILE``); raise
        :class:`ConfigError` listing all problems."""
        env = os.environ if env is None else env
        problems: list[str] = []
        entries: dict[str, list[_Entry]] = {kind: [] for kind in _KINDS}
        for kind, prefix in _KINDS.items():
            for n in range(1, MAX_SERVERS + 1):
                suffix = "" if n == 1 else f"_{n}"
                values = {
                    key: env[f"{prefix}_{key.upper()}{suffix}"]
                    for key in _KEYS[kind]
                    if env.get(f"{prefix}_{key.upper()}{suffix}", "").strip()
                }
                if values:
                    entries[kind].append(
                        _Entry(values, lambda k, p=prefix, s=suffix: f"{p}_{k.upper()}{s}")
                    )
        file = env.get("SOURCES_FILE", "").strip()
        if file:
            _read_file(Path(file), entries, problems)
        config = _build(entries, problems)
        if problems:
            raise ConfigError(problems)
        return config


# kind -> variable prefix, and the keys each kind takes
_KINDS = {
    "plex_webhook": "PLEX_WEBHOOK",
    "plex": "PLEX",
    "tautulli": "TAUTULLI",
    "jellyfin": "JELLYFIN",
    "emby": "EMBY",
    "jellyfin_webhook": "JELLYFIN_WEBHOOK",
}
_KEYS = {
    "plex_webhook": ["enabled", "token"],
    "plex": ["url", "token", "poll_interval", "owner_id"],
    "tautulli": ["url", "api_key", "sync_interval", "lookback", "page_size", "server_id"],
    "jellyfin": ["url", "api_key"],
    "emby": ["url", "api_key"],
    "jellyfin_webhook": ["enabled", "token"],
}


@dataclass
class _Entry:
    values: dict[str, Any]
    where: Callable[[str], str]  # key -> how to name it in an error


def _read_file(path: Path, entries: dict[str, list[_Entry]], problems: list[str]) -> None:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"SOURCES_FILE={str(path)!r}: no such file")
        return
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"SOURCES_FILE={str(path)!r} is not valid TOML: {exc}")
        return
    for kind, tables in data.items():
        if kind not in _KINDS:
            problems.append(
                f"{path}: unknown source kind [{kind}]; expected one of {', '.join(_KINDS)}"
            )
            continue
        tables = tables if isinstance(tables, list) else [tables]
        for i, table in enumerate(tables, start=1):
            unknown = set(table) - set(_KEYS[kind])
            if unknown:
                problems.append(f"{path}: [{kind}] #{i} has unknown keys {sorted(unknown)}")
            values = {k: str(v) for k, v in table.items() if k in _KEYS[kind]}
            entries[kind].append(
                _Entry(values, lambda k, kind=kind, i=i: f"{path} [{kind}] #{i} {k}")
            )


def _build(entries: dict[str, list[_Entry]], problems: list[str]) -> SourcesConfig:
    def get(
        entry: _Entry, key: str, parse: Callable[[str], Any], accepts: str, default: Any = None
    ) -> Any:
        raw = entry.values.get(key)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            problems.append(f"{entry.where(key)}={raw!r} is invalid: expected {accepts}")
            return default

    def required(entry: _Entry, key: str) -> str:
        value = entry.values.get(key, "").strip()
        if not value:
            problems.append(f"{entry.where(key)} is missing")
        return value

    def url(entry: _Entry) -> str:
        value = required(entry, "url")
        if value and (
            urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname
        ):
            problems.append(
                f"{entry.where('url')}={value!r} is invalid: expected http(s)://HOST[:PORT]"
            )
        return value.rstrip("/")

    plex_webhook = None
    for entry in entries["plex_webhook"][:1]:
        if get(entry, "enabled", parse_bool, "true or false", False):
            owner = next(
                (e.values.get("owner_id") for e in entries["plex"] if e.values.get("owner_id")),
                None,
            )
            plex_webhook = PlexWebhookConfig(
                token=entry.values.get("token") or None, owner_id=owner
            )
    jellyfin_webhook = None
    for entry in entries["jellyfin_webhook"][:1]:
        if get(entry, "enabled", parse_bool, "true or false", False):
            jellyfin_webhook = JellyfinWebhookConfig(token=entry.values.get("token") or None)

    plex_polls = [
        PlexPollConfig(
            name=_name("plex", i),
            url=url(e),
            token=required(e, "token"),
            interval=get(e, "poll_interval", parse_duration, "a duration like 5s", 5.0),
            owner_id=e.values.get("owner_id") or None,
        )
        for i, e in enumerate(entries["plex"])
        if e.values.get("url") or e.values.get("token")
    ]
    tautulli = [
        TautulliConfig(
            name=_name("tautulli", i),
            url=url(e),
            api_key=required(e, "api_key"),
            sync_interval=get(e, "sync_interval", parse_duration, "a duration like 5m", 300.0),
            lookback=get(e, "lookback", _lookback, "a duration like 24h, or all", 86400.0),
            page_size=get(e, "page_size", _page_size, "a whole number, 1-10000", 1000),
            server_id=get(e, "server_id", _server_id, SERVER_ID_ACCEPTS),
        )
        for i, e in enumerate(entries["tautulli"])
    ]
    media_servers = [
        MediaServerConfig(
            name=_name(kind, i), flavour=kind, url=url(e), api_key=required(e, "api_key")
        )
        for kind in ("jellyfin", "emby")
        for i, e in enumerate(entries[kind])
    ]
    return SourcesConfig(plex_webhook, plex_polls, tautulli, media_servers, jellyfin_webhook)


def _name(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}_{index + 1}"


def _lookback(text: str) -> float | None:
    return None if text.strip().lower() == "all" else parse_duration(text)


SERVER_ID_ACCEPTS = (
    "the Plex server's id (its machineIdentifier, the Plex webhook's Server.uuid, e.g. 40 hex "
    "digits): 1-128 letters, digits, '.', '_' or '-'"
)
_SERVER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _server_id(text: str) -> str:
    if not _SERVER_ID.fullmatch(text.strip()):
        raise ValueError(text)
    return text.strip()


def _page_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10_000:
        raise ValueError(text)
    return value
