"""Small builders of MediaEvents for tests: a Plex-webhook-style lifecycle and a
Tautulli-style summary of the same playback, with deterministic ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ingestor.events import EventType, MediaEvent, encode_event, make_event_id
from ingestor.pipeline import Message

T0 = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
SERVER = "5d4f5c0a1e2b3c4d5e6f708192a3b4c5d6e7f809"


def event(
    source: str,
    event_type: str,
    at: datetime,
    session_key: str,
    *,
    started_at: datetime | None = None,
    user_id: str = "8312457",
    rating_key: str = "54321",
    machine_id: str = "roku-livingroom",
    server_id: str = SERVER,
    media_duration: int | None = 170 * 60,
    **fields: Any,
) -> MediaEvent:
    return MediaEvent(
        event_id=make_event_id(source, server_id, event_type, session_key, at.isoformat()),
        event_type=EventType(event_type),
        occurred_at=at,
        source=source,
        server_id=server_id,
        session_key=session_key,
        user_id=user_id,
        username="alice",
        media_type="movie",
        title="Heat",
        rating_key=rating_key,
        machine_id=machine_id,
        started_at=started_at,
        media_duration=media_duration,
        **fields,
    )


def plex_playback(
    start: datetime = T0,
    *,
    pause_at: int = 600,
    resume_at: int = 900,
    stop_at: int = 7200,
    **kw: Any,
) -> list[MediaEvent]:
    """play, pause, resume, scrobble, stop of one playback, as Plex webhooks report it."""
    device, item = kw.get("machine_id", "roku-livingroom"), kw.get("rating_key", "54321")
    session = f"{device}/{item}/{start.timestamp()}"

    def at(seconds: int) -> datetime:
        return start + timedelta(seconds=seconds)

    return [
        event("plex", "play", at(0), session, started_at=start, position_ms=0, **kw),
        event(
            "plex",
            "pause",
            at(pause_at),
            session,
            started_at=start,
            position_ms=pause_at * 1000,
            **kw,
        ),
        event(
            "plex",
            "resume",
            at(resume_at),
            session,
            started_at=start,
            position_ms=pause_at * 1000,
            **kw,
        ),
        event("plex", "scrobble", at(stop_at - 5), session, started_at=start, **kw),
        event(
            "plex",
            "stop",
            at(stop_at),
            session,
            started_at=start,
            stopped_at=at(stop_at),
            position_ms=(stop_at - (resume_at - pause_at)) * 1000,
            **kw,
        ),
    ]


def tautulli_summary(
    start: datetime = T0,
    *,
    late: int = 5,
    row_id: int = 5120,
    paused: int = 300,
    stop_at: int = 7200,
    **kw: Any,
) -> MediaEvent:
    """The Tautulli history row of the same playback: ``started`` a few seconds late."""
    started = start + timedelta(seconds=late)
    stopped = start + timedelta(seconds=stop_at)
    return event(
        "tautulli",
        "summary",
        stopped + timedelta(minutes=3),
        str(row_id),
        started_at=started,
        stopped_at=stopped,
        paused_counter=paused,
        play_duration=int((stopped - started).total_seconds()) - paused,
        percent_complete=97,
        transcode_decision="transcode",
        video_resolution="1080",
        ip_address="192.168.1.20",
        **kw,
    )


def messages(events: list[MediaEvent], first_seq: int = 1) -> list[Message]:
    now = datetime.now(UTC)
    return [Message(first_seq + i, now, encode_event(e)) for i, e in enumerate(events)]
