# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Overview
#
# **What was watched, by whom, how and when**, over a period, on one or more servers, in a
# time zone: plays and watch time, the top and the most popular titles, users, platforms,
# stream types (direct play, direct stream, transcode) and the peak of concurrent streams.
#
# Every figure comes from `workbench.stats` over the projection's `playback_events`; the
# module's docstring defines the words (a *play* groups resumed playbacks Tautulli's way and
# leaves out playbacks under 120 s; *watch time* is stop minus start minus paused time).
# The headline figures are printed as plain text, the charts drawn offline as SVG.

# %% tags=["parameters"]
import os

# the ingestor's DATA_DIR (`make demo` writes ../data as seen from notebooks/)
data_dir = os.environ.get("WORKBENCH_DATA_DIR", "../data")
# a running ingestor's HTTP port and NATS (Binder sets both): the projection is read live
http_url = os.environ.get("WORKBENCH_HTTP_URL") or None
nats_url = os.environ.get("WORKBENCH_NATS_URL") or None
start = None  # first local day of the period, "YYYY-MM-DD" (None: from the first play)
end = None  # last local day, included (None: up to the last play)
servers = None  # server ids (or their first characters) to keep; None: every server
tz = "UTC"  # the IANA time zone days and hours are counted in
top = 10  # rows of the title and user tables

# %% tags=["hide-input"]
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl

from workbench import charts, open_data_dir, stats
from workbench.db import scope, show

charts.use_offline_renderer()
zone = ZoneInfo(tz)


def hours(column: str) -> pl.Expr:
    """Seconds as hours with one decimal."""
    return (pl.col(column) / 3600).round(1)


def local_day(text: str | None, days: int = 0) -> datetime | None:
    """Midnight of a local day in ``tz`` (plus ``days``), as an instant in UTC (the zone of
    the projection's times, which polars compares with)."""
    if text is None:
        return None
    midnight = datetime.combine(date.fromisoformat(str(text)) + timedelta(days=days), time(), zone)
    return midnight.astimezone(UTC)


wb = open_data_dir(data_dir, http_url=http_url, nats_url=nats_url)
snapshot = await wb.snapshot()
db = scope(snapshot, since=local_day(start), before=local_day(end, days=1), servers=servers)
print(f"projection read in {wb.mode} mode")

# %% [markdown]
# ## Headline figures

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
playbacks = db.sql("SELECT count(*) FROM playback_events").fetchall()[0][0]
plays = stats.plays(db, tz=tz)
server_rows = db.sql(
    """
    SELECT server_id,
           list_sort(list_distinct(flatten(list(sources)))) AS sources,
           count(*) AS playbacks
    FROM playback_events GROUP BY server_id ORDER BY server_id
    """
).pl()
if plays.is_empty():
    print("No finished play in this period and on these servers.")
else:
    first_day = plays["started_at"].min().date()
    last_day = plays["started_at"].max().date()
    span = (last_day - first_day).days + 1
    print(f"Period: {first_day:%a %Y-%m-%d} to {last_day:%a %Y-%m-%d} ({tz}), {span} days")
    print(f"Servers: {server_rows.height}")
    for server_id, sources, count in server_rows.rows():
        print(f"  {server_id[:12]}  {', '.join(sources):<16} {count:>6,} playbacks")
    users = stats.by_user(db)
    peak = stats.max_concurrent_streams(db, tz=tz).row(0, named=True)
    print(f"Plays: {plays.height:,} (from {playbacks:,} playbacks)")
    print(f"Watch time: {plays['watch_time'].sum() / 3600:,.1f} hours")
    names = users["username"].n_unique()
    print(f"Users: {users.height:,} accounts with a play ({names:,} distinct names)")
    titles = stats.top_titles(db, limit=3)["title"].to_list()
    print(f"Top 3 titles: {'; '.join(titles)}")
    print(f"Max concurrent streams: {peak['streams']} at {peak['at']:%a %Y-%m-%d %H:%M %Z}")

# %% tags=["hide-input"]
charts.by_day(stats.by_day(db, metric="watch_time", tz=tz), tz=tz)

# %% tags=["hide-input"]
charts.by_hour_of_day(stats.by_hour_of_day(db, tz=tz), tz=tz)

# %% [markdown]
# ## Titles
#
# *Top* titles are the most played; *popular* ones were watched by the most distinct
# users. Episodes count for their show.

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
print("Top titles (plays):")
show(stats.top_titles(db, limit=top))
print()
print("Popular titles (distinct users):")
show(stats.popular_titles(db, limit=top))

# %% tags=["hide-input"]
charts.top_titles(stats.top_titles(db, limit=top, metric="watch_time"))

# %% [markdown]
# ## Users

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
by_user = (
    stats.by_user(db, metric="watch_time")
    .join(stats.by_user(db), on=["server_id", "user_id", "username"])
    .select(
        pl.col("username"),
        pl.col("server_id").str.slice(0, 12).alias("server"),
        pl.col("plays"),
        hours("watch_time").alias("hours"),
        pl.col("watch_time"),
    )
    .sort(["watch_time", "username", "server"], descending=[True, False, False])
    .drop("watch_time")
)
print(f"Most watched users (top {top} of {by_user.height}):")
show(by_user.head(top))

# %% tags=["hide-input"]
charts.by_user(stats.by_user(db, metric="watch_time").head(top))

# %% [markdown]
# ## Platforms and stream types

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
for name, frame in (
    ("Platforms", stats.by_platform(db)),
    ("Stream types", stats.by_stream_type(db)),
):
    total = frame["plays"].sum()
    print(f"{name}:")
    show(frame.with_columns((pl.col("plays") * 100 / total).round(1).alias("share %")))
    print()

# %% tags=["hide-input"]
charts.by_platform(stats.by_platform(db))

# %% tags=["hide-input"]
charts.by_stream_type(stats.by_stream_type(db, metric="watch_time"))

# %% [markdown]
# ## Concurrent streams
#
# Every playback counts from its start to its stop, short ones included; a stop and a start
# at the same instant are not concurrent.

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
streams = stats.concurrent_streams(db, tz=tz)
busiest = (
    streams.group_by(pl.col("at").dt.date().alias("day"))
    .agg(pl.col("streams").max().alias("max streams"))
    .filter(pl.col("max streams") > 0)
    .sort("day")
)
print("Most concurrent streams per day:")
show(busiest)

# %% tags=["hide-input"]
# (the title repeated on the layered chart names it in plain-text output too)
charts.concurrent_streams(streams, tz=tz).properties(title="Concurrent streams")

# %% tags=["hide-input"]
db.close()
await wb.close()
