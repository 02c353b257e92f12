"""The dead-letter stream ``MEDIA_EVENTS_DLQ``: write, list, retry, purge.

A dead letter keeps the original bytes as its payload and says in headers what failed: the
error, its category, the original subject, stream sequence and delivery count. Its subject
(``dlq.media_events.<category>``) is outside every consumer's filter of ``MEDIA_EVENTS``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ingestor.events import subject_token
from ingestor.nats.publisher import MSG_ID
from ingestor.nats.streams import DLQ_STREAM, DLQ_SUBJECT_PREFIX, STREAM

log = logging.getLogger(__name__)

H_ERROR = "Dlq-Error"
H_CATEGORY = "Dlq-Category"
H_SUBJECT = "Dlq-Original-Subject"
H_SEQUENCE = "Dlq-Original-Sequence"
H_DELIVERIES = "Dlq-Delivery-Count"
H_TIME = "Dlq-Time"


@dataclass(frozen=True)
class DeadLetter:
    dlq_seq: int
    error: str
    category: str
    subject: str
    sequence: int
    deliveries: int
    dead_at: str
    data: bytes

    def as_dict(self) -> dict[str, object]:
        return {
            "dlq_seq": self.dlq_seq,
            "error": self.error,
            "category": self.category,
            "original_subject": self.subject,
            "original_sequence": self.sequence,
            "delivery_count": self.deliveries,
            "dead_at": self.dead_at,
            "payload": self.data.decode("utf-8", "replace"),
        }


class DeadLetters:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def put(
        self, *, data: bytes, error: str, category: str, subject: str, seq: int, deliveries: int
    ) -> None:
        """Store one dead letter durably (waits for JetStream's ack)."""
        headers = {
            MSG_ID: f"dlq:{STREAM}:{seq}",
            H_ERROR: error.replace("\r", " ").replace("\n", " ")[:2000],
            H_CATEGORY: category,
            H_SUBJECT: subject,
            H_SEQUENCE: str(seq),
            H_DELIVERIES: str(deliveries),
            H_TIME: datetime.now(UTC).isoformat(),
        }
        await self.js.publish(
            f"{DLQ_SUBJECT_PREFIX}.{subject_token(category)}",
            data,
            headers=headers,
            stream=DLQ_STREAM,
        )
        log.warning("dead-lettered seq %s (%s): %s", seq, category, error)

    async def count(self) -> int:
        info = await self.js.stream_info(DLQ_STREAM)
        return info.state.messages

    async def entries(self) -> AsyncIterator[DeadLetter]:
        info = await self.js.stream_info(DLQ_STREAM)
        if info.state.messages == 0:
            return
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await self.js.get_msg(DLQ_STREAM, seq)
            except NotFoundError:
                continue
            headers = msg.headers or {}
            yield DeadLetter(
                dlq_seq=seq,
                error=headers.get(H_ERROR, ""),
                category=headers.get(H_CATEGORY, "unknown"),
                subject=headers.get(H_SUBJECT, ""),
                sequence=int(headers.get(H_SEQUENCE, "0") or 0),
                deliveries=int(headers.get(H_DELIVERIES, "0") or 0),
                dead_at=headers.get(H_TIME, ""),
                data=msg.data or b"",
            )

    async def retry(self, dlq_seq: int | None = None) -> int:
        """Publish dead letters back to their original subject, then remove them."""
        retried = 0
        async for letter in self.entries():
            if dlq_seq is not None and letter.dlq_seq != dlq_seq:
                continue
            headers = {MSG_ID: f"retry:{letter.sequence}:{letter.dlq_seq}"}
            await self.js.publish(letter.subject, letter.data, headers=headers, stream=STREAM)
            await self.js.delete_msg(DLQ_STREAM, letter.dlq_seq)
            retried += 1
        return retried

    async def purge(self, dlq_seq: int | None = None) -> int:
        if dlq_seq is not None:
            await self.js.delete_msg(DLQ_STREAM, dlq_seq)
            return 1
        before = await self.count()
        await self.js.purge_stream(DLQ_STREAM)
        return before
