"""Charts of the statistics (workbench.charts), rendered for real with vl-convert.

The statistics come from a real projection: the simulated feed replayed from its event log
into a DuckDB file, or rows inserted into ``playback_events`` of a DuckDB file in
``tmp_path``. Each chart is rendered to SVG and read back: the bars, lines and points drawn
(Vega labels every mark with its values in ``aria-label``) and the titles."""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import altair as alt
import nbformat
import polars as pl
import pytest
from IPython.core.formatters import DisplayFormatter

from ingestor.projection import Projection
from workbench import charts, stats
from workbench.replay import Replay, replay, simulated_log

SVG = "{http://www.w3.org/2000/svg}"
BERLIN = "Europe/Berlin"


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replay]:
    """The simulated feed (2 users, 9 playbacks on 2026-01-05/06), replayed once."""
    log = simulated_log(tmp_path_factory.mktemp("archive"))
    everything = asyncio.run(replay(log, progress=False))
    yield everything
    everything.close()


def marks(svg: str, kind: str) -> list[ET.Element]:
    """The drawn marks of one kind (``rect``: bars, ``line``, ``symbol``: points, ``text``)
    of the chart's data layers, not of its axes or title."""
    root = ET.fromstring(svg)
    found: list[ET.Element] = []
    for group in root.iter(f"{SVG}g"):
        classes = group.get("class", "").split()
        if f"mark-{kind}" in classes and "role-mark" in classes:
            found.extend(child for child in group if child.tag in (f"{SVG}path", f"{SVG}text"))
    return found


def labels(svg: str, kind: str) -> list[str]:
    return [mark.get("aria-label", "") for mark in marks(svg, kind)]


def texts(svg: str, kind: str) -> list[str]:
    return ["".join(mark.itertext()) for mark in marks(svg, kind)]


def title_of(svg: str) -> str:
    root = ET.fromstring(svg)
    for group in root.iter(f"{SVG}g"):
        if "role-title-text" in group.get("class", "").split():
            return "".join(group.itertext())
    raise AssertionError("the SVG has no title")


def axis_label(svg: str, axis: str) -> str:
    """The aria label of the X or Y axis: its title and the range of its values."""
    found = re.search(rf"aria-label=\"{axis}-axis titled ([^\"]*)\"", svg)
    assert found, f"no {axis} axis"
    return found.group(1)


def value_of(label: str, name: str) -> str:
    """A field's value in a mark's aria label (``"Plays: 3; Platform: Roku"``)."""
    for part in label.split("; "):
        key, _, value = part.partition(": ")
        if key == name:
            return value
    raise AssertionError(f"{name!r} not in {label!r}")


# --------------------------------------------------------------------------- bars per row

CATEGORIES = {
    "by_user": "User",
    "by_platform": "Platform",
    "by_player": "Player",
    "by_media_type": "Media type",
    "by_stream_type": "Stream type",
    "by_resolution": "Resolution",
    "by_server": "Server",
    "top_titles": "Title",
}


@pytest.mark.parametrize("metric", ["plays", "watch_time"])
@pytest.mark.parametrize("statistic", sorted(CATEGORIES))
def test_a_categorical_split_draws_one_bar_per_row_of_its_statistic(
    replayed: Replay, statistic: str, metric: str
) -> None:
    frame = getattr(stats, statistic)(replayed.con, metric=metric)
    chart = getattr(charts, statistic)(frame)
    svg = charts.to_svg(chart)

    bars = labels(svg, "rect")
    assert len(bars) == frame.height > 1
    assert charts.data_rows(chart) == frame.height
    value_title = charts.METRIC_TITLES[metric]
    drawn = sorted(float(value_of(bar, value_title).replace(",", "")) for bar in bars)
    scale = 3600 if metric == "watch_time" else 1
    expected = sorted(round(v / scale, 1) for v in frame[metric].to_list())
    assert drawn == pytest.approx(expected, abs=0.051)
    assert axis_label(svg, "X").startswith(f"'{value_title}'")
    assert axis_label(svg, "Y").startswith(f"'{CATEGORIES[statistic]}'")
    assert title_of(svg) == getattr(charts, statistic)(frame).to_dict()["title"]


