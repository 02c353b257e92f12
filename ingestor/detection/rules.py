"""The detection rules engine: MediaEvents in, in stream order; Alerts out. Pure: no I/O, no
wall clock (the only outside input is the read-only location database behind
:class:`~ingestor.detection.geo.Locator`).

Time is **event time** (``occurred_at``) throughout, so the same events in the same order give
the same alerts, live, after a restart, or over a replay. Each alert's id is
``make_event_id("alert", rule, <triggering event_id>, <what was found>)``: running the engine
again over the same events produces the same ids, and the projection keeps one row per id.

Playbacks, not reports
----------------------
The stream holds every report of a playback: a Plex webhook and the Tautulli summary of the
same viewing, a source re-reporting a step after a reconnect, exact re-deliveries. The
engine follows **streams**, one per ``(server_id, user_id, rating_key or title,
machine_id)`` (:func:`ingestor.events.cross_key`), so no rule counts one playback twice:

* an event whose ``event_id`` was already fed is ignored entirely;
* a ``play`` **opens** a stream unless one for the same key is already live (not stopped and
  started within :data:`ACTIVE_WINDOW`) or started within :data:`SAME_PLAYBACK` of it (two
  sources' reports of one start); ``pause``/``resume``/``progress``/``scrobble`` open one
  only when the key has none (the first news of a playback, from a source that joined late);
* ``stop`` and ``summary`` close a stream and **never open one** (a summary is a finished
  session: it can neither start nor count as a live stream);
* a device plays one thing at a time: a playback opening on a ``machine_id`` ends the same
  user's unfinished earlier one on it (Plex autoplay and lost webhooks leave no stop).

The rules that judge a new playback (concurrent streams, simultaneous locations, impossible
travel, geo restriction, user agent, VPN) run once, on the event that opens its stream.
Device velocity looks at every event's address.

Locations
---------
A place is what the MaxMind-format database says about a non-local address
(:mod:`ingestor.detection.geo`). A local address (LAN, loopback, CGNAT...), an event whose
``location_type`` is ``lan``, a missing address, or one the database does not hold has **no
place**: it is never measured from, never travels, never counts as a location. Without a
database the location rules do nothing (the detector says so at start).

Rules (defaults in :mod:`ingestor.detection.config`)
-----------------------------------------------------
``impossible_travel``
    On an opening with coordinates: the user's latest earlier located report (any event
    type) is at least ``min_time_delta`` earlier and ``min_distance_km`` away, and covering
    the distance in that time needs more than ``max_speed_kmh``.
``concurrent_streams``
    On an opening: the user's opened streams live at that moment (started within
    :data:`ACTIVE_WINDOW` and not yet stopped), this one included, exceed the limit.
``device_velocity``
    On any event bringing an address new to its device's ``window``: the device (server,
    machine id) then has more than ``max_unique_ips`` distinct addresses within ``window``.
    All local addresses count as one (the LAN): one source reporting a device's LAN address
    and another its public one is not a hop, nor is DHCP.
``geo_restriction``
    On an opening with a country: blocked, or outside the allowed list when one is set.
``simultaneous_locations``
    On an opening with coordinates: another live stream of the user, reported within
    ``window``, is at least ``min_distance_km`` away.
``user_agent_anomaly``
    On an opening: the client (platform, product, player, device) matches a suspicious
    pattern; or the user has at least ``min_history`` playbacks within ``history``, the
    previous one less than ``window`` ago, and the platform family changed
    (``platform_switch``) or the client was never seen within ``history``
    (``new_user_agent``). At most one alert per opening, in that order.
``vpn_usage``
    On an opening from a VPN range: the user's first VPN stream within ``history``
    (``first_use``) or a provider they did not use within it (``new_provider``).

History
-------
Every rule looks back over an explicit event-time window, and state is pruned behind the
newest event time seen by the lookback each piece needs plus ``max_lateness``
(``DETECTION_MAX_LATENESS``): pruning never changes a decision about an event that arrives
less than that late. :attr:`Engine.horizon` is the longest lookback, so an engine fed the
events of the last ``horizon`` (plus the lateness) before some point decides everything
after it exactly as one fed the whole log; the detector's warm-up after a restart relies on
that.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ingestor.detection.config import RULES, DetectionConfig
from ingestor.detection.geo import HALF_EARTH_KM, Locator, Place, VpnRanges, haversine_km
from ingestor.detection.geo import is_local as _is_local_ip
from ingestor.events import CrossKey, EventType, MediaEvent, cross_key, make_event_id
from ingestor.records import Alert

ACTIVE_WINDOW = timedelta(hours=4)
"""A stream started longer ago than this and never stopped is no longer live (its stop was
lost): the reference's "active = started within 4 h and not stopped"."""

