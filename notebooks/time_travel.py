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

# %% [markdown]
# # Time travel
#
# **What was going on at one instant, and what happened after it.** The projection as of
# `instant` is read from the projection itself (`wb.as_of`: the rows the log had by then,
# the playbacks the instant cuts through folded again; no replay), and answers who was
# watching then, playing or paused; the projection of today then tells what changed since.
# With a live kernel, a slider moves to any moment around the instant in well under a
# second.
#
# Two clocks (ARCHITECTURE, invariant 6): `occurred` shows the events that had *happened*
# by the instant, whenever they arrived, under today's dedup decisions (valid time, as known
# now); `recorded` what the log had *recorded* by then, the state the live projection passed
# through. `ingestor demo` records a whole simulated week in a few seconds, so on its data
# only the `occurred` clock shows that week.

# %% tags=["parameters"]
import os

# the ingestor's DATA_DIR (`make demo` writes ../data as seen from notebooks/)
data_dir = os.environ.get("WORKBENCH_DATA_DIR", "../data")
# a running ingestor's HTTP port and NATS (Binder sets both): the log's tail and the
# projection are read live
http_url = os.environ.get("WORKBENCH_HTTP_URL") or None
nats_url = os.environ.get("WORKBENCH_NATS_URL") or None
instant = "2026-01-09T21:00:00+00:00"  # where to travel: ISO 8601 with a zone
clock = "occurred"  # "occurred" (what had happened by then) or "recorded" (what was logged)
tz = "UTC"  # the IANA time zone times are shown in
slider_hours = 3  # the slider spans this many hours either side of the instant
step_minutes = 15  # between two slider positions

# %% tags=["hide-input"]
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import polars as pl
from IPython.display import display

from workbench import active_at, changes_between, charts, open_data_dir, stats
from workbench.db import show, title_of
from workbench.replay import aware_utc
from workbench.widgets import TimeSlider

charts.use_offline_renderer()
zone = ZoneInfo(tz)
at = aware_utc(instant, "instant")


def when(value: datetime | None) -> str:
    """An instant as a clock in ``tz``, to the minute (or a dash for none)."""
    return "-" if value is None else f"{value.astimezone(zone):%a %Y-%m-%d %H:%M}"


wb = open_data_dir(data_dir, http_url=http_url, nats_url=nats_url)
then = await wb.as_of(at, clock=clock)
print(f"projection as of {when(at)} {tz} ({clock} clock), read in {wb.mode} mode")

# %% [markdown]
# ## Who was watching at the instant

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
counts = then.counts()
active = active_at(then, at)
playing = active.filter(pl.col("state_at") == "playing").height
print(f"As of {when(at)} {tz} ({clock} clock):")
print(f"  playbacks known: {counts['playbacks']:,} from {counts['accepted']:,} accepted events")
print(f"Active playbacks: {active.height} ({playing} playing, {active.height - playing} paused)")
if active.height:
    show(
        pl.DataFrame(
            [
                {
                    "since": when(row["started_at"])[-5:],
                    "user": row["username"],
                    "title": title_of(row),
                    "state": row["state_at"],
                    "platform": row["platform"],
                    "sources": "+".join(row["sources"] or []),
                }
                for row in active.iter_rows(named=True)
            ]
        )
    )

# %% tags=["hide-input"]
streams = stats.concurrent_streams(then.con, until=at, tz=tz).filter(
    pl.col("at").dt.convert_time_zone("UTC") >= at - timedelta(hours=24)
)
charts.concurrent_streams(streams, tz=tz).properties(
    title=f"Concurrent streams in the 24 hours up to {when(at)} {tz}"
)

# %% [markdown]
# ## What changed since
#
# Every playback the log touched after the instant, up to its latest event on the same
# clock, and what became of the playbacks that were active at the instant.

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
now = await wb.snapshot()
column = "occurred_at" if clock == "occurred" else "recorded_at"
latest = now.sql(f"SELECT max({column}) FROM media_events").fetchall()[0][0]
if latest is None or latest <= at:
    print(f"Nothing happened after {when(at)} {tz} on the {clock} clock.")
else:
    changes = changes_between(now, at, latest, clock=clock)
    print(f"From {when(at)} to {when(latest)} {tz} ({clock} clock):")
    print(f"  playbacks touched:   {changes.height:,}")
    print(f"  started:             {changes['started'].sum():,}")
    print(f"  stopped:             {changes['stopped'].sum():,}")
    print(f"  reports accepted:    {changes['events'].sum():,}")
    print(f"  repeats dropped:     {changes['dropped'].sum():,}")
    print()
    if active.is_empty():
        print("No playback was active at the instant.")
    else:
        keys = active["correlation_key"].to_list()
        today = now.sql(
            "SELECT correlation_key, state, stopped_at, percent_complete FROM playback_events"
            " WHERE list_contains($keys, correlation_key)",
            params={"keys": keys},
        ).pl()
        fate = active.select(
            "correlation_key", "username", "title", "grandparent_title", "state_at"
        )
        fate = fate.join(today, on="correlation_key", how="left", maintain_order="left")
        print("The playbacks active at the instant, now:")
        show(
            pl.DataFrame(
                [
                    {
                        "user": row["username"],
                        "title": title_of(row),
                        "then": row["state_at"],
                        "now": row["state"] or "-",
                        "stopped": when(row["stopped_at"]),
                        "complete %": row["percent_complete"],  # exact: shown to 0.1
                    }
                    for row in fate.iter_rows(named=True)
                ],
                schema_overrides={"complete %": pl.Float64},
            ).with_columns(pl.col("complete %").round(1))
        )

# %% [markdown]
# ## Move through time
#
# With a live kernel, move the slider (or switch the clock): the projection as of the
# chosen moment lists the playbacks active then, with the concurrent streams up to it. The
# last position wins however fast it moves, and a moment with no answer within 30 s says
# so in the status line. A static copy of this report shows the instant above.

# %%
if wb.log is None and wb.mode == "replay":
    print("No event log here (no archive/ and no nats_url): nothing to show.")
else:
    slider = TimeSlider(
        wb,
        start=at - timedelta(hours=slider_hours),
        end=at + timedelta(hours=slider_hours),
        step=timedelta(minutes=step_minutes),
        clock=clock,
        tz=tz,
        tolerance=wb.tolerance,
    )
    await slider.show_at(at)
    display(slider)