def test_two_users_of_one_name_on_two_servers_stay_two_bars(replayed: Replay) -> None:
    frame = stats.by_user(replayed.con)
    assert frame.filter(username="bruno").height == 2  # one per server in the simulated feed

    svg = charts.to_svg(charts.by_user(frame))

    servers = sorted(frame.filter(username="bruno")["server_id"].str.slice(0, 8))
    users = sorted(value_of(bar, "User") for bar in labels(svg, "rect"))
    assert users == [f"bruno · {servers[0]}", f"bruno · {servers[1]}", "dana"]


def test_popular_titles_bars_are_distinct_users(replayed: Replay) -> None:
    frame = stats.popular_titles(replayed.con, metric="watch_time")

    svg = charts.to_svg(charts.popular_titles(frame))

    bars = labels(svg, "rect")
    assert len(bars) == frame.height
    assert {value_of(bar, "Users") for bar in bars} == {str(n) for n in frame["users"]}
    assert axis_label(svg, "X").startswith("'Users'")
    assert title_of(svg) == "Most popular titles"


def test_watch_time_is_drawn_in_hours(tmp_path: Path) -> None:
    db = Projection(tmp_path / "p.duckdb")
    db.con.execute(
        "INSERT INTO playback_events BY NAME SELECT * FROM (VALUES "
        "('a', 'Roku', '2026-01-05 20:00Z', '2026-01-05 22:30Z'),"
        "('b', 'tvOS', '2026-01-05 20:00Z', '2026-01-05 21:00Z')"
        ") t(correlation_key, platform, started_at, stopped_at)"
    )

    svg = charts.to_svg(charts.chart(db, "by_platform", metric="watch_time"))

    drawn = {
        value_of(bar, "Platform"): value_of(bar, "Watch time (hours)")
        for bar in labels(svg, "rect")
    }
    assert drawn == {"Roku": "2.5", "tvOS": "1.0"}
    axis = re.fullmatch(r"'Watch time \(hours\)' .* from 0\.0 to ([\d.]+)", axis_label(svg, "X"))
    assert axis and 2.5 <= float(axis.group(1)) < 3  # hours, not 9,000 seconds
    assert title_of(svg) == "Watch time by platform"
    db.close()


# --------------------------------------------------------------------------- over time


def test_days_are_bars_of_local_calendar_days(tmp_path: Path) -> None:
    # 22:30 UTC on the 28th is still the 28th in Berlin; the next evening, summer time has
    # started and 22:30 UTC is the 30th: three days, the middle one empty.
    db = Projection(tmp_path / "p.duckdb")
    db.con.execute(
        "INSERT INTO playback_events BY NAME SELECT * FROM (VALUES "
        "('a', '2026-03-28 22:30Z', '2026-03-28 23:30Z'),"
        "('b', '2026-03-29 22:30Z', '2026-03-29 23:30Z')"
        ") t(correlation_key, started_at, stopped_at)"
    )
    frame = stats.by_day(db, tz=BERLIN)

    chart = charts.by_day(frame, tz=BERLIN)
    svg = charts.to_svg(chart)

    bars = labels(svg, "rect")
    assert [value_of(bar, "Day") for bar in bars] == [
        "Sat 2026-03-28",
        "Sun 2026-03-29",
        "Mon 2026-03-30",
    ]
    assert [value_of(bar, "Plays") for bar in bars] == ["1", "0", "1"]
    assert axis_label(svg, "X").startswith("'Day (Europe/Berlin)' for a utc scale")
    assert title_of(svg) == "Plays per day"
    line = charts.to_svg(charts.by_day(frame, mark="line"))
    assert len(marks(line, "line")) == 1
    assert marks(line, "rect") == []
    db.close()


def test_weekdays_run_monday_to_sunday_and_hours_0_to_23(replayed: Replay) -> None:
    week = stats.by_day_of_week(replayed.con, tz=BERLIN)
    hours = stats.by_hour_of_day(replayed.con, metric="watch_time", tz=BERLIN)

    week_svg = charts.to_svg(charts.by_day_of_week(week, tz=BERLIN))
    hours_svg = charts.to_svg(charts.by_hour_of_day(hours, tz=BERLIN))

    week_bars = marks(week_svg, "rect")
    assert len(week_bars) == 7
    by_x = sorted(week_bars, key=bar_x)
    assert [value_of(bar.get("aria-label", ""), "Day of week") for bar in by_x] == [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ]
    assert [value_of(bar.get("aria-label", ""), "Plays") for bar in by_x] == [
        str(n) for n in week["plays"]
    ]
    hour_bars = sorted(marks(hours_svg, "rect"), key=bar_x)
    assert [value_of(b.get("aria-label", ""), "Hour of day") for b in hour_bars] == [
        str(h) for h in range(24)
    ]
    assert axis_label(hours_svg, "Y").startswith("'Watch time (hours)'")
    assert axis_label(hours_svg, "X").startswith("'Hour of day (Europe/Berlin)'")


