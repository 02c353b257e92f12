"""The simulated world and its playbacks: who watches what, on which device, when.

The world has one Plex server, reported by Plex webhooks (source ``plex``) and by Tautulli
(``tautulli``), and Jellyfin servers reported by their WebSockets (``jellyfin``), one per 10
people (one server up to 10 users). ``users`` people watch for ``days`` days from
``base_date``; every person has a Plex account and a Jellyfin user, 1-3 devices on each
server, and follows a few shows. The
:class:`Scheduler` turns that model into :class:`Playback` records: the ground truth
(:mod:`ingestor.simulation.truth`) and what the upstream servers report
(:mod:`ingestor.simulation.payloads`) are both written from them.

Special cases the model always contains: one person streaming two playbacks at once on two
devices (on the first two days, the first time of the same item), and one person re-watching
an item on the same device about an hour later. Both stay separate playbacks.

Determinism: everything is drawn from one ``random.Random(seed)`` in a fixed order, times are
integer milliseconds from ``base_date`` (never the wall clock), and no ordering depends on set
or hash order.
"""

from __future__ import annotations

import base64
import string
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

from ingestor.events import utc

DEFAULT_BASE_DATE = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday

PLEX = "plex"
TAUTULLI = "tautulli"
JELLYFIN = "jellyfin"
SOURCE_ORDER = (PLEX, TAUTULLI, JELLYFIN)

# Shares of the generation model.
PLEX_SHARE = 0.60  # playbacks on the Plex server (the rest on Jellyfin)
WEBHOOK_SHARE = 0.92  # Plex playbacks reported by webhooks
TAUTULLI_SHARE = 0.90  # Plex playbacks reported by Tautulli
RECONNECT_SHARE = 0.15  # Jellyfin playbacks during which the ingestor's socket reconnects
# People per Jellyfin server: the size of a household's or a circle of friends' server. Every
# push of a Jellyfin socket lists all the server's sessions, so one server for hundreds of
# people would make the feed's cost grow with the square of the users.
PEOPLE_PER_JELLYFIN_SERVER = 10
SCROBBLE_FRACTION = 0.9

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

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
# what to simulate


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate: ``users`` people over ``days`` days from ``base_date``."""

    seed: int = 7
    users: int = 20
    days: int = 7
    base_date: datetime = DEFAULT_BASE_DATE


# ---------------------------------------------------------------------------------------
# the simulated world


@dataclass(frozen=True, slots=True)
class Library:
    movies: tuple[Item, ...]
    shows: tuple[tuple[Item, ...], ...]  # each show's episodes in airing order


@dataclass(frozen=True, slots=True)
class Device:
    machine_id: str
    platform: str
    product: str
    product_version: str
    player: str
    local: bool
    lan_ip: str  # the address the server sees for a LAN client
    public_ip: str  # the household's WAN address at home, the device's own address away


@dataclass(slots=True)
class Person:
    index: int
    username: str
    friendly_name: str
    plex_user_id: str
    plex_thumb: str
    jellyfin_user_id: str
    home_ip: str
    plex_devices: tuple[Device, ...]
    jellyfin_devices: tuple[Device, ...]
    daily_weights: tuple[int, ...]
    favourite_shows: tuple[int, ...]
    next_episode: dict[int, int]


@dataclass(frozen=True, slots=True)
class JellyfinServer:
    server_id: str
    library: Library  # the catalog under this server's own item ids


@dataclass(frozen=True, slots=True)
class World:
    plex_server_id: str
    plex_library: Library
    jellyfin_servers: tuple[JellyfinServer, ...]
    people: tuple[Person, ...]

    def jellyfin(self, person: Person) -> JellyfinServer:
        """The Jellyfin server ``person`` has an account on."""
        return self.jellyfin_servers[person.index // PEOPLE_PER_JELLYFIN_SERVER]


@dataclass(frozen=True, slots=True)
class Stream:
    decision: str
    resolution: str
    video_codec: str
    audio_codec: str
    bitrate_kbps: int


@dataclass(slots=True)
class Playback:
    server: str  # PLEX or JELLYFIN
    person: Person
    device: Device
    item: Item
    t0_ms: int
    offset_ms: int  # playhead at the start (a resumed item starts past 0)
    final_ms: int  # playhead at the stop
    pauses: tuple[tuple[int, int], ...]  # (position_ms, paused_ms), positions increasing
    stream: Stream
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

    def position_at(self, at_ms: int) -> tuple[int, bool]:
        """The playhead at ``at_ms`` (inside the playback) and whether it is paused then."""
        position, wall = self.offset_ms, self.t0_ms
        for pause_at, duration in self.pauses:
            reached = wall + (pause_at - position)
            if at_ms < reached:
                break
            if at_ms < reached + duration:
                return pause_at, True
            position, wall = pause_at, reached + duration
        return min(position + (at_ms - wall), self.final_ms), False


# ---------------------------------------------------------------------------------------
# small generators


def random_hex(rng: Random, digits: int) -> str:
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


def to_ms(value: datetime) -> int:
    return (utc(value) - EPOCH) // _ONE_MS


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


# ---------------------------------------------------------------------------------------
# building the world


# (library_id, library_name) of the Plex server's sections by media type. Jellyfin events get
# none: the Sessions frames the real adapter reads do not name the library.
PLEX_SECTIONS = {"movie": ("1", "Movies"), "episode": ("2", "TV Shows")}


@dataclass(frozen=True, slots=True)
class Title:
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
class Item(Title):
    """A title as one server holds it, under that server's item id."""

    rating_key: str


