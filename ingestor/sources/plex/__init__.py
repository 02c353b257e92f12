"""Plex Media Server: where its reports become events.

* :mod:`.mapping`: the pure translation, a webhook document or a ``/status/sessions`` entry in,
  :class:`~ingestor.events.MediaEvent` out (the one place a Plex payload becomes an event);
* :mod:`.webhook`: ``POST /webhooks/plex`` (Plex Pass), with the playback book its events need;
* :mod:`.poll`: ``GET /status/sessions`` polled, snapshots diffed into transitions;
* :mod:`.owner`: the server owner's local id 1 mapped to their plex.tv id;
* :mod:`.history_import`: ``ingestor import plex-history`` (PMS's own watch history).
"""
