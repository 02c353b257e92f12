"""Jellyfin and Emby: their sessions followed live, and their history imported.

* :mod:`.mapping`: the pure translation, a ``Sessions`` entry or a webhook notification in,
  an :class:`~ingestor.sources.jellyfin.mapping.Observation` out;
* :mod:`.session_machine`: observations in, playback transitions (MediaEvents) out;
* :mod:`.tracker`: one source's machine, its persisted state and its outbox to the sink;
* :mod:`.websocket`: the WebSocket client (Jellyfin and Emby);
* :mod:`.webhook`: ``POST /webhooks/jellyfin`` (the webhook plugin);
* :mod:`.playback_reporting_import`, :mod:`.jellystat_import`: history importers.
"""
