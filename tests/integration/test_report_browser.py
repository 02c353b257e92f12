"""A rendered report opened in a real browser with the network off: its charts draw.

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
