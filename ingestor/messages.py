"""Message and Rejected: one stream message as the write path receives it, and one it refuses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class Message:
    """One stream message: its sequence, when the log recorded it, and its bytes."""

    seq: int
    recorded_at: datetime
    data: bytes
    subject: str = ""
    num_delivered: int = 1
    pending: int = 0  # messages the consumer had left after this one when it was delivered


@dataclass(slots=True)
class Rejected:
    """A message that can never be projected, with why."""

    message: Message
    error: str
    category: str


__all__ = ["Message", "Rejected"]