SAME_PLAYBACK = timedelta(seconds=60)
"""Two reports of one key whose playback starts are this close describe one playback."""

PRUNE_EVERY = 2048
PRUNE_STEP = timedelta(minutes=15)
"""The state is pruned after at least ``PRUNE_EVERY`` events once the newest event time has
moved ``PRUNE_STEP`` since the last pruning: memory stays bounded by the lookbacks plus a
step, and pruning costs little per event however dense the stream."""

_OPENERS = frozenset({EventType.PAUSE, EventType.RESUME, EventType.PROGRESS, EventType.SCROBBLE})
_CLOSERS = frozenset({EventType.STOP, EventType.SUMMARY})

UserKey = tuple[str, str]
"""(server_id, user_id): rules judge a user on one server, as the reference did."""


@dataclass(slots=True)
class Stream:
    """One playback as the engine knows it."""

    key: CrossKey
    started: datetime  # the playback's start, as the report that created it said
    last_seen: datetime  # the latest event time of any report of it
    opened: bool  # a lifecycle report opened it (False: only a stop or summary was seen)
    opening_event_id: str
    title: str
    machine_id: str
    stopped: datetime | None = None
    place: Place | None = None
    ip: str = ""

    def live_at(self, at: datetime) -> bool:
        """Opened, started by ``at`` and within the active window, not stopped by ``at``."""
        return (
            self.opened
            and at - ACTIVE_WINDOW <= self.started <= at
            and (self.stopped is None or self.stopped > at)
        )


@dataclass(frozen=True, slots=True, order=True)
class _Sighting:
    """A user seen at a place (impossible travel); ordered by time, then event id."""

    at: datetime
    event_id: str
    place: Place = field(compare=False)
    ip: str = field(compare=False)


@dataclass(frozen=True, slots=True, order=True)
class _Client:
    """A playback's client, for user-agent history."""

    at: datetime
    event_id: str
    agent: tuple[str, str, str, str] = field(compare=False)
    family: str = field(compare=False)


@dataclass(frozen=True, slots=True, order=True)
class _Address:
    at: datetime
    event_id: str
    ip: str = field(compare=False)


@dataclass(frozen=True, slots=True, order=True)
class _VpnUse:
    at: datetime
    event_id: str
    provider: str = field(compare=False)


@dataclass
class EngineStats:
    events: int = 0
    redelivered: int = 0
    openings: int = 0
    alerts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))


