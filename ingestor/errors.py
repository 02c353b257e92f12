"""Error classes: each says what failed and what happens next.

One base, :class:`IngestorError`: ``ingestor`` (the command) prints any of them as one line
without a traceback. A subclass exists only where a caller does something different with it
(docs/architecture.md, "Errors"): :class:`ConfigError` lists every bad setting (exit status 2),
and the router classifies every failure into one of three kinds (docs/architecture.md,
invariant 5):

* :class:`PermanentError`: retrying cannot help (undecodable payload, invalid event). The
  message goes straight to the dead-letter stream.
* :class:`TransientError`: the world is temporarily unwell (database busy or down, disk full,
  NATS reconnecting). Retried with backoff, never dead-lettered.
* anything else is *unknown*: retried up to the consumer's max deliveries, then dead-lettered.
"""

from __future__ import annotations


class IngestorError(Exception):
    """Base class of the ingestor's own errors."""


class ConfigError(IngestorError):
    """One or more settings are invalid; ``problems`` holds one line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class PermanentError(IngestorError):
    """Retrying will not help: the message goes to the dead-letter stream."""

    category = "permanent"


class InvalidEvent(PermanentError):
    """The payload is not a valid MediaEvent (undecodable, missing fields, bad values)."""

    category = "invalid_event"


class TransientError(IngestorError):
    """Temporarily failing (database down, disk full, NATS reconnecting): retry later."""

    category = "transient"
