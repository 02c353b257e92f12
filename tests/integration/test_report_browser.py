"""A rendered report opened in a real browser with the network off: its charts draw, and the
overview notebook shows its headline tiles (with the changes against the period before),
its styled tables and no internals.

Debian's ``chromium`` (``.ci/run`` installs it) is driven by Playwright's Python package,
which needs no browser download of its own. Without chromium this test fails rather than
skips, so CI cannot pass without having looked at a page.
"""

from __future__ import annotations

import base64
import shutil
import struct
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from playwright.sync_api import Page, sync_playwright

from workbench import report

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
INSTALL_HINT = (
    f"no chromium at {CHROMIUM}: install Debian's chromium "
    "(apt-get install -y chromium; .ci/run does it on CI)"
)
VEGA_BLUE = (0x4C, 0x78, 0xA8)  # the default mark colour of Vega-Lite

SETUP = """\
import altair as alt
import vl_convert
from IPython.display import SVG, display

def bars(values):
    chart = alt.Chart(alt.Data(values=values)).mark_bar().encode(x="name:N", y="plays:Q")
    return vl_convert.vegalite_to_svg(chart.to_dict())
"""
# one chart through IPython's SVG object, one as a raw display bundle
SVG_OBJECT = 'display(SVG(bars([{"name": u, "plays": p} for u, p in zip("abcd", [3, 9, 4, 7])])))'
RAW_BUNDLE = (
    'display({"image/svg+xml": bars([{"name": d, "plays": d * 2} for d in range(1, 8)]),'
    ' "text/plain": "<chart>"}, raw=True)'
)

CHART_BOXES = """
els => els.map(el => {
  const box = el.getBoundingClientRect();
  return {
    tag: el.tagName.toLowerCase(),
    x: box.x + window.scrollX, y: box.y + window.scrollY,
    width: box.width, height: box.height,
    loaded: el.tagName.toLowerCase() === "img" ? el.complete && el.naturalWidth > 0 : true,
  };
})
"""

# counts, inside one box of a PNG, the pixels close to a colour (the browser decodes the PNG)
COUNT_PIXELS = """
async ([png, box, rgb]) => {
  const img = new Image();
  img.src = "data:image/png;base64," + png;
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(box.x, box.y, box.width, box.height).data;
  let near = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - rgb[0]) + Math.abs(data[i + 1] - rgb[1])
        + Math.abs(data[i + 2] - rgb[2]) < 30) near++;
  }
  return near;
}
"""


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk comes first
    return width, height


@pytest.fixture
def chromium() -> str:
    assert Path(CHROMIUM).exists(), INSTALL_HINT
    return CHROMIUM


@pytest.fixture
def two_chart_report(tmp_path: Path) -> report.Report:
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Two charts"),
            new_code_cell(SETUP, metadata={"tags": ["remove-input"]}),
            new_code_cell(SVG_OBJECT, metadata={"tags": ["hide-input"]}),
            new_code_cell(RAW_BUNDLE, metadata={"tags": ["hide-input"]}),
        ]
    )
    nbformat.write(nb, tmp_path / "charts.ipynb")
    return report.render(tmp_path / "charts.ipynb", tmp_path / "out")


def chart_boxes(page: Page) -> list[dict[str, Any]]:
    selector = ".jp-OutputArea-output img, .jp-OutputArea-output svg"
    return page.eval_on_selector_all(selector, CHART_BOXES)