def bar_x(bar: ET.Element) -> float:
    """A bar's left edge: the first coordinate of its path (``M<x>,<y>...``)."""
    found = re.match(r"M(-?[\d.]+),", bar.get("d", ""))
    assert found, bar.get("d")
    return float(found.group(1))


def test_months_are_bars_labelled_by_month(tmp_path: Path) -> None:
    db = Projection(tmp_path / "p.duckdb")
    db.con.execute(
        "INSERT INTO playback_events BY NAME SELECT * FROM (VALUES "
        "('a', '2026-01-31 23:30Z', '2026-02-01 00:30Z'),"
        "('b', '2026-03-02 20:00Z', '2026-03-02 21:00Z')"
        ") t(correlation_key, started_at, stopped_at)"
    )

    svg = charts.to_svg(charts.chart(db, "by_month", tz="Asia/Tokyo"))

    bars = labels(svg, "rect")
    assert [value_of(bar, "Month") for bar in bars] == ["February 2026", "March 2026"]
    assert axis_label(svg, "X").startswith("'Month (Asia/Tokyo)'")
    db.close()


# --------------------------------------------------------------------------- completion


def test_completion_splits_each_media_type_into_watched_and_not_finished(
    replayed: Replay,
) -> None:
    frame = stats.completion(replayed.con)

    chart = charts.completion(frame)
    svg = charts.to_svg(chart)

    parts = {
        (value_of(bar, "Media type"), value_of(bar, "Part")): int(value_of(bar, "Plays"))
        for bar in labels(svg, "rect")
    }
    for media_type, plays, watched, _ in frame.rows():
        assert parts[(media_type, "Watched")] == watched
        assert parts[(media_type, "Not finished")] == plays - watched
    rates = sorted(texts(svg, "text"))
    assert rates == sorted(f"{rate:.0%}" for rate in frame["rate"])
    assert charts.data_rows(chart) == frame.height


# --------------------------------------------------------------------------- concurrency


