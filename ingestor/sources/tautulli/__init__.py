"""Tautulli: its API followed live, and its database imported.

* :mod:`.mapping`: the pure translation, a history row or a ``get_activity`` session in,
  :class:`~ingestor.events.MediaEvent` out (shared by the API sync and the database import);
* :mod:`.client`: the API v2 client (the envelope, and what each refusal means);
* :mod:`.cursor`: where the history sync stands (the cursor, the ids read, the lookback);
* :mod:`.activity`: live sessions from ``get_activity``, timed by Tautulli's own start;
* :mod:`.sync`: the source that runs them (server info, history passes, activity polls);
* :mod:`.db_import`: ``ingestor import tautulli-db``.
"""
