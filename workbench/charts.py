"""Charts of the statistics in :mod:`workbench.stats`, drawn with Altair and rendered offline.

Every chart function takes the small, already aggregated polars frame a statistic returns
(``charts.by_day(stats.by_day(db, tz="Europe/Berlin"))``), never playback rows: the numbers
are DuckDB's, and a chart embeds exactly the frame's rows, so a report over millions of
playbacks still carries a few dozen values. :func:`chart` does both steps by name:
``chart(db, "by_day", metric="watch_time", tz="Europe/Berlin")``.

The functions share the statistic's name. Which metric is drawn is read from the frame: a
``plays`` column is drawn as "Plays", a ``watch_time`` column (seconds) as "Watch time
(hours)". Times are drawn as the clocks of the frame's zone (the statistic's ``tz``): the
wall-clock time is embedded as text on a UTC scale, so the renderer's own zone (a browser's,
vl-convert's) can never shift a bar to the neighbouring day.

Rendering needs no network: :func:`to_svg` and :func:`to_png` use vl-convert (Vega-Lite
compiled in-process, external data URLs refused), and :func:`use_offline_renderer` makes
every chart a notebook displays an inline SVG. A notebook executed by papermill and converted
to HTML then shows its charts with no script and no CDN; Altair's default HTML renderer
would need both, and its ``mimetype`` renderer's output fails papermill's validation.

Example::

    >>> from workbench.db import example_projection
    >>> db = example_projection(
    ...     "correlation_key, platform, started_at, stopped_at",
    ...     ('a', 'Roku', '2026-01-05 20:00Z', '2026-01-05 21:00Z'),
    ...     ('b', 'tvOS', '2026-01-05 20:00Z', '2026-01-05 22:00Z'),
    ... )
    >>> platforms = chart(db, "by_platform", metric="watch_time")
    >>> data_rows(platforms)
    2
    >>> svg = to_svg(platforms)
    >>> "Watch time by platform" in svg, "Watch time (hours)" in svg, "<script" in svg
    (True, True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

import altair as alt
import polars as pl
import vl_convert

from workbench import stats

Metric = stats.Metric
TimeMark = Literal["bar", "line"]

METRIC_TITLES: dict[str, str] = {"plays": "Plays", "watch_time": "Watch time (hours)"}
"""Axis titles of the two metrics, in the words Tautulli uses."""

METRIC_WORDS: dict[str, str] = {"plays": "Plays", "watch_time": "Watch time"}
"""How a chart's title starts for each metric."""

SECONDS_PER_HOUR = 3600
WIDTH = 600
HEIGHT = 260
BAR_STEP = 22  # pixels per bar of a horizontal bar chart
RENDERER_NAME = "mediaevents-svg"
"""The Altair renderer :func:`use_offline_renderer` registers and enables."""

TIME_LABEL = "%a %Y-%m-%d %H:%M %Z"
DAY_LABEL = "%a %Y-%m-%d"
MONTH_LABEL = "%B %Y"

_PEAK_COLOR = "#e45756"

# One colour per media type and per stream type, the same in every chart (a movie is blue
# in the top titles and in the media-type split). Mid-tones of Vega's Tableau palette: they
# keep their contrast on a white chart and on a dark page around it, and stay apart for the
# common colour-vision deficiencies (blue/orange, green/red never carry a meaning alone).
MEDIA_TYPE_COLORS: dict[str, str] = {
    "movie": "#4c78a8",
    "episode": "#f58518",
    "track": "#54a24b",
    "clip": "#b279a2",
    "unknown": "#9d9d9d",
}
STREAM_TYPE_COLORS: dict[str, str] = {
    "direct play": "#54a24b",
    "direct stream": "#4c78a8",
    "transcode": "#e45756",
    "unknown": "#9d9d9d",
}
_MORE_COLORS = ["#72b7b2", "#eeca3b", "#ff9da6", "#9d755d", "#bab0ac"]