def test_the_reports_charts_draw_in_headless_chromium_with_the_network_off(
    chromium: str, two_chart_report: report.Report, tmp_path: Path
) -> None:
    url = two_chart_report.html.resolve().as_uri()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1100, "height": 800})
            page = context.new_page()
            requested: list[str] = []
            failed: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(url, wait_until="load")

            boxes = chart_boxes(page)
            assert [box["tag"] for box in boxes] == ["img", "img"]
            for box in boxes:
                assert box["loaded"], box
                assert box["width"] > 100 and box["height"] > 100, box

            shot = page.screenshot(full_page=True)
            (tmp_path / "report.png").write_bytes(shot)
            width, height = png_size(shot)
            assert width >= 1000 and height >= sum(box["height"] for box in boxes)
            encoded = base64.b64encode(shot).decode()
            for box in boxes:
                region = {k: round(box[k]) for k in ("x", "y", "width", "height")}
                bars = page.evaluate(COUNT_PIXELS, [encoded, region, list(VEGA_BLUE)])
                assert bars > 500, f"the chart at {region} drew {bars} bar pixels"
        finally:
            browser.close()
    assert failed == []
    assert [u for u in requested if not u.startswith(("file:", "data:"))] == []


# ---------------------------------------------------------------------------------------
# the overview notebook itself, over a projection the real pipeline wrote

ROOT = Path(__file__).resolve().parents[2]
TILE_TEXTS = """
els => els.map(el => {
  const box = el.getBoundingClientRect();
  const part = name => el.querySelector(".wb-tile-" + name).innerText.trim();
  return {label: part("label"), value: part("value"), note: part("note"),
          y: box.y, width: box.width, height: box.height};
})
"""
TABLES = """
els => els.map(el => ({
  heading: (el.querySelector(".gt_title") || {innerText: ""}).innerText.trim(),
  columns: [...el.querySelectorAll("th.gt_col_heading")].map(th => th.innerText.trim()),
  rows: [...el.querySelectorAll("tbody tr")].map(
    tr => [...tr.querySelectorAll("td")].map(td => td.innerText.trim())),
  bars: [...el.querySelectorAll("td div div div")].map(bar => bar.getBoundingClientRect().width),
  height: el.getBoundingClientRect().height,
}))
"""


