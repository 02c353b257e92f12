"""Source adapters: where the media servers' reports come in and become MediaEvents.

One package per server kind, each a thin transport beside a pure ``mapping.py`` (the one
place that server's payload becomes events):

* :mod:`ingestor.sources.plex` (webhook, ``/status/sessions`` poll, watch-history import);
* :mod:`ingestor.sources.tautulli` (API sync: history and live activity; database import);
* :mod:`ingestor.sources.jellyfin` (Jellyfin and Emby: WebSocket, webhook, importers).

Shared: :mod:`.base` (health, backoff, circuit breaker, state files), :mod:`.http` (the one
upstream HTTP client, its retry policy and its errors), :mod:`.config` (the sources'
settings), :mod:`.assemble` (the configured adapters around one sink) and
:mod:`.history_import` (what the history importers share). See docs/architecture.md.
"""
