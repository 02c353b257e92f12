"""The set-based fold of a playback's events into its ``playback_events`` row, and its merge.

A playback's row is a function of the set of its accepted events, whatever the batch
boundaries: a live projection fed 1,000 events at a time and a replay fed a million at once
produce the same rows. The fold is computed in two steps:

* :func:`fold_state` aggregates events into one **fold state** per ``correlation_key``
  (:data:`STATE_SCHEMA`): first and last values said, minima and maxima, counts, the pause
  time, and for each source session the time of its last lifecycle event and whether that
  event is a pause ("tails");
* :func:`playback_rows` turns states into rows.

Every part of the state is an associative aggregate over events ordered by stream sequence,
so :func:`merge_states` computes the state of a playback's old events plus a batch's new ones
(which all come later in the stream) from the two states alone, without reading back and
parsing the old events. The one aggregate that is not: the pause time, which depends on the
event that follows each pause within its source session *by event time*. When every new event
of a session is at or after that session's last known one, the old last pause (if the session
ended on one) gains its successor and nothing else changes; a new event before it (events can
arrive out of order) makes :func:`merge_states` report the playback, and the caller folds it
again from all its events (:func:`fold_playbacks`).

**Stale playbacks.** A playback whose stop never came (a webhook lost, a server that went
away, an ingestor that was down) would otherwise count as playing forever. Its row says when it
goes stale, ``stale_at``: ``STALE_AFTER`` (default 30 minutes) past its last report, or past
the moment the media would have ended if it kept playing from its last known position, if that
is later (webhooks report no progress: a film playing for two hours is not stale after 30
minutes). Once the projection's *watermark*, the newest event time it holds (event time, never
the wall clock: a replay gives the same rows), is past ``stale_at``, :func:`mark_stale` counts
the playback as stopped at its last report: ``state = 'stale'``, ``stopped_at`` its last
report, its watch time up to there. It is a function of the playback's events and the
watermark alone, and the watermark only grows, so batch boundaries change no row; a later
report of the playback folds it again from its events (a stop stops it where it says, any
other report moves its last report and ``stale_at``).

Pause time is summed in integer microseconds and rounded half to even once, so the sum does
not depend on the order of additions.

Precedence when sources disagree (README, "How it works"): a finished-session summary is
authoritative for durations, pause time and stream details; lifecycle events for the start
time and live state; no value is ever overwritten with an empty one.

The fold is polars ``group_by`` over an Arrow-backed frame of events. It was first written
as one DuckDB query; on this kind of machine DuckDB spends 20-35 ms planning and running a
~50-aggregate query even on an empty input, which capped the projection near 4,000 events/s
at the default batch of 1,000. Reads and writes stay SQL over Arrow (``store.py``).
"""

from __future__ import annotations

import polars as pl

from ingestor.projection.schema import (
    EVENT_DTYPES,
    IDENTITY_COLUMNS,
    IDENTITY_NUMBERS,
    PLAYBACK_COLUMNS,
    STREAM_DETAIL_COLUMNS,
    STREAM_DETAIL_VALUES,
)

# the event columns the fold reads
FOLD_INPUT_COLUMNS: list[str] = [
    "seq",
    "correlation_key",
    "event_id",
    "event_type",
    "occurred_at",
    "source",
    "session_key",
    "started_at",
    "stopped_at",
    "position_ms",
    "percent_complete",
    "play_duration",
    "paused_counter",
    *IDENTITY_COLUMNS,
    *IDENTITY_NUMBERS,
    *STREAM_DETAIL_COLUMNS,
    *STREAM_DETAIL_VALUES,
]

_SUMMARY = pl.col("event_type") == "summary"
_LIFE = pl.col("event_type") != "summary"
_IDENTITY = IDENTITY_COLUMNS + IDENTITY_NUMBERS
_DETAILS = STREAM_DETAIL_COLUMNS + STREAM_DETAIL_VALUES
_TIME = pl.Datetime("us", "UTC")
_GROUP = ["correlation_key", "source", "session_key"]  # a source session within a playback
_TAIL = pl.Struct(
    {
        "source": pl.String(),
        "session_key": pl.String(),
        "first_at": _TIME,
        "last_at": _TIME,
        "paused": pl.Boolean(),
    }
)