def path_points(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", d)]


def test_concurrent_streams_is_a_step_line_with_its_peak_marked(replayed: Replay) -> None:
    frame = stats.concurrent_streams(replayed.con, tz=BERLIN)
    peak = stats.max_concurrent_streams(replayed.con, tz=BERLIN)
    streams, at = peak.row(0)

    chart = charts.concurrent_streams(frame)
    svg = charts.to_svg(chart)

    (line,) = marks(svg, "line")
    points = path_points(line.get("d", ""))
    assert len(points) == 2 * frame.height - 1  # a riser and a tread per change
    for (x1, y1), (x2, y2) in itertools.pairwise(points):
        assert x1 == x2 or y1 == y2, "a step line only moves across or up and down"
    (dot,) = labels(svg, "symbol")
    assert value_of(dot, "Streams") == str(streams) == "3"
    assert value_of(dot, "From") == at.strftime("%a %Y-%m-%d %H:%M %Z")
    assert texts(svg, "text") == [f"Peak: {streams} at {at.strftime('%a %Y-%m-%d %H:%M %Z')}"]
    assert axis_label(svg, "X").startswith("'Time (Europe/Berlin)' for a utc scale")
    assert charts.data_rows(chart) == frame.height


def test_bandwidth_is_drawn_in_mbps_per_local_hour_with_its_peak_marked(
    replayed: Replay,
) -> None:
    frame = stats.bandwidth(replayed.con, tz=BERLIN)
    peak = stats.max_concurrent_bandwidth(replayed.con, tz=BERLIN)
    kbps, at, streams = peak.row(0)
    assert kbps > 0 and frame["kbps"].max() > 0

    chart = charts.bandwidth(frame, peak=peak)
    svg = charts.to_svg(chart)

    assert texts(svg, "text") == [
        f"Peak: {kbps / 1000:,.1f} Mbps at {at.strftime('%a %Y-%m-%d %H:%M %Z')} "
        f"({streams} streams)"
    ]
    assert axis_label(svg, "Y").startswith("'Average bandwidth (Mbps)'")
    assert axis_label(svg, "X").startswith("'Hour (Europe/Berlin)' for a utc scale")
    assert charts.data_rows(chart) == frame.height + 1  # the hours and the peak
    (area,) = marks(svg, "area")
    hour = frame.filter(pl.col("kbps") > 0).row(0, named=True)
    assert value_of(area.get("aria-label", ""), "Hour from") == hour["hour"].strftime(
        "%a %Y-%m-%d %H:%M %Z"
    )


def test_bandwidth_per_day_is_one_bar_per_local_day(replayed: Replay) -> None:
    frame = stats.bandwidth(replayed.con, by="day", tz=BERLIN)

    svg = charts.to_svg(charts.chart(replayed.con, "bandwidth", by="day", tz=BERLIN))

    bars = labels(svg, "rect")
    assert len(bars) == frame.height == 2
    for bar, row in zip(bars, frame.iter_rows(named=True), strict=True):
        assert value_of(bar, "Average (Mbps)") == f"{row['kbps'] / 1000:,.2f}"
        assert value_of(bar, "Data (GB)") == f"{row['gigabytes']:,.2f}"
    assert title_of(svg) == "Bandwidth per day"


def test_times_are_embedded_as_the_clock_of_the_statistics_zone(replayed: Replay) -> None:
    frame = stats.concurrent_streams(replayed.con, tz=BERLIN)

    spec = charts.concurrent_streams(frame).to_dict()

    (rows,) = spec["datasets"].values()
    first = frame["at"][0]  # 17:57:50.550 UTC, 18:57:50.550 in Berlin
    assert rows[0]["at"] == first.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert rows[0]["at"].startswith("2026-01-05T18:57:50.550")
    assert rows[0]["at_label"] == "Mon 2026-01-05 18:57 CET"


# --------------------------------------------------------------------------- no raw rows


def test_a_chart_embeds_the_statistics_rows_not_the_playbacks(tmp_path: Path) -> None:
    # 12,000 playbacks over 30 days: more than Altair's 5,000-row limit for raw data
    db = Projection(tmp_path / "p.duckdb")
    db.con.execute(
        "INSERT INTO playback_events (correlation_key, user_id, platform, started_at, "
        "stopped_at) SELECT 'k' || i, 'u' || (i % 7), 'p' || (i % 5), "
        "TIMESTAMPTZ '2026-01-01 00:00Z' + to_minutes(i * 3), "
        "TIMESTAMPTZ '2026-01-01 00:30Z' + to_minutes(i * 3) FROM range(12000) r(i)"
    )

    for statistic, rows in (("by_day", 25), ("by_hour_of_day", 24), ("by_platform", 5)):
        chart = charts.chart(db, statistic, grouping=False)
        assert charts.data_rows(chart) == rows
        assert len(marks(charts.to_svg(chart), "rect")) == rows
    db.close()


@pytest.mark.parametrize("statistic", list(charts.CHARTS))
def test_every_chart_embeds_exactly_its_frame(replayed: Replay, statistic: str) -> None:
    args = ("Letter of the Last",) if statistic == "who_watched" else ()
    frame = getattr(stats, statistic)(replayed.con, *args)

    chart = charts.CHARTS[statistic](frame)

    assert charts.data_rows(chart) == frame.height
    assert title_of(charts.to_svg(chart))


def test_an_empty_projection_charts_without_bars(tmp_path: Path) -> None:
    db = Projection(tmp_path / "p.duckdb")

    for statistic in ("by_day", "by_platform", "completion", "concurrent_streams"):
        svg = charts.to_svg(charts.chart(db, statistic))
        assert marks(svg, "rect") == []
        assert title_of(svg)
    db.close()


def test_a_frame_that_is_not_a_statistic_is_refused() -> None:
    with pytest.raises(ValueError, match="'plays' or 'watch_time'"):
        charts.by_platform(pl.DataFrame({"platform": ["Roku"], "count": [1]}))
    with pytest.raises(ValueError, match="applies to the 'by_day' chart only"):
        charts.chart(Projection(":memory:"), "by_platform", mark="line")


# --------------------------------------------------------------------------- offline display

NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def assert_offline(svg: str) -> None:
    """No script, and no address other than the SVG namespaces (nothing to fetch)."""
    assert svg.lstrip().startswith("<svg")
    assert "<script" not in svg.lower()
    assert "<foreignobject" not in svg.lower()
    assert set(re.findall(r"https?://[^\s\"')]+", svg)) <= NAMESPACES


def test_to_svg_and_to_png_render_without_network(replayed: Replay) -> None:
    chart = charts.chart(replayed.con, "by_platform")

    assert_offline(charts.to_svg(chart))
    png = charts.to_png(chart, scale=1)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert charts.to_png(chart, scale=2) != png


def test_an_external_data_url_is_refused_rather_than_fetched() -> None:
    spec = {
        "data": {"url": "https://example.invalid/plays.csv"},
        "mark": "bar",
        "encoding": {"x": {"field": "plays", "type": "quantitative"}},
    }

    with pytest.raises(ValueError, match="not allowed"):
        charts.to_svg(spec)


def test_the_offline_renderer_displays_inline_svg_that_a_notebook_accepts(
    replayed: Replay,
) -> None:
    chart = charts.chart(replayed.con, "by_media_type")
    before = alt.renderers.active

    with charts.use_offline_renderer():
        assert alt.renderers.active == charts.RENDERER_NAME
        data, _ = DisplayFormatter().format(chart)  # what a kernel sends for the cell

    assert alt.renderers.active == before
    assert set(data) == {"image/svg+xml", "text/plain"}
    assert_offline(data["image/svg+xml"])
    assert title_of(data["image/svg+xml"]) == "Plays by media type"
    assert data["text/plain"] == "<Chart: Plays by media type>"
    cell = nbformat.v4.new_code_cell(
        "chart", outputs=[nbformat.v4.new_output("display_data", data=data)]
    )
    nbformat.validate(nbformat.v4.new_notebook(cells=[cell]))  # papermill's validation


def test_a_notebook_run_by_papermill_keeps_its_charts_as_svg(tmp_path: Path) -> None:
    import papermill
    from nbconvert import HTMLExporter

    source = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import polars as pl\nfrom workbench import charts\n"
                "_ = charts.use_offline_renderer()"
            ),
            nbformat.v4.new_code_cell(
                "charts.by_platform(pl.DataFrame({'platform': ['Roku', 'tvOS'], 'plays': [3, 1]}))"
            ),
        ]
    )
    source.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(source, tmp_path / "in.ipynb")

    ran = papermill.execute_notebook(
        str(tmp_path / "in.ipynb"),
        str(tmp_path / "out.ipynb"),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
    )

    (output,) = ran.cells[1].outputs
    assert set(output["data"]) == {"image/svg+xml", "text/plain"}
    assert_offline(output["data"]["image/svg+xml"])
    page, _ = HTMLExporter().from_notebook_node(ran)
    images = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)
    shown = [base64.b64decode(image).decode() for image in images]
    assert any("Plays by platform" in svg and len(labels(svg, "rect")) == 2 for svg in shown)


