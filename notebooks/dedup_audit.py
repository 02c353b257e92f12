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
# # Dedup audit
#
# **What the dedup dropped or linked, and was it right?** Every drop and every link is a
# row of `dedupe_audit_log` (ARCHITECTURE, invariant 4): tier `event_id` (the exact event
# again: dropped), tier `session_key` (a source re-reporting a step of a session: dropped),
# tier `correlation` (another source reporting a known playback: linked, counted once).
# This report counts them by tier and by source pair, lists the entries awaiting review,
# shows one report next to the one it was matched to, gives the review accuracy
# (confirmed / (confirmed + restored)) and, on demo data, checks every tier against the
# simulator's ground truth. With a live kernel and the ingestor's NATS, the browser at the
# end confirms or restores entries: a verdict is an event in the stream.

# %% tags=["parameters"]
import os

# the ingestor's DATA_DIR (`make demo` writes ../data as seen from notebooks/)
data_dir = os.environ.get("WORKBENCH_DATA_DIR", "../data")
# a running ingestor's HTTP port and NATS (Binder sets both): the projection is read live
# and verdicts can be published
http_url = os.environ.get("WORKBENCH_HTTP_URL") or None
nats_url = os.environ.get("WORKBENCH_NATS_URL") or None
tier = None  # "event_id", "session_key", "correlation" (or a list); None: every tier
status = "auto_dedupe"  # awaiting review; or "user_confirmed", "user_restored"; None: all
source = None  # a source ("plex", "tautulli", "jellyfin"...), reported or kept; None: all
limit = 10  # entries listed
reviewer = "notebook"  # recorded as who gave a verdict
tz = "UTC"  # the IANA time zone times are shown in

# %% tags=["hide-input"]
import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import altair as alt
import polars as pl
from IPython.display import display

from ingestor import simulation as simulator
from ingestor.projection import PLAYBACK_TABLE
from workbench import audit, charts, open_data_dir
from workbench.db import show

charts.use_offline_renderer()
zone = ZoneInfo(tz)


# live when the ingestor answers at http_url, else the file; verdicts go to nats_url
wb = open_data_dir(data_dir, http_url=http_url, nats_url=nats_url)
snapshot = await wb.snapshot()
print(f"projection read in {wb.mode} mode")

# %% [markdown]
# ## Counts

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
summary = audit.summary(snapshot)
print("By tier:")
show(summary.by_tier)
print()
print("By source pair (the report's source, the kept report's source):")
show(summary.by_source_pair)
print()
print("By status:")
show(summary.by_status)
print()
print(f"Awaiting review: {summary.pending:,}")
print(f"Reviewed: {summary.confirmed:,} confirmed, {summary.restored:,} restored")
if summary.accuracy is None:
    print("Accuracy: none reviewed yet (confirm or restore entries below)")
else:
    print(f"Accuracy: {summary.accuracy:.1%} of the reviewed decisions were right")

