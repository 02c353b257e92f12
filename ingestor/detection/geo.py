"""Where an IP address is: a MaxMind-format database the operator provides, and VPN ranges.

Locations come only from a database (``GEOIP_DB``, read with ``maxminddb``); nothing is
fetched. An address that is not a place is *unknown*, never a point on the map:

* a **local** address (:func:`is_local`): private, loopback, link-local, carrier-grade NAT,
  reserved, documentation, multicast or unspecified, IPv4-mapped IPv6 included;
* a missing or unparseable address;
* an address the database does not hold, or holds without coordinates.

The reference implementation stored an unknown location as latitude 0, longitude 0 and then
measured distances from that point in the Gulf of Guinea; here an unknown location is
``None`` (or a :class:`Place` without coordinates, which only says the country), and no
distance is ever computed from it.

>>> is_local("192.168.1.20"), is_local("127.0.0.1"), is_local("81.2.69.142")
(True, True, False)
>>> round(haversine_km((51.5074, -0.1278), (48.8566, 2.3522)), 1)  # London - Paris
343.6
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import maxminddb

EARTH_RADIUS_KM = 6371.0
"""The mean Earth radius the haversine distance uses (the reference's figure)."""

HALF_EARTH_KM = math.pi * EARTH_RADIUS_KM
"""The farthest two places can be apart along the surface (~20,015 km)."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOOKUP_CACHE = 65_536


@dataclass(frozen=True, slots=True)
class Place:
    """What the database says about an address: a country code (ISO 3166 alpha-2, upper
    case, "" when unknown), a city name ("" when unknown) and coordinates (``None`` when the
    database has none: a country-only database)."""

    country: str = ""
    city: str = ""
    latitude: float | None = None
    longitude: float | None = None

    @property
    def coordinates(self) -> tuple[float, float] | None:
        """``(latitude, longitude)``, or ``None``: a place without them has no distance."""
        if self.latitude is None or self.longitude is None:
            return None
        return (self.latitude, self.longitude)

    @property
    def label(self) -> str:
        """``"City, CC"`` or what of it is known.

        >>> Place("GB", "London", 51.5, -0.1).label, Place("FR").label, Place().label
        ('London, GB', 'FR', 'unknown place')
        """
        return ", ".join(part for part in (self.city, self.country) if part) or "unknown place"


class Locator(Protocol):
    """Anything that answers "where is this address": :class:`GeoIP`, or a test double."""

    def locate(self, ip: str) -> Place | None: ...


def parse_ip(text: str) -> IPAddress | None:
    """The address in ``text`` (IPv4-mapped IPv6 unwrapped to IPv4), or ``None``.

    >>> parse_ip("::ffff:10.0.0.1"), parse_ip("not an ip"), parse_ip("")
    (IPv4Address('10.0.0.1'), None, None)
    """
    text = text.strip()
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_local(ip: str | IPAddress) -> bool:
    """True for an address that names no place on the Internet: anything not globally
    routable (private, loopback, link-local, CGNAT, reserved, documentation, unspecified)
    and multicast. Unparseable text is not local (it is simply unknown).

    >>> [is_local(a) for a in ("10.1.2.3", "::1", "fe80::1", "100.64.0.1", "2a02:1::1")]
    [True, True, True, True, False]
    """
    address = parse_ip(ip) if isinstance(ip, str) else ip
    if address is None:
        return False
    return not address.is_global or address.is_multicast


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in km between two ``(latitude, longitude)`` points in degrees.

    >>> round(haversine_km((50.0, 10.0), (51.0, 10.0)), 3)  # one degree along a meridian
    111.195
    """
    lat1, lon1 = math.radians(a[0]), math.radians(a[1])
    lat2, lon2 = math.radians(b[0]), math.radians(b[1])
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class GeoIP:
    """A MaxMind-format database (GeoLite2/GeoIP2 City or Country, DB-IP, IPinfo's mmdb...)
    opened read-only; lookups are cached.

    Raises ``OSError`` when the file cannot be read and
    ``maxminddb.InvalidDatabaseError`` when it is not a MaxMind database.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._reader = maxminddb.open_database(str(self.path))
        metadata = self._reader.metadata()
        self.database_type: str = metadata.database_type
        self.locate = functools.lru_cache(maxsize=_LOOKUP_CACHE)(self._lookup)

    def _lookup(self, ip: str) -> Place | None:
        """The place of a non-local address, or ``None`` (see the module's docstring)."""
        address = parse_ip(ip)
        if address is None or is_local(address):
            return None
        try:
            record = self._reader.get(address)
        except ValueError:  # an IPv6 address in an IPv4-only database
            return None
        if not isinstance(record, dict):
            return None
        return place_of(record)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> GeoIP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GeoIP({str(self.path)!r}, {self.database_type!r})"


def place_of(record: dict[str, Any]) -> Place | None:
    """A :class:`Place` from a City- or Country-style record; ``None`` if it says nothing.

    >>> place_of({"country": {"iso_code": "fr"}, "location": {"latitude": 48.8}})
    Place(country='FR', city='', latitude=None, longitude=None)
    """
    country = _text(record, "country", "iso_code") or _text(
        record, "registered_country", "iso_code"
    )
    city_names = record.get("city", {}).get("names", {}) if isinstance(record, dict) else {}
    city = city_names.get("en", "") if isinstance(city_names, dict) else ""
    location = record.get("location")
    latitude = longitude = None
    if isinstance(location, dict):
        lat, lon = location.get("latitude"), location.get("longitude")
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            latitude, longitude = float(lat), float(lon)
    if not country and not city and latitude is None:
        return None
    return Place(country.upper(), str(city), latitude, longitude)


def _text(record: dict[str, Any], table: str, key: str) -> str:
    value = record.get(table)
    if not isinstance(value, dict):
        return ""
    text = value.get(key)
    return text if isinstance(text, str) else ""


# --------------------------------------------------------------------------- VPN ranges


class VpnRanges:
    """Known VPN exit ranges from an offline file (``VPN_RANGES_FILE``), one per line::

        # comment
        185.159.156.0/22  ProtonVPN
        2a07:b944::/32    Mullvad
        198.54.128.0/24

    A CIDR range, then optionally the provider's name (the rest of the line). Lookups check
    each prefix length present, most specific first.

    >>> ranges = VpnRanges.parse(["185.159.156.0/22 ProtonVPN", "198.54.128.0/24"])
    >>> ranges.lookup("185.159.157.9"), ranges.lookup("198.54.128.1"), ranges.lookup("8.8.8.8")
    ('ProtonVPN', '', None)
    """

    def __init__(self, ranges: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]):
        self._by_prefix: dict[tuple[int, int], dict[int, str]] = {}
        count = 0
        for network, provider in ranges:
            table = self._by_prefix.setdefault((network.version, network.prefixlen), {})
            table.setdefault(int(network.network_address), provider)
            count += 1
        self._order = sorted(self._by_prefix, key=lambda k: -k[1])
        self.count = count

    @classmethod
    def parse(cls, lines: Iterable[str], origin: str = "VPN_RANGES_FILE") -> VpnRanges:
        """Parse lines; raise ``ValueError`` with one line per bad entry (``origin:line``)."""
        ranges = []
        problems = []
        for number, raw in enumerate(lines, start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            cidr, _, provider = line.partition(" ")
            try:
                network = ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                problems.append(f"{origin}:{number}: {cidr!r} is not a CIDR range like 1.2.3.0/24")
                continue
            ranges.append((network, provider.strip()))
        if problems:
            raise ValueError("\n".join(problems))
        return cls(ranges)

    @classmethod
    def load(cls, path: Path) -> VpnRanges:
        """Read ``path``; ``OSError`` if unreadable, ``ValueError`` naming each bad line."""
        text = Path(path).read_text(encoding="utf-8")
        return cls.parse(text.splitlines(), origin=str(path))

    def lookup(self, ip: str) -> str | None:
        """The provider of the range holding ``ip`` ("" when the file names none), or
        ``None`` when no range holds it."""
        address = parse_ip(ip)
        if address is None:
            return None
        value = int(address)
        bits = address.max_prefixlen
        for version, prefix in self._order:
            if version != address.version:
                continue
            network = value >> (bits - prefix) << (bits - prefix)
            provider = self._by_prefix[(version, prefix)].get(network)
            if provider is not None:
                return provider
        return None

    def __len__(self) -> int:
        return self.count


__all__ = [
    "EARTH_RADIUS_KM",
    "HALF_EARTH_KM",
    "GeoIP",
    "Locator",
    "Place",
    "VpnRanges",
    "haversine_km",
    "is_local",
    "parse_ip",
    "place_of",
]