def test_chart_by_name_passes_the_statistics_arguments(replayed: Replay) -> None:
    frame = stats.top_titles(replayed.con, limit=3, metric="watch_time", media_type="movie")

    chart = charts.chart(
        replayed.con, "top_titles", limit=3, metric="watch_time", media_type="movie"
    )

    spec: dict[str, Any] = chart.to_dict()
    (rows,) = spec["datasets"].values()
    assert [row["title"] for row in rows] == frame["title"].to_list()
    assert spec["title"] == "Most watched titles"
    custom = charts.chart(replayed.con, "by_day", mark="line", title="Evenings")
    assert custom.to_dict()["title"] == "Evenings"
    assert custom.to_dict()["mark"]["type"] == "line"


def test_the_max_marked_is_the_first_time_the_peak_was_reached(tmp_path: Path) -> None:
    db = Projection(tmp_path / "p.duckdb")
    db.con.execute(
        "INSERT INTO playback_events BY NAME SELECT * FROM (VALUES "
        "('a', '2026-01-05 20:00Z', '2026-01-05 21:00Z'),"
        "('b', '2026-01-05 20:30Z', '2026-01-05 20:45Z'),"
        "('c', '2026-01-05 20:50Z', '2026-01-05 22:00Z')"
        ") t(correlation_key, started_at, stopped_at)"
    )
    until = datetime(2026, 1, 5, 23, tzinfo=UTC)

    svg = charts.to_svg(charts.chart(db, "concurrent_streams", until=until))

    (dot,) = labels(svg, "symbol")
    assert value_of(dot, "From") == "Mon 2026-01-05 20:30 UTC"
    assert texts(svg, "text") == ["Peak: 2 at Mon 2026-01-05 20:30 UTC"]
    db.close()


