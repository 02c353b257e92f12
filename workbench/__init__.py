"""The workbench: the event log in a notebook.

Open one ingestor's log and projection, replay it to any instant on either clock, ask
temporal questions, review the dedup audit and compute the statistics a Tautulli user
expects::

    from workbench import connect, open_data_dir, by_day, active_at

    wb = await connect("nats://127.0.0.1:4222", archive_dir="data/archive")
    wb = open_data_dir("data")                     # offline
    events = await wb.events()                     # the log itself, duplicates included
    snap = await wb.snapshot()                     # the projection now
    by_day(snap, metric="watch_time", tz="Europe/Berlin")
    friday = await wb.replay("2026-11-20T21:00:00+01:00", clock="recorded")
    active_at(friday, "2026-11-20T21:00:00+01:00")
    await wb.audit(tier="correlation", status="auto_dedupe")
    await wb.confirm(audit_id, by="ana")

Every name below has runnable examples in its module's docstrings.
"""

from workbench.api import Workbench, connect, open_data_dir, open_data_dirs
from workbench.audit import confirm, entries, restore, side_by_side, summary
from workbench.errors import AuditError, WorkbenchError
from workbench.log import EventLog, LogGapError
from workbench.replay import Replay, replay, simulated_log
from workbench.stats import (
    bandwidth,
    by_category,
    by_day,
    by_day_of_week,
    by_hour_of_day,
    by_media_type,
    by_month,
    by_person,
    by_platform,
    by_player,
    by_resolution,
    by_server,
    by_stream_type,
    by_user,
    completion,
    concurrent_streams,
    max_concurrent_bandwidth,
    max_concurrent_streams,
    plays,
    popular_titles,
    top_titles,
    who_watched,
)
from workbench.temporal import active_at, changes_between, playback_history, user_timeline

__all__ = [
    "AuditError",
    "EventLog",
    "LogGapError",
    "Replay",
    "Workbench",
    "WorkbenchError",
    "active_at",
    "bandwidth",
    "by_category",
    "by_day",
    "by_day_of_week",
    "by_hour_of_day",
    "by_media_type",
    "by_month",
    "by_person",
    "by_platform",
    "by_player",
    "by_resolution",
    "by_server",
    "by_stream_type",
    "by_user",
    "changes_between",
    "completion",
    "concurrent_streams",
    "confirm",
    "connect",
    "entries",
    "max_concurrent_bandwidth",
    "max_concurrent_streams",
    "open_data_dir",
    "open_data_dirs",
    "playback_history",
    "plays",
    "popular_titles",
    "replay",
    "restore",
    "side_by_side",
    "simulated_log",
    "summary",
    "top_titles",
    "user_timeline",
    "who_watched",
]
