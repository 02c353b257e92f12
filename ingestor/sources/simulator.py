"""A seeded, deterministic simulator of a realistic playback feed, with its ground truth.

The simulated world has two servers: one Plex server, reported both by Plex webhooks
(source ``plex``) and by Tautulli (source ``tautulli``), and one Jellyfin server reported by
its WebSocket (source ``jellyfin``). ``users`` people watch for ``days`` days from
``base_date``; every person has a Plex account and a Jellyfin user, 1-3 devices on each
server, and follows a few shows.

The ground truth (:class:`TruthPlayback`) is the list of playbacks the *generation model*
produced; it never comes from any de-duplication logic. Around it the simulator injects what
real feeds do:

* a playback reported by several sources (Plex webhooks and Tautulli; ``expected.linked``);
* exact re-deliveries: the very same event again 1 s-10 min later (``dropped_event_id``);
* Jellyfin WebSocket reconnects re-reporting a session's ``play`` (and ``pause`` if paused)
  with a new receipt time (``dropped_session_key``);
* one person streaming two playbacks at once on two devices (on the first two days, the
  first time of the same item), and one person re-watching an item on the same device about
  an hour later. Both stay separate playbacks.

Volume: about 19-20 events per user-day (about 2.5 playbacks per user-day; about 6 events per
Plex playback counting its Tautulli row, 10 per Jellyfin playback, plus 3 % re-deliveries),
so ``users=300, days=30`` gives about 175k events (in about 5 s). The event count grows
linearly with ``users * days``.

Determinism: everything is drawn from one ``random.Random(seed)`` in a fixed order, times are
integer milliseconds from ``base_date`` (never the wall clock), and no ordering depends on
set or hash order: the same :class:`SimulationConfig` gives byte-identical output.
"""

from __future__ import annotations

import base64
import os
import string
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

import msgspec

from ingestor.events import (
    EventType,
    MediaEvent,
    encode_event,
    make_event_id,
    percent_of,
    utc,
)

DEFAULT_BASE_DATE = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday

PLEX = "plex"
TAUTULLI = "tautulli"
JELLYFIN = "jellyfin"
_SOURCE_ORDER = (PLEX, TAUTULLI, JELLYFIN)

# Shares of the generation model.
PLEX_SHARE = 0.60  # playbacks on the Plex server (the rest on Jellyfin)
WEBHOOK_SHARE = 0.92  # Plex playbacks reported by webhooks
TAUTULLI_SHARE = 0.90  # Plex playbacks reported by Tautulli
RECONNECT_SHARE = 0.15  # Jellyfin playbacks re-reported after a WebSocket reconnect
REDELIVERY_SHARE = 0.03  # events delivered twice
TAUTULLI_POLL_S = 300  # Tautulli writes a finished session at the next 5-minute tick
JELLYFIN_PROGRESS_MS = 600_000  # a progress report every ~10 minutes of playing
SCROBBLE_FRACTION = 0.9

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_MINUTE_MS = 60_000
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000

# Relative weight of each start hour (UTC is the viewers' local time here): evening-heavy.
_WEEKDAY_HOURS = (
    2.0, 1.0, 0.5, 0.2, 0.1, 0.1, 0.3, 0.6, 0.6, 0.6, 0.7, 0.8,
    1.2, 1.0, 0.9, 1.0, 1.3, 2.0, 3.5, 5.5, 7.0, 6.5, 4.5, 3.0,
)  # fmt: skip
_WEEKEND_HOURS = tuple(w * 2.2 if 9 <= hour <= 17 else w for hour, w in enumerate(_WEEKDAY_HOURS))
# Playbacks a day (0-4) for light, regular and heavy viewers.
_DAILY_COUNT_WEIGHTS = (
    (15, 28, 30, 17, 10),
    (5, 12, 28, 30, 25),
    (2, 6, 20, 32, 40),
)
_VIEWER_KIND_WEIGHTS = (25, 50, 25)
_PAUSE_COUNT_WEIGHTS = (20, 30, 28, 22)

_FIRST_NAMES = (
    "alice", "bruno", "chloe", "dmitri", "elena", "farid", "greta", "hiro", "ines", "jonas",
    "kavya", "liam", "mara", "nadia", "oscar", "priya", "quinn", "rafael", "sofia", "tomas",
    "uma", "viktor", "wren", "xena", "yusuf", "zoe", "amir", "bea", "carlos", "dana",
    "emil", "fiona", "gabe", "hana", "ivan", "julia", "kofi", "lena", "mateo", "noor",
)  # fmt: skip
_LAST_INITIALS = "ABCDEFGHJKLMNPRSTVW"
_ADJECTIVES = (
    "Silent", "Crimson", "Last", "Hidden", "Broken", "Golden", "Distant", "Electric",
    "Frozen", "Wild", "Quiet", "Burning", "Hollow", "Midnight", "Paper", "Iron", "Glass",
    "Northern", "Lost", "Second", "Velvet", "Scarlet", "Endless", "Bitter",
)  # fmt: skip
_NOUNS = (
    "Harbor", "Orchard", "Signal", "Kingdom", "River", "Horizon", "Garden", "Machine",
    "Letter", "Summer", "Empire", "Lighthouse", "Frontier", "Archive", "Tide", "Circuit",
    "Meadow", "Station", "Canyon", "Voyage", "Mirror", "Winter", "Compass", "Harvest",
)  # fmt: skip
_PUBLIC_FIRST_OCTETS = (24, 47, 67, 68, 71, 73, 76, 82, 86, 92, 98, 108, 109, 174, 185, 212)

