# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] tags=["remove-cell"]
# # Overview
#
# **What was watched, by whom, how and when**, over a period, on one or more servers, in a
# time zone: headline tiles (plays, watch time, users, peak concurrent streams, each against
# the period of the same length before), the top titles, libraries, one title's plays, users,
# platforms, stream types (direct play, direct stream, transcode), concurrent streams and
# bandwidth.
#
# Every figure comes from `workbench.stats` over the projection's `playback_events`; the
# module's docstring defines the words (a *play* groups resumed playbacks Tautulli's way and
# leaves out playbacks under 120 s; *watch time* is stop minus start minus paused time).
# The page shows styled tables (`workbench.present`); the cells marked for nbval print the
# same figures as plain text, and are left out of the page.

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
server_names = {}  # what to call the servers: {"id or its first characters": "name"}
tz = "UTC"  # the IANA time zone days and hours are counted in
top = 10  # rows of the title and user tables
as_of = None  # read the projection as the log had it at this instant (ISO 8601); None: now
title = None  # the title whose plays are listed (a movie or a show); None: the most played

# %% tags=["remove-cell"]
from datetime import date

import polars as pl
from IPython.display import display

from workbench import charts, open_data_dir, present, stats
from workbench.db import query, scope

charts.use_offline_renderer()

wb = open_data_dir(data_dir, http_url=http_url, nats_url=nats_url)
source = await wb.snapshot() if as_of is None else await wb.as_of(as_of)
seq, recorded = query(source, "SELECT max(seq), max(recorded_at) FROM media_events").row(0)
# every day on these servers: the period before is compared too (no copy for all servers)
on_servers = source if servers is None else scope(source, servers=servers)
local_days = on_servers.sql(
    "SELECT CAST(min(timezone($tz, started_at)) AS DATE), "
    "CAST(max(timezone($tz, started_at)) AS DATE) FROM playback_events",
    params={"tz": tz},
).fetchall()[0]
first_day = date.fromisoformat(str(start)) if start is not None else local_days[0]
last_day = date.fromisoformat(str(end)) if end is not None else local_days[1]
empty = first_day is None or last_day is None or last_day < first_day
if empty:
    first_day = last_day = first_day or last_day or date.today()
days = (last_day - first_day).days + 1
since, before = stats.local_period(first_day, last_day, tz)
db = scope(on_servers, since=since, before=before)
comparison = stats.compare_periods(on_servers, start=first_day, end=last_day, tz=tz)
current = dict(comparison.select("measure", "current").iter_rows())
played = current["plays"]  # plays in the period (the tiles' figure)
server_rows = db.sql(
    """
    SELECT server_id, list_sort(list_distinct(flatten(list(sources)))) AS sources,
           count(*) AS playbacks
    FROM playback_events GROUP BY server_id ORDER BY server_id
    """
).pl()
names = [present.server_name(s, src, server_names) for s, src, _ in server_rows.rows()]
where = present.join_words(names) if names else "no server"
print(f"projection read in {wb.mode} mode")  # in the notebook, not on the page

# %% tags=["hide-input"]
present.header(
    "What was watched",
    f"{present.period_words(first_day, last_day)} on {where}, in {tz} time.",
)

# %% tags=["hide-input"]
present.period_tiles(comparison, days=days)

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
print(f"Period: {first_day:%a %Y-%m-%d} to {last_day:%a %Y-%m-%d} ({tz}), {days} days")
print(f"Servers: {where}")
print(present.period_tiles(comparison, days=days))
if played:
    peak = stats.max_concurrent_streams(db, tz=tz).row(0, named=True)
    print(f"Peak at: {peak['at']:%a %Y-%m-%d %H:%M %Z}")
    print(f"Top 3 titles: {'; '.join(stats.top_titles(db, limit=3)['title'].to_list())}")

# %% tags=["hide-input"]
charts.by_day(stats.by_day(db, metric="watch_time", tz=tz)) if played else None

# %% tags=["hide-input"]
charts.by_hour_of_day(stats.by_hour_of_day(db, tz=tz)) if played else None

# %% [markdown]
# ## Titles
#
# The most played titles; episodes count for their show. *Users* is how many people
# watched it.