def _said(col: str) -> pl.Expr:
    """The source said something: not null and, for text, not empty."""
    expr = pl.col(col).is_not_null()
    if col in IDENTITY_COLUMNS or col in STREAM_DETAIL_COLUMNS:
        expr = expr & (pl.col(col) != "")
    return expr


def _first(col: str, where: pl.Expr | None = None) -> pl.Expr:
    cond = _said(col) if where is None else _said(col) & where
    return pl.col(col).filter(cond).first()


def _last(col: str, where: pl.Expr) -> pl.Expr:
    return pl.col(col).filter(_said(col) & where).last()


def _aggregations() -> list[pl.Expr]:
    """The fold state of a group of events sorted by ``seq``."""
    aggs: list[pl.Expr] = [_first(col).alias(col) for col in _IDENTITY]
    for col in _DETAILS:
        aggs += [_last(col, _SUMMARY).alias(f"s__{col}"), _first(col, _LIFE).alias(f"l__{col}")]
    last_life = [pl.col("occurred_at").filter(_LIFE), pl.col("seq").filter(_LIFE)]
    aggs += [
        pl.coalesce("started_at", "occurred_at").filter(_LIFE).min().alias("l_started_at"),
        pl.coalesce("stopped_at", "occurred_at")
        .filter(pl.col("event_type") == "stop")
        .max()
        .alias("l_stopped_at"),
        pl.col("paused_us").filter(_LIFE).sum().alias("l_paused_us"),
        pl.col("percent_complete").filter(_LIFE).max().alias("l_percent"),
        pl.col("position_ms").filter(_LIFE).max().alias("l_position_ms"),
        pl.col("event_type").filter(_LIFE).sort_by(last_life).last().alias("l_last"),
        pl.col("occurred_at").filter(_LIFE).sort_by(last_life).last().alias("l_last_at"),
        _last("started_at", _SUMMARY).alias("s_started_at"),
        _last("stopped_at", _SUMMARY).alias("s_stopped_at"),
        _last("paused_counter", _SUMMARY).alias("s_paused"),
        _last("play_duration", _SUMMARY).alias("s_played"),
        _last("percent_complete", _SUMMARY).alias("s_percent"),
        _SUMMARY.sum().cast(pl.Int64).alias("n_summaries"),
        pl.col("source").first().alias("source"),
        pl.col("source").unique().sort().alias("sources"),
        pl.coalesce("started_at", "occurred_at").first().alias("key_started_at"),
        pl.col("event_id").first().alias("opening_event_id"),
        pl.len().cast(pl.Int64).alias("event_count"),
        pl.col("seq").min().alias("first_seq"),
        pl.col("seq").max().alias("last_seq"),
        pl.col("occurred_at").max().alias("last_event_at"),
    ]
    return aggs


_AGGREGATIONS = _aggregations()
_PLAYBACK_ORDER = [name for name, _ in PLAYBACK_COLUMNS]


def _paused(events: pl.DataFrame) -> pl.DataFrame:
    """Add ``paused_us``: for a pause, the microseconds until the next event of its source
    session (lifecycle events, by event time then sequence); sorted by ``seq``."""
    session = [*_GROUP, "is_summary"]
    return (
        events.with_columns(is_summary=_SUMMARY)
        .sort([*session, "occurred_at", "seq"])
        .with_columns(
            paused_us=pl.when(pl.col("event_type") == "pause").then(
                (pl.col("occurred_at").shift(-1).over(session) - pl.col("occurred_at"))
                .dt.total_microseconds()
                .cast(pl.Int64)
            )
        )
        .sort("seq")
    )


def _tails(events: pl.DataFrame) -> pl.DataFrame:
    """Per playback, its lifecycle source sessions: first and last event time, and whether
    the last event (by event time, then sequence) is a pause."""
    life = events.filter(_LIFE).sort([*_GROUP, "occurred_at", "seq"])
    groups = life.group_by(_GROUP, maintain_order=True).agg(
        pl.col("occurred_at").first().alias("first_at"),
        pl.col("occurred_at").last().alias("last_at"),
        (pl.col("event_type").last() == "pause").alias("paused"),
    )
    return _regroup_tails(groups)


