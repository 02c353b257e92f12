"""``ingestor erase --user ID [--server ID]``: all of it is in :mod:`ingestor.erasure`."""

from __future__ import annotations

from ingestor.config import Settings


async def erase_command(settings: Settings, user_id: str, server_id: str | None) -> int:
    """Forget one user (:func:`ingestor.erasure.erase`); 0 when done, 1 when it was refused."""
    from ingestor.erasure import erase

    return 0 if await erase(settings, user_id, server_id) is not None else 1