class Engine:
    """Feed MediaEvents in stream order with :meth:`feed`; it returns the alerts each raises.

    ``geo``: a :class:`~ingestor.detection.geo.Locator` (a
    :class:`~ingestor.detection.geo.GeoIP` over ``config.geoip_db``, which the caller opens
    and closes), or ``None``: then the location rules are off. ``vpn``: VPN ranges; by
    default the ones ``config`` loaded from ``VPN_RANGES_FILE``; none: ``vpn_usage`` is off.

    >>> from datetime import UTC, datetime
    >>> def play(device: str, minute: int) -> MediaEvent:
    ...     return MediaEvent(event_id=f"play-{device}", event_type=EventType.PLAY,
    ...         occurred_at=datetime(2026, 1, 5, 20, minute, tzinfo=UTC), source="plex",
    ...         server_id="srv", session_key=device, user_id="7", username="ana",
    ...         media_type="movie", title="Heat", machine_id=device)
    >>> engine = Engine(DetectionConfig().with_rule("concurrent_streams", limit=1))
    >>> engine.feed(play("tv", 0))
    []
    >>> [(a.rule, a.message) for a in engine.feed(play("phone", 5))]
    [('concurrent_streams', 'ana has 2 streams at once (limit 1)')]
    >>> engine.feed(play("phone", 5))  # the same event again: nothing
    []
    """

    def __init__(
        self,
        config: DetectionConfig,
        *,
        geo: Locator | None = None,
        vpn: VpnRanges | None = None,
    ) -> None:
        self.config = config
        self.geo = geo
        self.vpn = vpn if vpn is not None else config.vpn_ranges
        self.stats = EngineStats()
        c = config
        self._it_lookback = timedelta(
            hours=HALF_EARTH_KM / c.impossible_travel.max_speed_kmh
        ) + timedelta(seconds=c.impossible_travel.min_time_delta)
        self._stream_lookback = ACTIVE_WINDOW + SAME_PLAYBACK
        self._device_lookback = timedelta(seconds=c.device_velocity.window)
        self._ua_lookback = timedelta(
            seconds=max(c.user_agent_anomaly.history, c.user_agent_anomaly.window)
        )
        self._vpn_lookback = timedelta(seconds=c.vpn_usage.history)
        self._seen_lookback = max(
            self._stream_lookback,
            self._it_lookback,
            self._device_lookback,
            timedelta(seconds=c.simultaneous_locations.window),
        )
        self._slack = timedelta(seconds=c.max_lateness)
        self._seen: dict[str, datetime] = {}
        self._streams: dict[CrossKey, Stream] = {}
        self._user_streams: dict[UserKey, dict[CrossKey, Stream]] = {}
        self._sightings: dict[UserKey, list[_Sighting]] = {}
        self._clients: dict[UserKey, list[_Client]] = {}
        self._addresses: dict[tuple[str, str], list[_Address]] = {}
        self._vpn_uses: dict[UserKey, list[_VpnUse]] = {}
        self._watermark: datetime | None = None
        self._pruned_at: datetime | None = None
        self._since_prune = 0
        self._on = self.active_rules()

    # ------------------------------------------------------------------ what is on

    @property
    def horizon(self) -> timedelta:
        """How much event-time history the enabled rules look back at, at most."""
        c = self.config
        spans = [self._seen_lookback]
        if c.user_agent_anomaly.enabled:
            spans.append(self._ua_lookback)
        if c.vpn_usage.enabled and self.vpn is not None:
            spans.append(self._vpn_lookback)
        return max(spans)

    def active_rules(self) -> dict[str, bool]:
        """Per rule: does it run (enabled, and has what it needs)."""
        c = self.config
        located = self.geo is not None
        return {
            "impossible_travel": c.impossible_travel.enabled and located,
            "concurrent_streams": c.concurrent_streams.enabled,
            "device_velocity": c.device_velocity.enabled,
            "geo_restriction": c.geo_restriction.enabled and located,
            "simultaneous_locations": c.simultaneous_locations.enabled and located,
            "user_agent_anomaly": c.user_agent_anomaly.enabled,
            "vpn_usage": c.vpn_usage.enabled and self.vpn is not None,
        }

    # ------------------------------------------------------------------ feeding

    def feed_all(self, events: Iterable[MediaEvent]) -> list[Alert]:
        """Feed several events in order; all the alerts they raise, in order."""
        alerts: list[Alert] = []
        for event in events:
            alerts.extend(self.feed(event))
        return alerts

    def feed(self, event: MediaEvent) -> list[Alert]:
        """Feed the next event of the stream; the alerts it raises (usually none)."""
        if event.event_id in self._seen:
            self.stats.redelivered += 1
            return []
        at = event.occurred_at
        self._seen[event.event_id] = at
        self.stats.events += 1
        if self._watermark is None or at > self._watermark:
            self._watermark = at
        place = self._place_of(event)
        stream, opened = self._track(event, place)
        on = self._on
        alerts: list[Alert] = []
        user = (event.server_id, event.user_id)
        if opened:
            self.stats.openings += 1
            if on["concurrent_streams"]:
                alerts.extend(self._concurrent_streams(event, stream, user))
            if on["simultaneous_locations"]:
                alerts.extend(self._simultaneous_locations(event, stream, place, user))
            if on["impossible_travel"]:
                alerts.extend(self._impossible_travel(event, place, user))
            if on["geo_restriction"]:
                alerts.extend(self._geo_restriction(event, place))
            if on["user_agent_anomaly"]:
                alerts.extend(self._user_agent_anomaly(event, user))
            if on["vpn_usage"]:
                alerts.extend(self._vpn_usage(event, user))
        if on["device_velocity"]:
            alerts.extend(self._device_velocity(event))
        self._remember(event, place, user, opened)
        for alert in alerts:
            self.stats.alerts[alert.rule] += 1
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY and (
            self._pruned_at is None or self._watermark - self._pruned_at >= PRUNE_STEP
        ):
            self.prune()
        return alerts

    # ------------------------------------------------------------------ streams

    def _place_of(self, event: MediaEvent) -> Place | None:
        if self.geo is None or not event.ip_address or event.location_type.lower() == "lan":
            return None
        if event.geo_country or event.geo_latitude is not None:
            # resolved at ingestion from the full address (IP_ANONYMIZE truncated it after)
            lat, lon = event.geo_latitude, event.geo_longitude
            return Place(event.geo_country, event.geo_city, lat, lon)
        return self.geo.locate(event.ip_address)

    def _current(self, key: CrossKey, at: datetime) -> Stream | None:
        """The stream of ``key`` if it was reported within the lookback (else: none)."""
        stream = self._streams.get(key)
        if stream is None or stream.last_seen < at - self._stream_lookback:
            return None
        return stream

    def _track(self, event: MediaEvent, place: Place | None) -> tuple[Stream, bool]:
        """Fold the event into its stream; True when it opened a new one."""
        key = cross_key(event)
        at = event.occurred_at
        start = event.playback_start
        stream = self._current(key, at)
        kind = event.event_type
        if kind is EventType.PLAY:
            opens = _play_opens(stream, start, at)
        else:
            opens = kind in _OPENERS and stream is None
        if opens or stream is None:
            stream = Stream(
                key=key,
                started=start,
                last_seen=at,
                opened=opens,
                opening_event_id=event.event_id,
                title=event.title,
                machine_id=event.machine_id,
            )
            self._streams[key] = stream
            user_streams = self._user_streams.setdefault((event.server_id, event.user_id), {})
            user_streams[key] = stream
            if opens and event.machine_id:
                _supersede(user_streams.values(), stream)
        if kind in _CLOSERS:
            stop = event.stopped_at or at
            same = event.started_at is None or abs(event.started_at - stream.started) <= (
                SAME_PLAYBACK
            )
            if same and stop >= stream.started - SAME_PLAYBACK:
                stream.stopped = stop if stream.stopped is None else min(stream.stopped, stop)
        stream.last_seen = max(stream.last_seen, at)
        if place is not None:
            stream.place = place
        if event.ip_address:
            stream.ip = event.ip_address
        return stream, opens

    def _live_others(self, stream: Stream, user: UserKey, at: datetime) -> list[Stream]:
        others = [
            s
            for key, s in self._user_streams.get(user, {}).items()
            if key != stream.key and s.live_at(at) and s.last_seen >= at - self._stream_lookback
        ]
        others.sort(key=lambda s: (s.started, s.opening_event_id))
        return others

    # ------------------------------------------------------------------ rules

    def _alert(
        self,
        rule: str,
        event: MediaEvent,
        message: str,
        details: dict[str, Any],
        related: Iterable[str] = (),
        finding: str = "",
    ) -> Alert:
        settings = self.config.rule(rule)
        return Alert(
            alert_id=make_event_id("alert", rule, event.event_id, finding),
            rule=rule,
            severity=settings.severity,
            occurred_at=event.occurred_at,
            user_id=event.user_id,
            username=event.username or event.friendly_name,
            server_id=event.server_id,
            message=message,
            event_ids=[event.event_id, *dict.fromkeys(e for e in related if e != event.event_id)],
            details=details,
        )

    def _concurrent_streams(self, event: MediaEvent, stream: Stream, user: UserKey) -> list[Alert]:
        settings = self.config.concurrent_streams
        others = self._live_others(stream, user, event.occurred_at)
        count = len(others) + 1
        limit = settings.user_limits.get(
            event.user_id, settings.user_limits.get(event.username, settings.limit)
        )
        if count <= limit:
            return []
        streams = [_stream_detail(s) for s in others] + [_stream_detail(stream)]
        return [
            self._alert(
                "concurrent_streams",
                event,
                f"{_who(event)} has {count} streams at once (limit {limit})",
                {"active_streams": count, "limit": limit, "streams": streams},
                [s.opening_event_id for s in others],
            )
        ]

    def _simultaneous_locations(
        self, event: MediaEvent, stream: Stream, place: Place | None, user: UserKey
    ) -> list[Alert]:
        settings = self.config.simultaneous_locations
        here = place.coordinates if place is not None else None
        if place is None or here is None:
            return []
        at = event.occurred_at
        window = timedelta(seconds=settings.window)
        far: list[tuple[Stream, float]] = []
        for other in self._live_others(stream, user, at):
            there = other.place.coordinates if other.place is not None else None
            if there is None or other.last_seen < at - window:
                continue
            distance = haversine_km(here, there)
            if distance >= settings.min_distance_km:
                far.append((other, distance))
        if not far:
            return []
        locations = [_place_detail(place, event.ip_address, event.machine_id, at, event.title)]
        locations += [
            {**_place_detail(s.place, s.ip, s.machine_id, s.started, s.title), "distance_km": _r(d)}
            for s, d in far
            if s.place is not None
        ]
        farthest = max(d for _, d in far)
        return [
            self._alert(
                "simultaneous_locations",
                event,
                f"{_who(event)} streams from {len(far) + 1} places at once: "
                + "; ".join(f"{loc['place']}" for loc in locations)
                + f" (up to {farthest:.0f} km apart)",
                {"locations": locations, "max_distance_km": _r(farthest)},
                [s.opening_event_id for s, _ in far],
            )
        ]

    def _impossible_travel(
        self, event: MediaEvent, place: Place | None, user: UserKey
    ) -> list[Alert]:
        settings = self.config.impossible_travel
        here = place.coordinates if place is not None else None
        if place is None or here is None:
            return []
        at = event.occurred_at
        sightings = self._sightings.get(user, [])
        index = bisect.bisect_right(sightings, _Sighting(at, "\uffff", place, ""))
        if index == 0:
            return []
        before = sightings[index - 1]
        there = before.place.coordinates
        assert there is not None
        elapsed = at - before.at
        if elapsed < timedelta(seconds=settings.min_time_delta) or elapsed <= timedelta(0):
            return []
        distance = haversine_km(there, here)
        if distance < settings.min_distance_km:
            return []
        hours = elapsed.total_seconds() / 3600
        speed = distance / hours
        if speed <= settings.max_speed_kmh:
            return []
        return [
            self._alert(
                "impossible_travel",
                event,
                f"{_who(event)} was in {before.place.label} {elapsed.total_seconds() / 60:.0f} "
                f"min before streaming from {place.label}, {distance:.0f} km away: "
                f"{speed:.0f} km/h (limit {settings.max_speed_kmh:.0f})",
                {
                    "from": _place_detail(before.place, before.ip, "", before.at, ""),
                    "to": _place_detail(place, event.ip_address, event.machine_id, at, ""),
                    "distance_km": _r(distance),
                    "minutes": _r(elapsed.total_seconds() / 60),
                    "speed_kmh": _r(speed),
                    "max_speed_kmh": settings.max_speed_kmh,
                },
                [before.event_id],
            )
        ]

    def _geo_restriction(self, event: MediaEvent, place: Place | None) -> list[Alert]:
        settings = self.config.geo_restriction
        if place is None or not place.country:
            return []
        if settings.allowed_countries:
            if place.country in settings.allowed_countries:
                return []
            mode, why = "allowlist", "not in the allowed countries"
        elif place.country in settings.blocked_countries:
            mode, why = "blocklist", "a blocked country"
        else:
            return []
        return [
            self._alert(
                "geo_restriction",
                event,
                f"{_who(event)} streams from {place.label}: {why}",
                {
                    "country": place.country,
                    "city": place.city,
                    "ip_address": event.ip_address,
                    "mode": mode,
                    "blocked_countries": list(settings.blocked_countries),
                    "allowed_countries": list(settings.allowed_countries),
                },
                finding=place.country,
            )
        ]

    def _user_agent_anomaly(self, event: MediaEvent, user: UserKey) -> list[Alert]:
        settings = self.config.user_agent_anomaly
        agent = _agent(event)
        if not any(agent):
            return []
        text = " ".join(part for part in agent if part)
        client = {
            "platform": event.platform,
            "product": event.product,
            "player": event.player,
            "device": event.device,
        }
        for pattern in settings.suspicious_patterns:
            if pattern in text:
                return [
                    self._alert(
                        "user_agent_anomaly",
                        event,
                        f"{_who(event)} streams with a client matching {pattern!r}: "
                        f"{_client_text(event)}",
                        {"anomaly": "suspicious_pattern", "pattern": pattern, "client": client},
                        finding="suspicious_pattern",
                    )
                ]
        at = event.occurred_at
        history = [
            c
            for c in self._clients.get(user, [])
            if at - timedelta(seconds=settings.history) <= c.at <= at
        ]
        if len(history) < max(1, settings.min_history):
            return []
        previous = history[-1]
        elapsed = at - previous.at
        if elapsed > timedelta(seconds=settings.window):
            return []
        family = platform_family(event.platform)
        details: dict[str, Any] = {
            "client": client,
            "previous_platform": previous.agent[0],
            "previous_client": "/".join(p for p in previous.agent if p),
            "minutes_since_previous": _r(elapsed.total_seconds() / 60),
            "history": len(history),
        }
        if (
            settings.alert_on_platform_switch
            and family
            and previous.family
            and family != previous.family
        ):
            return [
                self._alert(
                    "user_agent_anomaly",
                    event,
                    f"{_who(event)} switched from {previous.family} to {family} in "
                    f"{elapsed.total_seconds() / 60:.0f} min",
                    {"anomaly": "platform_switch", **details},
                    [previous.event_id],
                    finding="platform_switch",
                )
            ]
        if settings.alert_on_new_user_agent and agent not in {c.agent for c in history}:
            return [
                self._alert(
                    "user_agent_anomaly",
                    event,
                    f"{_who(event)} streams with a new client ({_client_text(event)}) "
                    f"{elapsed.total_seconds() / 60:.0f} min after another",
                    {"anomaly": "new_user_agent", **details},
                    [previous.event_id],
                    finding="new_user_agent",
                )
            ]
        return []

    def _vpn_usage(self, event: MediaEvent, user: UserKey) -> list[Alert]:
        settings = self.config.vpn_usage
        provider = self._vpn_provider(event)
        if provider is None:
            return []
        at = event.occurred_at
        history = [
            u
            for u in self._vpn_uses.get(user, [])
            if at - timedelta(seconds=settings.history) <= u.at <= at
        ]
        name = provider or "an unnamed VPN"
        if not history:
            if not settings.alert_on_first_use:
                return []
            finding, text = "first_use", f"{_who(event)} streams through a VPN ({name})"
        elif provider not in {u.provider for u in history}:
            if not settings.alert_on_new_provider:
                return []
            finding, text = "new_provider", f"{_who(event)} streams through a new VPN ({name})"
        else:
            return []
        return [
            self._alert(
                "vpn_usage",
                event,
                text,
                {
                    "reason": finding,
                    "provider": provider,
                    "ip_address": event.ip_address,
                    "previous_providers": sorted({u.provider for u in history}),
                },
                finding=finding,
            )
        ]

    def _vpn_provider(self, event: MediaEvent) -> str | None:
        if self.vpn is None or not event.ip_address or event.location_type.lower() == "lan":
            return None
        settings = self.config.vpn_usage
        if event.user_id in settings.excluded_users or (
            event.username and event.username in settings.excluded_users
        ):
            return None
        if _is_local_ip(event.ip_address):
            return None
        provider = self.vpn.lookup(event.ip_address)
        if provider is None or provider in settings.excluded_providers:
            return None
        return provider

    def _device_velocity(self, event: MediaEvent) -> list[Alert]:
        if not event.machine_id or not event.ip_address:
            return []
        settings = self.config.device_velocity
        at = event.occurred_at
        since = at - timedelta(seconds=settings.window)
        seen = self._addresses.get((event.server_id, event.machine_id), [])
        recent = {a.ip for a in seen if since <= a.at <= at}
        address = _network_address(event.ip_address)
        if address in recent:
            return []
        count = len(recent) + 1
        if count <= settings.max_unique_ips:
            return []
        window = _duration_text(settings.window)
        addresses = sorted(recent | {address})
        first_seen: dict[str, str] = {}
        for address in seen:
            if since <= address.at <= at:
                first_seen.setdefault(address.ip, address.event_id)
        related = [first_seen[ip] for ip in sorted(first_seen)]
        return [
            self._alert(
                "device_velocity",
                event,
                f"device {event.machine_id} used {count} addresses within {window} "
                f"(limit {settings.max_unique_ips})",
                {
                    "machine_id": event.machine_id,
                    "ip_addresses": addresses,
                    "unique_ips": count,
                    "max_unique_ips": settings.max_unique_ips,
                    "window_start": since.isoformat(),
                    "window_end": at.isoformat(),
                },
                related,
            )
        ]

    # ------------------------------------------------------------------ history

    def _remember(
        self, event: MediaEvent, place: Place | None, user: UserKey, opened: bool
    ) -> None:
        at = event.occurred_at
        if place is not None and place.coordinates is not None:
            sightings = self._sightings.setdefault(user, [])
            bisect.insort(sightings, _Sighting(at, event.event_id, place, event.ip_address))
        if event.machine_id and event.ip_address:
            bisect.insort(
                self._addresses.setdefault((event.server_id, event.machine_id), []),
                _Address(at, event.event_id, _network_address(event.ip_address)),
            )
        if not opened:
            return
        agent = _agent(event)
        if any(agent):
            bisect.insort(
                self._clients.setdefault(user, []),
                _Client(at, event.event_id, agent, platform_family(event.platform)),
            )
        provider = self._vpn_provider(event) if self.vpn is not None else None
        if provider is not None:
            bisect.insort(
                self._vpn_uses.setdefault(user, []), _VpnUse(at, event.event_id, provider)
            )

    def prune(self) -> None:
        """Forget what no rule can look at any more, behind the newest event time."""
        self._since_prune = 0
        if self._watermark is None:
            return
        self._pruned_at = self._watermark
        # an event up to max_lateness older than the newest one still finds its history
        now = self._watermark - self._slack
        self._seen = {k: t for k, t in self._seen.items() if t >= now - self._seen_lookback}
        stale = now - self._stream_lookback
        for key in [k for k, s in self._streams.items() if s.last_seen < stale]:
            stream = self._streams.pop(key)
            user = (key[0], key[1])
            streams = self._user_streams.get(user)
            if streams is not None and streams.get(key) is stream:
                del streams[key]
                if not streams:
                    del self._user_streams[user]
        _prune_lists(self._sightings, now - self._it_lookback)
        _prune_lists(self._addresses, now - self._device_lookback)
        _prune_lists(self._clients, now - self._ua_lookback)
        _prune_lists(self._vpn_uses, now - self._vpn_lookback)

    def state_size(self) -> dict[str, int]:
        """How much the engine holds (for status and tests)."""
        return {
            "event_ids": len(self._seen),
            "streams": len(self._streams),
            "sightings": sum(map(len, self._sightings.values())),
            "addresses": sum(map(len, self._addresses.values())),
            "clients": sum(map(len, self._clients.values())),
            "vpn_uses": sum(map(len, self._vpn_uses.values())),
        }