# %% tags=["hide-input"]
everything = 1_000_000
every_title = stats.popular_titles(db, limit=everything)
titles = (
    every_title.join(
        stats.popular_titles(db, limit=everything, metric="watch_time").drop("users"),
        on=["media_type", "title"],
    )
    .sort(["plays", "watch_time", "title"], descending=[True, True, False])
    .head(top)
    .with_columns(
        pl.col("media_type").map_elements(present.media_words, return_dtype=pl.String),
        (pl.col("plays") / max(played, 1)).alias("share"),
    )
    .select("title", "media_type", "plays", "share", "watch_time", "users")
)
titles_table = present.table(
    titles,
    id="top-titles",
    title=f"Top {top} titles",
    subtitle=f"of {every_title.height:,} played",
    labels={
        "title": "Title",
        "plays": "Plays",
        "share": "Share of plays",
        "watch_time": "Watch time",
        "users": "Users",
    },
    counts=["plays", "users"],
    durations=["watch_time"],
    shares=["share"],
    titles={"title": "media_type"},
)
titles_table

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
print(titles_table)

# %% tags=["hide-input"]
charts.top_titles(stats.top_titles(db, limit=top, metric="watch_time")) if played else None

# %% [markdown]
# ## Libraries
#
# Plays by the library their item is in. *unknown*: the source did not say (Jellyfin and
# Emby sessions and Tautulli's history API name no library, nor do events recorded before
# libraries were recorded); *library N*: the source gave only the section id.

# %% tags=["hide-input"]
libraries = (
    stats.by_library(db)
    .join(stats.by_library(db, metric="watch_time"), on="library")
    .with_columns((pl.col("plays") / max(played, 1)).alias("share"))
    .sort(["plays", "library"], descending=[True, False])
    .select("library", "plays", "share", "watch_time")
)
libraries_table = present.table(
    libraries,
    id="libraries",
    title="Libraries",
    labels={
        "library": "Library",
        "plays": "Plays",
        "share": "Share of plays",
        "watch_time": "Watch time",
    },
    counts=["plays"],
    durations=["watch_time"],
    shares=["share"],
)
libraries_table

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
print(libraries_table)

# %% [markdown]
# ## A title
#
# Every play of one title (the `title` parameter; the most played one when it is not set):
# who watched it, when, how far and on what. Run `workbench report overview -p title NAME`
# for another title.

# %% tags=["hide-input"]
shown_title = title if title is not None else (titles["title"][0] if titles.height else None)
page = (
    stats.title_history(db, shown_title, tz=tz)
    if shown_title is not None
    else pl.DataFrame(schema={c: pl.String for c in stats.TITLE_HISTORY_COLUMNS})
)
page_rows = page.head(top).select(
    pl.col("started_at").dt.strftime("%a %Y-%m-%d %H:%M").alias("when"),
    "username",
    "title",
    (pl.col("percent_complete") / 100).alias("reached"),
    "watch_time",
    "platform",
    "player",
    "library",
)
title_table = present.table(
    page_rows,
    id="title-page",
    title=str(shown_title or "No title"),
    subtitle=f"latest {page_rows.height} of {page.height} plays, in {tz} time",
    labels={
        "when": "Started",
        "username": "User",
        "title": "Item",
        "reached": "Reached",
        "watch_time": "Watch time",
        "platform": "Platform",
        "player": "Player",
        "library": "Library",
    },
    durations=["watch_time"],
    shares=["reached"],
)
title_table

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
print(title_table)

# %% [markdown]
# ## Users

# %% tags=["hide-input"]
by_user = (
    stats.by_user(db, metric="watch_time")
    .join(stats.by_user(db), on=["server_id", "user_id", "username"])
    .join(
        server_rows.select("server_id", pl.Series("server", names, dtype=pl.String)),
        on="server_id",
        how="left",
    )
    .sort(["watch_time", "username", "server_id"], descending=[True, False, False])
    .with_columns((pl.col("watch_time") / max(current["watch_time"], 1)).alias("share"))
    .select("username", "server", "plays", "watch_time", "share")
)
users_table = present.table(
    by_user.head(top),
    id="users",
    title="Who watched most",
    subtitle=f"top {min(top, by_user.height)} of {by_user.height} accounts",
    labels={
        "username": "User",
        "server": "Server",
        "plays": "Plays",
        "watch_time": "Watch time",
        "share": "Share of watch time",
    },
    counts=["plays"],
    durations=["watch_time"],
    shares=["share"],
    hidden=[] if server_rows.height > 1 else ["server"],
)
users_table

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
print(users_table)

