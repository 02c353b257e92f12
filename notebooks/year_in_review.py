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
# # Year in review
#
# **One year of one user, one server, or everyone**: plays and watch time, the top titles,
# the busiest week, the first and the last play of the year, month by month, and which
# days and hours were the favourites. Genres are reported where the sources report them;
# none of the supported sources puts a genre in its playback reports, so this report says
# so rather than guessing.
#
# A year is counted in `tz`: a play belongs to the year, month, week and day its start
# fell in as a clock there showed it. Plays follow `workbench.stats` (resumed playbacks
# grouped, playbacks under 120 s left out).

# %% tags=["parameters"]
import os

# the ingestor's DATA_DIR (`make demo` writes ../data as seen from notebooks/)
data_dir = os.environ.get("WORKBENCH_DATA_DIR", "../data")
# a running ingestor's HTTP port and NATS (Binder sets both): the projection is read live
http_url = os.environ.get("WORKBENCH_HTTP_URL") or None
nats_url = os.environ.get("WORKBENCH_NATS_URL") or None
year = 2026  # the calendar year (in tz)
user = None  # a username or user id; None: every user
server = None  # a server id (or its first characters); None: every server
tz = "UTC"  # the IANA time zone the year is counted in
top = 5  # rows of the title tables

# %% tags=["hide-input"]
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl

from ingestor.events import MediaEvent
from workbench import charts, open_data_dir, stats
from workbench.db import scope, show, title_of

charts.use_offline_renderer()
zone = ZoneInfo(tz)

wb = open_data_dir(data_dir, http_url=http_url, nats_url=nats_url)
first = datetime.combine(date(int(year), 1, 1), time(), zone).astimezone(UTC)
after = datetime.combine(date(int(year) + 1, 1, 1), time(), zone).astimezone(UTC)
db = scope(await wb.snapshot(), since=first, before=after, servers=server, user=user)
plays = stats.plays(db, tz=tz)
who = f"user {user}" if user is not None else "everyone"
where = f"server {server}" if server is not None else "every server"
print(f"projection read in {wb.mode} mode")

# %% [markdown]
# ## The year in figures

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
print(f"{year} in review: {who} on {where} (days in {tz})")
if plays.is_empty():
    print(f"No finished play in {year} for {who} on {where}.")
else:
    first_play = plays.row(0, named=True)
    last_play = plays.sort("started_at", "play_key").row(-1, named=True)
    watch_hours = plays["watch_time"].sum() / 3600
    watched = plays["watched"].sum()
    print(f"Plays: {plays.height:,} ({watched:,} watched to the end)")
    print(f"Watch time: {watch_hours:,.1f} hours")
    print(f"Titles: {plays['title_key'].n_unique():,}, on {plays['platform'].n_unique()} platforms")
    if user is None:
        accounts = plays.select("server_id", "user_id").n_unique()
        print(f"Users: {accounts:,} accounts ({plays['username'].n_unique():,} distinct names)")
    for label, row in (("First play", first_play), ("Last play", last_play)):
        print(
            f"{label}: {row['started_at']:%a %Y-%m-%d %H:%M}, {title_of(row)} "
            f"({row['username']}, {row['platform']})"
        )
    weekly = (
        stats.by_day(db, tz=tz)
        .join(stats.by_day(db, metric="watch_time", tz=tz), on="day")
        .group_by(pl.col("day").dt.truncate("1w").alias("week"))
        .agg(pl.col("plays").sum(), pl.col("watch_time").sum())
        .sort(["plays", "watch_time", "week"], descending=[True, True, False])
    )
    week = weekly.row(0, named=True)
    print(
        f"Busiest week: {week['week']:%Y-%m-%d} to {week['week'] + timedelta(days=6):%Y-%m-%d} "
        f"(week {week['week']:%V}): {week['plays']:,} plays, "
        f"{week['watch_time'] / 3600:,.1f} hours"
    )
    genres = [name for name in MediaEvent.__struct_fields__ if "genre" in name]
    if genres:
        print(f"Genres: reported in {', '.join(genres)}")
    else:
        print("Genres: not reported by the sources (playback reports carry no genre)")

# %% [markdown]
# ## Top titles

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
if not plays.is_empty():
    for kind, label in (("episode", "Shows"), ("movie", "Movies")):
        every = stats.top_titles(db, limit=1_000_000, media_type=kind, metric="watch_time")
        frame = stats.top_titles(db, limit=top, media_type=kind).join(
            every,
            on=["media_type", "title"],
            how="left",
            maintain_order="left",
        )
        print(f"{label} (most played):")
        show(frame.select("title", "plays", (pl.col("watch_time") / 3600).round(1).alias("hours")))
        print()

# %% tags=["hide-input"]
charts.top_titles(stats.top_titles(db, limit=top, metric="watch_time")) if plays.height else None

# %% [markdown]
# ## Month by month, and the favourite days and hours

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
if not plays.is_empty():
    months = stats.by_month(db, tz=tz).join(
        stats.by_month(db, metric="watch_time", tz=tz), on="month"
    )
    show(
        months.select(
            pl.col("month").dt.strftime("%B"),
            "plays",
            (pl.col("watch_time") / 3600).round(1).alias("hours"),
        )
    )
    weekday = stats.by_day_of_week(db, tz=tz).sort(["plays", "weekday"], descending=[True, False])
    hour = stats.by_hour_of_day(db, tz=tz).sort(["plays", "hour"], descending=[True, False])
    print()
    print(f"Favourite day: {weekday['day_name'][0]} ({weekday['plays'][0]:,} plays)")
    print(f"Favourite hour: {hour['hour'][0]:02d}:00 ({hour['plays'][0]:,} plays started)")

# %% tags=["hide-input"]
charts.by_day(stats.by_day(db, metric="watch_time", tz=tz), tz=tz) if plays.height else None

# %% tags=["hide-input"]
charts.by_day_of_week(stats.by_day_of_week(db, tz=tz), tz=tz) if plays.height else None

# %% tags=["hide-input"]
db.close()
await wb.close()