def _regroup_tails(groups: pl.DataFrame) -> pl.DataFrame:
    return groups.group_by("correlation_key").agg(
        pl.struct("source", "session_key", "first_at", "last_at", "paused")
        .sort_by("source", "session_key")
        .alias("tails")
    )


def fold_state(events: pl.DataFrame) -> pl.DataFrame:
    """The fold state of events (any order, several playbacks): one row per
    ``correlation_key``, :data:`STATE_SCHEMA`, in order of first appearance."""
    timed = _paused(events.select(FOLD_INPUT_COLUMNS))
    folded = timed.group_by("correlation_key", maintain_order=True).agg(_AGGREGATIONS)
    state = folded.join(_tails(timed), on="correlation_key", how="left", maintain_order="left")
    return state.with_columns(pl.col("tails").fill_null(pl.lit([], pl.List(_TAIL)))).select(
        STATE_SCHEMA.keys()
    )


def merge_states(old: pl.DataFrame, new: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The states of playbacks' old events plus new ones that all come later in the stream.

    ``old`` and ``new`` hold the same keys. Returns the merged states (in ``new``'s order)
    and the keys whose pause time cannot be merged (a new event before the last known one of
    its source session): those rows must be folded again from all their events.
    """
    both = new.join(old, on="correlation_key", how="left", suffix="_old", maintain_order="left")

    def was(col: str) -> pl.Expr:
        return pl.col(f"{col}_old")

    merged: list[pl.Expr] = [pl.coalesce(was(col), pl.col(col)).alias(col) for col in _IDENTITY]
    for col in _DETAILS:
        merged += [
            pl.coalesce(pl.col(f"s__{col}"), was(f"s__{col}")).alias(f"s__{col}"),
            pl.coalesce(was(f"l__{col}"), pl.col(f"l__{col}")).alias(f"l__{col}"),
        ]
    newer_life = pl.col("l_last_at").is_not_null() & (
        was("l_last_at").is_null() | (pl.col("l_last_at") >= was("l_last_at"))
    )
    merged += [
        pl.min_horizontal(was("l_started_at"), "l_started_at").alias("l_started_at"),
        pl.max_horizontal(was("l_stopped_at"), "l_stopped_at").alias("l_stopped_at"),
        pl.max_horizontal(was("l_percent"), "l_percent").alias("l_percent"),
        pl.max_horizontal(was("l_position_ms"), "l_position_ms").alias("l_position_ms"),
        *[
            pl.when(newer_life).then(pl.col(col)).otherwise(was(col)).alias(col)
            for col in ("l_last", "l_last_at")
        ],
        *[
            pl.coalesce(pl.col(col), was(col)).alias(col)
            for col in ("s_started_at", "s_stopped_at", "s_paused", "s_played", "s_percent")
        ],
        (pl.col("n_summaries") + was("n_summaries")).alias("n_summaries"),
        was("source").alias("source"),
        pl.concat_list(was("sources"), "sources").list.unique().list.sort().alias("sources"),
        was("key_started_at").alias("key_started_at"),
        was("opening_event_id").alias("opening_event_id"),
        (pl.col("event_count") + was("event_count")).alias("event_count"),
        was("first_seq").alias("first_seq"),
        pl.col("last_seq").alias("last_seq"),
        pl.max_horizontal(was("last_event_at"), "last_event_at").alias("last_event_at"),
    ]
    tails, gained, unmergeable = _merge_tails(old, new)
    state = (
        both.select("correlation_key", *merged, pl.col("l_paused_us"), was("l_paused_us"))
        .join(gained, on="correlation_key", how="left", maintain_order="left")
        .join(tails, on="correlation_key", how="left", maintain_order="left")
        .with_columns(
            l_paused_us=pl.col("l_paused_us")
            + pl.col("l_paused_us_old")
            + pl.col("gained_us").fill_null(0),
            tails=pl.col("tails").fill_null(pl.lit([], pl.List(_TAIL))),
        )
    )
    return state.select(STATE_SCHEMA.keys()), unmergeable


def _merge_tails(old: pl.DataFrame, new: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, list]:
    def rows(states: pl.DataFrame) -> pl.DataFrame:
        return states.select("correlation_key", "tails").explode("tails").unnest("tails")

    before, after = rows(old).drop_nulls("source"), rows(new).drop_nulls("source")
    sessions = after.join(before, on=_GROUP, how="full", coalesce=True, suffix="_old")
    met = pl.col("first_at_old").is_not_null() & pl.col("first_at").is_not_null()
    unmergeable = sessions.filter(met & (pl.col("first_at") < pl.col("last_at_old")))
    gained = (
        sessions.filter(met & pl.col("paused_old"))
        .group_by("correlation_key")
        .agg(
            (pl.col("first_at") - pl.col("last_at_old"))
            .dt.total_microseconds()
            .cast(pl.Int64)
            .sum()
            .alias("gained_us")
        )
    )
    merged = sessions.select(
        *_GROUP,
        pl.coalesce("first_at_old", "first_at").alias("first_at"),
        pl.coalesce("last_at", "last_at_old").alias("last_at"),
        pl.when(pl.col("first_at").is_not_null())
        .then(pl.col("paused"))
        .otherwise(pl.col("paused_old"))
        .alias("paused"),
    )
    return _regroup_tails(merged), gained, unmergeable["correlation_key"].unique().to_list()


DEFAULT_STALE_AFTER_S = 30 * 60.0


def _played(stopped: pl.Expr) -> pl.Expr:
    """Watch time up to ``stopped``: stop minus start minus pauses, whole seconds, >= 0."""
    return pl.max_horizontal(
        ((stopped - pl.col("started_at")).dt.total_microseconds() / 1e6).round(0).cast(pl.Int64)
        - pl.col("paused_seconds"),
        pl.lit(0, pl.Int64),
    )


def playback_rows(state: pl.DataFrame, stale_after: float = DEFAULT_STALE_AFTER_S) -> pl.DataFrame:
    """``playback_events`` rows (table column order) from fold states; ``stale_at`` is
    ``stale_after`` seconds past the last report or the media's end (see "Stale playbacks";
    :func:`mark_stale` applies it)."""
    started = pl.coalesce("l_started_at", "s_started_at")
    stopped = pl.coalesce("l_stopped_at", "s_stopped_at")
    # half to even, in integers: Float64 sums of seconds would depend on the order of addition
    us = pl.col("l_paused_us").fill_null(0)
    whole, rest = us // 1_000_000, us % 1_000_000
    up = (rest > 500_000) | ((rest == 500_000) & (whole % 2 == 1))
    life_paused = whole + up.cast(pl.Int64)
    shaped = state.with_columns(
        *[pl.coalesce(f"s__{col}", f"l__{col}").alias(col) for col in _DETAILS],
        started_at=started,
        stopped_at=stopped,
        paused_seconds=pl.coalesce(pl.col("s_paused").cast(pl.Int64), life_paused),
    ).with_columns(
        state=pl.when((pl.col("n_summaries") > 0) | pl.col("l_stopped_at").is_not_null())
        .then(pl.lit("stopped"))
        .when(pl.col("l_last") == "pause")
        .then(pl.lit("paused"))
        .otherwise(pl.lit("playing")),
        played_seconds=pl.coalesce(
            pl.col("s_played").cast(pl.Int64),
            pl.when(pl.col("stopped_at").is_not_null()).then(_played(pl.col("stopped_at"))),
        ),
        # the summary's, unless it is a whole number the lifecycle's exact reading rounds to
        # (Tautulli's API rounds: its 85 of a play stopped at 84.79 % is the same reading,
        # less precise, and would count the play as watched)
        percent_complete=pl.coalesce(
            pl.when(
                (pl.col("s_percent") == pl.col("s_percent").round(0))
                & (pl.col("l_percent").round(0) == pl.col("s_percent"))
            )
            .then(pl.col("l_percent"))
            .otherwise(pl.col("s_percent")),
            pl.col("l_percent"),
            pl.when(pl.col("media_duration") > 0).then(
                pl.min_horizontal(
                    pl.col("l_position_ms") / (pl.col("media_duration") * 10.0),
                    pl.lit(100.0),
                )
            ),
        ).cast(pl.Float64),
        event_count=pl.col("event_count").cast(pl.Int32),
    )
    # the media's end if it kept playing from its furthest known position
    left_us = pl.col("media_duration").cast(pl.Int64) * 1_000_000 - pl.col("l_position_ms") * 1_000
    media_end = pl.when(pl.col("state") == "playing").then(
        pl.col("last_event_at") + pl.duration(microseconds=pl.max_horizontal(left_us, 0))
    )
    return shaped.with_columns(
        stale_at=pl.when(pl.col("state") != "stopped").then(
            pl.max_horizontal("last_event_at", media_end)
            + pl.duration(microseconds=round(stale_after * 1_000_000))
        )
    ).select(_PLAYBACK_ORDER)


def mark_stale(rows: pl.DataFrame, watermark: object) -> pl.DataFrame:
    """``rows`` (``playback_events``) with every playing or paused playback whose
    ``stale_at`` is before ``watermark`` (the newest event time known; None: none) counted as
    stopped at its last report: ``state = 'stale'``, ``stopped_at = last_event_at``, its watch
    time up to there. Other rows are returned unchanged."""
    if watermark is None or rows.is_empty():
        return rows
    stale = pl.col("state").is_in(["playing", "paused"]) & (
        pl.col("stale_at") < pl.lit(watermark, _TIME)
    )
    return rows.with_columns(
        state=pl.when(stale).then(pl.lit("stale")).otherwise("state"),
        stopped_at=pl.when(stale).then("last_event_at").otherwise("stopped_at"),
        played_seconds=pl.when(stale)
        .then(_played(pl.col("last_event_at")))
        .otherwise("played_seconds"),
    )


def fold_playbacks(
    events: pl.DataFrame,
    *,
    watermark: object = None,
    stale_after: float = DEFAULT_STALE_AFTER_S,
) -> pl.DataFrame:
    """Fold events (any order, several playbacks) into one row per ``correlation_key``,
    with the columns of ``playback_events`` in table order, stale ones marked as of
    ``watermark`` (:func:`mark_stale`).
    """
    return mark_stale(playback_rows(fold_state(events), stale_after), watermark)


def _state_schema() -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {"correlation_key": pl.String()}
    schema.update({col: EVENT_DTYPES[col] for col in _IDENTITY})
    for col in _DETAILS:
        schema[f"s__{col}"] = EVENT_DTYPES[col]
        schema[f"l__{col}"] = EVENT_DTYPES[col]
    schema.update(
        {
            "l_started_at": _TIME,
            "l_stopped_at": _TIME,
            "l_paused_us": pl.Int64(),
            "l_percent": EVENT_DTYPES["percent_complete"],
            "l_position_ms": EVENT_DTYPES["position_ms"],
            "l_last": pl.String(),
            "l_last_at": _TIME,
            "s_started_at": _TIME,
            "s_stopped_at": _TIME,
            "s_paused": EVENT_DTYPES["paused_counter"],
            "s_played": EVENT_DTYPES["play_duration"],
            "s_percent": EVENT_DTYPES["percent_complete"],
            "n_summaries": pl.Int64(),
            "source": pl.String(),
            "sources": pl.List(pl.String()),
            "key_started_at": _TIME,
            "opening_event_id": pl.String(),
            "event_count": pl.Int64(),
            "first_seq": pl.Int64(),
            "last_seq": pl.Int64(),
            "last_event_at": _TIME,
            "tails": pl.List(_TAIL),
        }
    )
    return schema


STATE_SCHEMA: dict[str, pl.DataType] = _state_schema()
"""The columns of a fold state (:func:`fold_state`)."""


__all__ = [
    "DEFAULT_STALE_AFTER_S",
    "FOLD_INPUT_COLUMNS",
    "STATE_SCHEMA",
    "fold_playbacks",
    "fold_state",
    "mark_stale",
    "merge_states",
    "playback_rows",
]
