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
# # Year in review
#
# **One year, wrapped: of one user, one server, or everyone**: plays and watch time, the top
# shows and movies, the busiest day and hour, the longest binge (episodes of one show one
# after another), the first and the last play of the year, and a month-by-month strip; for
# a server, each user's year too. `-p user NAME` makes one user's page. Genres are reported
# where the sources report them; none of the supported sources puts a genre in its playback
# reports, so this report says so rather than guessing.
#
# A year is counted in `tz`: a play belongs to the year, month, day and hour its start fell
# in as a clock there showed it. Plays follow `workbench.stats` (resumed playbacks grouped,
# playbacks under 120 s left out); the highlights are `workbench.wrapped`'s.

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
server_names = {}  # what to call the servers: {"id or its first characters": "name"}
tz = "UTC"  # the IANA time zone the year is counted in
top = 5  # rows of the title tables
as_of = None  # read the projection as the log had it at this instant (ISO 8601); None: now

# %% tags=["remove-cell"]
from datetime import date

import polars as pl
from IPython.display import display

from ingestor.events import MediaEvent
from workbench import charts, open_data_dir, present, stats, wrapped
from workbench.db import query, scope

charts.use_offline_renderer()

wb = open_data_dir(data_dir, http_url=http_url, nats_url=nats_url)
source = await wb.snapshot() if as_of is None else await wb.as_of(as_of)
seq, recorded = query(source, "SELECT max(seq), max(recorded_at) FROM media_events").row(0)
since, before = stats.local_period(date(int(year), 1, 1), date(int(year), 12, 31), tz)
db = scope(source, since=since, before=before, servers=server, user=user)
plays = stats.plays(db, tz=tz)
figures = wrapped.year(db, tz=tz)
server_rows = db.sql(
    "SELECT server_id, list_sort(list_distinct(flatten(list(sources)))) FROM playback_events "
    "GROUP BY server_id ORDER BY server_id"
).fetchall()
names = [present.server_name(s, src, server_names) for s, src in server_rows]
name_of = dict(zip([s for s, _ in server_rows], names, strict=True))
where = present.join_words(names) if names else f"server {server}" if server else "no server"
who = (plays["username"].drop_nulls().tail(1).to_list() or [user])[0] if user else None
print(f"projection read in {wb.mode} mode")  # in the notebook, not on the page


def when(moment) -> str:
    return f"{moment:%A} {moment.day} {moment:%B}, {moment:%H:%M}"


def what(play: wrapped.Play) -> str:
    return f"{play.show}: {play.title}" if play.show else str(play.title)


# %% tags=["hide-input"]
present.header(
    f"{who}'s {year}, wrapped" if who else f"{year}, wrapped",
    f"{'What ' + who + ' watched' if who else 'What everyone watched'} on {where} "
    f"in {year}, in {tz} time.",
)

# %% tags=["hide-input"]
binge = figures.longest_binge
present.Tiles(
    [
        present.Tile("Plays", present.count(figures.plays), f"{figures.titles:,} titles"),
        present.Tile(
            "Watch time",
            present.duration(figures.watch_time),
            f"{figures.watch_time / 86400:,.1f} days of screen time",
        ),
        present.Tile(
            "Busiest day",
            f"{figures.busiest_day:%a %d %b}" if figures.busiest_day else "none",
            present.duration(figures.busiest_day_watch_time) + " watched"
            if figures.busiest_day
            else "",
        ),
        present.Tile(
            "Favourite hour",
            f"{figures.busiest_hour:02d}:00" if figures.busiest_hour is not None else "none",
            f"{figures.busiest_hour_plays:,} plays started then" if figures.plays else "",
        ),
        present.Tile(
            "Longest binge",
            f"{binge.episodes} episodes" if binge else "none",
            f"{binge.show}, {binge.started_at:%d %b}" + ("" if who else f" ({binge.username})")
            if binge
            else "no two episodes in a row",
        ),
    ]
    + ([] if who else [present.Tile("Users", present.count(figures.users), "accounts with a play")])
)

# %% tags=["hide-input"]
if figures.first_play and figures.last_play:
    firsts = pl.DataFrame(
        [
            {
                "when": label,
                "title": what(play),
                "detail": f"{when(play.started_at)} · {play.platform}"
                + ("" if who else f" · {play.username}"),
            }
            for label, play in (
                ("First play", figures.first_play),
                ("Last play", figures.last_play),
            )
        ]
    )
    display(
        present.table(
            firsts,
            id="first-last",
            title="The first and the last play of the year",
            labels={"when": "", "title": "Title"},
            titles={"title": "detail"},
        )
    )

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
print(f"{year} in review: {f'user {user}' if user else 'everyone'} on {where} (days in {tz})")
if plays.is_empty():
    print(f"No finished play in {year} for {who or 'everyone'} on {where}.")