def test_a_long_concurrency_series_is_drawn_as_interval_maxima_with_the_exact_peak() -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    levels = [(i * 7) % 23 for i in range(6000)]  # a saw-tooth: peaks of 22 recur
    frame = pl.DataFrame(
        {
            "at": [start + timedelta(minutes=3 * i) for i in range(len(levels))],
            "streams": levels,
        },
        schema={"at": pl.Datetime("us", "UTC"), "streams": pl.Int64},
    )
    chart = charts.concurrent_streams(frame)
    assert charts.data_rows(chart) <= charts.MAX_STREAM_POINTS * 3  # line, dot and label layers
    data = chart.to_dict()["datasets"]
    (rows,) = [rows for rows in data.values() if len(rows) > 1]
    assert len(rows) <= charts.MAX_STREAM_POINTS
    assert max(r["streams"] for r in rows) == 22
    first_peak = frame.filter(pl.col("streams") == 22)["at"][0]
    peak_rows = [r for r in rows if r["streams"] == 22]
    assert datetime.fromisoformat(peak_rows[0]["at"]).astimezone(UTC) == first_peak


# --------------------------------------------------------------------------- at a glance


def axis_tick_labels(svg: str, axis: str) -> list[str]:
    """The tick labels of the X or Y axis, as drawn."""
    root = ET.fromstring(svg)
    for group in root.iter(f"{SVG}g"):
        if group.get("aria-label", "").startswith(f"{axis}-axis"):
            return [
                "".join(node.itertext())
                for inner in group.iter(f"{SVG}g")
                if "role-axis-label" in inner.get("class", "").split()
                for node in inner
                if node.tag == f"{SVG}text"
            ]
    raise AssertionError(f"no {axis} axis")


@pytest.mark.parametrize("days", [2, 7, 30, 200])
def test_the_concurrent_streams_axis_never_repeats_a_label(days: int) -> None:
    start = datetime(2026, 1, 5, 18, 0, tzinfo=UTC)
    moments = [start + timedelta(hours=7 * i) for i in range(days * 24 // 7 + 1)]
    frame = pl.DataFrame(
        {"at": moments, "streams": [i % 4 for i in range(len(moments))]}
    ).with_columns(pl.col("at").dt.convert_time_zone(BERLIN))

    ticks = axis_tick_labels(charts.to_svg(charts.concurrent_streams(frame)), "X")

    assert len(ticks) >= 2
    assert len(ticks) == len(set(ticks)), ticks


def test_media_and_stream_types_keep_one_colour_in_every_chart(replayed: Replay) -> None:
    def fills(chart: alt.TopLevelMixin) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for mark in marks(charts.to_svg(chart), "rect"):
            label = mark.get("aria-label", "")
            kind = next(
                (value_of(label, key) for key in ("Media type", "Stream type") if key in label),
                None,
            )
            if kind is not None:
                found.setdefault(kind, set()).add(mark.get("fill", ""))
        return found

    movie, episode = charts.MEDIA_TYPE_COLORS["movie"], charts.MEDIA_TYPE_COLORS["episode"]
    for chart in (
        charts.top_titles(stats.top_titles(replayed.con)),
        charts.popular_titles(stats.popular_titles(replayed.con)),
        charts.by_media_type(stats.by_media_type(replayed.con)),
        # one type alone still gets its own colour, not the first of a palette
        charts.by_media_type(
            stats.by_media_type(replayed.con).filter(pl.col("media_type") != "movie")
        ),
    ):
        seen = fills(chart)
        assert seen, "no bar names its media type"
        assert seen.get("movie", {movie}) == {movie} and seen.get("episode", {episode}) == {episode}
    streams = fills(charts.by_stream_type(stats.by_stream_type(replayed.con)))
    assert streams and all(
        colors == {charts.STREAM_TYPE_COLORS.get(kind, colors and next(iter(colors)))}
        for kind, colors in streams.items()
    )
    assert set(streams) & set(charts.STREAM_TYPE_COLORS)