# Plex clients: (platform, product, player title, product version, mobile).
_PLEX_CLIENTS = (
    ("Roku", "Plex for Roku", "Living Room Roku", "8.4.2.4029", False),
    ("Android", "Plex for Android (TV)", "SHIELD Android TV", "10.19.1.1016", False),
    ("Chrome", "Plex Web", "Chrome", "4.136.1", False),
    ("tvOS", "Plex for Apple TV", "Apple TV", "8.43", False),
    ("iOS", "Plex for iOS", "iPhone", "2025.12.0", True),
    ("Android", "Plex for Android (Mobile)", "Pixel 8", "10.22.0.2074", True),
    ("Windows", "Plex HTPC", "LIVINGROOM-PC", "1.67.1", False),
    ("webOS", "Plex for LG", "LG OLED65C1", "2.6.1", False),
    ("Firefox", "Plex Web", "Firefox", "4.136.1", False),
)
# Jellyfin clients: (platform, client, device name, version, device id style, mobile).
_JELLYFIN_CLIENTS = (
    ("Chrome", "Jellyfin Web", "Chrome", "10.10.7", "web", False),
    ("Firefox", "Jellyfin Web", "Firefox", "10.10.7", "web", False),
    ("Android TV", "Jellyfin Android TV", "SHIELD Android TV", "0.18.11", "hex16", False),
    ("Android", "Jellyfin Android", "Pixel 8", "2.6.3", "hex16", True),
    ("iOS", "Swiftfin iOS", "iPhone", "1.3.0", "uuid", True),
    ("tvOS", "Swiftfin tvOS", "Apple TV", "1.3.0", "uuid", False),
    ("Windows", "Jellyfin Media Player", "DESKTOP-7QK2M", "1.11.1", "hex32", False),
    ("Roku", "Jellyfin Roku", "Roku Ultra", "2.2.5", "hex32", False),
)
_WEB_USER_AGENTS = {
    "Chrome": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Firefox": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
}
_RESOLUTIONS = ("4k", "1080", "1080", "1080", "720")
_SOURCE_BITRATE_KBPS = {"4k": (25_000, 60_000), "1080": (6_000, 20_000), "720": (2_500, 5_000)}
_AUDIO_CODECS = ("aac", "ac3", "eac3", "eac3", "truehd", "dts")


