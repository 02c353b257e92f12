"""Plex reports the server owner as user id 1 (its local admin id) in webhooks and in
``/status/sessions``; Tautulli and plex.tv use the owner's real plex.tv id. One rule maps it
(:func:`ingestor.sources.plex.mapping.plex_user_id`), for every Plex adapter; this is what an
adapter knows of the owner, and the warning while it knows nothing."""

from __future__ import annotations

import logging

from ingestor.sources.plex.mapping import OWNER_LOCAL_ID, plex_user_id

log = logging.getLogger(__name__)


class OwnerMap:
    """Maps the owner's local id 1 to ``owner_id`` (``PLEX_OWNER_ID``, or learned later, for
    example from Tautulli). Until it is known, 1 stays 1 and a warning says so, once."""

    def __init__(self, owner_id: str | int | None, adapter: str) -> None:
        self.owner_id = str(owner_id) if owner_id else None
        self.adapter = adapter
        self._warned = False

    def learn(self, owner_id: str | int) -> None:
        self.owner_id = str(owner_id)
        log.info("%s: the server owner (user id 1) is user %s", self.adapter, self.owner_id)

    def user_id(self, raw: str | int) -> str:
        user_id = plex_user_id(raw, self.owner_id)
        self.check(user_id)
        return user_id

    def check(self, user_id: str) -> None:
        """Warn once when a mapped user id is still the owner's local id."""
        if user_id != OWNER_LOCAL_ID or self.owner_id is not None or self._warned:
            return
        self._warned = True
        log.warning(
            "%s: the server owner appears as user id 1 and PLEX_OWNER_ID is not set; "
            "their events keep user id 1 and will not link with Tautulli's rows",
            self.adapter,
        )