def category_colors(fixed: Mapping[str, str], values: list[str]) -> tuple[list[str], list[str]]:
    """The domain and range of a colour scale: the ``fixed`` colours for the values they
    name, the next of a few more for the others (in order of appearance).

    >>> category_colors(STREAM_TYPE_COLORS, ["transcode", "remux"])
    (['transcode', 'remux'], ['#e45756', '#72b7b2'])
    """
    domain = list(dict.fromkeys(values))
    extra = iter(_MORE_COLORS * (len(domain) // len(_MORE_COLORS) + 1))
    return domain, [fixed[v] if v in fixed else next(extra) for v in domain]


_COLORED = {"media_type": MEDIA_TYPE_COLORS, "stream_type": STREAM_TYPE_COLORS}


def _category_color(
    frame: pl.DataFrame, field: str, title: str, fixed: Mapping[str, str], *, legend: bool
) -> alt.Color:
    """``field`` coloured with the ``fixed`` colours (a legend only where the bars are not
    labelled by the same words already)."""
    values = frame[field].cast(pl.String).fill_null("unknown").to_list()
    domain, colors = category_colors(fixed, values)
    scale = alt.Scale(domain=domain, range=colors)
    if legend:
        return alt.Color(f"{field}:N", title=title, scale=scale)
    return alt.Color(f"{field}:N", title=title, scale=scale, legend=None)


# --------------------------------------------------------------------------- frame -> data


def _metric(frame: pl.DataFrame) -> Metric:
    """The metric a statistic's frame carries (its ``plays`` or ``watch_time`` column)."""
    found = [name for name in get_args(Metric) if name in frame.columns]
    if len(found) != 1:
        raise ValueError(
            "expected a frame from workbench.stats with one of the columns 'plays' or "
            f"'watch_time'; got the columns {frame.columns}"
        )
    return found[0]


def _value_field(metric: Metric) -> str:
    """The embedded field drawn for ``metric``: plays as counted, watch time in hours."""
    return "watch_hours" if metric == "watch_time" else "plays"


def _with_display_columns(frame: pl.DataFrame, metric: Metric | None) -> pl.DataFrame:
    """Add the hours column for watch time (the seconds stay, for the tooltip's sake)."""
    if metric == "watch_time":
        return frame.with_columns(
            (pl.col("watch_time") / SECONDS_PER_HOUR).alias("watch_hours"),
        )
    return frame


def _zone_of(frame: pl.DataFrame, column: str) -> str | None:
    dtype = frame.schema[column]
    return dtype.time_zone if isinstance(dtype, pl.Datetime) else None


def _values(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The frame as JSON-ready rows, times as wall-clock text for a UTC scale.

    A datetime becomes its clock in its own zone with a ``Z`` (so Vega reads that clock as
    UTC and draws it on a UTC scale unchanged) plus a ``<column>_label`` with the zone's
    abbreviation for tooltips; a date becomes ``YYYY-MM-DD`` (read as UTC midnight).
    """
    columns: list[pl.Expr] = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime):
            column = pl.col(name)
            columns.append(
                column.dt.replace_time_zone(None).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").alias(name)
            )
            label = column.dt.strftime(TIME_LABEL if dtype.time_zone else "%a %Y-%m-%d %H:%M")
            columns.append(label.alias(f"{name}_label"))
        elif isinstance(dtype, pl.Date):
            columns.append(pl.col(name).dt.strftime("%Y-%m-%d").alias(name))
            fmt = MONTH_LABEL if name == "month" else DAY_LABEL
            columns.append(pl.col(name).dt.strftime(fmt).alias(f"{name}_label"))
        else:
            columns.append(pl.col(name))
    return frame.select(columns).to_dicts()


def _base(frame: pl.DataFrame, title: str) -> alt.Chart:
    """A chart over ``frame``'s rows, embedded inline as they are (no row limit applies:
    the frame is an aggregate, and :func:`data_rows` proves it stays one)."""
    # Altair checks each schema object against Vega-Lite's JSON schema as it is built; for
    # the inline rows that took 0.3 s of every concurrent-streams chart (a time slider
    # move). The rows are plain values this module made, and the whole spec is still
    # checked once when it is rendered (``_spec``).
    with alt.utils.schemapi.debug_mode(False):
        data = alt.InlineData(values=_values(frame))
    return alt.Chart(data, title=title)


def _metric_axis(metric: Metric) -> alt.Axis:
    if metric == "watch_time":
        return alt.Axis(format=",.1f")
    return alt.Axis(format=",d", tickMinStep=1)  # no "0 0 1 1 2" on small counts


def _value_axis(metric: Metric) -> alt.X:
    field = f"{_value_field(metric)}:Q"
    return alt.X(field, title=METRIC_TITLES[metric], axis=_metric_axis(metric))


def _value_y(metric: Metric) -> alt.Y:
    field = f"{_value_field(metric)}:Q"
    return alt.Y(field, title=METRIC_TITLES[metric], axis=_metric_axis(metric))


def _calendar_axis(unit: Literal["day", "month"], buckets: int, fmt: str) -> alt.Axis:
    """Ticks on bucket boundaries only (never "Jan 05" twice for a noon tick), about a dozen
    of them however long the series."""
    step = max(1, -(-buckets // 12))
    return alt.Axis(format=fmt, tickCount={"interval": unit, "step": step}, labelAngle=0)


def _clock_format(frame: pl.DataFrame, column: str) -> str:
    """A 24-hour label format suited to the span of ``frame[column]``."""
    if frame.height < 2:
        return "%a %H:%M"
    span = frame[column].max() - frame[column].min()  # type: ignore[operator]
    days = span.total_seconds() / 86400 if span is not None else 0
    if days <= 3:
        return "%a %H:%M"
    if days <= 90:
        return "%b %d"
    return "%b %Y"


def _clock_axis(frame: pl.DataFrame, column: str) -> alt.Axis:
    """A time axis whose labels never repeat: over more than three days, one tick per day
    (or per a few days, about a dozen in all) with the day's label; over more than 90
    days, one per month. Within three days, clock times (their own labels differ)."""
    fmt = _clock_format(frame, column)
    if fmt == "%a %H:%M" or frame.height < 2:
        return alt.Axis(format=fmt, labelAngle=0)
    span = frame[column].max() - frame[column].min()  # type: ignore[operator]
    days = max(1, int(span.total_seconds() // 86400) + 1)  # type: ignore[union-attr]
    if fmt == "%b %Y":
        months = max(1, days // 30)
        step = max(1, -(-months // 12))
        return alt.Axis(format=fmt, labelAngle=0, tickCount={"interval": "month", "step": step})
    step = max(1, -(-days // 12))
    return alt.Axis(format="%a %b %d", labelAngle=0, tickCount={"interval": "day", "step": step})


def _value_tooltip(metric: Metric) -> alt.Tooltip:
    fmt = ",.1f" if metric == "watch_time" else ",d"
    return alt.Tooltip(f"{_value_field(metric)}:Q", title=METRIC_TITLES[metric], format=fmt)


def _in_zone(words: str, tz: str | None) -> str:
    return f"{words} ({tz})" if tz else words


def _unique_labels(frame: pl.DataFrame, label: pl.Expr, qualifier: pl.Expr) -> pl.DataFrame:
    """``label`` as a column, with `` · qualifier`` added where two rows would share one (two
    users called "bruno" on two servers must stay two bars)."""
    frame = frame.with_columns(label.alias("label"))
    repeated = pl.col("label").is_duplicated()
    return frame.with_columns(
        pl.when(repeated)
        .then(pl.concat_str([pl.col("label"), pl.lit(" · "), qualifier.fill_null("?")]))
        .otherwise(pl.col("label"))
        .alias("label")
    )


def _horizontal_bars(
    frame: pl.DataFrame,
    *,
    metric: Metric,
    label_title: str,
    title: str,
    tooltip: list[alt.Tooltip],
    color: str | None = None,
    color_title: str | None = None,
    palette: Mapping[str, str] | None = None,
) -> alt.Chart:
    """One bar per row, longest first, labelled by the frame's ``label`` column; coloured
    by ``color`` (media and stream types in their fixed colours, or ``palette``'s)."""
    encoding: dict[str, Any] = {
        "y": alt.Y("label:N", title=label_title, sort="-x", axis=alt.Axis(labelLimit=240)),
        "x": _value_axis(metric),
        "tooltip": tooltip,
    }
    if color is not None:
        fixed = palette if palette is not None else _COLORED.get(color)
        if fixed is not None:
            encoding["color"] = _category_color(
                frame, color, color_title or color, fixed, legend=color != "label"
            )
        else:
            encoding["color"] = alt.Color(f"{color}:N", title=color_title)
    return (
        _base(frame, title)
        .mark_bar()
        .encode(**encoding)
        .properties(width=WIDTH, height=alt.Step(BAR_STEP))
    )


# --------------------------------------------------------------------------- over time


def _over_time(
    frame: pl.DataFrame,
    x: alt.X,
    label: alt.Tooltip,
    words: str,
    title: str | None,
    mark: TimeMark = "bar",
) -> alt.Chart:
    """A statistic over time: a bar (or a line's point) per ``x``, its label and value as the
    tooltip, titled "Plays ``words``" (or the metric's own words) unless ``title`` says."""
    metric = _metric(frame)
    data = _with_display_columns(frame, metric)
    base = _base(data, title or f"{METRIC_WORDS[metric]} {words}")
    drawn = base.mark_line(point=frame.height <= 62) if mark == "line" else base.mark_bar()
    tooltip = [label, _value_tooltip(metric)]
    return drawn.encode(x=x, y=_value_y(metric), tooltip=tooltip).properties(
        width=WIDTH, height=HEIGHT
    )


def by_day(
    frame: pl.DataFrame,
    *,
    mark: TimeMark = "bar",
    tz: str | None = None,
    title: str | None = None,
) -> alt.Chart:
    """Plays (or watch time) per day, from :func:`workbench.stats.by_day`: bars, or a line
    with ``mark="line"``. ``tz`` (the statistic's) only names the zone in the axis title.

    >>> import datetime as dt
    >>> frame = pl.DataFrame({"day": [dt.date(2026, 1, 5), dt.date(2026, 1, 6)], "plays": [7, 1]})
    >>> spec = by_day(frame).to_dict()
    >>> spec["mark"]["type"], spec["encoding"]["y"]["title"], data_rows(spec)
    ('bar', 'Plays', 2)
    """
    x = alt.X(
        "utcyearmonthdate(day):T",
        title=_in_zone("Day", tz),
        scale=alt.Scale(type="utc", padding=12),
        axis=_calendar_axis("day", frame.height, "%b %d"),
    )
    return _over_time(frame, x, alt.Tooltip("day_label:N", title="Day"), "per day", title, mark)


def by_month(frame: pl.DataFrame, *, tz: str | None = None, title: str | None = None) -> alt.Chart:
    """Plays (or watch time) per month, from :func:`workbench.stats.by_month`."""
    x = alt.X(
        "utcyearmonth(month):T",
        title=_in_zone("Month", tz),
        scale=alt.Scale(type="utc", padding=12),
        axis=_calendar_axis("month", frame.height, "%b %Y"),
    )
    return _over_time(frame, x, alt.Tooltip("month_label:N", title="Month"), "per month", title)


def by_day_of_week(
    frame: pl.DataFrame, *, tz: str | None = None, title: str | None = None
) -> alt.Chart:
    """Plays (or watch time) per weekday, Monday first, from
    :func:`workbench.stats.by_day_of_week`."""
    x = alt.X(
        "day_name:N",
        title=_in_zone("Day of week", tz),
        sort=alt.EncodingSortField("weekday", order="ascending"),
        axis=alt.Axis(labelAngle=0),
    )
    label = alt.Tooltip("day_name:N", title="Day of week")
    return _over_time(frame, x, label, "by day of week", title)


def by_hour_of_day(
    frame: pl.DataFrame, *, tz: str | None = None, title: str | None = None
) -> alt.Chart:
    """Plays (or watch time) per start hour (0-23), from
    :func:`workbench.stats.by_hour_of_day`."""
    x = alt.X(
        "hour:O",
        title=_in_zone("Hour of day", tz),
        sort="ascending",
        axis=alt.Axis(labelAngle=0),
    )
    return _over_time(frame, x, alt.Tooltip("hour:O", title="Hour of day"), "by hour of day", title)


# --------------------------------------------------------------------------- by dimension


def _by_column(frame: pl.DataFrame, column: str, words: str, title: str | None) -> alt.Chart:
    metric = _metric(frame)
    data = _with_display_columns(frame, metric).with_columns(
        pl.col(column).cast(pl.String).fill_null("unknown").alias("label")
    )
    return _horizontal_bars(
        data,
        metric=metric,
        label_title=words,
        title=title or f"{METRIC_WORDS[metric]} by {words.lower()}",
        tooltip=[alt.Tooltip("label:N", title=words), _value_tooltip(metric)],
        color="label" if column in _COLORED else None,
        color_title=words,
        palette=_COLORED.get(column),
    )


def by_user(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """Plays (or watch time) per user, from :func:`workbench.stats.by_user`. A user is
    labelled by name (by id when the name is unknown); two users of one name on different
    servers get the server id added, so they stay two bars."""
    metric = _metric(frame)
    data = _unique_labels(
        _with_display_columns(frame, metric),
        pl.coalesce(pl.col("username"), pl.col("user_id"), pl.lit("unknown")),
        pl.col("server_id").cast(pl.String).str.slice(0, 8),
    )
    tooltip = [
        alt.Tooltip("label:N", title="User"),
        alt.Tooltip("user_id:N", title="User id"),
        alt.Tooltip("server_id:N", title="Server"),
        _value_tooltip(metric),
    ]
    return _horizontal_bars(
        data,
        metric=metric,
        label_title="User",
        title=title or f"{METRIC_WORDS[metric]} by user",
        tooltip=tooltip,
    )


def by_platform(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """Plays (or watch time) per platform, from :func:`workbench.stats.by_platform`."""
    return _by_column(frame, "platform", "Platform", title)


def by_player(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """Plays (or watch time) per player, from :func:`workbench.stats.by_player`."""
    return _by_column(frame, "player", "Player", title)


def by_media_type(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """Plays (or watch time) per media type, from :func:`workbench.stats.by_media_type`."""
    return _by_column(frame, "media_type", "Media type", title)


def by_stream_type(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """Plays (or watch time) per stream type (direct play, direct stream, transcode), from
    :func:`workbench.stats.by_stream_type`."""
    return _by_column(frame, "stream_type", "Stream type", title)


def by_resolution(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """Plays (or watch time) per video resolution, from
    :func:`workbench.stats.by_resolution`."""
    return _by_column(frame, "resolution", "Resolution", title)


def by_server(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """Plays (or watch time) per server, from :func:`workbench.stats.by_server`."""
    return _by_column(frame, "server_id", "Server", title)


def _title_labels(frame: pl.DataFrame) -> pl.DataFrame:
    return _unique_labels(
        frame,
        pl.col("title").cast(pl.String).fill_null("unknown"),
        pl.col("media_type").cast(pl.String),
    )


def top_titles(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """The most played (or most watched) titles, from :func:`workbench.stats.top_titles`,
    coloured by media type."""
    metric = _metric(frame)
    data = _title_labels(_with_display_columns(frame, metric))
    words = "Most played titles" if metric == "plays" else "Most watched titles"
    return _horizontal_bars(
        data,
        metric=metric,
        label_title="Title",
        title=title or words,
        tooltip=[
            alt.Tooltip("title:N", title="Title"),
            alt.Tooltip("media_type:N", title="Media type"),
            _value_tooltip(metric),
        ],
        color="media_type",
        color_title="Media type",
    )


def popular_titles(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """The titles watched by the most users, from :func:`workbench.stats.popular_titles`:
    bars are distinct users, the metric is in the tooltip."""
    metric = _metric(frame)
    data = _title_labels(_with_display_columns(frame, metric))
    return (
        _base(data, title or "Most popular titles")
        .mark_bar()
        .encode(
            y=alt.Y("label:N", title="Title", sort="-x", axis=alt.Axis(labelLimit=240)),
            x=alt.X("users:Q", title="Users", axis=alt.Axis(format=",d", tickMinStep=1)),
            color=_category_color(data, "media_type", "Media type", MEDIA_TYPE_COLORS, legend=True),
            tooltip=[
                alt.Tooltip("title:N", title="Title"),
                alt.Tooltip("media_type:N", title="Media type"),
                alt.Tooltip("users:Q", title="Users"),
                _value_tooltip(metric),
            ],
        )
        .properties(width=WIDTH, height=alt.Step(BAR_STEP))
    )


def who_watched(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """Who watched one title, from :func:`workbench.stats.who_watched`."""
    metric = _metric(frame)
    data = _unique_labels(
        _with_display_columns(frame, metric),
        pl.coalesce(pl.col("username"), pl.col("user_id"), pl.lit("unknown")),
        pl.col("server_id").cast(pl.String).str.slice(0, 8),
    )
    return _horizontal_bars(
        data,
        metric=metric,
        label_title="User",
        title=title or "Who watched",
        tooltip=[
            alt.Tooltip("label:N", title="User"),
            alt.Tooltip("last_played_label:N", title="Last played"),
            _value_tooltip(metric),
        ],
    )


# --------------------------------------------------------------------------- completion


def completion(frame: pl.DataFrame, *, title: str | None = None) -> alt.Chart:
    """How much was watched to the end, per media type, from
    :func:`workbench.stats.completion`: one bar per media type split into "Watched" and
    "Not finished", with the completion rate written at its end."""
    metric = _metric(frame)
    scale = SECONDS_PER_HOUR if metric == "watch_time" else 1
    data = frame.with_columns(
        (pl.col("watched") / scale).alias("watched_part"),
        ((pl.col(metric) - pl.col("watched")) / scale).alias("unfinished_part"),
        (pl.col(metric) / scale).alias("total"),
        pl.col("rate").fill_null(0.0).alias("rate"),
    )
    fmt = ",.1f" if metric == "watch_time" else ",d"
    base = _base(data, title or f"Completion ({METRIC_WORDS[metric].lower()})")
    y = alt.Y("media_type:N", title="Media type", sort="-x")
    bars = (
        base.transform_fold(["watched_part", "unfinished_part"], as_=["part", "amount"])
        .transform_calculate(
            part_name="datum.part == 'watched_part' ? 'Watched' : 'Not finished'",
            order="datum.part == 'watched_part' ? 0 : 1",
        )
        .mark_bar()
        .encode(
            y=y,
            x=alt.X(
                "amount:Q", title=METRIC_TITLES[metric], stack="zero", axis=_metric_axis(metric)
            ),
            color=alt.Color(
                "part_name:N",
                title="Completion",
                scale=alt.Scale(domain=["Watched", "Not finished"], range=["#4c78a8", "#c7d3e2"]),
            ),
            order=alt.Order("order:Q"),
            tooltip=[
                alt.Tooltip("media_type:N", title="Media type"),
                alt.Tooltip("part_name:N", title="Part"),
                alt.Tooltip("amount:Q", title=METRIC_TITLES[metric], format=fmt),
                alt.Tooltip("rate:Q", title="Completion rate", format=".0%"),
            ],
        )
    )
    labels = (
        base.transform_calculate(rate_text="format(datum.rate, '.0%')")
        .mark_text(align="left", dx=4)
        .encode(y=y, x=alt.X("total:Q"), text=alt.Text("rate_text:N"))
    )
    return alt.layer(bars, labels).properties(width=WIDTH, height=alt.Step(BAR_STEP * 2))


# --------------------------------------------------------------------------- concurrency


def concurrent_streams(
    frame: pl.DataFrame,
    *,
    tz: str | None = None,
    title: str | None = None,
    name_zone: bool = True,
) -> alt.Chart:
    """Concurrent streams over time, from :func:`workbench.stats.concurrent_streams`: a step
    line (the count holds until the next change), its peak marked with a dot and a label
    (the first moment the maximum was reached, as :func:`~workbench.stats.max_concurrent_streams`
    reports it). The zone of the axis is the frame's own (``tz`` overrides its name).

    A long period has hundreds of thousands of change points, more than a chart can show
    (and slow to render: 200k points took a minute in vl-convert). Above
    :data:`MAX_STREAM_POINTS` the line shows each interval's maximum instead (intervals of a
    minute to a day, whatever keeps the points under the limit), drawn at the moment it was
    reached, so the peak and its time stay exact.

    Over more than three days the axis has one label per day (or per few days), never one
    day's name twice. ``name_zone=False`` leaves the zone out of the axis title, for a page
    that names it once for all its charts."""
    for name in ("at", "streams"):
        if name not in frame.columns:
            raise ValueError(
                f"expected a frame from workbench.stats.concurrent_streams (columns 'at' and "
                f"'streams'); got the columns {frame.columns}"
            )
    frame = _stream_envelope(frame)
    zone = (tz or _zone_of(frame, "at")) if name_zone else None
    base = _base(frame, title or "Concurrent streams")
    x = alt.X(
        "at:T",
        title=_in_zone("Time", zone),
        scale=alt.Scale(type="utc"),
        axis=_clock_axis(frame, "at"),
    )
    peak_streams = int(frame["streams"].max() or 0)  # type: ignore[arg-type]
    y = alt.Y(
        "streams:Q",
        title="Streams",
        scale=alt.Scale(domain=[0, peak_streams + 1]),  # room for the peak's label
        axis=alt.Axis(format=",d", tickMinStep=1),
    )
    tooltip = [
        alt.Tooltip("at_label:N", title="From"),
        alt.Tooltip("streams:Q", title="Streams"),
    ]
    line = base.mark_line(interpolate="step-after").encode(x=x, y=y, tooltip=tooltip)
    peak = (
        base.transform_joinaggregate(peak="max(streams)")
        .transform_filter("datum.streams == datum.peak && datum.peak > 0")
        .transform_window(rank="row_number()", sort=[alt.SortField("at", order="ascending")])
        .transform_filter("datum.rank == 1")
        .transform_calculate(peak_text="'Peak: ' + datum.streams + ' at ' + datum.at_label")
    )
    dot = peak.mark_point(filled=True, size=80, color=_PEAK_COLOR).encode(x=x, y=y, tooltip=tooltip)
    label = peak.mark_text(align="left", dx=8, dy=-8, color=_PEAK_COLOR).encode(
        x=x, y=y, text=alt.Text("peak_text:N")
    )
    return alt.layer(line, dot, label).properties(width=WIDTH, height=HEIGHT)


MAX_STREAM_POINTS = 1500
_INTERVALS = ["1m", "5m", "15m", "30m", "1h", "3h", "6h", "12h", "1d"]


def _stream_envelope(frame: pl.DataFrame) -> pl.DataFrame:
    """At most :data:`MAX_STREAM_POINTS` rows: each interval's first maximum."""
    if frame.height <= MAX_STREAM_POINTS:
        return frame
    ordered = frame.sort("at")
    for every in _INTERVALS:
        envelope = (
            ordered.group_by(pl.col("at").dt.truncate(every).alias("_bucket"), maintain_order=True)
            .agg(
                pl.col("at").filter(pl.col("streams") == pl.col("streams").max()).first(),
                pl.col("streams").max(),
            )
            .select(frame.columns)
        )
        if envelope.height <= MAX_STREAM_POINTS:
            break
    return envelope


# --------------------------------------------------------------------------- bandwidth

_BANDWIDTH_COLOR = "#4c78a8"  # the accent blue of the tables and the default bars


def bandwidth(
    frame: pl.DataFrame,
    *,
    peak: pl.DataFrame | None = None,
    tz: str | None = None,
    title: str | None = None,
    name_zone: bool = True,
) -> alt.TopLevelMixin:
    """The bandwidth used per local hour or day, from :func:`workbench.stats.bandwidth`:
    its average in Mbps (bars per day, a step area per hour), the volume in GB in the
    tooltip. ``peak`` (:func:`workbench.stats.max_concurrent_bandwidth`'s frame) adds the
    highest bandwidth at any instant as a dashed line labelled with when it was first
    reached: above the averages, which spread each bucket's data over its whole length.
    ``tz`` names the zone in the axis title (an hourly frame carries its own);
    ``name_zone=False`` leaves it out.

    >>> import datetime as dt
    >>> frame = pl.DataFrame(
    ...     {"day": [dt.date(2026, 1, 5), dt.date(2026, 1, 6)], "kbps": [2500.0, 800.0],
    ...      "gigabytes": [27.0, 8.64]}
    ... )
    >>> spec = bandwidth(frame).to_dict()
    >>> spec["mark"]["type"], spec["encoding"]["y"]["title"], data_rows(spec)
    ('bar', 'Average bandwidth (Mbps)', 2)
    """
    column = next((c for c in ("hour", "day") if c in frame.columns), None)
    if column is None or "kbps" not in frame.columns or "gigabytes" not in frame.columns:
        raise ValueError(
            "expected a frame from workbench.stats.bandwidth (columns 'hour' or 'day', 'kbps' "
            f"and 'gigabytes'); got the columns {frame.columns}"
        )
    data = frame.with_columns((pl.col("kbps") / 1000).alias("mbps"))
    zone = (tz or _zone_of(frame, column)) if name_zone else None
    top = float(data["mbps"].max() or 0)  # type: ignore[arg-type]
    peak_row = peak.row(0, named=True) if peak is not None and peak.height else None
    if peak_row is not None and peak_row["kbps"]:
        top = max(top, peak_row["kbps"] / 1000)
    y = alt.Y(
        "mbps:Q",
        title="Average bandwidth (Mbps)",
        scale=alt.Scale(domain=[0, top * 1.12 or 1]),  # room for the peak's label
        axis=alt.Axis(format=",.1f"),
    )
    tooltip = [
        alt.Tooltip(f"{column}_label:N", title="Day" if column == "day" else "Hour from"),
        alt.Tooltip("mbps:Q", title="Average (Mbps)", format=",.2f"),
        alt.Tooltip("gigabytes:Q", title="Data (GB)", format=",.2f"),
    ]
    base = _base(data, title or f"Bandwidth per {column}")
    if column == "day":
        x = alt.X(
            "utcyearmonthdate(day):T",
            title=_in_zone("Day", zone),
            scale=alt.Scale(type="utc", padding=12),
            axis=_calendar_axis("day", frame.height, "%b %d"),
        )
        drawn = base.mark_bar(color=_BANDWIDTH_COLOR)
    else:
        x = alt.X(
            "hour:T",
            title=_in_zone("Hour", zone),
            scale=alt.Scale(type="utc"),
            axis=_clock_axis(frame, "hour"),
        )
        drawn = base.mark_area(
            interpolate="step-after", color=_BANDWIDTH_COLOR, opacity=0.8, line=True
        )
    bars = drawn.encode(x=x, y=y, tooltip=tooltip).properties(width=WIDTH, height=HEIGHT)
    if peak_row is None or not peak_row["kbps"]:
        return bars
    at = peak_row["at"]
    words = (
        f"Peak: {peak_row['kbps'] / 1000:,.1f} Mbps at {at.strftime(TIME_LABEL)} "
        f"({peak_row['streams']} streams)"
    )
    with alt.utils.schemapi.debug_mode(False):
        marker = alt.Chart(
            alt.InlineData(values=[{"mbps": peak_row["kbps"] / 1000, "peak_text": words}])
        )
    rule = marker.mark_rule(color=_PEAK_COLOR, strokeDash=[4, 4]).encode(y=y)
    label = marker.mark_text(align="left", dx=4, dy=-7, color=_PEAK_COLOR).encode(
        x=alt.value(0), y=y, text=alt.Text("peak_text:N")
    )
    return alt.layer(bars, rule, label).properties(width=WIDTH, height=HEIGHT)


# --------------------------------------------------------------------------- by name

CHARTS: dict[str, Callable[..., alt.TopLevelMixin]] = {
    "by_day": by_day,
    "by_month": by_month,
    "by_day_of_week": by_day_of_week,
    "by_hour_of_day": by_hour_of_day,
    "by_user": by_user,
    "by_platform": by_platform,
    "by_player": by_player,
    "by_media_type": by_media_type,
    "by_stream_type": by_stream_type,
    "by_resolution": by_resolution,
    "by_server": by_server,
    "top_titles": top_titles,
    "popular_titles": popular_titles,
    "who_watched": who_watched,
    "completion": completion,
    "concurrent_streams": concurrent_streams,
    "bandwidth": bandwidth,
}
"""Each statistic of :mod:`workbench.stats` that has a chart, by its name."""

_ZONED = {
    "by_day",
    "by_month",
    "by_day_of_week",
    "by_hour_of_day",
    "concurrent_streams",
    "bandwidth",
}


def chart(
    db: stats.Database,
    statistic: str,
    *args: Any,
    title: str | None = None,
    mark: TimeMark | None = None,
    **kwargs: Any,
) -> alt.TopLevelMixin:
    """Compute ``statistic`` (a name in :data:`CHARTS`) with
    ``workbench.stats.<statistic>(db, *args, **kwargs)`` and chart its frame.

    The keyword arguments are the statistic's own (``metric``, ``tz``, ``grouping``,
    ``min_seconds``, ``limit``...); ``title`` replaces the chart's title and ``mark``
    (``"bar"`` or ``"line"``) applies to ``by_day``.

    >>> from ingestor.projection import Projection
    >>> db = Projection(":memory:")
    >>> chart(db, "by_weather")
    Traceback (most recent call last):
    ...
    ValueError: no chart for 'by_weather'; charts exist for: by_day, by_month, \
by_day_of_week, by_hour_of_day, by_user, by_platform, by_player, by_media_type, \
by_stream_type, by_resolution, by_server, top_titles, popular_titles, who_watched, \
completion, concurrent_streams, bandwidth
    """
    draw = CHARTS.get(statistic)
    if draw is None:
        raise ValueError(f"no chart for {statistic!r}; charts exist for: {', '.join(CHARTS)}")
    frame = getattr(stats, statistic)(db, *args, **kwargs)
    options: dict[str, Any] = {"title": title}
    if statistic in _ZONED:
        options["tz"] = kwargs.get("tz", "UTC")
    if mark is not None:
        if statistic != "by_day":
            raise ValueError("mark applies to the 'by_day' chart only")
        options["mark"] = mark
    return draw(frame, **options)


# --------------------------------------------------------------------------- rendering

ChartLike = alt.TopLevelMixin | Mapping[str, Any]
"""An Altair chart, or a Vega-Lite spec as a dict (what Altair's renderers receive)."""


def _spec(chart: ChartLike) -> dict[str, Any]:
    if isinstance(chart, alt.TopLevelMixin):
        return chart.to_dict()  # checked against Vega-Lite's schema here, once
    return dict(chart)


def _vl_version() -> str | None:
    """The Vega-Lite version Altair writes specs for, as vl-convert names it (``v6_4``);
    None (vl-convert's latest) if this vl-convert lacks it."""
    major, minor = alt.SCHEMA_VERSION.lstrip("v").split(".")[:2]
    wanted = f"{major}.{minor}"
    return f"v{major}_{minor}" if wanted in vl_convert.get_vegalite_versions() else None


def to_svg(chart: ChartLike) -> str:
    """The chart as a standalone SVG document (no script, no external reference; data URLs
    outside the spec are refused, so rendering never touches the network)."""
    return vl_convert.vegalite_to_svg(_spec(chart), vl_version=_vl_version(), allowed_base_urls=[])


def to_png(chart: ChartLike, *, scale: float = 2.0) -> bytes:
    """The chart as PNG bytes, ``scale`` times its size in pixels (2: sharp on HiDPI)."""
    return vl_convert.vegalite_to_png(
        _spec(chart), vl_version=_vl_version(), scale=scale, allowed_base_urls=[]
    )


def data_rows(chart: ChartLike) -> int:
    """How many data rows the chart's spec embeds, across all its datasets: what a notebook
    or report stores for it. A chart of a statistic embeds the statistic's rows only."""
    spec = _spec(chart)
    total = sum(len(rows) for rows in spec.get("datasets", {}).values())

    def inline(node: Any) -> int:
        if isinstance(node, dict):
            data = node.get("data")
            own = len(data["values"]) if isinstance(data, dict) and "values" in data else 0
            return own + sum(inline(v) for k, v in node.items() if k != "data")
        if isinstance(node, list):
            return sum(inline(v) for v in node)
        return 0

    return total + inline({k: v for k, v in spec.items() if k != "datasets"})


def _title_text(spec: Mapping[str, Any]) -> str:
    title = spec.get("title")
    if not title and spec.get("layer"):  # a layered chart: the title of its first layer
        return _title_text(spec["layer"][0])
    if isinstance(title, Mapping):
        title = title.get("text")
    if isinstance(title, list):
        title = " ".join(str(part) for part in title)
    return str(title) if title else "chart"


def svg_bundle(chart: ChartLike) -> dict[str, str]:
    """A display bundle for the chart: ``image/svg+xml`` (the inline SVG) and ``text/plain``
    (its title, stable from run to run, for nbval and plain-text consumers)."""
    spec = _spec(chart)
    return {"image/svg+xml": to_svg(spec), "text/plain": f"<Chart: {_title_text(spec)}>"}


def _svg_renderer(spec: dict[str, Any], **metadata: Any) -> dict[str, str]:
    """Altair's renderer protocol: the spec in, a MIME bundle out."""
    return svg_bundle(spec)


def use_offline_renderer() -> Any:
    """Make every Altair chart a notebook displays an inline SVG rendered by vl-convert.

    Registers the renderer :data:`RENDERER_NAME` with ``altair.renderers`` and enables it.
    Call it once at the top of a notebook. The returned enabler also works as a context
    manager that restores the previous renderer on exit::

        with use_offline_renderer():
            display(chart)
    """
    alt.renderers.register(RENDERER_NAME, _svg_renderer)
    return alt.renderers.enable(RENDERER_NAME)


__all__ = [
    "CHARTS",
    "MEDIA_TYPE_COLORS",
    "METRIC_TITLES",
    "RENDERER_NAME",
    "STREAM_TYPE_COLORS",
    "ChartLike",
    "by_day",
    "by_day_of_week",
    "by_hour_of_day",
    "by_media_type",
    "by_month",
    "by_platform",
    "by_player",
    "by_resolution",
    "by_server",
    "by_stream_type",
    "by_user",
    "category_colors",
    "chart",
    "completion",
    "concurrent_streams",
    "data_rows",
    "popular_titles",
    "svg_bundle",
    "to_png",
    "to_svg",
    "top_titles",
    "use_offline_renderer",
    "who_watched",
]