# ---------------------------------------------------------------------------------------
# public types


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate: ``users`` people over ``days`` days from ``base_date``."""

    seed: int = 7
    users: int = 20
    days: int = 7
    base_date: datetime = DEFAULT_BASE_DATE


class TruthPlayback(msgspec.Struct, frozen=True):
    """One playback the simulator generated, as the generation model knows it."""

    server_id: str
    user_id: str
    rating_key: str
    machine_id: str
    media_type: str
    title: str
    started_at: datetime
    stopped_at: datetime
    paused_seconds: int
    sources: tuple[str, ...]


# what a projected playback is compared on (a column of playback_events each)
TRUTH_KEY_FIELDS = (
    "server_id",
    "user_id",
    "rating_key",
    "machine_id",
    "started_at",
    "stopped_at",
    "paused_seconds",
)


def truth_keys(truth: Iterable[TruthPlayback]) -> set[tuple]:
    """The playbacks as comparable tuples of :data:`TRUTH_KEY_FIELDS`."""
    return {tuple(getattr(t, name) for name in TRUTH_KEY_FIELDS) for t in truth}


class ExpectedCounts(msgspec.Struct, frozen=True):
    """What a correct pipeline must count for the simulated feed."""

    published: int
    playbacks: int
    dropped_event_id: int
    dropped_session_key: int
    linked: int


class Simulation(msgspec.Struct, frozen=True):
    """The feed in publish order, its ground truth and the expected counts."""

    events: list[MediaEvent]
    truth: list[TruthPlayback]
    expected: ExpectedCounts
    config: SimulationConfig = msgspec.field(default_factory=SimulationConfig)


# ---------------------------------------------------------------------------------------
# the simulated world


@dataclass(frozen=True, slots=True)
class _Library:
    movies: tuple[_Item, ...]
    shows: tuple[tuple[_Item, ...], ...]  # each show's episodes in airing order


@dataclass(frozen=True, slots=True)
class _Device:
    machine_id: str
    platform: str
    product: str
    product_version: str
    player: str
    local: bool
    lan_ip: str  # the address the server sees for a LAN client
    public_ip: str  # the household's WAN address at home, the device's own address away


@dataclass(slots=True)
class _Person:
    index: int
    username: str
    friendly_name: str
    plex_user_id: str
    plex_thumb: str
    jellyfin_user_id: str
    home_ip: str
    plex_devices: tuple[_Device, ...]
    jellyfin_devices: tuple[_Device, ...]
    daily_weights: tuple[int, ...]
    favourite_shows: tuple[int, ...]
    next_episode: dict[int, int]


@dataclass(frozen=True, slots=True)
class _World:
    plex_server_id: str
    jellyfin_server_id: str
    plex_library: _Library
    jellyfin_library: _Library
    people: tuple[_Person, ...]


@dataclass(frozen=True, slots=True)
class _Stream:
    decision: str
    resolution: str
    video_codec: str
    audio_codec: str
    bitrate_kbps: int


@dataclass(slots=True)
class _Playback:
    server: str  # PLEX or JELLYFIN
    person: _Person
    device: _Device
    item: _Item
    t0_ms: int
    offset_ms: int  # playhead at the start (a resumed item starts past 0)
    final_ms: int  # playhead at the stop
    pauses: tuple[tuple[int, int], ...]  # (position_ms, paused_ms), positions increasing
    stream: _Stream
    session_key: str
    webhooks: bool = False
    tautulli: bool = False
    tautulli_started_s: int = 0
    tautulli_stopped_s: int = 0
    reconnect_ms: int | None = None
    scrobble_lead_ms: int = 1_000  # how long before the stop a scrobble arrives

    @property
    def paused_ms(self) -> int:
        return sum(duration for _, duration in self.pauses)

    @property
    def stop_ms(self) -> int:
        return self.t0_ms + (self.final_ms - self.offset_ms) + self.paused_ms

    @property
    def duration_ms(self) -> int:
        return self.item.duration_s * 1000

    def wall_ms(self, position_ms: int) -> int:
        """When the playhead reached ``position_ms`` (before any pause at that position)."""
        paused = sum(d for p, d in self.pauses if p < position_ms)
        return self.t0_ms + (position_ms - self.offset_ms) + paused

    def percent(self, position_ms: int) -> float | None:
        """The exact share reached, as Plex and Jellyfin positions give it."""
        return percent_of(position_ms, self.duration_ms)

    def rounded_percent(self, position_ms: int) -> float:
        """Tautulli's history value: the share rounded to a whole number."""
        return float((position_ms * 100 + self.duration_ms // 2) // self.duration_ms)


# ---------------------------------------------------------------------------------------
# small generators


def _hex(rng: Random, digits: int) -> str:
    return f"{rng.getrandbits(4 * digits):0{digits}x}"


def _alnum(rng: Random, length: int) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(rng.choice(alphabet) for _ in range(length))


def _public_ip(rng: Random) -> str:
    return (
        f"{rng.choice(_PUBLIC_FIRST_OCTETS)}.{rng.randint(1, 254)}."
        f"{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    )


def _unique_title(rng: Random, taken: set[str], patterns: tuple[str, ...]) -> str:
    while True:
        title = rng.choice(patterns).format(adj=rng.choice(_ADJECTIVES), noun=rng.choice(_NOUNS))
        if title not in taken:
            taken.add(title)
            return title


def _to_ms(value: datetime) -> int:
    return (utc(value) - _EPOCH) // _ONE_MS


def _dt(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


# ---------------------------------------------------------------------------------------
# building the world


# (library_id, library_name) of the Plex server's sections by media type. Jellyfin events get
# none: the Sessions frames the real adapter reads do not name the library.
_PLEX_SECTIONS = {"movie": ("1", "Movies"), "episode": ("2", "TV Shows")}


@dataclass(frozen=True, slots=True)
class _Title:
    media_type: str
    title: str
    parent_title: str
    grandparent_title: str
    year: int
    duration_s: int
    resolution: str
    video_codec: str
    audio_codec: str
    bitrate_kbps: int


@dataclass(frozen=True, slots=True)
class _Item(_Title):
    """A title as one server holds it, under that server's item id."""

    rating_key: str


def _catalog(rng: Random) -> tuple[list[_Title], list[list[_Title]]]:
    """The titles both servers hold: ~60 movies and ~15 shows."""
    taken: set[str] = set()

    def media(minutes: tuple[int, int]) -> tuple[str, str, str, int, int]:
        resolution = rng.choice(_RESOLUTIONS)
        low, high = _SOURCE_BITRATE_KBPS[resolution]
        codec = "hevc" if resolution == "4k" or rng.random() < 0.3 else "h264"
        duration = rng.randint(minutes[0] * 60, minutes[1] * 60)
        return resolution, codec, rng.choice(_AUDIO_CODECS), rng.randint(low, high), duration

    movies = []
    for _ in range(rng.randint(56, 64)):
        title = _unique_title(
            rng, taken, ("The {adj} {noun}", "{adj} {noun}", "{noun} of the {adj}", "{noun}")
        )
        resolution, codec, audio, bitrate, duration = media((80, 160))
        year = rng.randint(1968, 2025)
        movies.append(
            _Title("movie", title, "", "", year, duration, resolution, codec, audio, bitrate)
        )
    shows = []
    for _ in range(rng.randint(14, 16)):
        show = _unique_title(rng, taken, ("{adj} {noun}", "The {noun}", "The {adj} {noun}s"))
        base = rng.randint(22, 55)
        first_year = rng.randint(1995, 2023)
        episodes = []
        for season in range(1, rng.randint(1, 3) + 1):
            for number in range(1, rng.randint(6, 10) + 1):
                if season == 1 and number == 1:
                    title = "Pilot"
                else:
                    title = rng.choice(("The {noun}", "{adj} {noun}", "{noun}")).format(
                        adj=rng.choice(_ADJECTIVES), noun=rng.choice(_NOUNS)
                    )
                minutes = (max(20, base - 4), min(60, base + 4))
                resolution, codec, audio, bitrate, duration = media(minutes)
                episodes.append(
                    _Title(
                        "episode",
                        title,
                        f"Season {season}",
                        show,
                        first_year + season - 1,
                        duration,
                        resolution,
                        codec,
                        audio,
                        bitrate,
                    )
                )
        shows.append(episodes)
    return movies, shows


def _library(rng: Random, movies: list[_Title], shows: list[list[_Title]], plex: bool) -> _Library:
    """One server's copy of the catalog: Plex numeric rating keys, Jellyfin 32-hex item ids."""
    next_key = rng.randint(1_000, 40_000)

    def key() -> str:
        nonlocal next_key
        if not plex:
            return _hex(rng, 32)
        next_key += rng.randint(1, 7)
        return str(next_key)

    def item(t: _Title) -> _Item:
        return _Item(*astuple(t), rating_key=key())

    return _Library(
        movies=tuple(item(t) for t in movies),
        shows=tuple(tuple(item(t) for t in episodes) for episodes in shows),
    )


def _plex_device(
    rng: Random, client: tuple[str, str, str, str, bool], lan: str, home_ip: str
) -> _Device:
    platform, product, player, version, mobile = client
    local = rng.random() < (0.4 if mobile else 0.92)
    return _Device(
        machine_id=_alnum(rng, 24),
        platform=platform,
        product=product,
        product_version=version,
        player=player,
        local=local,
        lan_ip=f"{lan}{rng.randint(2, 250)}",
        public_ip=home_ip if local else _public_ip(rng),
    )


def _jellyfin_device_id(rng: Random, platform: str, style: str) -> str:
    if style == "web":
        agent = _WEB_USER_AGENTS[platform]
        stamp = 1_700_000_000_000 + rng.randint(0, 60_000_000_000)
        return base64.b64encode(f"{agent}|{stamp}".encode()).decode()
    if style == "uuid":
        raw = _hex(rng, 32).upper()
        return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    return _hex(rng, 16 if style == "hex16" else 32)


def _jellyfin_device(
    rng: Random, client: tuple[str, str, str, str, str, bool], lan: str, home_ip: str
) -> _Device:
    platform, product, player, version, style, mobile = client
    local = rng.random() < (0.4 if mobile else 0.92)
    return _Device(
        machine_id=_jellyfin_device_id(rng, platform, style),
        platform=platform,
        product=product,
        product_version=version,
        player=player,
        local=local,
        lan_ip=f"{lan}{rng.randint(2, 250)}",
        public_ip=home_ip if local else _public_ip(rng),
    )


def _people(rng: Random, count: int, shows: int) -> tuple[_Person, ...]:
    people = []
    names_used: dict[str, int] = {}
    plex_ids: set[str] = set()
    for index in range(count):
        first = _FIRST_NAMES[rng.randrange(len(_FIRST_NAMES))]
        names_used[first] = names_used.get(first, 0) + 1
        username = first if names_used[first] == 1 else f"{first}{names_used[first]}"
        plex_id = str(rng.randint(1_000_000, 99_999_999))
        while plex_id in plex_ids:
            plex_id = str(rng.randint(1_000_000, 99_999_999))
        plex_ids.add(plex_id)
        lan = f"192.168.{rng.randint(0, 99)}."
        home_ip = _public_ip(rng)
        # The person who streams on two devices at once needs two Plex devices.
        plex_count = rng.randint(2 if index == 0 else 1, 3)
        jelly_count = rng.randint(2 if index == 0 else 1, 3)
        plex_clients = rng.sample(_PLEX_CLIENTS, plex_count)
        jelly_clients = rng.sample(_JELLYFIN_CLIENTS, jelly_count)
        people.append(
            _Person(
                index=index,
                username=username,
                friendly_name=f"{first.capitalize()} {rng.choice(_LAST_INITIALS)}.",
                plex_user_id=plex_id,
                plex_thumb=f"https://plex.tv/users/{_hex(rng, 16)}/avatar?c="
                f"{rng.randint(1_600_000_000, 1_760_000_000)}",
                jellyfin_user_id=_hex(rng, 32),
                home_ip=home_ip,
                plex_devices=tuple(_plex_device(rng, c, lan, home_ip) for c in plex_clients),
                jellyfin_devices=tuple(
                    _jellyfin_device(rng, c, lan, home_ip) for c in jelly_clients
                ),
                daily_weights=rng.choices(_DAILY_COUNT_WEIGHTS, _VIEWER_KIND_WEIGHTS)[0],
                favourite_shows=tuple(rng.sample(range(shows), rng.randint(1, 4))),
                next_episode={},
            )
        )
    return tuple(people)


def _build_world(rng: Random, users: int) -> _World:
    plex_server_id = _hex(rng, 40)
    jellyfin_server_id = _hex(rng, 32)
    movies, shows = _catalog(rng)
    return _World(
        plex_server_id=plex_server_id,
        jellyfin_server_id=jellyfin_server_id,
        plex_library=_library(rng, movies, shows, plex=True),
        jellyfin_library=_library(rng, movies, shows, plex=False),
        people=_people(rng, users, len(shows)),
    )


# ---------------------------------------------------------------------------------------
# playbacks


def _stream(rng: Random, item: _Item, device: _Device) -> _Stream:
    weights = (45, 15, 40) if not device.local else (68, 15, 17)
    decision = rng.choices(("direct play", "copy", "transcode"), weights)[0]
    if decision != "transcode":
        return _Stream(
            decision, item.resolution, item.video_codec, item.audio_codec, item.bitrate_kbps
        )
    resolution = "1080" if item.resolution == "4k" else "720"
    audio = "aac" if rng.random() < 0.7 else item.audio_codec
    return _Stream(decision, resolution, "h264", audio, rng.randint(1_500, 8_000))


def _timeline(
    rng: Random,
    duration_ms: int,
    *,
    offset_ms: int | None = None,
    final_ms: int | None = None,
    max_pauses: int = 3,
    max_pause_s: int = 900,
) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    """Draw where a playback starts, where it stops and where it pauses."""
    if offset_ms is None:
        offset_ms = 0 if rng.random() < 0.8 else rng.randint(duration_ms // 10, duration_ms // 2)
    if final_ms is None:
        if rng.random() < 0.55:
            final_ms = duration_ms
        else:
            final_ms = offset_ms + int((duration_ms - offset_ms) * rng.uniform(0.05, 0.97))
    final_ms = min(duration_ms, max(final_ms, offset_ms + 2 * _MINUTE_MS))
    count = rng.choices(range(4), _PAUSE_COUNT_WEIGHTS)[0]
    count = min(count, max_pauses)
    # Pause positions: distinct 10-second slots at least 30 s from the start and the stop,
    # plus a sub-second jitter, so that distinct pauses never share a position.
    slots = (final_ms - offset_ms - 60_000) // 10_000
    count = min(count, max(slots, 0))
    chosen = sorted(rng.sample(range(slots), count)) if count else []
    pauses = tuple(
        (
            offset_ms + 30_000 + slot * 10_000 + rng.randint(0, 999),
            rng.randint(20, max_pause_s) * 1000,
        )
        for slot in chosen
    )
    return offset_ms, final_ms, pauses


def _start_in_day(rng: Random, day_ms: int, weekend: bool) -> int:
    hours = _WEEKEND_HOURS if weekend else _WEEKDAY_HOURS
    hour = rng.choices(range(24), hours)[0]
    return day_ms + hour * _HOUR_MS + rng.randrange(_HOUR_MS)


class _Scheduler:
    """Turns the generation model into playbacks, one person at a time."""

    def __init__(self, rng: Random, world: _World) -> None:
        self.rng = rng
        self.world = world
        self.playbacks: list[_Playback] = []

    # -- items

    def _library(self, server: str) -> _Library:
        return self.world.plex_library if server == PLEX else self.world.jellyfin_library

    def _pick_item(self, person: _Person, server: str) -> _Item:
        rng = self.rng
        library = self._library(server)
        if rng.random() < 0.42:
            return rng.choice(library.movies)
        if rng.random() < 0.8:
            show = rng.choice(person.favourite_shows)
        else:
            show = rng.randrange(len(library.shows))
        episodes = library.shows[show]
        number = person.next_episode.get(show, 0) % len(episodes)
        person.next_episode[show] = number + 1
        return episodes[number]

    # -- playbacks

    def _playback(
        self,
        person: _Person,
        server: str,
        device: _Device,
        item: _Item,
        t0_ms: int,
        *,
        sources: tuple[bool, bool] | None = None,
        **timeline: Any,
    ) -> _Playback:
        rng = self.rng
        offset_ms, final_ms, pauses = _timeline(rng, item.duration_s * 1000, **timeline)
        stream = _stream(rng, item, device)
        if server == PLEX:
            session_key = f"{device.machine_id}-{item.rating_key}-{t0_ms}"
        else:
            session_key = _hex(rng, 32)
        pb = _Playback(
            server, person, device, item, t0_ms, offset_ms, final_ms, pauses, stream, session_key
        )
        if server == PLEX:
            webhooks = rng.random() < WEBHOOK_SHARE
            tautulli = rng.random() < TAUTULLI_SHARE
            if sources is not None:
                webhooks, tautulli = sources
            elif not (webhooks or tautulli):
                webhooks = rng.random() < 0.5
                tautulli = not webhooks
            pb.webhooks, pb.tautulli = webhooks, tautulli
            # Tautulli first sees the session 2-8 s after it starts (whole epoch seconds).
            low = -(-(t0_ms + 2_000) // 1000)
            high = (t0_ms + 8_000) // 1000
            pb.tautulli_started_s = rng.randint(low, high)
            pb.tautulli_stopped_s = -(-pb.stop_ms // 1000) + rng.randint(0, 2)
            pb.scrobble_lead_ms = rng.randint(200, 3_000)
        elif rng.random() < RECONNECT_SHARE:
            pb.reconnect_ms = self._reconnect_moment(pb)
        self.playbacks.append(pb)
        return pb

    def _reconnect_moment(self, pb: _Playback) -> int:
        """A moment strictly inside the playback (5 s from either end, or inside a pause).

        Idle sockets time out more often, so half the reconnects of a playback that pauses
        happen while it is paused (and re-report the pause too).
        """
        rng = self.rng
        if pb.pauses and rng.random() < 0.5:
            position, duration = rng.choice(pb.pauses)
            start = pb.wall_ms(position)
            return rng.randint(start + 1, start + duration - 2)
        moment = rng.randint(pb.t0_ms + 5_000, pb.stop_ms - 5_000)
        for position, duration in pb.pauses:
            start = pb.wall_ms(position)
            if start <= moment < start + duration:
                # Keep room for the re-reported pause (1 ms later) before the resume.
                return min(max(moment, start + 1), start + duration - 2)
        return moment

    def _normal(self, person: _Person, t0_ms: int) -> int:
        rng = self.rng
        server = PLEX if rng.random() < PLEX_SHARE else JELLYFIN
        devices = person.plex_devices if server == PLEX else person.jellyfin_devices
        device = rng.choice(devices)
        item = self._pick_item(person, server)
        return self._playback(person, server, device, item, t0_ms).stop_ms

    def _overlap(self, person: _Person, t0_ms: int, same_item: bool) -> int:
        """Two Plex playbacks at once on two devices (a movie each, so they overlap)."""
        rng = self.rng
        first, second = rng.sample(person.plex_devices, 2)
        movies = self.world.plex_library.movies
        item_a = rng.choice(movies)
        item_b = item_a if same_item else rng.choice([m for m in movies if m is not item_a])
        a = self._playback(
            person, PLEX, first, item_a, t0_ms, sources=(True, True), offset_ms=0,
            final_ms=item_a.duration_s * 1000,
        )  # fmt: skip
        later = t0_ms + rng.randint(2 * _MINUTE_MS, 15 * _MINUTE_MS)
        b = self._playback(
            person, PLEX, second, item_b, later, sources=(True, True), offset_ms=0,
            final_ms=rng.randint(40 * _MINUTE_MS, item_b.duration_s * 1000),
        )  # fmt: skip
        return max(a.stop_ms, b.stop_ms)

    def _rewatch(self, person: _Person, t0_ms: int) -> int:
        """The same item on the same device twice, starts about an hour apart."""
        rng = self.rng
        device = rng.choice(person.plex_devices)
        item = rng.choice(self.world.plex_library.movies)
        self._playback(
            person, PLEX, device, item, t0_ms, sources=(True, True), offset_ms=0,
            final_ms=rng.randint(15 * _MINUTE_MS, 30 * _MINUTE_MS), max_pauses=1, max_pause_s=300,
        )  # fmt: skip
        again = t0_ms + _HOUR_MS + rng.randint(-3 * _MINUTE_MS, 3 * _MINUTE_MS)
        return self._playback(
            person, PLEX, device, item, again, sources=(True, True), offset_ms=0
        ).stop_ms

    def run(self, config: SimulationConfig, base_ms: int) -> list[_Playback]:
        rng = self.rng
        rewatcher = 1 if config.users > 1 else 0
        rewatch_day = 1 if config.days > 1 else 0
        base_weekday = utc(config.base_date).weekday()
        for person in self.world.people:
            free_at = base_ms - _DAY_MS
            for day in range(config.days):
                day_ms = base_ms + day * _DAY_MS
                weekend = (base_weekday + day) % 7 >= 5
                count = rng.choices(range(5), person.daily_weights)[0]
                plans = [(_start_in_day(rng, day_ms, weekend), "normal") for _ in range(count)]
                if person.index == 0 and day < 2:
                    start = day_ms + 20 * _HOUR_MS + rng.randrange(_HOUR_MS)
                    plans.append((start, "overlap-same" if day == 0 else "overlap"))
                if person.index == rewatcher and day == rewatch_day:
                    plans.append((day_ms + 17 * _HOUR_MS + rng.randrange(_HOUR_MS), "rewatch"))
                # The special blocks go first so that the day's other playbacks can never push
                # them to another day.
                plans.sort(key=lambda plan: (plan[1] == "normal", plan[0]))
                for wanted, kind in plans:
                    gap = rng.randint(_MINUTE_MS, 20 * _MINUTE_MS)
                    t0_ms = max(wanted, free_at + gap)
                    if kind == "normal":
                        free_at = self._normal(person, t0_ms)
                    elif kind == "rewatch":
                        free_at = self._rewatch(person, t0_ms)
                    else:
                        free_at = self._overlap(person, t0_ms, same_item=kind == "overlap-same")
        return self.playbacks


# ---------------------------------------------------------------------------------------
# events


class _Emitter:
    """Turns playbacks into MediaEvents, each with its emission moment.

    The sequence number (generation order) breaks ties between equal emission moments, so
    the publish order never depends on anything but the seed.
    """

    def __init__(self, rng: Random, world: _World) -> None:
        self.rng = rng
        self.world = world
        self.out: list[tuple[int, int, MediaEvent]] = []  # (emission ms, sequence, event)
        self.originals: list[tuple[int, MediaEvent]] = []  # may be re-delivered
        self.rereports = 0
        self.redeliveries = 0

    def _add(self, emit_ms: int, event: MediaEvent, *, rereport: bool = False) -> None:
        self.out.append((emit_ms, len(self.out), event))
        if rereport:
            self.rereports += 1
        else:
            self.originals.append((emit_ms, event))

    def redeliver(self) -> None:
        """Emit ~3 % of the original reports again, byte-identical, 1 s-10 min later."""
        for emit_ms, event in self.originals:
            if self.rng.random() < REDELIVERY_SHARE:
                delay = self.rng.randint(1_000, 600_000)
                self.out.append((emit_ms + delay, len(self.out), event))
                self.redeliveries += 1

    def publish_order(self) -> list[MediaEvent]:
        return [event for _, _, event in sorted(self.out, key=lambda e: (e[0], e[1]))]

    @staticmethod
    def _media(pb: _Playback, *, library: bool = True) -> dict[str, Any]:
        item = pb.item
        media = {
            "media_type": item.media_type,
            "title": item.title,
            "parent_title": item.parent_title,
            "grandparent_title": item.grandparent_title,
            "rating_key": item.rating_key,
            "year": item.year,
            "media_duration": item.duration_s,
        }
        if library:  # the Plex server's sections, as its webhooks and Tautulli name them
            media["library_id"], media["library_name"] = _PLEX_SECTIONS[item.media_type]
        return media

    def plex(self, pb: _Playback) -> None:
        """Webhook reports: play, pause/resume pairs, scrobble past 90 %, stop."""
        server_id = self.world.plex_server_id
        device = pb.device
        common = {
            "source": PLEX,
            "server_id": server_id,
            "session_key": pb.session_key,
            "user_id": pb.person.plex_user_id,
            "username": pb.person.username,
            "user_thumb": pb.person.plex_thumb,
            **self._media(pb),
            "started_at": _dt(pb.t0_ms),
            "platform": device.platform,
            "player": device.player,
            "machine_id": device.machine_id,
            "ip_address": device.public_ip,
            "location_type": "lan" if device.local else "wan",
            "local": device.local,
        }
        steps: list[tuple[int, EventType, int]] = [(pb.t0_ms, EventType.PLAY, pb.offset_ms)]
        for position, duration in pb.pauses:
            at = pb.wall_ms(position)
            steps.append((at, EventType.PAUSE, position))
            steps.append((at + duration, EventType.RESUME, position))
        stop_ms = pb.stop_ms
        before = self._scrobble_lead(pb)
        if before is not None:
            steps.append((stop_ms - before, EventType.SCROBBLE, pb.final_ms - before))
        steps.append((stop_ms, EventType.STOP, pb.final_ms))
        for at, kind, position in steps:
            event = MediaEvent(
                event_id=make_event_id(PLEX, server_id, kind.value, pb.session_key, at),
                event_type=kind,
                occurred_at=_dt(at),
                stopped_at=_dt(stop_ms) if kind is EventType.STOP else None,
                position_ms=position,
                percent_complete=pb.percent(position),
                **common,
            )
            self._add(at, event)

    @staticmethod
    def _scrobble_lead(pb: _Playback) -> int | None:
        """How long before the stop the scrobble arrives, if the playback passed 90 %."""
        lead = pb.scrobble_lead_ms
        if pb.final_ms - lead >= SCROBBLE_FRACTION * pb.duration_ms:
            return lead
        return None

    def tautulli(self, pb: _Playback, row_id: int) -> None:
        """The history row Tautulli writes at the first 5-minute tick after the stop."""
        server_id = self.world.plex_server_id
        device = pb.device
        person = pb.person
        started_s, stopped_s = pb.tautulli_started_s, pb.tautulli_stopped_s
        paused_s = pb.paused_ms // 1000
        emit_ms = (stopped_s // TAUTULLI_POLL_S + 1) * TAUTULLI_POLL_S * 1000
        event = MediaEvent(
            event_id=make_event_id(TAUTULLI, server_id, row_id),
            event_type=EventType.SUMMARY,
            occurred_at=_dt(emit_ms),
            source=TAUTULLI,
            server_id=server_id,
            session_key=str(row_id),
            user_id=person.plex_user_id,
            username=person.username,
            friendly_name=person.friendly_name,
            user_thumb=person.plex_thumb,
            **self._media(pb),
            started_at=_dt(started_s * 1000),
            stopped_at=_dt(stopped_s * 1000),
            percent_complete=pb.rounded_percent(pb.final_ms),
            play_duration=stopped_s - started_s - paused_s,
            paused_counter=paused_s,
            platform=device.platform,
            player=device.player,
            product=device.product,
            product_version=device.product_version,
            machine_id=device.machine_id,
            ip_address=device.lan_ip if device.local else device.public_ip,
            location_type="lan" if device.local else "wan",
            transcode_decision=pb.stream.decision,
            video_resolution=pb.stream.resolution,
            video_codec=pb.stream.video_codec,
            audio_codec=pb.stream.audio_codec,
            stream_bitrate=pb.stream.bitrate_kbps,
            secure=True,
            local=device.local,
            relayed=False,
        )
        self._add(emit_ms, event)

    def jellyfin(self, pb: _Playback) -> None:
        """WebSocket transitions: play, progress every ~10 min, pause/resume, stop."""
        server_id = self.world.jellyfin_server_id
        device = pb.device
        common = {
            "source": JELLYFIN,
            "server_id": server_id,
            "session_key": pb.session_key,
            "user_id": pb.person.jellyfin_user_id,
            "username": pb.person.username,
            **self._media(pb, library=False),  # Sessions frames name no library
            "started_at": _dt(pb.t0_ms),
            "platform": pb.device.platform,
            "player": device.player,
            "product": device.product,
            "product_version": device.product_version,
            "device": device.player,
            "machine_id": device.machine_id,
            "ip_address": device.lan_ip if device.local else device.public_ip,
            "transcode_decision": pb.stream.decision,
            "video_codec": pb.stream.video_codec,
            "audio_codec": pb.stream.audio_codec,
            "stream_bitrate": pb.stream.bitrate_kbps,
        }
        steps: list[tuple[int, EventType, int]] = [(pb.t0_ms, EventType.PLAY, pb.offset_ms)]
        pause_positions = [p for p, _ in pb.pauses]
        played = JELLYFIN_PROGRESS_MS
        while True:
            jitter = self.rng.randint(-3_500, 3_500)
            position = pb.offset_ms + played + jitter
            if position >= pb.final_ms - 5_000:
                break
            if all(abs(position - p) > 1_000 for p in pause_positions):
                steps.append((pb.wall_ms(position), EventType.PROGRESS, position))
            played += JELLYFIN_PROGRESS_MS
        for position, duration in pb.pauses:
            at = pb.wall_ms(position)
            steps.append((at, EventType.PAUSE, position))
            steps.append((at + duration, EventType.RESUME, position))
        steps.append((pb.stop_ms, EventType.STOP, pb.final_ms))
        steps.sort(key=lambda step: (step[0], step[2]))

        def event(at: int, kind: EventType, position: int) -> MediaEvent:
            return MediaEvent(
                event_id=make_event_id(JELLYFIN, server_id, kind.value, pb.session_key, at),
                event_type=kind,
                occurred_at=_dt(at),
                stopped_at=_dt(pb.stop_ms) if kind is EventType.STOP else None,
                position_ms=position,
                percent_complete=pb.percent(position),
                **common,
            )

        for at, kind, position in steps:
            self._add(at, event(at, kind, position))
        if pb.reconnect_ms is not None:
            moment = pb.reconnect_ms
            paused_at = None
            for position, duration in pb.pauses:
                start = pb.wall_ms(position)
                if start <= moment < start + duration:
                    paused_at = position
            if paused_at is None:
                playhead = pb.offset_ms + (moment - pb.t0_ms)
                playhead -= sum(d for p, d in pb.pauses if pb.wall_ms(p) + d <= moment)
                self._add(moment, event(moment, EventType.PLAY, playhead), rereport=True)
            else:
                self._add(moment, event(moment, EventType.PLAY, paused_at), rereport=True)
                self._add(moment + 1, event(moment + 1, EventType.PAUSE, paused_at), rereport=True)


# ---------------------------------------------------------------------------------------
# the simulation


def _truth(world: _World, pb: _Playback) -> TruthPlayback:
    if pb.server == PLEX:
        sources = tuple(name for name, on in ((PLEX, pb.webhooks), (TAUTULLI, pb.tautulli)) if on)
        if pb.webhooks:
            started, stopped = _dt(pb.t0_ms), _dt(pb.stop_ms)
        else:
            started = _dt(pb.tautulli_started_s * 1000)
            stopped = _dt(pb.tautulli_stopped_s * 1000)
        server_id, user_id = world.plex_server_id, pb.person.plex_user_id
    else:
        sources = (JELLYFIN,)
        started, stopped = _dt(pb.t0_ms), _dt(pb.stop_ms)
        server_id, user_id = world.jellyfin_server_id, pb.person.jellyfin_user_id
    return TruthPlayback(
        server_id=server_id,
        user_id=user_id,
        rating_key=pb.item.rating_key,
        machine_id=pb.device.machine_id,
        media_type=pb.item.media_type,
        title=pb.item.title,
        started_at=started,
        stopped_at=stopped,
        paused_seconds=pb.paused_ms // 1000,
        sources=sources,
    )


def simulate(config: SimulationConfig) -> Simulation:
    """Generate the feed and its ground truth for ``config`` (deterministic)."""
    if config.users < 1 or config.days < 1:
        raise ValueError(f"need at least one user and one day, got {config!r}")
    rng = Random(config.seed)
    base_ms = _to_ms(config.base_date)
    world = _build_world(rng, config.users)
    playbacks = _Scheduler(rng, world).run(config, base_ms)

    emitter = _Emitter(rng, world)
    for pb in playbacks:
        if pb.server == JELLYFIN:
            emitter.jellyfin(pb)
        elif pb.webhooks:
            emitter.plex(pb)
    # Tautulli numbers its history rows in the order it writes them: by stop.
    rows = sorted(
        (pb for pb in playbacks if pb.server == PLEX and pb.tautulli),
        key=lambda pb: (pb.tautulli_stopped_s, pb.tautulli_started_s, pb.device.machine_id,
                        pb.item.rating_key),
    )  # fmt: skip
    row_id = rng.randint(1_000, 9_000)
    for pb in rows:
        row_id += 1 if rng.random() < 0.9 else rng.randint(2, 4)
        emitter.tautulli(pb, row_id)

    emitter.redeliver()
    events = emitter.publish_order()

    truth = sorted(
        (_truth(world, pb) for pb in playbacks),
        key=lambda t: (t.started_at, t.server_id, t.user_id, t.machine_id, t.rating_key),
    )
    expected = ExpectedCounts(
        published=len(events),
        playbacks=len(truth),
        dropped_event_id=emitter.redeliveries,
        dropped_session_key=emitter.rereports,
        linked=sum(1 for pb in playbacks if pb.server == PLEX and pb.webhooks and pb.tautulli),
    )
    return Simulation(events=events, truth=truth, expected=expected, config=config)


# ---------------------------------------------------------------------------------------
# files


class _TruthFile(msgspec.Struct):
    config: dict[str, Any]
    expected: ExpectedCounts
    playbacks: list[TruthPlayback]


def iter_events_jsonl(events: Iterable[MediaEvent]) -> Iterator[bytes]:
    """One JSON line per event, in the given order."""
    for event in events:
        yield encode_event(event) + b"\n"


def write_jsonl(path: str | os.PathLike[str], events: Iterable[MediaEvent]) -> int:
    """Write ``events`` as JSON lines to ``path``; return how many were written."""
    count = 0
    with open(path, "wb") as out:
        for line in iter_events_jsonl(events):
            out.write(line)
            count += 1
    return count


def write_truth(path: str | os.PathLike[str], sim: Simulation) -> None:
    """Write the config, the expected counts and the truth playbacks as one JSON document."""
    config = sim.config
    document = _TruthFile(
        config={
            "seed": config.seed,
            "users": config.users,
            "days": config.days,
            "base_date": utc(config.base_date),
        },
        expected=sim.expected,
        playbacks=sim.truth,
    )
    with open(path, "wb") as out:
        out.write(msgspec.json.encode(document))
        out.write(b"\n")


def read_truth(path: str | os.PathLike[str]) -> tuple[ExpectedCounts, list[TruthPlayback]]:
    """Read what :func:`write_truth` wrote."""
    with open(path, "rb") as source:
        document = msgspec.json.decode(source.read(), type=_TruthFile)
    return document.expected, document.playbacks
