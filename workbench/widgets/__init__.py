"""Notebook widgets over the event log: a time slider that replays the log to the chosen
instant (:mod:`~workbench.widgets.time_slider`), and a browser for dedup audit entries with
confirm and restore buttons (:mod:`~workbench.widgets.audit_browser`).

Both are plain Python objects holding ipywidgets: display one (``slider`` as the last line
of a cell, or ``display(slider.widget)``) and use it with the mouse, or drive it from code
with the same methods the buttons call (``await slider.show_at(t)``,
``browser.select(audit_id)``, ``await browser.confirm_selected()``), which is how the tests
and papermill-run reports use them without a browser.

What they display goes into ``ipywidgets.Output.outputs`` as ready-made MIME bundles rather
than through ``with output: display(...)``: that works with or without a kernel, so what a
widget shows can be read back (and tested), and charts go in as inline SVG
(:func:`workbench.charts.svg_bundle`), never as scripts that need a CDN.

Work a kernel does asynchronously (a replay, an awaitable callback) is scheduled on its
running event loop; each widget keeps the tasks it started, and ``await
widget.wait_idle()`` waits for them.
"""

from workbench.widgets.audit_browser import ActionOutcome, AuditBrowser
from workbench.widgets.time_slider import (
    ACTIVE_COLUMNS,
    MAX_SLIDER_STEPS,
    SliderView,
    TimeSlider,
    View,
)

__all__ = [
    "ACTIVE_COLUMNS",
    "MAX_SLIDER_STEPS",
    "ActionOutcome",
    "AuditBrowser",
    "SliderView",
    "TimeSlider",
    "View",
]