# --------------------------------------------------------------------------- helpers


def _supersede(streams: Iterable[Stream], new: Stream) -> None:
    """A device plays one thing at a time: a new playback on it ends the user's unfinished
    earlier one there (whose stop may never come: Plex autoplay, a lost webhook)."""
    for other in streams:
        if (
            other is not new
            and other.machine_id == new.machine_id
            and other.opened
            and other.stopped is None
            and other.started < new.started
        ):
            other.stopped = new.started


def _play_opens(stream: Stream | None, start: datetime, at: datetime) -> bool:
    """Does a ``play`` starting at ``start`` (reported at ``at``) begin a new playback of a
    key whose current stream is ``stream``?"""
    if stream is None:
        return True
    if abs(start - stream.started) <= SAME_PLAYBACK:
        return False  # another report of the same start: one playback
    if not stream.opened:
        return True  # the known one is a finished session; this is another viewing
    return not stream.live_at(at)  # a live stream re-reported, or a new viewing after it


def platform_family(platform: str) -> str:
    """The platform's family, so that "iPhone" and "iOS" are one and "Android" another.

    >>> [platform_family(p) for p in ("iOS", "iPadOS", "Android", "Chrome", "Roku", "")]
    ['iOS', 'iOS', 'Android', 'Web', 'SmartTV', '']
    """
    p = platform.strip().lower()
    if not p:
        return ""
    families = (
        ("iOS", ("ios", "iphone", "ipad")),
        ("Android", ("android",)),
        ("macOS", ("macos", "osx", "os x", "mac os")),
        ("Windows", ("windows",)),
        ("Linux", ("linux", "ubuntu", "debian", "fedora", "centos")),
        ("Web", ("chrome", "firefox", "safari", "edge", "web", "opera")),
        ("SmartTV", ("tv", "roku", "fire", "tizen", "webos", "vizio", "netcast")),
        ("Console", ("xbox", "playstation", "ps4", "ps5", "nintendo")),
    )
    for family, words in families:
        if any(word in p for word in words):
            return family
    return p