@pytest.fixture(scope="module")
def simulated_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight days of 12 simulated people projected by the real pipeline into a DuckDB file
    (no archive, no ingestor: the notebook reads the file)."""
    from datetime import UTC, datetime

    from ingestor.dedup import DedupIndex
    from ingestor.events import encode_event
    from ingestor.pipeline import Message, Pipeline
    from ingestor.projection import Projection
    from ingestor.simulation import SimulationConfig, simulate

    data_dir = tmp_path_factory.mktemp("data")
    sim = simulate(
        SimulationConfig(seed=11, users=12, days=8, base_date=datetime(2026, 1, 5, tzinfo=UTC))
    )
    projection = Projection(data_dir / "analytics.duckdb")
    try:
        pipeline = Pipeline(projection, DedupIndex())
        recorded = datetime.min.replace(tzinfo=UTC)
        messages = []
        for seq, event in enumerate(sim.events, start=1):
            recorded = max(recorded, event.occurred_at)
            messages.append(Message(seq, recorded, encode_event(event), event.subject))
        assert not pipeline.process(messages).rejected
    finally:
        projection.close()
    return data_dir


def test_the_overview_shows_tiles_with_changes_and_styled_tables_offline(
    chromium: str, simulated_data: Path, tmp_path: Path
) -> None:
    from datetime import date

    import duckdb

    from workbench import present, stats

    start, end, days = date(2026, 1, 9), date(2026, 1, 12), 4
    rendered = report.render(
        ROOT / "notebooks" / "overview.ipynb",
        tmp_path / "out",
        {
            "data_dir": str(simulated_data),
            "http_url": None,
            "nats_url": None,
            "tz": "Europe/Berlin",
            "start": start.isoformat(),
            "end": end.isoformat(),
        },
    )
    with duckdb.connect(str(simulated_data / "analytics.duckdb"), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        expected = stats.compare_periods(con, start=start, end=end, tz="Europe/Berlin")
    assert expected["previous"].min() > 0, "the period before must have plays to compare"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1100, "height": 900})
            page = context.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(rendered.html.resolve().as_uri(), wait_until="load")

            text = page.inner_text("body")
            tiles = page.eval_on_selector_all(".wb-tile", TILE_TEXTS)
            tables = page.eval_on_selector_all("table.gt_table", TABLES)
            (page_title,) = page.eval_on_selector_all("h1", "els => els.map(e => e.innerText)")
            (tmp_path / "overview.png").write_bytes(page.screenshot(full_page=True))
        finally:
            browser.close()

    assert [u for u in requested if not u.startswith(("file:", "data:"))] == []
    # no internals on the page; the period, servers and zone in one sentence
    assert "file mode" not in text and "projection read" not in text
    assert page_title == "What was watched"
    assert "Friday 9 to Monday 12 January 2026 on " in text and "in Europe/Berlin time." in text

    # the four tiles, side by side, each with its change against the 4 days before
    words = {"plays": present.count, "watch_time": present.duration}
    assert [t["label"].lower() for t in tiles] == [
        "plays",
        "watch time",
        "users",
        "peak concurrent streams",
    ]
    assert len({round(t["y"]) for t in tiles}) == 1 and min(t["height"] for t in tiles) > 40
    for tile, (measure, current, _, change) in zip(tiles, expected.rows(), strict=True):
        assert tile["value"] == words.get(measure, present.count)(current), measure
        assert tile["note"] == present.change_words(change, days), measure
        assert tile["note"].endswith("vs. the 4 days before")

    # styled tables: the top titles with hours and minutes, thousands separators, share bars
    by_heading = {t["heading"]: t for t in tables}
    titles = by_heading["Top 10 titles"]
    assert titles["columns"] == ["Title", "Plays", "Share of plays", "Watch time", "Users"]
    assert len(titles["rows"]) == 10 and titles["height"] > 200
    for row in titles["rows"]:
        assert row[3].endswith(" min"), row
        assert row[2].endswith(" %"), row
    assert all(width > 0 for width in titles["bars"])
    assert {"Who watched most", "Platforms", "Stream types"} <= set(by_heading)
    # the parameters are there, collapsed, with the log position that reproduces the page
    assert "How this report was made" in text
    assert "log sequence" not in text  # collapsed: not shown until opened
    assert "log sequence" in rendered.html.read_text(encoding="utf-8")


def test_one_users_year_in_review_is_their_own_wrapped_page(
    chromium: str, simulated_data: Path, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    import duckdb

    from workbench import present, wrapped
    from workbench.db import scope

    with duckdb.connect(str(simulated_data / "analytics.duckdb"), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        (name,) = con.execute(
            "SELECT username FROM playback_events GROUP BY username ORDER BY count(*) DESC, 1"
        ).fetchall()[0]
        mine = scope(
            con,
            since=datetime(2026, 1, 1, tzinfo=UTC),
            before=datetime(2027, 1, 1, tzinfo=UTC),
            user=name,
        )
        expected = wrapped.year(mine)
        everyone = wrapped.year(con)
    assert 0 < expected.plays < everyone.plays
    rendered = report.render(
        ROOT / "notebooks" / "year_in_review.ipynb",
        tmp_path / "out",
        {"data_dir": str(simulated_data), "http_url": None, "nats_url": None, "user": name},
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_context(offline=True).new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(rendered.html.resolve().as_uri(), wait_until="load")
            (heading,) = page.eval_on_selector_all("h1", "els => els.map(e => e.innerText)")
            tiles = {
                t["label"].lower(): t for t in page.eval_on_selector_all(".wb-tile", TILE_TEXTS)
            }
            headings = [t["heading"] for t in page.eval_on_selector_all("table.gt_table", TABLES)]
            months = page.eval_on_selector_all(".wb-months > div", "els => els.length")
        finally:
            browser.close()
    assert [u for u in requested if not u.startswith(("file:", "data:"))] == []
    assert heading == f"{name}'s 2026, wrapped"
    assert tiles["plays"]["value"] == present.count(expected.plays)
    assert tiles["watch time"]["value"] == present.duration(expected.watch_time)
    assert "users" not in tiles  # one user's page
    assert expected.busiest_day is not None
    assert tiles["busiest day"]["value"] == f"{expected.busiest_day:%a %d %b}"
    assert "Everyone's year" not in headings and "Top shows" in headings
    assert months == 12