# %% tags=["hide-input"]
per_day = (
    audit.entries(snapshot)
    .with_columns(pl.col("occurred_at").dt.convert_time_zone(tz).dt.date().alias("day"))
    .group_by("day", "tier")
    .agg(pl.len().alias("entries"))
    .sort("day", "tier")
    .with_columns(pl.col("day").dt.strftime("%Y-%m-%d"))
)
(
    alt.Chart(alt.InlineData(values=per_day.to_dicts()), title="Audit entries per day, by tier")
    .mark_bar()
    .encode(
        x=alt.X("day:O", title=f"Day the report happened ({tz})", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("entries:Q", title="Entries", axis=alt.Axis(format=",d", tickMinStep=1)),
        color=alt.Color("tier:N", title="Tier"),
        tooltip=["day:O", "tier:N", "entries:Q"],
    )
    .properties(width=600, height=240)
)

# %% [markdown]
# ## Against the simulator's ground truth
#
# `ingestor demo` writes the simulator's own account of what it injected
# (`demo-truth.json`): exact re-deliveries, re-reports after a reconnect, and playbacks
# reported by two sources. Each must show up as exactly one drop or link, and the
# projected playbacks must be the true ones. Only the simulated window is compared, so
# data added later (Binder's live feed) does not count.

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
truth_path = Path(data_dir) / "demo-truth.json"
if not truth_path.exists():
    print("No demo-truth.json in this data directory: nothing to compare with.")
else:
    config = json.loads(truth_path.read_text())["config"]
    expected, truth = simulator.read_truth(truth_path)
    first = datetime.fromisoformat(config["base_date"])
    # reports of the window (a Tautulli summary comes after its stop, so a day of margin)
    after = first + timedelta(days=config["days"] + 1)
    in_window = audit.entries(snapshot).filter(
        (pl.col("occurred_at") >= first) & (pl.col("occurred_at") < after)
    )
    tiers = dict(in_window.group_by("tier").len().iter_rows())
    logged = (await wb.events(since=first, until=after)).height
    stopped_by_jetstream = expected.published - logged
    print(
        f"Simulated: seed {config['seed']}, {config['users']} users, {config['days']} days "
        f"from {first:%Y-%m-%d}; {expected.published:,} reports published"
    )
    print(
        f"Exact repeats injected:      {expected.dropped_event_id:>5,}  = "
        f"{stopped_by_jetstream:,} stopped by JetStream's duplicate window "
        f"+ {tiers.get('event_id', 0):,} dropped by tier event_id"
    )
    print(
        f"Session re-reports injected: {expected.dropped_session_key:>5,}  vs "
        f"{tiers.get('session_key', 0):,} dropped by tier session_key"
    )
    print(
        f"Second-source reports:       {expected.linked:>5,}  vs "
        f"{tiers.get('correlation', 0):,} linked by tier correlation"
    )
    truth_columns = ", ".join(simulator.TRUTH_KEY_FIELDS)
    projected = set(
        snapshot.sql(
            f"SELECT {truth_columns} FROM {PLAYBACK_TABLE}"
            " WHERE started_at >= $first AND started_at < $after",
            params={"first": first, "after": after},
        ).fetchall()
    )
    true_keys = simulator.truth_keys(truth)
    print(
        f"Playbacks: {len(true_keys):,} in the truth, {len(projected):,} projected, "
        f"{len(true_keys & projected):,} identical"
    )
    exact = (
        expected.dropped_event_id == stopped_by_jetstream + tiers.get("event_id", 0)
        and expected.dropped_session_key == tiers.get("session_key", 0)
        and expected.linked == tiers.get("correlation", 0)
        and true_keys == projected
    )
    verdict = "every injected repeat caught, no playback merged or lost"
    print(f"Verdict: {verdict}" if exact else "Verdict: MISMATCH, see the figures above")

# %% [markdown]
# ## Entries
#
# Filtered by the parameters `tier`, `source` and `status` (by default the entries awaiting
# review), oldest first.

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
listed = audit.entries(snapshot, tier=tier, status=status, source=source)
filters = {"tier": tier, "status": status, "source": source}
said = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None) or "no filter"
print(f"{listed.height:,} entries ({said}); the first {min(limit, listed.height)}:")
show(
    listed.head(limit).select(
        "seq",
        "tier",
        "status",
        pl.concat_str("source", pl.lit(" -> "), "kept_source").alias("report -> kept"),
        "username",
        "title",
        pl.col("similarity_score").round(2).alias("score"),
        pl.col("reason").str.slice(0, 64).alias("reason"),
    )
)

# %% [markdown]
# ## One report next to the one it was matched to
#
# The first entry listed above: every field of the dropped or linked report, and of the
# report that was kept; `*` marks the fields that differ.

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
if listed.is_empty():
    print("No entry to show.")
else:
    first_entry = listed.row(0, named=True)
    print(f"{first_entry['tier']} {first_entry['action']}: {first_entry['reason']}")
    compared = audit.side_by_side(snapshot, first_entry["audit_id"])
    compared = compared.filter(pl.col("reported").is_not_null() | pl.col("kept").is_not_null())
    show(
        compared.select(
            pl.when(pl.col("differs")).then(pl.lit("*")).otherwise(pl.lit("")).alias(" "),
            "field",
            pl.col("reported").str.slice(0, 36),
            pl.col("kept").str.slice(0, 36),
        )
    )

# %% [markdown]
# ## Review
#
# Select an entry: its report stands next to the one it was matched to, the fields that
# differ marked. Confirm it (the dedup was right) or restore it (it was wrong: the linked
# report becomes a playback of its own, the dropped one is put back). A verdict is an event
# in the stream, so it needs the running ingestor: in Binder it runs already; elsewhere
# start it in a terminal (`.venv/bin/ingestor run` from the project's directory) and open
# the notebooks with `make lab`, which points them at it. Offline, a button says so.

# %%
browser = await wb.audit_browser(
    tier=tier, status=status, source=source, by=reviewer, page_size=limit, tz=tz
)
if wb.mode != "live":
    print(
        "Offline: the projection is read from the file. Verdicts need the running "
        "ingestor: start it with `.venv/bin/ingestor run`, and the buttons then publish."
    )
display(browser)