LAN = "local network"
"""What device velocity counts every local address as."""


@functools.lru_cache(maxsize=65_536)
def _network_address(ip: str) -> str:
    return LAN if _is_local_ip(ip) else ip.strip()


def _agent(event: MediaEvent) -> tuple[str, str, str, str]:
    return (
        event.platform.strip().lower(),
        event.product.strip().lower(),
        event.player.strip().lower(),
        event.device.strip().lower(),
    )


def _client_text(event: MediaEvent) -> str:
    parts = (event.platform, event.product, event.player, event.device)
    return "/".join(p for p in parts if p) or "unknown client"


def _who(event: MediaEvent) -> str:
    return event.username or event.friendly_name or f"user {event.user_id}"


def _r(value: float) -> float:
    return round(value, 2)


def _duration_text(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:g} s"


def _place_detail(
    place: Place, ip: str, machine_id: str, at: datetime, title: str
) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "place": place.label,
        "country": place.country,
        "city": place.city,
        "latitude": place.latitude,
        "longitude": place.longitude,
        "ip_address": ip,
        "at": at.isoformat(),
    }
    if machine_id:
        detail["machine_id"] = machine_id
    if title:
        detail["title"] = title
    return detail


def _stream_detail(stream: Stream) -> dict[str, Any]:
    return {
        "machine_id": stream.machine_id,
        "title": stream.title,
        "started_at": stream.started.isoformat(),
        "ip_address": stream.ip,
        "event_id": stream.opening_event_id,
    }


def _prune_lists(table: dict[Any, list[Any]], cutoff: datetime) -> None:
    for key in list(table):
        items = table[key]
        keep = bisect.bisect_left([item.at for item in items], cutoff)
        if keep >= len(items):
            del table[key]
        elif keep:
            del items[:keep]


__all__ = ["ACTIVE_WINDOW", "SAME_PLAYBACK", "Engine", "EngineStats", "Stream", "platform_family"]
