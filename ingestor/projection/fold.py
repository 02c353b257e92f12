"""The set-based SQL that folds a playback's events into its ``playback_events`` row.

A batch touches some playbacks; each touched row is recomputed from *all* its accepted events
in ``media_events`` (those committed earlier and those of this batch), so the result does not
depend on where batch boundaries fell: a live projection fed 1,000 events at a time and a
replay fed a million at once produce the same rows.

Precedence when sources disagree (ARCHITECTURE "Words"): a finished-session summary is
authoritative for durations, pause time and stream details; lifecycle events for the start
time and live state; no value is ever overwritten with an empty one.

The query is generated once, at import, from the column lists in ``schema.py`` (no user
input reaches it); ``tests/unit/snapshots/fold.sql`` holds it so a change shows as a diff.
"""

from __future__ import annotations

from ingestor.projection.schema import (
    IDENTITY_COLUMNS,
    IDENTITY_NUMBERS,
    PLAYBACK_COLUMNS,
    STREAM_DETAIL_COLUMNS,
    STREAM_DETAIL_VALUES,
)


def _first_text(col: str, where: str = "TRUE") -> str:
    return f"first({col} ORDER BY seq) FILTER (WHERE {col} <> '' AND {where})"


def _first_value(col: str, where: str = "TRUE") -> str:
    return f"first({col} ORDER BY seq) FILTER (WHERE {col} IS NOT NULL AND {where})"


def _last_text(col: str, where: str) -> str:
    return f"last({col} ORDER BY seq) FILTER (WHERE {col} <> '' AND {where})"


def _last_value(col: str, where: str) -> str:
    return f"last({col} ORDER BY seq) FILTER (WHERE {col} IS NOT NULL AND {where})"


_SUMMARY = "event_type = 'summary'"
_LIFE = "event_type <> 'summary'"


def _build() -> str:
    agg: list[str] = []
    for col in IDENTITY_COLUMNS:
        agg.append(f"{_first_text(col)} AS {col}")
    for col in IDENTITY_NUMBERS:
        agg.append(f"{_first_value(col)} AS {col}")
    for col in STREAM_DETAIL_COLUMNS:
        agg.append(
            f"coalesce({_last_text(col, _SUMMARY)}, {_first_text(col, _LIFE)}) AS {col}"
        )
    for col in STREAM_DETAIL_VALUES:
        agg.append(
            f"coalesce({_last_value(col, _SUMMARY)}, {_first_value(col, _LIFE)}) AS {col}"
        )
    agg += [
        f"min(coalesce(started_at, occurred_at)) FILTER (WHERE {_LIFE}) AS l_started_at",
        "max(coalesce(stopped_at, occurred_at)) FILTER (WHERE event_type = 'stop') AS l_stopped_at",
        f"sum(paused_for) FILTER (WHERE {_LIFE}) AS l_paused",
        f"max(percent_complete) FILTER (WHERE {_LIFE}) AS l_percent",
        f"max(position_ms) FILTER (WHERE {_LIFE}) AS l_position_ms",
        f"last(event_type ORDER BY occurred_at, seq) FILTER (WHERE {_LIFE}) AS l_last_type",
        f"{_last_value('started_at', _SUMMARY)} AS s_started_at",
        f"{_last_value('stopped_at', _SUMMARY)} AS s_stopped_at",
        f"{_last_value('paused_counter', _SUMMARY)} AS s_paused",
        f"{_last_value('play_duration', _SUMMARY)} AS s_played",
        f"{_last_value('percent_complete', _SUMMARY)} AS s_percent",
        f"count(*) FILTER (WHERE {_SUMMARY}) AS n_summaries",
        "first(source ORDER BY seq) AS source",
        "list(DISTINCT source ORDER BY source) AS sources",
        "first(coalesce(started_at, occurred_at) ORDER BY seq) AS key_started_at",
        "first(event_id ORDER BY seq) AS opening_event_id",
        "count(*) AS event_count",
        "min(seq) AS first_seq",
        "max(seq) AS last_seq",
        "max(occurred_at) AS last_event_at",
    ]
    agg_sql = ",\n        ".join(agg)
    carried = [
        name
        for name, _ in PLAYBACK_COLUMNS
        if name in IDENTITY_COLUMNS + IDENTITY_NUMBERS + STREAM_DETAIL_COLUMNS + STREAM_DETAIL_VALUES
    ]
    carried_sql = ",\n    ".join(carried)
    return f"""INSERT OR REPLACE INTO playback_events
WITH ev AS (
    SELECT *
    FROM media_events
    WHERE seq >= $min_seq
      AND correlation_key IN (SELECT correlation_key FROM touched_playbacks)
),
timed AS (
    SELECT
        *,
        CASE
            WHEN event_type = 'pause' THEN epoch(
                lead(occurred_at) OVER (
                    PARTITION BY correlation_key, source, session_key, event_type = 'summary'
                    ORDER BY occurred_at, seq
                )
            ) - epoch(occurred_at)
        END AS paused_for
    FROM ev
),
folded AS (
    SELECT
        correlation_key,
        {agg_sql}
    FROM timed
    GROUP BY correlation_key
),
shaped AS (
    SELECT
        *,
        coalesce(l_started_at, s_started_at) AS started_at,
        coalesce(l_stopped_at, s_stopped_at) AS stopped_at,
        coalesce(s_paused, round(coalesce(l_paused, 0)))::BIGINT AS paused_seconds
    FROM folded
)
SELECT
    correlation_key,
    {carried_sql},
    started_at,
    stopped_at,
    CASE
        WHEN n_summaries > 0 OR l_stopped_at IS NOT NULL THEN 'stopped'
        WHEN l_last_type = 'pause' THEN 'paused'
        ELSE 'playing'
    END AS state,
    paused_seconds,
    coalesce(
        s_played,
        CASE
            WHEN stopped_at IS NOT NULL
                THEN greatest(round(epoch(stopped_at) - epoch(started_at)) - paused_seconds, 0)
        END
    )::BIGINT AS played_seconds,
    coalesce(
        s_percent,
        l_percent,
        CASE
            WHEN media_duration > 0
                THEN least(round(l_position_ms / (media_duration * 10.0)), 100)
        END
    )::INTEGER AS percent_complete,
    source,
    sources,
    key_started_at,
    opening_event_id,
    event_count,
    first_seq,
    last_seq,
    last_event_at
FROM shaped"""


FOLD_PLAYBACKS_SQL = _build()
