"""``IP_ANONYMIZE=true``: addresses stored truncated from ingestion on (issue 12, part 4).

Every source's events pass through a sink (:mod:`ingestor.sink`) before they are published
or projected; with ``IP_ANONYMIZE`` the sink hands them to :meth:`Anonymizer.apply` first,
the one place the rule lives. For each event:

1. **Geolocation first.** If a MaxMind-format database is configured (``GEOIP_DB``, the
   detector's), the full address is looked up and the place written into the event
   (``geo_country``, ``geo_city``, ``geo_latitude``, ``geo_longitude``); the detector uses
   those fields instead of looking the truncated address up. Without a database nothing is
   resolved, and the detector later locates the truncated address (the same city, mostly).
2. **Then truncation.** ``ip_address`` becomes the network address of its /24 (IPv4) or /48
   (IPv6): ``203.0.113.77`` -> ``203.0.113.0``, ``2001:db8:7:1::5`` -> ``2001:db8:7::``. It
   stays an address, so VPN ranges (coarser than /24) and "is it local" still read it.
   Every address in ``raw_payload`` (the upstream payload kept for the audit trail) is
   truncated the same way.

The ``event_id`` is not touched (the adapter computed it from the source's identity), so
re-deliveries still dedup. Events stored before ``IP_ANONYMIZE`` was set keep their full
addresses: ``ingestor erase`` forgets a user whole.

>>> truncate_ip("203.0.113.77"), truncate_ip("2001:db8:7:1::5"), truncate_ip("::ffff:10.1.2.3")
('203.0.113.0', '2001:db8:7::', '10.1.2.0')
>>> truncate_ip("not an address"), truncate_ip("")
('not an address', '')
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import msgspec

from ingestor.detection.geo import Locator, parse_ip
from ingestor.events import MediaEvent

log = logging.getLogger(__name__)

IPV4_PREFIX = 24
IPV6_PREFIX = 48

# candidates only: each is checked with ipaddress before it is replaced
_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?"
    r"|(?<![0-9A-Za-z.])\d{1,3}(?:\.\d{1,3}){3}(?![0-9A-Za-z])"
)


def truncate_ip(text: str) -> str:
    """The network address of ``text``'s /24 (IPv4) or /48 (IPv6); ``text`` itself when it
    is no address."""
    address = parse_ip(text)
    if address is None:
        return text
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def truncate_addresses(text: str) -> str:
    """``text`` with every IPv4 or IPv6 address in it truncated (:func:`truncate_ip`).

    >>> truncate_addresses('{"publicAddress":"198.51.100.23","v6":"2001:db8:1:2::9"}')
    '{"publicAddress":"198.51.100.0","v6":"2001:db8:1::"}'
    >>> truncate_addresses("at 20:15:00 on 1.2.3")
    'at 20:15:00 on 1.2.3'
    """

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        try:
            ipaddress.ip_address(found)
        except ValueError:
            return found
        return truncate_ip(found)

    return _CANDIDATE.sub(replace, text)


class Anonymizer:
    """Locate, then truncate, the addresses of events on their way into the log."""

    def __init__(self, locator: Locator | None = None) -> None:
        self.locator = locator

    @classmethod
    def open(cls, enabled: bool, geoip_db: Path | None = None) -> Anonymizer | None:
        """The anonymizer ``IP_ANONYMIZE`` asks for (None when it is off); ``geoip_db``: the
        database to locate the full addresses with first (none: no location is resolved)."""
        if not enabled:
            return None
        if geoip_db is None:
            log.info("IP_ANONYMIZE: addresses truncated; GEOIP_DB unset, so none is located")
            return cls(None)
        from ingestor.detection.geo import GeoIP

        return cls(GeoIP(geoip_db))

    def apply(self, events: Sequence[MediaEvent]) -> list[MediaEvent]:
        return [self.one(event) for event in events]

    def one(self, event: MediaEvent) -> MediaEvent:
        changes: dict[str, object] = {}
        ip = event.ip_address
        if ip:
            if (
                self.locator is not None
                and not (event.geo_country or event.geo_latitude is not None)
                and event.location_type.lower() != "lan"  # as the detector's _place_of
            ):
                place = self.locator.locate(ip)
                if place is not None:
                    changes.update(
                        geo_country=place.country,
                        geo_city=place.city,
                        geo_latitude=place.latitude,
                        geo_longitude=place.longitude,
                    )
            truncated = truncate_ip(ip)
            if truncated != ip:
                changes["ip_address"] = truncated
        if event.raw_payload:
            scrubbed = truncate_addresses(event.raw_payload)
            if scrubbed != event.raw_payload:
                changes["raw_payload"] = scrubbed
        return msgspec.structs.replace(event, **changes) if changes else event


__all__ = ["IPV4_PREFIX", "IPV6_PREFIX", "Anonymizer", "truncate_addresses", "truncate_ip"]
