"""The notebooks as a user meets them: ``make lab`` on a fresh clone opens a real JupyterLab
on the demo data, and headless Chromium (Debian's ``chromium`` driven by Playwright's Python
package, as in ``test_report_browser.py``) runs ``time_travel`` and ``dedup_audit`` there:
first offline, on the files ``make lab`` made, then against ``ingestor run`` started on the
same data directory, as the README says. Each time: Run All, ten quick slider moves (the last
position must win, with no error, within 30 s), and a Confirm of one audit entry (offline
it must say that a verdict needs the running ingestor; live it must reach the live
projection). Screenshots go to ``build/lab-screenshots/``.

One JupyterLab server for the module; the kernels are shut down between the two setups.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import INGESTOR, free_port, subprocess_env, wait_until
from tests.integration.test_binder import stop_group
from tests.integration.test_kill9 import status
from tests.integration.test_report_browser import CHROMIUM, INSTALL_HINT
from workbench.live import LiveProjection

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "lab-screenshots"
TOKEN = "lab-test-token"
MOVES = 10
MOVE_DEADLINE = 30.0  # seconds from the last move until its position must be drawn
RUN_DEADLINE = 180.0  # seconds for Run All of one notebook (kernel start included)

# every text a widget shows, for the checks (widgets render into the notebook's DOM)
WIDGET_TEXTS = """() => ({
  html: [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-html-content')]
        .map(e => e.innerText),
  labels: [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-label')]
        .map(e => e.innerText),
  readouts: [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-readout')]
        .map(e => e.innerText),
  errors: [...document.querySelectorAll(
          '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')]
        .map(e => e.innerText).filter(t => /Traceback|Error:/.test(t)),
})"""


@dataclass
class Lab:
    url: str
    clone: Path
    data_dir: Path
    env: dict[str, str]  # the ingestor's environment: the ports make lab pointed at
    browser: Browser


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    assert Path(CHROMIUM).exists(), INSTALL_HINT
    tmp = tmp_path_factory.mktemp("lab")
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # the README's step on a fresh clone, with this environment standing in for .venv
    # (its stamps say the notebook extra is installed: these tests run in such a one)
    venv = clone / ".venv"
    venv.mkdir()
    for stamp in (".created", ".installed", ".installed-notebook"):
        (venv / stamp).touch()
    home = tmp / "home"
    settings = home / ".jupyter/lab/user-settings/@jupyterlab/apputils-extension"
    settings.mkdir(parents=True)  # no "get notified about Jupyter news?" toast on the shots
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    port, nats_port, http_port = free_port(), free_port(), free_port()
    env = subprocess_env(
        {
            "HOME": str(home),
            "PYTHONPATH": str(clone),
            "NATS_URL": f"nats://127.0.0.1:{nats_port}",
            "HTTP_PORT": str(http_port),
            "NATS_FLUSH_INTERVAL": "100ms",
        }
    )
    for name in [n for n in env if n.startswith(("WORKBENCH_", "JUPYTER"))]:
        del env[name]
    lab_args = (
        f"--no-browser --port={port} --IdentityProvider.token={TOKEN} "
        "--LabApp.expose_app_in_browser=True --LabApp.news_url=None"
    )
    log = open(tmp / "lab.log", "wb")  # noqa: SIM115 - the server writes it while it runs
    server = subprocess.Popen(
        [
            "make",
            "-C",
            str(clone),
            "lab",
            f"BIN={Path(sys.executable).parent}",
            f"LAB_HTTP_URL=http://127.0.0.1:{http_port}",
            f"LAB_NATS_URL=nats://127.0.0.1:{nats_port}",
            f"LAB_ARGS={lab_args}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: server.poll() is not None or _get(f"{url}/api/status") is not None,
            120,
            "JupyterLab to answer",
        )
        assert server.poll() is None, (tmp / "lab.log").read_text()[-3000:]
        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                ingestor_env = {
                    "DATA_DIR": str(clone / "data"),
                    "NATS_URL": env["NATS_URL"],
                    "HTTP_PORT": env["HTTP_PORT"],
                    "NATS_FLUSH_INTERVAL": "100ms",
                    "HOME": str(home),
                }
                yield Lab(url, clone, clone / "data", ingestor_env, browser)
            finally:
                browser.close()
    finally:
        stop_group(server.pid)
        log.close()


def _get(url: str) -> object | None:
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")
    except OSError:
        return None


def shut_down_kernels(lab: Lab) -> None:
    sessions = _get(f"{lab.url}/api/sessions") or []
    for session in sessions:  # type: ignore[attr-defined]
        request = urllib.request.Request(
            f"{lab.url}/api/sessions/{session['id']}",
            method="DELETE",
            headers={"Authorization": f"token {TOKEN}"},
        )
        urllib.request.urlopen(request, timeout=10).close()
    wait_until(lambda: not _get(f"{lab.url}/api/kernels"), 30, "the kernels to shut down")


def open_and_run_all(lab: Lab, notebook: str) -> Page:
    page = lab.browser.new_page(viewport={"width": 1400, "height": 1000})
    # ?reset: a workspace of its own, so only this notebook is open and current
    page.goto(f"{lab.url}/lab/tree/{notebook}.ipynb?reset&token={TOKEN}")
    page.wait_for_function(  # the notebook is the current tab and its kernel has started
        """(path) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                   return w && w.context && w.context.path === path && w.sessionContext
                       && w.sessionContext.session && w.sessionContext.session.kernel
                       && w.sessionContext.session.kernel.status === 'idle'; }""",
        arg=f"{notebook}.ipynb",
        timeout=60_000,
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    return page


def texts(page: Page) -> dict[str, list[str]]:
    return page.evaluate(WIDGET_TEXTS)


def wait_for(page: Page, check: object, deadline: float, what: str) -> dict[str, list[str]]:
    """Poll the widgets' texts until ``check(texts)`` holds; fail with what they said."""
    end = time.monotonic() + deadline
    seen = texts(page)
    while not check(seen):  # type: ignore[operator]
        if time.monotonic() > end:
            page.screenshot(path=str(SHOTS / "failed.png"))
            raise AssertionError(f"timed out after {deadline}s waiting for {what}: {seen}")
        page.wait_for_timeout(100)
        seen = texts(page)
    return seen


def shoot(page: Page, name: str, anchor: str) -> None:
    page.locator(anchor).first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def slider_status(seen: dict[str, list[str]]) -> str | None:
    return next((t for t in seen["html"] if t.startswith(("As of", "Reading", "No answer"))), None)


def move_the_slider(page: Page, setup: str) -> None:
    first = wait_for(
        page,
        lambda s: (slider_status(s) or "").startswith("As of") and s["readouts"],
        RUN_DEADLINE,
        "Run All to draw the slider",
    )
    assert first["errors"] == [], first["errors"]
    start = first["readouts"][0]
    handle = page.locator(".widget-slider .noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(MOVES):
        page.keyboard.press("ArrowRight")
    moved = time.monotonic()
    seen = wait_for(
        page,
        lambda s: (
            s["readouts"][0] != start
            and (slider_status(s) or "").startswith(f"As of {s['readouts'][0]} ")
        ),
        MOVE_DEADLINE,
        "the last position to be drawn",
    )
    took = time.monotonic() - moved
    hours, minutes = (int(part) for part in re.findall(r"(\d\d):(\d\d)", start)[0])
    end = (hours * 60 + minutes + MOVES * 15) % (24 * 60)
    assert seen["readouts"][0].split()[2] == f"{end // 60:02d}:{end % 60:02d}", seen  # 10 steps
    assert seen["errors"] == [], seen["errors"]
    assert "Could not" not in slider_status(seen)  # type: ignore[operator]
    print(f"{setup}: {MOVES} quick moves drawn {took:.1f} s after the last one")
    shoot(page, f"{setup}-time_travel", ".widget-slider")


def confirm_first_entry(page: Page) -> tuple[str, str]:
    """Select the browser's first entry and press Confirm: (its audit id's start, the status
    line once the button has answered)."""
    wait_for(
        page, lambda s: any(t.startswith("page 1 of") for t in s["labels"]), RUN_DEADLINE,
        "Run All to show the audit browser",
    )  # fmt: skip
    select = page.locator(".widget-select select").first
    select.scroll_into_view_if_needed()
    label = select.locator("option").first.inner_text()
    select.select_option(index=0)
    page.get_by_role("button", name="Confirm").click()
    seen = wait_for(
        page,
        lambda s: any(t.startswith(("Confirmed", "Could not confirm")) for t in s["html"]),
        60,
        "Confirm to answer",
    )
    said = next(t for t in seen["html"] if t.startswith(("Confirmed", "Could not confirm")))
    return label[:12], said  # the label starts with the audit id's first 12 characters


def travel_then_review(lab: Lab, setup: str, mode: str) -> Page:
    """Run All of time_travel and its slider moved (in ``mode``), then dedup_audit run: its
    page."""
    page = open_and_run_all(lab, "time_travel")
    move_the_slider(page, setup)
    assert page.get_by_text(f"read in {mode} mode").count() == 1
    page.close()
    return open_and_run_all(lab, "dedup_audit")


def test_offline_on_the_demo_files_the_notebooks_run_and_say_what_a_verdict_needs(
    lab: Lab,
) -> None:
    page = travel_then_review(lab, "offline", "file")
    _, said = confirm_first_entry(page)
    assert "needs the running ingestor" in said and "ingestor run" in said, said
    assert "\n" not in said
    shoot(page, "offline-dedup_audit", "button:has-text('Confirm')")
    page.close()
    shut_down_kernels(lab)


def test_against_a_running_ingestor_the_slider_keeps_up_and_a_confirm_reaches_the_projection(
    lab: Lab,
) -> None:
    log = open(lab.clone / "ingestor.log", "ab")  # noqa: SIM115
    ingestor = subprocess.Popen(
        [*INGESTOR, "run"],
        cwd=lab.clone,
        env=subprocess_env({**lab.env, "PYTHONPATH": str(lab.clone)}),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: status(lab.env) is not None, 60, "the ingestor to answer")
        page = travel_then_review(lab, "live", "live")
        prefix, said = confirm_first_entry(page)
        assert said.startswith(f"Confirmed {prefix}"), said
        assert "the live projection shows it" in said, said
        live = LiveProjection(f"http://127.0.0.1:{lab.env['HTTP_PORT']}")
        confirmed = live.sql(
            "SELECT status, resolved_by FROM dedupe_audit_log WHERE starts_with(audit_id, "
            f"'{prefix}')"
        ).frame
        assert confirmed.rows() == [("user_confirmed", "notebook")]
        shoot(page, "live-dedup_audit", "button:has-text('Confirm')")
        page.close()
    finally:
        ingestor.send_signal(signal.SIGTERM)
        assert ingestor.wait(timeout=60) == 0
        log.close()
