"""Render the reports over the demo dataset and take full-page screenshots of them with
headless Chromium (network off) into ``docs/``: what the README shows a visitor.

Run from the project root after ``make notebook-data``::

    .venv/bin/python docs/screenshots.py

Needs Debian's ``chromium`` (as the browser tests do).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from workbench import report

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "build" / "notebook-data"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
COMMON = {"data_dir": str(DATA), "http_url": None, "nats_url": None, "tz": "Europe/Berlin"}
# the demo week is 5-11 January 2026: its second half against the first shows the changes
SHOTS = [
    ("report-overview.png", "overview", {"start": "2026-01-08", "end": "2026-01-11"}),
    ("report-year-in-review.png", "year_in_review", {}),
    ("report-year-in-review-user.png", "year_in_review", {"user": "dana"}),
]


def main() -> int:
    if not (DATA / "analytics.duckdb").exists():
        print(f"no demo data in {DATA}: run `make notebook-data` first", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1000, "height": 800})
            for index, (png, notebook, parameters) in enumerate(SHOTS):
                rendered = report.render(
                    ROOT / "notebooks" / f"{notebook}.ipynb",
                    Path(tmp) / str(index),
                    {**COMMON, **parameters},
                )
                page = context.new_page()
                page.goto(rendered.html.resolve().as_uri(), wait_until="load")
                page.screenshot(path=ROOT / "docs" / png, full_page=True)
                page.close()
                size = (ROOT / "docs" / png).stat().st_size
                print(f"docs/{png}: {size / 1024:.0f} KB")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
