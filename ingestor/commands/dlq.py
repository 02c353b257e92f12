"""``ingestor dlq``: the dead letters listed, retried or purged."""

from __future__ import annotations

import sys

from ingestor.commands import Out
from ingestor.config import Settings
from ingestor.nats.connection import open_nats
from ingestor.nats.dlq import DeadLetters
from ingestor.nats.streams import STREAM


async def dlq_command(settings: Settings, action: str, seq: int | None, out: Out = print) -> int:
    import json

    handle = await open_nats(settings)
    try:
        letters = DeadLetters(handle.js)
        if action == "list":
            n = 0
            async for letter in letters.entries():
                n += 1
                out(json.dumps(letter.as_dict()))
            if n == 0:
                print("the dead-letter stream is empty", file=sys.stderr)
        elif action == "retry":
            n = await letters.retry(seq)
            out(f"republished {n} dead letter(s) to {STREAM}")
        else:
            n = await letters.purge(seq)
            out(f"purged {n} dead letter(s)")
    finally:
        await handle.close()
    return 0