# %% [markdown]
# ## Platforms and stream types
#
# *Direct play* sends the file as it is; *direct stream* repackages it; a *transcode*
# re-encodes it on the server, which costs the server's CPU.

# %% tags=["hide-input"]
def split(frame: pl.DataFrame, column: str, words: str, table_id: str, title: str) -> present.Table:
    """A category's plays and watch time with its share of the plays."""
    joined = (
        frame.join(stats_of[column](db, metric="watch_time"), on=column)
        .with_columns((pl.col("plays") / max(played, 1)).alias("share"))
        .sort(["plays", column], descending=[True, False])
    )
    return present.table(
        joined.select(column, "plays", "share", "watch_time"),
        id=table_id,
        title=title,
        labels={column: words, "plays": "Plays", "share": "Share", "watch_time": "Watch time"},
        counts=["plays"],
        durations=["watch_time"],
        shares=["share"],
    )


stats_of = {"platform": stats.by_platform, "stream_type": stats.by_stream_type}
platforms_table = split(stats.by_platform(db), "platform", "Platform", "platforms", "Platforms")
streams_table = split(
    stats.by_stream_type(db), "stream_type", "Stream type", "stream-types", "Stream types"
)
display(platforms_table, streams_table)

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
print(platforms_table)
print()
print(streams_table)

# %% tags=["hide-input"]
charts.by_stream_type(stats.by_stream_type(db, metric="watch_time")) if played else None

# %% [markdown]
# ## Concurrent streams
#
# Every playback counts from its start to its stop, short ones included; a stop and a start
# at the same instant are not concurrent.

# %% tags=["hide-input"]
streams = stats.concurrent_streams(db, tz=tz)
busiest = (
    streams.group_by(pl.col("at").dt.date().alias("day"))
    .agg(pl.col("streams").max().alias("max streams"))
    .filter(pl.col("max streams") > 0)
    .sort("day")
)

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
print("Most concurrent streams per day:")
print(present.plain(busiest))

# %% tags=["hide-input"]
# (the title repeated on the layered chart names it in plain-text output too)
chart = charts.concurrent_streams(streams, name_zone=False).properties(title="Concurrent streams")
chart if streams.height else None

# %% [markdown]
# ## Bandwidth
#
# What the streams sent: each stream's bitrate (the bandwidth the server reserved for it,
# else the stream's own bitrate) for as long as it ran. The chart shows the average per
# hour (per day over more than two weeks); the dashed line is the most used at any moment.

# %% tags=["hide-input"]
bandwidth_by = "hour" if days <= 14 else "day"
per_bucket = stats.bandwidth(db, by=bandwidth_by, tz=tz)
per_day = stats.bandwidth(db, by="day", tz=tz)
peak_bandwidth = stats.max_concurrent_bandwidth(db, tz=tz)
sent = per_day["gigabytes"].sum()
bandwidth_table = present.table(
    per_day.select(
        pl.col("day").dt.strftime("%a %Y-%m-%d"),
        pl.col("gigabytes").round(1),
        (pl.col("kbps") / 1000).round(1).alias("mbps"),
    ),
    id="bandwidth",
    title="Data sent per day",
    subtitle=f"{sent:,.1f} GB in all",
    labels={"day": "Day", "gigabytes": "Data (GB)", "mbps": "Average (Mbps)"},
    heat="gigabytes",
)
bandwidth_table

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
peak_kbps, peak_at, peak_streams = peak_bandwidth.row(0)
print(f"Data sent: {sent:,.1f} GB")
if peak_kbps:
    print(
        f"Peak bandwidth: {peak_kbps / 1000:,.1f} Mbps at {peak_at:%a %Y-%m-%d %H:%M %Z}, "
        f"{peak_streams} streams"
    )
print(bandwidth_table)

# %% tags=["hide-input"]
# (the title repeated on the layered chart names it in plain-text output too)
chart = charts.bandwidth(per_bucket, peak=peak_bandwidth, name_zone=False).properties(
    title=f"Bandwidth per {bandwidth_by}"
)
chart if per_bucket.height else None

# %% tags=["hide-input"]
present.report_details(
    "overview",
    {
        "start": start,
        "end": end,
        "servers": servers,
        "tz": tz,
        "top": top,
        "as_of": as_of,
        "title": title,
    },
    seq,
    recorded,
)

# %% tags=["remove-cell"]
db.close()
if on_servers is not source:
    on_servers.close()
await wb.close()