else:
    print(f"Plays: {figures.plays:,} ({plays['watched'].sum():,} watched to the end)")
    print(f"Watch time: {present.duration(figures.watch_time)}")
    print(f"Titles: {figures.titles:,}, on {plays['platform'].n_unique()} platforms")
    if who is None:
        print(f"Users: {figures.users:,} accounts ({plays['username'].n_unique():,} names)")
    print(
        f"Busiest day: {figures.busiest_day:%a %Y-%m-%d}, "
        f"{present.duration(figures.busiest_day_watch_time)}"
    )
    print(f"Favourite hour: {figures.busiest_hour:02d}:00 ({figures.busiest_hour_plays:,} plays)")
    if binge:
        print(
            f"Longest binge: {binge.episodes} episodes of {binge.show} "
            f"on {binge.started_at:%a %Y-%m-%d} ({binge.username})"
        )
    for label, play in (("First play", figures.first_play), ("Last play", figures.last_play)):
        print(
            f"{label}: {play.started_at:%a %Y-%m-%d %H:%M}, {what(play)} "
            f"({play.username}, {play.platform})"
        )
    genres = [name for name in MediaEvent.__struct_fields__ if "genre" in name]
    print(
        f"Genres: reported in {', '.join(genres)}"
        if genres
        else "Genres: not reported by the sources (playback reports carry no genre)"
    )

# %% [markdown]
# ## Month by month

# %% tags=["hide-input"]
months = wrapped.months(db, year=int(year), tz=tz)
most = max(int(months["watch_time"].max() or 0), 1)
months_strip = present.Html(
    '<div class="wb-months" style="display: flex; gap: 4px; align-items: flex-end; '
    'height: 90px; margin: 8px 0 4px 0; max-width: 640px;">'
    + "".join(
        f'<div title="{m:%B}: {present.duration(w)}" style="flex: 1; text-align: center; '
        'font-size: 12px;"><div style="background: '
        f"{present.ACCENT}; opacity: {0.35 + 0.65 * w / most:.2f}; height: "
        f'{max(2, round(70 * w / most))}px; border-radius: 3px 3px 0 0;"></div>{m:%b}</div>'
        for m, w in months.select("month", "watch_time").rows()
    )
    + "</div>",
    present.plain(months),
)
months_strip

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
print(present.plain(months.select(pl.col("month").dt.strftime("%B"), "plays", "watch_time")))

# %% [markdown]
# ## Top shows and movies

# %% tags=["hide-input"]
def top_of(kind: str, words: str) -> present.Table:
    every = stats.top_titles(db, limit=1_000_000, media_type=kind, metric="watch_time")
    frame = stats.top_titles(db, limit=top, media_type=kind).join(
        every, on=["media_type", "title"], how="left", maintain_order="left"
    )
    return present.table(
        frame.select("title", "plays", "watch_time"),
        id=f"top-{kind}",
        title=words,
        labels={"title": "Title", "plays": "Plays", "watch_time": "Watch time"},
        counts=["plays"],
        durations=["watch_time"],
        heat="plays",
    )


shows, movies = top_of("episode", "Top shows"), top_of("movie", "Top movies")
display(shows, movies)

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
print(shows)
print()
print(movies)

# %% tags=["hide-input"]
charts.by_day_of_week(stats.by_day_of_week(db, tz=tz)) if plays.height else None

# %% tags=["hide-input"]
charts.by_hour_of_day(stats.by_hour_of_day(db, tz=tz)) if plays.height else None

# %% [markdown] tags=["remove-cell"]
# ## Everyone's year
#
# Each account's year on a server's page (left out of one user's page).

# %% tags=["hide-input"]
people = wrapped.users(db, tz=tz) if who is None else pl.DataFrame()
if not people.is_empty():
    display(
        present.table(
            people.select(
                "username",
                pl.col("server_id").replace_strict(name_of, default=None).alias("server"),
                "plays",
                "watch_time",
                "top_title",
                pl.col("busiest_day").dt.strftime("%a %d %b"),
                pl.when(pl.col("binge_episodes") > 0)
                .then(pl.format("{} × {}", "binge_episodes", "binge_show"))
                .otherwise(pl.lit(""))
                .alias("binge"),
            ),
            id="users-wrapped",
            title="Everyone's year",
            subtitle=f"{people.height} accounts",
            labels={
                "username": "User",
                "plays": "Plays",
                "watch_time": "Watch time",
                "top_title": "Most played",
                "busiest_day": "Busiest day",
                "server": "Server",
                "binge": "Longest binge",
            },
            counts=["plays"],
            durations=["watch_time"],
            heat="plays",
            hidden=[] if len(names) > 1 else ["server"],
        )
    )

# %% tags=["remove-cell"]
# NBVAL_CHECK_OUTPUT
if not people.is_empty():
    print(
        present.plain(
            people.select("username", "plays", "watch_time", "top_title", "binge_episodes")
        )
    )

# %% tags=["hide-input"]
present.report_details(
    "year_in_review",
    {"year": year, "user": user, "server": server, "tz": tz, "as_of": as_of},
    seq,
    recorded,
)

# %% tags=["remove-cell"]
db.close()
await wb.close()