_TITLE_FIELDS = tuple(f.name for f in fields(Title))


def _catalog(rng: Random) -> tuple[list[Title], list[list[Title]]]:
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
            Title("movie", title, "", "", year, duration, resolution, codec, audio, bitrate)
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
                    Title(
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


def _library(rng: Random, movies: list[Title], shows: list[list[Title]], plex: bool) -> Library:
    """One server's copy of the catalog: Plex numeric rating keys, Jellyfin 32-hex item ids."""
    next_key = rng.randint(1_000, 40_000)

    def key() -> str:
        nonlocal next_key
        if not plex:
            return random_hex(rng, 32)
        next_key += rng.randint(1, 7)
        return str(next_key)

    def item(t: Title) -> Item:
        return Item(*(getattr(t, name) for name in _TITLE_FIELDS), rating_key=key())

    return Library(
        movies=tuple(item(t) for t in movies),
        shows=tuple(tuple(item(t) for t in episodes) for episodes in shows),
    )


def _plex_device(
    rng: Random, client: tuple[str, str, str, str, bool], lan: str, home_ip: str
) -> Device:
    platform, product, player, version, mobile = client
    names = (platform, product, player, version)
    return _device(rng, lambda: _alnum(rng, 24), names, mobile, lan, home_ip)


def _jellyfin_device_id(rng: Random, platform: str, style: str) -> str:
    if style == "web":
        agent = _WEB_USER_AGENTS[platform]
        stamp = 1_700_000_000_000 + rng.randint(0, 60_000_000_000)
        return base64.b64encode(f"{agent}|{stamp}".encode()).decode()
    if style == "uuid":
        raw = random_hex(rng, 32).upper()
        return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    return random_hex(rng, 16 if style == "hex16" else 32)


def _jellyfin_device(
    rng: Random, client: tuple[str, str, str, str, str, bool], lan: str, home_ip: str
) -> Device:
    platform, product, player, version, style, mobile = client
    names = (platform, product, player, version)
    return _device(
        rng, lambda: _jellyfin_device_id(rng, platform, style), names, mobile, lan, home_ip
    )


def _device(
    rng: Random,
    machine_id: Callable[[], str],
    names: tuple[str, str, str, str],
    mobile: bool,
    lan: str,
    home_ip: str,
) -> Device:
    """A device of a household: at home (on its LAN) or away; the draws in a fixed order
    (at home?, its id, its LAN address, its public address), so a seed gives one feed."""
    platform, product, player, version = names
    local = rng.random() < (0.4 if mobile else 0.92)
    return Device(
        machine_id=machine_id(),
        platform=platform,
        product=product,
        product_version=version,
        player=player,
        local=local,
        lan_ip=f"{lan}{rng.randint(2, 250)}",
        public_ip=home_ip if local else _public_ip(rng),
    )


def _people(rng: Random, count: int, shows: int) -> tuple[Person, ...]:
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
            Person(
                index=index,
                username=username,
                friendly_name=f"{first.capitalize()} {rng.choice(_LAST_INITIALS)}.",
                plex_user_id=plex_id,
                plex_thumb=f"https://plex.tv/users/{random_hex(rng, 16)}/avatar?c="
                f"{rng.randint(1_600_000_000, 1_760_000_000)}",
                jellyfin_user_id=random_hex(rng, 32),
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


def build_world(rng: Random, users: int) -> World:
    plex_server_id = random_hex(rng, 40)
    jellyfin_server_id = random_hex(rng, 32)
    movies, shows = _catalog(rng)
    plex_library = _library(rng, movies, shows, plex=True)
    servers = [JellyfinServer(jellyfin_server_id, _library(rng, movies, shows, plex=False))]
    people = _people(rng, users, len(shows))
    # the further servers are drawn last, so a world of one server is what it always was
    for _ in range(1, -(-users // PEOPLE_PER_JELLYFIN_SERVER)):
        server_id = random_hex(rng, 32)
        servers.append(JellyfinServer(server_id, _library(rng, movies, shows, plex=False)))
    return World(plex_server_id, plex_library, tuple(servers), people)


# ---------------------------------------------------------------------------------------
# playbacks


def _stream(rng: Random, item: Item, device: Device) -> Stream:
    weights = (45, 15, 40) if not device.local else (68, 15, 17)
    decision = rng.choices(("direct play", "copy", "transcode"), weights)[0]
    if decision != "transcode":
        return Stream(
            decision, item.resolution, item.video_codec, item.audio_codec, item.bitrate_kbps
        )
    resolution = "1080" if item.resolution == "4k" else "720"
    audio = "aac" if rng.random() < 0.7 else item.audio_codec
    return Stream(decision, resolution, "h264", audio, rng.randint(1_500, 8_000))


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
    final_ms = min(duration_ms, max(final_ms, offset_ms + 2 * MINUTE_MS))
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
    return day_ms + hour * HOUR_MS + rng.randrange(HOUR_MS)


class Scheduler:
    """Turns the generation model into playbacks, one person at a time."""

    def __init__(self, rng: Random, world: World) -> None:
        self.rng = rng
        self.world = world
        self.playbacks: list[Playback] = []

    # -- items

    def _pick_item(self, person: Person, server: str) -> Item:
        rng = self.rng
        library = self.world.plex_library if server == PLEX else self.world.jellyfin(person).library
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
        person: Person,
        server: str,
        device: Device,
        item: Item,
        t0_ms: int,
        *,
        sources: tuple[bool, bool] | None = None,
        **timeline: Any,
    ) -> Playback:
        rng = self.rng
        offset_ms, final_ms, pauses = _timeline(rng, item.duration_s * 1000, **timeline)
        stream = _stream(rng, item, device)
        if server == JELLYFIN:
            rng.getrandbits(128)  # a draw the model once made: kept, so seeds keep their worlds
        pb = Playback(server, person, device, item, t0_ms, offset_ms, final_ms, pauses, stream)
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

    def _reconnect_moment(self, pb: Playback) -> int:
        """A moment strictly inside the playback (5 s from either end, or inside a pause).

        Idle sockets time out more often, so half the reconnects of a playback that pauses
        happen while it is paused (the session list sent again shows it paused).
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
                # not on the pause's or the resume's own millisecond
                return min(max(moment, start + 1), start + duration - 2)
        return moment

    def _normal(self, person: Person, t0_ms: int) -> int:
        rng = self.rng
        server = PLEX if rng.random() < PLEX_SHARE else JELLYFIN
        devices = person.plex_devices if server == PLEX else person.jellyfin_devices
        device = rng.choice(devices)
        item = self._pick_item(person, server)
        return self._playback(person, server, device, item, t0_ms).stop_ms

    def _overlap(self, person: Person, t0_ms: int, same_item: bool) -> int:
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
        later = t0_ms + rng.randint(2 * MINUTE_MS, 15 * MINUTE_MS)
        b = self._playback(
            person, PLEX, second, item_b, later, sources=(True, True), offset_ms=0,
            final_ms=rng.randint(40 * MINUTE_MS, item_b.duration_s * 1000),
        )  # fmt: skip
        return max(a.stop_ms, b.stop_ms)

    def _rewatch(self, person: Person, t0_ms: int) -> int:
        """The same item on the same device twice, starts about an hour apart."""
        rng = self.rng
        device = rng.choice(person.plex_devices)
        item = rng.choice(self.world.plex_library.movies)
        self._playback(
            person, PLEX, device, item, t0_ms, sources=(True, True), offset_ms=0,
            final_ms=rng.randint(15 * MINUTE_MS, 30 * MINUTE_MS), max_pauses=1, max_pause_s=300,
        )  # fmt: skip
        again = t0_ms + HOUR_MS + rng.randint(-3 * MINUTE_MS, 3 * MINUTE_MS)
        return self._playback(
            person, PLEX, device, item, again, sources=(True, True), offset_ms=0
        ).stop_ms

    def run(self, config: SimulationConfig, base_ms: int) -> list[Playback]:
        rng = self.rng
        rewatcher = 1 if config.users > 1 else 0
        rewatch_day = 1 if config.days > 1 else 0
        base_weekday = utc(config.base_date).weekday()
        for person in self.world.people:
            free_at = base_ms - DAY_MS
            for day in range(config.days):
                day_ms = base_ms + day * DAY_MS
                weekend = (base_weekday + day) % 7 >= 5
                count = rng.choices(range(5), person.daily_weights)[0]
                plans = [(_start_in_day(rng, day_ms, weekend), "normal") for _ in range(count)]
                if person.index == 0 and day < 2:
                    start = day_ms + 20 * HOUR_MS + rng.randrange(HOUR_MS)
                    plans.append((start, "overlap-same" if day == 0 else "overlap"))
                if person.index == rewatcher and day == rewatch_day:
                    plans.append((day_ms + 17 * HOUR_MS + rng.randrange(HOUR_MS), "rewatch"))
                # The special blocks go first so that the day's other playbacks can never push
                # them to another day.
                plans.sort(key=lambda plan: (plan[1] == "normal", plan[0]))
                for wanted, kind in plans:
                    gap = rng.randint(MINUTE_MS, 20 * MINUTE_MS)
                    t0_ms = max(wanted, free_at + gap)
                    if kind == "normal":
                        free_at = self._normal(person, t0_ms)
                    elif kind == "rewatch":
                        free_at = self._rewatch(person, t0_ms)
                    else:
                        free_at = self._overlap(person, t0_ms, same_item=kind == "overlap-same")
        return self.playbacks
